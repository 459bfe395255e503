"""Tier 1/2: our "fused" output (target ort) never hides a pattern onnxruntime would fuse.

For each model, onnxruntime's optimized graph is saved for the original and for our output,
at ORT_ENABLE_EXTENDED and at ORT_ENABLE_ALL (what a user gets by default), and every fused
op kind ORT emits must occur at least as often in ours: its contrib ops, LayerNormalization
and Gelu, and at ENABLE_ALL the activations it fuses into its NCHWc convolutions. The NCHWc
layout ops themselves (the blocked Conv/pool ops and the Reorder nodes between layouts) are
not fusions: our folding legitimately leaves fewer of them.

A pass that rewrote, say, MatMul+Add into Reshape-Gemm-Reshape ahead of ORT's transformer
fusions, or dropped a LayerNorm epsilon (as onnxscript's add_0 rule did: it matches
x + 1e-12), shows up here as fewer SkipLayerNormalization/BiasGelu/... nodes.

Survey (onnxruntime 1.32, CPU, every pass of the ort target, each model as is and with static
input shapes): no pass of the ort target hides a fusion on the onnx wheel's light models,
ppocr-cls, ddddocr-det/-ocr-beta, picodet-layout, ppocrv4-det/-rec, minilm-l6 and
minilm-l6-dyn. What costs a BERT encoder its BiasGelu is static shapes: ORT's own
MatMulAddFusion turns N-D MatMul+Add into Reshape-Gemm-Reshape when the input shape is
known (and fuse-matmul-add-nd did the same ahead of it; it is now a lepton-target pass), so
`optimize --input-shape` on a dynamic export does not keep the fixed dims when they make it
slower (tests/test_optimize_speed_check.py, test_fixed_dims_that_cost_biasgelu_are_dropped).
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest

from lepton_compile.passes import optimize
from lepton_compile.passes.lepton_ops import DOMAIN
from lepton_compile.passes.ort_session import session, session_options
from lepton_compile.passes.testing import model_from_text, random_inputs, run_ort

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
ZOO = os.environ.get("LEPTON_MODELS", "/tmp/zoo_cache")

# Standard-domain ops that ORT only creates by fusing (its contrib ops all count).
STANDARD_FUSED = {"LayerNormalization", "Gelu"}
NCHWC = "com.microsoft.nchwc"
LEVELS = ("extended", "all")


def ort_optimized(model: onnx.ModelProto, level: str = "extended") -> onnx.ModelProto:
    """ORT's optimized graph of `model` at `level` (CPU provider), as it saves it."""
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.onnx"), os.path.join(tmp, "out.onnx")
        onnx.save(model, src)
        options = session_options(level)
        options.optimized_model_filepath = dst
        session(src, options=options)
        return onnx.load(dst, load_external_data=False)


def _fused_kind(node: onnx.NodeProto) -> str | None:
    if node.domain in ("", "ai.onnx"):
        return node.op_type if node.op_type in STANDARD_FUSED else None
    if node.domain == NCHWC:
        # Layout, not fusion; what ORT fused into a blocked Conv is its activation.
        activation = next((a.s.decode() for a in node.attribute if a.name == "activation"), "")
        return f"{NCHWC}.{node.op_type}+{activation}" if activation else None
    return f"{node.domain}.{node.op_type}"


def ort_fused_ops(model: onnx.ModelProto, level: str = "extended") -> collections.Counter[str]:
    """Fused op kinds in ORT's optimized graph of `model` at `level` (CPU provider)."""
    kinds = (_fused_kind(n) for n in ort_optimized(model, level).graph.node)
    return collections.Counter(k for k in kinds if k)


def hidden_fusions(
    original: onnx.ModelProto, ours: onnx.ModelProto, level: str
) -> tuple[dict[str, tuple[int, int]], collections.Counter[str]]:
    before, after = ort_fused_ops(original, level), ort_fused_ops(ours, level)
    return {k: (before[k], after[k]) for k in before if after[k] < before[k]}, before


def assert_no_fusion_hidden(model: onnx.ModelProto) -> collections.Counter[str]:
    """Our ort-target output keeps every fusion ORT finds on `model` at both levels.

    Returns what ORT fuses at ENABLE_EXTENDED (no layout ops to count around).
    """
    ours = optimize(model, "fused", target="ort", verify=False).model
    found = {}
    for level in LEVELS:
        fewer, found[level] = hidden_fusions(model, ours, level)
        assert not fewer, f"fused ops ORT ({level}) no longer finds (original, ours): {fewer}"
    return found["extended"]


BERT_LAYER = """
<ir_version: 8, opset_import: ["" : 17]>
bert (int64[1,8] ids, float[1,8] mask) => (float[1,8,16] out) {
    emb = Gather(word, ids)
    x0 = Add(emb, pos)
    m0 = ReduceMean<axes = [-1]>(x0)
    d0 = Sub(x0, m0)
    p0 = Pow(d0, two)
    v0 = ReduceMean<axes = [-1]>(p0)
    e0 = Add(v0, eps)
    s0 = Sqrt(e0)
    n0 = Div(d0, s0)
    g0 = Mul(n0, ln0_g)
    h = Add(g0, ln0_b)
    qm = MatMul(h, wq)
    q = Add(qm, bq)
    km = MatMul(h, wk)
    k = Add(km, bk)
    vm = MatMul(h, wv)
    v = Add(vm, bv)
    q4 = Reshape(q, heads)
    k4 = Reshape(k, heads)
    v4 = Reshape(v, heads)
    qt = Transpose<perm = [0, 2, 1, 3]>(q4)
    kt = Transpose<perm = [0, 2, 3, 1]>(k4)
    vt = Transpose<perm = [0, 2, 1, 3]>(v4)
    sc = MatMul(qt, kt)
    scd = Div(sc, scale)
    mu = Unsqueeze(mask, mask_axes)
    mi = Sub(one, mu)
    mb = Mul(mi, neg)
    sm = Add(scd, mb)
    pr = Softmax<axis = -1>(sm)
    ctx = MatMul(pr, vt)
    ctt = Transpose<perm = [0, 2, 1, 3]>(ctx)
    ctr = Reshape(ctt, hidden)
    om = MatMul(ctr, wo)
    o = Add(om, bo)
    r1 = Add(o, h)
    m1 = ReduceMean<axes = [-1]>(r1)
    d1 = Sub(r1, m1)
    p1 = Pow(d1, two)
    v1 = ReduceMean<axes = [-1]>(p1)
    e1 = Add(v1, eps)
    s1 = Sqrt(e1)
    n1 = Div(d1, s1)
    g1 = Mul(n1, ln1_g)
    h1 = Add(g1, ln1_b)
    fm = MatMul(h1, w1)
    f = Add(fm, b1)
    gd = Div(f, sqrt2)
    ge = Erf(gd)
    ga = Add(ge, one)
    gm = Mul(f, ga)
    gelu = Mul(gm, half)
    f2m = MatMul(gelu, w2)
    f2 = Add(f2m, b2)
    r2 = Add(f2, h1)
    m2 = ReduceMean<axes = [-1]>(r2)
    d2 = Sub(r2, m2)
    p2 = Pow(d2, two)
    v2 = ReduceMean<axes = [-1]>(p2)
    e2 = Add(v2, eps)
    s2 = Sqrt(e2)
    n2 = Div(d2, s2)
    g2 = Mul(n2, ln2_g)
    out = Add(g2, ln2_b)
}
"""


def bert_layer(eps: float) -> onnx.ModelProto:
    """One BERT encoder layer (hidden 16, 2 heads) as PyTorch exports it below opset 18."""
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    inits = {
        "word": w(50, 16),
        "pos": w(1, 8, 16),
        "two": np.array(2.0, np.float32),
        "eps": np.array(eps, np.float32),
        "one": np.array(1.0, np.float32),
        "half": np.array(0.5, np.float32),
        "sqrt2": np.array(np.sqrt(2.0), np.float32),
        "scale": np.array(np.sqrt(8.0), np.float32),
        "neg": np.array(-10000.0, np.float32),
        "heads": np.array([1, 8, 2, 8], np.int64),
        "hidden": np.array([1, 8, 16], np.int64),
        "mask_axes": np.array([1, 2], np.int64),
        "w1": w(16, 32),
        "b1": w(32),
        "w2": w(32, 16),
        "b2": w(16),
    }
    for i in range(3):
        inits[f"ln{i}_g"], inits[f"ln{i}_b"] = 1 + w(16), w(16)
    for name in "qkvo":
        inits[f"w{name}"], inits[f"b{name}"] = w(16, 16), w(16)
    return model_from_text(BERT_LAYER, inits)


def bert_layer_dynamic() -> onnx.ModelProto:
    """`bert_layer` as torch.onnx exports it with batch and sequence as dynamic axes: the
    heads' Reshapes copy the leading dims (0) instead of naming them, no position table.

    On it (and not on the static layer) onnxruntime forms BiasGelu: its MatMulAddFusion
    needs the MatMul input's shape, so it leaves the FFN's bias Add to the GELU.
    """
    text = BERT_LAYER.replace("int64[1,8] ids, float[1,8] mask", "int64[B,S] ids, float[B,S] mask")
    text = text.replace("float[1,8,16] out", "float[B,S,16] out")
    text = text.replace("x0 = Add(emb, pos)", "x0 = Identity(emb)")
    base = bert_layer(1e-12)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in base.graph.initializer}
    del inits["pos"]
    inits["heads"] = np.array([0, 0, 2, 8], np.int64)
    inits["hidden"] = np.array([0, 0, 16], np.int64)
    return model_from_text(text, inits)


MOBILE_BLOCK = """
<ir_version: 8, opset_import: ["" : 13]>
g (float[1,8,16,16] x) => (float[1,16,8,8] y) {
    c1 = Conv<pads = [1, 1, 1, 1], group = 8>(x, w1)
    n1 = BatchNormalization(c1, g1, b1, m1, v1)
    r1 = Clip(n1, zero, six)
    p1 = Pad(r1, pads)
    c2 = Conv(p1, w2, b2)
    hs = HardSigmoid<alpha = 0.16666667, beta = 0.5>(c2)
    h = Mul(c2, hs)
    r2 = Relu(h)
    p2 = Pad(r2, pads)
    p = MaxPool<kernel_shape = [3, 3], strides = [2, 2]>(p2)
    t = Transpose<perm = [0, 2, 3, 1]>(p)
    t2 = Reshape(t, flat)
    m = MatMul(t2, wf)
    f = Add(m, bf)
    r3 = Relu(f)
    y = Reshape(r3, out_shape)
}
"""


def mobile_block() -> onnx.ModelProto:
    rng = np.random.default_rng(1)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    return model_from_text(
        MOBILE_BLOCK,
        {
            "w1": w(8, 1, 3, 3),
            "g1": w(8),
            "b1": w(8),
            "m1": w(8),
            "v1": (rng.random(8) + 0.5).astype(np.float32),
            "zero": np.array(0.0, np.float32),
            "six": np.array(6.0, np.float32),
            "pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64),
            "w2": w(16, 8, 3, 3),
            "b2": w(16),
            "flat": np.array([64, 16], np.int64),
            "wf": w(16, 16),
            "bf": w(16),
            "out_shape": np.array([1, 16, 8, 8], np.int64),
        },
    )


def test_conv_net_shufflenet():
    # BatchNorm, grouped Conv, Sum residuals, channel shuffle (Reshape/Transpose).
    found = assert_no_fusion_hidden(onnx.load(os.path.join(LIGHT_DIR, "light_shufflenet.onnx")))
    assert found["com.microsoft.FusedConv"] == 17


def test_mobile_block_with_pad_and_hardswish():
    found = assert_no_fusion_hidden(mobile_block())
    assert found["com.microsoft.FusedConv"] > 0


@pytest.mark.parametrize("eps", [1e-5, 1e-12])
def test_transformer_layer(eps):
    # eps=1e-12 (BERT's): a no-op rule that took x + 1e-12 for x + 0 would drop the
    # epsilon and, with it, every LayerNorm/SkipLayerNormalization ORT finds.
    found = assert_no_fusion_hidden(bert_layer(eps))
    assert found["com.microsoft.SkipLayerNormalization"] == 3  # the embedding add too
    assert found["com.microsoft.Gelu"] + found["com.microsoft.BiasGelu"] == 1


def test_dynamic_transformer_layer_keeps_biasgelu():
    model = bert_layer_dynamic()
    found = assert_no_fusion_hidden(model)
    assert found["com.microsoft.BiasGelu"] == 1
    assert found["com.microsoft.FusedMatMul"] == 1  # the attention scores and their scale
    ours = optimize(model, "fused", target="ort", verify=False).model
    assert "Gemm" not in {n.op_type for n in ours.graph.node}


def test_static_shapes_are_what_costs_biasgelu():
    # ORT itself: with the shapes known it makes the FFN's MatMul+Add a Gemm first.
    static = ort_fused_ops(bert_layer(1e-12), "all")
    dynamic = ort_fused_ops(bert_layer_dynamic(), "all")
    assert static["com.microsoft.BiasGelu"] == 0 < dynamic["com.microsoft.BiasGelu"]


# The light models with big fully connected layers (their generated weights are folded into
# initializers of hundreds of MB) take a minute each.
_BIG_FC = {"light_vgg19", "light_bvlc_alexnet", "light_zfnet512"}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=[pytest.mark.slow] if p.stem in _BIG_FC else [], id=p.stem)
        for p in sorted(Path(LIGHT_DIR).glob("light_*.onnx"))
    ],
)
def test_light_models(path: Path):
    assert_no_fusion_hidden(onnx.load(str(path)))


ZOO_MODELS = [
    "ppocr-cls",
    "ddddocr-det",
    "ddddocr-ocr-beta",
    "picodet-layout",
    "ppocrv4-det",
    "ppocrv4-rec",
    "minilm-l6",
    "minilm-l6-dyn",
]


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_zoo_models(name):
    path = os.path.join(ZOO, f"{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"{path} not fetched (python benchmarks/zoo.py fetch {name})")
    found = assert_no_fusion_hidden(onnx.load(path))
    if name == "minilm-l6-dyn":
        assert found["com.microsoft.BiasGelu"] == 6


def test_lepton_target_on_transformer_layer():
    model = bert_layer(eps=1e-5)
    result = optimize(model, "fused", target="lepton", verify=False)
    fused = [n for n in result.model.graph.node if n.domain == DOMAIN]
    # q, k, v, output projection (bias + residual), FFN in (bias + gelu), FFN out.
    assert [n.op_type for n in fused] == ["FusedMatMul"] * 6
    feeds = random_inputs(model, seed=0)
    feeds["ids"] = np.arange(8, dtype=np.int64).reshape(1, 8)
    feeds["mask"] = np.ones((1, 8), np.float32)
    (expected,) = run_ort(model, feeds)
    (actual,) = run_ort(result.model, feeds)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
