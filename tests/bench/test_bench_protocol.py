"""protocol.measure with fake runners and a fake meter: run counts, interleaving, failures."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from typing import Any

import pytest

from lepton_compile.bench.energy import EnergyReading, EstimateMeter, Meter
from lepton_compile.bench.protocol import Measurement, Protocol, measure


class FakeMeter(Meter):
    """Reports a fixed energy per window, under whatever method name it is given."""

    def __init__(
        self, name: str = "rapl", joules: float = 2.0, update_period_s: float | None = None
    ) -> None:
        self.name = name
        self.joules = joules
        self.update_period_s = update_period_s
        self.windows = 0
        self.fail_end = False

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "summary": f"{self.name}: fake"}

    def begin(self) -> int:
        self.windows += 1
        return self.windows

    def end(self, token: int) -> EnergyReading:
        if self.fail_end:
            raise OSError("counter vanished")
        return EnergyReading(self.joules, 0.01, self.name, {"token": token})


def exact(
    trials: int = 4, runs: int = 5, warmup: int = 2, seed: int = 0, **overrides: Any
) -> Protocol:
    # max == min runs and no time floor: counts are exact, whatever the machine's speed.
    # `overrides` set other Protocol fields, for the tests of what those fields do.
    fields: dict[str, Any] = dict(
        warmup_runs=warmup,
        warmup_s=0.0,
        trials=trials,
        min_trial_s=0.0,
        min_runs_per_trial=runs,
        max_runs_per_trial=runs,
        seed=seed,
        jitter_s=0.0,
        real_meter_min_s=0.0,
        idle_s=0.0,
    )
    return Protocol(**(fields | overrides))


def counting(counter: Counter[str], vid: str, fail_on: int | None = None) -> Any:
    def run() -> int:
        counter[vid] += 1
        if fail_on is not None and counter[vid] >= fail_on:
            raise RuntimeError(f"{vid} broke")
        return counter[vid]

    return run


def test_run_counts_and_stats_shape() -> None:
    calls: Counter[str] = Counter()
    runners = {v: counting(calls, v) for v in ("a", "b", "c")}
    meter = FakeMeter(joules=2.0)
    res = measure(runners, meter, exact(trials=4, runs=5, warmup=2))
    assert set(res) == {"a", "b", "c"}
    assert calls == {"a": 22, "b": 22, "c": 22}  # 2 warm-up + 4 trials x 5 runs
    assert meter.windows == 12
    m = res["a"]
    assert isinstance(m, Measurement) and not m.failed
    assert m.runs == 20 and m.trials == 4 and len(m.window_s) == 4
    assert m.latency_ms is not None and m.latency_ms.n == 20 and m.latency_ms.ci_n == 4
    assert m.energy_j is not None and m.energy_j.n == 4
    assert m.energy_j.mean == pytest.approx(2.0 / 5)  # joules per window / runs in it
    assert m.energy_j.ci95 == pytest.approx(0.0)


def test_to_dict_is_report_shaped_json() -> None:
    res = measure({"x": lambda: None}, FakeMeter("nvml"), exact(trials=3))
    d = res["x"].to_dict()
    assert d["status"] == "ok" and "error" not in d
    assert {"p50", "p90", "p99", "mean", "ci95", "n"} <= set(d["latency_ms"])
    assert {"per_inference", "ci95", "method", "meter"} <= set(d["energy_j"])
    assert d["energy_j"]["method"] == "nvml"
    assert d["energy_j"]["meter"] == {"name": "nvml", "summary": "nvml: fake"}
    p = d["protocol"]
    assert p["trials"] == 3 and p["trials_completed"] == 3 and p["runs"] == 15
    assert p["min_trial_s"] == 0.0 and p["seed"] == 0 and p["interleaved"] is True
    json.dumps(d, allow_nan=False)


def test_order_is_shuffled_per_trial_and_seeded() -> None:
    def orders(seed: int) -> list[tuple[str, ...]]:
        seen: dict[int, list[str]] = defaultdict(list)

        def progress(vid: str, trial: int, trials: int) -> None:
            assert trials == 6
            seen[trial].append(vid)

        runners = {v: (lambda: None) for v in "abcde"}
        measure(runners, FakeMeter(), exact(trials=6, runs=1, warmup=0, seed=seed), progress)
        assert sorted(seen) == list(range(6))
        return [tuple(seen[t]) for t in range(6)]

    o = orders(0)
    assert all(sorted(t) == list("abcde") for t in o)  # every variant once per trial
    assert len(set(o)) > 1  # not the same order every trial
    assert orders(0) == o  # reproducible
    assert orders(1) != o


def test_failing_runner_is_marked_and_others_go_on() -> None:
    calls: Counter[str] = Counter()
    runners = {
        "ok1": counting(calls, "ok1"),
        "flaky": counting(calls, "flaky", fail_on=10),  # 2 warm-up + trial 0 fine, breaks in 1
        "ok2": counting(calls, "ok2"),
    }
    seen: list[tuple[str, int]] = []
    res = measure(
        runners, FakeMeter(), exact(trials=4, runs=5), lambda v, t, n: seen.append((v, t))
    )
    bad = res["flaky"]
    assert bad.failed and bad.error is not None
    assert "RuntimeError: flaky broke" in bad.error and "trial 1" in bad.error
    assert bad.latency_ms is None and bad.energy_j is None
    assert calls["flaky"] == 10  # left out of later trials
    assert ("flaky", 2) not in seen and ("flaky", 3) not in seen
    for vid in ("ok1", "ok2"):
        assert not res[vid].failed and res[vid].trials == 4 and res[vid].runs == 20
    d = bad.to_dict()
    assert d["status"] == "failed" and "flaky broke" in d["error"]
    assert d["latency_ms"]["p50"] is None and d["energy_j"]["per_inference"] is None
    json.dumps(d, allow_nan=False)


def test_warmup_failure_skips_trials() -> None:
    def boom() -> None:
        raise ValueError("bad input shape")

    seen: list[str] = []
    res = measure(
        {"boom": boom, "fine": lambda: None},
        FakeMeter(),
        exact(trials=2),
        lambda v, t, n: seen.append(v),
    )
    assert res["boom"].failed and "warm-up" in (res["boom"].error or "")
    assert "boom" not in seen and not res["fine"].failed


def test_energy_method_comes_from_the_meter() -> None:
    res = measure({"x": lambda: sum(range(100))}, EstimateMeter(cpu_model="X"), exact(trials=2))
    d = res["x"].to_dict()
    assert d["energy_j"]["method"] == "estimated"
    assert d["energy_j"]["meter"]["name"] == "estimated"
    assert res["x"].energy_method == "estimated"
    res = measure({"x": lambda: None}, FakeMeter("rapl"), exact(trials=2))
    assert res["x"].to_dict()["energy_j"]["method"] == "rapl"


def test_meter_failure_keeps_latency() -> None:
    meter = FakeMeter()
    meter.fail_end = True
    res = measure({"x": lambda: None}, meter, exact(trials=2))
    m = res["x"]
    assert not m.failed and m.latency_ms is not None and m.energy_j is None
    assert len(m.energy_errors) == 2 and "counter vanished" in m.energy_errors[0]
    d = m.to_dict()
    assert d["energy_j"]["per_inference"] is None and d["energy_j"]["errors"]


def test_window_and_pause_follow_the_meter() -> None:
    p = Protocol()
    # A real meter: at least max(5 s, 50 update periods); the estimate: the trial minimum.
    assert p.window_s(FakeMeter(update_period_s=None)) == pytest.approx(5.0)
    assert p.window_s(FakeMeter(update_period_s=0.2)) == pytest.approx(10.0)
    assert p.window_s(EstimateMeter(cpu_model="X")) == p.min_trial_s
    assert Protocol(window_s_override=0.7).window_s(FakeMeter()) == pytest.approx(0.7)
    assert p.pause_s(FakeMeter(update_period_s=0.1)) == pytest.approx(0.1)
    assert p.pause_s(FakeMeter(update_period_s=0.001)) == 0.0
    assert Protocol(jitter_s=0.0).pause_s(FakeMeter(update_period_s=0.1)) == 0.0
    q = Protocol.quick()
    assert q.trials == 3 and q.min_trial_s == pytest.approx(0.05)


def test_max_runs_caps_a_trial() -> None:
    calls: Counter[str] = Counter()
    p = exact(trials=2, runs=1, warmup=0, min_trial_s=3600.0, max_runs_per_trial=7)
    res = measure({"x": counting(calls, "x")}, FakeMeter(), p)
    assert calls["x"] == 14 and res["x"].runs == 14


def test_protocol_validation() -> None:
    with pytest.raises(ValueError):
        Protocol(trials=0)
    with pytest.raises(ValueError):
        Protocol(min_runs_per_trial=10, max_runs_per_trial=5)


class IdleMeter(FakeMeter):
    """2 W at idle; each measured window reads 1 J over 0.1 s."""

    def __init__(self) -> None:
        super().__init__("rapl", joules=1.0)
        self.calls = 0

    def end(self, token: int) -> EnergyReading:
        self.calls += 1
        if self.calls == 1:  # the idle window comes first
            return EnergyReading(0.2, 0.1, self.name, {})
        return EnergyReading(1.0, 0.1, self.name, {})


def test_idle_power_gives_above_idle_energy() -> None:
    p = exact(trials=2, runs=4, warmup=0, idle_s=0.001)
    res = measure({"x": lambda: None}, IdleMeter(), p)["x"]
    assert res.idle_watts == pytest.approx(2.0)
    assert res.energy_j is not None and res.energy_j.mean == pytest.approx(0.25)  # 1 J / 4 runs
    assert res.energy_above_idle_j is not None
    assert res.energy_above_idle_j.mean == pytest.approx((1.0 - 2.0 * 0.1) / 4)
    d = res.to_dict()["energy_j"]
    assert d["gross"] is True and d["above_idle"]["idle_watts"] == pytest.approx(2.0)


def test_estimate_has_no_idle_figure() -> None:
    p = exact(trials=2, runs=2, warmup=0, idle_s=5.0)  # an idle window asked for all the same
    res = measure({"x": lambda: None}, EstimateMeter(cpu_model="X"), p)["x"]
    assert res.idle_watts is None and res.to_dict()["energy_j"]["above_idle"] is None
