"""Pruning passes: magnitude, 2:4 semi-structured and structured channel pruning."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import LIGHT_DIR, mlp_text, text_model
from make_models import bn_weights, tinycnn
from onnx import numpy_helper

from lepton_compile.passes import prune
from lepton_compile.passes._utils import const_array
from lepton_compile.passes.cleanup import (
    ConstantFoldingPass,
    RemoveInitializerInputsPass,
    RemoveUnusedPass,
)
from lepton_compile.passes.prune import (
    MagnitudePrunePass,
    SemiStructured24Pass,
    StructuredChannelPrunePass,
    channel_groups,
    check_24,
    prune_channels_by_index,
)
from lepton_compile.passes.prune.dependency_groups import analyse
from lepton_compile.passes.testing import random_inputs, run_ort

RNG_SEED = 0


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t).copy() for t in model.graph.initializer}


def _apply(pass_: ir.passes.PassBase, model: onnx.ModelProto) -> onnx.ModelProto:
    """Run `pass_` on an IR copy of `model`; checks the pass left its input alone."""
    source = ir.serde.deserialize_model(model)
    before = ir.serde.serialize_model(source).SerializeToString()
    result = pass_(source)
    assert result.model is not source
    assert ir.serde.serialize_model(source).SerializeToString() == before, "input modified"
    out = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(out, full_check=True)
    return out


def _assert_same(
    reference: onnx.ModelProto, candidate: onnx.ModelProto, shapes=None, rtol=1e-4
) -> None:
    feeds = random_inputs(reference, seed=1, shapes=shapes)
    expected = run_ort(reference, feeds)
    actual = run_ort(candidate, feeds)
    for e, a in zip(expected, actual, strict=True):
        assert e.shape == a.shape
        scale = max(1.0, float(np.abs(e).max()))
        np.testing.assert_allclose(a, e, rtol=rtol, atol=1e-5 * scale)


def _groups(model: onnx.ModelProto) -> dict[str, prune.ChannelGroup]:
    return {g.id: g for g in channel_groups(model)}


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
    return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)


def _kill(weights: dict[str, np.ndarray], channels, *, w=(), b=(), bn=()) -> None:
    """Make `channels` exactly zero after the ReLU that follows: zero weights (dim 0) and
    biases, and give BatchNormalization a -1 output there."""
    for name in w:
        weights[name][list(channels)] = 0
    for name in b:
        weights[name][list(channels)] = 0
    for tag in bn:
        weights[f"m{tag}"][list(channels)] = 0
        weights[f"o{tag}"][list(channels)] = -1


# ---------------------------------------------------------------------------------------
# Unstructured magnitude pruning.

MIXED = """
<ir_version: 8, opset_import: ["" : 17]>
mixed (float[2, 8, 6, 6] x) => (float[2, 10] y) {
    c = Conv <pads = [1, 1, 1, 1]> (x, wc, bc)
    r = Relu (c)
    g = GlobalAveragePool (r)
    f = Flatten (g)
    h = Gemm <transB = 1> (f, wg, bg)
    y = MatMul (h, wm)
}
"""


def _mixed(scale_conv: float = 1.0) -> onnx.ModelProto:
    rng = np.random.default_rng(RNG_SEED)
    return text_model(
        MIXED,
        {
            "wc": _w(rng, 16, 8, 3, 3) * np.float32(scale_conv),
            "bc": np.zeros(16, np.float32),
            "wg": _w(rng, 12, 16),
            "bg": np.zeros(12, np.float32),
            "wm": _w(rng, 12, 10),
        },
    )


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
def test_magnitude_per_layer_sparsity(sparsity: float) -> None:
    model = _mixed()
    p = MagnitudePrunePass(sparsity=sparsity)
    out = _apply(p, model)
    before, after = _weights(model), _weights(out)
    assert [r["node"] for r in p.report] == ["c", "h", "y"]
    for record in p.report:
        w0, w1 = before[record["weight"]], after[record["weight"]]
        expected = round(sparsity * w0.size)
        assert np.count_nonzero(w1 == 0) == expected
        assert record["sparsity"] == pytest.approx(expected / w0.size)
        assert record["skipped"] is None
        # The smallest magnitudes went; the others are untouched.
        kept = w1 != 0
        np.testing.assert_array_equal(w1[kept], w0[kept])
        assert np.abs(w0[~kept]).max() <= np.abs(w0[kept]).min()
    np.testing.assert_array_equal(after["bc"], before["bc"])
    (y,) = run_ort(out, random_inputs(out))
    assert y.shape == (2, 10) and np.isfinite(y).all()


def test_magnitude_global_threshold() -> None:
    model = _mixed(scale_conv=20.0)
    p = MagnitudePrunePass(sparsity=0.6, scope="global")
    out = _apply(p, model)
    before, after = _weights(model), _weights(out)
    names = ["wc", "wg", "wm"]
    total = sum(before[n].size for n in names)
    assert sum(np.count_nonzero(after[n] == 0) for n in names) == round(0.6 * total)
    dropped = np.concatenate([np.abs(before[n][after[n] == 0]) for n in names])
    kept = np.concatenate([np.abs(before[n][after[n] != 0]) for n in names])
    assert dropped.max() <= kept.min()
    by_node = {r["node"]: r["sparsity"] for r in p.report}
    # One threshold for all: the large conv weights lose far less than the others.
    assert by_node["c"] < 0.6 < by_node["h"]
    run_ort(out, random_inputs(out))


def test_magnitude_excluded_and_small_layers_untouched() -> None:
    model = _mixed()
    p = MagnitudePrunePass(sparsity=0.5, nodes_to_exclude=("h",), min_params=200)
    out = _apply(p, model)
    before, after = _weights(model), _weights(out)
    records = {r["node"]: r for r in p.report}
    assert records["h"]["skipped"] == "excluded"
    assert "min_params" in records["y"]["skipped"]
    assert records["c"]["skipped"] is None
    np.testing.assert_array_equal(after["wg"], before["wg"])
    np.testing.assert_array_equal(after["wm"], before["wm"])
    assert np.count_nonzero(after["wc"] == 0) == before["wc"].size // 2


def test_magnitude_zero_sparsity_changes_nothing() -> None:
    model = _mixed()
    source = ir.serde.deserialize_model(model)
    result = MagnitudePrunePass(sparsity=0.0)(source)
    assert not result.modified
    after = _weights(ir.serde.serialize_model(result.model))
    for name, array in _weights(model).items():
        np.testing.assert_array_equal(after[name], array)


# ---------------------------------------------------------------------------------------
# 2:4 semi-structured sparsity.

SPARSE24 = """
<ir_version: 8, opset_import: ["" : 17]>
s24 (float[2, 3, 8, 8] x) => (float[2, 6] y) {
    c0 = Conv <pads = [1, 1, 1, 1]> (x, w0)
    c1 = Conv <pads = [1, 1, 1, 1]> (c0, w1, b1)
    c2 = Conv <group = 2> (c1, w2)
    g = GlobalAveragePool (c2)
    f = Flatten (g)
    h = Gemm (f, wg)
    t = Gemm <transB = 1> (h, wt)
    u = MatMul (t, wm)
    y = MatMul (u, ws)
}
"""


def _sparse24_model() -> onnx.ModelProto:
    rng = np.random.default_rng(RNG_SEED)
    weights = {
        "w0": _w(rng, 8, 3, 3, 3),  # I = 3: skipped
        "w1": _w(rng, 16, 8, 3, 3),  # I = 8
        "b1": _w(rng, 16),
        "w2": _w(rng, 16, 8, 1, 1),  # group 2: I/g = 8
        "wg": _w(rng, 16, 12),  # K = 16 (dim 0)
        "wt": _w(rng, 8, 12),  # transB: K = 12 (dim 1)
        "wm": _w(rng, 8, 6),  # K = 8
        "ws": _w(rng, 6, 6),  # K = 6: skipped
    }
    assert all(np.count_nonzero(w) == w.size for w in weights.values())
    return text_model(SPARSE24, weights)


def test_semi_structured_24_layout() -> None:
    model = _sparse24_model()
    p = SemiStructured24Pass()
    out = _apply(p, model)
    before, after = _weights(model), _weights(out)
    records = {r["weight"]: r for r in p.report}
    expected_axes = {"w1": 1, "w2": 1, "wg": 0, "wt": 1, "wm": 0}
    for name, axis in expected_axes.items():
        assert records[name]["skipped"] is None and records[name]["axis"] == axis
        w0, w1 = before[name], after[name]
        assert check_24(w1, axis, exact=True), name
        assert records[name]["sparsity"] == pytest.approx(0.5)
        # The two kept entries of each group are the two largest, unchanged.
        g0 = np.moveaxis(w0, axis, -1).reshape(-1, 4)
        g1 = np.moveaxis(w1, axis, -1).reshape(-1, 4)
        kept = g1 != 0
        np.testing.assert_array_equal(g1[kept], g0[kept])
        smallest_kept = np.where(kept, np.abs(g0), np.inf).min(axis=1)
        largest_dropped = np.where(kept, -np.inf, np.abs(g0)).max(axis=1)
        assert (largest_dropped <= smallest_kept).all()
        # Along any other axis the pattern does not hold.
        other = 0 if axis != 0 else 1
        assert not check_24(w1, other, exact=True)
    for name in ("w0", "ws"):
        assert "not a multiple of 4" in records[name]["skipped"]
        np.testing.assert_array_equal(after[name], before[name])
    np.testing.assert_array_equal(after["b1"], before["b1"])
    (y,) = run_ort(out, random_inputs(out))
    assert y.shape == (2, 6)


def test_semi_structured_24_excluded() -> None:
    model = _sparse24_model()
    p = SemiStructured24Pass(nodes_to_exclude=("t", "u"))
    out = _apply(p, model)
    before, after = _weights(model), _weights(out)
    skipped = {r["node"]: r["skipped"] for r in p.report}
    assert skipped["t"] == skipped["u"] == "excluded"
    np.testing.assert_array_equal(after["wt"], before["wt"])
    np.testing.assert_array_equal(after["wm"], before["wm"])
    assert check_24(after["wg"], 0, exact=True)


def test_check_24() -> None:
    dense = np.arange(1, 17, dtype=np.float32).reshape(4, 4)
    assert not check_24(dense, 1)
    sparse = prune.prune_24(dense, 1)
    assert check_24(sparse, 1, exact=True)
    np.testing.assert_array_equal(sparse[0], [0, 0, 3, 4])
    assert not check_24(np.zeros((2, 6)), 1)  # 6 is not a multiple of 4
    assert check_24(np.zeros((2, 8)), 1) and not check_24(np.zeros((2, 8)), 1, exact=True)


# ---------------------------------------------------------------------------------------
# Structured channel pruning: small graphs whose pruned channels are exactly zero.

CHAIN = """
<ir_version: 8, opset_import: ["" : 17]>
chain (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
    c1 = Conv <pads = [1, 1, 1, 1]> (x, w1, b1)
    n1 = BatchNormalization (c1, s1, o1, m1, v1)
    r1 = Relu (n1)
    y = Conv <pads = [1, 1, 1, 1]> (r1, w2, b2)
}
"""

RESIDUAL = """
<ir_version: 8, opset_import: ["" : 17]>
residual (float[1, 4, 8, 8] x) => (float[1, 3, 8, 8] y) {
    a = Conv <pads = [1, 1, 1, 1]> (x, wa, ba)
    na = BatchNormalization (a, sa, oa, ma, va)
    b = Conv (x, wb)
    s = Add (na, b)
    r = Relu (s)
    y = Conv <pads = [1, 1, 1, 1]> (r, wy, by)
}
"""

CONCAT = """
<ir_version: 8, opset_import: ["" : 17]>
concat (float[1, 3, 8, 8] x) => (float[1, 3, 8, 8] y) {
    p = Conv <pads = [1, 1, 1, 1]> (x, wp, bp)
    rp = Relu (p)
    q = Conv (x, wq, bq)
    rq = Relu (q)
    cat = Concat <axis = 1> (rp, x, rq)
    n = BatchNormalization (cat, sn, on, mn, vn)
    r = Relu (n)
    y = Conv <pads = [1, 1, 1, 1]> (r, wy, by)
}
"""

DEPTHWISE = """
<ir_version: 8, opset_import: ["" : 17]>
depthwise (float[1, 4, 8, 8] x) => (float[1, 4, 8, 8] y) {
    e = Conv (x, we)
    ne = BatchNormalization (e, se, oe, me, ve)
    re = Clip (ne, lo, hi)
    d = Conv <group = 8, pads = [1, 1, 1, 1]> (re, wd, bd)
    nd = BatchNormalization (d, sd, od, md, vd)
    rd = Relu (nd)
    y = Conv (rd, wy)
}
"""


def _chain() -> onnx.ModelProto:
    rng = np.random.default_rng(RNG_SEED)
    w = {"w1": _w(rng, 8, 3, 3, 3), "b1": _w(rng, 8), **bn_weights(rng, 8, "1")}
    w |= {"w2": _w(rng, 4, 8, 3, 3), "b2": _w(rng, 4)}
    _kill(w, [1, 4, 6], w=["w1"], b=["b1"], bn=["1"])
    return text_model(CHAIN, w)


def _residual() -> onnx.ModelProto:
    rng = np.random.default_rng(RNG_SEED)
    w = {"wa": _w(rng, 8, 4, 3, 3), "ba": _w(rng, 8), **bn_weights(rng, 8, "a")}
    w |= {"wb": _w(rng, 8, 4, 1, 1), "wy": _w(rng, 3, 8, 3, 3), "by": _w(rng, 3)}
    _kill(w, [0, 5], w=["wa", "wb"], b=["ba"], bn=["a"])
    return text_model(RESIDUAL, w)


def _concat() -> onnx.ModelProto:
    rng = np.random.default_rng(RNG_SEED)
    w = {"wp": _w(rng, 6, 3, 3, 3), "bp": _w(rng, 6), "wq": _w(rng, 4, 3, 1, 1)}
    w |= {
        "bq": _w(rng, 4),
        **bn_weights(rng, 13, "n"),
        "wy": _w(rng, 3, 13, 3, 3),
        "by": _w(rng, 3),
    }
    _kill(w, [1, 4], w=["wp"], b=["bp"])
    _kill(w, [2], w=["wq"], b=["bq"])
    # Concat positions: p at 0..5, x at 6..8, q at 9..12.
    _kill(w, [1, 4, 9 + 2], bn=["n"])
    return text_model(CONCAT, w)


def _depthwise() -> onnx.ModelProto:
    rng = np.random.default_rng(RNG_SEED)
    w = {"we": _w(rng, 8, 4, 1, 1), **bn_weights(rng, 8, "e"), **bn_weights(rng, 8, "d")}
    w |= {"wd": _w(rng, 8, 1, 3, 3), "bd": _w(rng, 8), "wy": _w(rng, 4, 8, 1, 1)}
    w |= {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}
    _kill(w, [2, 3, 7], w=["we"], b=["bd"], bn=["e", "d"])
    return text_model(DEPTHWISE, w)


STRUCTURED_CASES = {
    # name: (model, {group: kept}, expected new weight shapes, expected group records)
    "chain": (
        _chain,
        {"c1": [0, 2, 3, 5, 7]},
        {"w1": (5, 3, 3, 3), "b1": (5,), "s1": (5,), "v1": (5,), "w2": (4, 5, 3, 3)},
        {"c1": (["c1"], ["y"], True), "y": (["y"], [], False)},
    ),
    "residual": (
        _residual,
        {"a": [1, 2, 3, 4, 6, 7]},
        {"wa": (6, 4, 3, 3), "ba": (6,), "oa": (6,), "wb": (6, 4, 1, 1), "wy": (3, 6, 3, 3)},
        {"a": (["a", "b"], ["y"], True)},
    ),
    "concat": (
        _concat,
        {"p": [0, 2, 3, 5], "q": [0, 1, 3]},
        {"wp": (4, 3, 3, 3), "wq": (3, 3, 1, 1), "bq": (3,), "sn": (10,), "wy": (3, 10, 3, 3)},
        {"p": (["p"], ["y"], True), "q": (["q"], ["y"], True)},
    ),
    "depthwise": (
        _depthwise,
        {"e": [0, 1, 4, 5, 6]},
        {"we": (5, 4, 1, 1), "me": (5,), "wd": (5, 1, 3, 3), "bd": (5,), "vd": (5,)},
        {"e": (["e"], ["y"], True)},
    ),
}


@pytest.mark.parametrize("case", list(STRUCTURED_CASES))
def test_structured_prune_by_index_is_exact(case: str) -> None:
    make, kept, shapes, expected_groups = STRUCTURED_CASES[case]
    model = make()
    original = model.SerializeToString()
    groups = _groups(model)
    for gid, (producers, consumers, prunable) in expected_groups.items():
        assert groups[gid].producers == producers
        assert groups[gid].consumers == consumers
        assert groups[gid].prunable is prunable, groups[gid].reason
    pruned = prune_channels_by_index(model, kept)
    assert model.SerializeToString() == original, "input modified"
    onnx.checker.check_model(pruned, full_check=True)
    before, after = _weights(model), _weights(pruned)
    for name, shape in shapes.items():
        assert after[name].shape == shape, name
    assert sum(a.size for a in after.values()) < sum(a.size for a in before.values())
    _assert_same(model, pruned)


@pytest.mark.parametrize("case", list(STRUCTURED_CASES))
def test_structured_pass_drops_the_zero_channels(case: str) -> None:
    make, kept, shapes, _ = STRUCTURED_CASES[case]
    model = make()
    groups = _groups(model)
    ratios = {gid: 1 - len(k) / groups[gid].channels for gid, k in kept.items()}
    p = StructuredChannelPrunePass(ratios)
    out = _apply(p, model)
    after = _weights(out)
    for name, shape in shapes.items():
        assert after[name].shape == shape, name
    _assert_same(model, out)
    records = {r["group"]: r for r in p.report}
    for gid, k in kept.items():
        assert records[gid]["kept"] == len(k)
        assert records[gid]["params_after"] < records[gid]["params_before"]
    assert p.params_after < p.params_before


def test_depthwise_group_attribute_updated() -> None:
    pruned = prune_channels_by_index(_depthwise(), {"e": [0, 1, 4, 5, 6]})
    (dw,) = [n for n in pruned.graph.node if n.output[0] == "d"]
    (group,) = [a.i for a in dw.attribute if a.name == "group"]
    assert group == 5
    groups = _groups(_depthwise())
    assert "d" in groups["e"].members


MLP_CASES = {
    "matmul": (
        mlp_text(16, 12, 5, softmax=False),
        {"w1": (16, 12), "b1": (12,), "w2": (12, 5), "b2": (5,)},
        {"x": [3, 16]},
    ),
    "gemm_transB": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        mlp (float[B, 16] x) => (float[B, 5] y) {
            h = Gemm <transB = 1> (x, w1, b1)
            r = Relu (h)
            y = Gemm (r, w2, b2)
        }
        """,
        {"w1": (12, 16), "b1": (12,), "w2": (12, 5), "b2": (5,)},
        {"x": [3, 16]},
    ),
    "matmul_3d_gelu": (
        """
        <ir_version: 8, opset_import: ["" : 20]>
        mlp (float[B, S, 16] x) => (float[B, S, 5] y) {
            h = MatMul (x, w1)
            hb = Add (h, b1)
            r = Gelu (hb)
            y = MatMul (r, w2)
        }
        """,
        {"w1": (16, 12), "b1": (12,), "w2": (12, 5)},
        {"x": [2, 7, 16]},
    ),
}


@pytest.mark.parametrize("case", list(MLP_CASES))
def test_mlp_hidden_units(case: str) -> None:
    text, shapes, input_shapes = MLP_CASES[case]
    rng = np.random.default_rng(RNG_SEED)
    w = {name: _w(rng, *shape) for name, shape in shapes.items()}
    dead = [3, 8, 10]
    if w["w1"].shape[0] == 12:  # transB: hidden units on dim 0
        w["w1"][dead] = 0
    else:
        w["w1"][:, dead] = 0
    w["b1"][dead] = 0
    model = text_model(text, w)
    first = next(n.output[0] for n in model.graph.node)
    groups = _groups(model)
    assert groups[first].prunable, groups[first].reason
    assert groups[first].channels == 12
    p = StructuredChannelPrunePass({first: 0.25})
    out = _apply(p, model)
    after = _weights(out)
    hidden_axis = 0 if w["w1"].shape[0] == 12 else 1
    assert after["w1"].shape[hidden_axis] == 9
    assert after["b1"].shape == (9,)
    assert after["w2"].shape == (9, 5)
    _assert_same(model, out, shapes=input_shapes)


@pytest.mark.parametrize("pool", ["GlobalAveragePool", "Identity"])
def test_flatten_into_gemm(pool: str) -> None:
    """Flatten after a global pool gives K = C; without one, K = C x H x W."""
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3, 2, 2] x) => (float[2, 5] y) {{
        c = Conv (x, wc, bc)
        r = Relu (c)
        p = {pool} (r)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, wg, bg)
    }}
    """
    spatial = 1 if pool == "GlobalAveragePool" else 4
    rng = np.random.default_rng(RNG_SEED)
    w = {"wc": _w(rng, 6, 3, 1, 1), "bc": _w(rng, 6)}
    w |= {"wg": _w(rng, 5, 6 * spatial), "bg": _w(rng, 5)}
    _kill(w, [1, 2], w=["wc"], b=["bc"])
    model = text_model(text, w)
    assert _groups(model)["c"].consumers == ["y"]
    pruned = prune_channels_by_index(model, {"c": [0, 3, 4, 5]})
    onnx.checker.check_model(pruned, full_check=True)
    assert _weights(pruned)["wg"].shape == (5, 4 * spatial)
    _assert_same(model, pruned)


def test_conv_transpose_consumer() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 3, 4, 4] x) => (float[1, 2, 8, 8] y) {
        c = Conv (x, wc, bc)
        r = Relu (c)
        y = ConvTranspose <strides = [2, 2], kernel_shape = [2, 2]> (r, wt)
    }
    """
    rng = np.random.default_rng(RNG_SEED)
    w = {"wc": _w(rng, 6, 3, 1, 1), "bc": _w(rng, 6), "wt": _w(rng, 6, 2, 2, 2)}
    _kill(w, [0, 5], w=["wc"], b=["bc"])
    model = text_model(text, w)
    assert _groups(model)["c"].consumers == ["y"]
    out = _apply(StructuredChannelPrunePass(2 / 6), model)
    assert _weights(out)["wt"].shape == (4, 2, 2, 2)
    _assert_same(model, out)


def test_squeeze_excite_merges_through_mul() -> None:
    """Mul(x, sigmoid(fc(pool(x)))) with a [N, C, 1, 1] scale ties both producers."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 6, 6] x) => (float[1, 3, 6, 6] y) {
        a = Conv (x, wa, ba)
        r = Relu (a)
        p = GlobalAveragePool (r)
        s1 = Conv (p, w1, b1)
        h = Relu (s1)
        s2 = Conv (h, w2, b2)
        g = Sigmoid (s2)
        m = Mul (r, g)
        y = Conv (m, wy)
    }
    """
    rng = np.random.default_rng(RNG_SEED)
    w = {"wa": _w(rng, 8, 4, 1, 1), "ba": _w(rng, 8), "w1": _w(rng, 2, 8, 1, 1)}
    w |= {"b1": _w(rng, 2), "w2": _w(rng, 8, 2, 1, 1), "b2": _w(rng, 8)}
    w |= {"wy": _w(rng, 3, 8, 1, 1)}
    _kill(w, [0, 6], w=["wa", "w2"], b=["ba", "b2"])
    model = text_model(text, w)
    group = _groups(model)["a"]
    assert group.producers == ["a", "s2"] and group.consumers == ["s1", "y"]
    out = _apply(StructuredChannelPrunePass({"a": 0.25}), model)
    after = _weights(out)
    assert after["wa"].shape == (6, 4, 1, 1) and after["w2"].shape == (6, 2, 1, 1)
    assert after["w1"].shape == (2, 6, 1, 1) and after["wy"].shape == (3, 6, 1, 1)
    _assert_same(model, out)


def test_tinycnn_groups_and_exact_pruning() -> None:
    model = tinycnn()
    groups = _groups(model)
    assert {g: groups[g].prunable for g in groups} == {
        "c1": True,
        "c2": True,
        "c4": True,
        "mm": False,
    }
    # The residual Add ties c1 and c3; Flatten after the global pool feeds the MatMul.
    assert groups["c1"].producers == ["c1", "c3"]
    assert groups["c4"].consumers == ["mm"]
    assert "Softmax" in groups["mm"].reason
    w = _weights(model)
    _kill(w, [0, 7, 9], w=["w1", "w3"], b=["b1", "b3"], bn=["1", "3"])
    _kill(w, [5], w=["w2"], b=["b2"], bn=["2"])
    _kill(w, list(range(0, 64, 4)), w=["w4"], b=["b4"])
    for init in model.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(w[init.name], init.name))
    p = StructuredChannelPrunePass({"c1": 3 / 32, "c2": 1 / 32, "c4": 0.25})
    out = _apply(p, model)
    after = _weights(out)
    assert after["w1"].shape == (29, 3, 3, 3) and after["w2"].shape == (31, 29, 3, 3)
    assert after["w3"].shape == (29, 31, 3, 3) and after["w4"].shape == (48, 29, 3, 3)
    assert after["wfc"].shape == (48, 10)
    _assert_same(model, out, shapes={"images": [2, 3, 96, 96]})


# ---------------------------------------------------------------------------------------
# Structured channel pruning: what freezes a group.

FROZEN_CASES = {
    "graph_output": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x) => (float[1, 8, 6, 6] y, float[1, 2, 6, 6] z) {
            y = Conv (x, w1)
            z = Conv (y, w2)
        }
        """,
        {"w1": (8, 4, 1, 1), "w2": (2, 8, 1, 1)},
        "graph output",
    ),
    "reshape": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x) => (float[1, 2] z) {
            y = Conv (x, w1)
            r = Relu (y)
            f = Reshape (r, shape)
            z = MatMul (f, w2)
        }
        """,
        {"w1": (8, 4, 1, 1), "w2": (288, 2), "shape": None},
        "Reshape",
    ),
    "transpose": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x) => (float[1, 6, 6, 2] z) {
            y = Conv (x, w1)
            t = Transpose <perm = [0, 2, 3, 1]> (y)
            z = MatMul (t, w2)
        }
        """,
        {"w1": (8, 4, 1, 1), "w2": (8, 2)},
        "Transpose",
    ),
    "grouped_conv": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x) => (float[1, 2, 6, 6] z) {
            y = Conv (x, w1)
            d = Conv <group = 2> (y, w2)
            z = Conv (d, w3)
        }
        """,
        {"w1": (8, 4, 1, 1), "w2": (8, 4, 1, 1), "w3": (2, 8, 1, 1)},
        "group=2",
    ),
    "non_channel_constant": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x, float[1, 8, 1, 1] s) => (float[1, 2, 6, 6] z) {
            y = Conv (x, w1)
            m = Mul (y, s)
            z = Conv (m, w2)
        }
        """,
        {"w1": (8, 4, 1, 1), "w2": (2, 8, 1, 1)},
        "not a per-channel constant",
    ),
    "concat_other_axis": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x) => (float[1, 2, 12, 6] z) {
            y = Conv (x, w1)
            c = Concat <axis = 2> (y, y)
            z = Conv (c, w2)
        }
        """,
        {"w1": (8, 4, 1, 1), "w2": (2, 8, 1, 1)},
        "not along the channel axis",
    ),
    "unknown_shape": (
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 6, 6] x, int64[N] s) => (float[1, 2, 6, 6] z) {
            xr = Reshape (x, s)
            y = Conv (xr, w1)
            r = Relu (y)
            z = Conv (r, w2)
        }
        """,
        {"w1": (8, 4, 1, 1), "w2": (2, 8, 1, 1)},
        "unknown",
    ),
}


@pytest.mark.parametrize("case", list(FROZEN_CASES))
def test_frozen_groups(case: str) -> None:
    text, shapes, reason = FROZEN_CASES[case]
    rng = np.random.default_rng(RNG_SEED)
    w = {
        name: _w(rng, *shape) if shape else np.array([1, -1], np.int64)
        for name, shape in shapes.items()
    }
    model = text_model(text, w)
    first = next(n.output[0] for n in model.graph.node if n.op_type == "Conv")
    group = _groups(model)[first]
    assert not group.prunable
    assert reason in group.reason
    with pytest.raises(ValueError, match="not prunable"):
        prune_channels_by_index(model, {first: [0, 1]})
    p = StructuredChannelPrunePass(0.5)
    out = _apply(p, model)
    assert _weights(out)["w1"].shape == shapes["w1"]


def test_per_channel_constant_is_sliced_and_broadcast_checked() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 6, 6] x) => (float[1, 2, 6, 6] z) {
        y = Conv (x, w1)
        a = Add (y, k1)
        m = Mul (a, k2)
        s = Sub (m, k3)
        r = Relu (s)
        z = Conv (r, w2)
    }
    """
    rng = np.random.default_rng(RNG_SEED)
    w = {"w1": _w(rng, 8, 4, 1, 1), "w2": _w(rng, 2, 8, 1, 1)}
    w |= {"k1": _w(rng, 1, 8, 1, 1), "k2": _w(rng, 8, 1, 1)}
    w["k3"] = rng.uniform(0.1, 1, 6).astype(np.float32)  # Relu(0 - k3) = 0
    dead = [2, 5]
    w["w1"][dead] = 0
    w["k1"][0, dead] = 0
    model = text_model(text, w)
    pruned = prune_channels_by_index(model, {"y": [0, 1, 3, 4, 6, 7]})
    onnx.checker.check_model(pruned, full_check=True)
    after = _weights(pruned)
    assert after["k1"].shape == (1, 6, 1, 1) and after["k2"].shape == (6, 1, 1)
    assert after["k3"].shape == (6,)  # broadcasts along W, not the channels
    _assert_same(model, pruned)


def test_shared_constant_is_copied_not_overwritten() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1, 4, 6, 6] x) => (float[1, 8, 6, 6] z) {
        y = Conv (x, w1)
        a = Add (y, k)
        r = Relu (a)
        u = Conv (r, w2)
        z = Add (u, k)
    }
    """
    rng = np.random.default_rng(RNG_SEED)
    w = {"w1": _w(rng, 8, 4, 1, 1), "w2": _w(rng, 8, 8, 1, 1), "k": _w(rng, 8, 1, 1)}
    w["w1"][[1, 2]] = 0
    w["k"][[1, 2]] = -1
    model = text_model(text, w)
    pruned = prune_channels_by_index(model, {"y": [0, 3, 4, 5, 6, 7]})
    onnx.checker.check_model(pruned, full_check=True)
    after = _weights(pruned)
    assert after["k"].shape == (8, 1, 1)
    assert sorted(a.shape for n, a in after.items() if n.startswith("k")) == [(6, 1, 1), (8, 1, 1)]
    _assert_same(model, pruned)


def test_ratio_zero_and_options() -> None:
    model = _chain()
    p = StructuredChannelPrunePass(0.0)
    result = p(ir.serde.deserialize_model(model))
    assert not result.modified
    after = _weights(ir.serde.serialize_model(result.model))
    for name, array in _weights(model).items():
        np.testing.assert_array_equal(after[name], array)
    assert all(r["kept"] == r["channels"] for r in p.report)
    # 8 channels at 0.5 keep 4, rounded up to a multiple of 3.
    p = StructuredChannelPrunePass(0.5, multiple_of=3)
    assert _weights(_apply(p, model))["w1"].shape[0] == 6
    p = StructuredChannelPrunePass(0.9, min_channels=3)
    assert _weights(_apply(p, model))["w1"].shape[0] == 3
    p = StructuredChannelPrunePass(3 / 8, criterion="l1")
    _assert_same(model, _apply(p, model))
    with pytest.raises(ValueError):
        StructuredChannelPrunePass(1.0)
    with pytest.raises(ValueError, match="no channel group"):
        prune_channels_by_index(model, {"nope": [0]})
    with pytest.raises(ValueError, match="out of range"):
        prune_channels_by_index(model, {"c1": [0, 8]})


# ---------------------------------------------------------------------------------------
# The onnx wheel's light models, with random weights.

LIGHT = ["resnet50", "densenet121", "inception_v1", "inception_v2", "squeezenet", "shufflenet"]


def _light_model(name: str) -> ir.Model:
    path = LIGHT_DIR / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path.name} is not shipped with this onnx wheel")
    model = ir.load(path)
    RemoveInitializerInputsPass()(model)
    ConstantFoldingPass()(model)  # weights are ConstantOfShape outputs
    RemoveUnusedPass()(model)
    rng = np.random.default_rng(RNG_SEED)
    for value in model.graph.initializers.values():
        array = const_array(value)
        if array is None or array.dtype != np.float32:
            continue
        if array.ndim >= 2:
            array = rng.standard_normal(array.shape) / np.sqrt(np.prod(array.shape[1:]))
        else:
            array = rng.uniform(0.5, 1.5, array.shape)  # BN scale and variance stay positive
        value.const_value = ir.tensor(array.astype(np.float32), name=value.name)
    return model


def _zero_dropped_inputs(model: ir.Model, kept: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with the consumer weights that read the channels `kept` drops set to zero.

    Those channels then do not reach any output, so pruning them changes nothing.
    """
    copy, analysis = analyse(model)
    roots = {group.id: root for root, group in analysis.groups()}
    selection = {roots[gid]: indices for gid, indices in kept.items()}
    producers = {leaf.producer for leaf in analysis.leaves}
    for item in analysis.slices:
        node = item.node
        if node.op_type not in ("Conv", "Gemm", "MatMul") or item.index != 1:
            continue
        own = {analysis.leaves[leaf].producer for leaf, _ in item.segments if leaf is not None}
        if node in own or (node.op_type == "Conv" and node not in producers):
            continue  # a producer's own weight, or a depthwise Conv's
        array = const_array(node.inputs[1]).copy()
        keep = analysis.index_map(item.segments, item.inner, selection)
        drop = np.setdiff1d(np.arange(array.shape[item.axis]), keep)
        index = [slice(None)] * array.ndim
        index[item.axis] = drop
        array[tuple(index)] = 0
        node.inputs[1].const_value = ir.tensor(array, name=node.inputs[1].name)
    return ir.serde.serialize_model(copy)


@pytest.mark.parametrize("name", LIGHT)
def test_light_model_structured_pruning(name: str) -> None:
    model = _light_model(name)
    proto = ir.serde.serialize_model(model)
    groups = channel_groups(model)
    prunable = [g for g in groups if g.prunable]
    print(f"{name}: {len(prunable)} of {len(groups)} groups prunable")
    assert all(g.reason for g in groups if not g.prunable)
    p = StructuredChannelPrunePass(0.25)
    out = _apply(p, proto)
    feeds = random_inputs(proto)
    expected = run_ort(proto, feeds)
    actual = run_ort(out, feeds)
    assert [a.shape for a in actual] == [e.shape for e in expected]
    if not prunable:
        assert p.params_after == p.params_before
        return
    assert p.params_after < p.params_before
    # Exactness: drop the channels whose every reader has zero weights for them.
    rng = np.random.default_rng(RNG_SEED)
    kept = {
        g.id: np.sort(rng.choice(g.channels, g.channels - g.channels // 4, replace=False))
        for g in prunable
    }
    reference = _zero_dropped_inputs(model, kept)
    pruned = prune_channels_by_index(reference, kept)
    onnx.checker.check_model(pruned, full_check=True)
    assert len(pruned.SerializeToString()) < len(reference.SerializeToString())
    _assert_same(reference, pruned)


def test_light_model_coverage() -> None:
    model = _light_model("resnet50")
    groups = {g.id: g for g in channel_groups(model)}
    # Every bottleneck's inner convs, the stem and the residual stages but the last
    # (Reshape before the classifier), and the classifier (Softmax).
    frozen = [g for g in groups.values() if not g.prunable]
    assert len(frozen) == 2
    assert sorted(g.reason.split()[0] for g in frozen) == ["Reshape", "Softmax"]
    # A residual stage's group: branch1 and every block's branch2c (3, 4, 6, 3 blocks).
    stages = [g for g in groups.values() if len(g.producers) > 1]
    assert [len(g.producers) for g in stages] == [4, 5, 7, 4]
    assert [g.prunable for g in stages] == [True, True, True, False]
    assert [g.channels for g in stages] == [256, 512, 1024, 2048]
