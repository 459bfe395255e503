"""Pareto frontier and the pick: paired ratios beyond noise, and the original as the fallback."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lepton_compile.bench.protocol import Measurement, Protocol
from lepton_compile.bench.stats import summarize
from lepton_compile.search import dominates, pareto_front, select

# The machine's level in each of six trials: every variant of a trial moves with it.
DRIFT = [1.0, 1.6, 0.7, 1.3, 0.8, 1.5]


def M(level: float, noise: float = 0.01, drift: list[float] = DRIFT, race: str = "cpu"):
    """A measurement whose trial t is level x drift[t] (x a small alternating wobble)."""
    lat = {t: level * d * (1 + noise * (-1) ** t) for t, d in enumerate(drift)}
    series = list(lat.values())
    return Measurement(
        variant_id="x",
        latency_ms=summarize(series),
        energy_j=summarize([x * 1e-3 for x in series]),
        energy_method="estimated",
        meter={},
        runs=len(series),
        trials=len(series),
        window_s=[0.1] * len(series),
        protocol=Protocol(),
        trial_latency_ms=lat,
        trial_energy_j={t: x * 1e-3 for t, x in lat.items()},
        race=race,
    )


@dataclass
class C:
    id: str
    measurement: Measurement | None
    drop: float = 0.0
    size: int = 100
    status: str = "ok"


def test_dominance_needs_a_win_beyond_noise():
    a = C("a", M(1.0))
    b = C("b", M(2.0))
    assert dominates(a, b) and not dominates(b, a)
    noisy = C("n", M(0.95, noise=0.2))  # lower, but inside its own trial-to-trial noise
    assert not dominates(noisy, a) and not dominates(a, noisy)


def test_pareto_front_keeps_tradeoffs():
    base = C("orig", M(10), size=100)
    fast = C("fast", M(5), drop=0.005, size=100)
    small = C("small", M(10), size=50)
    worse = C("worse", M(12), size=100)
    broken = C("broken", M(1), status="rejected")
    front = pareto_front([base, fast, small, worse, broken])
    assert set(front) == {"fast", "small"}


def test_select_prefers_original_within_noise():
    base = C("orig", M(10))
    close = C("v", M(9.5, noise=0.2))
    pick = select([base, close], "orig", "energy")
    assert pick.id == "orig" and "beyond noise" in pick.reason and "closest: v" in pick.reason


def test_drift_the_pick_separates_a_1_3x_gain_that_trial_means_cannot():
    """Trial means swing 0.7-1.6x with the machine; the paired ratio sees 1.3x through it."""
    base = C("orig", M(10))
    fused = C("fused", M(10 / 1.3))
    lat_b, lat_f = base.measurement.latency_ms, fused.measurement.latency_ms  # type: ignore[union-attr]
    assert lat_f.high > lat_b.low  # the unpaired 95% CIs overlap
    pick = select([base, fused], "orig", "latency")
    assert pick.id == "fused"
    assert "1.30x better latency" in pick.reason and "6 paired trials" in pick.reason


def test_select_picks_the_largest_clear_win():
    base = C("orig", M(10), size=100)
    good = C("good", M(8), size=100)
    better = C("better", M(6), size=100)
    assert select([base, good, better], "orig", "latency").id == "better"


def test_select_picks_clear_winner_and_never_a_slower_one():
    base = C("orig", M(10), size=100)
    win = C("win", M(5), size=100)
    smaller_but_slower = C("tiny", M(20), size=10)
    assert select([base, win, smaller_but_slower], "orig", "energy").id == "win"
    assert select([base, win, smaller_but_slower], "orig", "latency").id == "win"
    # The smallest model costs more to run than the original: never handed back.
    assert select([base, win, smaller_but_slower], "orig", "size").id == "orig"
    smaller_and_fine = C("small", M(10), size=60)
    assert select([base, smaller_and_fine, smaller_but_slower], "orig", "size").id == "small"


def test_figures_of_different_races_compare_unpaired():
    """No shared trials: the drift is not cancelled, so the same 1.3x is not separable."""
    base = C("orig", M(10))
    other = C("fused", M(10 / 1.3, drift=list(reversed(DRIFT)), race="cpu#2"))
    assert select([base, other], "orig", "latency").id == "orig"


def test_select_ignores_rejected_failed_and_dropped():
    base = C("orig", M(10))
    rej = C("rej", M(1), status="rejected")
    fail = C("fail", None, status="failed")
    dropped = C("dropped", M(1), status="dropped")
    assert select([base, rej, fail, dropped], "orig", "latency").id == "orig"
    # A variant dropped by racing still stands on the frontier with its figures.
    assert "dropped" in pareto_front([base, dropped])


def test_select_bad_objective():
    base = C("orig", M(10))
    with pytest.raises(ValueError):
        select([base], "orig", "speed")
