"""The CI gate: exit codes on regression, noise, improvement and bad report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lepton_compile.cli import main
from lepton_compile.gate import parse_fraction
from lepton_compile.report import SCHEMA


def report(mean_ms: float, ci_ms: float, energy: float, e_ci: float, drop: float = 0.0) -> dict:
    return {
        "schema": SCHEMA,
        "model": {"sha256": "abc", "path": "m.onnx"},
        "device": {"key": "dev1"},
        "best": {"id": "fused-ort-cpu", "reason": "r"},
        "variants": [
            {
                "id": "fused-ort-cpu",
                "status": "ok",
                "latency_ms": {"mean": mean_ms, "ci95": ci_ms},
                "energy_j": {"per_inference": energy, "ci95": e_ci, "method": "estimated"},
                "accuracy": {"drop": drop, "passed": True},
            }
        ],
    }


def write(tmp_path: Path, name: str, rep: dict) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(rep))
    return p


def gate(tmp_path: Path, base: dict, cur: dict, *extra: str) -> int:
    b = write(tmp_path, "base.json", base)
    c = write(tmp_path, "cur.json", cur)
    return main(["gate", str(b), str(c), *extra])


def test_same_numbers_pass(tmp_path: Path, capsys):
    assert gate(tmp_path, report(10, 0.1, 1.0, 0.01), report(10, 0.1, 1.0, 0.01)) == 0
    assert "PASSED" in capsys.readouterr().out


def test_latency_regression_beyond_noise_fails(tmp_path: Path, capsys):
    code = gate(tmp_path, report(10, 0.1, 1.0, 0.01), report(12, 0.1, 1.0, 0.01))
    out = capsys.readouterr().out
    assert code == 1 and "regression" in out and "| latency_ms (mean) |" in out


def test_energy_regression_fails(tmp_path: Path):
    assert gate(tmp_path, report(10, 0.1, 1.0, 0.01), report(10, 0.1, 1.2, 0.01)) == 1


def test_large_change_within_noise_passes(tmp_path: Path, capsys):
    code = gate(tmp_path, report(10, 3.0, 1.0, 0.3), report(12, 3.0, 1.2, 0.3))
    assert code == 0 and "within noise" in capsys.readouterr().out


def test_threshold_is_respected(tmp_path: Path):
    base, cur = report(10, 0.01, 1.0, 0.001), report(10.4, 0.01, 1.0, 0.001)
    assert gate(tmp_path, base, cur) == 0  # +4% < 5%
    assert gate(tmp_path, base, cur, "--max-latency-regression", "3%") == 1


def test_accuracy_drop_regression(tmp_path: Path):
    base, cur = report(10, 0.1, 1, 0.01, drop=0.001), report(10, 0.1, 1, 0.01, drop=0.05)
    assert gate(tmp_path, base, cur) == 1
    assert gate(tmp_path, base, cur, "--max-accuracy-drop", "0.1") == 0


def test_improvement_passes(tmp_path: Path):
    assert gate(tmp_path, report(10, 0.1, 1.0, 0.01), report(5, 0.1, 0.5, 0.01)) == 0


def test_bad_report_files_exit_2(tmp_path: Path, capsys):
    good = write(tmp_path, "good.json", report(10, 0.1, 1, 0.01))
    notjson = tmp_path / "x.json"
    notjson.write_text("{nope")
    other = write(tmp_path, "other.json", {"schema": "something/else"})
    for bad in (notjson, other, tmp_path / "missing.json"):
        assert main(["gate", str(good), str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lepton-compile: error:") and "Traceback" not in err
    assert main(["gate", str(good), str(good), "--max-latency-regression", "abc"]) == 2


@pytest.mark.parametrize("text, val", [("5%", 0.05), ("0.05", 0.05), (0.2, 0.2)])
def test_parse_fraction(text, val):
    assert parse_fraction(text, "x") == pytest.approx(val)
