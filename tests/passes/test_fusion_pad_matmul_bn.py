"""Tier 1: fuse-matmul-batchnorm, fuse-pad: structure, numerics, validity, idempotence, rejects."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import pass_harness
import pytest
from pass_harness import ops

from lepton_compile.passes import optimize
from lepton_compile.passes.fusion import FuseMatMulBatchNormPass, FusePadPass
from lepton_compile.passes.rules import rejections
from lepton_compile.passes.testing import model_from_text

RNG = np.random.default_rng(2468)
# Folding rescales weights: results differ from the unfused graph by float rounding.
RTOL, ATOL = 1e-4, 1e-5

# The pass after infer-shapes: the pipelines' folding records shapes, a pass alone has none.
run_pass = functools.partial(
    pass_harness.run_pass, rtol=RTOL, atol=ATOL, verify=False, idempotent="last"
)
bn_params = functools.partial(pass_harness.bn_params, RNG)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def reasons(model: onnx.ModelProto, rules) -> list[str]:
    work = ir.serde.deserialize_model(model)
    ir.passes.common.ShapeInferencePass(strict_mode=False)(work)
    return [reason for _, _, reason in rejections(work, rules)]


def attribute(model: onnx.ModelProto, op_type: str, name: str):
    node = next(n for n in model.graph.node if n.op_type == op_type)
    attr = next((a for a in node.attribute if a.name == name), None)
    return None if attr is None else onnx.helper.get_attribute_value(attr)


# ---------------------------------------------------------------------------------------
# MatMul + BatchNormalization


@pytest.mark.parametrize("opset", [9, 17])
def test_matmul_batchnorm_right_constant_becomes_gemm(opset):
    model = model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        g (float[3,8] x) => (float[3,5] y) {{
            t = MatMul(x, w)
            y = BatchNormalization<epsilon = 0.001>(t, gamma, beta, mean, var)
        }}
        """,
        {"w": rand(8, 5), **bn_params(5)},
    )
    out = run_pass(model, ["infer-shapes", "fuse-matmul-batchnorm"], ["Gemm"])
    assert len(out.graph.initializer) == 2  # folded weights and bias; BN statistics gone


def test_matmul_batchnorm_left_constant_becomes_matmul_add():
    # W @ x over (batch, K, L): BN's axis 1 is W's rows, as for a 1x1 Conv written as MatMul.
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,8,6] x) => (float[2,4,6] y) {
            t = MatMul(w, x)
            y = BatchNormalization(t, gamma, beta, mean, var)
        }
        """,
        {"w": rand(4, 8), **bn_params(4)},
    )
    run_pass(model, ["infer-shapes", "fuse-matmul-batchnorm"], ["MatMul", "Add"])


@pytest.mark.parametrize(
    ("signature", "body", "inits", "why"),
    [
        (  # BN's axis 1 is the sequence axis of a 3-D product, not the weights' columns
            "(float[2,4,8] x) => (float[2,4,5] y)",
            "t = MatMul(x, w)",
            {"w": rand(8, 5), **bn_params(4)},
            "neither",
        ),
        (  # the weights are a graph input, not a constant
            "(float[3,8] x, float[8,5] w) => (float[3,5] y)",
            "t = MatMul(x, w)",
            bn_params(5),
            "neither",
        ),
        (  # BN parameters of the wrong length (they would broadcast silently)
            "(float[3,8] x) => (float[3,5] y)",
            "t = MatMul(x, w)",
            {"w": rand(8, 5), **bn_params(1)},
            "expected (5,)",
        ),
    ],
)
def test_matmul_batchnorm_rejects(signature, body, inits, why):
    model = model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g {signature} {{
            {body}
            y = BatchNormalization(t, gamma, beta, mean, var)
        }}
        """,
        inits,
    )
    found = reasons(model, FuseMatMulBatchNormPass().rules())
    assert any(why in r for r in found), found
    out = optimize(model, passes=["fuse-matmul-batchnorm"], verify=False, check=False)
    assert out.records[0].modified is False
    assert ops(out.model) == ["MatMul", "BatchNormalization"]


# ---------------------------------------------------------------------------------------
# Pad into Conv / AveragePool / MaxPool


def test_pad_into_conv_opset_11_inputs():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[1,3,8,8] x) => (float[1,4,9,7] y) {
            p = Pad(x, pads)
            y = Conv<pads = [1, 0, 1, 0]>(p, w, b)
        }
        """,
        {"pads": np.array([0, 0, 1, 1, 0, 0, 0, 0], np.int64), "w": rand(4, 3, 3, 3), "b": rand(4)},
    )
    out = run_pass(model, ["infer-shapes", "fuse-pad"], ["Conv"])
    assert attribute(out, "Conv", "pads") == [2, 1, 1, 0]


def test_pad_into_conv_opset_9_attributes():
    # Before opset 11 the pads are an attribute (onnxscript's own rule reads inputs only).
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 9]>
        g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
            p = Pad<pads = [0, 0, 1, 1, 0, 0, 1, 1], value = 0.0>(x)
            y = Conv(p, w)
        }
        """,
        {"w": rand(4, 3, 3, 3)},
    )
    out = run_pass(model, ["infer-shapes", "fuse-pad"], ["Conv"])
    assert attribute(out, "Conv", "pads") == [1, 1, 1, 1]


def test_pad_into_conv_opset_18_axes_and_shared_pad():
    # Pad with an axes input; the padded tensor is also an output, so the Pad stays.
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,3,10,10] p) {
            p = Pad(x, pads, zero, axes)
            y = Conv(p, w)
        }
        """,
        {
            "pads": np.array([1, 1, 1, 1], np.int64),
            "zero": np.array(0.0, np.float32),
            "axes": np.array([-2, -1], np.int64),
            "w": rand(4, 3, 3, 3),
        },
    )
    out = run_pass(model, ["infer-shapes", "fuse-pad"], ["Pad", "Conv"])
    assert attribute(out, "Conv", "pads") == [1, 1, 1, 1]
    assert out.graph.node[1].input[0] == "x"


def pad_then_average_pool() -> onnx.ModelProto:
    """Zero padding of one row and column each side, then a 2x2 AveragePool."""
    return model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,2,6,6] x) => (float[1,2,7,7] y) {
            p = Pad(x, pads)
            y = AveragePool<kernel_shape = [2, 2]>(p)
        }
        """,
        {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)},
    )


def test_pad_into_average_pool_counts_the_pads():
    model = pad_then_average_pool()
    out = run_pass(model, ["infer-shapes", "fuse-pad"], ["AveragePool"])
    assert attribute(out, "AveragePool", "count_include_pad") == 1
    assert attribute(out, "AveragePool", "pads") == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("producer", "value"),
    [("r = Relu(x)", "zero"), ("r = Identity(x)", "minus_inf")],
)
def test_pad_into_max_pool_when_value_is_safe(producer, value):
    model = model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,2,6,6] x) => (float[1,2,3,3] y) {{
            {producer}
            p = Pad(r, pads, {value})
            y = MaxPool<kernel_shape = [3, 3], strides = [2, 2]>(p)
        }}
        """,
        {
            "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
            "zero": np.array(0.0, np.float32),
            "minus_inf": np.array(-np.inf, np.float32),
        },
    )
    out = run_pass(
        model, ["infer-shapes", "fuse-pad"], [producer.split()[2].split("(")[0], "MaxPool"]
    )
    assert attribute(out, "MaxPool", "pads") == [1, 1, 1, 1]


PAD_REJECTS = [
    # (op line, pad line, init overrides, expected reason fragment)
    (
        "y = MaxPool<kernel_shape = [3, 3]>(p)",
        "p = Pad(x, pads)",
        {},
        "no known lower bound",  # zero padding could win a max of negatives
    ),
    ("y = Conv(p, w)", 'p = Pad<mode = "reflect">(x, pads)', {}, "mode is 'reflect'"),
    ("y = Conv(p, w)", "p = Pad(x, pads, one)", {}, "is not 0"),
    (
        "y = Conv(p, w)",
        "p = Pad(x, pads)",
        {"pads": np.array([0, 1, 1, 1, 0, 0, 1, 1], np.int64)},
        "batch or channel",
    ),
    (
        "y = Conv(p, w)",
        "p = Pad(x, pads)",
        {"pads": np.array([0, 0, -1, 0, 0, 0, 0, 0], np.int64)},
        "crops",
    ),
    (
        "y = AveragePool<kernel_shape = [3, 3], pads = [1, 1, 1, 1]>(p)",
        "p = Pad(x, pads)",
        {},
        "count_include_pad=0",
    ),
    (
        "y = AveragePool<kernel_shape = [2, 2]>(p)",
        "p = Pad(x, pads)",
        {"pads": np.array([0, 0, 2, 0, 0, 0, 0, 0], np.int64)},
        "smaller than the kernel",
    ),
    ("y = AveragePool<kernel_shape = [3, 3], ceil_mode = 1>(p)", "p = Pad(x, pads)", {}, "ceil"),
    ('y = Conv<auto_pad = "SAME_UPPER">(p, w)', "p = Pad(x, pads)", {}, "auto_pad"),
    ("y = Conv(p, w)", "p = Pad(x, pads_in)", {}, "not constant"),
]


@pytest.mark.parametrize(("op_line", "pad_line", "overrides", "why"), PAD_REJECTS)
def test_pad_rejects(op_line, pad_line, overrides, why):
    inits = {
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "one": np.array(1.0, np.float32),
        "w": rand(3, 3, 3, 3),
        **overrides,
    }
    model = model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] x, int64[8] pads_in) => (float[1,3,?,?] y) {{
            {pad_line}
            {op_line}
        }}
        """,
        inits,
    )
    found = reasons(model, FusePadPass().rules())
    assert any(why in r for r in found), found
    out = optimize(model, passes=["fuse-pad"], verify=False, check=False)
    assert out.records[0].modified is False
    assert ops(out.model) == ["Pad", op_line.split("=")[1].split("<")[0].split("(")[0].strip()]


def test_pad_pass_options_leave_pools_alone():
    model = pad_then_average_pool()
    out = optimize(model, passes=["fuse-pad"], options={"fuse-pad": {"pools": False}}, verify=False)
    assert out.records[0].modified is False
