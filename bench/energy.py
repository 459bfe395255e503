"""Energy meters (NVML, RAPL, CPU-time estimate) behind one begin/end interface."""

from __future__ import annotations

import importlib
import logging
import math
import os
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_compile.bench import device as _device

__all__ = [
    "CPU_TDP_TABLE",
    "DEFAULT_WATTS_PER_THREAD",
    "EnergyReading",
    "EstimateMeter",
    "Meter",
    "MeterUnavailable",
    "NvmlMeter",
    "RaplMeter",
    "get_meter",
    "lookup_tdp",
]

log = logging.getLogger(__name__)

METHODS = ("nvml", "rapl", "estimated")


class MeterUnavailable(ValueError):
    """The asked-for meter cannot run here; the message is one line saying why."""


@dataclass(frozen=True)
class EnergyReading:
    """Energy over one begin/end window; ``method`` says how it was obtained."""

    joules: float
    seconds: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def watts(self) -> float:
        return self.joules / self.seconds if self.seconds > 0 else math.nan


class Meter(ABC):
    """One energy meter. ``begin()`` returns a token; ``end(token)`` the energy since then.

    Tokens are independent, so windows may overlap or nest. ``resolution`` is the smallest step
    of the reading in joules and ``update_period_s`` how often the source refreshes, each None
    where unknown: a window shorter than a few update periods reads mostly quantization.
    """

    name: str = ""
    resolution: float | None = None
    update_period_s: float | None = None

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What the meter measures, its domains or power model, in a JSON-ready dict."""

    @abstractmethod
    def begin(self) -> Any:
        """Start a window; return the token to hand to ``end``."""

    @abstractmethod
    def end(self, token: Any) -> EnergyReading:
        """Close the window opened by ``begin``."""

    def close(self) -> None:  # noqa: B027 - optional hook, most meters hold nothing
        """Release what the meter holds (NVML handle, polling thread)."""

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- NVML -----------------------------------------------------------------------------------


def _import_pynvml() -> Any:
    try:
        return importlib.import_module("pynvml")
    except ImportError as e:
        raise MeterUnavailable(f"pynvml is not installed ({e}): pip install nvidia-ml-py") from None


def _probe_update_period(
    read: Callable[[], float], timeout_s: float, poll_s: float = 0.001
) -> float | None:
    """Seconds between two successive changes of ``read()``, or None if it did not change twice.

    The first change marks an update boundary; only the time from there to the next change is
    a full period, hence two changes.
    """
    if timeout_s <= 0:
        return None
    deadline = time.perf_counter() + timeout_s
    last = read()
    changes: list[float] = []
    while time.perf_counter() < deadline:
        v = read()
        if v != last:
            changes.append(time.perf_counter())
            last = v
            if len(changes) == 2:
                return changes[1] - changes[0]
        time.sleep(poll_s)
    return None


class _PowerIntegrator:
    """Background thread integrating polled power (trapezoids) into a running joule total.

    Used only where the GPU has no energy counter (pre-Volta). A window reads the running total
    at begin and end, extrapolating from the last sample to "now" so short windows are not
    truncated to the last poll. The thread takes the GIL briefly every poll; runners spend their
    time in native code, so the cost is small but not zero.
    """

    def __init__(self, read_watts: Callable[[], float], interval_s: float) -> None:
        self._read = read_watts
        self._interval = interval_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._t = time.perf_counter()
        self._p = read_watts()
        self._joules = 0.0
        self.samples = 1
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="nvml-power-poll", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                p = self._read()
            except Exception as e:  # a failed poll must not kill the integrator
                self.errors += 1
                log.debug("power poll failed: %s", e)
                continue
            t = time.perf_counter()
            with self._lock:
                self._joules += 0.5 * (self._p + p) * (t - self._t)
                self._t, self._p = t, p
                self.samples += 1

    def snapshot(self) -> tuple[float, float]:
        """(joules since start, perf_counter time) as of now."""
        with self._lock:
            now = time.perf_counter()
            return self._joules + self._p * (now - self._t), now

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)


# How often nvmlDeviceGetTotalEnergyConsumption moves on current boards (Zeus, field notes).
NVML_TYPICAL_UPDATE_S = 0.1


class NvmlMeter(Meter):
    """GPU board energy via NVML.

    Reads ``nvmlDeviceGetTotalEnergyConsumption`` (mJ since driver load, Volta and newer); where
    that is unsupported, integrates ``nvmlDeviceGetPowerUsage`` polled by a background thread.
    ``device_index`` is NVML's index (PCI bus order) or a GPU UUID; ``get_meter`` maps a CUDA
    index through CUDA_VISIBLE_DEVICES. The counter refreshes about every 100 ms, so windows
    must be long (protocol: several update periods) or they read 0.
    """

    name = "nvml"

    def __init__(
        self,
        device_index: int | str = 0,
        *,
        probe_timeout_s: float = 1.0,
        poll_interval_s: float = 0.01,
    ) -> None:
        self._nvml = nvml = _import_pynvml()
        self._error_cls: type[BaseException] = getattr(nvml, "NVMLError", Exception)
        try:
            nvml.nvmlInit()
        except Exception as e:
            raise MeterUnavailable(f"NVML did not start (no NVIDIA driver?): {e}") from None
        self._integrator: _PowerIntegrator | None = None
        self._fallback_reason: str | None = None
        try:
            self._handle = self._open_handle(device_index)
            name = nvml.nvmlDeviceGetName(self._handle)
            self.gpu_name = name.decode() if isinstance(name, bytes) else str(name)
            self.device_index = device_index
            try:
                self._read_mj()
                self.source = "nvmlDeviceGetTotalEnergyConsumption"
                self.resolution = 1e-3  # the counter counts millijoules
                self.update_period_s = _probe_update_period(self._read_mj, probe_timeout_s)
            except self._error_cls as e:
                # Pre-Volta boards have no energy counter; integrate power instead.
                self._fallback_reason = str(e)
                self.source = "nvmlDeviceGetPowerUsage (polled, integrated)"
                self.resolution = None
                self.update_period_s = _probe_update_period(self._read_w, probe_timeout_s)
                self._integrator = _PowerIntegrator(self._read_w, poll_interval_s)
                log.info(
                    "GPU %s has no NVML energy counter (%s): integrating polled power every %g s",
                    self.gpu_name,
                    e,
                    poll_interval_s,
                )
        except MeterUnavailable:
            self._shutdown()
            raise
        except Exception as e:
            self._shutdown()
            raise MeterUnavailable(f"NVML device {device_index!r} unusable: {e}") from None
        self.update_period_assumed = False
        if self.update_period_s is None and self._integrator is None:
            # Unknown period: assume the usual ~100 ms rather than none, so the protocol still
            # stretches windows past it instead of reading a counter that has not moved.
            self.update_period_s = NVML_TYPICAL_UPDATE_S
            self.update_period_assumed = True
            if probe_timeout_s > 0:
                log.warning(
                    "NVML energy counter did not update twice within %g s; assuming it updates "
                    "every %g s",
                    probe_timeout_s,
                    NVML_TYPICAL_UPDATE_S,
                )
        self._warned_short = False

    def _open_handle(self, device_index: int | str) -> Any:
        nvml = self._nvml
        if isinstance(device_index, str):
            return nvml.nvmlDeviceGetHandleByUUID(device_index)
        count = nvml.nvmlDeviceGetCount()
        if not 0 <= device_index < count:
            raise MeterUnavailable(f"NVML device index {device_index} out of range ({count} GPUs)")
        return nvml.nvmlDeviceGetHandleByIndex(device_index)

    def _read_mj(self) -> int:
        return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    def _read_w(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0  # mW -> W

    def describe(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "measures": "whole GPU board energy (all processes on that GPU)",
            "gpu": self.gpu_name,
            "device_index": self.device_index,
            "source": self.source,
            "resolution_j": self.resolution,
            "update_period_s": self.update_period_s,
            "update_period_assumed": self.update_period_assumed,
            "summary": f"nvml: {self.source} on {self.gpu_name}",
        }
        if self._fallback_reason is not None:
            d["fallback_reason"] = self._fallback_reason
        return d

    def begin(self) -> tuple[float, float]:
        if self._integrator is not None:
            return self._integrator.snapshot()
        t = time.perf_counter()
        return self._read_mj() / 1000.0, t

    def end(self, token: tuple[float, float]) -> EnergyReading:
        if self._integrator is not None:
            j1, t1 = self._integrator.snapshot()
        else:
            j1, t1 = self._read_mj() / 1000.0, time.perf_counter()
        j0, t0 = token
        seconds = t1 - t0
        details: dict[str, Any] = {"source": self.source, "gpu": self.gpu_name}
        if self.update_period_s:
            details["update_periods_in_window"] = seconds / self.update_period_s
            if seconds < 5 * self.update_period_s:
                details["window_short"] = True
                if not self._warned_short:
                    self._warned_short = True
                    log.warning(
                        "NVML window %.3f s is under 5 update periods (%.3f s): energy is mostly "
                        "counter quantization",
                        seconds,
                        self.update_period_s,
                    )
        if self._integrator is not None:
            details["samples"] = self._integrator.samples
        return EnergyReading(joules=j1 - j0, seconds=seconds, method=self.name, details=details)

    def _shutdown(self) -> None:
        if self._integrator is not None:
            self._integrator.stop()
            self._integrator = None
        try:
            self._nvml.nvmlShutdown()
        except Exception as e:  # shutting down twice or after a driver error is harmless
            log.debug("nvmlShutdown: %s", e)

    def close(self) -> None:
        self._shutdown()


# --- RAPL -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RaplDomain:
    zone: str  # "intel-rapl:0:0"
    name: str  # "dram"
    energy_path: Path
    max_range_uj: int | None


def _zone_sort_key(zone: str) -> tuple[int, ...]:
    return tuple(int(p) for p in zone.split(":")[1:] if p.isdigit())


def _permission_message(path: Path, root: Path) -> str:
    return (
        f"cannot read {path}: RAPL counters are root-only since Linux 5.10 (CVE-2020-8694); "
        f"run as root or `sudo chmod a+r {root}/intel-rapl:*/energy_uj`"
    )


class RaplMeter(Meter):
    """CPU package (+ DRAM where exposed) energy from the Linux powercap RAPL zones.

    Reads ``intel-rapl:N`` zones (the MSR interface; AMD Zen CPUs are exposed by the same
    ``intel_rapl`` driver under the same names). Selected: top-level ``package-N`` zones and
    ``dram`` zones. Skipped: ``core``/``uncore`` (inside their package), ``psys`` (the platform
    zone contains the packages) and ``intel-rapl-mmio:*`` (a second interface to the same
    package counter): summing nested or duplicate domains would double count. Counters wrap at
    ``max_energy_range_uj``; one wrap per window is corrected, which holds for windows under the
    wrap period (minutes at full power).
    """

    name = "rapl"
    resolution = 1e-6  # sysfs reports microjoules (the hardware unit is ~15-61 uJ)
    update_period_s = 1e-3  # nominal RAPL refresh

    def __init__(self, root: str | os.PathLike[str] = "/sys/class/powercap") -> None:
        self.root = Path(root)
        self.domains, self.skipped = self._discover()
        if not any(d.name.startswith("package") for d in self.domains):
            raise MeterUnavailable(
                f"no RAPL package zone under {self.root} (no intel_rapl driver, a VM, or not Linux)"
            )
        for d in self.domains:  # fail now, with the fix, rather than mid-measurement
            self._read_uj(d.energy_path)

    def _discover(self) -> tuple[list[RaplDomain], list[dict[str, str]]]:
        # powercap lists every zone flat (intel-rapl:0, intel-rapl:0:0); a copied tree may only
        # nest them, so look at both and keep one entry per zone.
        dirs: dict[str, Path] = {}
        if self.root.is_dir():
            for p in [
                *self.root.glob("intel-rapl:*"),
                *self.root.glob("intel-rapl:*/intel-rapl:*"),
            ]:
                if p.is_dir() and (p / "energy_uj").exists():
                    dirs.setdefault(p.name, p)
        domains: list[RaplDomain] = []
        skipped: list[dict[str, str]] = []
        for zone in sorted(dirs, key=_zone_sort_key):
            p = dirs[zone]
            try:
                dom_name = (p / "name").read_text().strip()
            except OSError:
                dom_name = "?"
            top = zone.count(":") == 1
            if top and dom_name.startswith("package"):
                pass
            elif dom_name == "dram":
                # sysfs nests dram under its package, but package energy does not include DRAM.
                pass
            else:
                why = {
                    "core": "inside its package",
                    "uncore": "inside its package",
                    "psys": "platform zone, contains the packages",
                }.get(dom_name, "not a package or dram zone")
                skipped.append({"zone": zone, "name": dom_name, "why": why})
                continue
            try:
                max_uj: int | None = int((p / "max_energy_range_uj").read_text())
            except (OSError, ValueError):
                max_uj = None
            domains.append(RaplDomain(zone, dom_name, p / "energy_uj", max_uj))
        return domains, skipped

    def _read_uj(self, path: Path) -> int:
        try:
            with open(path) as f:
                return int(f.read())
        except PermissionError:
            raise MeterUnavailable(_permission_message(path, self.root)) from None

    def describe(self) -> dict[str, Any]:
        names = ", ".join(f"{d.name} ({d.zone})" for d in self.domains)
        return {
            "name": self.name,
            "measures": "CPU package and DRAM energy of the whole machine (all processes)",
            "root": str(self.root),
            "domains": [
                {"zone": d.zone, "name": d.name, "max_energy_range_uj": d.max_range_uj}
                for d in self.domains
            ],
            "skipped": self.skipped,
            "resolution_j": self.resolution,
            "update_period_s": self.update_period_s,
            "summary": f"rapl: sum of {names}",
        }

    def begin(self) -> tuple[dict[str, int], float]:
        t = time.perf_counter()
        return {d.zone: self._read_uj(d.energy_path) for d in self.domains}, t

    def end(self, token: tuple[dict[str, int], float]) -> EnergyReading:
        after = {d.zone: self._read_uj(d.energy_path) for d in self.domains}
        t1 = time.perf_counter()
        before, t0 = token
        per_domain: dict[str, float] = {}
        wrapped: list[str] = []
        for d in self.domains:
            delta = after[d.zone] - before[d.zone]
            if delta < 0:
                if d.max_range_uj:
                    delta += d.max_range_uj
                    wrapped.append(d.zone)
                else:
                    log.warning("RAPL %s went backwards and has no max range; counted 0", d.zone)
                    delta = 0
            per_domain[f"{d.name} ({d.zone})"] = delta / 1e6
        details: dict[str, Any] = {"domains_j": per_domain}
        if wrapped:
            details["wrapped"] = wrapped
        return EnergyReading(
            joules=math.fsum(per_domain.values()),
            seconds=t1 - t0,
            method=self.name,
            details=details,
        )


# --- Estimate ---------------------------------------------------------------------------------

# (TDP watts, hardware threads) per package, from the vendors' spec pages. Matched as a whole
# word inside /proc/cpuinfo's "model name". Small on purpose: a wrong guess is worse than the
# stated default.
CPU_TDP_TABLE: dict[str, tuple[float, int]] = {
    "EPYC 9654": (360.0, 192),
    "EPYC 9554": (360.0, 128),
    "EPYC 9454": (290.0, 96),
    "EPYC 9354": (280.0, 64),
    "EPYC 7763": (280.0, 128),
    "EPYC 7742": (225.0, 128),
    "EPYC 7543": (225.0, 64),
    "Platinum 8480": (350.0, 112),
    "Platinum 8380": (270.0, 80),
    "Platinum 8375C": (300.0, 64),
    "Platinum 8259CL": (210.0, 48),
    "Gold 6348": (235.0, 56),
    "Gold 6248": (150.0, 40),
    "i9-13900K": (125.0, 32),
    "i9-12900K": (125.0, 24),
    "i7-12700K": (125.0, 20),
    "Ryzen 9 7950X": (170.0, 32),
    "Ryzen 9 5950X": (105.0, 32),
    "Ryzen 7 5800X": (105.0, 16),
}

# CodeCarbon's fallback for a CPU it does not know.
DEFAULT_WATTS_PER_THREAD = 4.0


def lookup_tdp(model: str) -> tuple[str, float, int] | None:
    """(table key, TDP watts, threads) for a CPU model string, or None when not in the table."""
    for key, (tdp, threads) in CPU_TDP_TABLE.items():
        if re.search(r"(?<![\w-])" + re.escape(key) + r"(?!\w)", model, re.IGNORECASE):
            return key, tdp, threads
    return None


class EstimateMeter(Meter):
    """Not a measurement: this process's CPU time in the window times a per-thread power.

    ``time.process_time()`` counts the CPU time of every thread of the process (onnxruntime's
    intra-op pool included) but not child processes, the GPU, DRAM, idle power or other
    processes. Per-thread watts: ``cpu_watts / threads`` when the user gives the package power,
    else TDP / threads from ``CPU_TDP_TABLE``, else 4 W per hardware thread. Under this model
    energy is proportional to CPU time, so it ranks variants exactly as CPU time does.
    """

    name = "estimated"

    def __init__(
        self,
        cpu_watts: float | None = None,
        threads: int | None = None,
        *,
        cpu_model: str | None = None,
    ) -> None:
        if threads is not None and threads < 1:
            raise ValueError("threads must be >= 1")
        self.cpu_model = cpu_model if cpu_model is not None else _device.cpu_model()
        if cpu_watts is not None:
            if not cpu_watts > 0:
                raise ValueError("cpu_watts must be > 0")
            # Per-package watts: spread over the hardware threads of one package as seen here.
            n = threads or max(1, (os.cpu_count() or 1) // _device.cpu_sockets())
            self.watts_per_thread = cpu_watts / n
            self.source = f"{cpu_watts:g} W per package given / {n} threads"
        elif (hit := lookup_tdp(self.cpu_model)) is not None:
            key, tdp, table_threads = hit
            n = threads or table_threads
            self.watts_per_thread = tdp / n
            self.source = f"TDP {tdp:g} W / {n} threads from table for '{key}'"
        else:
            self.watts_per_thread = DEFAULT_WATTS_PER_THREAD
            self.source = (
                f"default {DEFAULT_WATTS_PER_THREAD:g} W per hardware thread: "
                f"'{self.cpu_model}' is not in the TDP table"
            )
            log.info("energy estimate uses %s", self.source)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measures": "nothing: estimated from this process's CPU time",
            "formula": "joules = cpu_time_s * watts_per_thread",
            "watts_per_thread": self.watts_per_thread,
            "source": self.source,
            "cpu_model": self.cpu_model,
            "excludes": "GPU, DRAM, idle and uncore power, child and other processes",
            "note": "energy here is a function of CPU time: it ranks variants as CPU time does",
            "summary": (
                f"estimated: cpu_time_s × {self.watts_per_thread:.3g} W/thread ({self.source})"
            ),
        }

    def begin(self) -> tuple[float, float]:
        return time.process_time(), time.perf_counter()

    def end(self, token: tuple[float, float]) -> EnergyReading:
        cpu1, t1 = time.process_time(), time.perf_counter()
        cpu0, t0 = token
        cpu = cpu1 - cpu0
        seconds = t1 - t0
        return EnergyReading(
            joules=cpu * self.watts_per_thread,
            seconds=seconds,
            method=self.name,
            details={
                "cpu_time_s": cpu,
                "watts_per_thread": self.watts_per_thread,
                "busy_threads": cpu / seconds if seconds > 0 else None,
            },
        )


# --- Selection ------------------------------------------------------------------------------


def _parse_device(device: str) -> tuple[str, int]:
    kind, _, idx = device.strip().lower().partition(":")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', not {device!r}")
    if not idx:
        return kind, 0
    if not idx.isdigit():
        raise ValueError(f"bad device index in {device!r}")
    return kind, int(idx)


def _nvml_index(cuda_index: int) -> int | str:
    """NVML device for a CUDA index: CUDA_VISIBLE_DEVICES renumbers the GPUs CUDA sees."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return cuda_index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if cuda_index >= len(entries):
        raise MeterUnavailable(
            f"cuda:{cuda_index} is not visible (CUDA_VISIBLE_DEVICES={visible!r})"
        )
    e = entries[cuda_index]
    return int(e) if e.isdigit() else e  # an index or a GPU-... UUID


def get_meter(
    kind: str = "auto",
    device: str = "cpu",
    cpu_watts: float | None = None,
    *,
    rapl_root: str | os.PathLike[str] = "/sys/class/powercap",
) -> Meter:
    """The meter to use: ``auto`` takes NVML for a CUDA device, else RAPL if readable, else the
    estimate. An explicitly requested meter that cannot run raises ``MeterUnavailable``."""
    k = kind.strip().lower()
    k = "estimate" if k == "estimated" else k
    if k not in ("auto", "nvml", "rapl", "estimate"):
        raise ValueError(f"meter kind must be auto, nvml, rapl or estimate, not {kind!r}")
    dev, idx = _parse_device(device)
    if k == "nvml":
        if dev != "cuda":
            raise MeterUnavailable(f"nvml measures an NVIDIA GPU, but the device is {device!r}")
        return NvmlMeter(_nvml_index(idx))
    if k == "rapl":
        return RaplMeter(rapl_root)
    if k == "estimate":
        return EstimateMeter(cpu_watts)
    if dev == "cuda":
        try:
            return NvmlMeter(_nvml_index(idx))
        except MeterUnavailable as e:
            log.warning("no GPU energy meter (%s); the CPU-side meter will not see the GPU", e)
    try:
        meter = RaplMeter(rapl_root)
    except MeterUnavailable as e:
        log.info("RAPL unavailable (%s); energy will be estimated from CPU time", e)
        return EstimateMeter(cpu_watts)
    if cpu_watts is not None:
        log.info("cpu_watts=%g ignored: RAPL measures the package", cpu_watts)
    return meter
