"""Integer precision passes (static/dynamic INT8, INT4 weight-only) on tiny models, on ORT CPU."""

from __future__ import annotations

import functools
import logging
import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pass_harness
import pytest
from conftest import text_model
from onnx import TensorProto, numpy_helper
from pass_harness import apply, attr, check, fidelity, initializer, nodes, ops, opset, producer, run

from lepton_compile.passes.errors import PassInputError
from lepton_compile.passes.quantize import (
    MIN_CALIBRATION_SAMPLES,
    Float16Pass,
    QuantizeDynamicInt8Pass,
    QuantizeInt4WeightOnlyPass,
    QuantizeStaticInt8Pass,
    ensure_node_names,
)

# The default --max-accuracy-drop (0.01) is a cosine of 0.99 against FP32.
MIN_COSINE = 0.99


# -- models and helpers ---------------------------------------------------------------------

static_tinycnn = functools.partial(pass_harness.tinycnn_at, batch=1)
images = functools.partial(pass_harness.tinycnn_images, batch=1)


def transformer(d: int = 32, ffn: int = 48, seq: int = 8) -> onnx.ModelProto:
    """Two pre-norm-free transformer blocks: 12 weight MatMuls, 4 activation MatMuls."""
    rng = np.random.default_rng(0)
    body: list[str] = []
    weights: dict[str, np.ndarray] = {"scale": np.array(1 / math.sqrt(d), np.float32)}
    x = "x"
    for i in range(2):
        for n in "qkvo":
            weights[f"w{n}{i}"] = (rng.standard_normal((d, d)) / math.sqrt(d)).astype(np.float32)
        weights[f"wa{i}"] = (rng.standard_normal((d, ffn)) / math.sqrt(d)).astype(np.float32)
        weights[f"wb{i}"] = (rng.standard_normal((ffn, d)) / math.sqrt(ffn)).astype(np.float32)
        body += [
            f"q{i} = MatMul ({x}, wq{i})",
            f"k{i} = MatMul ({x}, wk{i})",
            f"v{i} = MatMul ({x}, wv{i})",
            f"kt{i} = Transpose <perm = [0, 2, 1]> (k{i})",
            f"s{i} = MatMul (q{i}, kt{i})",
            f"ss{i} = Mul (s{i}, scale)",
            f"p{i} = Softmax <axis = -1> (ss{i})",
            f"c{i} = MatMul (p{i}, v{i})",
            f"o{i} = MatMul (c{i}, wo{i})",
            f"r{i} = Add ({x}, o{i})",
            f"h{i} = MatMul (r{i}, wa{i})",
            f"g{i} = Relu (h{i})",
            f"f{i} = MatMul (g{i}, wb{i})",
            f"y{i} = Add (r{i}, f{i})",
        ]
        x = f"y{i}"
    body.append(f"y = Identity ({x})")
    text = (
        '<ir_version: 8, opset_import: ["" : 17]>\n'
        f"tiny_transformer (float[1, {seq}, {d}] x) => (float[1, {seq}, {d}] y) {{\n"
        + "\n".join(body)
        + "\n}\n"
    )
    return text_model(text, weights)


def tokens(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 8, 32), np.float32)} for _ in range(n)]


def check_close(
    model: onnx.ModelProto,
    quantized: onnx.ModelProto,
    feed: Mapping[str, np.ndarray],
    min_cos: float = MIN_COSINE,
    max_abs: float = math.inf,
) -> None:
    for ref, out in zip(run(model, feed), run(quantized, feed), strict=True):
        cos, err = fidelity(ref, out)
        assert cos > min_cos and err < max_abs, f"cosine {cos:.5f}, max-abs {err:.4g}"


UNQUANTIZABLE = text_model(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 4] x) => (float[2, 4] y) {
        y = Neg (x)
    }
    """
)


# -- ensure_node_names ----------------------------------------------------------------------


def test_ensure_node_names_unique_deterministic_and_copying() -> None:
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] x, bool c) => (float[2] y) {
            a = Relu (x)
            b = Neg (a)
            y = If (c) <
                then_branch = t () => (float[2] o) { o = Relu (b) },
                else_branch = e () => (float[2] o) { o = Neg (b) }
            >
        }
        """
    )
    m.graph.node[1].name = "Relu_0"  # taken by hand: the generated name must go elsewhere
    m.graph.node[2].name = "Relu_0"  # a repeat
    before = m.SerializeToString()
    named = ensure_node_names(m)
    assert m.SerializeToString() == before
    assert [n.name for n in named.graph.node] == ["Relu_0_1", "Relu_0", "If_2"]
    branches = [a.g.node[0].name for a in named.graph.node[2].attribute]
    assert sorted(branches) == ["Neg_4", "Relu_3"]
    assert ensure_node_names(named).SerializeToString() == named.SerializeToString()
    check(named)


# -- calibration checks ---------------------------------------------------------------------


def _bad_feeds(kind: str) -> list[dict[str, np.ndarray]]:
    good = images(3, seed=1)
    if kind == "name":
        return [good[0], {"pictures": good[1]["images"]}, good[2]]
    if kind == "shape":
        return [good[0], {"images": np.zeros((1, 3, 64, 64), np.float32)}, good[2]]
    if kind == "rank":
        return [good[0], {"images": np.zeros((3, 96, 96), np.float32)}, good[2]]
    if kind == "dtype":
        return [good[0], {"images": good[1]["images"].astype(np.float64)}, good[2]]
    if kind == "nan":
        bad = good[1]["images"].copy()
        bad[0, 0, 0, 0] = np.nan
        return [good[0], {"images": bad}, good[2]]
    if kind == "extra":
        return [good[0], {**good[1], "labels": np.zeros(1, np.int64)}, good[2]]
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "words"),
    [
        ("name", ["sample 1", "lacks input(s) images", "unknown input(s) pictures"]),
        ("extra", ["sample 1", "unknown input(s) labels"]),
        ("shape", ["sample 1", "[1, 3, 64, 64]", "[1, 3, 96, 96]"]),
        ("rank", ["sample 1", "[3, 96, 96]"]),
        ("dtype", ["sample 1", "float64", "float32"]),
        ("nan", ["sample 1", "NaN or Inf"]),
    ],
)
def test_static_int8_bad_calibration_is_input_error(kind: str, words: list[str]) -> None:
    p = QuantizeStaticInt8Pass(_bad_feeds(kind))
    with pytest.raises(PassInputError) as e:
        p(ir.serde.deserialize_model(static_tinycnn()))
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg


@pytest.mark.parametrize("n", [0, MIN_CALIBRATION_SAMPLES - 1])
def test_static_int8_too_few_samples_is_input_error(n: int) -> None:
    with pytest.raises(PassInputError, match=f"at least {MIN_CALIBRATION_SAMPLES} calibration"):
        QuantizeStaticInt8Pass(images(n, seed=1))


# -- static INT8 ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tinycnn_int8() -> tuple[onnx.ModelProto, onnx.ModelProto, list[str]]:
    model = static_tinycnn()
    p = QuantizeStaticInt8Pass(images(4, seed=1))
    quantized, modified = apply(p, model)
    assert modified
    return model, quantized, p.candidates(model)


def test_static_int8_structure_per_channel(tinycnn_int8) -> None:
    model, q, cands = tinycnn_int8
    named = nodes(ensure_node_names(model))
    convs = [n for n in cands if named[n].op_type == "Conv"]
    assert len(convs) == 4 and "MatMul_16" in cands
    assert opset(q) >= 13
    check(q)
    by_name = nodes(q)
    for name in convs:
        conv = by_name[name]
        dq = producer(q, conv.input[1])
        assert dq is not None and dq.op_type == "DequantizeLinear"
        w = initializer(q, dq.input[0])
        assert w is not None and w.data_type == TensorProto.INT8
        scale = numpy_helper.to_array(initializer(q, dq.input[1]))
        assert scale.shape == (w.dims[0],)  # per output channel
        assert attr(dq, "axis", 1) == 0
        zp = numpy_helper.to_array(initializer(q, dq.input[2]))
        assert not zp.any()  # symmetric weights
        x = producer(q, conv.input[0])
        assert x is not None and x.op_type == "DequantizeLinear"
        act_q = producer(q, x.input[0])
        assert act_q is not None and act_q.op_type == "QuantizeLinear"
        assert initializer(q, act_q.input[2]).data_type == TensorProto.INT8


def test_static_int8_matches_fp32(tinycnn_int8) -> None:
    model, q, _ = tinycnn_int8
    check_close(model, q, images(1, seed=7)[0], max_abs=0.05)


def test_static_int8_per_tensor_scales() -> None:
    model = static_tinycnn()
    q, _ = apply(QuantizeStaticInt8Pass(images(2, seed=1), per_channel=False), model)
    check(q)
    for n in q.graph.node:
        if n.op_type == "DequantizeLinear":
            assert numpy_helper.to_array(initializer(q, n.input[1])).size == 1


@pytest.mark.parametrize(
    ("method", "symmetric", "act_type"),
    [
        ("entropy", False, "uint8"),
        ("percentile", True, "int8"),
        ("minmax", True, "uint8"),
    ],
)
def test_static_int8_calibration_variants(method: str, symmetric: bool, act_type: str) -> None:
    model = static_tinycnn()
    p = QuantizeStaticInt8Pass(
        images(4, seed=1),
        calibrate_method=method,
        activation_symmetric=symmetric,
        activation_type=act_type,
    )
    q, modified = apply(p, model)
    assert modified
    check(q)
    want = TensorProto.UINT8 if act_type == "uint8" else TensorProto.INT8
    zps = [initializer(q, n.input[2]) for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert zps and all(z.data_type == want for z in zps)
    if symmetric:
        mid = 128 if act_type == "uint8" else 0
        assert all((numpy_helper.to_array(z) == mid).all() for z in zps)
    check_close(model, q, images(1, seed=7)[0])


def test_static_int8_transformer_matmuls() -> None:
    model = transformer()
    # MinMax ranges from few samples clip a held-out one's attention scores: take 16.
    p = QuantizeStaticInt8Pass(tokens(16, seed=1), op_types=["MatMul"])
    assert len(p.candidates(model)) == 16  # weights and activations both
    q, _ = apply(p, model)
    check(q)
    assert ops(q).count("MatMul") == 16
    assert ops(q).count("DequantizeLinear") >= 28
    check_close(model, q, tokens(1, seed=9)[0])


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_int8_degenerate_ranges(method: str) -> None:
    """An activation that is all zeros, and one that is constant, calibrate without error."""
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 8] x) => (float[1, 4] y, float[1, 4] z) {
            h = MatMul (x, w1)
            zero = Mul (h, nil)
            r = Relu (zero)
            y = MatMul (r, w2)
            flat = MatMul (ones, w2)
            z = Add (flat, y)
        }
        """,
        {
            "w1": np.ones((8, 8), np.float32),
            "nil": np.zeros(1, np.float32),
            "w2": np.full((8, 4), 0.5, np.float32),
            "ones": np.ones((1, 8), np.float32),
        },
    )
    feeds = [{"x": np.full((1, 8), 2.0, np.float32)} for _ in range(3)]
    q, modified = apply(QuantizeStaticInt8Pass(feeds, calibrate_method=method), model)
    assert modified
    check(q)
    out = run(q, {"x": np.full((1, 8), 2.0, np.float32)})
    np.testing.assert_allclose(out[0], 0.0)
    np.testing.assert_allclose(out[1], 4.0, rtol=0.02)


def test_static_int8_nodes_to_exclude_stay_fp32() -> None:
    model = static_tinycnn()
    cands = QuantizeStaticInt8Pass(images(2, seed=1)).candidates(model)
    keep = ["Conv_3", "MatMul_16"]
    assert set(keep) <= set(cands)
    p = QuantizeStaticInt8Pass(images(2, seed=1), nodes_to_exclude=keep)
    assert not set(keep) & set(p.candidates(model))
    q, _ = apply(p, model)
    check(q)
    by_name = nodes(q)
    for name in keep:
        node = by_name[name]
        w = initializer(q, node.input[1])
        assert w is not None and w.data_type == TensorProto.FLOAT
        assert producer(q, node.input[1]) is None
    check_close(model, q, images(1, seed=7)[0])


def test_static_int8_op_types_limit_candidates() -> None:
    model = static_tinycnn()
    p = QuantizeStaticInt8Pass(images(2, seed=1), op_types=["Conv"])
    assert p.candidates(model) == ["Conv_0", "Conv_3", "Conv_6", "Conv_10"]
    q, _ = apply(p, model)
    by_name = nodes(q)
    assert producer(q, by_name["MatMul_16"].input[1]) is None
    assert producer(q, by_name["Conv_10"].input[1]).op_type == "DequantizeLinear"


def test_static_int8_leaves_input_untouched_and_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str], caplog
) -> None:
    model = static_tinycnn()
    before = model.SerializeToString()
    ir_model = ir.serde.deserialize_model(model)
    ir_before = ir.serde.serialize_model(ir_model).SerializeToString()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    caplog.set_level(logging.DEBUG, logger="lepton_compile")
    p = QuantizeStaticInt8Pass(images(2, seed=1), calibrate_method="entropy")
    result = p(ir_model)
    assert result.model is not ir_model
    assert model.SerializeToString() == before
    assert ir.serde.serialize_model(ir_model).SerializeToString() == ir_before
    assert list(tmp.iterdir()) == []
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert not [r for r in caplog.records if r.levelno < logging.ERROR and r.name == "root"]
    assert list(root.handlers) == handlers and root.level == level
    # candidates() names nodes on a copy, never on the caller's model
    p.candidates(model)
    assert model.SerializeToString() == before


@pytest.mark.parametrize(
    "make",
    [
        lambda: QuantizeDynamicInt8Pass(op_types=("MatMul", "Gemm")),
        lambda: QuantizeInt4WeightOnlyPass(quant_format="qoperator"),
        lambda: QuantizeInt4WeightOnlyPass(quant_format="qdq"),
    ],
)
def test_weight_passes_leave_input_and_temp_dir_untouched(
    make, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    model = transformer()
    before = model.SerializeToString()
    ir_model = ir.serde.deserialize_model(model)
    ir_before = ir.serde.serialize_model(ir_model).SerializeToString()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    p = make()
    p.candidates(model)
    result = p(ir_model)
    assert result.modified and result.model is not ir_model
    assert model.SerializeToString() == before
    assert ir.serde.serialize_model(ir_model).SerializeToString() == ir_before
    assert list(tmp_path.iterdir()) == []
    assert capfd.readouterr() == ("", "")


def test_nothing_to_quantize_is_not_modified() -> None:
    calib = [{"x": np.ones((2, 4), np.float32)}] * 2
    for p in (
        QuantizeStaticInt8Pass(calib),
        QuantizeDynamicInt8Pass(),
        QuantizeInt4WeightOnlyPass(),
    ):
        assert p.candidates(UNQUANTIZABLE) == []
        model = ir.serde.deserialize_model(UNQUANTIZABLE)
        result = p(model)
        assert not result.modified and result.model is not model
        assert ops(ir.serde.serialize_model(result.model)) == ["Neg"]


def test_float16_reexported_for_recipes() -> None:
    from lepton_compile.passes.quantize.float16 import Float16Pass as F16

    assert Float16Pass is F16


# -- dynamic INT8 ---------------------------------------------------------------------------

WEIGHT_MATMULS = [f"MatMul_{14 * i + k}" for i in range(2) for k in (0, 1, 2, 8, 10, 12)]


@pytest.mark.parametrize("per_channel", [False, True])
def test_dynamic_int8_transformer(per_channel: bool) -> None:
    model = transformer()
    p = QuantizeDynamicInt8Pass(per_channel=per_channel)
    cands = p.candidates(model)
    assert cands == WEIGHT_MATMULS  # the q/k/v/o and FFN weights, not q.kT nor p.v
    q, modified = apply(p, model)
    assert modified
    check(q)
    assert ops(q).count("MatMulInteger") == 12 and ops(q).count("MatMul") == 4
    assert "DynamicQuantizeLinear" in ops(q)
    for n in q.graph.node:
        if n.op_type == "MatMulInteger":
            w = initializer(q, n.input[1])
            assert w.data_type == TensorProto.INT8
            scale = initializer(q, n.input[1].replace("_quantized", "_scale"))
            assert tuple(scale.dims) == ((w.dims[1],) if per_channel else ())
    check_close(model, q, tokens(1, seed=9)[0], min_cos=0.999)


def test_dynamic_int8_exclusions() -> None:
    model = transformer()
    keep = WEIGHT_MATMULS[:2]
    p = QuantizeDynamicInt8Pass(nodes_to_exclude=keep)
    assert p.candidates(model) == WEIGHT_MATMULS[2:]
    q, _ = apply(p, model)
    check(q)
    by_name = nodes(q)
    for name in keep:
        assert by_name[name].op_type == "MatMul"
        assert initializer(q, by_name[name].input[1]).data_type == TensorProto.FLOAT
    assert ops(q).count("MatMulInteger") == 10


GEMM = text_model(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[4, 16] x) => (float[4, 8] y) {
        h = Gemm <transB = 1, alpha = 0.5, beta = 2.0> (x, w, b)
        y = Relu (h)
    }
    """,
    {
        "w": np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32),
        "b": np.random.default_rng(1).standard_normal(8).astype(np.float32),
    },
)


def test_dynamic_int8_gemm_only_when_asked() -> None:
    assert QuantizeDynamicInt8Pass().candidates(GEMM) == []
    assert not apply(QuantizeDynamicInt8Pass(), GEMM)[1]
    p = QuantizeDynamicInt8Pass(op_types=("MatMul", "Gemm"))
    assert p.candidates(GEMM) == ["Gemm_0"]
    q, modified = apply(p, GEMM)
    assert modified and "Gemm" not in ops(q) and "MatMulInteger" in ops(q)
    check(q)
    feed = {"x": np.random.default_rng(2).standard_normal((4, 16)).astype(np.float32)}
    check_close(GEMM, q, feed, min_cos=0.999)


# -- INT4 weight-only -----------------------------------------------------------------------


def test_int4_qoperator_structure(mlp_path: Path) -> None:
    model = onnx.load(mlp_path)
    p = QuantizeInt4WeightOnlyPass(block_size=32)
    assert p.candidates(model) == ["MatMul_0", "MatMul_3"]
    q, modified = apply(p, model)
    assert modified
    check(q)
    nbits = [n for n in q.graph.node if n.op_type == "MatMulNBits"]
    assert [n.domain for n in nbits] == ["com.microsoft"] * 2
    assert [(attr(n, "K"), attr(n, "N")) for n in nbits] == [(32, 64), (64, 8)]
    assert all(attr(n, "bits") == 4 and attr(n, "block_size") == 32 for n in nbits)
    assert len(nbits[0].input) == 3  # symmetric: no zero points
    assert initializer(q, nbits[1].input[1]).data_type == TensorProto.UINT8  # packed nibbles
    feed = {"x": np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)}
    check_close(model, q, feed, max_abs=0.1)


def test_int4_qdq_structure(mlp_path: Path) -> None:
    model = onnx.load(mlp_path)
    q, modified = apply(QuantizeInt4WeightOnlyPass(block_size=16, quant_format="qdq"), model)
    assert modified
    assert opset(q) >= 21 and q.ir_version >= 10
    check(q)
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2
    for dq, (k, n) in zip(dqs, [(32, 64), (64, 8)], strict=True):
        assert attr(dq, "block_size") == 16 and attr(dq, "axis") == 0
        w = initializer(q, dq.input[0])
        assert w.data_type == TensorProto.INT4 and tuple(w.dims) == (k, n)
        assert tuple(initializer(q, dq.input[1]).dims) == (k // 16, n)
    feed = {"x": np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)}
    check_close(model, q, feed, max_abs=0.1)


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_int4_transformer_k_not_multiple_of_block(fmt: str) -> None:
    """K = 32 and 48 with blocks of 64: the short or partial last block is handled."""
    model = transformer()
    p = QuantizeInt4WeightOnlyPass(block_size=64, quant_format=fmt)
    assert p.candidates(model) == WEIGHT_MATMULS
    q, _ = apply(p, model)
    check(q)
    if fmt == "qoperator":
        assert ops(q).count("MatMulNBits") == 12
    else:
        dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
        scales = {tuple(initializer(q, d.input[1]).dims) for d in dqs}
        assert scales == {(1, 32), (1, 48)}
    # 4-bit round-to-nearest on random weights costs ~1.5% cosine over 12 chained MatMuls.
    check_close(model, q, tokens(1, seed=9)[0], min_cos=0.97)


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_int4_shared_weight_and_exclusion(fmt: str) -> None:
    rng = np.random.default_rng(0)
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 32] x) => (float[1, 2, 32] y) {
            a = MatMul (x, w)
            b = MatMul (a, w)
            c = MatMul (b, w)
            w3 = Unsqueeze (w, axes)
            d = MatMul (x, w3)
            y = Add (c, d)
        }
        """,
        {
            "w": (rng.standard_normal((32, 32)) / 6).astype(np.float32),
            "axes": np.array([0], np.int64),
        },
    )
    p = QuantizeInt4WeightOnlyPass(quant_format=fmt, nodes_to_exclude=["MatMul_2"])
    assert p.candidates(model) == ["MatMul_0", "MatMul_1"]  # d: its weight is not an initializer
    q, _ = apply(p, model)
    check(q)  # the shared weight is written once
    kept = nodes(q)["MatMul_2"]
    assert kept.op_type == "MatMul" and initializer(q, kept.input[1]).data_type == TensorProto.FLOAT
    feed = {"x": rng.standard_normal((2, 32)).astype(np.float32)}
    check_close(model, q, feed, min_cos=0.98)


def test_int4_options_are_checked() -> None:
    with pytest.raises(ValueError, match="power of 2"):
        QuantizeInt4WeightOnlyPass(block_size=24)
    with pytest.raises(ValueError, match="quant_format"):
        QuantizeInt4WeightOnlyPass(quant_format="int4")
    with pytest.raises(TypeError, match="sequence of node names"):
        QuantizeInt4WeightOnlyPass(nodes_to_exclude="MatMul_0")
