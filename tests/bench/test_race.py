"""Racing and paired decisions on a synthetic machine: injected timings, no sleeps."""

from __future__ import annotations

from bench_synthetic import Machine, Meter_, Runner, protocol

from lepton_compile.bench.race import RaceRules, race
from lepton_compile.bench.stats import better_than


def _race(latencies: dict[str, float], rules: RaceRules, **machine_kw):
    m = Machine(**machine_kw)
    runners = {k: Runner(m, v) for k, v in latencies.items()}
    out = race(
        runners,
        "original",
        Meter_(),
        protocol(),
        rules,
        label="cpu",
        clock=m.clock,
        progress=m.progress,
    )
    return out, runners


def test_drift_unpaired_cis_overlap_but_the_paired_decision_separates_a_1_3x_gain():
    """Every variant moves with the machine (+-60% swings): trial means overlap, ratios don't."""
    out, _ = _race(
        {"original": 10.0, "fused": 10.0 / 1.3},
        RaceRules(objective="latency", min_trials=5, max_trials=5, budget_s=None),
        drift=0.4,
    )
    base, fused = out.measurements["original"], out.measurements["fused"]
    assert base.trials == fused.trials == 5
    # The old, unpaired test: 95% CIs of the means overlap, so it sees no difference.
    assert not better_than(fused.latency_ms, base.latency_ms)
    r = fused.ratio_to(base, "latency")
    assert r is not None and r.below_one
    assert 1 / r.ratio > 1.2 and r.high < 0.85
    assert out.decided, out.reason


def test_racing_drops_the_clearly_worse_and_stops_when_decided():
    out, runners = _race(
        {"original": 10.0, "fast": 6.0, "slowish": 9.0, "same": 10.0},
        RaceRules(objective="latency", min_trials=3, max_trials=30, budget_s=None),
        drift=0.3,
    )
    assert out.decided, out.reason
    assert "fast is the best" in out.reason
    assert set(out.dropped) == {"slowish", "same"}
    assert "clearly worse than fast" in out.dropped["slowish"]
    # Dropped variants keep the figures of the trials they ran, and ran fewer of them.
    slowish = out.measurements["slowish"]
    assert slowish.latency_ms is not None
    assert slowish.trials < out.measurements["fast"].trials or out.trials == 3
    assert out.trials < 30


def test_screen_drops_variants_far_slower_than_the_original():
    out, runners = _race(
        {"original": 10.0, "fp16-on-cpu": 500.0, "ok": 9.0},
        RaceRules(objective="latency", min_trials=3, max_trials=10, budget_s=None),
        drift=0.0,
    )
    assert set(out.screened) == {"fp16-on-cpu"}
    s = out.screened["fp16-on-cpu"]
    assert s["ratio"] > 40 and "screened out" in s["reason"] and "limit 2x" in s["reason"]
    assert runners["fp16-on-cpu"].windows == 1  # the screen window only
    assert out.measurements["fp16-on-cpu"].trials == 0


def test_budget_spent_leaves_the_pick_undecided_and_says_why():
    # 3% apart with noise: not separable within a short budget.
    out, _ = _race(
        {"original": 10.0, "close": 9.7},
        RaceRules(objective="latency", min_trials=2, max_trials=100, budget_s=3.0, tie=0.0),
        drift=0.2,
        noise=0.2,
    )
    assert not out.decided
    assert "undecided after" in out.reason and "measurement budget of 3 s spent" in out.reason
    assert "close vs original" in out.reason or "original vs close" in out.reason


def test_max_trials_leaves_the_pick_undecided():
    out, _ = _race(
        {"original": 10.0, "close": 9.8},
        RaceRules(objective="latency", min_trials=2, max_trials=4, budget_s=None, tie=0.0),
        noise=0.3,
    )
    assert not out.decided and out.trials == 4
    assert "undecided after 4 trials (the most trials allowed)" in out.reason


def test_a_tie_is_a_decision():
    out, _ = _race(
        {"original": 10.0, "same": 10.0},
        RaceRules(objective="latency", min_trials=3, max_trials=50, budget_s=None, tie=0.03),
        noise=0.002,
    )
    assert out.decided, out.reason
    assert out.trials < 50


def test_windows_follow_the_screened_latency():
    out, _ = _race(
        {"original": 0.5, "slow": 0.9},
        RaceRules(objective="latency", min_trials=2, max_trials=2, budget_s=None, target_runs=30),
        drift=0.0,
    )
    # 30 inferences, floored at 0.05 s, capped by the protocol's 0.25 s window.
    assert abs(out.windows_s["original"] - 0.05) < 1e-9
    assert abs(out.windows_s["slow"] - 0.05) < 0.01
    assert out.estimate_s is not None and out.estimate_s[0] <= out.estimate_s[1]


def test_size_objective_drops_what_is_slower_than_the_original():
    out, _ = _race(
        {"original": 10.0, "small-but-slow": 14.0, "small-and-fine": 10.0},
        RaceRules(objective="size", min_trials=3, max_trials=20, budget_s=None),
        drift=0.2,
    )
    assert "small-but-slow" in out.dropped
    assert "slower than the original beyond noise" in out.dropped["small-but-slow"]


def test_two_equal_winners_decide_without_separating_them():
    """fused and fp16 both 1.27x: the pick is decided once neither can beat the other by more
    than the tie band, without the trials it would take to separate equals."""
    out, _ = _race(
        {"original": 10.0, "fused": 7.9, "fp16": 7.9},
        RaceRules(objective="latency", min_trials=3, max_trials=40, budget_s=None, tie=0.05),
        drift=0.3,
        noise=0.02,
    )
    assert out.decided, out.reason
    assert out.trials < 40 and not out.dropped
