"""device_record contents, GPU fields from a fake pynvml, and record_key's notion of sameness."""

from __future__ import annotations

import copy
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from lepton_compile.bench import device as device_mod
from lepton_compile.bench.device import (
    cgroup_cpu_limit,
    cpu_model,
    cpu_sockets,
    device_record,
    gpu_records,
    record_key,
)


def test_device_record_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVML here, whatever is installed
    rec = device_record(["CPUExecutionProvider"])
    assert rec["providers"] == ["CPUExecutionProvider"]
    assert rec["cpu"]["threads_available"] >= 1 and rec["cpu"]["logical_cores"] >= 1
    assert isinstance(rec["cpu"]["model"], str) and rec["cpu"]["model"]
    assert rec["packages"]["numpy"]  # installed in every environment that runs these tests
    assert "torch" in rec["packages"] and "onnxruntime" in rec["packages"]
    assert rec["gpus"] is None
    assert rec["python"]["version"].count(".") == 2
    json.dumps(rec, allow_nan=False)


def test_cpuinfo_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: AMD EPYC 9554 64-Core Processor\nphysical id\t: 0\n\n"
        "processor\t: 1\nmodel name\t: AMD EPYC 9554 64-Core Processor\nphysical id\t: 1\n"
    )
    monkeypatch.setattr(device_mod, "_CPUINFO", info)
    assert cpu_model() == "AMD EPYC 9554 64-Core Processor"
    assert cpu_sockets() == 2


def test_cgroup_cpu_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("200000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2.0
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None


def fake_pynvml() -> types.ModuleType:
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    def unsupported(*_: Any) -> Any:
        raise NVMLError("Not Supported")

    m.NVMLError = NVMLError  # type: ignore[attr-defined]
    m.NVML_CLOCK_SM, m.NVML_CLOCK_MEM, m.NVML_TEMPERATURE_GPU = 1, 2, 0  # type: ignore[attr-defined]
    m.nvmlInit = lambda: None  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    m.nvmlSystemGetDriverVersion = lambda: b"580.65.06"  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: i  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: "NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    m.nvmlDeviceGetUUID = lambda h: "GPU-1234"  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(total=85_520_809_984)  # type: ignore[attr-defined]
    m.nvmlDeviceGetEnforcedPowerLimit = lambda h: 700_000  # type: ignore[attr-defined]
    m.nvmlDeviceGetCudaComputeCapability = lambda h: (9, 0)  # type: ignore[attr-defined]
    m.nvmlDeviceGetClockInfo = lambda h, c: {1: 1980, 2: 2619}[c]  # type: ignore[attr-defined]
    m.nvmlDeviceGetMaxClockInfo = lambda h, c: {1: 1980, 2: 2619}[c]  # type: ignore[attr-defined]
    m.nvmlDeviceGetTemperature = unsupported  # type: ignore[attr-defined]
    return m


def test_gpu_records_with_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    (g,) = gpu_records() or []
    assert g["name"] == "NVIDIA H100 80GB HBM3" and g["driver"] == "580.65.06"
    assert g["power_limit_w"] == 700.0 and g["compute_capability"] == "9.0"
    assert g["clocks_mhz"]["sm"] == 1980
    assert g["temperature_c"] is None  # an unsupported query is recorded as None
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert gpu_records() is None


def test_record_key_ignores_drift_but_not_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    rec = device_record(["CUDAExecutionProvider"])
    key = record_key(rec)
    assert len(key) == 12 and int(key, 16) >= 0
    assert record_key(copy.deepcopy(rec)) == key

    drift = copy.deepcopy(rec)
    drift["gpus"][0]["temperature_c"] = 71
    drift["gpus"][0]["clocks_mhz"]["sm"] = 1410
    drift["os"]["release"] = "6.1.99"
    drift["python"]["executable"] = "/elsewhere/python"
    assert record_key(drift) == key

    for change in (
        lambda r: r.update(providers=["CPUExecutionProvider"]),
        lambda r: r["cpu"].update(model="Other CPU"),
        lambda r: r["cpu"].update(threads_available=1),
        lambda r: r["packages"].update(onnxruntime="0.0.1"),
        lambda r: r["gpus"][0].update(power_limit_w=350.0),
    ):
        other = copy.deepcopy(rec)
        change(other)
        assert record_key(other) != key
