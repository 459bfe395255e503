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


def _damaged(how: str) -> str | dict:
    rep = report(10, 0.1, 1.0, 0.01)
    if how == "deep":
        nested = "[" * 100_000 + "]" * 100_000
        return f'{{"schema": "{SCHEMA}", "best": {nested}}}'
    if how == "nan":
        return json.dumps(rep).replace('"mean": 10', '"mean": NaN')
    if how == "best-not-a-variant":
        rep["best"]["id"] = "int8-ort-cpu"
    elif how == "best-missing":
        del rep["best"]
    elif how == "variants-not-a-list":
        rep["variants"] = {"fused-ort-cpu": {}}
    elif how == "latency-not-a-number":
        rep["variants"][0]["latency_ms"]["mean"] = "fast"
    elif how == "energy-not-an-object":
        rep["variants"][0]["energy_j"] = [1.0]
    elif how == "drop-not-a-number":
        rep["variants"][0]["accuracy"]["drop"] = [0.1]
    elif how == "model-missing":
        del rep["model"]
        return rep
    elif how == "device-not-an-object":
        rep["device"] = "cpu"
    return rep


@pytest.mark.parametrize(
    "how",
    [
        "deep",
        "nan",
        "best-not-a-variant",
        "best-missing",
        "variants-not-a-list",
        "latency-not-a-number",
        "energy-not-an-object",
        "drop-not-a-number",
        "device-not-an-object",
    ],
)
def test_damaged_report_is_bad_input(tmp_path: Path, capsys, how: str):
    # Each of these ended in a traceback (RecursionError, StopIteration, KeyError, ...).
    good = write(tmp_path, "good.json", report(10, 0.1, 1.0, 0.01))
    damaged = _damaged(how)
    bad = tmp_path / "bad.json"
    bad.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    for argv in ([str(good), str(bad)], [str(bad), str(good)]):
        assert main(["gate", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"lepton-compile: error: {bad}: not a") and "Traceback" not in err


def test_report_without_model_section_still_compares(tmp_path: Path, capsys):
    good = write(tmp_path, "good.json", report(10, 0.1, 1.0, 0.01))
    bare = write(tmp_path, "bare.json", _damaged("model-missing"))  # type: ignore[arg-type]
    assert main(["gate", str(good), str(bare)]) == 0
    assert "different models" in capsys.readouterr().out


def with_trials(rep: dict, latency: list[float], energy: list[float]) -> dict:
    v = rep["variants"][0]
    v["latency_ms"]["per_trial"] = latency
    v["energy_j"]["per_trial"] = energy
    return rep


def test_per_trial_figures_give_a_ratio_interval(tmp_path: Path, capsys):
    """Overlapping mean CIs, but per-trial figures show a steady 12% slowdown: regression."""
    base = with_trials(report(10, 3.0, 1.0, 0.3), [10.0, 10.2, 9.9, 10.1, 9.8], [1.0] * 5)
    cur = with_trials(report(11.2, 3.0, 1.0, 0.3), [11.2, 11.3, 11.1, 11.2, 11.0], [1.0] * 5)
    assert gate(tmp_path, base, cur) == 1
    out = capsys.readouterr().out
    assert "❌ regression" in out and "Welch t 95% interval" in out
    assert "+11." in out and "[+" in out  # the change with its interval


def test_per_trial_noise_is_not_a_regression(tmp_path: Path):
    base = with_trials(report(10, 0.1, 1.0, 0.01), [8.0, 12.0, 9.0, 11.0, 10.0], [1.0] * 5)
    cur = with_trials(report(11, 0.1, 1.0, 0.01), [13.0, 9.0, 12.0, 10.0, 11.0], [1.0] * 5)
    assert gate(tmp_path, base, cur) == 0


def test_gate_output_never_replaces_a_user_file(tmp_path: Path):
    notes = tmp_path / "notes.md"
    notes.write_text("my notes")
    base = report(10, 0.1, 1.0, 0.01)
    assert gate(tmp_path, base, base, "--output", str(notes)) == 2
    assert notes.read_text() == "my notes"
    assert gate(tmp_path, base, base, "--output", str(tmp_path)) == 2  # a directory
    out = tmp_path / "gate.md"
    assert gate(tmp_path, base, base, "--output", str(out)) == 0
    assert gate(tmp_path, base, base, "--output", str(out)) == 0  # its own earlier output
    assert gate(tmp_path, base, base, "--output", str(notes), "--force") == 0


# --------------------------------------------------------------------------- serving profile


def serving_point(batch: int, latency: list[float], energy: list[float]) -> dict:
    """One (variant, batch) point: latency per batch call, energy per inference."""
    mean = sum(latency) / len(latency)
    e_mean = sum(energy) / len(energy)
    return {
        "batch": batch,
        "status": "ok",
        "latency_ms": {
            "mean": mean,
            "ci95": 0.01 * mean,
            "p99": max(latency),
            "per_trial": latency,
        },
        "energy_j_per_inference": {
            "mean": e_mean,
            "ci95": 0.01 * e_mean,
            "per_trial": energy,
            "method": "estimated",
            "estimated": True,
        },
        "throughput_per_s": batch * 1000.0 / mean,
        "pareto": True,
    }


def with_serving(rep: dict, points: dict[str, dict[int, dict]], pick: tuple[str, int] | None):
    """Serving points by variant id (variants added when missing) and the recommendation."""
    for vid, by_batch in points.items():
        v = next((v for v in rep["variants"] if v["id"] == vid), None)
        if v is None:
            v = json.loads(json.dumps(rep["variants"][0]))
            v["id"] = vid
            rep["variants"].append(v)
        v["serving"] = {str(b): p for b, p in by_batch.items()}
    rec = None
    if pick is not None:
        rec = {"variant": pick[0], "batch": pick[1], "text": f"best: {pick[0]} at batch {pick[1]}"}
    rep["schema_minor"] = 1
    rep["serving"] = {
        "batch_sizes": sorted({b for by_batch in points.values() for b in by_batch}),
        "pinned": None,
        "notes": [],
        "recommendation": rec,
    }
    return rep


STEADY = [40.0, 40.4, 39.8, 40.2, 39.6]
SLOWER = [x * 1.12 for x in STEADY]  # a steady 12% slowdown
ENERGY = [0.040, 0.0402, 0.0399, 0.0401, 0.0398]


def test_gate_compares_the_serving_pick_like_with_like(tmp_path: Path, capsys):
    """The same variant at the same batch in both reports, whatever each report's best."""
    base = with_serving(
        report(10, 0.1, 1.0, 0.01),
        {
            "fused-ort-cpu": {
                1: serving_point(1, [5.0] * 5, [0.3] * 5),
                16: serving_point(16, STEADY, ENERGY),
            },
            # Much slower at batch 16: were the gate comparing any other point, it would pass.
            "int8-ort-cpu": {16: serving_point(16, [x * 3 for x in STEADY], ENERGY)},
        },
        ("fused-ort-cpu", 1),
    )
    base["best"]["id"] = "int8-ort-cpu"
    cur = with_serving(
        report(10, 0.1, 1.0, 0.01),  # same figures at the default batch
        {"fused-ort-cpu": {16: serving_point(16, SLOWER, ENERGY)}},
        ("fused-ort-cpu", 16),
    )
    assert gate(tmp_path, base, cur) == 1
    out = capsys.readouterr().out
    assert "compared like with like: `fused-ort-cpu` at batch 16 in both reports" in out
    lat = next(ln for ln in out.splitlines() if ln.startswith("| latency_ms per batch call"))
    assert "batch 16" in lat and "❌ regression" in lat and "+12." in lat
    en = next(ln for ln in out.splitlines() if ln.startswith("| energy_j per inference"))
    assert "batch 16" in en and "regression" not in en
    assert "| latency_ms (mean) |" not in out and "warning" not in out
    assert "the compared variant's (batch 16) per-trial figures" in out


def test_gate_flags_an_energy_regression_at_the_serving_batch(tmp_path: Path, capsys):
    points = {"fused-ort-cpu": {16: serving_point(16, STEADY, ENERGY)}}
    base = with_serving(report(10, 0.1, 1.0, 0.01), points, ("fused-ort-cpu", 16))
    cur = with_serving(
        report(10, 0.1, 1.0, 0.01),
        {"fused-ort-cpu": {16: serving_point(16, STEADY, [e * 1.2 for e in ENERGY])}},
        ("fused-ort-cpu", 16),
    )
    assert gate(tmp_path, base, cur) == 1
    out = capsys.readouterr().out
    en = next(ln for ln in out.splitlines() if ln.startswith("| energy_j per inference"))
    assert "(mean, batch 16)" in en and "❌ regression" in en and "+20." in en
    # Same figures both sides: passes.
    same = with_serving(report(10, 0.1, 1.0, 0.01), points, ("fused-ort-cpu", 16))
    assert gate(tmp_path, base, same) == 0


def test_gate_warns_and_falls_back_when_the_base_lacks_the_batch(tmp_path: Path, capsys):
    base = with_serving(
        report(10, 0.1, 1.0, 0.01),
        {
            "fused-ort-cpu": {
                1: serving_point(1, STEADY, ENERGY),
                4: serving_point(4, STEADY, ENERGY),
            }
        },
        ("fused-ort-cpu", 4),
    )
    # Far slower at batch 16, but the base has nothing at 16: the default figures decide.
    cur = with_serving(
        report(10, 0.1, 1.0, 0.01),
        {"fused-ort-cpu": {16: serving_point(16, [x * 5 for x in STEADY], ENERGY)}},
        ("fused-ort-cpu", 16),
    )
    assert gate(tmp_path, base, cur) == 0
    out = capsys.readouterr().out
    assert (
        "warning: the base report has no fused-ort-cpu at batch 16: compared at the base's "
        "own pick" in out
    )
    assert "| latency_ms (mean) |" in out and "| energy_j (per inference) |" in out
    assert "like with like" not in out
    # The fallback is today's comparison: a regression of the best variants still fails.
    slower = with_serving(
        report(12, 0.1, 1.0, 0.01),
        {"fused-ort-cpu": {16: serving_point(16, STEADY, ENERGY)}},
        ("fused-ort-cpu", 16),
    )
    assert gate(tmp_path, base, slower) == 1
    # A base point that failed is no point either: the warning says why.
    base["variants"][0]["serving"]["16"] = {"batch": 16, "status": "failed", "reason": "oom"}
    assert gate(tmp_path, base, cur) == 0
    assert "no fused-ort-cpu at batch 16: compared at the base's own pick (failed: oom)" in (
        capsys.readouterr().out
    )


def test_gate_without_serving_data_is_as_before(tmp_path: Path, capsys):
    assert gate(tmp_path, report(10, 0.1, 1.0, 0.01), report(10, 0.1, 1.0, 0.01)) == 0
    out = capsys.readouterr().out
    assert "batch" not in out and "warning" not in out
    assert "base best: `fused-ort-cpu` · current best: `fused-ort-cpu`" in out


@pytest.mark.parametrize(
    "how", ["batch-not-an-int", "pick-not-a-variant", "pick-no-point", "latency-not-a-number"]
)
def test_damaged_serving_is_bad_input(tmp_path: Path, capsys, how: str):
    rep = with_serving(
        report(10, 0.1, 1.0, 0.01),
        {"fused-ort-cpu": {16: serving_point(16, STEADY, ENERGY)}},
        ("fused-ort-cpu", 16),
    )
    rec = rep["serving"]["recommendation"]
    if how == "batch-not-an-int":
        rec["batch"] = "16"
    elif how == "pick-not-a-variant":
        rec["variant"] = "int4-ort-cpu"
    elif how == "pick-no-point":
        rec["batch"] = 32
    else:
        rep["variants"][0]["serving"]["16"]["latency_ms"]["mean"] = "fast"
    good = write(tmp_path, "good.json", report(10, 0.1, 1.0, 0.01))
    bad = write(tmp_path, "bad.json", rep)
    assert main(["gate", str(good), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lepton-compile: error: {bad}: not a valid") and "Traceback" not in err
