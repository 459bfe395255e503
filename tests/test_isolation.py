"""Isolation: a variant that raises, crashes, hangs or runs out of memory is marked failed with
the reason, and the run goes on with the others (each variant runs in its own worker process)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import lepton_compile
from lepton_compile.recipes import Recipe
from lepton_compile.worker import VariantWorker, WorkerError

STEPS = textwrap.dedent(
    """
    import os, time

    def boom(model):
        raise RuntimeError("backend exploded")

    def crash(model):
        os.abort()

    def hang(model):
        time.sleep(600)

    def hog(model):
        return bytearray(8 * 2**30)  # more than the worker's address-space limit

    def same(model):
        return model
    """
)


@pytest.fixture
def steps_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "faulty_steps.py").write_text(STEPS)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    return "faulty_steps"


def recipe(mod: str, fn: str) -> Recipe:
    return Recipe(f"custom-{fn}", f"test step {fn}", custom_step=f"{mod}:{fn}")


def test_faults_are_recorded_and_the_run_goes_on(mlp_path: Path, steps_module: str):
    res = lepton_compile.compile(
        mlp_path,
        recipes=["fused", *(recipe(steps_module, f) for f in ("boom", "crash", "hang", "same"))],
        quick=True,
        variant_timeout_s=8,
        eval_samples=2,
        calibration_samples=2,
    )
    by = {v.recipe.name: v for v in res.variants}
    assert by["custom-boom"].status == "failed" and "backend exploded" in by["custom-boom"].reason
    assert by["custom-crash"].status == "failed" and "SIGABRT" in by["custom-crash"].reason
    assert by["custom-hang"].status == "failed" and "timed out" in by["custom-hang"].reason
    assert by["custom-same"].status in ("ok", "dropped")
    assert by["fused"].status in ("ok", "dropped")
    assert by["original"].status == "ok" and res.best.status == "ok"
    rep = {v["id"]: v for v in res.report["variants"]}
    assert rep["custom-crash-ort-cpu"]["status"] == "failed"
    assert res.report["measurement"]["isolation"]["isolated"] is True


def test_out_of_memory_is_named(mlp_path: Path, steps_module: str):
    res = lepton_compile.compile(
        mlp_path,
        recipes=[recipe(steps_module, "hog")],
        quick=True,
        memory_limit_bytes=3 * 2**30,
        eval_samples=2,
    )
    v = next(v for v in res.variants if v.recipe.name == "custom-hog")
    assert v.status == "failed" and "out of memory" in v.reason


def test_worker_in_process_mode_reports_errors(mlp_path: Path):
    w = VariantWorker("x", isolate=False)
    with pytest.raises(WorkerError) as e:
        w.call("load", str(mlp_path.parent / "missing.onnx"), "ort", "cpu", {})
    assert e.value.kind == "error"
    w.close()


def test_budget_skips_what_does_not_fit(mlp_path: Path):
    res = lepton_compile.compile(mlp_path, quick=True, budget_s=0.0, eval_samples=2, cache=False)
    skipped = [v for v in res.variants if v.status == "skipped"]
    assert skipped and all("budget" in v.reason for v in skipped)
    assert res.best.id == res.baseline.id and res.baseline.status == "ok"
