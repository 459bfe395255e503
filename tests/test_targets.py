"""Targets and meters per device: the original is measured on every device, with its meter."""

from __future__ import annotations

import pytest

from lepton_compile.errors import InputError
from lepton_compile.targets import meter_for, plan_targets

# A GPU host with torch on CUDA but the CPU build of onnxruntime.
GPU_HOST_CPU_ORT = {"ort": ["cpu"], "lepton": ["cpu", "cuda"]}
CPU_HOST = {"ort": ["cpu"], "lepton": ["cpu"]}


def test_gpu_host_without_onnxruntime_gpu_keeps_an_original_per_device():
    plan = plan_targets(GPU_HOST_CPU_ORT, ["ort", "lepton"], "auto", "auto")
    assert plan.primary == "cuda"
    # The baseline (first target) runs on the primary device; ort stays on the cpu.
    assert plan.targets == (("lepton", "cuda"), ("ort", "cpu"))
    assert plan.meters == {"cuda": "auto", "cpu": "auto"}
    assert plan.devices == ("cuda", "cpu")
    assert any("ort" in n and "not a candidate" in n for n in plan.notes)


def test_cpu_host_measures_everything_on_the_cpu():
    plan = plan_targets(CPU_HOST, ["ort", "lepton"], "auto", "auto")
    assert plan.primary == "cpu"
    assert plan.targets == (("ort", "cpu"), ("lepton", "cpu"))
    assert plan.meters == {"cpu": "auto"}
    assert plan.notes == ()


def test_nvml_meter_leaves_out_what_it_cannot_see():
    plan = plan_targets(GPU_HOST_CPU_ORT, ["ort", "lepton"], "auto", "nvml")
    assert plan.targets == (("lepton", "cuda"),)
    assert plan.meters == {"cuda": "nvml"}
    assert any("--meter nvml cannot measure the cpu" in n for n in plan.notes)


def test_nvml_meter_on_a_cpu_run_is_an_input_error():
    with pytest.raises(InputError, match="cannot measure the cpu"):
        plan_targets(CPU_HOST, ["ort"], "auto", "nvml")


def test_explicit_device_must_be_usable_by_every_backend():
    with pytest.raises(InputError, match="backend 'ort' cannot use device 'cuda'"):
        plan_targets(GPU_HOST_CPU_ORT, ["ort", "lepton"], "cuda", "auto")
    plan = plan_targets(GPU_HOST_CPU_ORT, ["lepton"], "cuda", "auto")
    assert plan.targets == (("lepton", "cuda"),)


def test_meter_for_each_device():
    assert meter_for("auto", "cuda") == "auto"
    assert meter_for("nvml", "cpu") is None
    assert meter_for("rapl", "cuda") is None
    assert meter_for("estimate", "cpu") == "estimate"


def test_bad_choices_are_input_errors():
    with pytest.raises(InputError):
        plan_targets(CPU_HOST, ["ort"], "tpu", "auto")
    with pytest.raises(InputError):
        plan_targets(CPU_HOST, ["ort"], "auto", "wattmeter")


class _PretendGpuBackend:
    """onnxruntime on the CPU that calls its device "cuda": a GPU host's device layout, here."""

    name = "pretend-gpu"

    def devices(self) -> list[str]:
        return ["cuda"]

    def load(self, path, device="cpu", options=None):  # type: ignore[no-untyped-def]
        from lepton_compile.runtime.ort import OrtBackend

        return OrtBackend().load(path, device="cpu", options=options)


def test_engine_measures_the_original_on_every_device(tinycnn_path, monkeypatch):
    """ort on the cpu beside a 'cuda' backend: both originals are measured, each with the
    meter of its own device, and the pick is made among the primary device's variants."""
    import lepton_compile
    from lepton_compile import runtime

    monkeypatch.setitem(runtime.BACKENDS, "pretend-gpu", _PretendGpuBackend)
    result = lepton_compile.compile(
        tinycnn_path,
        recipes=["original", "fused"],
        backends=["ort", "pretend-gpu"],
        quick=True,
        cache=False,
        isolate=False,
    )
    by_id = {v.id: v for v in result.variants}
    assert result.baseline.id == "original-pretend-gpu-cuda"
    for vid in ("original-pretend-gpu-cuda", "original-ort-cpu", "fused-ort-cpu"):
        assert by_id[vid].status in ("ok", "dropped"), (vid, by_id[vid].reason)
        assert by_id[vid].measurement is not None
    assert result.best.device == "cuda"
    assert any("not a candidate for the pick" in n for n in result.report["model"]["notes"])
