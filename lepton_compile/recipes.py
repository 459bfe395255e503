"""Variant recipes as data: an ordered pass pipeline and a precision step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from lepton_compile.errors import InputError


@dataclass(frozen=True)
class Recipe:
    """How to build one candidate model from the original.

    ``pipeline`` names a pass pipeline of ``lepton_compile.passes``; ``precision_pass`` a
    precision step run after it (``fp16`` or ``int8-static``) with ``options``; ``custom_step``
    (``"package.module:function"``, ModelProto in, ModelProto out) runs last, for steps of
    your own. Recipes are picklable data: they travel to the variant's worker process.
    """

    name: str
    description: str
    precision: str = "fp32"
    pipeline: str | None = None
    precision_pass: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    needs_calibration: bool = False
    custom_step: str | None = None
    target: str = "ort"  # the pass target: "lepton" adds ai.lepton fused ops
    backends: tuple[str, ...] | None = None  # only these backends run it (None: all)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "pipeline": self.pipeline,
            "precision_pass": self.precision_pass,
            "options": dict(self.options),
            "target": self.target,
            **({"custom_step": self.custom_step} if self.custom_step else {}),
        }


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("original", "the model as given"),
        Recipe(
            "fused",
            "cleanup, constant folding, Conv+BN folding, MatMul+Add->Gemm (standard ONNX ops)",
            pipeline="fused",
        ),
        Recipe(
            "fused-lepton",
            "fused graph plus Conv/Gemm/MatMul + bias + activation (+ residual) as ai.lepton "
            "fused ops, for the lepton backend",
            pipeline="fused",
            target="lepton",
            backends=("lepton", "lepton+inductor"),
        ),
        Recipe(
            "fp16",
            "fused graph in FP16, FP32 inputs and outputs",
            precision="fp16",
            pipeline="fused",
            precision_pass="fp16",
        ),
        Recipe(
            "int8-qdq",
            "fused graph, static INT8 QDQ: per-channel weights, MinMax-calibrated activations",
            precision="int8",
            pipeline="fused",
            precision_pass="int8-static",
            options={"per_channel": True, "calibrate_method": "minmax"},
            needs_calibration=True,
        ),
    ]
}

DEFAULT_RECIPES = ("original", "fused", "fused-lepton", "fp16", "int8-qdq")


def resolve(names: Sequence[str | Recipe] | None) -> list[Recipe]:
    """Recipes by name (or given as Recipe objects); ``original`` always comes first."""
    items = list(names or DEFAULT_RECIPES)
    unknown = [n for n in items if isinstance(n, str) and n not in RECIPES]
    if unknown:
        raise InputError(f"unknown recipe(s) {', '.join(unknown)} (known: {', '.join(RECIPES)})")
    out: dict[str, Recipe] = {"original": RECIPES["original"]}
    for n in items:
        r = RECIPES[n] if isinstance(n, str) else n
        if r.name in out and out[r.name] != r:
            raise InputError(f"two different recipes are named {r.name!r}")
        out[r.name] = r
    return list(out.values())


def build(
    recipe: Recipe,
    model: onnx.ModelProto,
    calibration: Sequence[Mapping[str, np.ndarray]] = (),
) -> tuple[onnx.ModelProto, list[dict]]:
    """Apply a recipe to a (static-shaped) model; returns the new model and per-step records."""
    from lepton_compile import passes
    from lepton_compile.passes.quantize import Float16Pass, QuantizeStaticInt8Pass

    records: list[dict] = []
    current = model
    if recipe.pipeline:
        res = passes.optimize(current, pipeline=recipe.pipeline, target=recipe.target)
        current = res.model
        records.extend(_record(r) for r in res.records)
    if recipe.precision_pass:
        p: ir.passes.PassBase
        if recipe.precision_pass == "fp16":
            p = Float16Pass()
        elif recipe.precision_pass == "int8-static":
            p = QuantizeStaticInt8Pass(calibration, **dict(recipe.options))
        else:
            raise ValueError(f"unknown precision pass {recipe.precision_pass!r}")
        result = p(ir.serde.deserialize_model(current))
        current = ir.serde.serialize_model(result.model)
        records.append({"name": recipe.precision_pass, "modified": result.modified})
    if recipe.custom_step:
        fn = _import_step(recipe.custom_step)
        out = fn(current)
        if not isinstance(out, onnx.ModelProto):
            raise TypeError(f"{recipe.custom_step} returned {type(out).__name__}, not a ModelProto")
        current = out
        records.append({"name": recipe.custom_step, "modified": True})
    return current, records


def _import_step(spec: str) -> Any:
    import importlib

    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ValueError(f"custom_step {spec!r}: expected 'package.module:function'")
    return getattr(importlib.import_module(mod), attr)


def _record(r: Any) -> dict:
    if isinstance(r, dict):
        return r
    if hasattr(r, "to_dict"):
        return r.to_dict()
    return {
        k: getattr(r, k)
        for k in ("name", "seconds", "nodes_before", "nodes_after", "modified")
        if hasattr(r, k)
    }
