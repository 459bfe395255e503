"""Measures several variants fairly on a noisy machine: warm-up, then seeded interleaved trials."""

from __future__ import annotations

import gc
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any
from typing import Protocol as TypingProtocol

from lepton_compile.bench.energy import EnergyReading, Meter
from lepton_compile.bench.stats import Ratio, Stats, paired_ratio, summarize, unpaired_ratio

__all__ = ["Measurement", "Protocol", "TrialSession", "measure"]

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


@dataclass
class Protocol:
    """How to measure. Trials interleave the variants, so drift (heat, clocks, neighbours)
    spreads over all of them instead of landing on whichever ran last.

    ``min_meter_periods``: a trial's window is at least this many update periods of the meter
    (NVML refreshes about every 100 ms; a shorter window reads mostly quantization).
    ``jitter_s``: a random pause of up to this long before each window, so windows do not
    phase-lock with the meter's refresh (Yang et al., SC'24); None means one update period of
    the meter where known, else none.
    """

    warmup_runs: int = 3
    warmup_s: float = 0.2
    trials: int = 5  # interleaved: each trial measures every variant once, order shuffled
    min_trial_s: float = 0.25  # per variant per trial: repeat the callable until this elapses
    min_runs_per_trial: int = 3
    max_runs_per_trial: int = 1000
    seed: int = 0
    # A real meter (NVML, RAPL) gets windows of at least this long and this many of its update
    # periods: shorter windows read mostly quantization and sampling gaps (Zeus, Yang et al.).
    real_meter_min_s: float = 5.0
    min_meter_periods: float = 50.0
    jitter_s: float | None = None
    # Idle power is measured once before the trials, over this long (real meters only), so
    # both gross and above-idle energy per inference can be reported.
    idle_s: float = 5.0
    window_s_override: float | None = None

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError("trials must be >= 1")
        if self.warmup_runs < 0 or self.warmup_s < 0 or self.min_trial_s < 0:
            raise ValueError("warmup_runs, warmup_s and min_trial_s must be >= 0")
        if not 1 <= self.min_runs_per_trial <= self.max_runs_per_trial:
            raise ValueError("need 1 <= min_runs_per_trial <= max_runs_per_trial")
        if self.min_meter_periods < 0 or (self.jitter_s is not None and self.jitter_s < 0):
            raise ValueError("min_meter_periods and jitter_s must be >= 0")
        if self.real_meter_min_s < 0 or self.idle_s < 0:
            raise ValueError("real_meter_min_s and idle_s must be >= 0")
        if self.window_s_override is not None and self.window_s_override <= 0:
            raise ValueError("window_s_override must be > 0")

    @classmethod
    def quick(cls) -> Protocol:
        """Short windows for CI and smoke runs: figures are indicative only."""
        return cls(
            warmup_runs=1,
            warmup_s=0.02,
            trials=3,
            min_trial_s=0.05,
            min_runs_per_trial=2,
            max_runs_per_trial=200,
            real_meter_min_s=0.3,
            min_meter_periods=3.0,
            idle_s=0.3,
        )

    def window_s(self, meter: Meter) -> float:
        """Minimum seconds per variant per trial with this meter."""
        if self.window_s_override is not None:
            return self.window_s_override
        if not is_real_meter(meter):
            # The estimate integrates this process's CPU time, which has no refresh period.
            return self.min_trial_s
        period = meter.update_period_s or 0.0
        return max(self.min_trial_s, self.real_meter_min_s, self.min_meter_periods * period)

    def pause_s(self, meter: Meter) -> float:
        """Upper bound of the random pause before each window with this meter."""
        if self.jitter_s is not None:
            return self.jitter_s
        period = meter.update_period_s or 0.0
        return period if period >= 0.01 else 0.0  # a ~1 ms RAPL refresh needs no de-phasing

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_real_meter(meter: Meter) -> bool:
    return meter.name in ("nvml", "rapl")


class WindowRunner(TypingProtocol):
    """Something that can be warmed up and timed over a window: a local callable, or a
    variant served by an isolated worker process (which reads its own meter)."""

    def warmup(self, p: Protocol) -> None: ...

    def window(
        self, window_s: float, p: Protocol
    ) -> tuple[list[float], float, EnergyReading | None, str | None]: ...


class LocalRunner:
    """A callable measured in this process with ``meter``."""

    def __init__(self, fn: Callable[[], object], meter: Meter):
        self.fn = fn
        self.meter = meter

    def warmup(self, p: Protocol) -> None:
        run_warmup(self.fn, p)

    def window(
        self, window_s: float, p: Protocol
    ) -> tuple[list[float], float, EnergyReading | None, str | None]:
        return run_window(self.fn, self.meter, window_s, p)


@dataclass
class Measurement:
    """What ``measure`` found for one variant.

    ``latency_ms``: over every run, except ``ci95``, which is over the per-trial means (runs in
    one trial share the machine's state, so they are not independent samples). ``energy_j``:
    one value per trial, joules of the trial's window divided by its runs. ``energy_method``
    comes from the meter: an estimate is never labelled as measured.
    """

    variant_id: str
    latency_ms: Stats | None
    energy_j: Stats | None
    energy_method: str
    meter: dict[str, Any]
    runs: int
    trials: int
    window_s: list[float]
    protocol: Protocol
    error: str | None = None
    energy_errors: list[str] = field(default_factory=list)
    energy_above_idle_j: Stats | None = None
    idle_watts: float | None = None
    # Per-trial figures by trial index, for paired comparisons: the window's median latency
    # and its energy per inference. ``race`` names the interleaved series the trials belong
    # to; only figures of the same race share machine state trial by trial.
    trial_latency_ms: dict[int, float] = field(default_factory=dict)
    trial_energy_j: dict[int, float] = field(default_factory=dict)
    race: str = ""

    @property
    def failed(self) -> bool:
        return self.error is not None

    def series(self, quantity: str) -> dict[int, float]:
        """Per-trial values of ``quantity`` ("latency" or "energy") by trial index."""
        if quantity == "latency":
            return self.trial_latency_ms
        if quantity == "energy":
            return self.trial_energy_j
        raise ValueError(f"quantity must be latency or energy, not {quantity!r}")

    def ratio_to(self, other: Measurement, quantity: str) -> Ratio | None:
        """This variant's ``quantity`` over ``other``'s, with a 95% CI; None without data.

        Paired (per-trial log-ratios) over the trials both ran when they belong to the same
        race; otherwise unpaired (difference of mean log values, Welch's t), which is what
        is left when two figures did not share their trials.
        """
        a, b = self.series(quantity), other.series(quantity)
        if self.race and self.race == other.race:
            common = sorted(set(a) & set(b))
            if common:
                return paired_ratio([a[t] for t in common], [b[t] for t in common])
            return None
        if a and b:
            return unpaired_ratio(list(a.values()), list(b.values()))
        return None

    def to_dict(self) -> dict[str, Any]:
        """The report's shape: latency_ms, energy_j, protocol (plus status and error)."""
        lat = self.latency_ms
        en = self.energy_j

        def num(x: float | None) -> float | None:
            return x if x is not None and math.isfinite(x) else None

        d: dict[str, Any] = {
            "status": "failed" if self.failed else "ok",
            "latency_ms": {
                "p50": num(lat.p50) if lat else None,
                "p90": num(lat.p90) if lat else None,
                "p99": num(lat.p99) if lat else None,
                "mean": num(lat.mean) if lat else None,
                "ci95": num(lat.ci95) if lat else None,
                "n": lat.n if lat else 0,
                "std": num(lat.std) if lat else None,
                "min": num(lat.min) if lat else None,
                "max": num(lat.max) if lat else None,
                "ci95_over": f"{lat.ci_n} per-trial means" if lat else None,
                # Window medians by trial, in trial order: what ratios are computed from.
                "per_trial": [self.trial_latency_ms[t] for t in sorted(self.trial_latency_ms)],
            },
            "energy_j": {
                "per_inference": num(en.mean) if en else None,
                "ci95": num(en.ci95) if en else None,
                "method": self.energy_method,
                "n": en.n if en else 0,
                "gross": True,
                "per_trial": [self.trial_energy_j[t] for t in sorted(self.trial_energy_j)],
                "above_idle": (
                    {
                        "per_inference": num(self.energy_above_idle_j.mean),
                        "ci95": num(self.energy_above_idle_j.ci95),
                        "idle_watts": self.idle_watts,
                    }
                    if self.energy_above_idle_j is not None
                    else None
                ),
                "meter": self.meter,
            },
            "protocol": {
                **self.protocol.to_dict(),
                "interleaved": True,
                "runs": self.runs,
                "trials_completed": self.trials,
                "window_s_mean": (
                    math.fsum(self.window_s) / len(self.window_s) if self.window_s else None
                ),
                "window_s_total": math.fsum(self.window_s),
            },
        }
        if self.energy_errors:
            d["energy_j"]["errors"] = self.energy_errors
        if self.error is not None:
            d["error"] = self.error
        return d


class _RunnerFailed(Exception):
    pass


@dataclass
class _Acc:
    latencies: list[list[float]] = field(default_factory=list)  # ms, one list per trial
    energy: list[float] = field(default_factory=list)  # J per inference, one per trial
    trial_latency: dict[int, float] = field(default_factory=dict)  # median ms by trial index
    trial_energy: dict[int, float] = field(default_factory=dict)  # J per inference by trial
    windows: list[float] = field(default_factory=list)
    energy_errors: list[str] = field(default_factory=list)
    error: str | None = None
    above_idle: list[float] = field(default_factory=list)


def _describe_error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def run_warmup(fn: Callable[[], object], p: Protocol) -> None:
    # Both minimums: the first runs pay for allocation and kernel selection, and a time floor
    # lets clocks and caches settle for fast callables.
    start = time.perf_counter()
    n = 0
    while n < p.warmup_runs or (
        time.perf_counter() - start < p.warmup_s and n < p.max_runs_per_trial
    ):
        fn()
        n += 1


def run_window(
    fn: Callable[[], object], meter: Meter, window_s: float, p: Protocol
) -> tuple[list[float], float, EnergyReading | None, str | None]:
    """Run fn until the window and the minimum runs are reached.

    Returns (latencies in ms, elapsed seconds, the meter's reading or None, the meter's error).
    """
    energy_error: str | None = None
    try:
        token = meter.begin()
    except Exception as e:  # a meter fault loses the energy of this trial, not its latency
        token, energy_error = None, _describe_error(e)
    lat: list[float] = []
    start = time.perf_counter_ns()
    limit_ns = window_s * 1e9
    try:
        while True:
            t0 = time.perf_counter_ns()
            fn()
            t1 = time.perf_counter_ns()
            lat.append((t1 - t0) / 1e6)
            n = len(lat)
            if n >= p.max_runs_per_trial or (n >= p.min_runs_per_trial and t1 - start >= limit_ns):
                break
    except Exception as e:
        raise _RunnerFailed(_describe_error(e)) from e
    elapsed_s = (time.perf_counter_ns() - start) / 1e9
    reading = None
    if token is not None:
        try:
            reading = meter.end(token)
        except Exception as e:
            energy_error = _describe_error(e)
    return lat, elapsed_s, reading, energy_error


def measure_idle(meter: Meter, p: Protocol) -> float | None:
    """Idle power in watts over ``p.idle_s``, for real meters; None for the estimate (it counts
    this process's CPU time, which is zero at idle by construction) or when reading fails."""
    if not is_real_meter(meter) or p.idle_s <= 0:
        return None
    try:
        token = meter.begin()
        time.sleep(max(p.idle_s, (meter.update_period_s or 0.0) * 2))
        reading = meter.end(token)
    except Exception as e:
        log.warning("idle power not measured: %s", _describe_error(e))
        return None
    return reading.joules / reading.seconds if reading.seconds > 0 else None


class TrialSession:
    """Interleaved trials, one step at a time, for a caller that decides as it goes.

    ``warmup`` once, then any number of ``trial(ids, windows)`` calls (each runs one window
    per listed variant in a seeded shuffled order), then ``results``. ``measure`` runs a fixed
    number of trials with it; the search's racing (``bench.race``) adds trials and drops
    variants between them.
    """

    def __init__(
        self,
        runners: Mapping[str, Callable[[], object] | WindowRunner],
        meter: Meter,
        protocol: Protocol,
        progress: Progress | None = None,
        race: str = "",
    ):
        self.ids = list(runners)
        self.runners: dict[str, WindowRunner] = {
            vid: r if hasattr(r, "window") else LocalRunner(r, meter)  # type: ignore[misc]
            for vid, r in runners.items()
        }
        self.meter = meter
        self.protocol = protocol
        self.progress = progress
        self.race = race
        self.order_rng = random.Random(protocol.seed)
        # Separate, so that pausing does not change the orders.
        self.pause_rng = random.Random(protocol.seed + 1)
        self.pause_s = protocol.pause_s(meter)
        self.acc = {vid: _Acc() for vid in self.ids}
        self.idle_w: float | None = None
        self.trials_run = 0

    def alive(self, ids: list[str] | None = None) -> list[str]:
        """The given (default: all) variants that have not failed."""
        return [v for v in (ids if ids is not None else self.ids) if self.acc[v].error is None]

    def warmup(self) -> None:
        for vid in self.ids:
            try:
                self.runners[vid].warmup(self.protocol)
            except Exception as e:
                if getattr(e, "stops_the_run", False):
                    raise
                self.acc[vid].error = f"warm-up: {_describe_error(e)}"
                log.warning("variant %s failed: %s", vid, self.acc[vid].error)
        gc.collect()  # once, after warm-up: the full collection's cost stays out of every window
        self.idle_w = measure_idle(self.meter, self.protocol)

    def window(self, vid: str, window_s: float, trial: int | None) -> tuple | None:
        """One window of ``vid``; recorded as trial ``trial`` unless that is None (a screen).
        Returns the runner's (latencies, elapsed, reading, energy error), None if it failed."""
        if self.pause_s > 0:
            time.sleep(self.pause_rng.uniform(0.0, self.pause_s))
        # Young generations only: garbage the previous variant left is not collected in this
        # one's window, at ~0.1 ms instead of a full collection's tens of ms.
        gc.collect(1)
        a = self.acc[vid]
        try:
            out = self.runners[vid].window(window_s, self.protocol)
        except Exception as e:  # a local runner's error, or an isolated worker's crash
            if getattr(e, "stops_the_run", False):
                raise  # not this variant's fault (the cluster running the workers is gone)
            where = "screen" if trial is None else f"trial {trial}"
            a.error = f"{where}: {e if isinstance(e, _RunnerFailed) else _describe_error(e)}"
            log.warning("variant %s failed: %s", vid, a.error)
            return None
        if trial is None:
            return out
        lat, elapsed_s, reading, energy_error = out
        a.latencies.append(lat)
        a.trial_latency[trial] = _median(lat)
        a.windows.append(elapsed_s if reading is None else reading.seconds)
        if reading is not None:
            per_inference = reading.joules / len(lat)
            a.energy.append(per_inference)
            a.trial_energy[trial] = per_inference
            if self.idle_w is not None:
                a.above_idle.append((reading.joules - self.idle_w * reading.seconds) / len(lat))
        if energy_error is not None:
            a.energy_errors.append(f"trial {trial}: {energy_error}")
            log.warning("energy meter failed for %s in trial %d: %s", vid, trial, energy_error)
        return out

    def trial(self, ids: list[str], windows: Mapping[str, float] | None = None) -> int:
        """Run one trial over ``ids`` (shuffled); ``windows`` gives per-variant window seconds
        (default: the protocol's window for the meter). Returns the trial's index."""
        index = self.trials_run
        default = self.protocol.window_s(self.meter)
        order = self.alive(ids)
        self.order_rng.shuffle(order)
        for vid in order:
            if self.progress is not None:
                self.progress(vid, index, self.protocol.trials)
            self.window(vid, (windows or {}).get(vid, default), index)
        self.trials_run += 1
        return index

    def measurement(self, vid: str) -> Measurement:
        a = self.acc[vid]
        ok = a.error is None and bool(a.latencies)
        flat = [x for trial in a.latencies for x in trial]
        latency = energy = None
        if ok:
            latency = summarize(flat, ci_over=[math.fsum(t) / len(t) for t in a.latencies])
            energy = summarize(a.energy) if a.energy else None
            log.debug(
                "%s: p50 %.4g ms ± %.2g (%d runs, %d trials), %s J/inference (%s)",
                vid,
                latency.p50,
                latency.ci95,
                latency.n,
                len(a.latencies),
                f"{energy.mean:.4g}" if energy else "n/a",
                self.meter.name,
            )
        return Measurement(
            variant_id=vid,
            latency_ms=latency,
            energy_j=energy,
            energy_method=self.meter.name,
            meter=self.meter.describe(),
            runs=len(flat),
            trials=len(a.latencies),
            window_s=a.windows,
            protocol=self.protocol,
            error=a.error,
            energy_errors=a.energy_errors,
            energy_above_idle_j=summarize(a.above_idle) if ok and a.above_idle else None,
            idle_watts=self.idle_w,
            trial_latency_ms=dict(a.trial_latency),
            trial_energy_j=dict(a.trial_energy),
            race=self.race,
        )

    def results(self) -> dict[str, Measurement]:
        return {vid: self.measurement(vid) for vid in self.ids}


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def measure(
    runners: Mapping[str, Callable[[], object] | WindowRunner],
    meter: Meter,
    protocol: Protocol,
    progress: Progress | None = None,
    deadline: float | None = None,
    race: str = "",
) -> dict[str, Measurement]:
    """Measure every runner's latency and energy per call under ``protocol``.

    A runner must block until its work is done (synchronize a GPU stream inside it). Each is
    warmed up, then measured in ``protocol.trials`` trials; in each trial every variant gets one
    window, in an order shuffled with ``protocol.seed``. A runner that raises is recorded as
    failed (``error``) and left out of later trials; the others go on. ``progress`` is called
    as (variant_id, trial_index from 0, trials) before each window. ``deadline`` (a
    ``time.perf_counter()`` value) stops starting new trials once two are done and it passed;
    each Measurement says how many trials it got.
    """
    session = TrialSession(runners, meter, protocol, progress, race)
    session.warmup()
    for trial in range(protocol.trials):
        if deadline is not None and trial >= 2 and time.perf_counter() > deadline:
            log.warning("time budget spent: stopped after %d of %d trials", trial, protocol.trials)
            break
        session.trial(session.ids)
    return session.results()
