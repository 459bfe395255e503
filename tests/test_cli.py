"""End to end through the command line: outputs, report schema, exit codes and the error table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import LIGHT_DIR, text_model

from lepton_compile.cli import main

REQUIRED_VARIANT_KEYS = {
    "id",
    "recipe",
    "backend",
    "precision",
    "status",
    "latency_ms",
    "energy_j",
    "accuracy",
    "size_bytes",
    "pareto",
    "artifact",
}


def run_cli(*args: str) -> int:
    return main([*args, "--quick", "-q"])


def check_report(out: Path) -> dict:
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema"] == "lepton-compile/report/v1"
    for k in ("model", "device", "baseline", "best", "variants"):
        assert k in rep
    assert {"path", "sha256", "inputs"} <= rep["model"].keys()
    for v in rep["variants"]:
        assert REQUIRED_VARIANT_KEYS <= v.keys(), v["id"]
        if v["status"] == "dropped":
            assert v["reason"] and v["accuracy"]["passed"] is True
        if v["status"] == "ok":
            assert {"p50", "p90", "p99", "mean", "ci95"} <= v["latency_ms"].keys()
            assert {"per_inference", "ci95", "method"} <= v["energy_j"].keys()
            assert v["energy_j"]["method"] in ("nvml", "rapl", "estimated")
            assert v["accuracy"]["passed"] is True
            assert (out / v["artifact"]).is_file()
            # Paired ratio to the original, with its interval and the trials it rests on.
            r = v["ratio_to_original"]["latency"]
            assert r["n"] >= 2 and len(r["ci95"]) == 2 and r["method"].startswith("t on")
    for d in rep["decision"]:
        assert {"race", "decided", "reason", "trials", "seconds"} <= d.keys()
    assert rep["best"]["decided"] in (True, False)
    assert (out / "report.md").read_text().startswith("## lepton-compile")
    assert (out / "report.html").is_file()
    return rep


def agrees_with_original(original: Path, best: Path, feed: dict) -> None:
    a = ort.InferenceSession(str(original), providers=["CPUExecutionProvider"]).run(None, feed)
    b = ort.InferenceSession(str(best), providers=["CPUExecutionProvider"]).run(None, feed)
    for x, y in zip(a, b, strict=True):
        cos = float(np.dot(x.ravel(), y.ravel()) / (np.linalg.norm(x) * np.linalg.norm(y)))
        assert cos > 0.99


def test_tinycnn_end_to_end(tmp_path: Path, tinycnn_path: Path):
    before = tinycnn_path.read_bytes()
    out = tmp_path / "out"
    assert run_cli(str(tinycnn_path), "-o", str(out)) == 0
    rep = check_report(out)
    ids = [v["id"] for v in rep["variants"]]
    assert ids[0] == "original-ort-cpu" and rep["baseline"] == "original-ort-cpu"
    assert {"fused-ort-cpu", "fp16-ort-cpu", "int8-mixed-ort-cpu"} <= set(ids)
    by_id = {v["id"]: v for v in rep["variants"]}
    # Built and verified; racing may drop it when it is clearly slower on this machine.
    assert by_id["fused-ort-cpu"]["status"] in ("ok", "dropped")
    assert by_id["int8-mixed-ort-cpu"]["size_bytes"] < by_id["original-ort-cpu"]["size_bytes"]
    assert any("batch" in n for n in rep["notes"])
    assert any("estimated" in n for n in rep["notes"])
    assert tinycnn_path.read_bytes() == before
    feed = {"images": np.random.default_rng(5).random((1, 3, 96, 96), dtype=np.float32)}
    agrees_with_original(tinycnn_path, out / "best.onnx", feed)
    onnx.checker.check_model(onnx.load(out / "best.onnx"))


def test_json_output_and_default_outdir(tmp_path: Path, tinycnn_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([str(tinycnn_path), "--quick", "--json", "--recipes", "fused"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["schema"] == "lepton-compile/report/v1"
    assert (tmp_path / "tinycnn.lepton" / "best.onnx").is_file()


def test_rerun_replaces_output_dir(tmp_path: Path, mlp_path: Path):
    out = tmp_path / "o"
    assert run_cli(str(mlp_path), "-o", str(out), "--recipes", "fused") == 0
    assert run_cli(str(mlp_path), "-o", str(out), "--recipes", "fused") == 0
    # A file the user added to an earlier output is theirs: kept unless --force.
    (out / "stale.txt").write_text("x")
    assert run_cli(str(mlp_path), "-o", str(out), "--recipes", "fused") == 2
    assert (out / "stale.txt").read_text() == "x"
    assert run_cli(str(mlp_path), "-o", str(out), "--recipes", "fused", "--force") == 0
    assert not (out / "stale.txt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "temp dirs left"


def test_max_latency_nothing_meets_constraints(tmp_path: Path, mlp_path: Path):
    out = tmp_path / "o"
    assert (
        run_cli(
            str(mlp_path), "-o", str(out), "--recipes", "fused", "--max-latency-ms", "0.0000001"
        )
        == 1
    )
    rep = json.loads((out / "report.json").read_text())
    assert rep["constraints"]["met"] is False


def test_rejected_variant_is_never_picked(tmp_path: Path, mlp_path: Path):
    # A zero tolerance rejects every lossy variant; the lossless ones may still win.
    out = tmp_path / "o"
    args = ("--max-accuracy-drop", "0", "--recipes", "fused,int8-qdq,int8-mixed")
    assert run_cli(str(mlp_path), "-o", str(out), *args) == 0
    rep = json.loads((out / "report.json").read_text())
    by_id = {v["id"]: v for v in rep["variants"]}
    assert by_id["int8-qdq-ort-cpu"]["status"] == "rejected"
    # The search cannot keep any layer in INT8 at zero tolerance: it gives up, rejected.
    assert by_id["int8-mixed-ort-cpu"]["status"] == "rejected"
    assert "rejected after" in by_id["int8-mixed-ort-cpu"]["reason"]
    assert "drop" in by_id["int8-qdq-ort-cpu"]["reason"]
    assert by_id[rep["best"]["id"]]["status"] == "ok"


def test_python_dash_m_help():
    r = subprocess.run(
        [sys.executable, "-m", "lepton_compile", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0
    assert "--input-shape" in r.stdout and "gate" in r.stdout and "exit codes" in r.stdout


# --- The error table: one clear line, exit 2, no traceback, no output, input untouched ------


def _unsupported_op_model(tmp_path: Path) -> Path:
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[1, 4] x) => (float[1, 4] y) { y = com.example.Frobnicate (x) }
        """
    )
    p = tmp_path / "custom.onnx"
    onnx.save(m, p)
    return p


def _invalid_model(tmp_path: Path) -> Path:
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) { y = Add (x, missing) }
        """
    )
    p = tmp_path / "invalid.onnx"
    onnx.save(m, p)
    return p


def _truncated(tmp_path: Path, src: Path) -> Path:
    p = tmp_path / "trunc.onnx"
    data = src.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


def _not_onnx(tmp_path: Path) -> Path:
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a model\n" * 20)
    return p


def _dynamic(tmp_path: Path) -> Path:
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, H, W] x) => (float[1, 3, H, W] y) { y = Relu (x) }
        """
    )
    p = tmp_path / "dyn.onnx"
    onnx.save(m, p)
    return p


ERROR_CASES = {
    "missing file": (lambda t, m: t / "nope.onnx", [], "no such file"),
    "truncated file": (lambda t, m: _truncated(t, m), [], "trunc.onnx"),
    "not onnx": (lambda t, m: _not_onnx(t), [], "notes.onnx"),
    "invalid graph": (lambda t, m: _invalid_model(t), [], "invalid ONNX graph"),
    "unsupported op": (lambda t, m: _unsupported_op_model(t), [], "Frobnicate"),
    "input-shape names no input": (lambda t, m: m, ["--input-shape", "foo=1x2"], "not an input"),
    "dynamic dim left unfixed": (lambda t, m: _dynamic(t), [], "--input-shape x="),
    "bad input-shape syntax": (lambda t, m: m, ["--input-shape", "images"], "NAME=DIMS"),
    "unknown recipe": (lambda t, m: m, ["--recipes", "turbo"], "unknown recipe"),
    "bad accuracy drop": (lambda t, m: m, ["--max-accuracy-drop", "lots"], "max-accuracy-drop"),
    "meter not there": (lambda t, m: m, ["--meter", "nvml"], "--meter nvml"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error_table(case: str, tmp_path: Path, tinycnn_path: Path, capsys):
    make, extra, match = ERROR_CASES[case]
    model = make(tmp_path, tinycnn_path)
    before = model.read_bytes() if model.exists() else None
    out = tmp_path / "out"
    code = main([str(model), "-o", str(out), "--quick", "-q", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1].startswith("lepton-compile: error:") and match in lines[-1], err
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    if before is not None:
        assert model.read_bytes() == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "light_squeezenet",
        "light_resnet50",
        "light_inception_v2",
        "light_shufflenet",
        "light_densenet121",
    ],
)
def test_light_models_end_to_end(tmp_path: Path, name: str):
    src = LIGHT_DIR / f"{name}.onnx"
    out = tmp_path / "out"
    assert (
        run_cli(str(src), "-o", str(out), "--eval-samples", "4", "--calibration-samples", "4") == 0
    )
    rep = check_report(out)
    by_id = {v["id"]: v for v in rep["variants"]}
    # Built and verified; racing may drop it when it is clearly slower on this machine.
    assert by_id["fused-ort-cpu"]["status"] in ("ok", "dropped")
    m = onnx.load(src)
    inits = {i.name for i in m.graph.initializer}
    inp = next(i for i in m.graph.input if i.name not in inits)
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    feed = {inp.name: np.random.default_rng(1).random(shape, dtype=np.float32)}
    agrees_with_original(src, out / "best.onnx", feed)


def test_bench_measures_without_search(tmp_path: Path, mlp_path: Path, capsys):
    out = tmp_path / "b"
    assert main(["bench", str(mlp_path), "--quick", "--no-isolate", "--json", "-o", str(out)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [v["id"] for v in rep["variants"]] == ["original-ort-cpu"]
    assert rep["variants"][0]["latency_ms"]["mean"] > 0
    assert (out / "report.json").is_file()


def test_cache_list_and_clear(tmp_path: Path, mlp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("LEPTON_CACHE", str(tmp_path / "c.sqlite"))
    assert run_cli(str(mlp_path), "-o", str(tmp_path / "o"), "--recipes", "fused") == 0
    capsys.readouterr()
    assert main(["cache", "list"]) == 0
    listed = capsys.readouterr().out
    assert "fused" in listed and "original" in listed
    assert main(["cache", "clear"]) == 0
    assert "removed 2 stored model file(s)" in capsys.readouterr().out  # original, fused
    assert main(["cache", "list", "--json"]) == 0
    assert capsys.readouterr().out.strip() == ""  # JSON lines: none left
    assert not list((tmp_path / "artifacts").glob("*.onnx"))


def test_internal_error_exit_code(monkeypatch, mlp_path: Path, capsys):
    import lepton_compile.engine as engine

    def broken(*a, **k):
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(engine, "compile", broken)
    assert main([str(mlp_path)]) == 3
    assert "internal error" in capsys.readouterr().err


def test_recipes_subcommand_lists_recipes_and_groups(capsys):
    from lepton_compile.recipes import ALIASES, RECIPES

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in [*RECIPES, *ALIASES]:
        assert name in out


def test_original_with_non_finite_outputs_is_one_line(tmp_path: Path, capsys):
    """NaN from the original itself: one error line, no warnings before it, nothing built."""
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 8] x) => (float[1, 8] y) { y = Log (x) }
        """
    )
    path = tmp_path / "nan.onnx"
    onnx.save(m, path)
    out = tmp_path / "o"
    assert main([str(path), "-o", str(out), "--quick", "-q"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1, err
    assert "non-finite" in err[0] and "'y'" in err[0]
    assert not out.exists()


# --- The parser: routing, the options it builds, the cache command ------------------------------


def test_route_names_the_subcommand_first(tmp_path: Path, monkeypatch):
    from lepton_compile.cli import route

    monkeypatch.chdir(tmp_path)
    assert route(["m.onnx", "-q"]) == ["compile", "m.onnx", "-q"]
    assert route(["--help"]) == ["compile", "--help"]
    assert route([]) == ["compile"]
    assert route(["gate", "a.json", "b.json"]) == ["gate", "a.json", "b.json"]
    assert route(["compile", "m.onnx"]) == ["compile", "m.onnx"]
    (tmp_path / "optimize").write_bytes(b"")
    assert route(["optimize", "-q"]) == ["compile", "optimize", "-q"]
    # A model is a file: a directory named like a subcommand does not hide it.
    (tmp_path / "bench").mkdir()
    assert route(["bench", "m.onnx"]) == ["bench", "m.onnx"]


def test_existing_path_named_like_a_subcommand_is_the_model(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gate").write_text("not a model\n")
    assert main(["gate", "-o", str(tmp_path / "o"), "--quick", "-q"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    # The main job read it as a model; the gate would have asked for two reports.
    assert err[-1].startswith("lepton-compile: error: gate") and "report" not in err[-1], err


def test_help_version_and_usage_errors_name_their_command(capsys):
    from lepton_compile import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lepton-compile {__version__}"
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert main(["compile", "--help"]) == 0
    assert capsys.readouterr().out == top and top.startswith("usage: lepton-compile [-h]")
    for argv, prog in [
        (["passes", "extra"], "lepton-compile passes"),
        (["m.onnx", "--frobnicate"], "lepton-compile"),
        (["cache", "list", "extra"], "lepton-compile cache list"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith(f"usage: {prog} ") and err[-1].startswith(f"{prog}: error:"), err


def test_main_job_builds_compile_options():
    from lepton_compile import CompileOptions
    from lepton_compile.cli import build_parser, cmd_compile, route

    argv = ["m.onnx", "--quick", "--recipes", "fused, fp16", "--screen-factor", "0"]
    argv += ["--input-shape", "x=1x3", "--memory-limit-gb", "2", "--no-cache", "--no-isolate"]
    opts = cmd_compile.build_options(build_parser().parse_args(route(argv)))
    assert isinstance(opts, CompileOptions)
    assert opts.recipes == ["fused", "fp16"] and opts.input_shapes == {"x": [1, 3]}
    assert opts.quick and not opts.cache and not opts.isolate
    assert opts.screen_factor is None and opts.memory_limit_bytes == 2 * 2**30
    assert opts.max_accuracy_drop == 0.01
    defaults = cmd_compile.build_options(build_parser().parse_args(route(["m.onnx"])))
    assert defaults.recipes is None and defaults.screen_factor == CompileOptions().screen_factor
    assert defaults.search_budget_s == CompileOptions().search_budget_s


def test_cache_command_path_and_ages(tmp_path: Path, capsys):
    from lepton_compile.bench.cache import ResultCache, cache_key

    path = tmp_path / "results.sqlite"
    with ResultCache(path) as c:
        c.put(cache_key(i=1), {"latency_ms": 1.0}, {"model": "resnet50.onnx", "recipe": "fused"})
    assert main(["cache", "--path", str(path), "list"]) == 0
    out = capsys.readouterr().out
    assert "1 result(s)" in out and "resnet50.onnx" in out and cache_key(i=1)[:12] in out
    # --path may also follow the action.
    assert main(["cache", "list", "--json", "--path", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "resnet50.onnx"
    assert main(["cache", "--path", str(path), "clear", "--older-than", "1d"]) == 0
    assert "removed 0 result(s)" in capsys.readouterr().out
    assert main(["cache", "clear", "--path", str(path)]) == 0
    assert "removed 1 result(s)" in capsys.readouterr().out
    assert main(["cache", "--path", str(path), "clear", "--older-than", "soon"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("lepton-compile cache clear: error:") and "soon" in err[-1]


def test_kernels_flag_reaches_the_options():
    from lepton_compile.cli import build_parser
    from lepton_compile.cli.cmd_compile import build_options

    args = build_parser().parse_args(["compile", "m.onnx", "--kernels", "torch"])
    assert build_options(args).kernels == "torch"
    assert main(["m.onnx", "--kernels", "fastest"]) == 2


def test_batch_sizes_flag_profiles_and_prints_the_recommendation(
    tmp_path: Path, tinycnn_path: Path, capsys
):
    out = tmp_path / "out"
    code = main(
        [
            str(tinycnn_path),
            "-o",
            str(out),
            "--quick",
            "--recipes",
            "original",
            "--backend",
            "ort",
            "--batch-sizes",
            "1,4",
            "--no-cache",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "serving (batch 1, 4;" in text and "best: original-ort-cpu at batch" in text
    rep = check_report(out)
    assert rep["serving"]["batch_inputs"] == ["images"]
    assert set(rep["variants"][0]["serving"]) == {"1", "4"}
    assert main([str(tinycnn_path), "--batch-sizes", "0,4"]) == 2
