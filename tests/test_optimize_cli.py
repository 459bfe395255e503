"""`lepton-compile optimize`: tables, JSON, verification, shapes, errors and atomic output."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import text_model

from lepton_compile import optimize as optimize_module
from lepton_compile.cli import main
from lepton_compile.outdir import OPTIMIZED_MARK
from lepton_compile.passes import registry
from lepton_compile.passes.testing import run_ort


class NeutralTimer:
    """Stands in for OrtPairedTimer: every candidate as fast as the input, at no cost.

    The speed check has its own tests (test_optimize_speed_check.py); here it must neither
    take seconds per test nor drop a pass because the machine is busy.
    """

    runs = 1

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __call__(self, candidate):
        return [1.0] * 5, [1.0] * 5


@pytest.fixture(autouse=True)
def neutral_timer(monkeypatch):
    monkeypatch.setattr(optimize_module, "OrtPairedTimer", NeutralTimer)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_json(capsys, *args: str) -> tuple[int, dict]:
    code = main(["optimize", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if code == 0 else {}


def test_table_output_and_input_untouched(tmp_path: Path, tinycnn_path: Path, capsys):
    before = sha(tinycnn_path)
    out = tmp_path / "tiny.opt.onnx"
    assert main(["optimize", str(tinycnn_path), "-o", str(out), "-q"]) == 0
    text = capsys.readouterr().out
    assert "nodes by op type" in text and "BatchNormalization" in text
    assert "fuse-batchnorm" in text and "verification: passed" in text
    assert f"wrote {out}" in text
    assert sha(tinycnn_path) == before
    onnx.checker.check_model(onnx.load(out))
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left


def test_json_summary(tmp_path: Path, tinycnn_path: Path, capsys):
    out = tmp_path / "o.onnx"
    code, rep = run_json(capsys, str(tinycnn_path), "-o", str(out))
    assert code == 0
    assert rep["schema"] == "lepton-compile/optimize/v1"
    assert rep["model"]["sha256"] == sha(tinycnn_path)
    assert rep["output"]["sha256"] == sha(out)
    assert rep["pipeline"] == "fused" and rep["target"] == "ort"
    assert rep["nodes"]["after"] < rep["nodes"]["before"]
    assert rep["op_counts"]["before"]["BatchNormalization"] == 3
    assert "BatchNormalization" not in rep["op_counts"]["after"]
    assert [r["name"] for r in rep["records"]] == rep["passes"]
    assert {"seconds", "nodes_before", "nodes_after", "modified"} <= rep["records"][0].keys()
    v = rep["verification"]
    assert v["status"] == "passed" and v["passed"] is True and v["dropped"] == []
    assert v["inputs"]["seed"] == 0 and v["inputs"]["shapes"] == {"images": [1, 3, 96, 96]}
    assert v["tolerances"]["float32"]["rtol"] > 0


def test_explicit_passes_skip_and_no_verify(tmp_path: Path, tinycnn_path: Path, capsys):
    out = tmp_path / "o.onnx"
    code, rep = run_json(
        capsys,
        str(tinycnn_path),
        "-o",
        str(out),
        "--passes",
        "fold-constants,fuse-batchnorm,remove-unused",
        "--skip",
        "remove-unused",
        "--no-verify",
    )
    assert code == 0
    assert rep["passes"] == ["fold-constants", "fuse-batchnorm"] and rep["pipeline"] is None
    assert rep["verification"] is None


class _FlipRelu(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type, modified = "Sigmoid", True
        return ir.passes.PassResult(model, modified)


def test_broken_pass_dropped_and_reported(tmp_path: Path, tinycnn_path: Path, capsys, monkeypatch):
    spec = registry.PassSpec("test-flip-relu", "broken on purpose (test)", _FlipRelu)
    monkeypatch.setitem(registry._REGISTRY, "test-flip-relu", spec)
    out = tmp_path / "o.onnx"
    args = [str(tinycnn_path), "-o", str(out), "--passes", "fuse-batchnorm,test-flip-relu"]
    code, rep = run_json(capsys, *args)
    assert code == 0
    assert rep["passes"] == ["fuse-batchnorm"]
    assert [d["pass"] for d in rep["verification"]["dropped"]] == ["test-flip-relu"]
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "Sigmoid" not in ops and "BatchNormalization" not in ops
    assert main(["optimize", *args, "-q"]) == 0
    assert "dropped pass test-flip-relu" in capsys.readouterr().out


def test_still_dynamic_model_stays_correct_at_other_sizes(tmp_path: Path, mlp_path: Path, capsys):
    out = tmp_path / "o.onnx"
    code, rep = run_json(capsys, str(mlp_path), "-o", str(out))
    assert code == 0
    assert rep["verification"]["inputs"]["shapes"] == {"x": [1, 32]}
    assert rep["output"]["inputs"][0]["shape"] == ["B", 32]
    assert any("stays dynamic" in n for n in rep["notes"])
    original, optimized = onnx.load(mlp_path), onnx.load(out)
    rng = np.random.default_rng(1)
    for batch in (3, 17):
        feeds = {"x": rng.standard_normal((batch, 32)).astype(np.float32)}
        np.testing.assert_allclose(
            run_ort(optimized, feeds)[0], run_ort(original, feeds)[0], rtol=1e-4, atol=1e-6
        )


def test_input_shape_fixes_dims(tmp_path: Path, mlp_path: Path, capsys):
    out = tmp_path / "o.onnx"
    code, rep = run_json(capsys, str(mlp_path), "-o", str(out), "--input-shape", "x=4x32")
    assert code == 0
    assert rep["input_shapes"] == {"x": [4, 32]}
    assert rep["model"]["inputs"][0]["shape"] == ["B", 32]  # as declared in the file
    assert rep["verification"]["inputs"]["shapes"] == {"x": [4, 32]}
    model = onnx.load(out)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [4, 32]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [4, 8]


def test_verify_shape_option(tmp_path: Path, mlp_path: Path, capsys):
    out = tmp_path / "o.onnx"
    code, rep = run_json(capsys, str(mlp_path), "-o", str(out), "--verify-shape", "x=5x32")
    assert code == 0
    assert rep["verification"]["inputs"]["shapes"] == {"x": [5, 32]}
    assert rep["output"]["inputs"][0]["shape"] == ["B", 32]


def marks(path: Path) -> list[str]:
    return [p.value for p in onnx.load(path).metadata_props if p.key == OPTIMIZED_MARK]


def test_output_is_marked_with_the_source_hash(tmp_path: Path, tinycnn_path: Path):
    out, again = tmp_path / "o.onnx", tmp_path / "again.onnx"
    assert main(["optimize", str(tinycnn_path), "-o", str(out), "-q"]) == 0
    assert marks(out) == [sha(tinycnn_path)]
    # An optimize output optimized again: one mark, naming its own source.
    assert main(["optimize", str(out), "-o", str(again), "-q"]) == 0
    assert marks(again) == [sha(out)]


def test_existing_foreign_file_is_refused_and_left_as_it_was(
    tmp_path: Path, tinycnn_path: Path, capsys
):
    # Replacing any existing file (earlier behaviour) could destroy the user's own model.
    out = tmp_path / "mine.onnx"
    out.write_bytes(tinycnn_path.read_bytes())
    before = sha(out)
    assert main(["optimize", str(tinycnn_path), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lepton-compile: error: ") and err.count("\n") == 1
    assert "was not written by lepton-compile optimize" in err and "--force" in err
    assert sha(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.onnx"]


def test_earlier_optimize_output_is_replaced(tmp_path: Path, tinycnn_path: Path, mlp_path: Path):
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(mlp_path), "-o", str(out), "-q"]) == 0
    assert main(["optimize", str(tinycnn_path), "-o", str(out), "-q"]) == 0
    assert marks(out) == [sha(tinycnn_path)]
    assert [p.name for p in tmp_path.iterdir() if p.name != "mlp.onnx"] == ["o.onnx"]


def test_force_replaces_a_foreign_file(tmp_path: Path, tinycnn_path: Path):
    out = tmp_path / "o.onnx"
    out.write_bytes(b"old")
    assert main(["optimize", str(tinycnn_path), "-o", str(out), "-q", "--force"]) == 0
    onnx.checker.check_model(onnx.load(out))
    assert marks(out) == [sha(tinycnn_path)]


def test_force_never_replaces_the_input(tmp_path: Path, mlp_path: Path, capsys):
    before = sha(mlp_path)
    assert main(["optimize", str(mlp_path), "-o", str(mlp_path), "-q", "--force"]) == 2
    assert "is the input model" in capsys.readouterr().err
    assert sha(mlp_path) == before


STRING_MODEL = """
<ir_version: 8, opset_import: ["" : 17]>
g (string[2] s, float[2] x) => (string[2] t, float[2] y) {
    t = Identity (s)
    y = Relu (x)
}
"""


def test_unverifiable_model_is_an_error_unless_no_verify(tmp_path: Path, capsys):
    # Before: a traceback, an unverified model written and exit code 0.
    model = tmp_path / "strings.onnx"
    onnx.save(text_model(STRING_MODEL), model)
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(model), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert err.count("\n") == 1 and err.startswith(f"lepton-compile: error: {model}: ")
    assert "cannot be verified (no inputs can be generated: input 's'" in err
    assert "nothing written" in err and "--no-verify" in err
    assert "Traceback" not in captured.out + err
    assert not out.exists() and not list(tmp_path.glob(".*"))

    assert main(["optimize", str(model), "-o", str(out), "--no-verify"]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "verification: off (--no-verify)" in captured.out
    assert out.exists()


def test_failed_shape_inference_is_one_log_line(tmp_path: Path, capsys):
    # onnx-ir logs a failed inference with its traceback; the passes say it in one line.
    model = tmp_path / "strings.onnx"
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (string[3] s, float[2] x) => (bool[3] e, float[2] y) {
            k = Constant <value = string[3] {"a", "b", "c"}> ()
            e = Equal (s, k)
            y = Relu (x)
        }
        """
    )  # string Equal needs opset 19: onnx's shape inference refuses this one
    onnx.save(m, model)
    out = tmp_path / "out.onnx"
    args = [str(model), "-o", str(out), "--no-verify", "--target", "lepton", "-v"]
    assert main(["optimize", *args]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err


def test_failed_write_leaves_nothing(tmp_path: Path, tinycnn_path: Path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", fail)
    out = tmp_path / "o.onnx"
    assert main(["optimize", str(tinycnn_path), "-o", str(out), "-q"]) == 2
    assert list(tmp_path.iterdir()) == []


def _invalid_graph(path: Path) -> None:
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x) => (float[2] y) {
            y = Relu (x)
        }
        """
    )
    model.graph.node[0].input[0] = "undefined"
    onnx.save(model, path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such file"),
        ("truncated", "not a valid ONNX file"),
        ("not-onnx", "not a valid ONNX file"),
        ("invalid-graph", "invalid ONNX graph"),
        ("unknown-pass", "unknown pass 'bogus'; known passes: "),
        ("unknown-skip", "unknown pass 'nope'"),
        ("unknown-pipeline", "unknown pipeline 'nope'; known pipelines: "),
        ("bad-shape", "--input-shape x: rank 1 given"),
        ("shape-unknown-input", "which is not an input of"),
        ("verify-shape-unknown-input", "not a fed input"),
        ("output-is-input", "is the input model"),
        ("output-is-directory", "is a directory"),
        ("bad-target", "invalid choice"),
    ],
)
def test_bad_input_one_line_exit_2(case, message, tmp_path: Path, mlp_path: Path, capsys):
    model, extra = mlp_path, []
    if case == "missing":
        model = tmp_path / "missing.onnx"
    elif case == "truncated":
        model = tmp_path / "t.onnx"
        model.write_bytes(mlp_path.read_bytes()[:200])
    elif case == "not-onnx":
        model = tmp_path / "n.onnx"
        model.write_text("hello, I am not a model\n")
    elif case == "invalid-graph":
        model = tmp_path / "bad.onnx"
        _invalid_graph(model)
    extra = {
        "unknown-pass": ["--passes", "fold-constants,bogus"],
        "unknown-skip": ["--skip", "nope"],
        "unknown-pipeline": ["--pipeline", "nope"],
        "bad-shape": ["--input-shape", "x=4"],
        "shape-unknown-input": ["--input-shape", "y=4"],
        "verify-shape-unknown-input": ["--verify-shape", "y=4"],
        "bad-target": ["--target", "tpu"],
    }.get(case, [])
    out = mlp_path if case == "output-is-input" else tmp_path / "out.onnx"
    if case == "output-is-directory":
        out.mkdir()
    before = sha(mlp_path)
    code = main(["optimize", str(model), "-o", str(out), "-q", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    if case != "bad-target":  # argparse prints its usage line first
        assert err.count("\n") == 1 and err.startswith("lepton-compile: error: ")
    assert sha(mlp_path) == before
    if case == "output-is-directory":
        assert out.is_dir() and not list(out.iterdir())
    elif case != "output-is-input":
        assert not out.exists()
    assert not list(tmp_path.glob(".*tmp"))


def test_passes_subcommand_still_works(capsys):
    assert main(["passes"]) == 0
    text = capsys.readouterr().out
    assert "fold-constants" in text and "fused" in text


def test_help_lists_optimize(capsys):
    assert main(["--help"]) == 0
    assert "lepton-compile optimize MODEL" in capsys.readouterr().out
    assert main(["optimize", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--no-verify" in text and "--no-speed-check" in text and "--force" in text
    assert "cannot be checked" in text and "not be slower than the input" in text
