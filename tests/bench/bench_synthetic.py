"""A synthetic machine for measurement tests: injected timings, a shared drift, no sleeps.

Every variant's latency is its own base figure times the machine's level in that trial
(shared state: clocks, heat, neighbours) times a little noise of its own. The level changes
from trial to trial (``progress`` tells the machine when a window of a new trial starts), so
every variant of a trial moves together. The clock moves by the time each window would have
taken, so budgets behave as on a real machine.
"""

from __future__ import annotations

import math
import random
from typing import Any

from lepton_compile.bench.energy import EnergyReading, Meter
from lepton_compile.bench.protocol import Protocol


class Machine:
    def __init__(self, drift: float = 0.5, noise: float = 0.02, seed: int = 0):
        self.now = 0.0
        self.drift = drift
        self.noise = noise
        self.rng = random.Random(seed)
        self._levels: dict[int, float] = {}
        self._trial = -1

    def clock(self) -> float:
        return self.now

    def progress(self, vid: str, trial: int, trials: int) -> None:
        self._trial = trial

    def level(self) -> float:
        # Log-normal level per trial, shared by every variant of that trial.
        if self._trial not in self._levels:
            self._levels[self._trial] = math.exp(self.rng.gauss(0.0, self.drift))
        return self._levels[self._trial]


class Runner:
    """A WindowRunner whose inferences take ``latency_ms`` x the machine's level."""

    def __init__(self, machine: Machine, latency_ms: float, watts: float = 10.0):
        self.m = machine
        self.latency_ms = latency_ms
        self.watts = watts
        self.windows = 0

    def warmup(self, p: Protocol) -> None:
        self.m.now += 3 * self.latency_ms / 1e3

    def window(self, window_s: float, p: Protocol) -> tuple[list[float], float, Any, None]:
        self.windows += 1
        lat: list[float] = []
        start = self.m.now
        while len(lat) < p.min_runs_per_trial or (
            self.m.now - start < window_s and len(lat) < p.max_runs_per_trial
        ):
            x = self.latency_ms * self.m.level() * (1 + self.m.rng.gauss(0, self.m.noise))
            lat.append(x)
            self.m.now += x / 1e3
        elapsed = self.m.now - start
        reading = EnergyReading(self.watts * elapsed, elapsed, "estimated")
        return lat, elapsed, reading, None


class Meter_(Meter):
    """A CPU-time style meter: no update period, not a 'real' meter."""

    name = "estimated"
    update_period_s = None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "summary": "synthetic"}

    def begin(self) -> Any:
        return None

    def end(self, token: Any) -> EnergyReading:
        return EnergyReading(0.0, 0.0, self.name)


def protocol(**kw: Any) -> Protocol:
    base = dict(
        warmup_runs=1,
        warmup_s=0.0,
        trials=5,
        min_trial_s=0.25,
        min_runs_per_trial=3,
        max_runs_per_trial=100000,
        jitter_s=0.0,
        idle_s=0.0,
    )
    base.update(kw)
    return Protocol(**base)
