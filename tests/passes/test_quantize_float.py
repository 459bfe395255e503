"""Float precision passes (FP16, BF16, FP8 E4M3 QDQ) on tiny models.

FP16 and FP8 run on onnxruntime's CPU provider; BF16 on the torch-based lepton backend, since
onnxruntime's CPU provider has few BF16 kernels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
import pass_harness
import pytest
from conftest import text_model
from onnx import TensorProto, numpy_helper
from pass_harness import (
    apply,
    attr,
    check,
    consumers,
    fidelity,
    initializer,
    nodes,
    ops,
    opset,
    producer,
    run,
)

from lepton_compile.passes.errors import PassInputError
from lepton_compile.passes.quantize import (
    FP8_E4M3_MAX,
    BFloat16Pass,
    Float16Pass,
    QuantizeFP8Pass,
)
from lepton_compile.passes.quantize.bfloat16 import BF16_OPSET
from lepton_compile.passes.quantize.float16 import FP16_MAX, FP16_TINY

MIN_COSINE = 0.99  # the default --max-accuracy-drop of 0.01
BF16_RTOL = 1e-2  # bf16 keeps 8 significant bits: ~0.4% per rounding, a few roundings deep
FP16_RTOL = 1e-3


# -- models and helpers ---------------------------------------------------------------------

static_tinycnn = functools.partial(pass_harness.tinycnn_at, batch=2)
images = functools.partial(pass_harness.tinycnn_images, batch=2)


def mlp_feeds(n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((4, 32), np.float32)} for _ in range(n)]


def with_logits(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """`model` with the pre-softmax tensor `name` as a second output (softmax hides errors)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.output.append(onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return out


def run_lepton(model: onnx.ModelProto, feed: Mapping[str, np.ndarray], tmp: Path) -> list:
    pytest.importorskip("torch", reason="the lepton backend (BF16 kernels on CPU) needs torch")
    from lepton_compile.runtime import get_backend

    path = tmp / "model.onnx"
    onnx.save(model, path)
    sess = get_backend("lepton").load(path, device="cpu", options={})
    outs = sess.run(dict(feed))
    return [outs[o.name] for o in model.graph.output]


def assert_close(refs: list, outs: list, min_cos: float, rtol: float = math.inf) -> None:
    """Cosine above `min_cos`, and max-abs error within `rtol` of the reference's largest value."""
    for ref, out in zip(refs, outs, strict=True):
        assert out.dtype == np.float32 and out.shape == ref.shape
        cos, err = fidelity(ref, out)
        bound = rtol * float(np.abs(ref).max())
        assert cos > min_cos and err <= bound, f"cosine {cos:.6f}, max-abs {err:.4g} > {bound:.4g}"


def io_types(model: onnx.ModelProto) -> list[int]:
    return [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]


def unchanged_after(p: ir.passes.PassBase, model: onnx.ModelProto) -> bool:
    before = model.SerializeToString()
    ir_model = ir.serde.deserialize_model(model)
    ir_before = ir.serde.serialize_model(ir_model).SerializeToString()
    result = p(ir_model)
    p.candidates(model)
    return (
        result.model is not ir_model
        and model.SerializeToString() == before
        and ir.serde.serialize_model(ir_model).SerializeToString() == ir_before
    )


INTEGER_ONLY = text_model(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    g (int64[3] x) => (int64[3] y) {
        y = Add (x, x)
    }
    """
)

# Traps of FP16/BF16 conversion in one graph: a Cast to FLOAT from integers, Constants given
# as value_float(s), out-of-range and tiny initializers, an epsilon that must stay positive,
# a ConstantOfShape fill, a float attribute, and a blocked op (CumSum) in the middle.
TRAPS = text_model(
    """
    <ir_version: 8, opset_import: ["" : 17]>
    traps (float[2, 8] x) => (float[2, 8] y, float[2, 8] norm) {
        s = Shape (x)
        sf = Cast <to = 1> (s)
        n = ReduceProd <keepdims = 0> (sf)
        k = Constant <value_float = 0.5> ()
        ks = Constant <value_floats = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]> ()
        a = Mul (x, k)
        b = Add (a, ks)
        c = LeakyRelu <alpha = 0.1> (b)
        cs = CumSum (c, axis0)
        z = ConstantOfShape <value = float[1] {0.25}> (s)
        big_small = Mul (huge, tiny)
        d = Add (cs, z)
        e = Div (d, n)
        y = Add (e, big_small)
        sq = Mul (x, x)
        se = Add (sq, eps)
        r = Sqrt (se)
        norm = Div (x, r)
    }
    """,
    {
        "axis0": np.array(0, np.int64),
        "huge": np.array([1e6, -1e6, 7e4, 1, 1, 1, 1, 1], np.float32),
        "tiny": np.array([1e-10, 1e-10, 1e-9, 0, 0, 0, 0, 0], np.float32),
        "eps": np.array(1e-12, np.float32),
    },
)


# -- FP16 -----------------------------------------------------------------------------------


def test_fp16_tinycnn_structure_and_outputs() -> None:
    model = static_tinycnn()
    p = Float16Pass()
    assert len(p.candidates(model)) == len(model.graph.node)  # nothing in the block list
    q, modified = apply(p, model)
    assert modified
    check(q)
    assert io_types(q) == [TensorProto.FLOAT, TensorProto.FLOAT]
    by_name = nodes(q)
    for conv in ("Conv_0", "Conv_3", "Conv_6", "Conv_10"):
        assert initializer(q, by_name[conv].input[1]).data_type == TensorProto.FLOAT16
    first = consumers(q, "images")
    assert [(n.op_type, attr(n, "to")) for n in first] == [("Cast", TensorProto.FLOAT16)]
    last = producer(q, "probs")
    assert (last.op_type, attr(last, "to")) == ("Cast", TensorProto.FLOAT)
    feed = images(1, seed=3)[0]
    ref = with_logits(model, "logits")
    assert_close(run(ref, feed), run(apply(p, ref)[0], feed), 0.9999, FP16_RTOL)


def assert_fp32_between_casts(q: onnx.ModelProto, node: onnx.NodeProto, half: int) -> None:
    """``node`` computes in FP32: a Cast to FP32 feeds it, one Cast back to ``half`` reads it."""
    into = producer(q, node.input[0])
    assert (into.op_type, attr(into, "to")) == ("Cast", TensorProto.FLOAT)
    (out,) = consumers(q, node.output[0])
    assert (out.op_type, attr(out, "to")) == ("Cast", half)


def test_fp16_traps() -> None:
    q, modified = apply(Float16Pass(), TRAPS)
    assert modified
    check(q)
    by_name = nodes(q)
    assert attr(by_name["Cast_1"], "to") == TensorProto.FLOAT16  # Cast to FLOAT, inside
    for name in ("Constant_3", "Constant_4"):  # value_float(s) became FP16 tensors
        value = attr(by_name[name], "value")
        assert isinstance(value, onnx.TensorProto) and value.data_type == TensorProto.FLOAT16
    fill = attr(by_name["ConstantOfShape_9"], "value")
    assert fill.data_type == TensorProto.FLOAT16
    assert attr(by_name["LeakyRelu_7"], "alpha") == pytest.approx(0.1)
    huge = numpy_helper.to_array(initializer(q, "huge"))
    assert huge.dtype == np.float16 and np.isfinite(huge).all()
    assert huge[:3].tolist() == [FP16_MAX, -FP16_MAX, FP16_MAX]
    tiny = numpy_helper.to_array(initializer(q, "tiny"))
    smallest = float(np.float16(FP16_TINY))
    assert tiny[:2].tolist() == [smallest, smallest] and tiny[3] == 0.0
    assert numpy_helper.to_array(initializer(q, "eps")) > 0
    assert_fp32_between_casts(q, by_name["CumSum_8"], TensorProto.FLOAT16)  # blocked
    feed = {"x": np.array([[0.0, 1, -2, 3, 0.5, 0, 6, -7]] * 2, np.float32)}
    ref, norm_ref = run(TRAPS, feed)
    y, norm = run(q, feed)
    assert np.isfinite(y).all() and np.isfinite(norm).all()
    np.testing.assert_allclose(norm, norm_ref, atol=2e-3)  # 0 / sqrt(eps) stays 0, not NaN
    # y[:, :3] reads the clipped constants; the rest is ordinary arithmetic
    np.testing.assert_allclose(y[:, 3:], ref[:, 3:], rtol=5e-3, atol=5e-3)


def excluded_conv(
    pass_type: type[Float16Pass] | type[BFloat16Pass], name: str, half: int
) -> tuple[onnx.ModelProto, onnx.ModelProto, onnx.NodeProto]:
    """tinycnn through ``pass_type(nodes_to_exclude=[name])``: the Conv ``name``, a candidate
    otherwise, is not one, and runs in FP32 between Casts. Returns the model, the converted
    model and that Conv."""
    model = static_tinycnn()
    assert name in pass_type().candidates(model)
    p = pass_type(nodes_to_exclude=[name])
    assert name not in p.candidates(model)
    q, _ = apply(p, model)
    check(q)
    conv = nodes(q)[name]
    assert_fp32_between_casts(q, conv, half)
    return model, q, conv


def test_fp16_nodes_to_exclude_stay_fp32() -> None:
    _, q, conv = excluded_conv(Float16Pass, "Conv_3", TensorProto.FLOAT16)
    assert initializer(q, conv.input[1]).data_type == TensorProto.FLOAT
    assert initializer(q, nodes(q)["Conv_6"].input[1]).data_type == TensorProto.FLOAT16


def test_fp16_leaves_input_untouched_and_skips_integer_models() -> None:
    assert unchanged_after(Float16Pass(), static_tinycnn())
    assert Float16Pass().candidates(INTEGER_ONLY) == []
    q, modified = apply(Float16Pass(), INTEGER_ONLY)
    assert not modified and ops(q) == ["Add"]


# -- BF16 -----------------------------------------------------------------------------------


def test_bf16_tinycnn_structure_and_outputs(tmp_path: Path) -> None:
    model = with_logits(static_tinycnn(), "logits")
    p = BFloat16Pass()
    cands = p.candidates(model)
    assert len(cands) == len(model.graph.node)
    q, modified = apply(p, model)
    assert modified
    check(q)
    assert opset(q) >= BF16_OPSET
    assert io_types(q) == [TensorProto.FLOAT] * 3
    by_name = nodes(q)
    for conv in ("Conv_0", "Conv_3", "Conv_6", "Conv_10"):
        for i in (1, 2):
            assert initializer(q, by_name[conv].input[i]).data_type == TensorProto.BFLOAT16
    first = consumers(q, "images")
    assert [(n.op_type, attr(n, "to")) for n in first] == [("Cast", TensorProto.BFLOAT16)]
    for name in ("probs", "logits"):
        last = producer(q, name)
        assert (last.op_type, attr(last, "to")) == ("Cast", TensorProto.FLOAT)
    assert not [t.name for t in q.graph.initializer if t.data_type == TensorProto.FLOAT]
    feed = images(1, seed=3)[0]
    assert_close(run(model, feed), run_lepton(q, feed, tmp_path), 0.999, 3 * BF16_RTOL)


def test_bf16_mlp_outputs(mlp_path: Path, tmp_path: Path) -> None:
    model = with_logits(onnx.load(mlp_path), "ob")
    q, _ = apply(BFloat16Pass(), model)
    check(q)
    feed = mlp_feeds(1, seed=3)[0]
    assert_close(run(model, feed), run_lepton(q, feed, tmp_path), 0.9999, BF16_RTOL)


def test_bf16_rounds_to_nearest_even() -> None:
    ties = np.array(
        [1 + 2**-8, 1 + 3 * 2**-8, -(1 + 2**-8), 1 + 2**-8 + 2**-20, 3.4e38, -3.4e38, 1e-30],
        np.float32,
    )
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[7] x) => (float[7] y) {
            y = Mul (x, w)
        }
        """,
        {"w": ties},
    )
    q, _ = apply(BFloat16Pass(), model)
    check(q)
    assert producer(q, "y").op_type == "Cast" and initializer(q, "w") is None
    w = numpy_helper.to_array(initializer(q, "w_bf16"))
    got = w.astype(np.float32).tolist()
    assert got[:4] == [1.0, 1 + 2**-6, -1.0, 1 + 2**-7]  # ties to even, else nearest
    assert all(math.isfinite(v) for v in got[4:6]) and abs(got[4]) > 3e38  # clipped, not inf
    assert got[6] == pytest.approx(1e-30, rel=1e-2)  # bf16 has fp32's exponent range


def test_bf16_traps(tmp_path: Path) -> None:
    q, modified = apply(BFloat16Pass(), TRAPS)
    assert modified
    check(q)
    by_name = nodes(q)
    assert attr(by_name["Cast_1"], "to") == TensorProto.BFLOAT16
    for name in ("Constant_3", "Constant_4"):
        assert attr(by_name[name], "value").data_type == TensorProto.BFLOAT16
    assert attr(by_name["ConstantOfShape_9"], "value").data_type == TensorProto.BFLOAT16
    huge = numpy_helper.to_array(initializer(q, "huge_bf16")).astype(np.float32)
    assert huge[:3].tolist() == [999424.0, -999424.0, 70144.0]  # in range: just rounded
    assert_fp32_between_casts(q, by_name["CumSum_8"], TensorProto.BFLOAT16)  # blocked
    feed = {"x": np.array([[0.0, 1, -2, 3, 0.5, 0, 6, -7]] * 2, np.float32)}
    refs = run(TRAPS, feed)
    outs = run_lepton(q, feed, tmp_path)
    assert all(np.isfinite(o).all() for o in outs)
    assert_close(refs, outs, 0.9999, BF16_RTOL)


def test_bf16_nodes_to_exclude_stay_fp32(tmp_path: Path) -> None:
    model, q, conv = excluded_conv(BFloat16Pass, "Conv_6", TensorProto.BFLOAT16)
    assert [initializer(q, x).data_type for x in conv.input[1:]] == [TensorProto.FLOAT] * 2
    feed = images(1, seed=3)[0]
    assert_close(run(model, feed), run_lepton(q, feed, tmp_path), 0.999)


def test_bf16_leaves_input_untouched_and_skips_integer_models() -> None:
    assert unchanged_after(BFloat16Pass(), static_tinycnn())
    assert BFloat16Pass().candidates(INTEGER_ONLY) == []
    q, modified = apply(BFloat16Pass(), INTEGER_ONLY)
    assert not modified and ops(q) == ["Add"] and opset(q) == 17


# -- FP8 ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tinycnn_fp8() -> tuple[onnx.ModelProto, onnx.ModelProto, list[dict[str, np.ndarray]]]:
    model = with_logits(static_tinycnn(), "logits")
    calib = images(3, seed=1)
    q, modified = apply(QuantizeFP8Pass(calib), model)
    assert modified
    return model, q, calib


def test_fp8_tinycnn_structure(tinycnn_fp8) -> None:
    model, q, calib = tinycnn_fp8
    assert QuantizeFP8Pass(calib).candidates(model) == [
        "Conv_0",
        "Conv_3",
        "Conv_6",
        "Conv_10",
        "MatMul_16",
    ]
    check(q)
    assert opset(q) >= 19
    by_name = nodes(q)
    for name in ("Conv_0", "Conv_3", "Conv_6", "Conv_10", "MatMul_16"):
        dq = producer(q, by_name[name].input[1])
        assert dq.op_type == "DequantizeLinear" and attr(dq, "axis") is None
        w = initializer(q, dq.input[0])
        assert w.data_type == TensorProto.FLOAT8E4M3FN
        zp = initializer(q, dq.input[2])
        assert zp.data_type == TensorProto.FLOAT8E4M3FN and not numpy_helper.to_array(zp).any()
        # the largest weight maps to E4M3's largest value
        assert np.abs(numpy_helper.to_array(w).astype(np.float32)).max() == FP8_E4M3_MAX
    # activations: the graph input's scale is its calibrated amax / 448
    (quant,) = consumers(q, "images")
    assert quant.op_type == "QuantizeLinear"
    assert initializer(q, quant.input[2]).data_type == TensorProto.FLOAT8E4M3FN
    amax = max(float(np.abs(f["images"]).max()) for f in calib)
    scale = numpy_helper.to_array(initializer(q, quant.input[1]))
    assert scale.shape == () and scale == np.float32(amax / FP8_E4M3_MAX)
    (deq,) = consumers(q, quant.output[0])
    assert deq.op_type == "DequantizeLinear" and by_name["Conv_0"].input[0] == deq.output[0]
    # no float weight is left behind
    assert not {"w1", "w2", "w3", "w4", "wfc"} & {t.name for t in q.graph.initializer}


def test_fp8_tinycnn_outputs_on_ort(tinycnn_fp8) -> None:
    model, q, _ = tinycnn_fp8
    feed = images(1, seed=5)[0]
    assert_close(run(model, feed), run(q, feed), MIN_COSINE)


def test_fp8_relu_before_quantize_survives_ort_optimizations(tinycnn_fp8) -> None:
    """onnxruntime deletes a Relu feeding a float8 QuantizeLinear at its default level: the
    pass places the QDQ before such a Relu, so every level computes the same."""
    _, q, _ = tinycnn_fp8
    feed = images(1, seed=5)[0]
    plain = run(q, feed, "disable")
    optimized = run(q, feed, "all")
    for a, b in zip(plain, optimized, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    relu = producer(q, nodes(q)["Conv_6"].input[0])
    assert relu.op_type == "Relu" and producer(q, relu.input[0]).op_type == "DequantizeLinear"


def test_fp8_mlp_per_channel(mlp_path: Path) -> None:
    model = with_logits(onnx.load(mlp_path), "ob")
    calib = mlp_feeds(3, seed=1)
    q, _ = apply(QuantizeFP8Pass(calib, per_channel=True), model)
    check(q)
    for name, n in (("MatMul_0", 64), ("MatMul_3", 8)):
        dq = producer(q, nodes(q)[name].input[1])
        assert attr(dq, "axis") == 1  # the output channels of a (K, N) weight
        assert tuple(initializer(q, dq.input[1]).dims) == (n,)
        assert tuple(initializer(q, dq.input[2]).dims) == (n,)
    feed = mlp_feeds(1, seed=5)[0]
    assert_close(run(model, feed), run(q, feed), 0.999)


def test_fp8_clip_before_quantize_runs_on_ort() -> None:
    """onnxruntime's ClipQuantFusion throws on a float8 zero point after a Clip."""
    rng = np.random.default_rng(0)
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[4, 16] x) => (float[4, 8] y) {
            h = MatMul (x, w1)
            c = Clip (h, lo, hi)
            y = MatMul (c, w2)
        }
        """,
        {
            "w1": (rng.standard_normal((16, 32)) * 0.3).astype(np.float32),
            "w2": (rng.standard_normal((32, 8)) * 0.3).astype(np.float32),
            "lo": np.array(0.0, np.float32),
            "hi": np.array(1.0, np.float32),
        },
    )
    calib = [{"x": rng.standard_normal((4, 16)).astype(np.float32)} for _ in range(3)]
    q, _ = apply(QuantizeFP8Pass(calib, per_channel=True), model)
    check(q)
    feed = {"x": rng.standard_normal((4, 16)).astype(np.float32)}
    assert_close(run(model, feed), run(q, feed), 0.995)


def test_fp8_nodes_to_exclude_stay_fp32(mlp_path: Path) -> None:
    model = onnx.load(mlp_path)
    calib = mlp_feeds(2, seed=1)
    assert QuantizeFP8Pass(calib).candidates(model) == ["MatMul_0", "MatMul_3"]
    p = QuantizeFP8Pass(calib, nodes_to_exclude=["MatMul_3"])
    assert p.candidates(model) == ["MatMul_0"]
    q, _ = apply(p, model)
    check(q)
    kept = nodes(q)["MatMul_3"]
    assert producer(q, kept.input[0]).op_type == "Relu"
    assert initializer(q, kept.input[1]).data_type == TensorProto.FLOAT
    assert ops(q).count("QuantizeLinear") == 1 and ops(q).count("DequantizeLinear") == 2


@pytest.mark.parametrize(
    ("feeds", "words"),
    [
        (lambda f: f[:1], "at least 2 calibration samples"),
        (lambda f: [f[0], {"y": f[1]["x"]}], "lacks input(s) x"),
        (
            lambda f: [f[0], {"x": f[1]["x"][:, :16]}],
            "has shape [4, 16], the model expects [?, 32]",
        ),
        (lambda f: [f[0], {"x": f[1]["x"].astype(np.float16)}], "is float16, the model expects"),
    ],
)
def test_fp8_bad_calibration_is_input_error(mlp_path: Path, feeds, words: str) -> None:
    model = ir.serde.deserialize_model(onnx.load(mlp_path))
    with pytest.raises(PassInputError) as e:
        QuantizeFP8Pass(feeds(mlp_feeds(2, seed=1)))(model)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_fp8_leaves_input_untouched_and_skips_models_without_matmuls() -> None:
    model = static_tinycnn()
    assert unchanged_after(QuantizeFP8Pass(images(2, seed=1)), model)
    neg = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 4] x) => (float[2, 4] y) {
            y = Relu (x)
        }
        """
    )
    p = QuantizeFP8Pass([{"x": np.ones((2, 4), np.float32)}] * 2)
    assert p.candidates(neg) == []
    q, modified = apply(p, neg)
    assert not modified and ops(q) == ["Relu"] and opset(q) == 17


def test_fp8_weights_round_to_e4m3_grid() -> None:
    """A weight already on the E4M3 grid (times its scale) comes back exactly."""
    grid = np.array([448, -448, 1, -0.5, 0.015625, 240, 0, 2], np.float32).reshape(8, 1)
    model = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 8] x) => (float[1, 1] y) {
            y = MatMul (x, w)
        }
        """,
        {"w": grid * 0.01},
    )
    q, _ = apply(QuantizeFP8Pass([{"x": np.ones((1, 8), np.float32)}] * 2), model)
    dq = producer(q, producer(q, "y").input[1])
    w = initializer(q, dq.input[0])
    got = numpy_helper.to_array(w)
    assert got.dtype == ml_dtypes.float8_e4m3fn
    np.testing.assert_array_equal(got.astype(np.float32), grid)
