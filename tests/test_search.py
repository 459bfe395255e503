"""Pareto frontier and the pick: beyond-noise rules and the original as the fallback."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from lepton_compile.bench.stats import Stats, summarize
from lepton_compile.search import dominates, pareto_front, select


def S(mean: float, spread: float = 0.01) -> Stats:
    return summarize([mean - spread, mean, mean + spread])


@dataclass
class C:
    id: str
    latency: Stats | None
    energy: Stats | None
    drop: float = 0.0
    size: int = 100
    status: str = "ok"


def test_dominance_needs_a_win_beyond_noise():
    a = C("a", S(1.0), S(1.0))
    b = C("b", S(2.0), S(2.0))
    assert dominates(a, b) and not dominates(b, a)
    noisy = C("n", S(0.9, 1.0), S(0.9, 1.0))  # lower mean, but inside a's noise
    assert not dominates(noisy, a) and not dominates(a, noisy)


def test_pareto_front_keeps_tradeoffs():
    base = C("orig", S(10), S(10), size=100)
    fast = C("fast", S(5), S(5), drop=0.005, size=100)
    small = C("small", S(10), S(10), size=50)
    worse = C("worse", S(12), S(12), size=100)
    broken = C("broken", S(1), S(1), status="rejected")
    front = pareto_front([base, fast, small, worse, broken])
    assert set(front) == {"fast", "small"}


def test_select_prefers_original_within_noise():
    base = C("orig", S(10, 2), S(10, 2))
    close = C("v", S(9.5, 2), S(9.5, 2))
    pick = select([base, close], "orig", "energy")
    assert pick.id == "orig" and "beyond noise" in pick.reason


def test_select_picks_clear_winner_and_never_a_slower_one():
    base = C("orig", S(10), S(10), size=100)
    win = C("win", S(5), S(5), size=100)
    smaller_but_slower = C("tiny", S(20), S(20), size=10)
    assert select([base, win, smaller_but_slower], "orig", "energy").id == "win"
    assert select([base, win, smaller_but_slower], "orig", "latency").id == "win"
    # The smallest model costs more to run than the original: never handed back.
    assert select([base, win, smaller_but_slower], "orig", "size").id == "orig"


def test_select_ignores_rejected_and_failed():
    base = C("orig", S(10), S(10))
    rej = C("rej", S(1), S(1), status="rejected")
    fail = C("fail", None, None, status="failed")
    assert select([base, rej, fail], "orig", "latency").id == "orig"


def test_select_bad_objective():
    base = C("orig", S(10), S(10))
    with pytest.raises(ValueError):
        select([base], "orig", "speed")
