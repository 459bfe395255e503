"""Stage measure: race the verified variants on each device, against that device's original.

Within a device, variants race against the original (``bench.race``): screened, then
interleaved trials until the pick is decided. When their workers together would hold more
memory than the limit, they race in groups (each with the original), and the workers of a
finished group are closed first. Each variant's ratios to the original come from the trials
it shared with it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from lepton_compile.bench.race import RaceOutcome, RaceRules, race
from lepton_compile.executor import Executor
from lepton_compile.stages.context import RunContext
from lepton_compile.variant import Status, VariantResult
from lepton_compile.worker import WorkerError, WorkerRunner

log = logging.getLogger(__name__)


def original_of(group: Sequence[VariantResult]) -> VariantResult:
    return next(v for v in group if v.recipe.name == "original")


def memory_groups(
    variants: Sequence[VariantResult], rss: Mapping[str, int], limit: int | None
) -> list[list[VariantResult]]:
    """Split one device's variants into groups whose workers fit in ``limit`` bytes together.

    Every group holds that device's original (first), so that each variant is measured in the
    same trials as the original it is judged against. Greedy in the given order; a variant too
    big to share the limit with the original gets a group of its own with it.
    """
    original = original_of(variants)
    rest = [v for v in variants if v is not original]
    if limit is None or sum(rss.get(v.id, 0) for v in variants) <= limit:
        return [[original, *rest]]
    groups: list[list[VariantResult]] = []
    current: list[VariantResult] = [original]
    used = rss.get(original.id, 0)
    for v in rest:
        need = rss.get(v.id, 0)
        if len(current) > 1 and used + need > limit:
            groups.append(current)
            current, used = [original], rss.get(original.id, 0)
        current.append(v)
        used += need
    groups.append(current)
    return groups


def measure(ctx: RunContext, executor: Executor, variants: Sequence[VariantResult]) -> None:
    """Measure every ok variant, device by device; each gets its measurement (or fails), and
    those screened out or dropped by racing become ``dropped`` with the reason."""
    ctx.observer.stage("measuring", total=None)
    limit = ctx.options.total_memory_bytes
    limit = ctx.memory_limit if limit is None else limit
    for dev in ctx.plan.devices:
        on_dev = [v for v in variants if v.device == dev and v.status == Status.OK]
        if not on_dev:
            continue
        rss = {v.id: executor.worker(v.id).rss_bytes() for v in on_dev}
        groups = memory_groups(on_dev, rss, limit)
        if len(groups) > 1:
            assert limit is not None
            ctx.loaded.notes.append(
                f"{dev}: variants measured in {len(groups)} groups, each with the original, so "
                f"that the workers alive at once stay under {limit / 2**30:.1f} GiB "
                f"(together they hold {sum(rss.values()) / 2**30:.1f} GiB)"
            )
            for v in on_dev[1:]:
                executor.worker(v.id).suspend()
        for i, group in enumerate(groups):
            label = dev if len(groups) == 1 else f"{dev}#{i + 1}"
            _race_group(ctx, executor, group, label)
            if len(groups) > 1:
                for v in group[1:]:
                    executor.worker(v.id).suspend()


def race_group(
    ctx: RunContext,
    executor: Executor,
    group: list[VariantResult],
    feed: Mapping[str, Any],
    label: str,
    rules: RaceRules,
) -> tuple[RaceOutcome | None, dict[str, str]]:
    """Race ``group`` (its original first) on ``feed``: the outcome (None when the original
    could not be set up), and the variants that could not be set up, with why."""
    meter = ctx.meters[group[0].device]
    runners: dict[str, WorkerRunner] = {}
    failed: dict[str, str] = {}
    executor.prepare_measurement([v.id for v in group])
    for v in group:
        w = executor.worker(v.id)
        try:
            w.resume()
            kind = "estimate" if meter.name == "estimated" else meter.name
            w.call("set_measurement", feed, kind, v.device, ctx.options.cpu_watts)
            runners[v.id] = WorkerRunner(w, ctx.options.variant_timeout_s)  # type: ignore[arg-type]
        except WorkerError as e:
            failed[v.id] = e.reason
    original = original_of(group)
    if original.id not in runners:
        return None, failed
    obs = ctx.observer

    def estimate(low: float, high: float) -> None:
        obs.stage(f"measuring {label} (about {low:.0f}-{high:.0f} s)", total=None)
        log.info("measuring on %s: about %.0f-%.0f s", label, low, high)

    outcome = race(
        runners,
        original.id,
        meter,
        ctx.protocol,
        rules,
        label=label,
        progress=lambda vid, t, n: obs.advance(f"trial {t + 1}: {vid}"),
        on_estimate=estimate,
        deadline=ctx.deadline,
    )
    return outcome, failed


def _race_group(
    ctx: RunContext, executor: Executor, group: list[VariantResult], label: str
) -> None:
    outcome, failed = race_group(ctx, executor, group, ctx.feeds.eval[0], label, ctx.rules)
    for v in group:
        if v.id in failed:
            v.fail(Status.FAILED, f"meter: {failed[v.id]}")
    if outcome is None:
        return
    original = original_of(group)
    decision = {"race": label, **outcome.to_dict()}
    base = outcome.measurements[original.id]
    for v in group:
        m = outcome.measurements.get(v.id)
        if m is None or v.measurement is not None:
            continue  # the original keeps its first group's figures
        if m.error:
            v.fail(Status.FAILED, f"measure: {m.error}")
            continue
        v.measurement, v.race = m, decision
        if v.id in outcome.screened:
            v.screen = outcome.screened[v.id]
            v.status, v.reason = Status.DROPPED, v.screen["reason"]
        elif v.id in outcome.dropped:
            v.status, v.reason = Status.DROPPED, f"dropped by racing: {outcome.dropped[v.id]}"
        if m.trials and base.trials:
            v.ratios = {
                q: r for q in ("latency", "energy") if (r := m.ratio_to(base, q)) is not None
            }
