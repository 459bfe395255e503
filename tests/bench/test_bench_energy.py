"""Energy meters: RAPL on a temporary powercap tree, the CPU-time estimate, NVML with a fake
pynvml, and get_meter's choice."""

from __future__ import annotations

import builtins
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from lepton_compile.bench import device as device_mod
from lepton_compile.bench import energy
from lepton_compile.bench.energy import (
    EstimateMeter,
    MeterUnavailable,
    NvmlMeter,
    RaplMeter,
    get_meter,
    lookup_tdp,
)

MAX_UJ = 262_143_328_850


# --- RAPL -------------------------------------------------------------------------------------


def zone(root: Path, name: str, domain: str, uj: int, max_uj: int = MAX_UJ) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "name").write_text(domain + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return d


def set_uj(d: Path, uj: int) -> None:
    (d / "energy_uj").write_text(f"{uj}\n")


def test_rapl_sums_package_and_dram_only(tmp_path: Path) -> None:
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    core = zone(tmp_path, "intel-rapl:0:0", "core", 500_000)
    dram = zone(tmp_path, "intel-rapl:0:1", "dram", 100)
    psys = zone(tmp_path, "intel-rapl:1", "psys", 9_000_000)
    (tmp_path / "intel-rapl").mkdir()  # the control-type folder has no energy_uj
    meter = RaplMeter(tmp_path)
    assert [d.name for d in meter.domains] == ["package-0", "dram"]
    assert {s["name"] for s in meter.skipped} == {"core", "psys"}

    tok = meter.begin()
    set_uj(pkg, 3_500_000)  # +2.5 J
    set_uj(dram, 600_100)  # +0.6 J
    set_uj(core, 2_500_000)  # inside package: must not be added again
    set_uj(psys, 99_000_000)  # contains the package: must not be added
    r = meter.end(tok)
    assert r.method == "rapl"
    assert r.joules == pytest.approx(3.1)
    assert r.details["domains_j"] == {
        "package-0 (intel-rapl:0)": pytest.approx(2.5),
        "dram (intel-rapl:0:1)": pytest.approx(0.6),
    }
    d = meter.describe()
    assert d["name"] == "rapl" and len(d["domains"]) == 2 and d["summary"].startswith("rapl:")


def test_rapl_two_sockets_and_nested_layout_counted_once(tmp_path: Path) -> None:
    p0 = zone(tmp_path, "intel-rapl:0", "package-0", 0)
    p1 = zone(tmp_path, "intel-rapl:1", "package-1", 0)
    # The same dram zone both flat and nested (as a copied sysfs tree may show it).
    d_nested = zone(p0, "intel-rapl:0:0", "dram", 0)
    zone(tmp_path, "intel-rapl:0:0", "dram", 0)
    # The MMIO interface is a second view of package-0's counter.
    mmio = zone(tmp_path, "intel-rapl-mmio:0", "package-0", 0)
    meter = RaplMeter(tmp_path)
    assert [(d.zone, d.name) for d in meter.domains] == [
        ("intel-rapl:0", "package-0"),
        ("intel-rapl:0:0", "dram"),
        ("intel-rapl:1", "package-1"),
    ]
    tok = meter.begin()
    set_uj(p0, 1_000_000)
    set_uj(p1, 2_000_000)
    set_uj(tmp_path / "intel-rapl:0:0", 250_000)
    set_uj(d_nested, 250_000)
    set_uj(mmio, 1_000_000)
    assert meter.end(tok).joules == pytest.approx(3.25)


def test_rapl_wraparound(tmp_path: Path) -> None:
    pkg = zone(tmp_path, "intel-rapl:0", "package-0", 999_900, max_uj=1_000_000)
    meter = RaplMeter(tmp_path)
    tok = meter.begin()
    set_uj(pkg, 50)
    r = meter.end(tok)
    assert r.joules == pytest.approx(150e-6)
    assert r.details["wrapped"] == ["intel-rapl:0"]


def test_rapl_permission_error_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    zone(tmp_path, "intel-rapl:0", "package-0", 1)
    real_open = builtins.open

    def guarded_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        # Tests run as root, where chmod 000 does not stop reads: simulate the kernel's refusal.
        if str(file).endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    with pytest.raises(MeterUnavailable) as exc:
        RaplMeter(tmp_path)
    msg = str(exc.value)
    assert "\n" not in msg
    assert "root" in msg and "chmod a+r" in msg and "energy_uj" in msg


def test_rapl_absent(tmp_path: Path) -> None:
    with pytest.raises(MeterUnavailable, match="no RAPL package zone"):
        RaplMeter(tmp_path / "missing")
    zone(tmp_path, "intel-rapl:0", "psys", 1)  # no package zone at all
    with pytest.raises(MeterUnavailable):
        RaplMeter(tmp_path)


# --- Estimate ---------------------------------------------------------------------------------


def fake_process_time(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    it = iter(values)
    monkeypatch.setattr(time, "process_time", lambda: next(it))


def test_estimate_from_table(monkeypatch: pytest.MonkeyPatch) -> None:
    m = EstimateMeter(cpu_model="AMD EPYC 7742 64-Core Processor")
    assert m.watts_per_thread == pytest.approx(225 / 128)
    fake_process_time(monkeypatch, [10.0, 12.5])
    r = m.end(m.begin())
    assert r.method == "estimated"
    assert r.joules == pytest.approx(2.5 * 225 / 128)
    assert r.details["cpu_time_s"] == pytest.approx(2.5)
    d = m.describe()
    assert d["name"] == "estimated"
    assert "TDP 225 W / 128 threads from table for 'EPYC 7742'" in d["summary"]
    assert d["summary"].startswith("estimated: cpu_time_s")


def test_estimate_default_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    m = EstimateMeter(cpu_model="Mystery CPU 3000")
    assert m.watts_per_thread == energy.DEFAULT_WATTS_PER_THREAD == 4.0
    assert "default 4 W per hardware thread" in m.describe()["summary"]
    fake_process_time(monkeypatch, [1.0, 1.25])
    assert m.end(m.begin()).joules == pytest.approx(1.0)


def test_estimate_user_watts_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    m = EstimateMeter(cpu_watts=200.0, threads=50, cpu_model="AMD EPYC 7742")
    assert m.watts_per_thread == pytest.approx(4.0)
    assert "200 W per package given / 50 threads" in m.describe()["source"]
    t = EstimateMeter(threads=64, cpu_model="AMD EPYC 7742")  # table TDP over given threads
    assert t.watts_per_thread == pytest.approx(225 / 64)
    with pytest.raises(ValueError):
        EstimateMeter(cpu_watts=0)


def test_estimate_reads_cpu_model_from_cpuinfo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz\n"
        "physical id\t: 0\n\nprocessor\t: 1\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8380 CPU @ 2.30GHz\nphysical id\t: 0\n"
    )
    monkeypatch.setattr(device_mod, "_CPUINFO", info)
    m = EstimateMeter()
    assert m.cpu_model.startswith("Intel(R) Xeon(R) Platinum 8380")
    assert m.watts_per_thread == pytest.approx(270 / 80)


def test_tdp_lookup_whole_words() -> None:
    assert lookup_tdp("13th Gen Intel(R) Core(TM) i9-13900K") == ("i9-13900K", 125.0, 32)
    assert lookup_tdp("13th Gen Intel(R) Core(TM) i9-13900KS") is None
    assert lookup_tdp("AMD EPYC 77420") is None
    assert lookup_tdp("Intel(R) Xeon(R) Platinum 8480+") is not None


# --- NVML with a fake pynvml ------------------------------------------------------------------


def fake_pynvml(
    energy_mj: list[int] | None = None,
    power_mw: float = 150_000.0,
    count: int = 1,
) -> types.ModuleType:
    """A pynvml stand-in: ``energy_mj`` None means the board has no energy counter."""
    m = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotSupported(NVMLError):  # noqa: N801 - pynvml's own naming
        pass

    m.NVMLError = NVMLError  # type: ignore[attr-defined]
    m.NVMLError_NotSupported = NVMLError_NotSupported  # type: ignore[attr-defined]
    m.calls = {"init": 0, "shutdown": 0}  # type: ignore[attr-defined]
    values = iter(energy_mj or [])

    def init() -> None:
        m.calls["init"] += 1  # type: ignore[attr-defined]

    def shutdown() -> None:
        m.calls["shutdown"] += 1  # type: ignore[attr-defined]

    def total_energy(h: Any) -> int:
        if energy_mj is None:
            raise NVMLError_NotSupported("Not Supported")
        return next(values)

    m.nvmlInit = init  # type: ignore[attr-defined]
    m.nvmlShutdown = shutdown  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: count  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByUUID = lambda u: ("handle", u)  # type: ignore[attr-defined]
    m.nvmlDeviceGetName = lambda h: b"NVIDIA H100 80GB HBM3"  # type: ignore[attr-defined]
    m.nvmlDeviceGetTotalEnergyConsumption = total_energy  # type: ignore[attr-defined]
    m.nvmlDeviceGetPowerUsage = lambda h: power_mw  # type: ignore[attr-defined]
    return m


def test_nvml_counter_deltas_to_joules(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = fake_pynvml(energy_mj=[1_000, 5_000, 7_500])  # support check, begin, end
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = NvmlMeter(0, probe_timeout_s=0)
    r = m.end(m.begin())
    assert r.method == "nvml"
    assert r.joules == pytest.approx(2.5)
    assert m.resolution == 1e-3
    assert m.update_period_s == 0.1 and m.update_period_assumed  # not probed: typical assumed
    d = m.describe()
    assert d["gpu"] == "NVIDIA H100 80GB HBM3" and d["source"].startswith("nvmlDeviceGetTotal")
    m.close()
    assert fake.calls == {"init": 1, "shutdown": 1}  # type: ignore[attr-defined]


def test_nvml_probes_update_period(monkeypatch: pytest.MonkeyPatch) -> None:
    def steps() -> Any:  # the counter moves every third read, like a slow refresh
        i = 0
        while True:
            yield 1000 * (i // 3)
            i += 1

    fake = fake_pynvml(energy_mj=[])
    gen = steps()
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: next(gen)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    m = NvmlMeter(0, probe_timeout_s=5.0)
    assert m.update_period_s is not None and m.update_period_s > 0
    assert not m.update_period_assumed
    r = m.end(m.begin())
    assert "update_periods_in_window" in r.details
    m.close()


def test_nvml_power_polling_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy_mj=None, power_mw=150_000))
    m = NvmlMeter(0, probe_timeout_s=0, poll_interval_s=0.001)
    try:
        assert m.source.startswith("nvmlDeviceGetPowerUsage")
        assert "fallback_reason" in m.describe()
        tok = m.begin()
        time.sleep(0.01)
        r = m.end(tok)
    finally:
        m.close()
    assert r.method == "nvml"
    # Constant 150 W integrates to exactly 150 W x the window, whatever the poll timing.
    assert r.joules == pytest.approx(150.0 * r.seconds, rel=1e-9)


def test_nvml_unavailable_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    with pytest.raises(MeterUnavailable, match="nvidia-ml-py"):
        NvmlMeter()
    fake = fake_pynvml(energy_mj=[0])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    with pytest.raises(MeterUnavailable, match="out of range"):
        NvmlMeter(3, probe_timeout_s=0)
    assert fake.calls["shutdown"] == 1  # type: ignore[attr-defined]

    def no_driver() -> None:
        raise fake.NVMLError("Driver Not Loaded")  # type: ignore[attr-defined]

    fake.nvmlInit = no_driver  # type: ignore[attr-defined]
    with pytest.raises(MeterUnavailable, match="NVML did not start"):
        NvmlMeter(0, probe_timeout_s=0)


# --- get_meter --------------------------------------------------------------------------------


def test_get_meter_auto_cpu(tmp_path: Path) -> None:
    m = get_meter("auto", "cpu", rapl_root=tmp_path)
    assert isinstance(m, EstimateMeter) and m.name == "estimated"
    zone(tmp_path, "intel-rapl:0", "package-0", 0)
    assert isinstance(get_meter(rapl_root=tmp_path), RaplMeter)
    assert isinstance(get_meter("estimate", rapl_root=tmp_path), EstimateMeter)
    assert isinstance(get_meter("estimated", rapl_root=tmp_path), EstimateMeter)


def test_get_meter_passes_cpu_watts(tmp_path: Path) -> None:
    m = get_meter("estimate", cpu_watts=1000.0, rapl_root=tmp_path)
    assert isinstance(m, EstimateMeter) and "1000 W per package" in m.source


def test_get_meter_explicit_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(MeterUnavailable) as exc:
        get_meter("rapl", rapl_root=tmp_path)
    assert isinstance(exc.value, ValueError) and "\n" not in str(exc.value)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(MeterUnavailable, match="pip install nvidia-ml-py"):
        get_meter("nvml", "cuda")
    with pytest.raises(MeterUnavailable, match="device is 'cpu'"):
        get_meter("nvml", "cpu")
    with pytest.raises(ValueError, match="meter kind"):
        get_meter("joulemeter")
    with pytest.raises(ValueError, match="device"):
        get_meter("auto", "tpu")


def test_get_meter_auto_cuda(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(energy_mj=[0] * 10, count=3))
    monkeypatch.setattr(energy, "_probe_update_period", lambda read, timeout_s: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    m = get_meter("auto", "cuda", rapl_root=tmp_path)
    assert isinstance(m, NvmlMeter) and m.device_index == 0
    # CUDA renumbers the visible GPUs: cuda:0 is NVML's GPU 2 here.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert get_meter("nvml", "cuda:0").device_index == 2  # type: ignore[attr-defined]
    assert get_meter("nvml", "cuda:1").device_index == 0  # type: ignore[attr-defined]
    with pytest.raises(MeterUnavailable, match="not visible"):
        get_meter("nvml", "cuda:2")
    # Without pynvml, a CUDA device falls back to the CPU-side meters.
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert isinstance(get_meter("auto", "cuda", rapl_root=tmp_path), EstimateMeter)
