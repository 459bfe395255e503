"""MLflow tracking (lepton_compile.tracking) against a real local tracking store.

Each test gets its own SQLite tracking store and artifact folder under tmp_path, and reads
what was logged back with MLflow's client: params, metrics, tags, the report files and the
ONNX model, which is loaded with mlflow.onnx and run with onnxruntime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

mlflow = pytest.importorskip("mlflow", reason="mlflow is in the test extra: pip install '.[test]'")

import lepton_compile  # noqa: E402
from lepton_compile import CompileOptions, log_to_mlflow  # noqa: E402
from lepton_compile.cli import build_parser, cmd_compile, main, route  # noqa: E402
from lepton_compile.errors import InputError  # noqa: E402
from lepton_compile.tracking import input_example  # noqa: E402

QUICK = ["--quick", "--no-isolate", "--recipes", "original,fused", "--backend", "ort"]
# An address where nothing listens (the discard port on this host).
UNREACHABLE = "http://127.0.0.1:9"


class Store:
    """A tracking store in a folder: the SQLite database and the artifacts beside it."""

    def __init__(self, root: Path, experiment: str = "lepton-test"):
        root.mkdir(parents=True, exist_ok=True)
        self.uri = f"sqlite:///{root}/mlruns.db"
        self.experiment = experiment
        self.client = mlflow.MlflowClient(self.uri)
        # Created up front to keep its artifacts in the folder (MLflow's default for a
        # database store is relative to the working directory).
        self.experiment_id = self.client.create_experiment(
            experiment, artifact_location=(root / "artifacts").as_uri()
        )

    def only_run(self):
        runs = self.client.search_runs([self.experiment_id])
        assert len(runs) == 1, [r.info.run_id for r in runs]
        return runs[0]

    def download(self, artifact_uri: str, dst: Path) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=self.uri
            )
        )


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Store:
    monkeypatch.chdir(tmp_path)  # whatever MLflow writes by default stays in tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Store(tmp_path / "mlflow")


def compile_cli(model: Path, out: Path, *extra: str) -> int:
    return main([str(model), "-o", str(out), "-q", *QUICK, *extra])


def by_id(report: dict) -> dict[str, dict]:
    return {v["id"]: v for v in report["variants"]}


def check_run(store: Store, run, report: dict, tmp_path: Path) -> None:
    """What one run of ``report`` must hold, read back from the store."""
    assert run.info.status == "FINISHED"
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert params["objective"] == report["objective"]
    assert params["recipes"] == "original,fused"
    assert params["backends"] == "ort" and params["devices"] == "cpu"
    assert float(params["max_accuracy_drop"]) == report["constraints"]["max_accuracy_drop"]
    assert params["device.cpu.model"] == report["device"]["cpu"]["model"]
    assert params["model.sha256"] == report["model"]["sha256"]

    measured = [v for v in report["variants"] if v.get("latency_ms")]
    assert measured
    for v in measured:
        assert metrics[f"{v['id']}.latency_p50_ms"] == pytest.approx(v["latency_ms"]["p50"])
        assert metrics[f"{v['id']}.latency_mean_ms"] == pytest.approx(v["latency_ms"]["mean"])
        assert metrics[f"{v['id']}.latency_ci95_ms"] == pytest.approx(v["latency_ms"]["ci95"])
        en = v["energy_j"]
        assert metrics[f"{v['id']}.energy_j_per_inference"] == pytest.approx(en["per_inference"])
        assert tags[f"{v['id']}.energy_method"] == en["method"]
        assert metrics[f"{v['id']}.accuracy_drop"] == pytest.approx(v["accuracy"]["drop"])
        assert metrics[f"{v['id']}.size_bytes"] == v["size_bytes"]
    for v in report["variants"]:
        assert tags[f"{v['id']}.status"] == v["status"]

    best = by_id(report)[report["best"]["id"]]
    assert metrics["best.latency_p50_ms"] == pytest.approx(best["latency_ms"]["p50"])
    assert metrics["best.energy_j_per_inference"] == pytest.approx(
        best["energy_j"]["per_inference"]
    )
    base = by_id(report)[report["baseline"]]
    assert metrics["best.size_ratio"] == pytest.approx(best["size_bytes"] / base["size_bytes"])
    assert "best.latency_ratio" in metrics and "best.energy_ratio" in metrics

    assert tags["lepton.best_variant"] == report["best"]["id"]
    assert tags["lepton.meter"] == report["measurement"]["meter"]["name"]
    assert tags["lepton.meter"] in ("estimated", "nvml", "rapl")
    assert tags["lepton.version"] == lepton_compile.__version__
    assert report["device"]["cpu"]["model"] in tags["lepton.device"]

    names = {a.path for a in store.client.list_artifacts(run.info.run_id)}
    assert {"report.json", "report.md", "report.html"} <= names
    logged = store.download(f"runs:/{run.info.run_id}/report.json", tmp_path / "dl-report")
    assert json.loads(logged.read_text()) == report


def check_model(store: Store, run, report: dict, best_onnx: Path, tmp_path: Path) -> None:
    """The logged model loads with mlflow.onnx and computes what best.onnx computes on the
    logged input example."""
    model_id = run.data.tags["lepton.model_uri"].rpartition("/")[2]
    logged = store.client.get_logged_model(model_id)
    assert logged.source_run_id == run.info.run_id
    local = store.download(logged.artifact_location, tmp_path / "dl-model")
    assert (local / "MLmodel").is_file()
    info = mlflow.models.Model.load(str(local))
    input_names = [i["name"] for i in report["model"]["inputs"]]
    assert info.signature is not None and info.signature.inputs.input_names() == input_names
    assert info.signature.outputs is not None
    example = info.load_input_example(str(local))
    assert sorted(example) == sorted(input_names)

    model = mlflow.onnx.load_model(str(local))
    providers = ["CPUExecutionProvider"]
    got = ort.InferenceSession(model.SerializeToString(), providers=providers).run(None, example)
    want = ort.InferenceSession(str(best_onnx), providers=providers).run(None, example)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_cli_logs_the_saved_run(store: Store, tinycnn_path: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    argv = ["--mlflow", store.uri, "--mlflow-experiment", store.experiment]
    assert compile_cli(tinycnn_path, out, *argv) == 0
    stdout = capsys.readouterr().out
    run = store.only_run()
    assert f"logged MLflow run {run.info.run_id}" in stdout
    report = json.loads((out / "report.json").read_text())
    assert run.data.params["quick"] == "true"
    assert run.info.run_name == tinycnn_path.stem
    check_run(store, run, report, tmp_path)
    check_model(store, run, report, out / "best.onnx", tmp_path)


def test_api_compile_logs_one_run(store: Store, tinycnn_path: Path, tmp_path: Path):
    result = lepton_compile.compile(
        tinycnn_path,
        recipes=["original", "fused"],
        backends=["ort"],
        quick=True,
        isolate=False,
        mlflow=store.uri,
        mlflow_experiment=store.experiment,
    )
    run = store.only_run()
    assert result.mlflow_run_id == run.info.run_id
    check_run(store, run, result.report, tmp_path)
    assert result.best.artifact is not None
    check_model(store, run, result.report, result.best.artifact, tmp_path)
    # compile() never set MLflow's tracking URI for the rest of the process.
    assert not mlflow.is_tracking_uri_set()


def test_log_from_report_json(store: Store, tinycnn_path: Path, tmp_path: Path, monkeypatch):
    out = tmp_path / "out"
    assert compile_cli(tinycnn_path, out) == 0
    # The user's own MLFLOW_TRACKING_URI survives a log to an explicit URI, and gets no run.
    other = Store(tmp_path / "other")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other.uri)
    run_id = log_to_mlflow(out / "report.json", tracking_uri=store.uri, experiment=store.experiment)
    assert os.environ["MLFLOW_TRACKING_URI"] == other.uri
    assert mlflow.get_tracking_uri() == other.uri
    # ... and the variable still decides: the URI it gave was not pinned as MLflow's own.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    assert mlflow.get_tracking_uri() == store.uri
    assert other.client.search_runs([other.experiment_id]) == []
    run = store.only_run()
    assert run.info.run_id == run_id
    report = json.loads((out / "report.json").read_text())
    check_run(store, run, report, tmp_path)
    check_model(store, run, report, out / "best.onnx", tmp_path)


def test_default_uri_and_nesting_in_the_users_run(
    store: Store, tinycnn_path: Path, tmp_path: Path, monkeypatch
):
    """No URI given: MLflow's default, here $MLFLOW_TRACKING_URI; inside the user's active run
    the compile is logged as its child."""
    out = tmp_path / "out"
    assert compile_cli(tinycnn_path, out) == 0
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    with mlflow.start_run(experiment_id=store.experiment_id) as parent:
        child_id = log_to_mlflow(out, experiment=store.experiment)
    child = store.client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.experiment_id == store.experiment_id
    assert child.data.tags["lepton.best_variant"]


def test_names_values_and_serving_profile_fit_mlflow(
    store: Store, tinycnn_path: Path, tmp_path: Path
):
    """Variant ids and device fields outside MLflow's key charset, a value past its length
    limit, and a serving profile (the batch size as the metric step)."""
    out = tmp_path / "out"
    assert compile_cli(tinycnn_path, out) == 0
    edited = tmp_path / "edited"
    shutil.copytree(out, edited)
    report = json.loads((edited / "report.json").read_text())
    best_id = report["best"]["id"]
    odd = "fused-lepton+inductor/cuda:0"
    odd_variant = dict(by_id(report)[best_id], id=odd, status="ok")
    odd_variant["serving"] = {
        "1": {"status": "ok", "latency_ms": {"p99": 2.0}, "throughput_per_s": 500.0,
              "energy_j_per_inference": {"mean": 0.004}},
        "8": {"status": "ok", "latency_ms": {"p99": 6.0}, "throughput_per_s": 1300.0,
              "energy_j_per_inference": {"mean": 0.001}},
        "32": {"status": "failed", "reason": "out of memory"},
    }  # fmt: skip
    report["variants"].append(odd_variant)
    report["device"]["cpu"]["flags (all)"] = "x" * 7000
    report["serving"] = {
        "batch_sizes": [1, 8, 32],
        "recommendation": {
            "variant": odd,
            "batch": 8,
            "energy_j_per_inference": 0.001,
            "p99_ms": 6.0,
            "max_latency_ms": 10.0,
            "text": "best: fused at batch 8",
        },
    }
    (edited / "report.json").write_text(json.dumps(report))

    run_id = log_to_mlflow(edited, tracking_uri=store.uri, experiment=store.experiment)
    run = store.client.get_run(run_id)
    safe = "fused-lepton_inductor_cuda_0"
    assert run.data.metrics[f"{safe}.latency_p50_ms"] == pytest.approx(
        odd_variant["latency_ms"]["p50"]
    )
    assert run.data.tags[f"{safe}.status"] == "ok"
    flags = run.data.params["device.cpu.flags _all_"]
    assert len(flags) <= 6000 and flags.startswith("xxx")
    assert run.data.params["batch_sizes"] == "1,8,32"
    assert run.data.params["max_latency_ms"] == "10.0"
    assert run.data.metrics["serving.batch"] == 8
    assert run.data.metrics["serving.energy_j_per_inference"] == pytest.approx(0.001)
    assert run.data.tags["serving.variant"] == odd
    history = store.client.get_metric_history(run_id, f"{safe}.serving.energy_j_per_inference")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.004), (8, 0.001)]


def test_unreachable_server_is_one_warning_and_exit_0(
    tinycnn_path: Path, tmp_path: Path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    # Should MLflow be reached at all, it gives up at once instead of retrying for minutes.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    out = tmp_path / "out"
    assert compile_cli(tinycnn_path, out, "--json", "--mlflow", UNREACHABLE) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout stays the report alone
    assert report["best"]["id"] and (out / "best.onnx").is_file()
    warnings = [line for line in captured.err.splitlines() if "mlflow" in line.lower()]
    assert len(warnings) == 1, captured.err
    assert warnings[0].startswith("lepton-compile: warning: MLflow run not logged")
    assert UNREACHABLE in warnings[0] and "not reachable" in warnings[0]
    assert "Traceback" not in captured.err


def test_api_unreachable_server_keeps_the_result(
    tinycnn_path: Path, tmp_path: Path, monkeypatch, caplog
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with caplog.at_level("WARNING", logger="lepton_compile.tracking"):
        result = lepton_compile.compile(
            tinycnn_path, recipes=["original", "fused"], backends=["ort"], quick=True,
            isolate=False, mlflow=UNREACHABLE,
        )  # fmt: skip
    assert result.mlflow_run_id is None and result.best.artifact is not None
    records = [r for r in caplog.records if r.name == "lepton_compile.tracking"]
    assert len(records) == 1 and UNREACHABLE in records[0].getMessage()
    assert "\n" not in records[0].getMessage()


def test_without_mlflow_installed_is_one_warning(tinycnn_path: Path, tmp_path: Path):
    """mlflow that cannot be imported (a None entry in sys.modules makes its import fail, as
    when it is not installed): one warning naming the extra, no run id, no exception."""
    out = tmp_path / "out"
    assert compile_cli(tinycnn_path, out) == 0
    code = (
        "import sys; sys.modules['mlflow'] = None\n"
        "from lepton_compile import CompileOptions\n"
        "from lepton_compile.tracking import log_compile\n"
        f"run = log_compile({str(out)!r}, CompileOptions(mlflow=True), print)\n"
        "print('run', run)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "run None"
    assert len(lines) == 2 and "lepton-compile[mlflow]" in lines[0], done.stdout


def test_mlflow_flags_build_options(tinycnn_path: Path, tmp_path: Path, capsys):
    def opts(*argv: str) -> CompileOptions:
        return cmd_compile.build_options(build_parser().parse_args(route(["m.onnx", *argv])))

    assert opts().mlflow is None and opts().mlflow_experiment == "lepton-compile"
    assert opts("--mlflow").mlflow is True
    assert opts("--mlflow", "http://mlflow:5000").mlflow == "http://mlflow:5000"
    assert opts("--mlflow=sqlite:///m.db", "--quick").mlflow == "sqlite:///m.db"
    named = opts("--mlflow-experiment", "detector")
    assert named.mlflow is True and named.mlflow_experiment == "detector"
    with pytest.raises(InputError):
        CompileOptions(mlflow=" ").validate()
    with pytest.raises(InputError):
        CompileOptions(mlflow=True, mlflow_experiment="").validate()
    # Refused as bad input before any work, like every other bad flag.
    assert main([str(tinycnn_path), "-o", str(tmp_path / "out"), "--mlflow="]) == 2
    assert "--mlflow" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_input_example_from_specs_with_symbolic_dims():
    ex = input_example(
        [
            {"name": "images", "dtype": "float32", "shape": ["B", 3, 8, 8]},
            {"name": "ids", "dtype": "int64", "shape": [None, 5]},
            {"name": "mask", "dtype": "bool", "shape": [2]},
        ]
    )
    assert ex["images"].shape == (1, 3, 8, 8) and ex["images"].dtype == np.float32
    assert np.isfinite(ex["images"]).all() and ex["images"].std() > 0
    assert ex["ids"].shape == (1, 5) and ex["ids"].dtype == np.int64 and not ex["ids"].any()
    assert ex["mask"].shape == (2,) and ex["mask"].dtype == np.bool_


def test_not_a_report_is_bad_input(tmp_path: Path):
    (tmp_path / "report.json").write_text('{"schema": "something else"}')
    with pytest.raises(InputError, match="not a lepton-compile report"):
        log_to_mlflow(tmp_path)
    with pytest.raises(InputError, match="no such report"):
        log_to_mlflow(tmp_path / "missing")
