"""The end-to-end GPU benchmark (benchmarks/lepton_e2e.py) lists its cases and runs on CPU.

It can only measure on a GPU; here it runs --dry-run and a --smoke pass: the tiny BERT-class
encoder at batch 1 in every variant (our kernels in the Triton interpreter where a variant
dispatches), two micro-benchmark cases, and the JSON writer. No number here means anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "lepton_e2e.py"


def _run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_dry_run_lists_every_model_batch_and_variant() -> None:
    out = _run("--dry-run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "54 model cases, 9 micro cases"
    for model in ("resnet50", "detector", "bert"):
        for batch in (1, 32):
            for variant in ("eager-fp32", "compile-fp16", "lepton-fp16-auto", "int8-auto"):
                assert f"{model}/b{batch}/{variant}" in lines
    assert "micro/4096^3" in lines and "micro/bert-base b32 ffn2" in lines
    bad = _run("--dry-run", "--models", "vgg")
    assert bad.returncode == 2 and "unknown models" in bad.stderr


def test_smoke_run_writes_results(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    out = tmp_path / "lepton-e2e-smoke.json"
    proc = _run("--smoke", "--models", "bert", "--batches", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["schema"] == "lepton-compile/bench-lepton-e2e/v1"
    assert {"torch", "triton", "name"} <= set(data["device"])
    rows = {r["variant"]: r for r in data["rows"]}
    assert rows["compile-fp16"]["status"] == "skipped"  # Inductor on a CPU: minutes
    for variant, row in rows.items():
        if variant == "compile-fp16":
            continue
        assert row["status"] == "ok", (variant, row.get("error"))
        assert row["latency_ms"]["p50"] > 0 and row["energy_j"]["method"] == "estimated"
        assert row["fidelity_vs_eager_fp32"]["cosine"] > 0.95, variant
    for variant in ("lepton-fp16-auto", "int8-auto", "fp8-auto"):
        assert rows[variant]["kernel_summary"] == "6 of 6 layers on our kernels"
        assert rows[variant]["kernel_layers"][0]["choice"] == "triton"
    assert rows["int8-torch"]["kernel_choice_counts"] == {"QMatMul": {"torch": 6}}
    summary = data["summary"]["bert/b1"]
    assert summary["lepton-fp16"]["energy_x_vs_eager-fp32"] > 0
    micro = data["micro"]
    assert [m["id"] for m in micro] == ["micro/4096^3", "micro/bert-base b1 qkv"]
    for m in micro:
        assert set(m["times"]) >= {"fp16-cublas", "w8a8", "fp8", "int4", "int_mm", "scaled_mm"}
        assert all("ms_p50" in t for t in m["times"].values()), m["times"]
