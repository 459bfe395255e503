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
from lepton_compile.errors import InputError
from lepton_compile.passes.errors import PassInputError
from lepton_compile.passes.quantize.revert import revert_nodes, revert_qdq
from lepton_compile.shared import SharedStore, feeds_fingerprint, key

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


def _build(pass_: Any, named: onnx.ModelProto) -> onnx.ModelProto:
    return _proto(pass_(ir.serde.deserialize_model(named)))


def _finish(
    name: str,
    units: list[tuple[str, str]],
    full: onnx.ModelProto,
    make: Callable[[Sequence[str]], onnx.ModelProto],
    ev: compress.Evaluator | None,
    ctx: compress.AccuracyContext | None,
    search: Callable[..., compress.SearchResult],
    count_key: str,
    details: Mapping[str, dict[str, Any]] | None = None,
) -> compress.SearchResult:
    """Everything compressed (no accuracy context), else the layer search."""
    if ev is None or ctx is None:
        return compress.SearchResult(full, {"name": name, "modified": True, count_key: len(units)})
    return search(name, units, make, ev, ctx, details)


# How a layer goes back to FP32 during a search: a rebuild with ``nodes_to_exclude`` works for
# every step; a graph edit of the all-layers model is far cheaper where the step's output has
# the shape it needs ("qdq": Q/DQ pairs in front of the layer, ``revert_qdq``; "splice": a
# chain that ends in the layer's own output tensor, ``revert_nodes``; both in
# ``passes.quantize.revert``).
_REVERTS: dict[str, Callable[..., onnx.ModelProto | None]] = {
    "qdq": revert_qdq,
    "splice": revert_nodes,
}


def _quantize(cls: str, calibrated: bool = False, revert: str = "rebuild") -> Callable[..., Any]:
    """A quantize step over ``passes.quantize.<cls>``; ``revert``: how a layer goes back."""

    def run(model, calibration, options, ev, ctx, name, store=None):  # type: ignore[no-untyped-def]
        from lepton_compile.passes import quantize

        klass = getattr(quantize, cls)
        if calibrated and store is not None and store.root is not None:
            options = {**options, "calibration_cache_dir": str(store.root / "calibration")}

        def factory(**o: Any) -> Any:
            return klass(calibration, **o) if calibrated else klass(**o)

        named = quantize.ensure_node_names(model)
        every = factory(**options)
        layers = every.candidates(named)
        if not layers:
            raise compress.NotApplicable(f"{name}: nothing in this model to quantize")
        full = _build(every, named)
        if store is not None and getattr(every, "ranges_reused", False):
            store.reused.append("calibration")
        edit = _REVERTS.get(revert)

        def make(kept: Sequence[str]) -> onnx.ModelProto:
            if not kept:
                return full
            if edit is not None:
                reverted = edit(full, named, kept)
                if reverted is not None:
                    return reverted
            return _build(factory(**{**options, "nodes_to_exclude": tuple(kept)}), named)

        ops = _op_types(named)
        units = [(n, ops.get(n, "?")) for n in layers]
        return _finish(name, units, full, make, ev, ctx, compress.search_keep, "layers_compressed")

    return run


def _prune_layers(cls: str) -> Callable[..., Any]:
    """A prune step over ``passes.prune.<cls>`` (magnitude, 2:4), layer by layer."""

    def run(model, calibration, options, ev, ctx, name, store=None):  # type: ignore[no-untyped-def]
        from lepton_compile.passes import prune
        from lepton_compile.passes.quantize import ensure_node_names

        named = ensure_node_names(model)
        klass = getattr(prune, cls)
        every = klass(**options)
        full = _build(every, named)  # every eligible layer pruned; its report names them
        layers = [r["node"] for r in every.report if not r.get("skipped")]
        if not layers:
            raise compress.NotApplicable(f"{name}: no Conv/Gemm/MatMul weight to prune")

        def make(pruned: Sequence[str]) -> onnx.ModelProto:
            if set(pruned) == set(layers):
                return full
            keep = tuple(n for n in layers if n not in set(pruned))
            return _build(klass(**{**options, "nodes_to_exclude": keep}), named)

        ops = _op_types(named)
        units = [(n, ops.get(n, "?")) for n in layers]
        return _finish(name, units, full, make, ev, ctx, compress.search_prune, "layers_pruned")

    return run


def _prune_channels(  # type: ignore[no-untyped-def]
    model, calibration, options, ev, ctx, name, store=None
):
    """Structured channel pruning, channel group by channel group."""
    from lepton_compile.passes import prune
    from lepton_compile.passes.quantize import ensure_node_names

    named = ensure_node_names(model)
    opts = dict(options)
    ratio = float(opts.pop("ratio", 0.25))
    groups = [g for g in prune.channel_groups(named) if g.prunable]
    if not groups:
        raise compress.NotApplicable(f"{name}: no channel group can be pruned safely")

    def make(pruned: Sequence[str]) -> onnx.ModelProto:
        ratios = {g: ratio for g in pruned}
        return _build(prune.StructuredChannelPrunePass(ratios=ratios, **opts), named)

    units = [(g.id, "channel group") for g in groups]
    full = make([g.id for g in groups])
    details = {g.id: {"channels": g.channels} for g in groups}
    return _finish(
        name, units, full, make, ev, ctx, compress.search_prune, "groups_pruned", details
    )


def _q(name: str, cls: str, calibrated: bool = False, revert: str = "rebuild", **kw: Any) -> Step:
    return Step(name, "quantize", calibrated, _quantize(cls, calibrated, revert), **kw)


STEPS: dict[str, Step] = {
    s.name: s
    for s in [
        _q("fp16", "Float16Pass"),
        # onnxruntime's CPU provider has BF16 kernels for few ops: the search runs candidates
        # on the lepton backend (torch), which is also the only backend the recipe targets.
        _q("bf16", "BFloat16Pass", evaluator_backend="lepton"),
        _q("int8-static", "QuantizeStaticInt8Pass", calibrated=True, revert="qdq"),
        _q("int8-dynamic", "QuantizeDynamicInt8Pass", revert="splice"),
        # FP8 QDQ sits before a Relu/Clip where onnxruntime would drop or reject the pattern,
        # so reverting a layer is a rebuild with nodes_to_exclude, not a graph edit.
        _q("fp8", "QuantizeFP8Pass", calibrated=True),
        _q("int4-weight", "QuantizeInt4WeightOnlyPass", revert="splice"),
        Step("prune-magnitude", "prune", False, _prune_layers("MagnitudePrunePass")),
        Step("prune-2of4", "prune", False, _prune_layers("SemiStructured24Pass")),
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
    store: SharedStore | None = None,
) -> compress.SearchResult:
    """Run one step on ``model``; with ``accuracy``, search layer by layer against ``original``.

    ``store`` shares what other recipes of the run compute alike: the original's outputs on
    the search samples, and calibration ranges.
    """
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
        reference = None
        if store is not None and store.enabled:
            ref_key = key(store.fingerprint(original), feeds_fingerprint(search))
            reference = store.value(
                "reference", ref_key, lambda: compress.run_ort(original, search)
            )
        ev = compress.Evaluator(
            original, search, accuracy, spec.evaluator_backend, labels, reference=reference
        )
    try:
        return spec.run(model, calibrate, options, ev, accuracy, step, store=store)
    except PassInputError as e:
        # The passes know nothing of the driver: their bad-input error becomes ours (exit 2).
        raise InputError(str(e)) from None
