"""Compression steps of the recipes: one adapter per quantization or pruning pass.

Each step knows the layers it acts on and how to build the model with some of them left alone,
which is what the accuracy search (``lepton_compile.compress``) needs. Without a search, a step
compresses every layer it can.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from lepton_compile import compress

Feeds = Sequence[Mapping[str, np.ndarray]]


def _proto(result: ir.passes.PassResult) -> onnx.ModelProto:
    return ir.serde.serialize_model(result.model)


def _op_types(model: onnx.ModelProto) -> dict[str, str]:
    return {n.name: n.op_type for n in model.graph.node}


@dataclass(frozen=True)
class Step:
    """A compression step: ``kind`` is "quantize" (search keeps layers in FP32) or "prune"."""

    name: str
    kind: str
    needs_calibration: bool
    run: Callable[..., compress.SearchResult]
    evaluator_backend: str = "ort"  # what runs candidates during the search


def _quant_step(
    model: onnx.ModelProto,
    calibration: Feeds,
    options: Mapping[str, Any],
    factory: Callable[..., Any],
    ev: compress.Evaluator | None,
    ctx: compress.AccuracyContext | None,
    name: str,
    qdq: bool,
) -> compress.SearchResult:
    from lepton_compile.passes.quantize import ensure_node_names

    named = ensure_node_names(model)
    probe = factory(**options)
    layers = probe.candidates(named)
    if not layers:
        raise compress.NotApplicable(f"{name}: nothing in this model to quantize")
    ops = _op_types(named)
    full = _proto(factory(**options)(ir.serde.deserialize_model(named)))

    def make(kept: Sequence[str]) -> onnx.ModelProto:
        if not kept:
            return full
        if qdq:
            reverted = compress.revert_qdq(full, named, kept)
            if reverted is not None:
                return reverted
        p = factory(**{**options, "nodes_to_exclude": tuple(kept)})
        return _proto(p(ir.serde.deserialize_model(named)))

    pairs = [(n, ops.get(n, "?")) for n in layers]
    if ev is None or ctx is None:
        rec = {"name": name, "modified": True, "layers_compressed": len(pairs)}
        return compress.SearchResult(full, rec)
    return compress.search_keep(name, pairs, make, ev, ctx)


def _static(cls: str = "QuantizeStaticInt8Pass", qdq: bool = True) -> Any:
    def run(model, calibration_, options, ev, ctx, name):  # type: ignore[no-untyped-def]
        from lepton_compile.passes import quantize

        klass = getattr(quantize, cls)
        return _quant_step(
            model,
            calibration_,
            options,
            lambda **o: klass(calibration_, **o),
            ev,
            ctx,
            name,
            qdq,
        )

    return run


def _plain(cls: str, qdq: bool = False) -> Any:
    def run(model, calibration_, options, ev, ctx, name):  # type: ignore[no-untyped-def]
        from lepton_compile.passes import quantize

        klass = getattr(quantize, cls)
        return _quant_step(model, calibration_, options, klass, ev, ctx, name, qdq)

    return run


def _prune_layers(
    model: onnx.ModelProto,
    calibration: Feeds,
    options: Mapping[str, Any],
    ev: compress.Evaluator | None,
    ctx: compress.AccuracyContext | None,
    name: str,
    cls: str,
) -> compress.SearchResult:
    from lepton_compile.passes import prune
    from lepton_compile.passes.quantize import ensure_node_names

    named = ensure_node_names(model)
    klass = getattr(prune, cls)
    probe = klass(**options)
    probe(ir.serde.deserialize_model(named))
    layers = [r["node"] for r in probe.report if not r.get("skipped")]
    if not layers:
        raise compress.NotApplicable(f"{name}: no Conv/Gemm/MatMul weight to prune")
    ops = _op_types(named)

    def make(pruned: Sequence[str]) -> onnx.ModelProto:
        keep = tuple(n for n in layers if n not in set(pruned))
        p = klass(**{**options, "nodes_to_exclude": keep})
        return _proto(p(ir.serde.deserialize_model(named)))

    pairs = [(n, ops.get(n, "?")) for n in layers]
    if ev is None or ctx is None:
        return compress.SearchResult(
            make(layers), {"name": name, "modified": True, "layers_pruned": len(layers)}
        )
    return compress.search_prune(name, pairs, make, ev, ctx)


def _prune_channels(
    model: onnx.ModelProto,
    calibration: Feeds,
    options: Mapping[str, Any],
    ev: compress.Evaluator | None,
    ctx: compress.AccuracyContext | None,
    name: str,
) -> compress.SearchResult:
    from lepton_compile.passes import prune
    from lepton_compile.passes.quantize import ensure_node_names

    named = ensure_node_names(model)
    opts = dict(options)
    ratio = float(opts.pop("ratio", 0.25))
    groups = [g for g in prune.channel_groups(named) if g.prunable]
    if not groups:
        raise compress.NotApplicable(f"{name}: no channel group can be pruned safely")
    details = {g.id: {"channels": g.channels} for g in groups}

    def make(pruned: Sequence[str]) -> onnx.ModelProto:
        ratios = {g: ratio for g in pruned}
        p = prune.StructuredChannelPrunePass(ratios=ratios, **opts)
        return _proto(p(ir.serde.deserialize_model(named)))

    units = [(g.id, "channel group") for g in groups]
    if ev is None or ctx is None:
        return compress.SearchResult(
            make([g.id for g in groups]),
            {"name": name, "modified": True, "groups_pruned": len(groups)},
        )
    return compress.search_prune(name, units, make, ev, ctx, details)


STEPS: dict[str, Step] = {
    s.name: s
    for s in [
        Step("fp16", "quantize", False, _plain("Float16Pass")),
        # onnxruntime's CPU provider has BF16 kernels for few ops: the search runs candidates
        # on the lepton backend (torch), which is also the only backend the recipe targets.
        Step("bf16", "quantize", False, _plain("BFloat16Pass"), evaluator_backend="lepton"),
        Step("int8-static", "quantize", True, _static()),
        Step("int8-dynamic", "quantize", False, _plain("QuantizeDynamicInt8Pass")),
        # FP8 QDQ sits before a Relu/Clip where onnxruntime would drop or reject the pattern,
        # so reverting a layer is a rebuild with nodes_to_exclude, not a graph edit.
        Step("fp8", "quantize", True, _static("QuantizeFP8Pass", qdq=False)),
        Step("int4-weight", "quantize", False, _plain("QuantizeInt4WeightOnlyPass")),
        Step(
            "prune-magnitude",
            "prune",
            False,
            lambda m, c, o, e, x, n: _prune_layers(m, c, o, e, x, n, "MagnitudePrunePass"),
        ),
        Step(
            "prune-2of4",
            "prune",
            False,
            lambda m, c, o, e, x, n: _prune_layers(m, c, o, e, x, n, "SemiStructured24Pass"),
        ),
        Step("prune-channels", "prune", False, _prune_channels),
    ]
}


# Samples each accuracy-search probe runs (the last ones of the calibration set).
MAX_SEARCH_SAMPLES = 16

# Ops that mark a model as quantized already: compressing it again is not our call.
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulNBits",
        "DynamicQuantizeLSTM",
        "DynamicQuantizeMatMul",
        "QAttention",
    }
)


def quantized_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Count of quantized ops in the main graph (empty for a float model)."""
    found: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in QUANTIZED_OPS:
            found[n.op_type] = found.get(n.op_type, 0) + 1
    return found


def apply(
    step: str,
    model: onnx.ModelProto,
    original: onnx.ModelProto,
    calibration: Feeds,
    options: Mapping[str, Any],
    accuracy: compress.AccuracyContext | None,
) -> compress.SearchResult:
    """Run one step on ``model``; with ``accuracy``, search layer by layer against ``original``."""
    if step not in STEPS:
        raise ValueError(f"unknown compression step {step!r} (known: {', '.join(STEPS)})")
    spec = STEPS[step]
    if spec.kind == "quantize":
        q = quantized_ops(model)
        if q:
            ops = ", ".join(f"{n} {k}" for k, n in sorted(q.items(), key=lambda x: -x[1]))
            raise compress.NotApplicable(f"{step}: the model is quantized already ({ops})")
    ev = None
    calibrate, search = list(calibration), list(calibration)
    labels = list(accuracy.labels) if accuracy is not None else []
    if accuracy is not None and spec.needs_calibration and len(calibration) >= 4:
        # Judge candidates on samples the calibration did not see: ranges fitted to a sample
        # flatter the quantized model on that very sample.
        k = max(2, len(calibration) // 2)
        calibrate, search = calibrate[:-k], search[-k:]
        labels = labels[-k:] if len(labels) == len(calibration) else []
    if len(search) > MAX_SEARCH_SAMPLES:  # each probe runs them all: bound the cost
        search = search[-MAX_SEARCH_SAMPLES:]
        labels = labels[-MAX_SEARCH_SAMPLES:] if labels else []
    if accuracy is not None:
        ev = compress.Evaluator(original, search, accuracy, spec.evaluator_backend, labels)
    return spec.run(model, calibrate, options, ev, accuracy, step)
