"""Tier 1: fuse-lepton (target "lepton"): Fused* ops, numerics vs the original, rejects, routing."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import onnx_ir as ir
import pass_harness
import pytest
from pass_harness import attrs, with_random_weights
from pass_harness import domain_ops as ops

from lepton_compile.passes import lepton_ops, optimize, resolve_pipeline
from lepton_compile.passes.fusion_lepton import FuseLeptonPass
from lepton_compile.passes.lepton_ops import DOMAIN
from lepton_compile.passes.rules import rejections
from lepton_compile.passes.testing import (
    assert_same_outputs,
    model_from_text,
    random_inputs,
    run_ort,
)

RNG = np.random.default_rng(1357)
RTOL, ATOL = 1e-5, 1e-5
LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def rand(*shape: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def numpy_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Output of a one-node ai.lepton model from the schema's numpy reference alone."""
    (node,) = model.graph.node
    values = {**{i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}, **feeds}
    inputs = [values[name] if name else None for name in node.input]
    return lepton_ops.reference(node.op_type, inputs, attrs(node))


def fuse(model: onnx.ModelProto, expected_ops: list[str]) -> onnx.ModelProto:
    """fuse-lepton alone through the harness's checks; function bodies left as they were,
    and a single fused op computes what its schema's numpy reference computes."""
    out = pass_harness.run_pass(
        model,
        "fuse-lepton",
        expected_ops,
        rtol=RTOL,
        atol=ATOL,
        domains=True,
        target="lepton",
        verify=False,
    )
    again = optimize(out, passes=["fuse-lepton"], target="lepton", verify=False)
    assert again.model.functions == out.functions, "function bodies were rewritten"
    if len(expected_ops) == 1:  # the schema's reference alone reproduces the original
        feeds = random_inputs(model, seed=5)
        (expected,) = run_ort(model, feeds)
        np.testing.assert_allclose(numpy_reference(out, feeds), expected, rtol=1e-4, atol=1e-5)
    return out


def reasons(model: onnx.ModelProto) -> list[str]:
    """Why the rules turn down what is left after fuse-lepton ran (the tracer does not
    apply rewrites, so it would not see a chain's later steps otherwise)."""
    work = ir.serde.deserialize_model(model)
    FuseLeptonPass()(work)
    return [reason for _, _, reason in rejections(work, FuseLeptonPass().rules())]


CONV = """
<ir_version: 8, opset_import: ["" : {opset}]>
g (float[1,4,6,6] x) => (float[1,4,6,6] y) {{
    c = Conv<pads = [1, 1, 1, 1]>(x, w, b)
    {body}
}}
"""


def conv_model(body: str, opset: int = 17, **extra: np.ndarray) -> onnx.ModelProto:
    inits = {"w": rand(4, 4, 3, 3, scale=0.3), "b": rand(4), **extra}
    return model_from_text(CONV.format(opset=opset, body=body), inits)


@pytest.mark.parametrize(
    ("body", "opset", "activation", "params"),
    [
        ("y = Relu(c)", 17, "relu", None),
        ("y = Sigmoid(c)", 17, "sigmoid", None),
        ("y = Tanh(c)", 17, "tanh", None),
        ("y = LeakyRelu<alpha = 0.2>(c)", 17, "leaky_relu", [0.2]),
        ("y = HardSigmoid<alpha = 0.25, beta = 0.4>(c)", 17, "hard_sigmoid", [0.25, 0.4]),
        ("y = HardSwish(c)", 17, "hardswish", None),
        (
            "h = HardSigmoid<alpha = 0.16666667, beta = 0.5>(c)\n y = Mul(h, c)",
            13,
            "hardswish",
            None,
        ),
        ("s = Sigmoid(c)\n y = Mul(c, s)", 17, "silu", None),
        ("y = Clip(c, lo, hi)", 17, "clip", [0.0, 6.0]),
        ("y = Clip(c, lo)", 12, "clip", [0.0, float("inf")]),
        ("y = Clip<min = -1.0, max = 1.0>(c)", 9, "clip", [-1.0, 1.0]),
        ("y = Gelu(c)", 20, "gelu", None),
    ],
)
def test_conv_activation(body, opset, activation, params):
    model = conv_model(body, opset, lo=np.array(0.0, np.float32), hi=np.array(6.0, np.float32))
    out = fuse(model, [f"{DOMAIN}.FusedConv"])
    fused = attrs(out.graph.node[0])
    assert fused["activation"] == activation
    if params is not None:
        np.testing.assert_allclose(fused["activation_params"], params, rtol=1e-6)
    assert fused["pads"] == [1, 1, 1, 1]
    assert out.ir_version >= lepton_ops.MIN_IR_VERSION
    assert {(o.domain, o.version) for o in out.opset_import} >= {(DOMAIN, 1)}


def test_resnet_block_residual_then_relu():
    # Conv -> Relu -> Conv -> Add(x) -> Relu: the second Relu becomes post_activation.
    model = conv_model(
        "r = Relu(c)\n c2 = Conv<pads = [1, 1, 1, 1]>(r, w2)\n s = Add(x, c2)\n y = Relu(s)",
        w2=rand(4, 4, 3, 3, scale=0.3),
    )
    out = fuse(model, [f"{DOMAIN}.FusedConv"] * 2)
    first, second = (attrs(n) for n in out.graph.node)
    assert first["activation"] == "relu" and "post_activation" not in first
    assert list(out.graph.node[1].input) == ["r", "w2", "", "x"]
    assert second["post_activation"] == "relu" and "activation" not in second
    assert sorted(f.overload for f in out.functions) == ["float.none.res.relu", "float.relu"]


def test_activation_then_residual_sum():
    # Caffe2 writes residuals as Sum.
    out = fuse(conv_model("r = Relu(c)\n y = Sum(r, x)"), [f"{DOMAIN}.FusedConv"])
    node = out.graph.node[0]
    assert attrs(node)["activation"] == "relu" and node.input[3] == "x"


def test_gemm_relu():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3,8] x) => (float[3,5] y) {
            t = Gemm<transB = 1>(x, w, b)
            y = Relu(t)
        }
        """,
        {"w": rand(5, 8), "b": rand(5)},
    )
    out = fuse(model, [f"{DOMAIN}.FusedGemm"])
    assert attrs(out.graph.node[0])["transB"] == 1


MLP = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2,4,8] x, float[2,4,8] skip) => (float[2,4,8] y) {{
    m = MatMul(x, w)
    t = Add({bias_order})
    {body}
}}
"""


@pytest.mark.parametrize(
    "gelu",
    [
        # torch's F.gelu export
        "d = Div(t, sqrt2)\n e = Erf(d)\n a = Add(e, one)\n p = Mul(t, a)\n g = Mul(p, half)",
        # the Hugging Face formula: x * 0.5 * (1 + erf(x / sqrt 2))
        "p = Mul(t, half)\n d = Div(t, sqrt2)\n e = Erf(d)\n a = Add(one, e)\n g = Mul(p, a)",
    ],
)
@pytest.mark.parametrize("bias_order", ["m, bias", "bias, m"])
def test_matmul_bias_gelu_residual(gelu, bias_order):
    model = model_from_text(
        MLP.format(bias_order=bias_order, body=f"{gelu}\n y = Add(g, skip)"),
        {
            "w": rand(8, 8, scale=0.4),
            "bias": rand(8),
            "sqrt2": np.array(np.sqrt(2.0), np.float32),
            "one": np.array(1.0, np.float32),
            "half": np.array(0.5, np.float32),
        },
    )
    out = fuse(model, [f"{DOMAIN}.FusedMatMul"])
    node = out.graph.node[0]
    assert list(node.input) == ["x", "w", "bias", "skip"]
    assert attrs(node)["activation"] == "gelu"


def test_matmul_bias_only_and_constant_bias_reshaped():
    model = model_from_text(
        MLP.format(bias_order="m, bias", body="y = Identity(t)"),
        {"w": rand(8, 8), "bias": rand(1, 8)},
    )
    out = fuse(model, [f"{DOMAIN}.FusedMatMul", "Identity"])
    bias = next(i for i in out.graph.initializer if i.name == out.graph.node[0].input[2])
    assert list(bias.dims) == [8]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("y = Relu(c)\n z = Neg(c)", "readers outside"),
        ("r = Relu(c)\n r2 = Relu(r)\n y = Add(r2, x)", "already has an activation"),
        ("y = Add(c, s)", "residual shape"),
        ("y = Add(c, c)", "same value"),
        ('y = Gelu<approximate = "tanh">(c)', "approximate"),
        ("y = Clip(c, x, hi)", "not a constant scalar"),
    ],
)
def test_conv_rejects(text, why):
    model = model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : 20]>
        g (float[1,4,6,6] x, float[1,4,1,1] s) => (float[1,4,6,6] y) {{
            c = Conv<pads = [1, 1, 1, 1]>(x, w, b)
            {text}
        }}
        """,
        {"w": rand(4, 4, 3, 3), "b": rand(4), "hi": np.array(6.0, np.float32)},
    )
    found = reasons(model)
    assert any(why in r for r in found), found
    before = ops(model)
    out = optimize(model, passes=["fuse-lepton"], target="lepton", verify=False, check=False)
    if why == "already has an activation":  # the first Relu still fuses
        assert ops(out.model) == [f"{DOMAIN}.FusedConv", "Relu", "Add"]
    else:
        assert out.records[0].modified is False
        assert ops(out.model) == before


def test_graph_output_and_integer_matmul_are_left_alone():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[3,8] x, int32[3,8] i) => (float[3,5] c, float[3,5] y, int32[3,5] k) {
            c = Gemm(x, w, b)
            y = Relu(c)
            m = MatMul(i, wi)
            k = Relu(m)
        }
        """,
        {"w": rand(8, 5), "b": rand(5), "wi": np.ones((8, 5), np.int32)},
    )
    found = reasons(model)
    assert any("graph output" in r for r in found), found
    assert any("not a float type" in r for r in found), found
    out = optimize(model, passes=["fuse-lepton"], target="lepton", verify=False)
    assert out.records[0].modified is False


def test_matmul_bias_on_a_non_last_axis_is_not_a_bias():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,4,8] x) => (float[2,4,8] y) {
            m = MatMul(x, w)
            y = Add(m, c)
        }
        """,
        {"w": rand(8, 8), "c": rand(4, 1)},
    )
    found = reasons(model)
    assert any("broadcast over the last axis" in r for r in found), found
    assert any("residual shape" in r for r in found), found


# ---------------------------------------------------------------------------------------
# Pipelines and targets


RESNET_BLOCK = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1,8,8,8] x) => (float[1,16,4,4] y) {
    c1 = Conv<strides = [2, 2], pads = [1, 1, 1, 1]>(x, w1)
    n1 = BatchNormalization(c1, g1, b1, m1, v1)
    r1 = Relu(n1)
    c2 = Conv<pads = [1, 1, 1, 1]>(r1, w2)
    n2 = BatchNormalization(c2, g2, b2, m2, v2)
    cd = Conv<strides = [2, 2]>(x, wd)
    nd = BatchNormalization(cd, gd, bd, md, vd)
    s = Add(n2, nd)
    r = Relu(s)
    p = Pad(r, pads)
    q = Conv(p, w3, b3)
    y = Clip(q, zero, six)
}
"""


def resnet_block() -> onnx.ModelProto:
    inits = {
        "w1": rand(16, 8, 3, 3, scale=0.2),
        "w2": rand(16, 16, 3, 3, scale=0.1),
        "wd": rand(16, 8, 1, 1, scale=0.3),
        "w3": rand(16, 16, 3, 3, scale=0.1),
        "b3": rand(16),
        "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
        "zero": np.array(0.0, np.float32),
        "six": np.array(6.0, np.float32),
    }
    for k in ("1", "2", "d"):
        inits.update(
            {
                f"g{k}": rand(16),
                f"b{k}": rand(16),
                f"m{k}": rand(16),
                f"v{k}": (RNG.random(16) + 0.5).astype(np.float32),
            }
        )
    return model_from_text(RESNET_BLOCK, inits)


def test_fused_pipeline_targets():
    model = resnet_block()
    ort = optimize(model, "fused", target="ort", verify=False)
    assert ops(ort.model) == ["Conv", "Relu", "Conv", "Conv", "Add", "Relu", "Conv", "Clip"]
    assert "fuse-lepton" not in ort.passes and not ort.model.functions
    lepton = optimize(model, "fused", target="lepton", verify=False)
    fused = f"{DOMAIN}.FusedConv"
    assert ops(lepton.model) == [fused, "Conv", fused, fused]
    onnx.checker.check_model(lepton.model, full_check=True)
    assert_same_outputs(model, lepton.model, rtol=1e-4, atol=1e-4)
    again = optimize(lepton.model, "fused", target="lepton", verify=False)
    assert [r.name for r in again.records if r.modified] == []
    names = resolve_pipeline("fused", "lepton")
    assert names.index("fuse-lepton") > names.index("fuse-matmul-add")
    with pytest.raises(ValueError, match="not available for target 'ort'"):
        optimize(model, passes=["fuse-lepton"], target="ort")


def test_resnet50_lepton_target_matches_original():
    # The zoo's resnet50.onnx is this file (same sha256). optimize() ran onnx.checker.
    light = onnx.load(os.path.join(LIGHT_DIR, "light_resnet50.onnx"))
    model = with_random_weights(light, draw=np.float32)
    result = optimize(model, "fused", target="lepton", verify=False)
    counts = {op: ops(result.model).count(op) for op in set(ops(result.model))}
    # 53 Conv: 49 take an activation and/or the residual; 4 downsample Convs stay plain.
    assert counts[f"{DOMAIN}.FusedConv"] == 49 and counts["Conv"] == 4
    assert len(result.model.graph.node) == 57  # 58 with the Softmax
    feeds = random_inputs(model, seed=0)
    (expected,) = run_ort(model, feeds)
    (actual,) = run_ort(result.model, feeds)
    assert expected.std() > 0.1
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)
