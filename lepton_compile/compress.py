"""Accuracy-aware compression: layer sensitivity, mixed precision, pruning under a constraint.

A compression step (a quantization or a pruning pass) is first applied to every layer it can
touch. If that breaks the accuracy constraint, each layer's *sensitivity* is measured: how much
of the loss goes away when that one layer alone is left uncompressed (kept in FP32, or left
dense). The most sensitive layers are then kept uncompressed, fewest first, until the
constraint holds — the idea of NNCF's accuracy control, applied to an ONNX graph and reported
layer by layer.

Sensitivity is measured on the calibration feeds, against the original model's outputs on the
same feeds (or with the user's metric on their labels); the variant that comes out is then
verified again, like every variant, on the held-out eval feeds. Reverting one layer of a QDQ
model is a graph edit (its inputs are reconnected to the FP32 tensors), so a static INT8 or FP8
search calibrates once; the other steps rebuild with ``nodes_to_exclude``, which is cheap.
"""

from __future__ import annotations

import logging
import math
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from lepton_compile import accuracy
from lepton_compile.errors import InputError, LeptonError

log = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]
Metric = Callable[[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]], float]

# The search aims under the constraint with this share of it, so that the held-out check that
# follows (other samples) still passes.
DEFAULT_MARGIN = 0.7
DEFAULT_SEARCH_BUDGET_S = 120.0


class CompressionFailed(LeptonError):
    """No mix of compressed and uncompressed layers met the accuracy constraint."""

    exit_code = 1


class NotApplicable(LeptonError):
    """The step has nothing to act on in this model (say, INT4 MatMul weights in a CNN)."""

    exit_code = 2


@dataclass
class AccuracyContext:
    """What the search needs to judge a candidate; picklable, it travels to a worker."""

    max_drop: float = 0.01
    score_outputs: tuple[str, ...] = ()
    metric: Metric | None = None
    labels: list[dict[str, np.ndarray]] = field(default_factory=list)
    margin: float = DEFAULT_MARGIN
    budget_s: float = DEFAULT_SEARCH_BUDGET_S

    @property
    def target(self) -> float:
        return self.max_drop * self.margin

    def picklable(self) -> AccuracyContext:
        """This context, without the metric if it cannot travel to a worker process."""
        if self.metric is None:
            return self
        try:
            pickle.dumps(self.metric)
            return self
        except Exception:
            log.info("the metric cannot be pickled: the layer search uses output fidelity")
            return AccuracyContext(
                self.max_drop, self.score_outputs, None, [], self.margin, self.budget_s
            )


def run_model(
    model: onnx.ModelProto, feeds: Sequence[Feed], backend: str = "ort"
) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` on each feed: onnxruntime (CPU), or a backend of ours by name."""
    if backend == "ort":
        return run_ort(model, feeds)
    import tempfile
    from pathlib import Path

    from lepton_compile.runtime import get_backend

    with tempfile.TemporaryDirectory(prefix="lepton-eval-") as tmp:
        path = Path(tmp) / "candidate.onnx"
        onnx.save(model, str(path))
        sess = get_backend(backend).load(path, device="cpu")
        return [sess.run(dict(f)) for f in feeds]


def run_ort(model: onnx.ModelProto, feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` on each feed with onnxruntime's CPU provider, default optimizations."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    out = []
    for f in feeds:
        vals = sess.run(None, {k: v for k, v in f.items() if k in wanted})
        out.append(dict(zip(names, vals, strict=True)))
    return out


def metric_value(metric: Metric, outputs: list[dict], labels: list[dict], what: str) -> float:
    """Call the user's metric; any failure or a non-number is a one-line error."""
    try:
        value = metric(outputs, labels)
    except Exception as e:
        raise InputError(f"the metric raised on {what}: {type(e).__name__}: {e}") from None
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"the metric returned {type(value).__name__} on {what}, expected a number"
        ) from None
    if not math.isfinite(f):
        raise InputError(f"the metric returned {f} on {what}, expected a finite number")
    return f


class Evaluator:
    """Drop of a candidate model against the original on fixed feeds (fidelity or metric)."""

    def __init__(
        self,
        original: onnx.ModelProto,
        feeds: Sequence[Feed],
        ctx: AccuracyContext,
        backend: str = "ort",
        labels: Sequence[dict[str, np.ndarray]] | None = None,
    ):
        if not feeds:
            raise InputError("the accuracy search needs at least one calibration sample")
        self.feeds = list(feeds)
        self.ctx = ctx
        self.labels = list(ctx.labels if labels is None else labels)
        self.backend = backend  # what runs the candidates (the reference is always onnxruntime)
        self.reference = run_ort(original, self.feeds)
        self.metric_ref: float | None = None
        if ctx.metric is not None and len(self.labels) == len(self.feeds):
            self.metric_ref = metric_value(ctx.metric, self.reference, self.labels, "the original")
        self.evaluations = 0
        self.seconds = 0.0

    def drop(self, model: onnx.ModelProto) -> float:
        t0 = time.perf_counter()
        self.evaluations += 1
        try:
            outs = run_model(model, self.feeds, self.backend)
        except Exception as e:  # a candidate that does not run is as bad as it gets
            log.debug("candidate failed to run: %s", e)
            return 1.0
        finally:
            self.seconds += time.perf_counter() - t0
        if self.ctx.metric is not None and self.metric_ref is not None:
            m = metric_value(self.ctx.metric, outs, self.labels, "a compressed candidate")
            return max(0.0, self.metric_ref - m)
        fid = accuracy.compare(self.reference, outs, set(self.ctx.score_outputs), self.ctx.max_drop)
        if fid.reason and "drop" not in fid.reason:
            return 1.0  # non-finite values, wrong shapes, a missing output
        return fid.drop


# --------------------------------------------------------------------------- QDQ revert


def revert_qdq(
    quantized: onnx.ModelProto, original: onnx.ModelProto, names: Sequence[str]
) -> onnx.ModelProto | None:
    """``quantized`` with the named nodes fed by FP32 tensors again (their QDQ bypassed).

    For each named node whose input comes from a DequantizeLinear, the input is reconnected to
    the tensor the same node read in ``original`` (an activation still present in the QDQ
    graph and produced by the same node, or a weight initializer copied back). Returns None
    when a named node is not in both graphs with the same input count, so the caller can
    rebuild instead.
    """
    if not names:
        return quantized
    orig_nodes = {n.name: n for n in original.graph.node if n.name}
    q = onnx.ModelProto()
    q.CopyFrom(quantized)
    g = q.graph
    producers = {o: n for n in g.node for o in n.output}
    q_nodes = {n.name: n for n in g.node if n.name}
    present = {t.name for t in g.initializer} | {i.name for i in g.input}
    present |= {o for n in g.node for o in n.output}
    orig_inits = {t.name: t for t in original.graph.initializer}
    orig_producer_nodes = {o: n for n in original.graph.node for o in n.output}
    orig_producers = {o: n.name for o, n in orig_producer_nodes.items()}
    restored: dict[str, str] = {}  # activation name -> its re-applied FP32 copy
    for name in names:
        qn, on = q_nodes.get(name), orig_nodes.get(name)
        if qn is None or on is None or len(qn.input) != len(on.input):
            return None
        for i, (qi, oi) in enumerate(zip(qn.input, on.input, strict=True)):
            p = producers.get(qi)
            if p is None or p.op_type != "DequantizeLinear" or qi == oi or not oi:
                continue
            if oi not in orig_inits:
                # An activation: bypass its QDQ only if the FP32 tensor of that name still
                # means the same thing. The quantizer folds a Relu/Clip that precedes a
                # QuantizeLinear into the quantized range, so the name can now hold the
                # pre-activation values: then the activation is applied again, in FP32.
                src = producers.get(oi)
                if (src.name if src is not None else None) != orig_producers.get(oi):
                    act = orig_producer_nodes.get(oi)
                    if act is None or act.op_type not in _FOLDED_ACTIVATIONS:
                        continue  # not a case we can restore: keep the dequantized input
                    if oi not in restored:
                        restored[oi] = _reapply(g, act, oi, orig_inits, present)
                    qn.input[i] = restored[oi]
                    continue
            if oi not in present:
                if oi not in orig_inits:
                    return None
                g.initializer.append(orig_inits[oi])
                present.add(oi)
            qn.input[i] = oi
    _remove_dead(q)
    return q


# Activations that onnxruntime's QDQ quantizer folds into the following QuantizeLinear.
_FOLDED_ACTIVATIONS = ("Relu", "Clip")


def _reapply(
    g: onnx.GraphProto,
    act: onnx.NodeProto,
    name: str,
    orig_inits: Mapping[str, onnx.TensorProto],
    present: set[str],
) -> str:
    """Append a copy of ``act`` that reads ``name`` (its input's value) and return its output."""
    out = f"{name}_fp32_restored"
    node = onnx.NodeProto()
    node.CopyFrom(act)
    node.name = f"{act.name}_restored"
    node.input[0] = name
    for extra in node.input[1:]:  # Clip's min/max: bring the constants along
        if extra and extra not in present and extra in orig_inits:
            g.initializer.append(orig_inits[extra])
            present.add(extra)
    del node.output[:]
    node.output.append(out)
    # Keep topological order: right after the node that writes ``name``.
    pos = next((k + 1 for k, n in enumerate(g.node) if name in n.output), 0)
    g.node.insert(pos, node)
    present.add(out)
    return out


def _remove_dead(model: onnx.ModelProto) -> None:
    """Drop nodes and initializers that no graph output depends on any more."""
    g = model.graph
    needed = {o.name for o in g.output}
    keep = []
    for n in reversed(list(g.node)):
        if any(o in needed for o in n.output) or n.op_type in ("If", "Loop", "Scan"):
            keep.append(n)
            needed.update(i for i in n.input if i)
            for a in n.attribute:  # subgraphs read outer names
                if a.type == onnx.AttributeProto.GRAPH:
                    needed.update(_outer_names(a.g))
    keep.reverse()
    if len(keep) != len(g.node):
        del g.node[:]
        g.node.extend(keep)
    inits = [t for t in g.initializer if t.name in needed]
    if len(inits) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(inits)


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    names = {i for n in graph.node for i in n.input}
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= _outer_names(a.g)
    return names


# --------------------------------------------------------------------------- searches


@dataclass
class LayerRecord:
    name: str
    op_type: str
    sensitivity: float | None = None  # drop removed by keeping this layer uncompressed
    drop_alone: float | None = None  # drop of the model with only this layer uncompressed
    compressed: bool = True
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "op_type": self.op_type}
        if self.sensitivity is not None:
            d["sensitivity"] = round(self.sensitivity, 6)
        if self.drop_alone is not None:
            d["drop_if_kept"] = round(self.drop_alone, 6)
        d["compressed"] = self.compressed
        d.update(self.detail)
        return d


@dataclass
class SearchResult:
    model: onnx.ModelProto
    record: dict[str, Any]


def _search_record(
    kind: str,
    layers: list[LayerRecord],
    ev: Evaluator,
    ctx: AccuracyContext,
    drop_full: float,
    drop_final: float,
    t0: float,
    note: str = "",
) -> dict[str, Any]:
    kept = [r.name for r in layers if not r.compressed]
    return {
        "name": "accuracy search",
        "kind": kind,
        "modified": True,
        "criterion": "user metric on calibration samples and labels"
        if ev.metric_ref is not None
        else "output fidelity vs the original on calibration samples",
        "search_samples": len(ev.feeds),
        "target_drop": ctx.target,
        "drop_all_compressed": round(drop_full, 6),
        "drop_final": round(drop_final, 6),
        "layers_total": len(layers),
        "layers_compressed": len(layers) - len(kept),
        "layers_kept": kept,
        "evaluations": ev.evaluations,
        "seconds": round(time.perf_counter() - t0, 3),
        **({"note": note} if note else {}),
        "layers": [r.to_dict() for r in layers],
    }


def _probe(
    recs: list[LayerRecord],
    make: Callable[[Sequence[str]], onnx.ModelProto],
    ev: Evaluator,
    ctx: AccuracyContext,
    t0: float,
    unprobed: str,
) -> str:
    """drop(make([one unit])) for each unit in order, until the time budget is spent."""
    for r in recs:
        if time.perf_counter() - t0 > ctx.budget_s:
            left = sum(x.drop_alone is None for x in recs)
            return f"time budget {ctx.budget_s:g} s: {left} {unprobed}"
        r.drop_alone = ev.drop(make((r.name,)))
    return ""


def search_keep(
    kind: str,
    layers: list[tuple[str, str]],
    make: Callable[[Sequence[str]], onnx.ModelProto],
    ev: Evaluator,
    ctx: AccuracyContext,
    details: Mapping[str, dict[str, Any]] | None = None,
) -> SearchResult:
    """Compress every layer, then keep the most sensitive ones uncompressed until the target holds.

    ``layers`` are (node name, op type) pairs the step acts on; ``make(kept)`` builds the model
    with the ``kept`` layers left uncompressed. Sensitivity of a layer = drop(all compressed) -
    drop(all but this layer compressed). Layers not probed before the time budget ran out rank
    after the probed ones, in graph order.
    """
    t0 = time.perf_counter()
    recs = [LayerRecord(n, op, detail=dict((details or {}).get(n, {}))) for n, op in layers]
    if not recs:
        raise NotApplicable(f"{kind}: nothing in this model to act on")
    full = make(())
    d_full = ev.drop(full)
    if d_full <= ctx.target:
        return SearchResult(full, _search_record(kind, recs, ev, ctx, d_full, d_full, t0))
    note = _probe(recs, make, ev, ctx, t0, "layers not probed (ranked last)")
    for r in recs:
        if r.drop_alone is not None:
            r.sensitivity = d_full - r.drop_alone
    probed = sorted(
        (r for r in recs if r.sensitivity is not None), key=lambda r: -(r.sensitivity or 0.0)
    )
    order = probed + [r for r in recs if r.sensitivity is None]
    names = [r.name for r in order]

    cache: dict[int, tuple[float, onnx.ModelProto]] = {0: (d_full, full)}

    def attempt(k: int) -> float:
        if k not in cache:
            m = make(names[:k])
            cache[k] = (ev.drop(m), m)
        return cache[k][0]

    # Exponential then binary search for the fewest kept layers that meet the target
    # (drop is close to monotone in k; the answer is re-checked at the end).
    hi = 1
    while hi < len(names) and attempt(hi) > ctx.target:
        hi *= 2
    hi = min(hi, len(names))
    if attempt(hi) > ctx.target:
        raise CompressionFailed(
            f"{kind}: the drop stays {cache[hi][0]:.4f} > {ctx.target:.4f} even with every "
            "layer kept uncompressed"
        )
    lo = hi // 2  # attempt(lo) > target (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid) <= ctx.target:
            hi = mid
        else:
            lo = mid
    if hi == len(names):
        raise CompressionFailed(
            f"{kind}: every layer had to stay uncompressed to meet the target {ctx.target:.4g}"
        )
    kept = set(names[:hi])
    for r in recs:
        r.compressed = r.name not in kept
    d_final, model = cache[hi]
    return SearchResult(model, _search_record(kind, recs, ev, ctx, d_full, d_final, t0, note))


def search_prune(
    kind: str,
    units: list[tuple[str, str]],
    make: Callable[[Sequence[str]], onnx.ModelProto],
    ev: Evaluator,
    ctx: AccuracyContext,
    details: Mapping[str, dict[str, Any]] | None = None,
) -> SearchResult:
    """Prune as many units (layers or channel groups) as the constraint allows.

    ``make(pruned)`` prunes exactly the named units. Each unit's sensitivity is the drop when it
    alone is pruned; units are then added least sensitive first, as many as keep the target.
    """
    t0 = time.perf_counter()
    recs = [LayerRecord(n, op, detail=dict((details or {}).get(n, {}))) for n, op in units]
    if not recs:
        raise NotApplicable(f"{kind}: nothing in this model to prune")
    all_names = [r.name for r in recs]
    full = make(all_names)
    d_full = ev.drop(full)
    if d_full <= ctx.target:
        return SearchResult(full, _search_record(kind, recs, ev, ctx, d_full, d_full, t0))
    note = _probe(recs, make, ev, ctx, t0, "units not probed (left unpruned)")
    for r in recs:
        r.sensitivity = r.drop_alone  # here: the drop with this unit alone pruned
    probed = sorted(
        (r for r in recs if r.sensitivity is not None and r.sensitivity <= ctx.target),
        key=lambda r: r.sensitivity or 0.0,
    )
    names = [r.name for r in probed]
    cache: dict[int, tuple[float, onnx.ModelProto | None]] = {0: (0.0, None)}

    def attempt(k: int) -> float:
        if k not in cache:
            m = make(names[:k])
            cache[k] = (ev.drop(m), m)
        return cache[k][0]

    lo, hi = 0, len(names)  # largest k with attempt(k) <= target
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if attempt(mid) <= ctx.target:
            lo = mid
        else:
            hi = mid - 1
    if lo == 0:
        raise CompressionFailed(f"{kind}: pruning any one unit drops accuracy past the target")
    pruned = set(names[:lo])
    for r in recs:
        r.compressed = r.name in pruned
    d_final, model = cache[lo]
    assert model is not None
    rec = _search_record(kind, recs, ev, ctx, d_full, d_final, t0, note)
    rec["sensitivity_meaning"] = "drop with this unit alone pruned"
    return SearchResult(model, rec)
