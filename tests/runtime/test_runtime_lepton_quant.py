"""Quantized models on lepton (CPU, torch's integer and FP8 kernels) against onnxruntime.

Models are the project's own: small nets from benchmarks/e2e_models.py (a conv net with a
residual and a depthwise layer, an MLP, an attention block) built by lepton-compile's
recipes (int8-qdq, int8-gpu, int8-dynamic, fp8, int4-weight).

Reference: onnxruntime's CPU result for the same quantized model with its graph
optimizations off, which computes the QDQ graph as ONNX defines it (dequantize, float op,
quantize). Tolerances, as max |lepton - ort| over the output's largest magnitude:

    int8 QDQ     2e-2  integers are exact; a float rounding of one scale multiply can move a
                       value across a rounding boundary of the next QuantizeLinear (one step)
    FP8 QDQ      2e-2  likewise, with E4M3's coarser steps
    int8-dynamic 1e-5  MatMulInteger's int32 result is exact
    int4         1e-4  the weights dequantize exactly; fp32 accumulation order differs

(onnxruntime's own default optimizations, which fuse QDQ into integer kernels, differ from
its unoptimized result by up to 2.3e-2 on the attention block.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch", reason="the lepton backend needs torch")
ort = pytest.importorskip("onnxruntime")

from lepton_compile.accuracy import compare  # noqa: E402
from lepton_compile.passes import ort_session  # noqa: E402
from lepton_compile.runtime.lepton import LeptonSession, parse_options  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOL = {"int8": 2e-2, "fp8": 2e-2, "int8-dynamic": 1e-5, "int4": 1e-4}
RECIPE_DTYPE = {
    "int8-qdq": "int8",
    "int8-gpu": "int8",
    "fp8": "fp8",
    "int8-dynamic": "int8-dynamic",
    "int4-weight": "int4",
}


sys.path.append(str(REPO / "benchmarks"))  # last: its module names must not shadow anything
import e2e_models as E  # noqa: E402

_CACHE: dict[tuple[str, str], tuple[onnx.ModelProto, dict]] = {}


def variant(model: str, recipe: str) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """(the recipe's model of `model`, held-out feeds), built once per test session."""
    key = (model, recipe)
    if key not in _CACHE:
        m = E.MODELS[model]()
        calibration = [E.example_feeds(m, seed=s) for s in range(1, 5)]
        _CACHE[key] = (E.recipe_variant(recipe, m, calibration), E.example_feeds(m, seed=0))
    return _CACHE[key]


def ort_run(model: onnx.ModelProto, feeds: dict, optimize: bool = False) -> np.ndarray:
    """onnxruntime's CPU result; its graph optimizations off unless `optimize`."""
    level = "all" if optimize else "disable"
    return ort_session.session(model, optimization=level).run(None, feeds)[0]


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.abs(got.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12))


def program_ops(sess: LeptonSession) -> list[str]:
    program, _ = next(iter(sess._programs.values()))
    return [str(n.target) for n in program.module.graph.nodes if n.op == "call_function"]


def program_buffers(sess: LeptonSession) -> list[torch.Tensor]:
    program, _ = next(iter(sess._programs.values()))
    return list(program.module.buffers())


# -- outputs against onnxruntime ----------------------------------------------------------


@pytest.mark.parametrize("recipe", list(RECIPE_DTYPE))
@pytest.mark.parametrize("model", ["convnet", "mlp", "attention"])
def test_quantized_models_match_onnxruntime(model: str, recipe: str) -> None:
    qmodel, feeds = variant(model, recipe)
    sess = LeptonSession(qmodel, "cpu", {})
    got = sess.run(feeds)[sess.output_names[0]]
    err = rel_err(got, ort_run(qmodel, feeds))
    assert err <= TOL[RECIPE_DTYPE[recipe]], f"{model} {recipe}: {err:.3g}"
    info = sess.describe()
    assert info["kernels"] == "auto"
    assert (
        info["kernel_summary"].endswith("layers on our kernels")
        or "layer on" in (info["kernel_summary"])
    )
    for layer in info["kernel_layers"]:  # the CPU default: torch's kernels, our kernels idle
        assert layer["choice"] == "torch" and layer["ours"] is False, layer
        assert "triton" in layer["unavailable"], layer


# -- integer arithmetic, not float emulation ------------------------------------------------


@pytest.mark.parametrize("model", ["convnet", "mlp", "attention"])
def test_cpu_int8_computes_in_integers(model: str) -> None:
    qmodel, feeds = variant(model, "int8-qdq")
    sess = LeptonSession(qmodel, "cpu", {"kernels": "torch"})
    sess.run(feeds)
    layers = sess.describe()["kernel_layers"]
    gemm_layers = [lay for lay in layers if lay["op"] in ("QMatMul", "QGemm") or _is_gemm_conv(lay)]
    assert gemm_layers, layers
    ops = program_ops(sess)
    # One integer matrix product per GEMM-shaped layer (convs via im2col).
    assert ops.count("aten._int_mm.default") == len(gemm_layers)
    # Every Conv / Gemm / MatMul with a constant weight is a quantized layer ...
    weights = {
        tuple(i.dims)
        for i in qmodel.graph.initializer
        if i.data_type in (TensorProto.INT8, TensorProto.UINT8) and len(i.dims) >= 2
    }
    consts = [n for n in qmodel.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    weighted = sum(1 for n in consts if _weight_shape(qmodel, n) in weights)
    assert len(layers) == weighted
    # ... whose weights enter the program as int8, never as floats.
    for buf in program_buffers(sess):
        if buf.is_floating_point() and buf.dim() >= 2:
            assert buf.numel() < min(int(np.prod(s)) for s in weights), tuple(buf.shape)
    assert any(b.dtype == torch.int8 and b.dim() == 2 for b in program_buffers(sess))


def _is_gemm_conv(layer: dict) -> bool:
    return layer["op"] == "QConv" and "depthwise" not in layer["unavailable"].get("triton", "")


def _weight_shape(model: onnx.ModelProto, node: onnx.NodeProto) -> tuple[int, ...] | None:
    """The shape of the quantized weight behind a node's input 1 (through its DequantizeLinear)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: tuple(i.dims) for i in model.graph.initializer}
    dq = producers.get(node.input[1])
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    return inits.get(dq.input[0])


@pytest.mark.parametrize("model", ["mlp", "attention"])
def test_dynamic_int8_is_exact_and_integer(model: str) -> None:
    qmodel, feeds = variant(model, "int8-dynamic")
    sess = LeptonSession(qmodel, "cpu", {})
    got = sess.run(feeds)[sess.output_names[0]]
    assert rel_err(got, ort_run(qmodel, feeds, optimize=True)) <= TOL["int8-dynamic"]
    n = sum(1 for node in qmodel.graph.node if node.op_type == "MatMulInteger")
    assert n and program_ops(sess).count("aten._int_mm.default") == n
    assert [lay["op"] for lay in sess.describe()["kernel_layers"]] == ["MatMulInteger"] * n


@pytest.mark.parametrize("model", ["convnet", "mlp"])
def test_fp8_layers_run_scaled_mm(model: str) -> None:
    qmodel, feeds = variant(model, "fp8")
    sess = LeptonSession(qmodel, "cpu", {})
    sess.run(feeds)
    fp8_layers = [lay for lay in sess.describe()["kernel_layers"] if lay["op"].startswith("Q")]
    assert fp8_layers
    assert program_ops(sess).count("aten._scaled_mm.default") == len(fp8_layers)
    assert any(b.dtype == torch.float8_e4m3fn for b in program_buffers(sess))


def test_int4_layers_are_recorded() -> None:
    qmodel, feeds = variant("mlp", "int4-weight")
    sess = LeptonSession(qmodel, "cpu", {})
    sess.run(feeds)
    layers = sess.describe()["kernel_layers"]
    assert [lay["op"] for lay in layers] == ["MatMulNBits"] * 3
    assert sess.describe()["kernel_summary"] == "0 of 3 layers on our kernels"


# -- the integer ops themselves, zero points included ---------------------------------------


def _integer_model(op: str, x: np.ndarray, w: np.ndarray, x_zp, w_zp, **attrs) -> onnx.ModelProto:
    inits = [numpy_helper.from_array(w, "w")]
    names = ["x", "w"]
    for name, zp in (("x_zp", x_zp), ("w_zp", w_zp)):
        if zp is None:
            names.append("")
            continue
        if isinstance(zp, np.ndarray) and zp.ndim == 0 and name == "x_zp":
            inits.append(numpy_helper.from_array(zp, name))
        else:
            inits.append(numpy_helper.from_array(np.asarray(zp), name))
        names.append(name)
    while names[-1] == "":
        names.pop()
    node = helper.make_node(op, names, ["y"], **attrs)
    elem = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", elem[x.dtype], list(x.shape))],
        [helper.make_tensor_value_info("y", TensorProto.INT32, None)],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize(
    "w_dtype, w_zp",
    [(np.int8, None), (np.uint8, "per-channel"), (np.int8, "per-tensor")],
)
@pytest.mark.parametrize("group", [1, 2, 8])
def test_conv_integer_matches_onnxruntime(w_dtype, w_zp, group: int) -> None:
    rng = np.random.default_rng(group)
    x = rng.integers(0, 256, (2, 8, 9, 7), dtype=np.uint8)
    lo, hi = np.iinfo(w_dtype).min, np.iinfo(w_dtype).max + 1
    w = rng.integers(lo, hi, (8, 8 // group, 3, 3)).astype(w_dtype)
    zp = {
        None: None,
        "per-channel": rng.integers(0, 50, 8).astype(w_dtype),
        "per-tensor": np.array(3, w_dtype),
    }[w_zp]
    attrs = {"pads": [1, 2, 1, 0], "strides": [2, 1], "group": group}
    m = _integer_model("ConvInteger", x, w, np.array(117, np.uint8), zp, **attrs)
    sess = LeptonSession(m, "cpu", {})
    got = sess.run({"x": x})["y"]
    assert got.dtype == np.int32
    # ONNX: the input is padded with its zero point, so padding contributes nothing.
    xs = torch.from_numpy(x.astype(np.float64) - 117)
    ws = w.astype(np.float64) - (0 if zp is None else zp.reshape(-1, 1, 1, 1).astype(np.float64))
    xs = torch.nn.functional.pad(xs, (2, 0, 1, 1))
    want = torch.nn.functional.conv2d(xs, torch.from_numpy(ws), None, (2, 1), 0, 1, group)
    np.testing.assert_array_equal(got, want.numpy().astype(np.int64))
    if w_zp != "per-channel":  # onnxruntime takes one weight zero point only
        np.testing.assert_array_equal(got, ort_run(m, {"x": x}, optimize=True))
    assert "aten._int_mm.default" in program_ops(sess) or group == 8  # depthwise: int32 taps


@pytest.mark.parametrize("b_zp", [None, "per-column"])
def test_matmul_integer_matches_onnxruntime(b_zp) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 5, 24), dtype=np.uint8)
    b = rng.integers(0, 256, (24, 7), dtype=np.uint8)
    zp = rng.integers(0, 256, 7).astype(np.uint8) if b_zp else None
    m = _integer_model("MatMulInteger", a, b, np.array(201, np.uint8), zp)
    sess = LeptonSession(m, "cpu", {})
    np.testing.assert_array_equal(sess.run({"x": a})["y"], ort_run(m, {"x": a}, optimize=True))
    assert program_ops(sess).count("aten._int_mm.default") == 1


# -- a real CNN: an INT8 variant in integer arithmetic passes verification ------------------


def _cnn_int8_check(model: onnx.ModelProto, feeds_list: list[dict], calib: list[dict]) -> None:
    """int8-qdq of `model` on lepton: every layer in integers, verification as the driver's."""
    from lepton_compile.intake import find_score_outputs

    qmodel = E.recipe_variant("int8-qdq", model, calib)
    sess = LeptonSession(qmodel, "cpu", {})
    outs = [sess.run(f) for f in feeds_list]
    ref_sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    refs = [dict(zip(sess.output_names, ref_sess.run(None, f), strict=True)) for f in feeds_list]
    fid = compare(refs, outs, find_score_outputs(model), max_drop=0.01)  # the default constraint
    assert fid.passed, fid.to_dict()
    layers = sess.describe()["kernel_layers"]
    convs = sum(1 for n in qmodel.graph.node if n.op_type in ("Conv", "Gemm", "MatMul"))
    assert len(layers) == convs  # every layer quantized and on integers
    assert program_ops(sess).count("aten._int_mm.default") == sum(
        1 for lay in layers if lay["op"] != "QConv" or _is_gemm_conv(lay)
    )


def test_int8_example_cnn_passes_verification(tinycnn_path: Path) -> None:
    model = onnx.load(tinycnn_path)
    name = model.graph.input[0].name
    shape = [d.dim_value or 1 for d in model.graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    feeds = [{name: rng.random(shape, dtype=np.float32)} for _ in range(8)]
    _cnn_int8_check(model, feeds[4:], feeds[:4])


@pytest.mark.slow
def test_int8_zoo_cnn_passes_verification() -> None:
    from lepton_compile.bench import zoo

    path = zoo.default_cache_dir() / "ppocr-cls.onnx"
    if not path.exists():
        pytest.skip("ppocr-cls is not in the model cache (benchmarks/zoo.py fetch ppocr-cls)")
    model = onnx.load(str(path))
    feeds = [zoo.example_inputs("ppocr-cls", path, seed=s) for s in range(8)]
    for vi in model.graph.input:  # fix the dynamic dims to the example's
        if vi.name in feeds[0]:
            for d, v in zip(vi.type.tensor_type.shape.dim, feeds[0][vi.name].shape, strict=True):
                d.Clear()
                d.dim_value = v
    del model.graph.value_info[:]
    _cnn_int8_check(model, feeds[4:], feeds[:4])


def test_kernels_option_is_validated() -> None:
    assert parse_options("cpu", {})["kernels"] == "auto"
    assert parse_options("cpu", {"kernels": "torch"})["kernels"] == "torch"
    with pytest.raises(ValueError, match="kernels must be one of"):
        parse_options("cpu", {"kernels": "cuda"})
