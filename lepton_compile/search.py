"""Selection: the Pareto frontier over energy, latency, accuracy loss and size, and the pick.

Latency and energy are noisy, so dominance on them uses ``bench.stats.better_than`` (95% CIs
that do not overlap): a variant beats another on a noisy objective only beyond noise. Size and
accuracy loss are exact numbers of the artifact and compared directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from lepton_compile.bench.stats import Stats, better_than

OBJECTIVES = ("energy", "latency", "size")

# Accuracy drops closer than this are treated as equal (fidelity figures carry rounding noise).
_DROP_EPS = 1e-4


class Candidate(Protocol):
    id: str
    status: str

    @property
    def latency(self) -> Stats | None: ...

    @property
    def energy(self) -> Stats | None: ...

    @property
    def drop(self) -> float: ...

    @property
    def size(self) -> int: ...


@dataclass(frozen=True)
class Pick:
    id: str
    reason: str


def _no_worse(a: Candidate, b: Candidate) -> bool:
    """a is not worse than b on any objective (beyond noise for the measured ones)."""
    assert a.latency and b.latency and a.energy and b.energy
    return (
        not better_than(b.latency, a.latency)
        and not better_than(b.energy, a.energy)
        and a.drop <= b.drop + _DROP_EPS
        and a.size <= b.size
    )


def _strictly_better_somewhere(a: Candidate, b: Candidate) -> bool:
    assert a.latency and b.latency and a.energy and b.energy
    return (
        better_than(a.latency, b.latency)
        or better_than(a.energy, b.energy)
        or a.drop < b.drop - _DROP_EPS
        or a.size < b.size
    )


def dominates(a: Candidate, b: Candidate) -> bool:
    return _no_worse(a, b) and _strictly_better_somewhere(a, b)


def pareto_front(cands: Sequence[Candidate]) -> list[str]:
    """Ids of the verified, measured candidates that no other candidate dominates."""
    ok = [c for c in cands if c.status == "ok" and c.latency and c.energy]
    return [c.id for c in ok if not any(dominates(o, c) for o in ok if o is not c)]


def _primary(c: Candidate, objective: str) -> float:
    if objective == "energy":
        assert c.energy
        return c.energy.mean
    if objective == "latency":
        assert c.latency
        return c.latency.mean
    return float(c.size)


def _beats(a: Candidate, b: Candidate, objective: str) -> bool:
    if objective == "energy":
        assert a.energy and b.energy
        return better_than(a.energy, b.energy)
    if objective == "latency":
        assert a.latency and b.latency
        return better_than(a.latency, b.latency)
    return a.size < b.size


def select(cands: Sequence[Candidate], baseline_id: str, objective: str) -> Pick:
    """The best verified candidate for the objective; the baseline unless one beats it beyond noise.

    A candidate also must not be slower or hungrier than the baseline beyond noise, whatever
    the objective: the tool never hands back a model that costs more to run than it was given.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
    by_id = {c.id: c for c in cands}
    base = by_id[baseline_id]
    if base.status != "ok" or not base.latency or not base.energy:
        raise ValueError("the baseline was not measured")
    eligible = []
    for c in cands:
        if c.id == baseline_id or c.status != "ok" or not c.latency or not c.energy:
            continue
        if better_than(base.latency, c.latency) or better_than(base.energy, c.energy):
            continue
        if _beats(c, base, objective):
            eligible.append(c)
    if not eligible:
        return Pick(baseline_id, f"no variant beat the original on {objective} beyond noise")
    best = min(eligible, key=lambda c: (_primary(c, objective), c.drop, c.size))
    gain = _primary(base, objective) / max(_primary(best, objective), 1e-30)
    return Pick(best.id, f"{gain:.2f}x better {objective} than the original, beyond noise")
