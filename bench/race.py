"""Racing: interleaved trials until the pick is decided, dropping the clearly worse on the way.

A fixed number of trials spends the same time on a variant that is 3x slower as on the two
that are within 5% of each other, and still may not separate those two. Racing (as in
F-Race and successive elimination for algorithm configuration) spends trials where the
decision is open:

1. Screen: one short window per variant; one more than ``screen_factor`` times slower than
   the original cannot be picked and is dropped before the full protocol.
2. Windows follow the screened latency: enough inferences for the meter, and no more.
3. Trials: every remaining variant once per trial, in shuffled order. From ``min_trials``
   on, after each trial, each variant is judged by its per-trial ratio to the others
   (``Measurement.ratio_to``: paired log-ratios, t interval). One clearly worse than the
   best contender (its whole interval above 1) is dropped. The race stops when the pick is
   decided: against the original, the best contender's interval lies below 1 (a gain) or
   inside the tie band (1 ± ``tie``: no gain worth having); against every other contender,
   its interval's upper end is at most 1 + ``tie`` (none could beat it by more than the
   band). Otherwise it stops at ``max_trials`` or the budget, and the outcome says that the
   pick was undecided, and why.

The pick itself is made afterwards by the search, from the same ratios; racing only decides
how much to measure. The clock is injectable, so the rules are tested with synthetic
timings and no sleeps.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lepton_compile.bench.energy import Meter
from lepton_compile.bench.protocol import (
    Measurement,
    Progress,
    Protocol,
    TrialSession,
    WindowRunner,
    _median,
    is_real_meter,
)
from lepton_compile.bench.stats import Ratio

__all__ = ["RaceOutcome", "RaceRules", "race"]

log = logging.getLogger(__name__)

OBJECTIVES = ("energy", "latency", "size")


@dataclass(frozen=True)
class RaceRules:
    """When a race may drop a variant and when it stops.

    ``objective``: what the pick minimizes (energy, latency, size); for size, a variant is
    dropped when it is slower or hungrier than the original beyond noise (it cannot be
    picked), and the race is decided when no variant is open on that question.
    ``budget_s``: seconds this race may spend measuring (warm-up and screen included).
    ``screen_factor``: screen out variants this many times slower than the original (None:
    no screen). ``tie``: ratios within 1 ± tie count as equal. ``target_runs``: inferences
    per window for a CPU-time meter, between the protocol's minimum runs and its window.
    """

    objective: str = "energy"
    min_trials: int = 3
    max_trials: int = 15
    budget_s: float | None = 60.0
    screen_factor: float | None = 2.0
    screen_window_s: float = 0.1
    tie: float = 0.05
    target_runs: int = 30
    min_window_s: float = 0.05

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}")
        if not 2 <= self.min_trials <= self.max_trials:
            raise ValueError("need 2 <= min_trials <= max_trials")
        if self.budget_s is not None and self.budget_s <= 0:
            raise ValueError("budget_s must be positive")
        if self.screen_factor is not None and self.screen_factor <= 1.0:
            raise ValueError("screen_factor must be above 1")
        if not 0.0 <= self.tie < 0.5:
            raise ValueError("tie must be in [0, 0.5)")

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "min_trials": self.min_trials,
            "max_trials": self.max_trials,
            "budget_s": self.budget_s,
            "screen_factor": self.screen_factor,
            "screen_window_s": self.screen_window_s,
            "tie": self.tie,
            "target_runs": self.target_runs,
        }


@dataclass
class RaceOutcome:
    """What a race measured and decided."""

    measurements: dict[str, Measurement]
    dropped: dict[str, str] = field(default_factory=dict)  # id -> why (racing)
    screened: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> figure, why
    decided: bool = False
    reason: str = ""
    trials: int = 0
    seconds: float = 0.0
    windows_s: dict[str, float] = field(default_factory=dict)
    estimate_s: tuple[float, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "decided": self.decided,
            "reason": self.reason,
            "trials": self.trials,
            "seconds": round(self.seconds, 3),
            "estimate_s": list(self.estimate_s) if self.estimate_s else None,
            "windows_s": {k: round(v, 4) for k, v in self.windows_s.items()},
        }


def _fmt(r: Ratio) -> str:
    return f"{r.ratio:.2f}x [{r.low:.2f}, {r.high:.2f}] over {r.n} trials"


class _Judge:
    """Ratios between the variants of one race, for the rules' quantity (or quantities)."""

    def __init__(self, session: TrialSession, baseline: str, rules: RaceRules):
        self.session = session
        self.baseline = baseline
        self.rules = rules

    def quantities(self, ms: Mapping[str, Measurement]) -> list[str]:
        have_energy = all(m.trial_energy_j for m in ms.values())
        if self.rules.objective == "latency" or not have_energy:
            return ["latency"]
        if self.rules.objective == "energy":
            return ["energy"]
        return ["latency", "energy"]

    def tie(self, r: Ratio) -> bool:
        return r.low >= 1.0 / (1.0 + self.rules.tie) and r.high <= 1.0 + self.rules.tie

    def step(self, alive: list[str], dropped: dict[str, str]) -> tuple[bool, str]:
        """Drop what is clearly out; say whether the pick is decided, and if not, why."""
        ms = {v: self.session.measurement(v) for v in alive}
        qs = self.quantities(ms)
        base = ms[self.baseline]
        # Whatever the objective, a variant worse than the original beyond noise can never be
        # handed back.
        for v in alive:
            if v == self.baseline:
                continue
            for q in ("latency", *(["energy"] if "energy" in qs else [])):
                r = ms[v].ratio_to(base, q)
                if r is not None and r.above_one:
                    dropped[v] = f"{'slower' if q == 'latency' else 'hungrier'} than the " + (
                        f"original beyond noise: {_fmt(r)}"
                    )
                    break
        alive[:] = [v for v in alive if v not in dropped]
        if self.rules.objective == "size":
            open_ = []
            for v in alive:
                for q in qs:
                    r = ms[v].ratio_to(base, q) if v != self.baseline else None
                    if r is not None and r.high > 1.0 + self.rules.tie:
                        open_.append(f"{v} vs the original on {q}: {_fmt(r)}")
            return (not open_, "; ".join(open_[:2]))
        q = qs[0]

        def point(v: str) -> float:
            if v == self.baseline:
                return 1.0
            r = ms[v].ratio_to(base, q)
            return r.ratio if r is not None else float("inf")

        best = min(alive, key=point)
        for v in list(alive):
            if v in (best, self.baseline):
                continue
            r = ms[v].ratio_to(ms[best], q)
            if r is not None and r.above_one:
                dropped[v] = f"clearly worse than {best} on {q}: {_fmt(r)}"
        alive[:] = [v for v in alive if v not in dropped]
        open_ = []
        for v in alive:
            if v == best:
                continue
            r = ms[best].ratio_to(ms[v], q)
            if v == self.baseline:
                # Against the original the question is two-sided: a real gain, or none.
                settled = r is not None and (r.below_one or self.tie(r))
            else:
                # Among contenders it is enough that no other could beat the best by more
                # than the tie band: the pick then costs at most that.
                settled = r is not None and r.high <= 1.0 + self.rules.tie
            if not settled:
                open_.append((r.high - r.low if r else float("inf"), v, r))
        if not open_:
            gain = ms[best].ratio_to(base, q) if best != self.baseline else None
            return True, f"{best} is the best on {q}" + (
                f" ({_fmt(gain)} of the original)" if gain is not None else ""
            )
        _, v, r = max(open_, key=lambda t: t[0])
        return False, f"{best} vs {v} on {q}: " + (_fmt(r) if r else "no common trials")


def _windows(
    screen: Mapping[str, float], meter: Meter, protocol: Protocol, rules: RaceRules
) -> dict[str, float]:
    """Window seconds per variant from its screened latency (ms).

    A real meter (NVML, RAPL) needs its own minimum window whatever the latency. For a CPU-time
    meter, ``target_runs`` inferences, at least the protocol's minimum runs, and no longer
    than the protocol's window unless the minimum runs need it.
    """
    base = protocol.window_s(meter)
    if is_real_meter(meter) or protocol.window_s_override is not None:
        return {v: base for v in screen}
    out = {}
    for v, lat_ms in screen.items():
        lat = lat_ms / 1e3
        want = min(base, max(rules.min_window_s, rules.target_runs * lat))
        out[v] = max(protocol.min_runs_per_trial * lat, want)
    return out


def race(
    runners: Mapping[str, Callable[[], object] | WindowRunner],
    baseline: str,
    meter: Meter,
    protocol: Protocol,
    rules: RaceRules,
    *,
    label: str = "",
    progress: Progress | None = None,
    on_estimate: Callable[[float, float], None] | None = None,
    deadline: float | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> RaceOutcome:
    """Measure ``runners`` (``baseline`` among them: the original on this device) by racing.

    ``on_estimate(low_s, high_s)`` is called once after the screen with the expected time of
    the trials. ``deadline`` (a ``clock()`` value, the whole search's budget) and
    ``rules.budget_s`` both stop the race after at least two trials.
    """
    if baseline not in runners:
        raise ValueError("the baseline must be among the runners")
    start = clock()
    session = TrialSession(runners, meter, protocol, progress, race=label)
    outcome = RaceOutcome(measurements={})
    session.warmup()
    alive = session.alive()
    if baseline not in alive:
        outcome.measurements = session.results()
        outcome.reason = "the original failed to run"
        return outcome

    # Screen: one short window each, shuffled like a trial.
    screen_ms: dict[str, float] = {}
    screen_s = rules.screen_window_s
    order = list(alive)
    random.Random(protocol.seed + 2).shuffle(order)
    for v in order:
        got = session.window(v, screen_s, None)
        if got is not None:
            screen_ms[v] = _median(got[0])
    alive = [v for v in session.alive() if v in screen_ms]
    if baseline not in alive:
        outcome.measurements = session.results()
        outcome.reason = "the original failed to run"
        return outcome
    if rules.screen_factor is not None:
        for v in list(alive):
            ratio = screen_ms[v] / max(screen_ms[baseline], 1e-12)
            if v != baseline and ratio > rules.screen_factor:
                outcome.screened[v] = {
                    "latency_ms": screen_ms[v],
                    "original_latency_ms": screen_ms[baseline],
                    "ratio": ratio,
                    "window_s": screen_s,
                    "reason": f"screened out: {ratio:.1f}x slower than the original in a "
                    f"{screen_s:g} s screen (limit {rules.screen_factor:g}x)",
                }
                alive.remove(v)
    windows = _windows({v: screen_ms[v] for v in alive}, meter, protocol, rules)
    outcome.windows_s = windows
    per_trial = sum(windows.values()) + len(windows) * protocol.pause_s(meter) / 2
    spent = clock() - start
    low = rules.min_trials * per_trial
    high = rules.max_trials * per_trial
    if rules.budget_s is not None:
        high = max(low, min(high, rules.budget_s - spent))
    outcome.estimate_s = (round(low, 1), round(high, 1))
    if on_estimate is not None:
        on_estimate(low, high)

    judge = _Judge(session, baseline, rules)
    decided, why = False, ""
    while True:
        trial = session.trial(alive, windows)
        alive[:] = session.alive(alive)
        if baseline not in alive:
            why = "the original failed during the trials"
            break
        n = trial + 1
        if n >= rules.min_trials:
            decided, why = judge.step(alive, outcome.dropped)
            if decided:
                break
        if n >= rules.max_trials:
            why = f"undecided after {n} trials (the most trials allowed): {why}"
            break
        now = clock()
        if n >= 2 and rules.budget_s is not None and now - start >= rules.budget_s:
            why = f"undecided after {n} trials (measurement budget of {rules.budget_s:g} s " + (
                f"spent): {why or 'fewer trials than the minimum'}"
            )
            break
        if n >= 2 and deadline is not None and now >= deadline:
            why = (
                f"undecided after {n} trials (the --budget-s was spent): {why or 'too few trials'}"
            )
            break
    outcome.decided = decided
    outcome.reason = why
    outcome.trials = session.trials_run
    outcome.seconds = clock() - start
    outcome.measurements = session.results()
    for v, text in outcome.dropped.items():
        log.info("%s dropped: %s", v, text)
    return outcome
