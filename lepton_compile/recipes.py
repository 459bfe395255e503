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
    precision step run after it (``fp16`` or ``int8-static``) with ``options``.
    """

    name: str
    description: str
    precision: str = "fp32"
    pipeline: str | None = None
    precision_pass: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    needs_calibration: bool = False

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "pipeline": self.pipeline,
            "precision_pass": self.precision_pass,
            "options": dict(self.options),
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

DEFAULT_RECIPES = ("original", "fused", "fp16", "int8-qdq")


def resolve(names: Sequence[str] | None) -> list[Recipe]:
    """Recipes by name; ``original`` is always included first (it is the baseline)."""
    names = list(names or DEFAULT_RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise InputError(f"unknown recipe(s) {', '.join(unknown)} (known: {', '.join(RECIPES)})")
    if "original" in names:
        names.remove("original")
    return [RECIPES["original"]] + [RECIPES[n] for n in dict.fromkeys(names)]


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
        res = passes.optimize(current, pipeline=recipe.pipeline, target="ort")
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
    return current, records


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
