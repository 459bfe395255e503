"""Per-op lowering on small ONNX text models: lepton (CPU) against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper, parser

torch = pytest.importorskip("torch", reason="the lepton backend needs torch")
ort = pytest.importorskip("onnxruntime")

from lepton_compile.errors import NotSupported  # noqa: E402
from lepton_compile.passes import lepton_ops  # noqa: E402
from lepton_compile.runtime.lepton import LeptonSession  # noqa: E402

RNG = np.random.default_rng(0)


def model(text: str, weights: dict[str, np.ndarray] | None = None) -> onnx.ModelProto:
    m = parser.parse_model(text)
    for name, value in (weights or {}).items():
        m.graph.initializer.append(numpy_helper.from_array(value, name))
    return m


def rand(*shape: int, dtype: type = np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def run_ort(m: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def check(
    m: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    options: dict | None = None,
    validate: bool = True,
) -> LeptonSession:
    if validate:
        onnx.checker.check_model(m)
    sess = LeptonSession(m, "cpu", options or {})
    got = sess.run(feeds)
    for name, ref in zip(sess.output_names, run_ort(m, feeds), strict=True):
        assert got[name].dtype == ref.dtype, name
        assert got[name].shape == ref.shape, name
        np.testing.assert_allclose(got[name], ref, rtol=rtol, atol=atol, err_msg=name)
    return sess


def single(
    op: str,
    attrs: str,
    inputs: str,
    outputs: str,
    body_inputs: str,
    opset: int = 17,
    weights: dict[str, np.ndarray] | None = None,
    out_names: str = "y",
) -> onnx.ModelProto:
    attr = f" <{attrs}>" if attrs else ""
    return model(
        f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        g ({inputs}) => ({outputs}) {{
            {out_names} = {op}{attr} ({body_inputs})
        }}
        """,
        weights,
    )


# -- convolution family -------------------------------------------------------------------

CONV_CASES = {
    "pads_asymmetric": "pads = [0, 1, 2, 1]",
    "strides_dilations": "strides = [2, 1], dilations = [1, 2], pads = [1, 1, 1, 1]",
    "same_lower": 'auto_pad = "SAME_LOWER", strides = [2, 2]',
    "same_upper": 'auto_pad = "SAME_UPPER"',
    "group": "group = 2, pads = [1, 1, 1, 1]",
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case: str) -> None:
    attrs = CONV_CASES[case]
    group = 2 if "group" in attrs else 1
    w = rand(6, 4 // group, 3, 3)
    m = single(
        "Conv",
        attrs,
        "float[1, 4, 9, 8] x",
        "float[?, ?, ?, ?] y",
        "x, w, b",
        weights={"w": w, "b": rand(6)},
    )
    check(m, {"x": rand(1, 4, 9, 8)})


@pytest.mark.parametrize(
    "attrs",
    [
        "strides = [2, 2], pads = [1, 1, 1, 1], output_padding = [1, 1]",
        "strides = [2, 2], output_shape = [10, 9]",
        "strides = [3, 2], pads = [0, 1, 2, 0], group = 2",
        'strides = [2, 2], auto_pad = "SAME_UPPER"',
        "strides = [2, 2], dilations = [2, 1], pads = [1, 0, 1, 0]",
    ],
)
def test_conv_transpose(attrs: str) -> None:
    group = 2 if "group" in attrs else 1
    m = single(
        "ConvTranspose",
        attrs,
        "float[1, 4, 5, 4] x",
        "float[?, ?, ?, ?] y",
        "x, w, b",
        weights={"w": rand(4, 6 // group, 3, 3), "b": rand(6)},
    )
    check(m, {"x": rand(1, 4, 5, 4)}, rtol=1e-4, atol=1e-4)


def test_conv_batchnorm_folds_into_one_convolution() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 3, 8, 8] x) => (float[1, 5, 8, 8] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
            y = BatchNormalization <epsilon = 0.001> (c, s, bb, mu, var)
        }
        """,
        {
            "w": rand(5, 3, 3, 3),
            "b": rand(5),
            "s": rand(5),
            "bb": rand(5),
            "mu": rand(5),
            # far outside float16's range: folded in float64, it never appears as a weight
            "var": (np.abs(rand(5)) * 1e6).astype(np.float32),
        },
    )
    sess = check(m, {"x": rand(1, 3, 8, 8)}, rtol=1e-4, atol=1e-5)
    ops = _aten_ops(sess)
    assert ops.count("convolution") == 1 and not any("batch_norm" in o for o in ops), ops
    x = rand(1, 3, 8, 8)
    fp16 = LeptonSession(m, "cpu", {"dtype": "fp16"}).run({"x": x})["y"]
    np.testing.assert_allclose(fp16, run_ort(m, {"x": x})[0], rtol=2e-2, atol=2e-2)


def _aten_ops(sess: LeptonSession) -> list[str]:
    program, _ = next(iter(sess._programs.values()))
    return [
        str(n.target).split(".")[1] if str(n.target).startswith("aten.") else str(n.target)
        for n in program.module.graph.nodes
        if n.op == "call_function"
    ]


def test_gemm_matmul_variants() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 6] a, float[2, 3, 6, 5] c) => (float[4, 8] y1, float[8, 4] y2,
                                                 float[2, 3, 4, 5] y3) {
            y1 = Gemm <transB = 1> (a, w, b)
            y2 = Gemm <transA = 1, transB = 1, alpha = 0.5, beta = 2.0> (a2, w, b2)
            y3 = MatMul (a, c)
        }
        """,
        {"w": rand(8, 6), "b": rand(8), "a2": rand(6, 8), "b2": rand(8, 1)},
    )
    check(m, {"a": rand(4, 6), "c": rand(2, 3, 6, 5)}, rtol=1e-4, atol=1e-5)


# -- pooling ----------------------------------------------------------------------------

POOL_CASES = [
    ("MaxPool", "kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]"),
    ("MaxPool", "kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1"),
    ("MaxPool", "kernel_shape = [2, 3], pads = [0, 1, 1, 0], dilations = [2, 1]"),
    ("MaxPool", 'kernel_shape = [3, 3], strides = [2, 2], auto_pad = "SAME_UPPER"'),
    ("AveragePool", "kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]"),
    (
        "AveragePool",
        "kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1], count_include_pad = 1",
    ),
    ("AveragePool", "kernel_shape = [3, 3], strides = [2, 2], ceil_mode = 1"),
    ("AveragePool", "kernel_shape = [2, 2], pads = [0, 1, 1, 0], count_include_pad = 1"),
    ("AveragePool", "kernel_shape = [3, 2], pads = [1, 0, 2, 1]"),
    ("LpPool", "kernel_shape = [2, 2], strides = [2, 2], p = 3"),
]


@pytest.mark.parametrize("op_type, attrs", POOL_CASES)
def test_pooling(op_type: str, attrs: str) -> None:
    m = single(op_type, attrs, "float[1, 3, 9, 10] x", "float[?, ?, ?, ?] y", "x", opset=18)
    check(m, {"x": rand(1, 3, 9, 10)})


@pytest.mark.parametrize("op_type", ["GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"])
def test_global_pooling(op_type: str) -> None:
    m = single(op_type, "", "float[2, 3, 5, 6] x", "float[?, ?, ?, ?] y", "x")
    check(m, {"x": rand(2, 3, 5, 6)})


# -- Resize ---------------------------------------------------------------------------------

RESIZE_CASES = {
    # (attributes, scales or None, sizes or None): the fast paths and the per-axis taps
    "nearest_asym_floor_x2": (
        'mode = "nearest", coordinate_transformation_mode = "asymmetric", nearest_mode = "floor"',
        [1, 1, 2, 2],
        None,
    ),
    "nearest_halfpixel_x2": ('mode = "nearest"', [1, 1, 2, 2], None),
    "nearest_round_prefer_ceil_x1.5": (
        'mode = "nearest", nearest_mode = "round_prefer_ceil"',
        [1, 1, 1.5, 1.5],
        None,
    ),
    "nearest_ceil_down": ('mode = "nearest", nearest_mode = "ceil"', [1, 1, 0.6, 0.5], None),
    "nearest_align_corners_sizes": (
        'mode = "nearest", coordinate_transformation_mode = "align_corners"',
        None,
        [1, 3, 7, 5],
    ),
    "linear_halfpixel_x2": ('mode = "linear"', [1, 1, 2, 2], None),
    "linear_halfpixel_down": ('mode = "linear"', [1, 1, 0.5, 0.75], None),
    "linear_align_corners": (
        'mode = "linear", coordinate_transformation_mode = "align_corners"',
        None,
        [1, 3, 13, 9],
    ),
    "linear_asymmetric": (
        'mode = "linear", coordinate_transformation_mode = "asymmetric"',
        [1, 1, 1.7, 2.0],
        None,
    ),
    "linear_pytorch_half_pixel": (
        'mode = "linear", coordinate_transformation_mode = "pytorch_half_pixel"',
        None,
        [1, 3, 1, 4],
    ),
    "cubic_halfpixel": ('mode = "cubic"', [1, 1, 2, 1.5], None),
    "cubic_exclude_outside": (
        'mode = "cubic", exclude_outside = 1, cubic_coeff_a = -0.5',
        [1, 1, 1.5, 1.5],
        None,
    ),
    "linear_antialias_down": ('mode = "linear", antialias = 1', [1, 1, 0.5, 0.6], None),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_resize(case: str) -> None:
    attrs, scales, sizes = RESIZE_CASES[case]
    weights: dict[str, np.ndarray] = {}
    if scales is not None:
        weights["scales"] = np.array(scales, np.float32)
        args = "x, , scales"
    else:
        weights["sizes"] = np.array(sizes, np.int64)
        args = "x, , , sizes"
    m = single(
        "Resize",
        attrs,
        "float[1, 3, 6, 8] x",
        "float[?, ?, ?, ?] y",
        args,
        opset=18,
        weights=weights,
    )
    check(m, {"x": rand(1, 3, 6, 8)}, rtol=1e-4, atol=1e-5)


def test_upsample_opset9() -> None:
    m = single(
        "Upsample",
        'mode = "nearest"',
        "float[1, 2, 3, 4] x",
        "float[?, ?, ?, ?] y",
        "x, s",
        opset=9,
        weights={"s": np.array([1, 1, 2, 3], np.float32)},
    )
    check(m, {"x": rand(1, 2, 3, 4)})


# -- shapes: folded at lowering time ---------------------------------------------------------


def test_shape_arithmetic_is_folded_away() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[2, 12] y, int64[3] s) {
            s = Shape (x)
            zero = Constant <value = int64[1] {0}> ()
            n = Gather <axis = 0> (s, zero)
            minus = Constant <value = int64[1] {-1}> ()
            target = Concat <axis = 0> (n, minus)
            r = Reshape (x, target)
            y = Relu (r)
        }
        """
    )
    sess = check(m, {"x": rand(2, 3, 4)})
    assert _aten_ops(sess) == ["view", "relu"], _aten_ops(sess)


SHAPE_CASES = [
    (
        "Slice",
        "",
        "x, starts, ends, axes, steps",
        {
            "starts": np.array([-1, 1], np.int64),
            "ends": np.array([-100, 6], np.int64),
            "axes": np.array([2, 1], np.int64),
            "steps": np.array([-2, 2], np.int64),
        },
    ),
    ("Pad", 'mode = "reflect"', "x, pads", {"pads": np.array([0, 1, 2, 1, 0, 0, 1, 2], np.int64)}),
    ("Pad", 'mode = "edge"', "x, pads", {"pads": np.array([0, 0, 3, 1, 0, 0, 0, 2], np.int64)}),
    ("Pad", 'mode = "wrap"', "x, pads", {"pads": np.array([0, 0, 1, 1, 0, 0, 2, 1], np.int64)}),
    (
        "Pad",
        "",
        "x, pads, v",
        {"pads": np.array([0, -1, 1, 0, 1, 0, 0, 2], np.int64), "v": np.array(1.5, np.float32)},
    ),
    ("Tile", "", "x, reps", {"reps": np.array([1, 2, 1, 3], np.int64)}),
    ("Expand", "", "x, shape", {"shape": np.array([3, 1, 1, 1, 1], np.int64)}),
    ("Transpose", "perm = [0, 3, 1, 2]", "x", {}),
    ("Flatten", "axis = -2", "x", {}),
    ("DepthToSpace", 'blocksize = 2, mode = "CRD"', "x", {}),
    ("SpaceToDepth", "blocksize = 2", "x", {}),
    ("CumSum", "exclusive = 1, reverse = 1", "x, axis", {"axis": np.array(2, np.int64)}),
    ("ReduceMean", "keepdims = 0", "x, axes", {"axes": np.array([1, -1], np.int64)}),
    ("ReduceLogSumExp", "", "x, axes", {"axes": np.array([2], np.int64)}),
    ("ReduceL2", "", "x", {}),
    ("Softmax", "axis = 1", "x", {}),
    ("LogSoftmax", "axis = -1", "x", {}),
    ("Trilu", "upper = 0", "x, k", {"k": np.array(1, np.int64)}),
]


@pytest.mark.parametrize(
    "op_type, attrs, args, weights",
    SHAPE_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(SHAPE_CASES)],
)
def test_shape_and_reduce_ops(op_type: str, attrs: str, args: str, weights: dict) -> None:
    m = single(
        op_type,
        attrs,
        "float[2, 4, 6, 8] x",
        "float[?, ?, ?, ?] y",
        args,
        opset=18,
        weights=weights,
    )
    m.graph.output[0].type.tensor_type.ClearField("shape")  # rank differs per case
    check(m, {"x": rand(2, 4, 6, 8)}, validate=False)


def test_split_squeeze_unsqueeze_across_opsets() -> None:
    m11 = model(
        """
        <ir_version: 7, opset_import: ["" : 11]>
        g (float[2, 1, 6] x) => (float[?, ?] a, float[?, ?, ?, ?] b, float[?, ?, ?] c) {
            s = Squeeze <axes = [1]> (x)
            a, t = Split <axis = 1, split = [2, 4]> (s)
            b = Unsqueeze <axes = [0, -1]> (t)
            c = Clip (x, lo, hi)
        }
        """,
        {"lo": np.array(-0.5, np.float32), "hi": np.array(0.5, np.float32)},
    )
    check(m11, {"x": rand(2, 1, 6)})
    m6 = single("Clip", "min = -0.5, max = 0.5", "float[2, 3] x", "float[2, 3] y", "x", opset=6)
    check(m6, {"x": rand(2, 3)})
    m18 = model(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[2, 1, 7] x) => (float[?, ?] a, float[?, ?] b, float[?, ?] c) {
            one = Constant <value = int64[1] {1}> ()
            s = Squeeze (x, one)
            a, b, c = Split <axis = 1, num_outputs = 3> (s)
        }
        """
    )
    check(m18, {"x": rand(2, 1, 7)})


def test_gather_scatter_topk() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[5, 6] x, int64[3] idx) => (float[5, 3] a, float[2, 6] b, float[5, 6] c,
                                           float[5, 2] v, int64[5, 2] i, float[5, 2] e) {
            a = Gather <axis = 1> (x, idx)
            b = Gather <axis = 0> (x, cidx)
            c = ScatterND <reduction = "add"> (x, nd_idx, upd)
            v, i = TopK <axis = 1> (x, k)
            e = GatherElements <axis = 1> (x, eidx)
        }
        """,
        {
            "cidx": np.array([-1, 2], np.int64),
            "nd_idx": np.array([[1], [3], [1]], np.int64),
            "upd": rand(3, 6),
            "k": np.array([2], np.int64),
            "eidx": np.array([[0, -1]] * 5, np.int64),
        },
    )
    check(m, {"x": rand(5, 6), "idx": np.array([0, -2, 3], np.int64)})


def test_range_constant_of_shape_where_cast() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3, 5] x) => (float[3, 5] y, int64[?] r) {
            s = Shape (x)
            filled = ConstantOfShape <value = float[1] {0.25}> (s)
            start = Constant <value = int64 {1}> ()
            limit = Constant <value = int64 {11}> ()
            delta = Constant <value = int64 {3}> ()
            r = Range (start, limit, delta)
            pos = Greater (x, filled)
            xi = Cast <to = 6> (x)
            xf = Cast <to = 1> (xi)
            y = Where (pos, xf, filled)
        }
        """
    )
    check(m, {"x": rand(3, 5) * 3})


def test_transformer_ops() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 20]>
        g (float[2, 4, 8] x) => (float[2, 4, 8] y, float[2, 4, 8] e, float[2, 4, 4] a) {
            n = LayerNormalization <axis = -1, epsilon = 1e-5> (x, g, b)
            y = Gelu (n)
            e = Erf (x)
            q = Einsum <equation = "bid,bjd->bij"> (x, x)
            a = Softmax <axis = -1> (q)
        }
        """,
        {"g": rand(8), "b": rand(8)},
    )
    check(m, {"x": rand(2, 4, 8)}, rtol=1e-4, atol=1e-5)


def test_softmax_opset11_coerces_to_2d() -> None:
    m = single("Softmax", "axis = 1", "float[2, 3, 4] x", "float[2, 3, 4] y", "x", opset=11)
    check(m, {"x": rand(2, 3, 4)})


def test_quantize_dequantize_per_tensor_and_axis() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 19]>
        g (float[2, 3, 4] x) => (uint8[2, 3, 4] q, float[2, 3, 4] d, int8[2, 3, 4] qa,
                               float[2, 3, 4] da) {
            q = QuantizeLinear (x, s, z)
            d = DequantizeLinear (q, s, z)
            qa = QuantizeLinear <axis = 1> (x, sa, za)
            da = DequantizeLinear <axis = 1> (qa, sa, za)
        }
        """,
        {
            "s": np.array(0.02, np.float32),
            "z": np.array(128, np.uint8),
            "sa": np.array([0.01, 0.02, 0.05], np.float32),
            "za": np.array([0, -3, 5], np.int8),
        },
    )
    check(m, {"x": rand(2, 3, 4)})


@pytest.mark.parametrize("op_type", ["LSTM", "GRU", "RNN"])
def test_recurrent(op_type: str) -> None:
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op_type]
    hidden, inp = 5, 3
    outputs = "y, yh" + (", yc" if op_type == "LSTM" else "")
    out_decl = "float[?, ?, ?, ?] y, float[?, ?, ?] yh" + (
        ", float[?, ?, ?] yc" if op_type == "LSTM" else ""
    )
    attrs = f'hidden_size = {hidden}, direction = "bidirectional"'
    if op_type == "GRU":
        attrs += ", linear_before_reset = 1"
    m = single(
        op_type,
        attrs,
        "float[6, 2, 3] x",
        out_decl,
        "x, w, r, b",
        out_names=outputs,
        weights={
            "w": rand(2, gates * hidden, inp) * 0.5,
            "r": rand(2, gates * hidden, hidden) * 0.5,
            "b": rand(2, 2 * gates * hidden) * 0.1,
        },
    )
    check(m, {"x": rand(6, 2, 3)}, rtol=1e-4, atol=1e-5)


def test_if_with_constant_condition_inlines_the_branch() -> None:
    then_g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, [2, 3])],
    )
    else_g = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, [2, 3])],
    )
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(False), "c")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    sess = check(m, {"x": rand(2, 3)})
    assert _aten_ops(sess) == ["neg"]


def test_model_local_function_is_inlined() -> None:
    m = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17, "local" : 1]>
        g (float[2, 3] x) => (float[2, 3] y) {
            y = local.Swishish <alpha = 2.0> (x)
        }
        <domain: "local", opset_import: ["" : 17]>
        Swishish <alpha> (a) => (b) {
            k = Constant <value_float: float = @alpha> ()
            s = Mul (a, k)
            g = Sigmoid (s)
            b = Mul (a, g)
        }
        """
    )
    check(m, {"x": rand(2, 3)})


# -- ai.lepton ----------------------------------------------------------------------------


def _lepton_model(
    op_type: str,
    inputs: list[tuple[str, list[int]]],
    out_shape: list[int],
    weights: dict[str, np.ndarray],
    **attrs: object,
) -> onnx.ModelProto:
    node = helper.make_node(
        op_type, [n for n, _ in inputs] + list(weights), ["y"], domain=lepton_ops.DOMAIN, **attrs
    )
    g = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(v, k) for k, v in weights.items() if v is not None],
    )
    return helper.make_model(
        g,
        ir_version=10,
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid(lepton_ops.DOMAIN, lepton_ops.VERSION),
        ],
    )


@pytest.mark.parametrize(
    "activation, params, post",
    [
        ("relu", [], "none"),
        ("leaky_relu", [0.2], "relu"),
        ("clip", [0.0, 6.0], "hardswish"),
        ("hard_sigmoid", [], "silu"),
        ("gelu", [], "tanh"),
        ("sigmoid", [], "none"),
    ],
)
def test_fused_conv_matches_reference(activation: str, params: list, post: str) -> None:
    x, z = rand(1, 4, 7, 6), rand(1, 6, 4, 3)
    w, b = rand(6, 2, 3, 3), rand(6)
    attrs: dict[str, object] = {
        "group": 2,
        "strides": [2, 2],
        "pads": [1, 1, 1, 1],
        "activation": activation,
    }
    if params:
        attrs["activation_params"] = params
    if post != "none":
        attrs["post_activation"] = post
    m = _lepton_model("FusedConv", [("x", [1, 4, 7, 6])], [1, 6, 4, 3], {"w": w, "b": b}, **attrs)
    m.graph.node[0].input.append("z")
    m.graph.input.append(helper.make_tensor_value_info("z", onnx.TensorProto.FLOAT, z.shape))
    got = LeptonSession(m, "cpu", {}).run({"x": x, "z": z})["y"]
    ref = lepton_ops.reference("FusedConv", [x, w, b, z], attrs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_fused_gemm_and_matmul_match_reference() -> None:
    a, w, c = rand(3, 5), rand(4, 5), rand(4)
    attrs = {"transB": 1, "alpha": 0.5, "activation": "silu"}
    m = _lepton_model("FusedGemm", [("a", [3, 5])], [3, 4], {"w": w, "c": c}, **attrs)
    got = LeptonSession(m, "cpu", {}).run({"a": a})["y"]
    np.testing.assert_allclose(
        got, lepton_ops.reference("FusedGemm", [a, w, c], attrs), rtol=1e-5, atol=1e-6
    )
    a3, w2, bias = rand(2, 3, 5), rand(5, 4), rand(4)
    m = _lepton_model(
        "FusedMatMul", [("a", [2, 3, 5])], [2, 3, 4], {"w": w2, "bias": bias}, activation="gelu"
    )
    got = LeptonSession(m, "cpu", {}).run({"a": a3})["y"]
    ref = lepton_ops.reference("FusedMatMul", [a3, w2, bias], {"activation": "gelu"})
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_every_schema_activation_has_a_torch_implementation() -> None:
    from lepton_compile.runtime.lepton.ops_lepton import TORCH_ACTIVATIONS

    assert set(TORCH_ACTIVATIONS) == set(lepton_ops.ACTIVATIONS)
    xs = np.linspace(-4, 4, 41)
    for name, spec in lepton_ops.ACTIVATIONS.items():
        params = spec.resolve(())
        got = TORCH_ACTIVATIONS[name](torch.from_numpy(xs), *params).numpy()
        np.testing.assert_allclose(got, lepton_ops.activation_ref(name, xs), atol=1e-7)


# -- what is not supported -----------------------------------------------------------------


def test_unknown_op_raises_not_supported_naming_it() -> None:
    m = single(
        "NonMaxSuppression", "", "float[1, 4, 4] b, float[1, 1, 4] s", "int64[?, 3] y", "b, s"
    )
    with pytest.raises(NotSupported, match="NonMaxSuppression"):
        LeptonSession(m, "cpu", {})
    m = single("Foo", "", "float[2] x", "float[2] y", "x")
    m.graph.node[0].domain = "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(NotSupported, match="com.example.Foo"):
        LeptonSession(m, "cpu", {})


def test_unsupported_attribute_values_are_named() -> None:
    m = single(
        "Dropout",
        "",
        "float[2, 3] x, bool t",
        "float[2, 3] y",
        "x, r, t",
        opset=13,
        weights={"r": np.array(0.5, np.float32)},
    )
    sess = LeptonSession(m, "cpu", {})
    with pytest.raises(NotSupported, match="Dropout: training_mode"):
        sess.run({"x": rand(2, 3), "t": np.array(True)})
    hidden = 2
    m = single(
        "LSTM",
        f"hidden_size = {hidden}",
        "float[4, 2, 3] x",
        "float[?, ?, ?, ?] y",
        "x, w, r, , lens",
        weights={"w": rand(1, 8, 3), "r": rand(1, 8, 2), "lens": np.array([4, 2], np.int32)},
    )
    with pytest.raises(NotSupported, match="LSTM: sequence_lens"):
        LeptonSession(m, "cpu", {})


def test_loop_is_not_supported() -> None:
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["c"], ["c_out"]),
            helper.make_node("Add", ["v", "v"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
            helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [2]),
        ],
        [
            helper.make_tensor_value_info("c_out", onnx.TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", onnx.TensorProto.FLOAT, [2]),
        ],
    )
    g = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["y"], body=body)],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array(3, np.int64), "n")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(NotSupported, match="Loop"):
        LeptonSession(m, "cpu", {})
