"""Selection: the Pareto frontier over energy, latency, accuracy loss and size, and the pick.

Latency and energy are noisy, and most of the noise is shared machine state that moves every
variant of a trial together. So two variants are compared by their ratio trial by trial
(``Measurement.ratio_to``: paired log-ratios with a t interval over the trials they shared;
unpaired only for figures that shared no trials): one beats another on a noisy quantity only
when the whole 95% interval of the ratio lies below 1. Size and accuracy loss are exact
numbers of the artifact and compared directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lepton_compile.bench.stats import Ratio

OBJECTIVES = ("energy", "latency", "size")
NOISY = ("latency", "energy")

# Accuracy drops closer than this are treated as equal (fidelity figures carry rounding noise).
_DROP_EPS = 1e-4


class Candidate(Protocol):
    id: str
    status: str
    measurement: Any  # bench.protocol.Measurement | None

    @property
    def drop(self) -> float: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class Pick:
    id: str
    reason: str


def measured(c: Candidate) -> bool:
    """Has per-trial figures to be compared by (ok, or dropped by racing after some trials)."""
    m = c.measurement
    return c.status in ("ok", "dropped") and m is not None and bool(m.trial_latency_ms)


def ratio(a: Candidate, b: Candidate, quantity: str) -> Ratio | None:
    """a's ``quantity`` over b's with its 95% CI, from their measurements; None without data."""
    if a.measurement is None or b.measurement is None:
        return None
    return a.measurement.ratio_to(b.measurement, quantity)


def _better(a: Candidate, b: Candidate, q: str) -> bool:
    r = ratio(a, b, q)
    return r is not None and r.below_one


def _worse(a: Candidate, b: Candidate, q: str) -> bool:
    r = ratio(a, b, q)
    return r is not None and r.above_one


def dominates(a: Candidate, b: Candidate) -> bool:
    """a is no worse than b on every objective and better on one (beyond noise for the
    measured ones)."""
    no_worse = (
        not any(_worse(a, b, q) for q in NOISY)
        and a.drop <= b.drop + _DROP_EPS
        and a.size <= b.size
    )
    better = any(_better(a, b, q) for q in NOISY) or a.drop < b.drop - _DROP_EPS or a.size < b.size
    return no_worse and better


def pareto_front(cands: Sequence[Candidate]) -> list[str]:
    """Ids of the measured candidates that no other candidate dominates."""
    pool = [c for c in cands if measured(c)]
    return [c.id for c in pool if not any(dominates(o, c) for o in pool if o is not c)]


def _fmt(r: Ratio) -> str:
    return f"{r.ratio:.2f}x [{r.low:.2f}, {r.high:.2f}], {r.n} paired trials"


def select(cands: Sequence[Candidate], baseline_id: str, objective: str) -> Pick:
    """The best verified candidate for the objective; the baseline unless one beats it beyond
    noise (its ratio's 95% interval below 1).

    A candidate also must not be slower or hungrier than the baseline beyond noise, whatever
    the objective: the tool never hands back a model that costs more to run than it was given.
    Among those that beat the baseline, the lowest ratio wins (then the lower drop, the smaller
    file).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
    by_id = {c.id: c for c in cands}
    base = by_id[baseline_id]
    if base.status != "ok" or not measured(base):
        raise ValueError("the baseline was not measured")
    q = "latency" if objective == "latency" else "energy"
    if not base.measurement.trial_energy_j:
        q = "latency"  # no meter reading at all: energy cannot decide anything
    eligible: list[tuple[float, Candidate, Ratio | None]] = []
    closest: tuple[float, Candidate, Ratio] | None = None
    for c in cands:
        if c.id == baseline_id or c.status != "ok" or not measured(c):
            continue
        if any(_worse(c, base, n) for n in NOISY):
            continue
        r = ratio(c, base, q)
        if objective == "size":
            if c.size < base.size:
                eligible.append((float(c.size), c, r))
            continue
        if r is None:
            continue
        if r.below_one:
            eligible.append((r.ratio, c, r))
        elif closest is None or r.ratio < closest[0]:
            closest = (r.ratio, c, r)
    if not eligible:
        why = f"no variant beat the original on {objective} beyond noise"
        if closest is not None:
            why += f" (closest: {closest[1].id}, {_fmt(closest[2])})"
        return Pick(baseline_id, why)
    _, best, r = min(eligible, key=lambda t: (t[0], t[1].drop, t[1].size))
    if objective == "size":
        gain = base.size / max(best.size, 1)
        return Pick(best.id, f"{gain:.2f}x smaller than the original, not slower beyond noise")
    assert r is not None
    return Pick(
        best.id,
        f"{1 / r.ratio:.2f}x better {objective} than the original beyond noise ({_fmt(r)})",
    )
