"""Tier 1: each fusion pass on a small model: structure, numerics, validity, idempotence."""

from __future__ import annotations

import functools

import numpy as np
import pass_harness
import pytest
from pass_harness import ops

from lepton_compile.passes import optimize
from lepton_compile.passes.testing import model_from_text

RNG = np.random.default_rng(4321)
# Folding rescales weights: results differ from the unfused graph by float rounding.
RTOL, ATOL = 1e-4, 1e-5

run_pass = functools.partial(pass_harness.run_pass, rtol=RTOL, atol=ATOL)
bn_params = functools.partial(pass_harness.bn_params, RNG)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


CONV_BN = """
<ir_version: 8, opset_import: ["" : {opset}]>
g (float[1,3,8,8] x) => (float[1,4,8,8] y) {{
    c = Conv<pads = [1, 1, 1, 1]>(x, w{bias})
    y = BatchNormalization<epsilon = 0.001>(c, gamma, beta, mean, var)
}}
"""


@pytest.mark.parametrize("opset", [9, 15])
@pytest.mark.parametrize("bias", [False, True])
def test_fuse_batchnorm_into_conv(opset, bias):
    inits = {"w": rand(4, 3, 3, 3), **bn_params(4)}
    if bias:
        inits["b"] = rand(4)
    text = CONV_BN.format(opset=opset, bias=", b" if bias else "")
    out = run_pass(model_from_text(text, inits), "fuse-batchnorm", ["Conv"])
    assert len(out.graph.node[0].input) == 3
    assert len(out.graph.initializer) == 2  # BN statistics are gone


def test_fuse_batchnorm_skips_shared_weights_and_training_outputs():
    shared = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 15]>
        g (float[1,3,8,8] x) => (float[1,4,8,8] y, float[1,4,8,8] z) {
            c = Conv<pads = [1, 1, 1, 1]>(x, w)
            y = BatchNormalization(c, gamma, beta, mean, var)
            z = Conv<pads = [1, 1, 1, 1]>(x, w)
        }
        """,
        {"w": rand(4, 3, 3, 3), **bn_params(4)},
    )
    training = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 9]>
        g (float[2,3,8,8] x) => (float[2,4,8,8] y) {
            c = Conv<pads = [1, 1, 1, 1]>(x, w)
            y, rm, rv, sm, sv = BatchNormalization(c, gamma, beta, mean, var)
        }
        """,
        {"w": rand(4, 3, 3, 3), **bn_params(4)},
    )
    for model in (shared, training):
        out = optimize(model, passes=["fuse-batchnorm"], check=False)
        assert out.records[0].modified is False
        assert "BatchNormalization" in ops(out.model)


def test_fuse_batchnorm_into_conv_transpose():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,4,5,5] x) => (float[1,6,10,10] y) {
            c = ConvTranspose<strides = [2, 2], group = 2>(x, w, b)
            y = BatchNormalization(c, gamma, beta, mean, var)
        }
        """,
        {"w": rand(4, 3, 2, 2), "b": rand(6), **bn_params(6)},
    )
    run_pass(model, "fuse-batchnorm", ["ConvTranspose"])


@pytest.mark.parametrize("trans_b", [0, 1])
def test_fuse_batchnorm_into_gemm(trans_b):
    w = rand(5, 8) if trans_b else rand(8, 5)
    model = model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3,8] x) => (float[3,5] y) {{
            c = Gemm<transB = {trans_b}, beta = 0.5>(x, w, b)
            y = BatchNormalization(c, gamma, beta, mean, var)
        }}
        """,
        {"w": w, "b": rand(5), **bn_params(5)},
    )
    run_pass(model, "fuse-batchnorm", ["Gemm"])


def test_fuse_channel_affine_conv_mul_add():
    # The Caffe2 densenet/inception pattern: Conv -> Mul(per-channel) -> Add(per-channel).
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] x) => (float[1,4,8,8] y) {
            c = Conv<pads = [1, 1, 1, 1]>(x, w)
            m = Mul(s, c)
            y = Add(m, t)
        }
        """,
        {"w": rand(4, 3, 3, 3), "s": rand(4, 1, 1), "t": rand(1, 4, 1, 1)},
    )
    out = run_pass(model, "fuse-channel-affine", ["Conv"])
    assert len(out.graph.node[0].input) == 3


def test_fuse_channel_affine_batchnorm_mul_add():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 9]>
        g (float[1,4,8,8] x) => (float[1,4,8,8] y) {
            n = BatchNormalization(x, gamma, beta, mean, var)
            m = Mul(n, s)
            y = Add(m, t)
        }
        """,
        {"s": rand(4, 1, 1), "t": rand(4, 1, 1), **bn_params(4)},
    )
    run_pass(model, "fuse-channel-affine", ["BatchNormalization"])


@pytest.mark.parametrize(
    "shape",
    [(1, 1, 8), (2, 4, 1, 1), (8, 8)],  # along width; would grow the batch; not per-channel
)
def test_fuse_channel_affine_rejects_non_channel_operands(shape):
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,3,8,8] x) => (float[N,4,8,8] y) {
            c = Conv<pads = [1, 1, 1, 1]>(x, w)
            y = Mul(c, s)
        }
        """,
        {"w": rand(4, 3, 3, 3), "s": rand(*shape)},
    )
    out = optimize(model, passes=["fuse-channel-affine"])
    assert out.records[0].modified is False
    assert ops(out.model) == ["Conv", "Mul"]


@pytest.mark.parametrize(
    ("pattern", "c_shape"),
    [
        ("t = MatMul(x, w)\n y = Add(t, c)", (5,)),
        ("t = MatMul(x, w)\n y = Add(c, t)", (3, 1)),
        ("wt = Transpose<perm = [1, 0]>(w)\n t = MatMul(x, wt)\n y = Add(t, c)", (1, 5)),
    ],
)
def test_fuse_matmul_add(pattern, c_shape):
    w = rand(5, 8) if "Transpose" in pattern else rand(8, 5)
    model = model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3,8] x) => (float[3,5] y) {{
            {pattern}
        }}
        """,
        {"w": w, "c": rand(*c_shape)},
    )
    run_pass(model, "fuse-matmul-add", ["Gemm"])


@pytest.mark.parametrize(
    ("x_type", "c_shape", "y_type"),
    [
        ("float[2,3,8]", (5,), "float[2,3,5]"),  # 3-D MatMul
        ("float[3,8]", (1, 3, 5), "float[1,3,5]"),  # Add grows the rank
        ("float[1,8]", (3, 5), "float[3,5]"),  # Add grows M: not unidirectional
    ],
)
def test_fuse_matmul_add_rejects_illegal_gemm(x_type, c_shape, y_type):
    model = model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g ({x_type} x) => ({y_type} y) {{
            t = MatMul(x, w)
            y = Add(t, c)
        }}
        """,
        {"w": rand(8, 5), "c": rand(*c_shape)},
    )
    out = optimize(model, passes=["infer-shapes", "fuse-matmul-add"])
    assert out.records[-1].modified is False
    assert ops(out.model) == ["MatMul", "Add"]


HARDSWISH = """
<ir_version: 8, opset_import: ["" : {opset}]>
g (float[2,16] x) => (float[2,16] y) {{
    three = Constant<value = float {{3.0}}>()
    zero = Constant<value = float {{0.0}}>()
    six = Constant<value = float {{6.0}}>()
    a = Add(x, three)
    c = Clip(a, zero, six)
    m = Mul(x, c)
    y = Div(m, six)
}}
"""


@pytest.mark.parametrize(("opset", "expected"), [(13, ["HardSigmoid", "Mul"]), (14, ["HardSwish"])])
def test_fuse_hardswish(opset, expected):
    model = model_from_text(HARDSWISH.format(opset=opset))
    run_pass(model, "fuse-hardswish", expected)
