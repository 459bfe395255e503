"""The lepton backend's session API: options, modes, specialization, errors, torch import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper, parser

torch = pytest.importorskip("torch", reason="the lepton backend needs torch")

from lepton_compile.errors import NotSupported  # noqa: E402
from lepton_compile.runtime.lepton import (  # noqa: E402
    LeptonBackend,
    LeptonSession,
    backend,
    parse_options,
    supported_ops,
)

RNG = np.random.default_rng(1)

CNN = """
<ir_version: 8, opset_import: ["" : 17]>
cnn (float[N, 3, 16, 16] x) => (float[N, 10] y) {
    c1 = Conv <pads = [1, 1, 1, 1], strides = [2, 2]> (x, w1, b1)
    r1 = Relu (c1)
    c2 = Conv <pads = [1, 1, 1, 1], group = 2> (r1, w2, b2)
    bn = BatchNormalization (c2, s, t, mu, var)
    r2 = HardSwish (bn)
    p = GlobalAveragePool (r2)
    f = Flatten (p)
    y = Gemm <transB = 1> (f, wf, bf)
}
"""


def _cnn(tmp_path: Path, batch: int | None = None) -> Path:
    m = parser.parse_model(CNN if batch is None else CNN.replace("[N,", f"[{batch},"))
    weights = {
        "w1": RNG.standard_normal((8, 3, 3, 3)),
        "b1": RNG.standard_normal(8),
        "w2": RNG.standard_normal((8, 4, 3, 3)),
        "b2": RNG.standard_normal(8),
        "s": RNG.random(8) + 0.5,
        "t": RNG.standard_normal(8),
        "mu": RNG.standard_normal(8),
        "var": RNG.random(8) + 0.5,
        "wf": RNG.standard_normal((10, 8)),
        "bf": RNG.standard_normal(10),
    }
    for k, v in weights.items():
        m.graph.initializer.append(numpy_helper.from_array(v.astype(np.float32), k))
    path = tmp_path / f"cnn{batch or ''}.onnx"
    onnx.save(m, path)
    return path


def _ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_backend_protocol(tmp_path: Path) -> None:
    be = LeptonBackend()
    assert be.name == "lepton"
    assert be.devices() == (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    sess = be.load(_cnn(tmp_path, 2), "cpu")
    assert sess.input_names == ["x"] and sess.output_names == ["y"]
    x = RNG.random((2, 3, 16, 16), dtype=np.float32)
    np.testing.assert_allclose(
        sess.run({"x": x})["y"], _ort(tmp_path / "cnn2.onnx", {"x": x}), rtol=1e-4, atol=1e-4
    )
    info = sess.describe()
    for key in (
        "backend",
        "torch",
        "device",
        "device_name",
        "dtype",
        "channels_last",
        "cuda_graphs",
        "compile",
        "threads",
        "lowering",
    ):
        assert key in info, key
    assert info["backend"] == "lepton" and info["torch"] == torch.__version__
    assert info["cuda_graphs"] is False  # never on the CPU
    if not torch.cuda.is_available():
        with pytest.raises(NotSupported, match="cuda"):
            be.load(tmp_path / "cnn2.onnx", "cuda")


def test_registered_in_runtime(tmp_path: Path) -> None:
    import lepton_compile
    from lepton_compile import runtime

    assert "lepton" in runtime.BACKENDS

    sess = lepton_compile.load(_cnn(tmp_path, 1), backend="lepton", device="cpu")
    assert sess.describe()["backend"] == "lepton"


def test_options_are_validated() -> None:
    assert parse_options("cpu", {"cuda_graphs": True})["cuda_graphs"] is False
    assert parse_options("cuda", {})["cuda_graphs"] is True
    assert parse_options("cuda:0", {"cuda_graphs": False})["cuda_graphs"] is False
    assert parse_options("cpu", {"dtype": "bfloat16"})["dtype"] == "bf16"
    for bad in ({"dtype": "int8"}, {"compile": "tvm"}, {"threads": 0}):
        with pytest.raises(ValueError):
            parse_options("cpu", bad)


def test_dynamic_batch_lowers_per_shape(tmp_path: Path) -> None:
    path = _cnn(tmp_path)
    sess = LeptonBackend().load(path, "cpu", {"threads": 1})
    assert sess.describe()["programs"] == 0  # dynamic: lowered at the first run
    for n in (1, 3, 1):
        x = RNG.random((n, 3, 16, 16), dtype=np.float32)
        np.testing.assert_allclose(
            sess.run({"x": x})["y"], _ort(path, {"x": x}), rtol=1e-4, atol=1e-4
        )
    assert sess.describe()["programs"] == 2
    assert sess.describe()["threads"] == 1


@pytest.mark.parametrize("dtype, tol", [("fp16", 3e-2), ("bf16", 1e-1), ("fp32", 1e-4)])
def test_compute_dtypes_keep_float_io(tmp_path: Path, dtype: str, tol: float) -> None:
    path = _cnn(tmp_path, 2)
    x = RNG.random((2, 3, 16, 16), dtype=np.float32)
    ref = _ort(path, {"x": x})
    sess = LeptonBackend().load(path, "cpu", {"dtype": dtype})
    y = sess.run({"x": x})["y"]
    assert y.dtype == np.float32
    scale = np.abs(ref).max()
    assert np.abs(y - ref).max() <= tol * scale
    program, _ = next(iter(sess._programs.values()))
    buffers = {b.dtype for b in program.module.buffers() if b.is_floating_point()}
    assert buffers == {dict(fp16=torch.float16, bf16=torch.bfloat16, fp32=torch.float32)[dtype]}


def test_channels_last(tmp_path: Path) -> None:
    path = _cnn(tmp_path, 2)
    x = RNG.random((2, 3, 16, 16), dtype=np.float32)
    sess = LeptonBackend().load(path, "cpu", {"channels_last": True})
    np.testing.assert_allclose(sess.run({"x": x})["y"], _ort(path, {"x": x}), rtol=1e-4, atol=1e-4)
    program, _ = next(iter(sess._programs.values()))
    weights = [b for b in program.module.buffers() if b.dim() == 4]
    assert weights and all(b.is_contiguous(memory_format=torch.channels_last) for b in weights)
    assert sess.describe()["channels_last"] is True


def test_cuda_graph_capture_failure_falls_back(tmp_path: Path, monkeypatch) -> None:
    """The capture path is chosen only with cuda_graphs; a failed capture runs eagerly."""
    sess = LeptonBackend().load(_cnn(tmp_path, 1), "cpu")
    calls = []

    def refuse(fn, example):
        calls.append(fn)
        raise RuntimeError("capture failed: operation not permitted when stream is capturing")

    monkeypatch.setattr(backend, "_CudaGraph", refuse)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    program, runner = next(iter(sess._programs.values()))
    assert isinstance(runner, backend._Eager) and not calls  # CPU: never attempted
    sess.options["cuda_graphs"] = True
    fallback = sess._runner(program)
    assert calls and isinstance(fallback, backend._Eager)
    info = sess.describe()
    assert info["cuda_graphs"] is False and "capture failed" in info["cuda_graphs_fallback"]


def test_values_of_shape_inputs_are_pinned(tmp_path: Path) -> None:
    m = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 6] x, int64[2] shape) => (float[?, ?] y) {
            y = Reshape (x, shape)
        }
        """
    )
    sess = LeptonSession(m, "cpu", {})
    x = RNG.random((2, 6), dtype=np.float32)
    assert sess.run({"x": x, "shape": np.array([3, 4])})["y"].shape == (3, 4)
    assert sess.run({"x": x, "shape": np.array([-1, 2])})["y"].shape == (6, 2)
    assert sess.describe()["pinned_inputs"] == ["shape"]
    assert sess.describe()["programs"] == 2


def test_bad_feeds(tmp_path: Path) -> None:
    sess = LeptonBackend().load(_cnn(tmp_path, 1), "cpu")
    x = RNG.random((1, 3, 16, 16), dtype=np.float32)
    with pytest.raises(ValueError, match="missing input"):
        sess.run({})
    with pytest.raises(ValueError, match="unknown input"):
        sess.run({"x": x, "z": x})
    with pytest.raises(ValueError, match="expected"):
        sess.run({"x": x.astype(np.float64)})


def test_without_torch(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(backend, "torch_available", lambda: False)
    be = LeptonBackend()
    assert be.devices() == []
    with pytest.raises(NotSupported, match="needs torch: pip install"):
        be.load(tmp_path / "missing.onnx", "cpu")


def test_import_does_not_import_torch() -> None:
    code = (
        "import sys, lepton_compile.runtime.lepton as m; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(m.LeptonBackend.name)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "lepton"


def test_supported_ops_cover_the_required_set() -> None:
    ops = set(supported_ops())
    required = set(
        """Conv ConvTranspose Gemm MatMul BatchNormalization Relu Sigmoid HardSwish HardSigmoid
        Add Mul MaxPool AveragePool GlobalAveragePool Resize Concat Split Slice Gather Reshape
        Transpose Squeeze Unsqueeze Expand Tile Pad Shape Size ConstantOfShape Range ReduceMean
        ReduceSum Softmax LayerNormalization Gelu Where Cast Erf QuantizeLinear DequantizeLinear
        ai.lepton.FusedConv ai.lepton.FusedGemm ai.lepton.FusedMatMul""".split()
    )
    assert required <= ops, sorted(required - ops)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    "options",
    [{}, {"cuda_graphs": False}, {"dtype": "fp16"}, {"channels_last": True, "dtype": "bf16"}],
    ids=["graphs", "eager", "fp16-graphs", "nhwc-bf16-graphs"],
)
def test_cuda_modes(tmp_path: Path, options: dict) -> None:
    path = _cnn(tmp_path, 2)
    sess = LeptonBackend().load(path, "cuda", options)
    info = sess.describe()
    assert info["cuda_graphs"] is options.get("cuda_graphs", True), info["cuda_graphs_fallback"]
    tol = {"fp16": 3e-2, "bf16": 1e-1}.get(options.get("dtype", ""), 1e-4)
    for _ in range(3):  # replays see fresh inputs
        x = RNG.random((2, 3, 16, 16), dtype=np.float32)
        y = sess.run({"x": x})["y"]
        ref = _ort(path, {"x": x})
        assert y.dtype == np.float32
        assert np.abs(y - ref).max() <= tol * np.abs(ref).max()


def test_backend_modes_as_variant_options() -> None:
    from lepton_compile.runtime.lepton import KERNEL_MODES, option_label, option_space

    cpu, cuda = option_space("cpu"), option_space("cuda:0")
    assert cpu == {"channels_last": (False, True), "kernels": ("auto",)}
    assert set(cuda) == {"channels_last", "kernels", "cuda_graphs", "tf32"}
    assert set(cuda["kernels"]) == set(KERNEL_MODES) and cuda["kernels"][0] == "auto"
    for space, device in ((cpu, "cpu"), (cuda, "cuda")):
        defaults = {name: values[0] for name, values in space.items()}
        parsed = parse_options(device, defaults)
        for name, value in defaults.items():
            assert parsed[name] == value, name  # the first value is the default
        assert option_label(defaults) == ""
    assert option_label({"channels_last": True, "kernels": "torch", "cuda_graphs": False}) == (
        "cl+nograph+k=torch"
    )


def test_describe_reports_kernel_choices(tmp_path: Path) -> None:
    sess = LeptonBackend().load(_cnn(tmp_path, 1), "cpu", {"kernels": "torch"})
    info = sess.describe()
    assert info["kernels"] == "torch"
    assert info["kernel_layers"] == [] and info["kernel_summary"] == "0 of 0 layers on our kernels"
    assert info["kernel_choice_counts"] == {}
