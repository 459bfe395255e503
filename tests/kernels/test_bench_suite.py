"""The GPU kernel benchmark script (benchmarks/kernels.py) parses, lists and runs on CPU.

It can only time on a GPU; here it runs its --dry-run and a --smoke pass (tiny shapes in the
Triton interpreter, every comparison and the JSON writer exercised, no numbers that mean
anything).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "kernels.py"


def _suite():
    spec = importlib.util.spec_from_file_location("bench_suite_kernels", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)  # stdlib imports only at module level
    return mod


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def test_resnet50_conv_inventory():
    convs = _suite().resnet50_convs()
    assert len(convs) == 23  # distinct shapes
    assert sum(n for _, n in convs) == 53  # every conv of ResNet-50
    assert convs[0] == ((3, 224, 64, 7, 2, 3), 1)


def test_cases_cover_the_issue():
    suite = _suite()
    ids = [c.id for c in suite.all_cases(list(suite.FAMILIES), quick=False)]
    assert "gemm/4096^3 plain" in ids and "gemm/4096^3 bias+gelu+res" in ids
    for fam in ("gemm", "int8", "fp8"):
        for batch in (1, 32):
            assert sum(f"{fam}/bert-base b{batch} " in i for i in ids) == 4
    assert sum(i.startswith("conv/resnet50 b1 ") for i in ids) == 23
    assert sum(i.startswith("conv/resnet50 b32 ") for i in ids) == 23


def test_help_and_dry_run():
    assert _run("--help").returncode == 0
    out = _run("--dry-run", "--only", "gemm,conv")
    assert out.returncode == 0, out.stderr
    assert "gemm/4096^3 plain" in out.stdout and "56 cases" in out.stdout
    out = _run("--dry-run")  # every family, the launch overhead first
    assert out.returncode == 0, out.stderr
    firsts = [line.split()[0] for line in out.stdout.splitlines()[:-1]]
    assert firsts[:3] == ["launch/gemm", "launch/conv", "launch/depthwise"]
    assert not any(f.startswith("launch/") for f in firsts[3:])
    bad = _run("--dry-run", "--only", "gemv")
    assert bad.returncode == 2 and "unknown families" in bad.stderr


def test_smoke_run_writes_results(tmp_path: Path):
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    out = tmp_path / "kernels-smoke.json"
    families = "launch,gemm,int8,fp8,conv,depthwise"
    proc = _run("--smoke", "--quick", "--only", families, "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["schema"] == "lepton-compile/bench-kernels/v1"
    assert {"torch", "triton", "name"} <= set(data["device"])
    assert data["settings"]["warmup_ms"] == 25 and data["settings"]["rep_ms"] == 100
    rows = data["rows"]
    assert rows and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert {"ours", "torch"} <= set(r["times"]), r["id"]
        assert r["config"], r["id"]
        # The numbers are from the interpreter, but the outputs must agree.
        assert next(iter(r["max_rel_err"].values())) < 0.1, r["id"]
    assert "gemm: bert-base layer b32" in data["summary"]
    launch = [r for r in rows if r["family"] == "launch"]
    assert [r["params"]["kind"] for r in launch] == ["gemm", "conv", "depthwise"]
    assert rows[:3] == launch
    for r in launch:
        assert set(r["times"]) == {"ours", "torch"}
        assert all(t["us_per_call"] > 0 for t in r["times"].values()), r["id"]
