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
model is a graph edit (its inputs are reconnected to the FP32 tensors), so a static INT8
search calibrates once; dynamic INT8 and INT4 layers are spliced back the same way; the other
steps rebuild with ``nodes_to_exclude``.

A search does not build what cannot win. Layers are probed spread over the graph, at most
MAX_PROBES of them, within a time budget scaled to the model (the first probe's cost times
the probe cap); at checkpoints the probes so far, with one probe of the unprobed layers
together, are judged under the additive model the ranking assumes, and a search whose target
would need more than MAX_KEPT_SHARE of the layers uncompressed (or that could prune fewer
than MIN_PRUNED_SHARE of the units) stops there: "rejected after N probes", with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import onnx

from lepton_compile import accuracy, modelio
from lepton_compile.errors import InputError, LeptonError
from lepton_compile.passes import ort_session

# The graph edits that put a layer back to FP32 live with the quantization passes; the
# searches' callers reach them here too.
from lepton_compile.passes.quantize.revert import revert_nodes, revert_qdq  # noqa: F401

log = logging.getLogger(__name__)

Feed = Mapping[str, np.ndarray]
Metric = Callable[[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]], float]

# The search aims under the constraint with this share of it, so that the held-out check that
# follows (other samples) still passes.
DEFAULT_MARGIN = 0.7
DEFAULT_SEARCH_BUDGET_S = 60.0


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
    budget_s: float = DEFAULT_SEARCH_BUDGET_S  # at most; the search scales its own to the model
    # Where recipes of one run share reference outputs, pipelines and calibration
    # (``lepton_compile.shared``); None: each recipe computes its own.
    shared_dir: str | None = None

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
            return dataclasses.replace(self, metric=None, labels=[])


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
        path = modelio.save_model(model, Path(tmp) / "candidate.onnx")
        sess = get_backend(backend).load(path, device="cpu")
        return [sess.run(dict(f)) for f in feeds]


def run_ort(model: onnx.ModelProto, feeds: Sequence[Feed]) -> list[dict[str, np.ndarray]]:
    """Outputs of ``model`` on each feed with onnxruntime's CPU provider, default optimizations.

    A model over the protobuf limit cannot be handed over as bytes: it goes through a file.
    """
    sess = ort_session.session(model, optimization="all")
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


class ProbeRunner(Protocol):
    """Runs a search's independent probes (``width`` of them at once) somewhere else."""

    width: int

    def drops(self, ev: Evaluator, models: Sequence[onnx.ModelProto]) -> list[float]: ...


# How this process runs independent probes: one after another (None), or as the executor it
# works for installs (a Ray actor runs them as Ray tasks: ``executor_ray.RayProbes``).
_probe_runner: ProbeRunner | None = None


def set_probe_runner(runner: ProbeRunner | None) -> None:
    global _probe_runner
    _probe_runner = runner


def probe_width() -> int:
    """How many probes this process runs at once."""
    return 1 if _probe_runner is None else max(1, _probe_runner.width)


class Evaluator:
    """Drop of a candidate model against the original on fixed feeds (fidelity or metric)."""

    def __init__(
        self,
        original: onnx.ModelProto,
        feeds: Sequence[Feed],
        ctx: AccuracyContext,
        backend: str = "ort",
        labels: Sequence[dict[str, np.ndarray]] | None = None,
        reference: list[dict[str, np.ndarray]] | None = None,
    ):
        if not feeds:
            raise InputError("the accuracy search needs at least one calibration sample")
        self.feeds = list(feeds)
        self.ctx = ctx
        self.labels = list(ctx.labels if labels is None else labels)
        self.backend = backend  # what runs the candidates (the reference is always onnxruntime)
        # ``reference``: the original's outputs on these feeds, when another recipe of the run
        # computed them already.
        self.reference = run_ort(original, self.feeds) if reference is None else reference
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

    def drops(self, models: Sequence[onnx.ModelProto]) -> list[float]:
        """``drop`` of each model: at once where this process has a probe runner."""
        runner = _probe_runner
        if runner is None or len(models) <= 1:
            return [self.drop(m) for m in models]
        t0 = time.perf_counter()
        try:
            result = runner.drops(self, models)
        except Exception as e:  # a candidate too large to serialize, a lost task: go serial
            log.info("probes ran one by one here: %s", e)
            return [self.drop(m) for m in models]
        self.evaluations += len(models)
        self.seconds += time.perf_counter() - t0
        return result


# --------------------------------------------------------------------------- searches

# A search gives up on a result that keeps more than this share of its layers uncompressed:
# such a variant keeps little of what the recipe is for (size, speed) and pays a conversion at
# every border between compressed and uncompressed layers, so it cannot win.
MAX_KEPT_SHARE = 0.8
# Likewise a pruning search that could prune fewer than this share of its units: the rest of
# the model, dense, would hide what the pruned part saves.
MIN_PRUNED_SHARE = 0.25
# The probes are judged first after this many (or 1/16 of the units, if more), then at every
# doubling: fewer say too little about the rest.
MIN_PROBES_JUDGED = 8
# Single-unit probes a search runs at most; units not probed rank after the probed ones. With
# the probes spread over the graph (``spread_order``), a sample this large ranks the units
# that matter, and the search that follows measures real candidates, not estimates.
MAX_PROBES = 64
# The probing may take this many times what the first probe took, times the probe cap: room
# for probes slower than the first (a larger revert, a busier machine), not for many more.
BUDGET_SLACK = 1.5
# The scaled budget is never less than this: below it, cutting the probes saves nothing worth
# a less informed search, and the probe cap alone bounds them.
MIN_SCALED_BUDGET_S = 10.0
# How far above the sample's prediction the unprobed units' measured effect may be before
# the sample no longer stands for them (in standard errors of that prediction).
Z_CONSISTENT = 3.0


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


def spread_order(n: int) -> list[int]:
    """0..n-1 in bit-reversed order (0, n/2, n/4, 3n/4, ...): every prefix spreads over the range.

    Probing layers in this order makes the first probes a sample of the whole depth of the
    model, early and late layers alike, so that what they show can be extrapolated.
    """
    if n <= 1:
        return list(range(n))
    bits = (n - 1).bit_length()
    out = []
    for i in range(1 << bits):
        j = int(format(i, f"0{bits}b")[::-1], 2)
        if j < n:
            out.append(j)
    return out


def _fewest(values: Sequence[tuple[float, float]], need: float) -> float | None:
    """Fewest units (by weight) whose values reach ``need``, taking the largest per unit first.

    ``values`` holds (value per unit, number of units) pairs; None when all of them together
    fall short of ``need``.
    """
    total, count = 0.0, 0.0
    for per_unit, units in sorted(values, key=lambda x: -x[0]):
        if per_unit <= 0 or units <= 0:
            break
        if total + per_unit * units >= need:
            return count + math.ceil((need - total) / per_unit - 1e-9)
        total += per_unit * units
        count += units
    return None if need > 0 else 0.0


def keep_hopeless(
    sensitivities: Sequence[float], n_rest: int, rest_removes: float, need: float, k_max: float
) -> str | None:
    """Why no set of at most ``k_max`` layers can remove ``need`` of the drop, or None.

    ``sensitivities``: the drop each probed layer removes when it alone is kept uncompressed;
    ``rest_removes``: the drop removed by keeping the ``n_rest`` unprobed layers together.
    The model is the one the search ranks by: layers' effects add up. Two tests:

    - a bound: even if all of ``rest_removes`` sat in one layer, the fewest layers that reach
      ``need`` are more than ``k_max``, or all measured effects together fall short of it
      (then the drop is not made of layer effects: single layers barely move it);
    - an extrapolation, where the unprobed layers remove about what the sample predicts
      (their effect is not concentrated in a few that were missed): the probed layers stand
      for the unprobed ones too, scaled to what those were measured to remove together.
    """
    s = [max(0.0, x) for x in sensitivities]
    m = len(s)
    rest = max(0.0, rest_removes)
    total = m + n_rest
    k_opt = _fewest([(x, 1) for x in s] + [(rest, 1)], need)
    if k_opt is None:
        top = max(s, default=0.0)
        return (
            f"the layers' measured effects fall short: kept uncompressed, no probed layer "
            f"removes more than {top:.4f} of the drop and the {n_rest} unprobed layers "
            f"together {rest:.4f}; {need:.4f} would have to go"
        )
    if k_opt > k_max:
        return (
            f"at least {k_opt:.0f} of {total} layers would have to stay uncompressed "
            f"(more than {k_max:.0f})"
        )
    if m < 2 or n_rest == 0:
        return None
    mean = sum(s) / m
    sd = math.sqrt(sum((x - mean) ** 2 for x in s) / (m - 1))
    expected = n_rest * mean
    if rest > expected + Z_CONSISTENT * math.sqrt(n_rest) * sd + 0.01 * need:
        return None  # the unprobed layers hold more than the sample shows: keep probing
    scale = rest / expected if expected > 0 else 0.0
    per = n_rest / m
    k_est = _fewest([(x, 1) for x in s] + [(x * scale, per) for x in s], need)
    if k_est is None or k_est > k_max:
        about = f"about {k_est:.0f}" if k_est is not None else "all"
        return (
            f"the first {m} probes extrapolate to keeping {about} of {total} layers "
            f"uncompressed (more than {k_max:.0f})"
        )
    return None


def prune_hopeless(drops: Sequence[float], n_total: int, target: float) -> str | None:
    """Why fewer than ``MIN_PRUNED_SHARE`` of the units can be pruned, judged from a sample.

    ``drops``: the drop with each probed unit alone pruned (a unit that alone breaks the
    target can never be pruned, since pruning more only adds damage). The share of units that
    pass alone is bounded from above (Wilson, 95%) from the sample; below the minimum, no
    pruned variant that the search could find is worth building.
    """
    m = len(drops)
    if m == 0:
        return None
    ok = sum(d <= target for d in drops)
    z = 1.96
    p = ok / m
    upper = (p + z * z / (2 * m) + z * math.sqrt(p * (1 - p) / m + z * z / (4 * m * m))) / (
        1 + z * z / m
    )
    if upper < MIN_PRUNED_SHARE:
        return (
            f"{ok} of the first {m} units can be pruned alone without breaking the target "
            f"{target:.4g}: at most {upper:.0%} of the {n_total} units could be "
            f"(less than {MIN_PRUNED_SHARE:.0%})"
        )
    return None


class _Prober:
    """Single-unit probes in spread order, under a probe cap and a time budget scaled to the
    model: the first probe's cost times the cap (with slack), never past ``ctx.budget_s``.

    ``judge(m)`` runs after the m-th probe at the checkpoints (MIN_PROBES_JUDGED, then each
    doubling) and may raise CompressionFailed to stop the search.
    """

    def __init__(self, recs: list[LayerRecord], ctx: AccuracyContext, t0: float):
        self.recs = recs
        self.order = spread_order(len(recs))
        self.cap = min(len(recs), MAX_PROBES)
        self.ctx = ctx
        self.t0 = t0
        self.probe_s: float | None = None
        self.limit_s = ctx.budget_s
        self.probed = 0
        self.stopped = ""

    def first_checkpoint(self) -> int:
        return max(MIN_PROBES_JUDGED, math.ceil(len(self.recs) / 16))

    def run(
        self,
        make: Callable[[Sequence[str]], onnx.ModelProto],
        ev: Evaluator,
        judge: Callable[[int], None],
        unprobed: str,
    ) -> str:
        """Probe until done, capped or out of time; returns a note when units were left."""
        checkpoint = self.first_checkpoint()
        n = len(self.recs)
        judged = -1

        def judge_once(m: int) -> None:
            nonlocal judged
            if m != judged:
                judged = m
                judge(m)

        width = probe_width()
        m = 0
        while m < n:
            left = n - m
            if m >= self.cap:
                self.stopped = f"probe cap {self.cap}"
                judge_once(m)
                return f"probe cap of {self.cap}: {left} {unprobed}"
            if time.perf_counter() - self.t0 > self.limit_s:
                self.stopped = f"time budget {self.limit_s:.3g} s"
                judge_once(m)
                return f"time budget {self.limit_s:.3g} s: {left} {unprobed}"
            # The first probe alone (its cost scales the budget); then as many at once as
            # this process runs, never past the cap or the next checkpoint.
            size = 1 if self.probe_s is None else min(width, self.cap - m, max(1, checkpoint - m))
            batch = [self.recs[i] for i in self.order[m : m + size]]
            t = time.perf_counter()
            for r, d in zip(batch, ev.drops([make((r.name,)) for r in batch]), strict=True):
                r.drop_alone = d
            m += len(batch)
            self.probed = m
            if self.probe_s is None:
                # The budget scales with the model: what one probe costs here, times the cap.
                self.probe_s = time.perf_counter() - t
                spent = time.perf_counter() - self.t0
                scaled = spent + self.probe_s * self.cap * BUDGET_SLACK
                self.limit_s = min(self.ctx.budget_s, max(MIN_SCALED_BUDGET_S, scaled))
            if self.probed == checkpoint and self.probed < n:
                judge_once(self.probed)
                checkpoint *= 2
        self.stopped = "every unit probed"
        return ""

    def record(self) -> dict[str, Any]:
        return {
            "probes_single": self.probed,
            "probing_stopped": self.stopped,
            "budget": {
                "probe_cap": self.cap,
                "first_probe_s": None if self.probe_s is None else round(self.probe_s, 3),
                "limit_s": round(self.limit_s, 3),
                "rule": f"first probe's cost x probe cap x {BUDGET_SLACK:g}, at least "
                f"{MIN_SCALED_BUDGET_S:g} s, at most --search-budget-s ({self.ctx.budget_s:g} s)",
            },
        }


def _search_record(
    kind: str,
    layers: list[LayerRecord],
    ev: Evaluator,
    ctx: AccuracyContext,
    drop_full: float,
    drop_final: float,
    t0: float,
    note: str = "",
    prober: _Prober | None = None,
    stopped: str = "",
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
        "probes": ev.evaluations,
        "stopped": stopped,
        "seconds": round(time.perf_counter() - t0, 3),
        **(prober.record() if prober is not None else {}),
        **({"note": note} if note else {}),
        "layers": [r.to_dict() for r in layers],
    }


def _rejected(kind: str, ev: Evaluator, why: str) -> CompressionFailed:
    return CompressionFailed(f"{kind}: rejected after {ev.evaluations} probes: {why}")


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
    drop(all but this layer compressed). Layers are probed spread over the graph; layers not
    probed before the probe cap or the time budget rank after the probed ones, in graph order.

    The search gives up early (CompressionFailed, "rejected after N probes") when the target
    needs more than MAX_KEPT_SHARE of the layers uncompressed, as soon as the probes show it:
    at the probing checkpoints (``keep_hopeless``), and while searching the number of layers
    to keep, where the drop removed per kept layer can only fall as less sensitive layers are
    added, so the best rate seen so far bounds how many layers the target needs.
    """
    t0 = time.perf_counter()
    recs = [LayerRecord(n, op, detail=dict((details or {}).get(n, {}))) for n, op in layers]
    if not recs:
        raise NotApplicable(f"{kind}: nothing in this model to act on")
    n = len(recs)
    k_max = max(1, math.floor(MAX_KEPT_SHARE * n))
    full = make(())
    d_full = ev.drop(full)
    if d_full <= ctx.target:
        return SearchResult(
            full,
            _search_record(
                kind, recs, ev, ctx, d_full, d_full, t0, stopped="met with every layer compressed"
            ),
        )
    need = d_full - ctx.target
    prober = _Prober(recs, ctx, t0)
    rest_share: dict[int, float] = {}  # probes done -> drop removed per unprobed layer

    def judge(m: int) -> None:
        probed = [recs[i] for i in prober.order[:m]]
        rest = [recs[i].name for i in prober.order[m:]]
        d_rest = ev.drop(make(rest)) if rest else 0.0
        rest_share[m] = max(0.0, d_full - d_rest) / max(1, len(rest))
        s = [d_full - (r.drop_alone if r.drop_alone is not None else d_full) for r in probed]
        why = keep_hopeless(s, len(rest), d_full - d_rest, need, k_max)
        if why:
            raise _rejected(kind, ev, why)

    note = prober.run(make, ev, judge, "layers not probed (ranked by their group's mean)")
    for r in recs:
        if r.drop_alone is not None:
            r.sensitivity = d_full - r.drop_alone
    # Layers left unprobed rank by what they removed together, per layer (the group probe at
    # the stop), among the probed ones: one that matters is then tried before the probed
    # layers that do not, not after all of them.
    unprobed = rest_share.get(prober.probed, -math.inf)
    order = sorted(recs, key=lambda r: -(r.sensitivity if r.sensitivity is not None else unprobed))
    names = [r.name for r in order]
    ranked = prober.probed  # every layer was probed when this is n

    cache: dict[int, tuple[float, onnx.ModelProto]] = {0: (d_full, full)}
    best_rate = 0.0  # most drop removed per kept layer over the attempts so far

    def attempt(k: int) -> float:
        nonlocal best_rate
        if k not in cache:
            m = make(names[:k])
            cache[k] = (ev.drop(m), m)
        d = cache[k][0]
        if ranked == n:
            best_rate = max(best_rate, (d_full - d) / k)
            if d > ctx.target and len(cache) > 2:
                # Ranked by sensitivity, each further layer removes no more than the ones
                # before it (the additive model the ranking assumes), so the target needs at
                # least need / best_rate layers.
                least = math.inf if best_rate <= 0 else need / best_rate
                if least > k_max:
                    raise _rejected(
                        kind,
                        ev,
                        f"keeping the {k} most sensitive layers leaves the drop at {d:.4f} "
                        f"(from {d_full:.4f}); at the best rate seen, {least:.0f} of {n} layers "
                        f"would have to stay uncompressed (more than {k_max})"
                        if math.isfinite(least)
                        else f"keeping the {k} most sensitive layers does not lower the drop "
                        f"({d:.4f}, from {d_full:.4f})",
                    )
        return d

    # Exponential then binary search for the fewest kept layers that meet the target
    # (drop is close to monotone in k; the answer is re-checked at the end).
    hi = 1
    while hi < k_max and attempt(hi) > ctx.target:
        hi *= 2
    hi = min(hi, k_max)
    if attempt(hi) > ctx.target:
        if k_max < n:
            raise _rejected(
                kind,
                ev,
                f"the drop stays {cache[hi][0]:.4g} > {ctx.target:.4g} with the {hi} most "
                f"sensitive of {n} layers kept uncompressed",
            )
        raise _rejected(
            kind,
            ev,
            f"the drop stays {cache[hi][0]:.4g} > {ctx.target:.4g} even with every layer kept "
            "uncompressed",
        )
    lo = hi // 2  # attempt(lo) > target (or lo == 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid) <= ctx.target:
            hi = mid
        else:
            lo = mid
    if hi == n:
        raise _rejected(
            kind, ev, f"every layer had to stay uncompressed to meet the target {ctx.target:.4g}"
        )
    kept = set(names[:hi])
    for r in recs:
        r.compressed = r.name not in kept
    d_final, model = cache[hi]
    rec = _search_record(
        kind, recs, ev, ctx, d_full, d_final, t0, note, prober, f"target met keeping {hi}"
    )
    return SearchResult(model, rec)


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
    The search gives up early ("rejected after N probes") when the probes show that fewer than
    MIN_PRUNED_SHARE of the units could be pruned (``prune_hopeless``).
    """
    t0 = time.perf_counter()
    recs = [LayerRecord(n, op, detail=dict((details or {}).get(n, {}))) for n, op in units]
    if not recs:
        raise NotApplicable(f"{kind}: nothing in this model to prune")
    n = len(recs)
    all_names = [r.name for r in recs]
    full = make(all_names)
    d_full = ev.drop(full)
    if d_full <= ctx.target:
        return SearchResult(
            full,
            _search_record(
                kind, recs, ev, ctx, d_full, d_full, t0, stopped="met with every unit pruned"
            ),
        )
    prober = _Prober(recs, ctx, t0)

    def judge(m: int) -> None:
        drops = [recs[i].drop_alone for i in prober.order[:m]]
        why = prune_hopeless([d for d in drops if d is not None], n, ctx.target)
        if why:
            raise _rejected(kind, ev, why)

    note = prober.run(make, ev, judge, "units not probed (left unpruned)")
    for r in recs:
        r.sensitivity = r.drop_alone  # here: the drop with this unit alone pruned
    probed = sorted(
        (r for r in recs if r.sensitivity is not None and r.sensitivity <= ctx.target),
        key=lambda r: r.sensitivity or 0.0,
    )
    names = [r.name for r in probed]
    least = max(1, math.ceil(MIN_PRUNED_SHARE * n))
    if len(names) < least:
        raise _rejected(
            kind,
            ev,
            f"{len(names)} of {n} units can be pruned alone without breaking the target"
            + (f" (fewer than {least})" if names else ""),
        )
    cache: dict[int, tuple[float, onnx.ModelProto | None]] = {0: (0.0, None)}

    def attempt(k: int) -> float:
        if k not in cache:
            m = make(names[:k])
            cache[k] = (ev.drop(m), m)
        return cache[k][0]

    lo, hi = 0, len(names)  # largest k with attempt(k) <= target
    if attempt(least) > ctx.target:
        raise _rejected(
            kind,
            ev,
            f"pruning the {least} least sensitive of {n} units together already breaks the "
            f"target ({cache[least][0]:.4f} > {ctx.target:.4f})",
        )
    lo = least
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if attempt(mid) <= ctx.target:
            lo = mid
        else:
            hi = mid - 1
    pruned = set(names[:lo])
    for r in recs:
        r.compressed = r.name in pruned
    d_final, model = cache[lo]
    assert model is not None
    rec = _search_record(
        kind, recs, ev, ctx, d_full, d_final, t0, note, prober, f"target met pruning {lo}"
    )
    rec["sensitivity_meaning"] = "drop with this unit alone pruned"
    return SearchResult(model, rec)
