"""Variant recipes as data: an ordered pass pipeline and a precision step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from lepton_compile import compress
from lepton_compile.errors import InputError


@dataclass(frozen=True)
class Recipe:
    """How to build one candidate model from the original.

    ``pipeline`` names a pass pipeline of ``lepton_compile.passes``; ``precision_pass`` a
    compression step run after it (a name in ``lepton_compile.steps.STEPS``: fp16, bf16,
    int8-static, int8-dynamic, fp8, int4-weight, prune-magnitude, prune-2of4, prune-channels)
    with ``options``; ``accuracy_aware`` makes that step search layer by layer for what it may
    compress under the accuracy constraint (``lepton_compile.compress``). ``custom_step``
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
    accuracy_aware: bool = False
    group: str = "graph"  # graph | quantize | prune: for --recipes quantize / prune

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "pipeline": self.pipeline,
            "precision_pass": self.precision_pass,
            "options": dict(self.options),
            "target": self.target,
            "accuracy_aware": self.accuracy_aware,
            **({"custom_step": self.custom_step} if self.custom_step else {}),
        }


_FUSED = "fused"


def _half_precision(precision: str, **fields: Any) -> Recipe:
    """The fused graph in ``precision`` (fp16 or bf16), accuracy-aware; ``fields`` as Recipe's."""
    return Recipe(
        precision,
        f"fused graph in {precision.upper()} (FP32 inputs and outputs); layers that break "
        "accuracy stay FP32",
        precision=precision,
        pipeline=_FUSED,
        precision_pass=precision,
        accuracy_aware=True,
        group="quantize",
        **fields,
    )


def _matmul_weights(name: str, description: str, *, precision: str, **options: Any) -> Recipe:
    """Step ``name`` (options ``options``) on MatMul weights, accuracy-aware, after the basic
    pipeline: it keeps MatMuls, which the fused one turns into Gemm in places."""
    return Recipe(
        name,
        description,
        precision=precision,
        pipeline="basic",
        precision_pass=name,
        options=options,
        accuracy_aware=True,
        group="quantize",
    )


def _static_int8(
    name: str,
    description: str,
    *,
    calibrate_method: str = "minmax",
    accuracy_aware: bool = False,
    **options: Any,
) -> Recipe:
    """Static INT8 QDQ of the fused graph with per-channel weights, calibrated by
    ``calibrate_method``; ``options`` go to the int8-static step as well."""
    return Recipe(
        name,
        description,
        precision="int8",
        pipeline=_FUSED,
        precision_pass="int8-static",
        options={"per_channel": True, "calibrate_method": calibrate_method, **options},
        needs_calibration=True,
        accuracy_aware=accuracy_aware,
        group="quantize",
    )


def _pruned(name: str, description: str, step: str, **options: Any) -> Recipe:
    """The fused graph pruned by ``step`` with ``options``, accuracy-aware."""
    return Recipe(
        name,
        description,
        pipeline=_FUSED,
        precision_pass=step,
        options=options,
        accuracy_aware=True,
        group="prune",
    )


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in [
        Recipe("original", "the model as given"),
        Recipe(
            "fused",
            "cleanup, constant folding, Conv+BN folding, MatMul+Add->Gemm (standard ONNX ops)",
            pipeline=_FUSED,
        ),
        Recipe(
            "fused-lepton",
            "fused graph plus Conv/Gemm/MatMul + bias + activation (+ residual) as ai.lepton "
            "fused ops, for the lepton backend",
            pipeline=_FUSED,
            target="lepton",
            backends=("lepton", "lepton+inductor"),
        ),
        _half_precision("fp16"),
        # onnxruntime's CPU provider lacks BF16
        _half_precision("bf16", backends=("lepton", "lepton+inductor")),
        _static_int8(
            "int8-qdq",
            "static INT8 QDQ of every layer: per-channel weights, MinMax activations",
        ),
        _static_int8(
            "int8-entropy",
            "static INT8 QDQ of every layer: per-channel weights, entropy (KL) calibration",
            calibrate_method="entropy",
        ),
        _static_int8(
            "int8-percentile",
            "static INT8 QDQ of every layer: per-channel weights, 99.999th-percentile calibration",
            calibrate_method="percentile",
        ),
        _static_int8(
            "int8-mixed",
            "static INT8 QDQ (per-channel weights, MinMax); the most sensitive layers stay FP32 "
            "until the accuracy constraint holds",
            accuracy_aware=True,
        ),
        _static_int8(
            "int8-gpu",
            "static INT8 QDQ for GPU/TensorRT: symmetric activations and per-channel weights; "
            "sensitive layers stay FP32",
            accuracy_aware=True,
            activation_symmetric=True,
        ),
        _matmul_weights(
            "int8-dynamic",
            "cleaned-up graph, dynamic INT8 for MatMuls with constant weights (transformers); "
            "sensitive layers stay FP32",
            precision="int8",
        ),
        Recipe(
            "fp8",
            "FP8 E4M3 QDQ (opset 19) for Hopper-class GPUs, calibrated; sensitive layers stay FP32",
            precision="fp8",
            pipeline=_FUSED,
            precision_pass="fp8",
            needs_calibration=True,
            accuracy_aware=True,
            group="quantize",
        ),
        _matmul_weights(
            "int4-weight",
            "cleaned-up graph, INT4 weight-only, block-wise (32), for MatMul weights; sensitive "
            "layers stay FP32",
            precision="int4w",
            block_size=32,
        ),
        _pruned(
            "prune-50",
            "unstructured magnitude pruning, 50% of each layer's weights; layers whose pruning "
            "breaks accuracy stay dense",
            "prune-magnitude",
            sparsity=0.5,
        ),
        _pruned(
            "prune-2of4",
            "2:4 semi-structured sparsity (the sparse tensor core layout); sensitive layers stay "
            "dense",
            "prune-2of4",
        ),
        _pruned(
            "prune-channels",
            "structured channel pruning: 25% of each channel group's channels removed (weights "
            "shrink); sensitive groups stay whole",
            "prune-channels",
            ratio=0.25,
        ),
    ]
}

DEFAULT_RECIPES = (
    "original",
    "fused",
    "fused-lepton",
    "fp16",
    "int8-mixed",
    "int8-dynamic",
    "int4-weight",
)
# Names that stand for several recipes in --recipes.
ALIASES: dict[str, tuple[str, ...]] = {
    "default": DEFAULT_RECIPES,
    "all": tuple(RECIPES),
    "quantize": tuple(n for n, r in RECIPES.items() if r.group == "quantize"),
    "prune": tuple(n for n, r in RECIPES.items() if r.group == "prune"),
}


def resolve(names: Sequence[str | Recipe] | None) -> list[Recipe]:
    """Recipes by name (or given as Recipe objects); ``original`` always comes first."""
    items: list[str | Recipe] = []
    for n in names or DEFAULT_RECIPES:
        items.extend(ALIASES[n] if isinstance(n, str) and n in ALIASES else [n])
    unknown = [n for n in items if isinstance(n, str) and n not in RECIPES]
    if unknown:
        known = ", ".join([*RECIPES, *ALIASES])
        raise InputError(f"unknown recipe(s) {', '.join(map(str, unknown))} (known: {known})")
    out: dict[str, Recipe] = {"original": RECIPES["original"]}
    for n in items:
        r = RECIPES[n] if isinstance(n, str) else n
        if r.name in out and out[r.name] != r:
            raise InputError(f"two different recipes are named {r.name!r}")
        out[r.name] = r
    return list(out.values())


def named(names: Sequence[str | Recipe] | None) -> frozenset[str]:
    """The recipes named one by one (not through a group such as ``default`` or ``quantize``).

    A recipe the user names is built even where it is known to be hopeless
    (``lepton_compile.hopeless``): naming it says they want to see it.
    """
    out: set[str] = set()
    for n in names or ():
        if isinstance(n, Recipe):
            out.add(n.name)
        elif n not in ALIASES:
            out.add(n)
    return frozenset(out)


def build(
    recipe: Recipe,
    model: onnx.ModelProto,
    calibration: Sequence[Mapping[str, np.ndarray]] = (),
    accuracy: compress.AccuracyContext | None = None,
) -> tuple[onnx.ModelProto, list[dict]]:
    """Apply a recipe to a (static-shaped) model; returns the new model and per-step records.

    ``accuracy`` (with the calibration feeds) lets an accuracy-aware recipe's compression step
    search layer by layer; without it the step compresses every layer it can. Its
    ``shared_dir`` lets recipes of one run share their pipeline's result, the reference
    outputs and calibration ranges (``lepton_compile.shared``).
    """
    from lepton_compile import passes, steps
    from lepton_compile.shared import SharedStore, key

    store = SharedStore(accuracy.shared_dir if accuracy is not None else None)
    records: list[dict] = []
    current = model
    if recipe.pipeline:
        pipeline, target = recipe.pipeline, recipe.target

        def run_pipeline() -> tuple[onnx.ModelProto, list[dict]]:
            res = passes.optimize(model, pipeline=pipeline, target=target)
            return res.model, [_record(r) for r in res.records]

        if store.enabled:
            k = key(store.fingerprint(model), pipeline, target)
            current, done = store.model(f"pipeline-{pipeline}", k, run_pipeline)
        else:
            current, done = run_pipeline()
        records.extend(done)
    if recipe.precision_pass:
        ctx = accuracy if recipe.accuracy_aware else None
        res = steps.apply(
            recipe.precision_pass,
            current,
            model,
            calibration,
            dict(recipe.options),
            ctx,
            store=store,
        )
        current = res.model
        records.append({**res.record, "name": recipe.precision_pass})
    if recipe.custom_step:
        fn = _import_step(recipe.custom_step)
        out = fn(current)
        if not isinstance(out, onnx.ModelProto):
            raise TypeError(f"{recipe.custom_step} returned {type(out).__name__}, not a ModelProto")
        current = out
        records.append({"name": recipe.custom_step, "modified": True})
    if store.reused:
        # Computed by an earlier recipe of this run (same model, samples and settings).
        records.append({"name": "shared with other recipes", "reused": sorted(set(store.reused))})
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
