"""Records the machine a measurement ran on (CPU, OS, package versions, GPUs) and keys it."""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "PACKAGES",
    "cgroup_cpu_limit",
    "cpu_model",
    "cpu_sockets",
    "device_record",
    "gpu_records",
    "package_versions",
    "record_key",
    "threads_available",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

# Distributions whose versions change figures. onnxruntime-gpu installs the same `onnxruntime`
# module as the CPU wheel, so both names are asked for.
PACKAGES: tuple[str, ...] = (
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "onnx-ir",
    "onnxscript",
    "torch",
    "triton",
    "nvidia-ml-py",
)

# The subset of PACKAGES that runs the model, so that a different version may time differently.
_RUNTIME_PACKAGES = ("numpy", "onnxruntime", "onnxruntime-gpu", "torch", "triton")

_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo_fields(key: str) -> list[str]:
    try:
        text = _CPUINFO.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            out.append(value.strip())
    return out


def cpu_model() -> str:
    """CPU model string ("AMD EPYC 9554 64-Core Processor"), or "unknown"."""
    # x86 says "model name"; some ARM kernels only give "Model" (board) or nothing useful.
    for key in ("model name", "Model", "Hardware"):
        values = _cpuinfo_fields(key)
        if values and values[0]:
            return values[0]
    return platform.processor() or "unknown"


def cpu_sockets() -> int:
    """Number of CPU packages the OS sees (distinct "physical id"), at least 1."""
    return max(1, len(set(_cpuinfo_fields("physical id"))))


def threads_available() -> int:
    """Logical CPUs this process may run on (affinity mask), which may be fewer than exist."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPU quota of this container in CPUs (cgroup v2 cpu.max), None when unlimited or unknown.

    A container limited to 2 CPUs on a 64-thread host sees 64 CPUs everywhere else, and times
    differently from an unlimited one, so the quota belongs in the record.
    """
    try:
        quota, _, period = (root / "cpu.max").read_text().strip().partition(" ")
    except OSError:
        return None
    if quota == "max" or not period:
        return None
    try:
        return int(quota) / int(period)
    except ValueError:
        return None


def _cpufreq_governor() -> str | None:
    try:
        return (
            Path("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").read_text().strip()
            or None
        )
    except OSError:
        return None


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions from distribution metadata (None when absent), importing nothing."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


# The import packages whose code makes lepton-compile's results: in an editable install the
# subpackages live in their own folders (setuptools package-dir), so each is looked up.
_OWN_PACKAGES = (
    "lepton_compile",
    "lepton_compile.passes",
    "lepton_compile.kernels",
    "lepton_compile.bench",
)


@functools.lru_cache(maxsize=1)
def source_fingerprint(roots: tuple[str, ...] | None = None) -> str:
    """sha256 (hex, 16 digits) of lepton-compile's own Python sources, path and bytes.

    A version string does not change when a pass is edited; this does, so results cached by
    one state of the code are never handed back by another. ``roots`` (folders) is for tests;
    by default the folders of the installed packages are read, importing nothing.
    """
    if roots is None:
        found = []
        for name in _OWN_PACKAGES:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError):
                spec = None
            found += list(spec.submodule_search_locations or []) if spec else []
        roots = tuple(found)
    files: dict[Path, Path] = {}
    for root in roots:
        base = Path(root).resolve()
        for f in base.rglob("*.py"):
            files.setdefault(f.resolve(), base)
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f"{files[f].name}/{f.relative_to(files[f])}".encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def own_version() -> str:
    """lepton-compile's version with its source fingerprint: ``0.1.0+src.<16 hex>``."""
    version = package_versions(["lepton-compile"])["lepton-compile"] or "unknown"
    return f"{version}+src.{source_fingerprint()}"


def _try(fn: Callable[..., T], *args: Any) -> T | None:
    # Many NVML queries are unsupported on some boards or need privileges: a missing field is
    # recorded as None rather than losing the whole record.
    try:
        return fn(*args)
    except Exception as e:  # NVML raises many distinct error classes
        log.debug("NVML query %s failed: %s", getattr(fn, "__name__", fn), e)
        return None


def _text(x: Any) -> Any:
    # Older pynvml releases return bytes for names and versions.
    return x.decode(errors="replace") if isinstance(x, bytes) else x


def gpu_records() -> list[dict[str, Any]] | None:
    """One dict per NVIDIA GPU via pynvml; None when pynvml or the driver is not there."""
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
        log.debug("NVML unavailable: %s", e)
        return None
    try:
        driver = _text(_try(pynvml.nvmlSystemGetDriverVersion))
        count = _try(pynvml.nvmlDeviceGetCount) or 0
        gpus = []
        for i in range(count):
            h = _try(pynvml.nvmlDeviceGetHandleByIndex, i)
            if h is None:
                continue
            mem = _try(pynvml.nvmlDeviceGetMemoryInfo, h)
            limit_mw = _try(pynvml.nvmlDeviceGetEnforcedPowerLimit, h)
            cc = _try(pynvml.nvmlDeviceGetCudaComputeCapability, h)
            sm = getattr(pynvml, "NVML_CLOCK_SM", 1)
            memclk = getattr(pynvml, "NVML_CLOCK_MEM", 2)
            gpus.append(
                {
                    "index": i,
                    "name": _text(_try(pynvml.nvmlDeviceGetName, h)),
                    "uuid": _text(_try(pynvml.nvmlDeviceGetUUID, h)),
                    "driver": driver,
                    "compute_capability": f"{cc[0]}.{cc[1]}" if cc else None,
                    "memory_total_bytes": getattr(mem, "total", None),
                    "power_limit_w": limit_mw / 1000.0 if limit_mw is not None else None,
                    "clocks_mhz": {
                        "sm": _try(pynvml.nvmlDeviceGetClockInfo, h, sm),
                        "mem": _try(pynvml.nvmlDeviceGetClockInfo, h, memclk),
                        "sm_max": _try(pynvml.nvmlDeviceGetMaxClockInfo, h, sm),
                        "mem_max": _try(pynvml.nvmlDeviceGetMaxClockInfo, h, memclk),
                    },
                    "temperature_c": _try(
                        pynvml.nvmlDeviceGetTemperature,
                        h,
                        getattr(pynvml, "NVML_TEMPERATURE_GPU", 0),
                    ),
                }
            )
        return gpus
    finally:
        _try(pynvml.nvmlShutdown)


def device_record(providers: list[str] | None = None) -> dict[str, Any]:
    """Everything about this machine that a reader needs to trust or compare a figure.

    ``providers``: the onnxruntime execution providers the figures were taken with (the caller
    knows them; onnxruntime is not imported here for it).
    """
    return {
        "cpu": {
            "model": cpu_model(),
            "sockets": cpu_sockets(),
            "logical_cores": os.cpu_count(),
            "threads_available": threads_available(),
            "cgroup_cpu_limit": cgroup_cpu_limit(),
            "governor": _cpufreq_governor(),
        },
        "os": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
        },
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
        },
        "packages": package_versions(),
        "providers": list(providers) if providers is not None else None,
        "gpus": gpu_records(),
    }


def record_key(rec: dict[str, Any]) -> str:
    """Short hash of the fields that make two figures comparable (same key: compare them).

    In: CPU model, sockets, threads available, cgroup quota, frequency governor, OS and
    architecture, Python major.minor, runtime package versions, providers, and each GPU's name,
    driver, memory and power limit. Out: anything that drifts between runs of the same setup
    (clocks, temperature, kernel patch release, paths).
    """
    cpu = rec.get("cpu") or {}
    osr = rec.get("os") or {}
    py = (rec.get("python") or {}).get("version") or ""
    pkgs = rec.get("packages") or {}
    gpus = rec.get("gpus") or []
    key = {
        "cpu": [
            cpu.get("model"),
            cpu.get("sockets"),
            cpu.get("threads_available"),
            cpu.get("cgroup_cpu_limit"),
            cpu.get("governor"),
        ],
        "os": [osr.get("system"), osr.get("machine")],
        "python": ".".join(py.split(".")[:2]),
        "packages": {k: pkgs.get(k) for k in _RUNTIME_PACKAGES},
        "providers": rec.get("providers"),
        "gpus": [
            [g.get("name"), g.get("driver"), g.get("memory_total_bytes"), g.get("power_limit_w")]
            for g in gpus
        ],
    }
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
