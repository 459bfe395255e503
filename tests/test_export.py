"""Export: a compile's variants as AOTInductor packages or ONNX files, and lepton-run.

Unit tests (the raw tensor format, the errors that come before any compiling) run always.
The slow ones export a small conv net and a small transformer block with AOTInductor on the
CPU, load the packages in a Python that never imports lepton_compile, build lepton-run with
CMake once per session, run it, and compare both with onnxruntime.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import text_model

from lepton_compile import rawtensors
from lepton_compile.cli import main
from lepton_compile.errors import InputError
from lepton_compile.passes.verify import DEFAULT_TOLERANCES

FP32 = DEFAULT_TOLERANCES["float32"]


def _close(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = max(float(np.max(np.abs(expected))), FP32.min_scale)
    np.testing.assert_allclose(actual, expected, rtol=FP32.rtol, atol=FP32.atol * scale)


def _ort(model: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


# ---------------------------------------------------------------------------------------
# Unit: the tensor format and the errors before any work.


def test_raw_tensors_round_trip_every_dtype(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tensors = {
        "x": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "half": rng.standard_normal(5).astype(np.float16),
        "ids": rng.integers(0, 100, (1, 7)).astype(np.int64),
        "mask": np.array([[True, False]]),
        "scalar": np.array(3, dtype=np.int32),
        "empty": np.zeros((0, 4), dtype=np.uint8),
    }
    back = rawtensors.read(rawtensors.write(tmp_path / "t.lt", tensors))
    assert list(back) == list(tensors)
    for name, value in tensors.items():
        assert back[name].dtype == value.dtype and back[name].shape == value.shape
        np.testing.assert_array_equal(back[name], value)


def test_raw_tensors_reject_malformed_files(tmp_path: Path) -> None:
    data = rawtensors.encode({"x": np.ones(4, np.float32)})
    with pytest.raises(rawtensors.FormatError, match="truncated"):
        rawtensors.decode(data[:-3], "t.lt")
    with pytest.raises(rawtensors.FormatError, match="not a tensor file"):
        rawtensors.decode(b"PK\x03\x04" + data[4:], "t.lt")
    with pytest.raises(ValueError, match="complex64"):
        rawtensors.encode({"z": np.ones(2, np.complex64)})


def test_export_of_something_that_is_not_a_compile_is_bad_input(tmp_path: Path, capsys) -> None:
    (tmp_path / "mine").mkdir()
    assert main(["export", str(tmp_path / "mine")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no report.json" in err[0]
    assert main(["export", str(tmp_path / "missing")]) == 2


def test_export_help_names_the_compile_directory(capsys) -> None:
    assert main(["export", "--help"]) == 0
    out = capsys.readouterr().out
    assert "OUTDIR" in out and "--build-runner" in out and "lepton-run" in out


def test_export_refuses_a_directory_of_the_users_files(tmp_path: Path) -> None:
    from lepton_compile.outdir import check_export_dir

    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="did not write"):
        check_export_dir(tmp_path / "deploy")
    check_export_dir(tmp_path / "deploy", force=True)


def test_runner_build_without_cmake_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from lepton_compile.native_build import NativeBuildError, build_runner

    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no cmake on it
    with pytest.raises(NativeBuildError, match="cmake not found"):
        build_runner(tmp_path / "build")


# ---------------------------------------------------------------------------------------
# Slow: real compiles, AOTInductor packages, the CMake build of lepton-run.

TRANSFORMER = """
<ir_version: 8, opset_import: ["" : 17]>
block (float[1, 8, 16] x) => (float[1, 8, 16] y) {
    q = MatMul (x, wq)
    k = MatMul (x, wk)
    v = MatMul (x, wv)
    kt = Transpose <perm = [0, 2, 1]> (k)
    s = MatMul (q, kt)
    ss = Mul (s, scale)
    p = Softmax <axis = -1> (ss)
    a = MatMul (p, v)
    o = MatMul (a, wo)
    r = Add (x, o)
    n = LayerNormalization <axis = -1> (r, gamma, beta)
    h = MatMul (n, w1)
    hb = Add (h, b1)
    g = Relu (hb)
    f = MatMul (g, w2)
    y = Add (n, f)
}
"""


def _transformer(path: Path) -> Path:
    rng = np.random.default_rng(1)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.2).astype(np.float32)

    weights = {
        "wq": w(16, 16),
        "wk": w(16, 16),
        "wv": w(16, 16),
        "wo": w(16, 16),
        "scale": np.array(0.25, np.float32),
        "gamma": np.ones(16, np.float32),
        "beta": np.zeros(16, np.float32),
        "w1": w(16, 32),
        "b1": w(32),
        "w2": w(32, 16),
    }
    onnx.save(text_model(TRANSFORMER, weights), path)
    return path


def _compile(model: Path, out: Path):
    import lepton_compile

    result = lepton_compile.compile(
        model,
        recipes=["original"],
        backends=["lepton", "ort"],
        quick=True,
        isolate=False,
        eval_samples=2,
        calibration_samples=0,
    )
    result.save(out)
    return result


@pytest.fixture(scope="module")
def conv_compile(tinycnn_path: Path, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("torch")
    return _compile(tinycnn_path, tmp_path_factory.mktemp("conv") / "tinycnn.lepton")


@pytest.fixture(scope="module")
def transformer_compile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    base = tmp_path_factory.mktemp("block")
    out = base / "block.lepton"
    _compile(_transformer(base / "block.onnx"), out)
    return out


def _need_cxx() -> None:
    if not (shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")):
        pytest.skip("no C++ compiler: AOTInductor and the runner need one")


@pytest.fixture(scope="session")
def runner(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lepton-run, built once per test session in a fresh CMake tree."""
    pytest.importorskip("torch")
    _need_cxx()
    if shutil.which("cmake") is None:
        pytest.skip("no cmake: lepton-run cannot be built")
    from lepton_compile.native_build import build_runner

    built = build_runner(tmp_path_factory.mktemp("native-build"))
    print(f"\nlepton-run built in {built.seconds:.1f} s")
    return built.path


# A Python with a clean sys.modules: torch only, the package, and the inputs as .npz.
_LOAD_WITHOUT_US = """
import sys, numpy as np, torch
package, feeds, out = sys.argv[1:4]
names = sys.argv[4].split(",")
model = torch._inductor.aoti_load_package(package)
feed = np.load(feeds)
outs = model(*[torch.from_numpy(feed[n]) for n in names])
np.savez(out, *[t.numpy() for t in outs])
assert not any(m.split(".")[0] == "lepton_compile" for m in sys.modules), "imported us"
"""


def _load_without_lepton(export_dir: Path, tmp_path: Path) -> tuple[list[np.ndarray], dict]:
    manifest = json.loads((export_dir / "export.json").read_text())
    feed = rawtensors.read(export_dir / manifest["input_files"][0])
    np.savez(tmp_path / "feed.npz", **feed)
    names = ",".join(i["name"] for i in manifest["inputs"])
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(_LOAD_WITHOUT_US),
            str(export_dir / "model.pt2"),
            str(tmp_path / "feed.npz"),
            str(tmp_path / "outs.npz"),
            names,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    outs = np.load(tmp_path / "outs.npz")
    return [outs[f"arr_{i}"] for i in range(len(outs.files))], feed


@pytest.mark.slow
def test_conv_net_exports_loads_without_us_and_runs_natively(
    conv_compile, runner: Path, tmp_path: Path
) -> None:
    out = tmp_path / "deploy"
    result = conv_compile.export(
        out, variant="original-lepton-cpu", build_runner=True, build_dir=runner.parent, quick=True
    )
    m = result.manifest
    assert m["format"] == "pt2" and (out / "model.pt2").is_file()
    assert m["parity"]["package"]["passed"] and m["parity"]["runner"]["passed"]
    assert m["latency"]["runner_over_python_p50"] > 0
    assert (out / "bin" / "lepton-run").is_file()

    outs, feed = _load_without_lepton(out, tmp_path)
    expected = _ort(conv_compile.saved_to / "variants" / "original.onnx", feed)
    _close(outs[0], expected[m["outputs"][0]])

    proc = subprocess.run(
        [str(runner), str(out / "model.pt2"), str(out / m["input_files"][0]), "--save-outputs",
         str(tmp_path / "native.lt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "sum=" in proc.stdout
    native = rawtensors.read(tmp_path / "native.lt")
    for name, value in expected.items():
        _close(native[name], value)


@pytest.mark.slow
def test_transformer_block_exports_and_matches_onnxruntime(
    transformer_compile: Path, runner: Path, tmp_path: Path, capsys
) -> None:
    _need_cxx()
    out = tmp_path / "block-export"
    code = main(
        ["export", str(transformer_compile), "--variant", "original-lepton-cpu", "-o", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    outs, feed = _load_without_lepton(out, tmp_path)
    expected = _ort(transformer_compile / "variants" / "original.onnx", feed)
    _close(outs[0], expected["y"])

    proc = subprocess.run(
        [str(runner), str(out / "model.pt2"), str(out / "inputs" / "0000.lt"), "--json",
         "--bench", "--quick", "--save-outputs", str(tmp_path / "native.lt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _close(rawtensors.read(tmp_path / "native.lt")["y"], expected["y"])
    result = json.loads(proc.stdout)
    assert result["outputs"][0]["name"] == "y" and result["outputs"][0]["shape"] == [1, 8, 16]
    assert np.isclose(result["outputs"][0]["sum"], float(expected["y"].astype(np.float64).sum()),
                      rtol=1e-3, atol=1e-3)  # fmt: skip
    bench = result["bench"]
    assert bench["runs"] >= bench["trials"] and bench["latency_ms"]["p50"] > 0
    assert bench["energy_j"] is None  # no NVML for a CPU package, and said so
    assert "CPU" in bench["energy_note"]

    (tmp_path / "feed.npz").write_bytes(b"PK\x03\x04 not ours")
    bad = subprocess.run(
        [str(runner), str(out / "model.pt2"), str(tmp_path / "feed.npz")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        f"lepton-run: error: {tmp_path / 'feed.npz'}: not a tensor file (no LEPTONT1 header)"
    ]


@pytest.mark.slow
def test_serving_profile_exports_a_model_per_batch_size(
    mlp_path: Path, runner: Path, tmp_path: Path
) -> None:
    import lepton_compile

    result = lepton_compile.compile(
        mlp_path, recipes=["original"], backends=["lepton", "ort"], batch_sizes=[1, 4],
        quick=True, isolate=False, eval_samples=2, calibration_samples=0,
    )  # fmt: skip
    result.save(tmp_path / "mlp.lepton")
    m = result.export(tmp_path / "out", variant="original-lepton-cpu").manifest
    assert {model["batch"] for model in m["models"].values()} == {1, 4}
    assert m["models"]["model"]["batch"] == m["batch"]
    assert all(p["passed"] for p in m["parity"].values()) and len(m["parity"]) == 2
    (other,) = [name for name in m["models"] if name != "model"]
    batch = m["models"][other]["batch"]
    assert other == f"batch_{batch}"

    rng = np.random.default_rng(3)
    feed = {"x": rng.standard_normal((batch, 32)).astype(np.float32)}
    rawtensors.write(tmp_path / "x.lt", feed)
    proc = subprocess.run(
        [str(runner), str(tmp_path / "out" / "model.pt2"), str(tmp_path / "x.lt"), "--model",
         other, "--save-outputs", str(tmp_path / "y.lt")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _close(rawtensors.read(tmp_path / "y.lt")["y"], _ort(mlp_path, feed)["y"])


@pytest.mark.slow
def test_ort_pick_exports_as_its_onnx_file(conv_compile, tmp_path: Path, capsys) -> None:
    out = tmp_path / "onnx-export"
    ort_variant = next(v.id for v in conv_compile.variants if v.backend == "ort")
    assert main(["export", str(conv_compile.saved_to), "--variant", ort_variant, "-o",
                 str(out), "--json"]) == 0  # fmt: skip
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["format"] == "onnx" and (out / "model.onnx").is_file()
    onnx.checker.check_model(str(out / "model.onnx"))
    assert main(["export", str(conv_compile.saved_to), "--variant", ort_variant, "--format",
                 "pt2", "-o", str(tmp_path / "x")]) == 2  # fmt: skip
    assert "--format onnx" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_op_that_cannot_be_exported_is_named(conv_compile, tmp_path: Path) -> None:
    """A layer on our Triton kernel in the interpreter (kernels=triton on the CPU) cannot be
    compiled ahead of time: the error names the op. In a fresh process with the interpreter
    chosen (TRITON_INTERPRET=1) before triton is imported."""
    pytest.importorskip("triton")
    fused = conv_compile.saved_to / "variants" / "fused-lepton.onnx"
    if not fused.exists():
        import lepton_compile

        res = lepton_compile.compile(
            conv_compile.model.path, recipes=["fused-lepton"], backends=["lepton"], quick=True,
            isolate=False, eval_samples=1, calibration_samples=0,
        )  # fmt: skip
        fused = next(v.artifact for v in res.variants if v.id.startswith("fused-lepton"))
    script = textwrap.dedent(
        """
        import sys, numpy as np
        from pathlib import Path
        from lepton_compile.export import ExportError, lower_variant, package
        feed = {"images": np.zeros((1, 3, 96, 96), np.float32)}
        lowered = lower_variant(Path(sys.argv[1]), "cpu", {"kernels": "triton"}, feed)
        try:
            package(lowered, feed, Path(sys.argv[2]), "fused-lepton-lepton-cpu")
        except ExportError as e:
            print(e)
            sys.exit(0)
        sys.exit("exported")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(fused), str(tmp_path / "m.pt2")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TRITON_INTERPRET": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cannot be exported: op lepton::conv2d" in proc.stdout
    assert "interpreter" in proc.stdout
    assert not (tmp_path / "m.pt2").exists()


@pytest.mark.slow
def test_missing_compiler_is_one_clear_error(conv_compile, tmp_path: Path) -> None:
    env = {**os.environ, "CXX": str(tmp_path / "no-such-c++"), "PATH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "lepton_compile", "export", str(conv_compile.saved_to),
         "--variant", "original-lepton-cpu", "-o", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("lepton-compile: error: no C++ compiler found")
    assert not (tmp_path / "out").exists()
