"""Tier 1: fuse-matmul-add-nd: N-D MatMul+Add -> Reshape-Gemm-Reshape, kept only if smaller."""

from __future__ import annotations

import logging
import os

import numpy as np
import onnx
import pass_harness
import pytest
from pass_harness import op_counts

from lepton_compile.passes import optimize, resolve_pipeline
from lepton_compile.passes.testing import assert_same_outputs, model_from_text, run_ort

NAME = "fuse-matmul-add-nd"
# Gemm and MatMul sum the same products in a different order.
RTOL, ATOL = 1e-5, 1e-5
FORCE = {NAME: {"only_if_smaller": False}}
ZOO = os.environ.get("LEPTON_MODELS", "/tmp/zoo_cache")


def w(*shape: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed + sum(shape)).standard_normal(shape) * 0.3).astype(
        np.float32
    )


# q, k and v projections of one tensor, each split into heads: the three input
# Reshapes are one (CSE), each output Reshape merges with its heads Reshape.
QKV = """
<ir_version: 8, opset_import: ["" : 17]>
qkv (float[2,8,16] x) => (float[2,8,2,8] q, float[2,8,2,8] k, float[2,8,2,8] v) {
    qm = MatMul(x, wq)
    qb = Add(qm, bq)
    q = Reshape(qb, heads)
    km = MatMul(x, wk)
    kb = Add(bk, km)
    k = Reshape(kb, heads)
    vm = MatMul(x, wv)
    vb = Add(vm, bv)
    v = Reshape(vb, heads)
}
"""


def run_pass(
    model: onnx.ModelProto,
    *,
    modified: bool,
    force: bool = False,
    shapes: dict[str, list[int]] | None = None,
) -> onnx.ModelProto:
    """infer-shapes (the pipeline's folding records shapes), then the pass, through the
    harness's checks. The pass is for the lepton target only (see test_not_in_the_ort_target)."""
    return pass_harness.run_pass(
        model,
        ["infer-shapes", NAME],
        modified=modified,
        shapes=shapes,
        rtol=RTOL,
        atol=ATOL,
        target="lepton",
        options=FORCE if force else None,
        verify=False,
        idempotent="last",
    )


def projection_inits(names: str) -> dict[str, np.ndarray]:
    """w<name> (16, 16) and b<name> (16,) for each letter of ``names``, seeded by its place."""
    inits = {}
    for i, name in enumerate(names):
        inits[f"w{name}"], inits[f"b{name}"] = w(16, 16, seed=i), w(16, seed=i)
    return inits


def qkv_inits() -> dict[str, np.ndarray]:
    return {"heads": np.array([2, 8, 2, 8], np.int64), **projection_inits("qkv")}


def test_qkv_projections_share_one_input_reshape():
    model = model_from_text(QKV, qkv_inits())
    out = run_pass(model, modified=True)
    assert op_counts(out) == {"Gemm": 3, "Reshape": 4}  # 9 nodes -> 7
    gemms = [n for n in out.graph.node if n.op_type == "Gemm"]
    assert len({n.input[0] for n in gemms}) == 1, "input Reshape not shared"
    assert all(len(n.input) == 3 and not n.attribute for n in gemms)
    flat = next(n for n in out.graph.node if n.output[0] == gemms[0].input[0])
    shape = next(i for i in out.graph.initializer if i.name == flat.input[1])
    assert onnx.numpy_helper.to_array(shape).tolist() == [16, 16]


# FFN: two projections with an erf GELU between them.
FFN = """
<ir_version: 8, opset_import: ["" : 17]>
ffn (float[1,4,6,8] x) => (float[1,4,6,8] y) {
    hm = MatMul(x, w1)
    h = Add(hm, b1)
    d = Div(h, sqrt2)
    e = Erf(d)
    a = Add(e, one)
    m = Mul(h, a)
    g = Mul(m, half)
    ym = MatMul(g, w2)
    y = Add(ym, b2)
}
"""


def ffn_inits() -> dict[str, np.ndarray]:
    return {
        "w1": w(8, 32),
        "b1": w(32),
        "w2": w(32, 8),
        "b2": w(8),
        "sqrt2": np.array(np.sqrt(2.0), np.float32),
        "one": np.array([1.0], np.float32),
        "half": np.array(0.5, np.float32),
    }


def test_ffn_alone_is_not_smaller_and_stays():
    # Two pairs -> two Gemms and two Reshapes: 9 nodes either way, so nothing changes.
    model = model_from_text(FFN, ffn_inits())
    out = run_pass(model, modified=False)
    assert op_counts(out) == op_counts(model)


def test_ffn_gelu_runs_on_the_2d_tensor():
    # Forced: the GELU between the Gemms works on [24, 32]; its Reshape pair cancels.
    model = model_from_text(FFN, ffn_inits())
    out = run_pass(model, modified=True, force=True)
    assert op_counts(out) == {"Reshape": 2, "Gemm": 2, "Mul": 2, "Div": 1, "Erf": 1, "Add": 1}
    order = [n.op_type for n in out.graph.node]
    assert order[0] == "Reshape" and order[-1] == "Reshape"


def test_not_smaller_logs_why(caplog):
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,8] x) => (float[2,3,4] y) {
        m = MatMul(x, b)
        y = Add(m, c)
    }
    """
    model = model_from_text(text, {"b": w(8, 4), "c": w(4)})
    with caplog.at_level(logging.INFO, logger="lepton_compile.passes.fusion_gemm_nd"):
        out = run_pass(model, modified=False)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}
    assert "not applied: 3 nodes with the rewrite, 2 without" in caplog.text
    forced = run_pass(model, modified=True, force=True)
    assert [n.op_type for n in forced.graph.node] == ["Reshape", "Gemm", "Reshape"]


LAYER = """
<ir_version: 8, opset_import: ["" : 17]>
layer (float[1,8,16] x) => (float[1,8,16] out) {
    qm = MatMul(x, wq)
    q = Add(qm, bq)
    q4 = Reshape(q, heads)
    km = MatMul(x, wk)
    k = Add(km, bk)
    k4 = Reshape(k, heads)
    vm = MatMul(x, wv)
    v = Add(vm, bv)
    v4 = Reshape(v, heads)
    qt = Transpose<perm = [0, 2, 1, 3]>(q4)
    kt = Transpose<perm = [0, 2, 3, 1]>(k4)
    vt = Transpose<perm = [0, 2, 1, 3]>(v4)
    sc = MatMul(qt, kt)
    pr = Softmax<axis = -1>(sc)
    ctx = MatMul(pr, vt)
    ctt = Transpose<perm = [0, 2, 1, 3]>(ctx)
    ctr = Reshape(ctt, hidden)
    om = MatMul(ctr, wo)
    o = Add(om, bo)
    r = Add(o, x)
    hm = MatMul(r, w1)
    h = Add(hm, b1)
    act = Relu(h)
    fm = MatMul(act, w2)
    f = Add(fm, b2)
    out = Add(f, r)
}
"""


def layer_inits() -> dict[str, np.ndarray]:
    return {
        "heads": np.array([1, 8, 2, 8], np.int64),
        "hidden": np.array([1, 8, 16], np.int64),
        "w1": w(16, 32),
        "b1": w(32),
        "w2": w(32, 16),
        "b2": w(16),
        **projection_inits("qkvo"),
    }


def test_attention_layer():
    model = model_from_text(LAYER, layer_inits())
    out = run_pass(model, modified=True)
    # 6 MatMul+Add pairs -> 6 Gemm; Reshapes: q/k/v input (shared), 3 merged heads
    # splits, the heads merge (merged with the o input), o output, FFN input and output;
    # the Relu runs on the 2-D tensor.
    assert op_counts(out) == {
        "Gemm": 6,
        "Reshape": 8,
        "Transpose": 4,
        "MatMul": 2,
        "Softmax": 1,
        "Add": 2,
        "Relu": 1,
    }
    assert len(out.graph.node) < len(model.graph.node)  # 26 -> 24


def test_fused_pipeline_places_it_after_the_fusions():
    names = resolve_pipeline("fused", "lepton")
    i = names.index(NAME)
    assert names[i + 1] == "dedup-initializers"
    assert {"fuse-matmul-add", "fuse-attention", "fuse-lepton"} <= set(names[:i])
    assert NAME not in resolve_pipeline("basic", "lepton")


def test_not_in_the_ort_target():
    # onnxruntime rewrites N-D MatMul+Add itself where it chooses to; done ahead of it, the
    # bias sits in a Gemm where BiasGelu and the attention fusions cannot find it.
    assert NAME not in resolve_pipeline("fused", "ort")
    with pytest.raises(ValueError, match="not available for target 'ort'"):
        resolve_pipeline(passes=[NAME], target="ort")
    model = model_from_text(LAYER, layer_inits())
    assert "Gemm" not in op_counts(optimize(model, "fused", target="ort").model)


def test_fused_pipeline_verifies_and_shrinks_the_layer():
    # fuse-lepton would take every MatMul+Add first: left out to see this pass at work.
    model = model_from_text(LAYER, layer_inits())
    with_pass = optimize(model, "fused", target="lepton", skip=["fuse-lepton"])
    without = optimize(model, "fused", target="lepton", skip=["fuse-lepton", NAME])
    assert with_pass.verification is not None and with_pass.verification.status == "passed"
    assert not with_pass.dropped
    assert len(with_pass.model.graph.node) < len(without.model.graph.node)
    assert_same_outputs(model, with_pass.model, rtol=RTOL, atol=ATOL)


# --- rejected matches: the model stays as it was, even when forced ---------------------

PAIR = """
<ir_version: 8, opset_import: ["" : 17]>
g ({x_type} x{extra}) => ({y_type} y) {{
    m = MatMul(x, b)
    y = Add(m, c)
}}
"""


@pytest.mark.parametrize(
    ("case", "x_type", "y_type", "extra", "b_shape", "c_shape"),
    [
        ("dynamic lead dims", "float[N,3,8]", "float[N,3,4]", "", (8, 4), (4,)),
        ("non-constant B", "float[2,3,8]", "float[2,3,4]", ", float[8,4] b", None, (4,)),
        ("bias [M, N]", "float[2,3,8]", "float[2,3,4]", "", (8, 4), (3, 4)),
        ("bias [1, 1, N]", "float[2,3,8]", "float[2,3,4]", "", (8, 4), (1, 1, 4)),
        ("bias [1]", "float[2,3,8]", "float[2,3,4]", "", (8, 4), (1,)),
        ("scalar bias", "float[2,3,8]", "float[2,3,4]", "", (8, 4), ()),
        ("B rank 3", "float[2,3,8]", "float[2,3,4]", "", (1, 8, 4), (4,)),
        ("rank 2 A", "float[3,8]", "float[3,4]", "", (8, 4), (4,)),
        ("int32", "int32[2,3,8]", "int32[2,3,4]", "", (8, 4), (4,)),
    ],
)
def test_rejected(case, x_type, y_type, extra, b_shape, c_shape):
    model = model_from_text(
        PAIR.format(x_type=x_type, y_type=y_type, extra=extra),
        {"c": np.ones(c_shape, np.float32) * 0.5} | ({"b": w(*b_shape)} if b_shape else {}),
    )
    if x_type.startswith("int32"):
        model.graph.initializer[0].CopyFrom(
            onnx.numpy_helper.from_array(np.full(c_shape, 3, np.int32), "c")
        )
        model.graph.initializer[1].CopyFrom(
            onnx.numpy_helper.from_array(np.arange(32, dtype=np.int32).reshape(8, 4), "b")
        )
    shapes = {"x": [2, 3, 8]} if case == "dynamic lead dims" else None
    out = run_pass(model, modified=False, force=True, shapes=shapes)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}


def test_rejects_weight_the_user_can_feed():
    model = model_from_text(
        PAIR.format(x_type="float[2,3,8]", y_type="float[2,3,4]", extra=", float[8,4] b"),
        {"b": w(8, 4), "c": w(4)},
    )
    out = run_pass(model, modified=False, force=True)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}


def test_rejects_matmul_read_twice():
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,8] x) => (float[2,3,4] y, float[2,3,4] m) {
        m = MatMul(x, b)
        y = Add(m, c)
    }
    """
    out = run_pass(model_from_text(text, {"b": w(8, 4), "c": w(4)}), modified=False, force=True)
    assert op_counts(out) == {"MatMul": 1, "Add": 1}


# --- regions that must stay 3-D ------------------------------------------------------


def two_projections(middle: str, outputs: str = "float[2,3,8] y", **inits) -> onnx.ModelProto:
    """x [2, 3, 8] -> MatMul+Add -> h, then ``middle`` (reads h, writes r), then MatMul+Add -> y;
    ``inits`` are the initializers ``middle`` reads."""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2,3,8] x) => ({outputs}) {{
        hm = MatMul(x, w1)
        h = Add(hm, b1)
        {middle}
        ym = MatMul(r, w2)
        y = Add(ym, b2)
    }}
    """
    weights = {"w1": w(8, 8), "b1": w(8), "w2": w(8, 8, seed=1), "b2": w(8, seed=1)}
    return model_from_text(text, weights | inits)


def test_region_with_graph_output_stays_3d():
    model = two_projections("r = Relu(h)", outputs="float[2,3,8] y, float[2,3,8] r")
    out = run_pass(model, modified=True, force=True)
    # r keeps its [2, 3, 8] shape: the Relu reads the first Gemm's output Reshape.
    relu = next(n for n in out.graph.node if n.op_type == "Relu")
    producer = next(n for n in out.graph.node if relu.input[0] in n.output)
    assert producer.op_type == "Reshape"
    assert op_counts(out)["Reshape"] == 4


def test_region_with_3d_operand_stays_3d():
    # The residual x is [2, 3, 8]: the Add cannot run on the 2-D tensor.
    out = run_pass(two_projections("r = Add(h, x)"), modified=True, force=True)
    assert op_counts(out) == {"Reshape": 4, "Gemm": 2, "Add": 1}


def test_region_with_rank_2_constant_stays_3d():
    # A [3, 8] constant broadcasts over the middle axis: on [6, 8] it would not.
    model = two_projections("r = Mul(h, scale)", scale=w(3, 8, seed=2))
    out = run_pass(model, modified=True, force=True)
    assert op_counts(out) == {"Reshape": 4, "Gemm": 2, "Mul": 1}


# --- a real model ----------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_node_count():
    path = os.path.join(ZOO, "minilm-l6.onnx")
    if not os.path.exists(path):
        pytest.skip(f"{path} not fetched (python benchmarks/zoo.py fetch minilm-l6)")
    from lepton_compile.intake import load_model

    shapes = {name: [1, 128] for name in ("input_ids", "attention_mask", "token_type_ids")}
    model = load_model(path, shapes).model
    result = optimize(model, "fused", target="lepton", skip=["fuse-lepton"])
    assert result.verification is not None and result.verification.status == "passed"
    # onnxsim 0.8.1 leaves 206; 213 without this pass.
    assert len(result.model.graph.node) <= 206
    assert op_counts(result.model)["Gemm"] == 36
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(0, 30522, (1, 128)),
        "attention_mask": np.ones((1, 128), np.int64),
        "token_type_ids": np.zeros((1, 128), np.int64),
    }
    (expected,) = run_ort(model, feeds)
    (actual,) = run_ort(result.model, feeds)
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
