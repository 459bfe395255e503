"""FLOP and byte counts (exact on tiny graphs, ResNet-50 overall), spec-sheet peaks, reference J."""

from __future__ import annotations

import json
import math
import os
import runpy
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper, parser

from lepton_compile.bench import roofline
from lepton_compile.bench.roofline import (
    PEAKS,
    REFERENCE_LABEL,
    SOFTMAX_FLOPS,
    GraphCost,
    Peak,
    beside_measured,
    count,
    cpu_peak,
    lookup_peak,
    peak_for,
    reference_energy,
)

CLI = Path(__file__).resolve().parents[2] / "benchmarks" / "roofline.py"
LIGHT_RESNET50 = os.path.join(
    os.path.dirname(onnx.__file__), "backend", "test", "data", "light", "light_resnet50.onnx"
)


def model(text: str, **weights: np.ndarray) -> onnx.ModelProto:
    m = parser.parse_model(text)
    for k, v in weights.items():
        m.graph.initializer.append(numpy_helper.from_array(v, k))
    return m


def f32(*shape: int) -> np.ndarray:
    return np.zeros(shape, np.float32)


# --- whole models ------------------------------------------------------------------------------


def test_resnet50_macs() -> None:
    cost = count(onnx.load(LIGHT_RESNET50))
    # Weights are ConstantOfShape nodes of constant shapes: folded at load, not per-inference.
    assert cost.folded == {"ConstantOfShape": 239}
    assert cost.complete, cost.unknown
    assert 3.8e9 <= cost.macs <= 4.2e9
    assert cost.macs == 4_089_184_256  # 53 Conv + the 2048x1000 Gemm
    assert cost.by_op["Conv"].macs == 4_089_184_256 - 2048 * 1000
    assert cost.by_op["Conv"].count == 53
    # 25.6 M float parameters, read once under perfect fusion.
    assert 25.0e6 * 4 < cost.weight_bytes < 26.0e6 * 4
    assert cost.input_bytes == 3 * 224 * 224 * 4 and cost.output_bytes == 1000 * 4
    assert cost.bytes_fused < cost.bytes_unfused
    json.dumps(cost.to_dict())


# --- exact counts on tiny graphs -----------------------------------------------------------------


def test_conv_groups_dilation_stride() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 9, 9] x) => (float[1, 6, 3, 3] y) {
            y = Conv <group = 2, dilations = [2, 2], strides = [2, 2]> (x, w, b)
        }
        """,
        w=f32(6, 2, 3, 3),
        b=f32(6),
    )
    c = count(m)
    # dilated kernel spans 5: (9 - 5) / 2 + 1 = 3; each output is 2 channels x 3 x 3 taps
    assert c.macs == 1 * 6 * 3 * 3 * (2 * 3 * 3) == 972
    assert c.flops == 2 * 972 + 54  # + bias add per output
    assert c.matmul_flops == c.flops
    assert c.bytes_unfused == (4 * 81 + 6 * 18 + 6 + 54) * 4
    assert c.weight_bytes == (6 * 18 + 6) * 4
    assert c.bytes_fused == c.weight_bytes + 4 * 81 * 4 + 54 * 4


def test_conv_transpose_groups() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 5, 5] x) => (float[1, 2, 11, 11] y) {
            y = ConvTranspose <group = 2, strides = [2, 2]> (x, w)
        }
        """,
        w=f32(4, 1, 3, 3),
    )
    c = count(m)
    # every input pixel of every input channel scatters 3x3 taps into M/group = 1 channel
    assert c.macs == 4 * 25 * 1 * 9
    assert c.flops == 2 * c.macs


def test_gemm_trans_alpha_beta() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[8, 5] a) => (float[5, 6] y) {
            y = Gemm <transA = 1, transB = 1, alpha = 2.0, beta = 0.5> (a, b, c)
        }
        """,
        b=f32(6, 8),
        c=f32(6),
    )
    cost = count(m)
    assert cost.macs == 5 * 6 * 8
    # 2 MNK + alpha scaling (MN) + C add (MN) + beta scaling of C (numel C)
    assert cost.flops == 2 * 240 + 30 + 30 + 6
    plain = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[5, 8] a) => (float[5, 6] y) { y = Gemm (a, b) }
        """,
        b=f32(8, 6),
    )
    assert count(plain).flops == 2 * 240


def test_matmul_batched_broadcast_and_1d() -> None:
    m = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 1, 4, 5] a, float[3, 5, 7] b, float[5] v)
            => (float[2, 3, 4, 7] y, float[3, 7] z) {
            y = MatMul (a, b)
            z = MatMul (v, b)
        }
        """
    )
    c = count(m)
    assert c.by_op["MatMul"].count == 2
    assert c.macs == 2 * 3 * 4 * 7 * 5 + 3 * 7 * 5
    assert c.flops == 2 * c.macs


def test_einsum_and_attention() -> None:
    m = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3, 4] a, float[2, 4, 5] b) => (float[2, 3, 5] y) {
            y = Einsum <equation = "bij,bjk->bik"> (a, b)
        }
        """
    )
    assert count(m).macs == 2 * 3 * 4 * 5
    att = parser.parse_model(
        """
        <ir_version: 10, opset_import: ["" : 23]>
        g (float[1, 2, 4, 8] q, float[1, 2, 6, 8] k, float[1, 2, 6, 8] v) => (float[1, 2, 4, 8] y) {
            y = Attention (q, k, v)
        }
        """
    )
    c = count(att)
    # Q K^T and P V: 2 heads x 4 queries x 6 keys x 8 dims each
    assert c.macs == 2 * (2 * 4 * 6 * 8)
    scores = 2 * 4 * 6
    assert c.flops == 2 * c.macs + scores * (1 + SOFTMAX_FLOPS)


def test_elementwise_norms_pooling_constants() -> None:
    m = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 4, 8, 8] x) => (float[1, 4, 4, 4] p, float[1, 4, 8, 8] s, float[1, 4, 8, 8] n,
                                    float[1, 4, 8, 8] e, float[1, 4, 1, 1] r) {
            p = MaxPool <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 1, 1, 1]> (x)
            s = Softmax <axis = -1> (x)
            n = LayerNormalization <axis = -1> (x, scale, bias)
            e = Erf (x)
            r = ReduceMean <axes = [2, 3], keepdims = 1> (x)
        }
        """
    )
    m.graph.initializer.extend(
        [numpy_helper.from_array(f32(8), "scale"), numpy_helper.from_array(f32(8), "bias")]
    )
    c = count(m)
    assert c.macs == 0 and c.matmul_flops == 0
    assert c.by_op["MaxPool"].flops == 64 * 9
    assert c.by_op["Softmax"].flops == 256 * roofline.SOFTMAX_FLOPS
    assert c.by_op["LayerNormalization"].flops == 256 * roofline.LAYERNORM_FLOPS
    assert c.by_op["Erf"].flops == 256 * roofline.TRANSCENDENTAL_FLOPS
    assert c.by_op["ReduceMean"].flops == 256 + 4


def test_fp16_model_moves_half_the_bytes() -> None:
    def build(t: str, dtype: type) -> onnx.ModelProto:
        return model(
            f"""
            <ir_version: 8, opset_import: ["" : 17]>
            g ({t}[2, 3, 8, 8] x) => ({t}[2, 4, 8, 16] y) {{
                c = Conv <pads = [1, 1, 1, 1]> (x, w, b)
                r = Relu (c)
                y = MatMul (r, m)
            }}
            """,
            w=np.zeros((4, 3, 3, 3), dtype),
            b=np.zeros(4, dtype),
            m=np.zeros((8, 16), dtype),
        )

    c32, c16 = count(build("float", np.float32)), count(build("float16", np.float16))
    assert c16.flops == c32.flops > 0
    assert c16.bytes_unfused * 2 == c32.bytes_unfused
    assert c16.bytes_fused * 2 == c32.bytes_fused
    assert c16.weight_bytes * 2 == c32.weight_bytes


def test_qdq_and_integer_ops() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[1, 16] x, uint8[1, 16] xq) => (float[1, 8] y, int32[1, 8] yi) {
            xd = DequantizeLinear (xq, s, zp)
            wd = DequantizeLinear (wq, ws)
            y0 = MatMul (xd, wd)
            y = Add (y0, x8)
            yi = MatMulInteger (xq, wq8, zp, wzp)
        }
        """,
        x8=f32(1, 8),
    )
    m.graph.initializer.extend(
        [
            numpy_helper.from_array(np.zeros((16, 8), np.int8), "wq"),
            numpy_helper.from_array(np.ones(8, np.float32), "ws"),
            numpy_helper.from_array(np.float32(0.1), "s"),
            numpy_helper.from_array(np.uint8(128), "zp"),
            numpy_helper.from_array(np.zeros((16, 8), np.uint8), "wq8"),
            numpy_helper.from_array(np.uint8(0), "wzp"),
        ]
    )
    c = count(m)
    # DequantizeLinear of a constant is kept (QDQ backends fuse it): weights read as int8.
    assert "DequantizeLinear" not in c.folded and c.by_op["DequantizeLinear"].count == 2
    assert c.weight_bytes == 128 + 8 * 4 + 4 + 1 + 32 + 128 + 1
    assert c.macs == 16 * 8 and c.int_macs == 16 * 8
    assert c.int_ops == 2 * 16 * 8
    assert c.by_op["DequantizeLinear"].flops == (16 + 128) * roofline.DEQUANTIZE_FLOPS


def test_onnxruntime_contrib_ops() -> None:
    # What ORT's extended optimizer saves; onnx's shape inference knows none of these ops.
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17, "com.microsoft" : 1]>
        g (float[1, 3, 8, 8] x) => (float[1, 4, 8, 8] y) {
            c = com.microsoft.FusedConv <activation = "Relu", pads = [1, 1, 1, 1]> (x, w, b)
            g = com.microsoft.Gelu (c)
            y = Relu (g)
        }
        """,
        w=f32(4, 3, 3, 3),
        b=f32(4),
    )
    c = count(m)
    assert c.complete, c.unknown
    assert c.macs == 64 * 4 * 27
    assert c.by_op["com.microsoft.FusedConv"].flops == 2 * c.macs + 256 + 256  # bias, Relu
    assert c.by_op["com.microsoft.Gelu"].flops == 256 * (roofline.TRANSCENDENTAL_FLOPS + 4)
    assert c.by_op["Relu"].flops == 256


def test_gather_reads_rows_not_the_table() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[1, 4] ids) => (float[1, 4, 16] y) { y = Gather (emb, ids) }
        """,
        emb=f32(1000, 16),
    )
    c = count(m)
    assert c.weight_bytes == 4 * 16 * 4
    assert c.bytes_unfused == 4 * 8 + 2 * 4 * 16 * 4


def test_unknown_shapes_listed_not_zero() -> None:
    m = model(
        """
        <ir_version: 8, opset_import: ["" : 17, "my.ops" : 1]>
        g (float[N, 8] x) => (float[N, 4] y) {
            h = MatMul (x, w)
            y = my.ops.Thing (h)
        }
        """,
        w=f32(8, 4),
    )
    c = count(m)
    assert not c.complete
    reasons = {u.op_type: u.reason for u in c.unknown}
    assert "shape of 'x' unknown" in reasons["MatMul"]
    assert "custom domain" in reasons["my.ops.Thing"]
    assert c.by_op["MatMul"].unknown == 1 and c.flops == 0
    fixed = count(m, {"x": [3, 8]})
    assert fixed.macs == 3 * 8 * 4
    # the custom op, and so the graph output it makes
    assert [u.op_type for u in fixed.unknown] == ["my.ops.Thing", "<graph output>"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # not modified


def test_shape_arithmetic_is_evaluated() -> None:
    # data_prop stops at the float Cast; the reference runtime evaluates the chain.
    m = parser.parse_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3, 4] x) => (float[A, B] y) {
            s = Shape (x)
            sf = Cast <to = 1> (s)
            k = Constant <value = float[3] {1.0, 0.5, 2.0}> ()
            sm = Mul (sf, k)
            si = Cast <to = 7> (sm)
            z = Reshape (x, si)
            r = Relu (z)
            y = Flatten <axis = 1> (r)
        }
        """
    )
    c = count(m)
    assert c.complete, c.unknown
    assert c.folded == {"Shape": 1, "Cast": 2, "Constant": 1, "Mul": 1}
    assert c.by_op["Relu"].flops == 16  # x reshaped to [2, 1, 8]
    assert c.output_bytes == 16 * 4


# --- peaks and the reference -------------------------------------------------------------------


def fake_peak() -> Peak:
    return Peak("fake", "gpu", {"fp32": 1e12, "fp16": 4e12, "int8": 8e12}, 1e11, 100.0, "made up")


def test_reference_energy_arithmetic() -> None:
    cost = GraphCost(flops=8e9, matmul_flops=6e9, int_ops=0.0, bytes_unfused=4e8, bytes_fused=1e8)
    ref = reference_energy(cost, fake_peak(), "fp16")
    assert ref["label"] == REFERENCE_LABEL and "not a bound" in ref["label"]
    # matmul at the fp16 peak, the rest at the fp32 (vector) peak
    assert ref["compute_time_s"] == pytest.approx(6e9 / 4e12 + 2e9 / 1e12)  # 3.5 ms
    assert ref["unfused"]["bound"] == "memory"
    assert ref["unfused"]["time_s"] == pytest.approx(4e-3)
    assert ref["unfused"]["joules"] == pytest.approx(100 * 4e-3)
    assert ref["fused"]["bound"] == "compute"
    assert ref["fused"]["joules"] == pytest.approx(100 * 3.5e-3)
    assert ref["arithmetic_intensity"] == {"unfused": 20.0, "fused": 80.0}
    assert ref["peak"]["source"] == "made up"
    json.dumps(ref)
    ints = reference_energy(
        GraphCost(int_ops=8e9, bytes_fused=1, bytes_unfused=1), fake_peak(), "int8"
    )
    assert ints["compute_time_s"] == pytest.approx(1e-3)
    row = beside_measured(0.7, ref)
    assert row["ratio_to_reference"]["fused"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="bf16"):
        reference_energy(cost, fake_peak(), "bf16")


def test_reference_on_resnet50_h100() -> None:
    ref = reference_energy(count(onnx.load(LIGHT_RESNET50)), PEAKS["h100-sxm"], "fp16")
    # at batch 1 ResNet-50 is memory-bound on an H100 even with perfect fusion
    assert ref["fused"]["bound"] == "memory"
    assert 0.01 < ref["fused"]["joules"] < ref["unfused"]["joules"] < 1.0


def gpu_record(name: str, providers: list[str] | None = None) -> dict:
    return {"cpu": {"model": "AMD EPYC", "sockets": 1}, "gpus": [{"name": name}],
            "providers": providers}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA H200", "h200-sxm"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb"),
        ("NVIDIA A100 80GB PCIe", "a100-pcie-80gb"),
        ("NVIDIA L4", "l4"),
    ],
)
def test_peak_for_gpu_names(name: str, key: str) -> None:
    assert peak_for(gpu_record(name), "fp16") is PEAKS[key]


def test_peak_table_figures() -> None:
    h100 = PEAKS["h100-sxm"]
    assert h100.flops["fp16"] == 989e12 and h100.flops["int8"] == 1979e12
    assert h100.flops["fp32"] == 67e12 and h100.flops["tf32"] == 495e12
    assert h100.bandwidth == 3.35e12 and h100.tdp_w == 700
    assert PEAKS["h200-sxm"].bandwidth == 4.8e12 and PEAKS["h200-sxm"].flops == h100.flops
    a100 = PEAKS["a100-sxm4-80gb"]
    assert (a100.flops["fp32"], a100.flops["fp16"], a100.bandwidth, a100.tdp_w) == pytest.approx(
        (19.5e12, 312e12, 2.039e12, 400)
    )
    l4 = PEAKS["l4"]
    assert (l4.flops["fp16"], l4.flops["int8"], l4.bandwidth, l4.tdp_w) == pytest.approx(
        (121e12, 242e12, 0.3e12, 72)
    )
    assert all(p.source for p in PEAKS.values())


def test_peak_for_unknown_and_cpu() -> None:
    for name in ("NVIDIA L40S", "NVIDIA H100 NVL", "NVIDIA GH200 480GB", "NVIDIA RTX 4090"):
        peak, why = lookup_peak(gpu_record(name), "fp16")
        assert peak is None and name in why
    # A100 has no fp8; unknown precisions are refused
    assert lookup_peak(gpu_record("NVIDIA A100-SXM4-80GB"), "fp8")[0] is None
    assert "unknown precision" in lookup_peak(gpu_record("NVIDIA L4"), "fp12")[1]
    # This machine's kind of record: a model string with no SKU.
    peak, why = lookup_peak({"cpu": {"model": "AMD EPYC"}, "gpus": None}, "fp32")
    assert peak is None and "AMD EPYC" in why and "cpu_peak" in why
    rec = {"cpu": {"model": "AMD EPYC 9554 64-Core Processor", "sockets": 2}, "gpus": None}
    p = peak_for(rec, "fp32")
    assert p is not None and p.kind == "cpu"
    assert p.flops["fp32"] == pytest.approx(2 * 64 * 3.1e9 * 32)
    assert p.bandwidth == pytest.approx(2 * 460.8e9) and p.tdp_w == 720
    assert peak_for(rec, "fp16") is None  # no CPU fp16 figure
    # a GPU machine running the CPU provider is measured against its CPU
    cpu_run = gpu_record("NVIDIA H100 80GB HBM3", ["CPUExecutionProvider"])
    assert peak_for(cpu_run, "fp32") is None  # "AMD EPYC": unknown CPU
    assert peak_for(cpu_run, "fp32", target="gpu") is PEAKS["h100-sxm"]
    assert peak_for(gpu_record("NVIDIA H100 80GB HBM3", ["CUDAExecutionProvider"]), "fp32")
    xeon = {"cpu": {"model": "Intel(R) Xeon(R) Platinum 8480+"}, "gpus": []}
    assert peak_for(xeon, "fp32").flops["fp32"] == pytest.approx(56 * 2.0e9 * 64)


def test_cpu_peak() -> None:
    p = cpu_peak("box", 16, 3.0, 100, 200, flops_per_cycle=64, int8_per_cycle=256)
    assert p.flops["fp32"] == 16 * 3e9 * 64 and p.flops["int8"] == 16 * 3e9 * 256
    assert p.bandwidth == 100e9 and p.tdp_w == 200 and p.source == "user-supplied"
    with pytest.raises(ValueError):
        cpu_peak("bad", 0, 3.0, 100, 200)


def test_cli(tmp_path, capsys) -> None:  # noqa: ANN001
    path = tmp_path / "m.onnx"
    onnx.save(
        helper.make_model(
            helper.make_graph(
                [helper.make_node("MatMul", ["x", "w"], ["y"])],
                "g",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                [numpy_helper.from_array(f32(4, 2), "w")],
            ),
            opset_imports=[helper.make_opsetid("", 17)],
        ),
        path,
    )
    main = runpy.run_path(str(CLI))["main"]  # the command line over this library
    assert main([str(path), "--shape", "x=3,4", "--peak", "l4"]) == 0
    out = capsys.readouterr().out
    assert "MatMul" in out and "not a bound" in out and math.isfinite(24)
    assert main([str(tmp_path / "missing.onnx")]) == 2
