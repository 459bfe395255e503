"""Tier 1: fusion_nn passes on ONNX-text models: structure, numerics, validity, idempotence."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import pass_harness
import pytest
from pass_harness import attrs, ops

from lepton_compile.passes.fusion_nn import (
    PATTERN_ID_KEY,
    PATTERN_KEY,
    DetectSiLUPass,
    FuseAttentionPass,
    FuseGeluPass,
    FuseHardActivationsPass,
    FuseLayerNormPass,
    FusionResult,
    pattern_nodes,
)
from lepton_compile.passes.registry import PIPELINES
from lepton_compile.passes.testing import model_from_text

RNG = np.random.default_rng(1234)
# One fused op against the ops it replaces: float rounding only.
RTOL, ATOL = 1e-4, 1e-5

run_pass = functools.partial(pass_harness.run_pass, rtol=RTOL, atol=ATOL)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def f32(value: float) -> np.ndarray:
    return np.array(value, dtype=np.float32)


def apply(pass_: ir.passes.PassBase, model: onnx.ModelProto) -> FusionResult:
    """The pass's own result (counts, rejection reasons) on a copy of `model`."""
    result = pass_(ir.from_proto(model))
    assert isinstance(result, FusionResult)
    return result


def meta(node: onnx.NodeProto) -> dict[str, str]:
    return {p.key: p.value for p in node.metadata_props}


def test_fused_pipeline_runs_our_passes_after_hardswish():
    fused = PIPELINES["fused"]
    at = fused.index("fuse-hardswish")
    assert fused[at + 1 : at + 6] == (
        "fuse-hard-activations",
        "fuse-layernorm",
        "fuse-gelu",
        "detect-silu",
        "fuse-attention",
    )


# ---------------------------------------------------------------------------------------
# LayerNorm

LN = """
<ir_version: 8, opset_import: ["" : {opset}]>
g (float[2,5,8] x) => (float[2,5,8] y) {{
    mean = ReduceMean{axes_attr}(x{axes_in})
    d = Sub(x, mean)
    {square}
    var = ReduceMean{axes_attr}(sq{axes_in})
    ve = Add(var, eps)
    sd = Sqrt(ve)
    {norm}
    {affine}
}}
"""
SQUARES = {"Pow": "sq = Pow(d, two)", "Mul": "sq = Mul(d, d)"}
NORMS = {"Div": "n = Div(d, sd)", "Reciprocal": "r = Reciprocal(sd)\n n = Mul(d, r)"}
AFFINES = {
    "none": "y = Identity(n)",
    "scale": "y = Mul(gamma, n)",
    "scale+bias": "m = Mul(n, gamma)\n y = Add(beta, m)",
}


def layer_norm(
    opset=17,
    square="Pow",
    norm="Div",
    affine="scale+bias",
    axes=(-1,),
    gamma_shape=(8,),
    **overrides,
) -> onnx.ModelProto:
    if opset >= 18:
        axes_attr, axes_in = "", ", axes"
    else:
        axes_attr, axes_in = f"<axes = [{', '.join(map(str, axes))}]>", ""
    text = LN.format(
        opset=opset,
        axes_attr=axes_attr,
        axes_in=axes_in,
        square=SQUARES[square],
        norm=NORMS[norm],
        affine=AFFINES[affine],
    )
    inits = {
        "two": f32(2.0),
        "eps": f32(1e-5),
        "gamma": rand(*gamma_shape),
        "beta": rand(*gamma_shape),
        "axes": np.array(axes, dtype=np.int64),
    }
    used = {"two": square == "Pow", "gamma": affine != "none", "beta": affine == "scale+bias"}
    inits = {k: v for k, v in inits.items() if used.get(k, True) and (k != "axes" or opset >= 18)}
    inits.update(overrides)
    return model_from_text(text, inits)


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("square", ["Pow", "Mul"])
@pytest.mark.parametrize("norm", ["Div", "Reciprocal"])
def test_fuse_layernorm_variants(opset, square, norm):
    model = layer_norm(opset, square, norm)
    out = run_pass(model, "fuse-layernorm", ["LayerNormalization"])
    node = out.graph.node[0]
    assert attrs(node) == {"axis": -1, "epsilon": pytest.approx(1e-5), "stash_type": 1}
    assert list(node.input) == ["x", "gamma", "beta"]  # the weights are reused as they are
    assert {init.name for init in out.graph.initializer} == {"gamma", "beta"}


@pytest.mark.parametrize(
    ("affine", "expected"),
    [("none", ["LayerNormalization", "Identity"]), ("scale", ["LayerNormalization"])],
)
def test_fuse_layernorm_without_bias_or_scale(affine, expected):
    out = run_pass(layer_norm(affine=affine), "fuse-layernorm", expected)
    node = out.graph.node[0]
    assert len(node.input) == 2
    if affine == "none":
        scale = onnx.numpy_helper.to_array(out.graph.initializer[0])
        np.testing.assert_array_equal(scale, np.ones(8, np.float32))


def test_fuse_layernorm_over_two_trailing_axes_broadcasts_scale():
    # Scale (1, 5, 1) varies along one normalized axis: expanded to the normalized (5, 8).
    model = layer_norm(axes=(-2, -1), gamma_shape=(1, 5, 1))
    out = run_pass(model, "fuse-layernorm", ["LayerNormalization"])
    assert attrs(out.graph.node[0])["axis"] == -2
    shapes = {init.name: list(init.dims) for init in out.graph.initializer}
    assert sorted(shapes.values()) == [[5, 8], [5, 8]]


def test_fuse_layernorm_double_keeps_double_precision():
    text = LN.format(
        opset=17,
        axes_attr="<axes = [-1]>",
        axes_in="",
        square=SQUARES["Pow"],
        norm=NORMS["Div"],
        affine=AFFINES["scale+bias"],
    ).replace("float[", "double[")
    inits = {"two": np.array(2.0), "eps": np.array(1e-5), "gamma": rand(8).astype(np.float64)}
    inits["beta"] = rand(8).astype(np.float64)
    out = run_pass(
        model_from_text(text, inits),
        "fuse-layernorm",
        ["LayerNormalization"],
        rtol=1e-10,
        atol=1e-12,
    )
    assert attrs(out.graph.node[0])["stash_type"] == onnx.TensorProto.DOUBLE


@pytest.mark.parametrize(
    ("model", "reason", "valid"),
    [
        (layer_norm(axes=(1,)), "not the trailing axes", True),
        (layer_norm(opset=18, axes=(0, 2)), "not the trailing axes", True),
        (layer_norm(two=f32(3.0)), "exponent is 3", True),
        (layer_norm(eps=rand(8)), "epsilon has shape [8]", True),
        # Ill-typed or ill-shaped on purpose (the output's rank or dtype would change):
        # only the verdict is checked; the bare normalization before the Mul still fuses.
        (layer_norm(gamma_shape=(1, 1, 1, 8)), "rank 4, above the input's 3", False),
        (layer_norm(gamma=rand(8).astype(np.float64)), "input is FLOAT", False),
    ],
    ids=[
        "middle-axis",
        "non-contiguous",
        "cube",
        "vector-eps",
        "rank-raising-scale",
        "dtype",
    ],
)
def test_fuse_layernorm_rejects_non_layernorms(model, reason, valid):
    if valid:
        run_pass(model, "fuse-layernorm", ops(model), modified=False)
    result = apply(FuseLayerNormPass(), model)
    if valid:
        assert not result.modified and not result.fused
    else:
        assert [n.op_type for n in result.model.graph] == ["LayerNormalization", "Mul", "Add"]
    assert any(reason in entry for entry in result.rejected), result.rejected


def test_fuse_layernorm_keeps_a_per_row_scale_apart():
    # Scale (5, 1) varies along a non-normalized axis: LayerNormalization (with ones)
    # takes the normalization, the Mul and Add stay.
    model = layer_norm(gamma_shape=(5, 1))
    out = run_pass(model, "fuse-layernorm", ["LayerNormalization", "Mul", "Add"])
    assert "gamma" in out.graph.node[1].input
    result = apply(FuseLayerNormPass(), model)
    assert any("varies along axis 1" in entry for entry in result.rejected), result.rejected


def test_fuse_layernorm_rejects_variance_over_other_axes():
    model = layer_norm()
    for node in model.graph.node:
        if node.output[0] == "var":
            node.attribute[0].ints[:] = [1]
    result = apply(FuseLayerNormPass(), model)
    assert not result.modified
    assert any("variance over axes [1]" in entry for entry in result.rejected), result.rejected


def test_fuse_layernorm_leaves_shared_intermediates():
    # The centred x is also a graph output: the Sub cannot be removed, nothing is fused.
    model = layer_norm()
    model.graph.output.append(
        onnx.helper.make_tensor_value_info("d", onnx.TensorProto.FLOAT, [2, 5, 8])
    )
    run_pass(model, "fuse-layernorm", ops(model), modified=False)


def test_fuse_layernorm_below_opset_17_only_counts():
    model = layer_norm(opset=16)
    run_pass(model, "fuse-layernorm", ops(model), modified=False)
    result = apply(FuseLayerNormPass(), model)
    assert result.detected == {"layernorm": 1} and not result.fused


# ---------------------------------------------------------------------------------------
# GELU

GELU_ERF = {
    # 0.5 * x * (1 + erf(x / sqrt2)), as torch exports it and in two other association orders
    "torch": "u = Div(x, c)\n e = Erf(u)\n s = Add(e, one)\n xs = Mul(x, s)\n y = Mul(xs, half)",
    "x*(s*h)": "u = Mul(x, c)\n e = Erf(u)\n s = Add(one, e)\n sh = Mul(half, s)\n y = Mul(sh, x)",
    "(x*h)*s": "u = Div(x, c)\n e = Erf(u)\n s = Add(e, one)\n xh = Mul(x, half)\n y = Mul(xh, s)",
}
GELU_TANH = {
    "pow": "x3 = Pow(x, three)",
    "mul": "xx = Mul(x, x)\n x3 = Mul(x, xx)",
}
TANH_TAIL = """
    kx3 = Mul(k, x3)
    inner = Add(x, kx3)
    t_in = Mul(c, inner)
    t = Tanh(t_in)
    s = Add(one, t)
    xs = Mul(x, s)
    y = Mul(half, xs)
"""


def gelu_model(body: str, opset: int, **inits: np.ndarray) -> onnx.ModelProto:
    text = f"""
    <ir_version: 9, opset_import: ["" : {opset}]>
    g (float[3,16] x) => (float[3,16] y) {{
        {body}
    }}
    """
    defaults = {"one": f32(1.0), "half": f32(0.5)}
    return model_from_text(text, {**defaults, **inits})


@pytest.mark.parametrize("form", list(GELU_ERF))
def test_fuse_gelu_erf(form):
    c = f32(np.sqrt(2.0) if "Div" in GELU_ERF[form] else 1 / np.sqrt(2.0))
    model = gelu_model(GELU_ERF[form], 20, c=c)
    out = run_pass(model, "fuse-gelu", ["Gelu"])
    assert attrs(out.graph.node[0]) == {"approximate": "none"}
    assert not out.graph.initializer


@pytest.mark.parametrize("cube", list(GELU_TANH))
def test_fuse_gelu_tanh(cube):
    model = gelu_model(
        GELU_TANH[cube] + TANH_TAIL,
        20,
        three=f32(3.0),
        k=f32(0.044715),
        c=f32(np.sqrt(2 / np.pi)),
    )
    if cube == "mul":
        del model.graph.initializer[[i.name for i in model.graph.initializer].index("three")]
    out = run_pass(model, "fuse-gelu", ["Gelu"])
    assert attrs(out.graph.node[0]) == {"approximate": "tanh"}


def test_fuse_gelu_accepts_rounded_sqrt2():
    run_pass(gelu_model(GELU_ERF["torch"], 20, c=f32(1.4142)), "fuse-gelu", ["Gelu"], atol=1e-4)


def test_fuse_gelu_below_opset_20_only_counts():
    model = gelu_model(GELU_ERF["torch"], 17, c=f32(np.sqrt(2.0)))
    run_pass(model, "fuse-gelu", ops(model), modified=False)
    assert apply(FuseGeluPass(), model).detected == {"gelu": 1}


@pytest.mark.parametrize(
    ("inits", "reason"),
    [
        ({"c": f32(2.0)}, "erf input divisor is 2"),
        ({"c": f32(np.sqrt(2.0)), "half": f32(0.6)}, "0.5 is 0.6"),
        ({"c": rand(16)}, "not a single value"),
    ],
)
def test_fuse_gelu_rejects_other_constants(inits, reason):
    model = gelu_model(GELU_ERF["torch"], 20, **inits)
    run_pass(model, "fuse-gelu", ops(model), modified=False)
    result = apply(FuseGeluPass(), model)
    assert any(reason in entry for entry in result.rejected), result.rejected


# ---------------------------------------------------------------------------------------
# HardSigmoid / HardSwish


def hard_model(body: str, opset: int, **inits: np.ndarray) -> onnx.ModelProto:
    text = f"""
    <ir_version: 8, opset_import: ["" : {opset}]>
    g (float[2,3,4,4] x) => (float[2,3,4,4] y) {{
        {body}
    }}
    """
    return model_from_text(text, inits)


def test_fuse_hardsigmoid_from_affine_clip():
    # Keras hard_sigmoid: clip(0.2 * x + 0.5, 0, 1).
    body = "a = Mul(x, slope)\n b = Add(a, offset)\n y = Clip(b, lo, hi)"
    model = hard_model(body, 13, slope=f32(0.2), offset=f32(0.5), lo=f32(0.0), hi=f32(1.0))
    out = run_pass(model, "fuse-hard-activations", ["HardSigmoid"])
    assert attrs(out.graph.node[0]) == pytest.approx({"alpha": 0.2, "beta": 0.5})


def test_fuse_hardsigmoid_from_clip_times_reciprocal():
    # Keras MobileNetV3: ReLU6(x + 3) * (1 / 6).
    body = "a = Add(x, three)\n c = Clip(a, lo, six)\n y = Mul(sixth, c)"
    inits = {"three": f32(3), "lo": f32(0), "six": f32(6), "sixth": f32(1 / 6)}
    out = run_pass(hard_model(body, 13, **inits), "fuse-hard-activations", ["HardSigmoid"])
    assert attrs(out.graph.node[0]) == pytest.approx({"alpha": 1 / 6, "beta": 0.5})


@pytest.mark.parametrize(("opset", "expected"), [(14, ["HardSwish"]), (13, ["HardSigmoid", "Mul"])])
def test_fuse_hardswish_from_clip_times_reciprocal(opset, expected):
    body = "a = Add(x, three)\n c = Clip(a, lo, six)\n g = Mul(x, c)\n y = Mul(g, sixth)"
    inits = {"three": f32(3), "lo": f32(0), "six": f32(6), "sixth": f32(1 / 6)}
    run_pass(hard_model(body, opset, **inits), "fuse-hard-activations", expected)


def test_fuse_hardswish_from_hardsigmoid():
    # torch's opset-13 Hardswish export, once the model is at opset 14.
    body = "h = HardSigmoid<alpha = 0.16666667>(x)\n y = Mul(x, h)"
    run_pass(hard_model(body, 14), "fuse-hard-activations", ["HardSwish"])


@pytest.mark.parametrize(
    ("body", "inits", "reason"),
    [
        (
            "a = Add(x, three)\n c = Clip(a, lo, six)\n y = Mul(c, s)",
            {"three": f32(3), "lo": f32(0), "six": f32(6), "s": f32(0.2)},
            "times Clip max 6 is not 1",
        ),
        (
            "a = Mul(x, slope)\n b = Add(a, offset)\n y = Clip(b, lo, hi)",
            {"slope": f32(0.2), "offset": f32(0.5), "lo": f32(0), "hi": f32(2)},
            "Clip max is 2",
        ),
        (
            "h = HardSigmoid(x)\n y = Mul(x, h)",  # default alpha 0.2: not HardSwish
            {},
            "HardSigmoid(alpha=0.2",
        ),
    ],
    ids=["wrong-scale", "clip-max-2", "hardsigmoid-defaults"],
)
def test_fuse_hard_activations_rejects(body, inits, reason):
    model = hard_model(body, 14, **inits)
    run_pass(model, "fuse-hard-activations", ops(model), modified=False)
    result = apply(FuseHardActivationsPass(), model)
    assert any(reason in entry for entry in result.rejected), result.rejected


# ---------------------------------------------------------------------------------------
# SiLU: detected and annotated, never rewritten.


@pytest.mark.parametrize(
    ("body", "beta"),
    [
        ("s = Sigmoid(x)\n y = Mul(s, x)", None),
        ("b = Mul(x, k)\n s = Sigmoid(b)\n y = Mul(x, s)", 1.702),
    ],
)
def test_detect_silu_annotates(body, beta):
    model = hard_model(body, 17, **({"k": f32(beta)} if beta else {}))
    out = run_pass(model, "detect-silu", ops(model))
    for node in out.graph.node:
        assert meta(node)[PATTERN_KEY] == "silu"
        assert meta(node)[PATTERN_ID_KEY] == "silu/0"
    root = meta(out.graph.node[-1])
    assert ("lepton.silu.beta" in root) == (beta is not None)
    assert apply(DetectSiLUPass(), model).detected == {"silu": 1}


def test_detect_silu_ignores_gates_of_other_tensors():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4] x, float[4] z) => (float[4] y) {
            s = Sigmoid(z)
            y = Mul(x, s)
        }
        """
    )
    run_pass(model, "detect-silu", ["Sigmoid", "Mul"], modified=False)


# ---------------------------------------------------------------------------------------
# Attention

SDPA = """
<ir_version: {ir}, opset_import: ["" : {opset}]>
g (float[2,3,5,4] q, float{k_shape} k, float[2,3,6,7] v{mask_in}) => (float[2,3,5,7] y) {{
    kt = Transpose<perm = {perm}>(k)
    {scores}
    {masked}
    p = Softmax<axis = {axis}>({probs_in})
    y = MatMul(p, v)
}}
"""


def sdpa_model(
    opset=17,
    layout="BHSD",
    scaling="div",
    mask: tuple[int, ...] | None = (2, 1, 1, 6),
    axis=-1,
    **inits,
) -> onnx.ModelProto:
    k_shape, perm = {"BHSD": ("[2,3,6,4]", "[0, 1, 3, 2]"), "BSHD": ("[2,6,3,4]", "[0, 2, 3, 1]")}[
        layout
    ]
    scores = {
        "div": "s = MatMul(q, kt)\n ss = Div(s, scale)",
        "mul": "s = MatMul(q, kt)\n ss = Mul(scale, s)",
        "qk": "qs = Mul(q, scale)\n ks = Mul(kt, scale)\n ss = MatMul(qs, ks)",
    }[scaling]
    text = SDPA.format(
        ir=10 if opset >= 23 else 8,
        opset=opset,
        k_shape=k_shape,
        perm=perm,
        mask_in="" if mask is None else f", float[{','.join(map(str, mask))}] m",
        scores=scores,
        masked="sm = Add(ss, m)" if mask is not None else "",
        probs_in="sm" if mask is not None else "ss",
        axis=axis,
    )
    value = {"div": 2.0, "mul": 0.5, "qk": 0.5**0.5}[scaling]
    return model_from_text(text, {"scale": f32(value), **inits})


def test_fuse_attention_annotates_below_opset_23():
    model = sdpa_model()
    out = run_pass(model, "fuse-attention", ops(model))
    tagged = [n for n in out.graph.node if meta(n).get(PATTERN_KEY) == "sdpa"]
    assert [n.op_type for n in tagged] == ["Transpose", "MatMul", "Div", "Add", "Softmax", "MatMul"]
    assert {meta(n)[PATTERN_ID_KEY] for n in tagged} == {"sdpa/0"}
    assert meta(tagged[-1]) == {
        PATTERN_KEY: "sdpa",
        PATTERN_ID_KEY: "sdpa/0",
        "lepton.sdpa.scale": "0.5",
        "lepton.sdpa.key_layout": "BHSD",
        "lepton.sdpa.mask": "add",
    }
    assert apply(FuseAttentionPass(), model).detected == {"sdpa": 1}


@pytest.mark.parametrize(
    ("layout", "scaling", "mask", "expected"),
    [
        ("BHSD", "div", (2, 1, 5, 6), ["Attention"]),
        ("BHSD", "qk", None, ["Attention"]),
        ("BSHD", "mul", (2, 1, 1, 6), ["Transpose", "Expand", "Attention"]),
        ("BHSD", "div", (6,), ["Expand", "Attention"]),
    ],
    ids=["mask-full-rows", "scaled-q-and-k", "bshd-key-broadcast-mask", "1d-mask"],
)
def test_fuse_attention_rewrites_at_opset_23(layout, scaling, mask, expected):
    model = sdpa_model(23, layout, scaling, mask)
    out = run_pass(model, "fuse-attention", expected)
    node = out.graph.node[-1]
    assert attrs(node) == {"scale": pytest.approx(0.5)}
    assert node.input[0] == "q" and node.input[2] == "v"


def test_fuse_attention_at_opset_23_can_only_annotate():
    # rewrite=False: the pass leaves ops alone at any opset.
    model = sdpa_model(23)
    result = FuseAttentionPass(rewrite=False)(ir.from_proto(model))
    assert result.detected == {"sdpa": 1} and not result.fused
    assert [n.op_type for n in result.model.graph] == ops(model)


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        (sdpa_model(axis=2), "Softmax over axis 2 of rank 4, not the last axis"),
        (sdpa_model(scale=rand(5, 6)), "qk scale has shape [5, 6]"),
    ],
    ids=["softmax-axis", "tensor-scale"],
)
def test_fuse_attention_rejects(model, reason):
    run_pass(model, "fuse-attention", ops(model), modified=False)
    result = apply(FuseAttentionPass(), model)
    assert not result.detected
    assert any(reason in entry for entry in result.rejected), result.rejected


def test_fuse_attention_at_opset_23_annotates_what_it_cannot_rewrite():
    # (batch*heads, seq, dim) attention: Attention-23 would read 3-D inputs as
    # (batch, seq, heads*dim), so it is only annotated.
    model = model_from_text(
        """
        <ir_version: 10, opset_import: ["" : 23]>
        g (float[6,5,4] q, float[6,6,4] k, float[6,6,4] v) => (float[6,5,4] y) {
            kt = Transpose<perm = [0, 2, 1]>(k)
            s = MatMul(q, kt)
            ss = Mul(s, scale)
            p = Softmax(ss)
            y = MatMul(p, v)
        }
        """,
        {"scale": f32(0.5)},
    )
    out = run_pass(model, "fuse-attention", ops(model))
    assert meta(out.graph.node[-1])["lepton.sdpa.key_layout"] == "NSD"
    result = apply(FuseAttentionPass(), model)
    assert result.detected == {"sdpa": 1} and not result.fused
    assert any("3-D attention" in entry for entry in result.rejected), result.rejected


def test_fuse_attention_counts_and_numbers_several_blocks():
    # Two attention blocks in a row: ids follow node order.
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1,2,4,8] x) => (float[1,2,4,8] y) {
            kt = Transpose<perm = [0, 1, 3, 2]>(x)
            s = MatMul(x, kt)
            p = Softmax(s)
            h = MatMul(p, x)
            ht = Transpose<perm = [0, 1, 3, 2]>(h)
            s2 = MatMul(h, ht)
            ss2 = Div(s2, scale)
            p2 = Softmax(ss2)
            y = MatMul(p2, h)
        }
        """,
        {"scale": f32(8**0.5)},
    )
    out = run_pass(model, "fuse-attention", ops(model))
    ids = [meta(n).get(PATTERN_ID_KEY) for n in out.graph.node]
    assert ids == ["sdpa/0"] * 4 + ["sdpa/1"] * 5
    groups = pattern_nodes(ir.from_proto(out), "sdpa")
    assert {k: [n.op_type for n in v] for k, v in groups.items()} == {
        "sdpa/0": ["Transpose", "MatMul", "Softmax", "MatMul"],
        "sdpa/1": ["Transpose", "MatMul", "Div", "Softmax", "MatMul"],
    }


def test_fuse_attention_drops_stale_tags():
    # Tags from an earlier run on nodes that no longer form the pattern are removed.
    model = sdpa_model(axis=2)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    softmax.metadata_props.add(key=PATTERN_KEY, value="sdpa")
    softmax.metadata_props.add(key=PATTERN_ID_KEY, value="sdpa/0")
    out = run_pass(model, "fuse-attention", ops(model))
    assert all(not meta(n) for n in out.graph.node)
