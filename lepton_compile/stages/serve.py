"""Stage serve: the serving profile, every ok variant measured at every batch size.

Each size is a race of its own on a feed stacked to that size (``batching.stack``), every ok
variant interleaved with the original at the same size, in the memory groups of the measure
stage; the base size reuses the main race. Screening is off: every ok variant gets figures
at every size. A size that fails a variant (out of memory, past the time limit) is recorded
as failed for that size, and the larger sizes are not tried on it; the run goes on. At the
largest measured size each variant's outputs are checked sample by sample against the
original's at the base size, under the run's accuracy rule: a variant whose outputs depend
on the batch cannot be recommended at that size.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from lepton_compile import serving
from lepton_compile.batching import check_batch, rows, stack
from lepton_compile.executor import Executor
from lepton_compile.stages.context import RunContext
from lepton_compile.stages.measure import memory_groups, original_of, race_group
from lepton_compile.variant import Status, VariantResult
from lepton_compile.worker import WorkerError

log = logging.getLogger(__name__)


def serve(
    ctx: RunContext,
    executor: Executor,
    variants: Sequence[VariantResult],
    cache: Any = None,
    load: bool = False,
) -> None:
    """Fill ``v.serving`` of every ok variant and ``ctx.serving_wall_s``. ``cache`` (a
    ``VariantCache``) reuses a size whose every point it holds; ``load`` loads the variants
    first (their workers are fresh, as after a whole-run cache hit)."""
    plan = ctx.batches
    if plan is None:
        return
    t0 = time.perf_counter()
    limit = ctx.options.total_memory_bytes
    limit = ctx.memory_limit if limit is None else limit
    rules = dataclasses.replace(ctx.rules, screen_factor=None)
    for dev in ctx.plan.devices:
        ok = [v for v in variants if v.device == dev and v.status == Status.OK]
        if not ok or original_of(ok).status != Status.OK:
            continue
        loaded = not load
        failed_at: dict[str, int] = {}
        for b in plan.sizes:
            if b == plan.base:
                for v in ok:
                    v.serving[b] = serving.ServingPoint(
                        b, measurement=v.measurement, ratios=v.ratios
                    )
                continue
            hits = {v.id: cache.lookup_point(v, b) for v in ok} if cache is not None else {}
            if hits and all(hits.values()):
                for v in ok:
                    v.serving[b] = hits[v.id]
                continue
            if ctx.over_budget():
                for v in ok:
                    v.serving[b] = serving.ServingPoint(
                        b,
                        "skipped",
                        f"not measured: the --budget-s of {ctx.options.budget_s:g} s was spent",
                    )
                continue
            if not loaded:
                _load_all(ctx, executor, ok)
                loaded = True
            _measure_size(ctx, executor, ok, b, failed_at, limit, rules)
            if cache is not None:
                for v in ok:
                    cache.save_point(v, b, v.serving[b])
        _check_largest(ctx, executor, ok, failed_at)
    serving.mark_front([v for v in variants if v.serving])
    ctx.serving_wall_s = time.perf_counter() - t0


def _load_all(ctx: RunContext, executor: Executor, variants: Sequence[VariantResult]) -> None:
    for v in variants:
        assert v.artifact is not None
        options = {**ctx.options.backend_options(v.backend), **v.options}
        try:
            executor.worker(v.id).call("load", str(v.artifact), v.backend, v.device, options)
        except WorkerError as e:
            log.warning("serving profile: %s does not load: %s", v.id, e.reason)


def _feed(ctx: RunContext, size: int) -> dict[str, Any]:
    assert ctx.batches is not None
    return stack(ctx.feeds.eval, ctx.batches.inputs, size)


def _measure_size(
    ctx: RunContext,
    executor: Executor,
    ok: list[VariantResult],
    b: int,
    failed_at: dict[str, int],
    limit: int | None,
    rules: Any,
) -> None:
    original = original_of(ok)
    for v in ok:
        if v.id in failed_at:
            v.serving[b] = serving.ServingPoint(
                b, "skipped", f"not tried: it failed at batch {failed_at[v.id]}"
            )
    live = [v for v in ok if v.id not in failed_at]
    if original.id in failed_at:
        for v in live:
            v.serving[b] = serving.ServingPoint(
                b, "skipped", f"not measured: the original failed at batch {failed_at[original.id]}"
            )
        return
    feed = _feed(ctx, b)
    rss = {v.id: executor.worker(v.id).rss_bytes() for v in live}
    groups = memory_groups(live, rss, limit)
    for i, group in enumerate(groups):
        label = f"{group[0].device}@b{b}" + ("" if len(groups) == 1 else f"#{i + 1}")
        ctx.observer.stage(f"serving profile: batch {b}", total=None)
        outcome, failed = race_group(ctx, executor, group, feed, label, rules)
        for v in group:
            if v.id in failed:
                _fail(v, b, failed[v.id], failed_at)
        if outcome is None:
            for v in group:
                if b not in v.serving:
                    v.serving[b] = serving.ServingPoint(
                        b, "skipped", f"not measured: the original failed at batch {b}"
                    )
            continue
        base = outcome.measurements[original.id]
        for v in group:
            m = outcome.measurements.get(v.id)
            if v.id in failed or (v is original and b in v.serving):
                continue
            if m is None or m.error:
                _fail(v, b, m.error if m is not None else "not measured", failed_at)
                continue
            ratios = {q: r for q in ("latency", "energy") if (r := m.ratio_to(base, q))}
            v.serving[b] = serving.ServingPoint(b, measurement=m, ratios=ratios)
        if len(groups) > 1:
            for v in group[1:]:
                executor.worker(v.id).suspend()


def _fail(v: VariantResult, b: int, why: str, failed_at: dict[str, int]) -> None:
    v.serving[b] = serving.ServingPoint(b, "failed", f"batch {b}: {why}")
    failed_at[v.id] = b
    log.warning("serving profile: %s failed at batch %d: %s", v.id, b, why)


def _check_largest(
    ctx: RunContext, executor: Executor, ok: list[VariantResult], failed_at: dict[str, int]
) -> None:
    """Outputs at the largest size each variant ran, sample by sample, against the original's
    at the base size; a point that fails the check keeps its figures but cannot be picked."""
    plan = ctx.batches
    assert plan is not None
    sizes = [b for b in plan.sizes if b != plan.base]
    if not sizes:
        return
    original = original_of(ok)
    samples = rows(ctx.feeds.eval, plan.inputs)
    try:
        reference = executor.worker(original.id).call("run", samples)
    except WorkerError as e:
        log.warning("serving profile: no batch check (the original does not run: %s)", e.reason)
        return
    for v in ok:
        ran = [b for b in sizes if (p := v.serving.get(b)) is not None and p.ok]
        if not ran or v.serving[ran[-1]].check is not None:
            continue
        b = ran[-1]
        point = v.serving[b]
        try:
            w = executor.worker(v.id)
            w.resume()
            outs = w.call("run", [stack(samples, plan.inputs, b)])[0]
        except WorkerError as e:
            point.check = {"passed": False, "batch": b, "reason": f"run: {e.reason}"}
            continue
        fid = check_batch(
            outs, reference, b, set(ctx.loaded.score_outputs), ctx.options.max_accuracy_drop
        )
        if isinstance(fid, str):
            point.check = {"passed": False, "batch": b, "reason": fid}
        else:
            point.check = {
                "passed": fid.passed,
                "batch": b,
                "drop": round(fid.drop, 6),
                "reason": fid.reason or "",
            }
        if not point.check["passed"]:
            log.warning("serving profile: %s at batch %d: %s", v.id, b, point.check["reason"])
