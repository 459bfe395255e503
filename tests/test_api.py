"""The Python API: compile() returns variants, the pick and the frontier; save() writes them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lepton_compile
from lepton_compile.bench.protocol import Protocol
from lepton_compile.errors import InputError


def test_compile_and_save(tmp_path: Path, mlp_path: Path):
    res = lepton_compile.compile(
        mlp_path, input_shapes={"x": [4, 32]}, objective="latency", quick=True
    )
    assert res.baseline.id == "original-ort-cpu"
    assert res.best in res.variants and res.best.status == "ok"
    assert all(v.pareto for v in res.pareto) and res.pareto
    assert res.report["objective"] == "latency"
    assert res.model.inputs[0].shape == (4, 32)
    out = res.save(tmp_path / "o")
    rep = json.loads((out / "report.json").read_text())
    assert rep["best"]["id"] == res.best.id
    assert {p.name for p in (out / "variants").iterdir()} >= {"original.onnx", "fused.onnx"}
    sess = lepton_compile.load(out / "best.onnx")
    y = sess.run({"x": np.ones((4, 32), np.float32)})["y"]
    assert y.shape == (4, 8) and np.allclose(y.sum(-1), 1.0, atol=1e-4)


def test_session_describes_its_options(mlp_path: Path):
    sess = lepton_compile.load(mlp_path, graph_optimization_level="basic")
    d = sess.describe()
    assert d["backend"] == "ort" and d["providers"] == ["CPUExecutionProvider"]
    assert d["session_options"]["graph_optimization_level"] == "basic"


def test_bad_arguments_are_input_errors(mlp_path: Path):
    with pytest.raises(InputError, match="objective"):
        lepton_compile.compile(mlp_path, objective="speed")
    with pytest.raises(InputError, match="max-accuracy-drop"):
        lepton_compile.compile(mlp_path, max_accuracy_drop=2.0)
    with pytest.raises(InputError, match="unknown recipe"):
        lepton_compile.compile(mlp_path, recipes=["nope"])


def test_user_inputs_drive_calibration_and_eval(tmp_path: Path, mlp_path: Path):
    d = tmp_path / "data"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        np.savez(d / f"{i}.npz", x=rng.standard_normal((1, 32)).astype(np.float32))
    res = lepton_compile.compile(
        mlp_path, inputs_dir=d, recipes=["int8-qdq"], quick=True, eval_samples=2
    )
    assert res.report["inputs"]["eval_samples"] == 2
    assert res.report["inputs"]["calibration_samples"] == 4
    v = next(v for v in res.variants if v.id == "int8-qdq-ort-cpu")
    assert v.fidelity is not None and v.fidelity.samples == 2


def test_result_cache_reuses_a_whole_run(tmp_path: Path, mlp_path: Path):
    db = tmp_path / "cache.sqlite"
    cold = lepton_compile.compile(mlp_path, quick=True, cache_path=db, eval_samples=2)
    warm = lepton_compile.compile(mlp_path, quick=True, cache_path=db, eval_samples=2)
    assert not any(v.cache for v in cold.variants)
    assert all(v.cache.get("measurement_reused") for v in warm.variants)
    assert warm.best.id == cold.best.id
    for a, b in zip(cold.variants, warm.variants, strict=True):
        assert a.status == b.status and a.size_bytes == b.size_bytes
        if a.latency:
            assert b.latency is not None and a.latency.mean == b.latency.mean
    out = warm.save(tmp_path / "o")
    assert (out / "best.onnx").is_file()
    # Another protocol is another key: nothing reused, measured anew.
    other = lepton_compile.compile(
        mlp_path,
        cache_path=db,
        eval_samples=2,
        protocol=Protocol(trials=2, min_trial_s=0.01, warmup_s=0.0),
    )
    assert not any(v.cache for v in other.variants)


def test_no_cache_stores_nothing(tmp_path: Path, mlp_path: Path):
    db = tmp_path / "cache.sqlite"
    lepton_compile.compile(mlp_path, quick=True, cache=False, cache_path=db, eval_samples=2)
    assert not db.exists()


def test_lepton_backend_variants(tmp_path: Path, mlp_path: Path):
    pytest.importorskip("torch", reason="the lepton backend needs torch")
    res = lepton_compile.compile(mlp_path, backends=["ort", "lepton"], quick=True, eval_samples=2)
    by = {v.id: v for v in res.variants}
    # Built and verified; racing may drop them (eager torch is slower than onnxruntime here).
    assert by["original-lepton-cpu"].status in ("ok", "dropped")
    assert by["fused-lepton-lepton-cpu"].status in ("ok", "dropped")
    assert "fused-lepton-ort-cpu" not in by  # ai.lepton ops are for the lepton backend
    assert by["original-lepton-cpu"].session["backend"] == "lepton"
    assert res.baseline.id == "original-ort-cpu"


def test_lepton_variants_report_their_layer_choices(tmp_path: Path, mlp_path: Path):
    pytest.importorskip("torch", reason="the lepton backend needs torch")
    res = lepton_compile.compile(
        mlp_path,
        recipes=["original", "fused-lepton"],
        backends=["ort", "lepton"],
        kernels="torch",
        quick=True,
        eval_samples=2,
        cache=False,
    )
    v = next(x for x in res.report["variants"] if x["id"] == "fused-lepton-lepton-cpu")
    assert v["session"]["kernels"] == "torch"
    assert v["session"]["kernel_summary"].startswith("0 of ")  # torch's route everywhere
    assert isinstance(v["session"]["kernel_layers"], list)
    out = res.save(tmp_path / "o")
    assert "Layers on our kernels" in (out / "report.md").read_text()
    with pytest.raises(InputError, match="--kernels"):
        lepton_compile.compile(mlp_path, kernels="fastest")
