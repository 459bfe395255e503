"""Stage select: constraints, the Pareto frontier per device, and the pick."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lepton_compile import search, serving
from lepton_compile.stages.context import RunContext
from lepton_compile.variant import Status, VariantResult


@dataclass
class Selection:
    """The pick, the original it was judged against, and why."""

    baseline: VariantResult
    best: VariantResult
    reason: str
    # With a serving profile: the variant and batch to serve with (best is that variant).
    recommendation: serving.Recommendation | None = None

    @property
    def constraints_met(self) -> bool:
        return self.best.status == Status.OK


def select(ctx: RunContext, variants: Sequence[VariantResult]) -> Selection:
    """Apply --max-latency-ms, mark each device's frontier, and pick among the primary
    device's variants (figures compare only within one device and meter)."""
    limit = ctx.options.max_latency_ms
    for v in variants:
        if limit is not None and v.status == Status.OK and v.latency and v.latency.mean > limit:
            v.fail(Status.REJECTED, f"latency {v.latency.mean:.3f} ms > --max-latency-ms {limit:g}")
    for dev in ctx.plan.devices:
        on_dev = [v for v in variants if v.device == dev]
        front = set(search.pareto_front(on_dev))
        for v in on_dev:
            v.pareto = v.id in front
    primary = [v for v in variants if v.device == ctx.plan.primary]
    baseline = primary[0]
    objective = ctx.options.objective
    if baseline.status == Status.OK:
        pick = search.select(primary, baseline.id, objective)
        best = next(v for v in primary if v.id == pick.id)
        return _with_batch(ctx, primary, Selection(baseline, best, pick.reason))
    # Only --max-latency-ms can reject the baseline; pick the best that met it, if any.
    ok = [v for v in primary if v.status == Status.OK]
    if not ok:
        return Selection(baseline, baseline, "nothing met the constraints")
    best = min(ok, key=lambda v: _objective_value(v, objective))
    return Selection(baseline, best, "the original did not meet the constraints; best that did")


def _with_batch(ctx: RunContext, primary: list[VariantResult], sel: Selection) -> Selection:
    """The serving profile's recommendation over (variant, batch); it may change the pick."""
    plan = ctx.batches
    if plan is None or not any(v.serving for v in primary):
        return sel
    rec = serving.recommend(
        primary,
        sel.best.id,
        ctx.options.objective,
        ctx.options.max_latency_ms,
        plan.base,
        sel.baseline.id,
    )
    if rec.variant == sel.best.id:
        return Selection(sel.baseline, sel.best, sel.reason, rec)
    best = next(v for v in primary if v.id == rec.variant)
    return Selection(sel.baseline, best, rec.text, rec)


def _objective_value(v: VariantResult, objective: str) -> float:
    if objective == "energy" and v.energy:
        return v.energy.mean
    if objective == "latency" and v.latency:
        return v.latency.mean
    return float(v.size_bytes)
