"""The serving profile's figures and decision: (variant, batch) points, their frontier, and
the recommended batch.

A point is one variant measured at one batch size, in a race of its own size (every variant
of that size interleaved with the original at that size). Within a size, points compare by
paired ratios; across sizes they shared no trials, so they compare by Welch ratios of their
per-trial figures (``Measurement.ratio_to`` picks the right one). Joules per inference are a
batch's energy over its size: the ratio of two points' J/inference is their energy ratio
scaled by the sizes, exactly, so the interval scales with it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lepton_compile.bench.stats import Ratio


@dataclass
class ServingPoint:
    """One variant at one batch size: ok with its measurement, or failed/skipped with why."""

    batch: int
    status: str = "ok"  # ok, failed, skipped
    reason: str = ""
    measurement: Any = None  # bench.protocol.Measurement, per batch call
    ratios: dict[str, Ratio] = field(default_factory=dict)  # to the original, same size
    check: dict[str, Any] | None = None  # outputs at this size against batch 1
    pareto: bool = False
    roofline: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok" and self.measurement is not None and bool(self.per_inference())

    def per_inference(self) -> list[float]:
        """Joules per inference, trial by trial."""
        m = self.measurement
        if m is None:
            return []
        return [m.trial_energy_j[t] / self.batch for t in sorted(m.trial_energy_j)]

    @property
    def joules(self) -> float | None:
        """Mean joules per inference."""
        e = self.measurement.energy_j if self.measurement is not None else None
        return e.mean / self.batch if e is not None else None

    @property
    def p99_ms(self) -> float | None:
        lat = self.measurement.latency_ms if self.measurement is not None else None
        return lat.p99 if lat is not None else None

    @property
    def throughput(self) -> float | None:
        lat = self.measurement.latency_ms if self.measurement is not None else None
        return self.batch * 1e3 / lat.mean if lat is not None and lat.mean > 0 else None

    def ratio(self, other: ServingPoint, quantity: str) -> Ratio | None:
        """This point's ``quantity`` over ``other``'s: ``energy`` per inference, ``latency``
        per batch call."""
        if self.measurement is None or other.measurement is None:
            return None
        r = self.measurement.ratio_to(other.measurement, quantity)
        if r is None or quantity != "energy" or self.batch == other.batch:
            return r
        k = other.batch / self.batch
        return dataclasses.replace(r, ratio=r.ratio * k, low=r.low * k, high=r.high * k)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"batch": self.batch, "status": self.status}
        if self.reason:
            d["reason"] = self.reason
        m = self.measurement.to_dict() if self.measurement is not None else {}
        d["latency_ms"] = m.get("latency_ms")
        d["energy_j"] = m.get("energy_j")
        d["throughput_per_s"] = _round(self.throughput)
        en = self.measurement.energy_j if self.measurement is not None else None
        if en is not None:
            method = self.measurement.energy_method or ""
            d["energy_j_per_inference"] = {
                "mean": en.mean / self.batch,
                "ci95": en.ci95 / self.batch,
                "per_trial": self.per_inference(),
                "method": method,
                "estimated": "estimate" in method,
            }
        else:
            d["energy_j_per_inference"] = None
        d["ratio_to_original"] = {q: r.to_dict() for q, r in self.ratios.items()} or None
        d["pareto"] = self.pareto
        d["batch_check"] = self.check
        d["roofline"] = self.roofline
        return d


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


@dataclass(frozen=True)
class Recommendation:
    variant: str
    batch: int
    text: str
    joules: float | None = None
    p99_ms: float | None = None
    max_latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "variant": self.variant,
            "batch": self.batch,
            "energy_j_per_inference": self.joules,
            "p99_ms": self.p99_ms,
            "max_latency_ms": self.max_latency_ms,
            "text": self.text,
        }


def _worse(a: ServingPoint, b: ServingPoint, q: str) -> bool:
    r = a.ratio(b, q)
    return r is not None and r.above_one


def _better(a: ServingPoint, b: ServingPoint, q: str) -> bool:
    r = a.ratio(b, q)
    return r is not None and r.below_one


def mark_front(variants: Sequence[Any]) -> None:
    """Set ``pareto`` on the ok points that no other ok point dominates on J/inference,
    latency per batch (beyond noise), accuracy drop and size."""
    pool = [(v, p) for v in variants if v.status == "ok" for p in v.serving.values() if p.ok]

    def dominates(a: tuple[Any, ServingPoint], b: tuple[Any, ServingPoint]) -> bool:
        (va, pa), (vb, pb) = a, b
        no_worse = (
            not _worse(pa, pb, "energy")
            and not _worse(pa, pb, "latency")
            and va.drop <= vb.drop + 1e-4
            and va.size <= vb.size
        )
        better = (
            _better(pa, pb, "energy")
            or _better(pa, pb, "latency")
            or va.drop < vb.drop - 1e-4
            or va.size < vb.size
        )
        return no_worse and better

    for v in variants:
        for p in v.serving.values():
            p.pareto = False
    for a in pool:
        a[1].pareto = not any(dominates(o, a) for o in pool if o is not a)


def _mj(j: float | None) -> str:
    if j is None:
        return "?"
    return f"{j * 1e3:.3g} mJ" if j < 1 else f"{j:.3g} J"


def recommend(
    variants: Sequence[Any],
    pick: str,
    objective: str,
    max_latency_ms: float | None,
    base_batch: int,
    original: str,
) -> Recommendation:
    """The (variant, batch) to serve with.

    ``energy``: the lowest J/inference among ok points whose p99 batch latency meets
    ``max_latency_ms`` and which are neither slower nor hungrier than the original at the
    same size beyond noise; it replaces the batch-``base_batch`` pick only where its
    J/inference is lower beyond noise. ``latency`` and ``size``: the pick at the base size.
    """
    by_id = {v.id: v for v in variants}
    base_point = by_id[pick].serving.get(base_batch)
    fallback = Recommendation(
        pick,
        base_batch,
        f"best: {pick} at batch {base_batch}"
        + (
            f" (objective {objective} stays at the smallest batch)" if objective != "energy" else ""
        ),
        base_point.joules if base_point else None,
        base_point.p99_ms if base_point else None,
        max_latency_ms,
    )
    if objective != "energy":
        return fallback
    eligible: list[tuple[float, Any, ServingPoint]] = []
    for v in variants:
        if v.status != "ok":
            continue
        for p in v.serving.values():
            if not p.ok or p.joules is None:
                continue
            if max_latency_ms is not None and (p.p99_ms is None or p.p99_ms > max_latency_ms):
                continue
            if p.check is not None and not p.check.get("passed", True):
                continue
            orig = by_id[original].serving.get(p.batch) if original in by_id else None
            if orig is not None and orig is not p and orig.ok:
                if _worse(p, orig, "energy") or _worse(p, orig, "latency"):
                    continue
            eligible.append((p.joules, v, p))
    if not eligible:
        return fallback
    _, v, p = min(eligible, key=lambda t: (t[0], t[1].drop, t[1].size, t[2].batch))
    if base_point is not None and base_point.ok and p is not base_point:
        if not _better(p, base_point, "energy"):
            return fallback
    limit = f" (limit {max_latency_ms:g} ms)" if max_latency_ms is not None else ""
    text = f"best: {v.id} at batch {p.batch}, {_mj(p.joules)}/inference, p99 {p.p99_ms:.1f} ms"
    text += limit
    own_base = v.serving.get(base_batch)
    if p.batch != base_batch and own_base is not None and own_base.ok:
        text += f"; at batch {base_batch} the same variant takes {_mj(own_base.joules)}"
    return Recommendation(v.id, p.batch, text, p.joules, p.p99_ms, max_latency_ms)


def section(
    plan: Any, recommendation: Recommendation | None, wall_s: float, notes: Sequence[str] = ()
) -> dict[str, Any]:
    """report.json's top-level ``serving`` section."""
    return {
        **plan.to_dict(),
        "notes": [*plan.notes, *notes],
        "recommendation": recommendation.to_dict() if recommendation else None,
        "wall_s": round(wall_s, 2),
    }


def points_to_dict(points: Mapping[int, ServingPoint]) -> dict[str, Any] | None:
    return {str(b): p.to_dict() for b, p in sorted(points.items())} or None
