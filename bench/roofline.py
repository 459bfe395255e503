"""Counts FLOPs and bytes moved per ONNX graph and sets a spec-sheet roofline energy beside them.

    cost = count(onnx.load("model.onnx"))                  # static input shapes required
    peak = peak_for(device_record(["CUDAExecutionProvider"]), "fp16")
    ref = reference_energy(cost, peak, "fp16") if peak else None

``reference_energy`` gives ``P_TDP x max(compute time, bytes / bandwidth)`` from spec-sheet
peaks: a *reference* to set a measured J/inference beside, not a bound. Real kernels rarely
reach peak (so measurements usually sit above it), but a device can also draw less than its TDP
(so a measurement may sit below it). Nothing here is a measurement.

Counting conventions (each a stated estimate, never a silent zero):

- FLOPs are 2 x MACs for Conv, ConvTranspose, Gemm, MatMul, Einsum, attention and RNN cells;
  ``macs`` holds those MACs. Zero padding is counted as work (the usual convention); a causal
  mask is not subtracted from attention. Integer ops (MatMulInteger, ConvInteger, QLinear*)
  go to ``int_ops`` / ``int_macs`` instead.
- Elementwise ops: 1 FLOP per output element; transcendental ones (Exp, Erf, Tanh, Sigmoid,
  ...) ``TRANSCENDENTAL_FLOPS`` each; Softmax ``SOFTMAX_FLOPS`` per element, LayerNormalization
  ``LAYERNORM_FLOPS``, inference BatchNormalization ``BATCHNORM_FLOPS`` (the per-channel
  constants are folded at load); reductions 1 per input element; pooling the kernel size per
  output element; linear/cubic Resize 2 FLOPs per tap. Pure data movement (Reshape, Transpose,
  Concat, Gather, Cast, nearest Resize, ...) is 0 FLOPs by definition and listed in
  ``DATA_MOVEMENT``; its bytes are counted.
- A node whose inputs are all constant (initializers, Constant, ConstantOfShape of a constant
  shape, Shape of a static tensor) is folded at load by runtimes: it is counted under
  ``folded`` and costs nothing per inference. DequantizeLinear / QuantizeLinear are never
  folded, so a QDQ model's weights are read as the integers they are stored as.
- ``bytes_unfused``: sum over nodes of input + output tensor bytes, every node going to memory
  and back: an upper estimate (no fusion, no cache reuse). ``bytes_fused``: the constants read
  by the graph once + graph inputs + graph outputs: a lower estimate (perfect fusion).
  Element sizes come from each tensor's dtype, so FP16 and int8 models count what they store.
- A node whose shapes cannot be inferred, or whose op type has no formula here, is listed in
  ``unknown`` with the reason; the totals then exclude it and ``complete`` is False.

The cost is for one run of the model at the shapes given (batch included).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from lepton_compile.contract import ACTIVATIONS as LEPTON_ACTIVATIONS
from lepton_compile.contract import DOMAIN as LEPTON_DOMAIN
from lepton_compile.contract import SCHEMAS as LEPTON_SCHEMAS

__all__ = [
    "BATCHNORM_FLOPS",
    "DATA_MOVEMENT",
    "LAYERNORM_FLOPS",
    "PEAKS",
    "PRECISIONS",
    "REFERENCE_LABEL",
    "SOFTMAX_FLOPS",
    "TRANSCENDENTAL_FLOPS",
    "GraphCost",
    "OpCost",
    "Peak",
    "UnknownNode",
    "beside_measured",
    "count",
    "cpu_peak",
    "lookup_peak",
    "main",
    "peak_for",
    "reference_energy",
]

log = logging.getLogger(__name__)

REFERENCE_LABEL = "reference (spec-sheet TDP x roofline time), not a bound"

# Per-element costs of the non-MAC ops (FLOPs). Stated constants, not measurements: a libm exp
# or erf is a polynomial of roughly this many multiply-adds.
TRANSCENDENTAL_FLOPS = 8
SOFTMAX_FLOPS = 5  # max, subtract, exp (counted as 1 here: vectorized), sum, divide
LAYERNORM_FLOPS = 8  # mean, subtract, square, mean, rsqrt, multiply, scale, shift
RMSNORM_FLOPS = 5
BATCHNORM_FLOPS = 2  # x * scale' + shift' once the per-channel constants are folded
QUANTIZE_FLOPS = 4  # divide by scale, round, add zero point, saturate
DEQUANTIZE_FLOPS = 2  # subtract zero point, multiply by scale

_DOMAIN_MS = "com.microsoft"
_FOLD_LIMIT = 4096  # elements: constants evaluated to recover shapes are shape arithmetic

# op type -> FLOPs per output element
_ELEMENTWISE: dict[str, float] = {
    **dict.fromkeys(
        [
            "Add", "Sub", "Mul", "Div", "Neg", "Abs", "Relu", "Sqrt", "Reciprocal", "Floor",
            "Ceil", "Round", "Sign", "Mod", "Equal", "Less", "LessOrEqual", "Greater",
            "GreaterOrEqual", "And", "Or", "Xor", "Not", "Where", "IsNaN", "IsInf",
            "ThresholdedRelu", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot",
            "BitShift", "CumSum",
        ],
        1,
    ),
    **dict.fromkeys(["Clip", "LeakyRelu", "PRelu", "Shrink", "BiasAdd"], 2),
    "HardSigmoid": 3,
    "HardSwish": 4,
    **dict.fromkeys(
        [
            "Exp", "Log", "Tanh", "Sigmoid", "Erf", "Sin", "Cos", "Tan", "Asin", "Acos",
            "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Softplus", "Softsign", "Elu",
            "Selu", "Celu", "Pow",
        ],
        TRANSCENDENTAL_FLOPS,
    ),
    **dict.fromkeys(
        ["Gelu", "FastGelu", "QuickGelu", "Mish", "Swish"], TRANSCENDENTAL_FLOPS + 4
    ),
    "BiasGelu": TRANSCENDENTAL_FLOPS + 5,
    "Softmax": SOFTMAX_FLOPS,
    "LogSoftmax": SOFTMAX_FLOPS + 1,
    "Hardmax": 1,
    "LayerNormalization": LAYERNORM_FLOPS,
    "SkipLayerNormalization": LAYERNORM_FLOPS + 2,
    "InstanceNormalization": LAYERNORM_FLOPS,
    "GroupNormalization": LAYERNORM_FLOPS,
    "MeanVarianceNormalization": LAYERNORM_FLOPS,
    "LpNormalization": 3,
    "RMSNormalization": RMSNORM_FLOPS,
    "SimplifiedLayerNormalization": RMSNORM_FLOPS,
    "SkipSimplifiedLayerNormalization": RMSNORM_FLOPS + 1,
    "BatchNormalization": BATCHNORM_FLOPS,
    "QuantizeLinear": QUANTIZE_FLOPS,
    "DequantizeLinear": DEQUANTIZE_FLOPS,
}  # fmt: skip

# op type -> FLOPs per *input* element (reductions)
_REDUCTIONS: dict[str, float] = {
    **dict.fromkeys(
        ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ArgMax", "ArgMin"],
        1,
    ),
    **dict.fromkeys(["ReduceL1", "ReduceL2", "ReduceSumSquare"], 2),
    "ReduceLogSum": 1,
    "ReduceLogSumExp": TRANSCENDENTAL_FLOPS + 1,
    "GlobalAveragePool": 1,
    "GlobalMaxPool": 1,
    "GlobalLpPool": 2,
    "TopK": 1,
    "DynamicQuantizeLinear": QUANTIZE_FLOPS + 2,  # min/max pass, then quantize
}

DATA_MOVEMENT: frozenset[str] = frozenset(
    [
        "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Transpose", "Concat",
        "Split", "Slice", "Gather", "GatherElements", "GatherND", "ScatterND",
        "ScatterElements", "Scatter", "Expand", "Tile", "Pad", "Cast", "CastLike",
        "DepthToSpace", "SpaceToDepth", "Shape", "Size", "ConstantOfShape", "Constant",
        "Dropout", "Trilu", "OneHot", "EyeLike", "Compress", "ReverseSequence", "Range",
        "NonZero", "QLinearConcat",
    ]
)  # fmt: skip

_NONDETERMINISTIC = frozenset(
    ["RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
     "Bernoulli"]
)  # fmt: skip
# Kept per inference even with constant inputs: QDQ backends fuse them into int8 kernels.
_NO_FOLD = frozenset(["DequantizeLinear", "QuantizeLinear", "DynamicQuantizeLinear"])
_CONTROL_FLOW = frozenset(["If", "Loop", "Scan", "SequenceMap"])

# bits per element by TensorProto data type (sub-byte types pack)
_BITS: dict[int, int] = {}
for _name, _bits in [
    ("FLOAT", 32), ("UINT8", 8), ("INT8", 8), ("UINT16", 16), ("INT16", 16), ("INT32", 32),
    ("INT64", 64), ("BOOL", 8), ("FLOAT16", 16), ("DOUBLE", 64), ("UINT32", 32),
    ("UINT64", 64), ("COMPLEX64", 64), ("COMPLEX128", 128), ("BFLOAT16", 16),
    ("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8), ("FLOAT8E5M2FNUZ", 8),
    ("FLOAT8E8M0", 8), ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2),
    ("INT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6),
]:  # fmt: skip
    if hasattr(onnx.TensorProto, _name):
        _BITS[getattr(onnx.TensorProto, _name)] = _bits


class _Unknown(Exception):
    """This node cannot be counted; the message says why."""


# --- results ----------------------------------------------------------------------------------


@dataclass
class OpCost:
    """Totals of one op type (``count`` nodes, folded ones excluded)."""

    count: int = 0
    flops: float = 0.0
    macs: float = 0.0
    int_ops: float = 0.0
    bytes: float = 0.0  # unfused: inputs + outputs of each node
    unknown: int = 0


@dataclass(frozen=True)
class UnknownNode:
    """A node left out of the totals, and why."""

    name: str
    op_type: str
    reason: str


@dataclass
class GraphCost:
    """FLOPs and bytes moved by one run of a graph; see the module docstring for conventions."""

    flops: float = 0.0  # all floating-point ops, matmul-class included
    matmul_flops: float = 0.0  # the part from Conv/Gemm/MatMul/attention/RNN (2 x macs + adds)
    macs: float = 0.0
    int_ops: float = 0.0
    int_macs: float = 0.0
    bytes_unfused: float = 0.0  # upper estimate: every node reads its inputs, writes outputs
    bytes_fused: float = 0.0  # lower estimate: weights once + graph inputs + graph outputs
    weight_bytes: float = 0.0
    input_bytes: float = 0.0
    output_bytes: float = 0.0
    nodes: int = 0  # counted (not folded) nodes, unknown ones included
    folded: dict[str, int] = field(default_factory=dict)  # op type -> nodes folded at load
    by_op: dict[str, OpCost] = field(default_factory=dict)
    unknown: list[UnknownNode] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when every node was counted."""
        return not self.unknown

    @property
    def vector_flops(self) -> float:
        """FLOPs outside the matmul class (elementwise, normalization, pooling, ...)."""
        return self.flops - self.matmul_flops

    def arithmetic_intensity(self) -> dict[str, float]:
        """(FLOPs + int ops) per byte, for each bytes estimate."""
        ops = self.flops + self.int_ops
        return {
            "unfused": ops / self.bytes_unfused if self.bytes_unfused else math.nan,
            "fused": ops / self.bytes_fused if self.bytes_fused else math.nan,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, conventions included so that a reader of a report knows what it is."""
        return {
            "flops": self.flops,
            "matmul_flops": self.matmul_flops,
            "macs": self.macs,
            "int_ops": self.int_ops,
            "int_macs": self.int_macs,
            "bytes": {
                "unfused": self.bytes_unfused,
                "fused": self.bytes_fused,
                "weights": self.weight_bytes,
                "inputs": self.input_bytes,
                "outputs": self.output_bytes,
                "method": (
                    "unfused: sum of every node's input + output tensor bytes (upper "
                    "estimate); fused: weights once + graph inputs + outputs (lower estimate)"
                ),
            },
            "arithmetic_intensity": _nan_to_none(self.arithmetic_intensity()),
            "nodes": self.nodes,
            "folded": dict(self.folded),
            "by_op": {k: asdict(v) for k, v in sorted(self.by_op.items())},
            "complete": self.complete,
            "unknown": [asdict(u) for u in self.unknown],
            "conventions": {
                "flops_per_mac": 2,
                "transcendental": TRANSCENDENTAL_FLOPS,
                "softmax": SOFTMAX_FLOPS,
                "layernorm": LAYERNORM_FLOPS,
                "batchnorm": BATCHNORM_FLOPS,
            },
        }


def _nan_to_none(d: dict[str, float]) -> dict[str, float | None]:
    return {k: (v if math.isfinite(v) else None) for k, v in d.items()}


# --- graph context ----------------------------------------------------------------------------


class _Ctx:
    def __init__(self, graph: onnx.GraphProto) -> None:
        self.types: dict[str, tuple[int, tuple[int, ...] | None]] = {}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            self._add_value_info(vi)
        for t in graph.initializer:
            self.types[t.name] = (t.data_type, tuple(int(d) for d in t.dims))
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                self._add_constant(node)

    def _add_value_info(self, vi: onnx.ValueInfoProto) -> None:
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None:
            return
        shape: tuple[int, ...] | None = None
        if tt.HasField("shape"):
            dims = tt.shape.dim
            if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
                shape = tuple(int(d.dim_value) for d in dims)
        prev = self.types.get(vi.name)
        if prev is None or (prev[1] is None and shape is not None):
            self.types[vi.name] = (tt.elem_type, shape)

    def _add_constant(self, node: onnx.NodeProto) -> None:
        for a in node.attribute:
            if a.name == "value":
                self.types[node.output[0]] = (a.t.data_type, tuple(int(d) for d in a.t.dims))
            elif a.name == "sparse_value":
                v = a.sparse_tensor.values
                self.types[node.output[0]] = (v.data_type, tuple(a.sparse_tensor.dims))
            elif a.name in ("value_float", "value_int"):
                dt = onnx.TensorProto.FLOAT if a.name == "value_float" else onnx.TensorProto.INT64
                self.types[node.output[0]] = (dt, ())
            elif a.name in ("value_floats", "value_ints"):
                n = len(a.floats) if a.name == "value_floats" else len(a.ints)
                dt = onnx.TensorProto.FLOAT if a.name == "value_floats" else onnx.TensorProto.INT64
                self.types[node.output[0]] = (dt, (n,))

    def shape(self, name: str) -> tuple[int, ...]:
        t = self.types.get(name)
        if t is None or t[1] is None:
            raise _Unknown(f"shape of {name!r} unknown")
        return t[1]

    def has_shape(self, name: str) -> bool:
        t = self.types.get(name)
        return t is not None and t[1] is not None

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def nbytes(self, name: str) -> float:
        t = self.types.get(name)
        if t is None or t[1] is None:
            raise _Unknown(f"shape of {name!r} unknown")
        bits = _BITS.get(t[0])
        if bits is None:
            raise _Unknown(f"element size of {name!r} unknown (data type {t[0]})")
        return math.ceil(math.prod(t[1]) * bits / 8)


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _inp(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


# --- per-op formulas: return (flops, matmul_flops, macs, int_ops, int_macs) ----------------------

_Cost = tuple[float, float, float, float, float]


def _conv(node: onnx.NodeProto, ctx: _Ctx, x: str, w: str, b: str, integer: bool) -> _Cost:
    xs, ws, ys = ctx.shape(x), ctx.shape(w), ctx.shape(node.output[0])
    if len(xs) < 3 or len(ws) != len(xs):
        raise _Unknown(f"unexpected ranks x{list(xs)} w{list(ws)}")
    if node.op_type == "ConvTranspose":
        # Every input pixel scatters a kernel into M/group output channels.
        macs = xs[0] * xs[1] * math.prod(xs[2:]) * ws[1] * math.prod(ws[2:])
    else:
        # W is [M, C/group, k...]: each output element is a dot of C/group * prod(k) taps.
        macs = math.prod(ys) * ws[1] * math.prod(ws[2:])
    # Groups are already in the shapes: W's second dim is C/group (M/group for ConvTranspose);
    # strides and dilations are in the output shape.
    adds = math.prod(ys) if b else 0
    if integer:
        return 0.0, 0.0, 0.0, 2.0 * macs + adds, float(macs)
    f = 2.0 * macs + adds
    return f, f, float(macs), 0.0, 0.0


def _activation_flops(node: onnx.NodeProto, ctx: _Ctx) -> float:
    """Fused activation of a contrib FusedConv / FusedGemm (per output element)."""
    act = _attrs(node).get("activation", b"")
    act = act.decode() if isinstance(act, bytes) else str(act)
    if not act:
        return 0.0
    return _ELEMENTWISE.get(act, TRANSCENDENTAL_FLOPS) * ctx.numel(node.output[0])


def _gemm(node: onnx.NodeProto, ctx: _Ctx, integer: bool = False) -> _Cost:
    a = _attrs(node)
    as_, bs = ctx.shape(node.input[0]), ctx.shape(node.input[1])
    if len(as_) != 2 or len(bs) != 2:
        raise _Unknown(f"Gemm wants 2-D inputs, got {list(as_)} and {list(bs)}")
    m, k = (as_[1], as_[0]) if a.get("transA", 0) else as_
    n = bs[0] if a.get("transB", 0) else bs[1]
    macs = m * n * k
    extra = 0.0
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if alpha != 1.0:
        extra += m * n
    c = _inp(node, 2)
    if c and beta != 0.0:
        extra += m * n  # + beta*C, broadcast to the output
        if beta != 1.0:
            extra += ctx.numel(c)
    if integer:
        return 0.0, 0.0, 0.0, 2.0 * macs + extra, float(macs)
    f = 2.0 * macs + extra
    return f, f, float(macs), 0.0, 0.0


def _matmul(node: onnx.NodeProto, ctx: _Ctx, a_name: str, integer: bool = False) -> _Cost:
    # numel(Y) * K covers batching, broadcasting and the 1-D promotions of both operands.
    k = ctx.shape(a_name)[-1] if ctx.shape(a_name) else 1
    if node.op_type == "FusedMatMul" and _attrs(node).get("transA", 0):
        k = ctx.shape(a_name)[-2]
    macs = ctx.numel(node.output[0]) * k
    if integer:
        return 0.0, 0.0, 0.0, 2.0 * macs, float(macs)
    extra = 0.0
    if node.op_type == "FusedMatMul" and float(_attrs(node).get("alpha", 1.0)) != 1.0:
        extra = ctx.numel(node.output[0])
    return 2.0 * macs + extra, 2.0 * macs + extra, float(macs), 0.0, 0.0


def _einsum(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    eq = _attrs(node)["equation"]
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    if len(lhs) != len(node.input):
        raise _Unknown(f"equation {eq!r} does not match {len(node.input)} inputs")
    sizes: dict[str, int] = {}
    spare = iter(string.ascii_uppercase[::-1])
    ell: list[str] = []  # letters standing for ellipsis dims, rightmost last
    for term, name in zip(lhs, node.input, strict=True):
        shp = ctx.shape(name)
        if "..." in term:
            n_ell = len(shp) - (len(term) - 3)
            while len(ell) < n_ell:
                ell.insert(0, next(spare))
            term = term.replace("...", "".join(ell[len(ell) - n_ell :]))
        if len(term) != len(shp):
            raise _Unknown(f"term {term!r} does not match shape {list(shp)}")
        for ch, d in zip(term, shp, strict=True):
            sizes[ch] = max(sizes.get(ch, 1), d)
    # Naive contraction: one multiply-add per point of the joint index space per extra operand.
    points = math.prod(sizes.values())
    if len(lhs) == 1:  # a transpose, trace or sum: one add per point at most
        return float(points), 0.0, 0.0, 0.0, 0.0
    macs = points * (len(lhs) - 1)
    return 2.0 * macs, 2.0 * macs, float(macs), 0.0, 0.0


def _attention_core(b: int, h: int, sq: int, skv: int, dqk: int, dv: int, masked: bool) -> _Cost:
    """Q K^T, scale, (mask), softmax, times V; dqk and dv are per-head * heads (the totals)."""
    macs = b * sq * skv * (dqk + dv)
    scores = b * h * sq * skv
    other = scores * (1 + SOFTMAX_FLOPS + (1 if masked else 0))
    return 2.0 * macs + other, 2.0 * macs, float(macs), 0.0, 0.0


def _attention_onnx(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    a = _attrs(node)
    qs, ks, vs = ctx.shape(node.input[0]), ctx.shape(node.input[1]), ctx.shape(node.input[2])
    if len(qs) == 4:
        b, h, sq, dh = qs
        dqk = h * dh
    elif len(qs) == 3 and a.get("q_num_heads"):
        b, sq, dqk = qs
        h = int(a["q_num_heads"])
    else:
        raise _Unknown(f"Attention Q shape {list(qs)} needs q_num_heads")
    skv = ks[2] if len(ks) == 4 else ks[1]
    if len(vs) == 4:
        dv = h * vs[3]  # each query head reads a (possibly shared) value head
    elif len(vs) == 3 and a.get("kv_num_heads"):
        dv = h * vs[2] // int(a["kv_num_heads"])
    else:
        raise _Unknown(f"Attention V shape {list(vs)} needs kv_num_heads")
    past = _inp(node, 4)
    if past:
        skv += ctx.shape(past)[2]
    masked = bool(_inp(node, 3)) or bool(a.get("is_causal", 0))
    return _attention_core(b, h, sq, skv, dqk, dv, masked)


def _mha_contrib(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    h = int(_attrs(node).get("num_heads", 1))
    qs = ctx.shape(node.input[0])
    key, value = _inp(node, 1), _inp(node, 2)
    if len(qs) != 3 or not key or not value or len(ctx.shape(key)) != 3:
        raise _Unknown("only the unpacked 3-D query/key/value layout is counted")
    b, sq, dqk = qs
    skv, dv = ctx.shape(key)[1], ctx.shape(value)[2]
    return _attention_core(b, h, sq, skv, dqk, dv, bool(_inp(node, 4)))


def _attention_contrib(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    a = _attrs(node)
    h = int(a.get("num_heads", 1))
    xs, ws = ctx.shape(node.input[0]), ctx.shape(node.input[1])
    if len(xs) != 3 or len(ws) != 2:
        raise _Unknown(f"unexpected input {list(xs)} / weights {list(ws)}")
    b, s, d_in = xs
    proj_macs = b * s * d_in * ws[1]
    sizes = list(a.get("qkv_hidden_sizes", [])) or [ws[1] // 3] * 3
    skv = s
    past = _inp(node, 4)
    if past:
        skv += ctx.shape(past)[3]
    f, mf, macs, _, _ = _attention_core(b, h, s, skv, sizes[0], sizes[2], bool(_inp(node, 3)))
    bias = b * s * ws[1] if _inp(node, 2) else 0
    return (
        f + 2.0 * proj_macs + bias,
        mf + 2.0 * proj_macs + bias,
        macs + proj_macs,
        0.0,
        0.0,
    )


def _rnn(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    a = _attrs(node)
    xs, ws, rs = ctx.shape(node.input[0]), ctx.shape(node.input[1]), ctx.shape(node.input[2])
    seq, batch = (xs[1], xs[0]) if a.get("layout", 0) else (xs[0], xs[1])
    dirs, gh, inp = ws
    hidden = rs[2]
    macs = dirs * seq * batch * gh * (inp + hidden)
    # Gate activations and bias adds, then the cell/hidden state update (about 4 per unit).
    other = dirs * seq * batch * (gh * (TRANSCENDENTAL_FLOPS + 2) + hidden * 4)
    return 2.0 * macs + other, 2.0 * macs, float(macs), 0.0, 0.0


def _pool(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    k = math.prod(_attrs(node).get("kernel_shape", []) or [1])
    out = ctx.numel(node.output[0])
    f = out * k + (out if node.op_type in ("AveragePool", "QLinearAveragePool") else 0)
    if node.op_type == "LpPool":
        f = out * k * 2 + out * TRANSCENDENTAL_FLOPS
    if node.op_type.startswith("QLinear"):
        return 0.0, 0.0, 0.0, float(f), 0.0
    return float(f), 0.0, 0.0, 0.0, 0.0


def _resize(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    mode = _attrs(node).get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode == "nearest":
        return 0.0, 0.0, 0.0, 0.0, 0.0  # a gather: data movement
    xs, ys = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    r = sum(1 for i, o in zip(xs, ys, strict=False) if i != o)
    taps = (2 if mode == "linear" else 4) ** r
    return 2.0 * taps * math.prod(ys), 0.0, 0.0, 0.0, 0.0


def _variadic(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    n = len([i for i in node.input if i])
    per = n if node.op_type == "Mean" else max(1, n - 1)
    return float(per * ctx.numel(node.output[0])), 0.0, 0.0, 0.0, 0.0


def _qlinear_elementwise(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    # QLinearAdd / QLinearMul: dequantize both, operate, requantize; ORT runs these in ints.
    return 0.0, 0.0, 0.0, float(4 * ctx.numel(node.output[0])), 0.0


def _lepton_activation_flops(node: onnx.NodeProto, prefix: str) -> float:
    """Per-element FLOPs of an ai.lepton epilogue activation, counted as its ONNX op."""
    name = _attrs(node).get(prefix, b"none")
    name = name.decode() if isinstance(name, bytes) else str(name)
    spec = LEPTON_ACTIVATIONS.get(name)
    if spec is None:
        raise _Unknown(f"{prefix} {name!r} is not an ai.lepton activation")
    if spec.onnx_op is None:
        return 0.0
    return float(_ELEMENTWISE.get(spec.onnx_op, TRANSCENDENTAL_FLOPS))


def _lepton_cost(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    """An ai.lepton fused op (lepton_compile.contract): its base op plus the epilogue."""
    schema = LEPTON_SCHEMAS.get(node.op_type)
    if schema is None:
        raise _Unknown(f"{LEPTON_DOMAIN}.{node.op_type} is not an op of the contract")
    n = ctx.numel(node.output[0])
    if schema.base_op == "Conv":
        f, mf, macs, _, _ = _conv(node, ctx, node.input[0], node.input[1], _inp(node, 2), False)
    elif schema.base_op == "Gemm":
        f, mf, macs, _, _ = _gemm(node, ctx)
    else:
        f, mf, macs, _, _ = _matmul(node, ctx, node.input[0])
        f += n if _inp(node, 2) else 0  # + bias
    per = _lepton_activation_flops(node, "activation")
    if _inp(node, 3):  # residual add, then the post-activation
        per += 1 + _lepton_activation_flops(node, "post_activation")
    return f + per * n, mf, macs, 0.0, 0.0


def _node_cost(node: onnx.NodeProto, ctx: _Ctx) -> _Cost:
    op, dom = node.op_type, node.domain
    if op in _CONTROL_FLOW:
        raise _Unknown("control flow: subgraph work is not counted")
    if dom == LEPTON_DOMAIN:
        return _lepton_cost(node, ctx)
    if dom not in ("", "ai.onnx", _DOMAIN_MS):
        raise _Unknown(f"custom domain {dom!r}: no formula")
    if op in ("Conv", "ConvTranspose", "NhwcConv"):
        return _conv(node, ctx, node.input[0], node.input[1], _inp(node, 2), False)
    if op == "FusedConv":
        f, mf, macs, _, _ = _conv(node, ctx, node.input[0], node.input[1], _inp(node, 2), False)
        z = _inp(node, 3)  # optional residual add
        extra = _activation_flops(node, ctx) + (ctx.numel(node.output[0]) if z else 0)
        return f + extra, mf, macs, 0.0, 0.0
    if op == "ConvInteger":
        return _conv(node, ctx, node.input[0], node.input[1], "", True)
    if op == "QLinearConv":
        c = _conv(node, ctx, node.input[0], node.input[3], _inp(node, 8), True)
        # Requantizing each output: a float multiply and a round.
        return 2.0 * ctx.numel(node.output[0]), 0.0, 0.0, c[3], c[4]
    if op in ("Gemm", "FusedGemm"):
        f, mf, macs, _, _ = _gemm(node, ctx)
        act = _activation_flops(node, ctx) if op == "FusedGemm" else 0.0
        return f + act, mf, macs, 0.0, 0.0
    if op == "QGemm":
        c = _gemm(node, ctx, integer=True)
        return 2.0 * ctx.numel(node.output[0]), 0.0, 0.0, c[3], c[4]
    if op in ("MatMul", "FusedMatMul"):
        return _matmul(node, ctx, node.input[0])
    if op == "MatMulInteger":
        return _matmul(node, ctx, node.input[0], integer=True)
    if op == "QLinearMatMul":
        c = _matmul(node, ctx, node.input[0], integer=True)
        return 2.0 * ctx.numel(node.output[0]), 0.0, 0.0, c[3], c[4]
    if op in ("MatMulIntegerToFloat", "DynamicQuantizeMatMul"):
        c = _matmul(node, ctx, node.input[0], integer=True)
        return 2.0 * ctx.numel(node.output[0]), 0.0, 0.0, c[3], c[4]
    if op == "MatMulNBits":
        # Block-quantized weights dequantized on the fly: float MACs over K (an attribute).
        macs = ctx.numel(node.output[0]) * int(_attrs(node)["K"])
        return 2.0 * macs, 2.0 * macs, float(macs), 0.0, 0.0
    if op == "Einsum":
        return _einsum(node, ctx)
    if op == "Attention":
        return _attention_contrib(node, ctx) if dom == _DOMAIN_MS else _attention_onnx(node, ctx)
    if op == "MultiHeadAttention":
        return _mha_contrib(node, ctx)
    if op in ("LSTM", "GRU", "RNN"):
        return _rnn(node, ctx)
    if op in ("Sum", "Max", "Min", "Mean"):
        return _variadic(node, ctx)
    if op in ("QLinearAdd", "QLinearMul"):
        return _qlinear_elementwise(node, ctx)
    if op in ("QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax"):
        return 0.0, 0.0, 0.0, float(2 * ctx.numel(node.output[0])), 0.0  # table lookups
    if op in ("MaxPool", "AveragePool", "LpPool", "QLinearAveragePool"):
        return _pool(node, ctx)
    if op == "QLinearGlobalAveragePool":
        return 0.0, 0.0, 0.0, float(ctx.numel(node.input[0]) + ctx.numel(node.output[0])), 0.0
    if op in ("Resize", "Upsample"):
        return _resize(node, ctx)
    if op == "LRN":
        # Sum of squares over `size` channels, then a power and a divide per element.
        size = int(_attrs(node).get("size", 1))
        per = 2 * size + TRANSCENDENTAL_FLOPS + 2
        return float(per * ctx.numel(node.output[0])), 0.0, 0.0, 0.0, 0.0
    if op in _ELEMENTWISE:
        return float(_ELEMENTWISE[op] * ctx.numel(node.output[0])), 0.0, 0.0, 0.0, 0.0
    if op in _REDUCTIONS:
        f = _REDUCTIONS[op] * ctx.numel(node.input[0])
        if op in ("ReduceMean", "GlobalAveragePool"):
            f += ctx.numel(node.output[0])
        return float(f), 0.0, 0.0, 0.0, 0.0
    if op in DATA_MOVEMENT:
        return 0.0, 0.0, 0.0, 0.0, 0.0
    raise _Unknown(f"op type {op!r} has no formula here")


def _read_bytes(node: onnx.NodeProto, name: str, ctx: _Ctx) -> float:
    """Bytes a node reads of input ``name``: all of it, except the table of a gather, of which
    it reads about as many elements as it writes (an embedding lookup reads rows, not the
    whole table)."""
    full = ctx.nbytes(name)
    if node.op_type in ("Gather", "GatherElements", "GatherND") and node.input[0] == name:
        t = ctx.types[name]
        touched = math.ceil(ctx.numel(node.output[0]) * _BITS.get(t[0], 0) / 8)
        return float(min(full, touched))
    return float(full)


# --- counting ---------------------------------------------------------------------------------


def _fix_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> None:
    known = {i.name: i for i in model.graph.input}
    for name, dims in shapes.items():
        if name not in known:
            raise ValueError(f"no graph input named {name!r}")
        tt = known[name].type.tensor_type
        tt.shape.Clear()
        for d in dims:
            tt.shape.dim.add().dim_value = int(d)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large initializers keep their name, type and dims but not their data:
    counting needs shapes only, and shape inference serializes the model each time."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    # Below IR 4, shape inference ignores initializers that are not also graph inputs, which
    # is how onnxruntime saves optimized IR-3 models.
    m.ir_version = max(m.ir_version, 4)
    for t in m.graph.initializer:
        if math.prod(t.dims) > _FOLD_LIMIT or t.data_location == onnx.TensorProto.EXTERNAL:
            light = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
            t.CopyFrom(light)
    return m


def _twin_nodes(node: onnx.NodeProto, fresh: Callable[[], str]) -> list[onnx.NodeProto] | None:
    """Standard ops giving a contrib node's main outputs their shapes, or None."""
    op, ins, outs = node.op_type, list(node.input), list(node.output)
    attrs = [a for a in node.attribute if not a.name.startswith("activation")]

    def make(op_type: str, inputs: Sequence[str], output: str, **kw: Any) -> onnx.NodeProto:
        n = helper.make_node(op_type, list(inputs), [output], **kw)
        if op_type == node.op_type.removeprefix("Fused"):
            n.attribute.extend(attrs)
        return n

    if op == "FusedConv":
        return [make("Conv", ins[:3], outs[0])]
    if op == "FusedGemm":
        return [make("Gemm", ins[:3], outs[0])]
    if op == "FusedMatMul" and not any(
        a.i for a in node.attribute if a.name in ("transA", "transB", "transBatchA", "transBatchB")
    ):
        return [helper.make_node("MatMul", ins[:2], outs[:1])]
    if op in ("Gelu", "FastGelu", "QuickGelu", "SimplifiedLayerNormalization",
              "LayerNormalization", "QLinearSigmoid", "QLinearLeakyRelu"):  # fmt: skip
        return [helper.make_node("Identity", ins[:1], outs[:1])]
    if op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"):
        return [
            helper.make_node("Identity", ins[:1], [o])
            for i, o in enumerate(outs)
            if o and i in (0, 3)  # output and input+skip(+bias); mean and inv_std are [..., 1]
        ]
    if op in ("BiasGelu", "BiasAdd"):
        mid = fresh()
        nodes = [helper.make_node("Add", ins[:2], [mid if op == "BiasAdd" else outs[0]])]
        if op == "BiasAdd":
            nodes.append(helper.make_node("Add", [mid, ins[2]], outs[:1]))
        return nodes
    if op in ("QLinearAdd", "QLinearMul"):
        return [helper.make_node("Add", [ins[0], ins[3]], outs[:1])]
    if op == "QLinearGlobalAveragePool" and not any(
        a.name == "channels_last" and a.i for a in node.attribute
    ):
        return [helper.make_node("GlobalAveragePool", ins[:1], outs[:1])]
    return None


def _standard_twin(m: onnx.ModelProto) -> onnx.ModelProto:
    if not any(n.domain == _DOMAIN_MS for n in m.graph.node):
        return m
    twin = onnx.ModelProto()
    twin.CopyFrom(m)
    counter = iter(range(1 << 62))

    def fresh() -> str:
        return f"__lepton_twin_{next(counter)}"

    nodes: list[onnx.NodeProto] = []
    for n in twin.graph.node:
        repl = _twin_nodes(n, fresh) if n.domain == _DOMAIN_MS else None
        nodes.extend(repl if repl is not None else [n])
    del twin.graph.node[:]
    twin.graph.node.extend(nodes)
    return twin


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # noqa: BLE001 - a model we cannot infer is still partly countable
        log.warning("shape inference failed (%s); counting with the shapes the model states", e)
        return model


def _foldable(node: onnx.NodeProto, const: set[str], ctx: _Ctx) -> bool:
    """Whether a runtime computes ``node`` once at load (all inputs constant, or the shape of a
    tensor whose shape is static)."""
    if node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC:
        return False
    if node.op_type in _NO_FOLD or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
        return False
    inputs = [i for i in node.input if i]
    if node.op_type == "Constant":
        return True
    if node.op_type in ("Shape", "Size"):
        return bool(inputs) and (inputs[0] in const or ctx.has_shape(inputs[0]))
    return bool(inputs) and all(i in const for i in inputs)


def _eval_node(
    node: onnx.NodeProto, values: Mapping[str, np.ndarray], opsets: Sequence[Any], ctx: _Ctx
) -> list[np.ndarray] | None:
    if node.op_type in ("Shape", "Size"):
        shp = ctx.shape(node.input[0]) if ctx.has_shape(node.input[0]) else None
        if shp is None:
            shp = values[node.input[0]].shape
        if node.op_type == "Size":
            return [np.array(math.prod(shp), dtype=np.int64)]
        a = _attrs(node)
        return [np.array(shp[a.get("start", 0) : a.get("end", len(shp))], dtype=np.int64)]
    from onnx.reference import ReferenceEvaluator

    ins = [i for i in node.input if i]
    g = helper.make_graph(
        [node],
        "fold",
        [helper.make_tensor_value_info(i, 0, None) for i in ins],
        [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o],
    )
    m = helper.make_model(g, opset_imports=list(opsets), ir_version=8)
    try:
        return list(ReferenceEvaluator(m).run(None, {i: values[i] for i in ins}))
    except Exception as e:  # noqa: BLE001 - the reference runtime lacks some ops
        log.debug("could not evaluate %s %r: %s", node.op_type, node.name, e)
        return None


def _too_big(node: onnx.NodeProto, values: Mapping[str, np.ndarray], ctx: _Ctx) -> bool:
    # Weights built at load (ConstantOfShape in the onnx wheel's light models) are not shape
    # arithmetic: do not materialize them.
    for o in node.output:
        if o and ctx.has_shape(o) and ctx.numel(o) > _FOLD_LIMIT:
            return True
    if node.op_type in ("ConstantOfShape", "Expand", "Tile", "Range"):
        shape_in = node.input[0] if node.op_type == "ConstantOfShape" else _inp(node, 1)
        v = values.get(shape_in)
        if node.op_type == "Range" or v is None:
            return not all(ctx.has_shape(o) for o in node.output if o)
        n = math.prod(int(x) for x in np.ravel(v)) if node.op_type != "Tile" else None
        if n is None:
            base = values.get(node.input[0])
            n = (base.size if base is not None else _FOLD_LIMIT + 1) * int(np.prod(v))
        return n > _FOLD_LIMIT
    return False


def _propagate_constants(m: onnx.ModelProto, max_rounds: int = 4) -> onnx.ModelProto:
    """Shape arithmetic that ``data_prop`` gives up on (Shape -> Gather -> Concat -> Reshape in
    many exporters): evaluate the small constant subgraphs with onnx's reference runtime, infer
    again with their values as initializers, and keep the shapes found. Counts are taken on
    the original graph; only its value_info grows."""
    for _ in range(max_rounds):
        ctx = _Ctx(m.graph)
        values: dict[str, np.ndarray] = {}
        for t in m.graph.initializer:
            if math.prod(t.dims) <= _FOLD_LIMIT:
                try:
                    values[t.name] = numpy_helper.to_array(t)
                except Exception:  # noqa: BLE001 - data stripped or external: not shape arithmetic
                    pass
        const = {t.name for t in m.graph.initializer}
        folded: dict[str, np.ndarray] = {}
        for node in m.graph.node:
            if not _foldable(node, const, ctx):
                continue
            const.update(o for o in node.output if o)
            ins = [i for i in node.input if i]
            if node.op_type not in ("Shape", "Size") and not all(i in values for i in ins):
                continue
            if node.op_type in ("Shape", "Size") and not (
                ctx.has_shape(ins[0]) or ins[0] in values
            ):
                continue
            if _too_big(node, values, ctx):
                continue
            outs = _eval_node(node, values, m.opset_import, ctx)
            if outs is None:
                continue
            for o, v in zip([o for o in node.output if o], outs, strict=False):
                v = np.asarray(v)
                if v.size <= _FOLD_LIMIT and v.dtype != object:
                    values[o] = folded[o] = v
        if not folded:
            break
        fm = onnx.ModelProto()
        fm.CopyFrom(m)
        keep = [n for n in fm.graph.node if not any(o in folded for o in n.output)]
        del fm.graph.node[:]
        fm.graph.node.extend(keep)
        fm.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in folded.items())
        fm = _infer(fm)
        fctx = _Ctx(fm.graph)
        gained = 0
        for name, (dt, shp) in fctx.types.items():
            if shp is not None and not ctx.has_shape(name):
                m.graph.value_info.append(helper.make_tensor_value_info(name, dt, list(shp)))
                gained += 1
        if not gained:
            break
    return m


def count(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> GraphCost:
    """FLOPs, integer ops and bytes moved by one run of ``model``; ``model`` is not modified.

    ``input_shapes`` fixes graph input shapes first (needed when the model's are symbolic).
    Shapes are inferred with ``onnx.shape_inference.infer_shapes(..., data_prop=True)`` after
    inlining model-local functions, on a copy in which common onnxruntime contrib ops
    (FusedConv, FusedGemm, Gelu, SkipLayerNormalization, QLinearAdd, ...) stand as standard
    ops with the same output shapes; small constant subgraphs (shape arithmetic) that
    ``data_prop`` cannot follow are evaluated with onnx's reference runtime. Nodes whose
    shapes stay unknown are listed in ``GraphCost.unknown``.
    """
    m = _skeleton(model)
    if input_shapes:
        _fix_input_shapes(m, input_shapes)
    for o in m.graph.output:
        # A declared output shape with symbolic (or invalid -1) dims would stop inference from
        # writing the static one it finds.
        tt = o.type.tensor_type
        if any(not d.HasField("dim_value") or d.dim_value < 0 for d in tt.shape.dim):
            tt.ClearField("shape")
    if m.functions:
        try:
            from onnx import inliner

            m = inliner.inline_local_functions(m)
        except Exception as e:  # noqa: BLE001
            log.warning("could not inline local functions (%s); their calls count as unknown", e)
    # Shapes come from a twin in which onnxruntime's contrib ops (which onnx cannot infer)
    # stand as standard ops with the same output shapes; the counting walks the real graph.
    twin = _infer(_standard_twin(m))
    ctx = _Ctx(twin.graph)
    needed = {i for n in twin.graph.node for i in n.input if i}
    needed |= {o.name for o in twin.graph.output}
    if any(not ctx.has_shape(o) for n in twin.graph.node for o in n.output if o in needed):
        twin = _propagate_constants(twin)
        ctx = _Ctx(twin.graph)
    g = m.graph
    consumed = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    cost = GraphCost()

    initializers = {t.name for t in g.initializer}
    const: set[str] = set(initializers)
    weight_reads: dict[str, float] = {}  # constant -> most bytes any one node reads of it
    for node in g.node:
        inputs = [i for i in node.input if i]
        op_key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if _foldable(node, const, ctx):
            const.update(o for o in node.output if o)
            cost.folded[op_key] = cost.folded.get(op_key, 0) + 1
            continue

        cost.nodes += 1
        oc = cost.by_op.setdefault(op_key, OpCost())
        oc.count += 1
        try:
            reads = {t: _read_bytes(node, t, ctx) for t in inputs}
        except _Unknown:
            reads = {}
        for t in inputs:
            if t in const:
                r = reads.get(t)
                if r is None:
                    try:
                        r = ctx.nbytes(t)
                    except _Unknown as e:
                        cost.unknown.append(UnknownNode(t, "<weight>", str(e)))
                        continue
                weight_reads[t] = max(weight_reads.get(t, 0.0), r)
        try:
            f, mf, macs, iops, imacs = _node_cost(node, ctx)
            # An output nobody reads (Dropout's mask, MaxPool's indices) counts when its shape
            # is known; when it is not, the runtime likely never materializes it.
            outs = [o for o in node.output if o and (o in consumed or ctx.has_shape(o))]
            if len(reads) != len(inputs):
                reads = {t: _read_bytes(node, t, ctx) for t in inputs}  # raises the reason
            nbytes = sum(reads.values()) + sum(ctx.nbytes(o) for o in outs)
        except _Unknown as e:
            cost.unknown.append(UnknownNode(node.name, op_key, str(e)))
            oc.unknown += 1
            continue
        except (ValueError, IndexError, KeyError, ZeroDivisionError, TypeError) as e:
            cost.unknown.append(UnknownNode(node.name, op_key, f"malformed node: {e}"))
            oc.unknown += 1
            continue
        cost.flops += f
        cost.matmul_flops += mf
        cost.macs += macs
        cost.int_ops += iops
        cost.int_macs += imacs
        cost.bytes_unfused += nbytes
        oc.flops += f
        oc.macs += macs
        oc.int_ops += iops
        oc.bytes += nbytes

    def _sum_bytes(names: Sequence[str], what: str) -> float:
        total = 0.0
        for n in names:
            try:
                total += ctx.nbytes(n)
            except _Unknown as e:
                cost.unknown.append(UnknownNode(n, what, str(e)))
        return total

    cost.weight_bytes = float(sum(weight_reads.values()))
    cost.input_bytes = _sum_bytes(
        [i.name for i in g.input if i.name not in initializers], "<graph input>"
    )
    cost.output_bytes = _sum_bytes([o.name for o in g.output], "<graph output>")
    cost.bytes_fused = cost.weight_bytes + cost.input_bytes + cost.output_bytes
    if cost.unknown:
        log.info("%d node(s) not counted: %s", len(cost.unknown), cost.unknown[:5])
    return cost


# --- spec-sheet peaks -------------------------------------------------------------------------

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8",
    "e4m3": "fp8",
}


def _norm_precision(p: str) -> str:
    p = p.strip().lower()
    return _ALIASES.get(p, p)


@dataclass(frozen=True)
class Peak:
    """Spec-sheet peaks of one device. ``flops`` per second by precision: dense (no 2:4
    sparsity) tensor-core figures on GPUs, except fp32 which is the non-tensor (vector) rate.
    ``bandwidth`` in bytes/s, ``tdp_w`` the board or package power rating."""

    name: str
    kind: str  # "gpu" | "cpu"
    flops: Mapping[str, float]
    bandwidth: float
    tdp_w: float
    source: str
    notes: str = ""

    def flops_for(self, precision: str) -> float | None:
        return self.flops.get(_norm_precision(precision))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "flops_per_s": dict(self.flops),
            "bandwidth_bytes_per_s": self.bandwidth,
            "tdp_w": self.tdp_w,
            "source": self.source,
            "notes": self.notes,
        }


_TERA = 1e12


def _gpu(
    name: str,
    fp32: float,
    tf32: float,
    fp16: float,
    int8: float,
    fp8: float | None,
    gbs: float,
    tdp: float,
    source: str,
) -> Peak:
    """Figures in TFLOP/s (dense) and GB/s, as the datasheets print them."""
    flops = {"fp32": fp32 * _TERA, "tf32": tf32 * _TERA, "fp16": fp16 * _TERA, "bf16": fp16 * _TERA}
    flops["int8"] = int8 * _TERA
    if fp8 is not None:
        flops["fp8"] = fp8 * _TERA
    return Peak(name, "gpu", flops, gbs * 1e9, tdp, source, "dense figures (half the 2:4 sparse)")


_NV = "NVIDIA {} datasheet"

PEAKS: dict[str, Peak] = {
    "h100-sxm": _gpu("NVIDIA H100 SXM5 80GB", 67, 495, 989, 1979, 1979, 3350, 700,
                     _NV.format("H100 Tensor Core GPU")),
    "h100-pcie": _gpu("NVIDIA H100 PCIe 80GB", 51, 378, 756, 1513, 1513, 2000, 350,
                      _NV.format("H100 Tensor Core GPU")),
    "h200-sxm": _gpu("NVIDIA H200 SXM 141GB", 67, 495, 989, 1979, 1979, 4800, 700,
                     _NV.format("H200 Tensor Core GPU")),
    "a100-sxm4-80gb": _gpu("NVIDIA A100 SXM4 80GB", 19.5, 156, 312, 624, None, 2039, 400,
                           _NV.format("A100 Tensor Core GPU")),
    "a100-sxm4-40gb": _gpu("NVIDIA A100 SXM4 40GB", 19.5, 156, 312, 624, None, 1555, 400,
                           _NV.format("A100 Tensor Core GPU")),
    "a100-pcie-80gb": _gpu("NVIDIA A100 PCIe 80GB", 19.5, 156, 312, 624, None, 1935, 300,
                           _NV.format("A100 Tensor Core GPU")),
    "a100-pcie-40gb": _gpu("NVIDIA A100 PCIe 40GB", 19.5, 156, 312, 624, None, 1555, 250,
                           _NV.format("A100 Tensor Core GPU")),
    "l4": _gpu("NVIDIA L4", 30.3, 60, 121, 242, 242, 300, 72, _NV.format("L4 Tensor Core GPU")),
}  # fmt: skip


def cpu_peak(
    name: str,
    cores: int,
    ghz: float,
    bandwidth_gbs: float,
    tdp_w: float,
    *,
    flops_per_cycle: float = 32.0,
    int8_per_cycle: float | None = None,
    source: str = "user-supplied",
) -> Peak:
    """A CPU's fp32 peak from cores x GHz x FLOPs/cycle/core.

    ``flops_per_cycle``: 32 for two 256-bit FMA pipes (AVX2; also Zen 4's AVX-512, which runs
    on 256-bit datapaths), 64 for two 512-bit FMA pipes (AVX-512 Xeons). Use the all-core
    clock the vector units sustain; base clock is the safe spec-sheet choice. ``int8_per_cycle``
    (VNNI / AMX) adds an int8 figure where the caller knows it.
    """
    if cores < 1 or ghz <= 0 or bandwidth_gbs <= 0 or tdp_w <= 0 or flops_per_cycle <= 0:
        raise ValueError("cores, ghz, bandwidth_gbs, tdp_w and flops_per_cycle must be > 0")
    flops = {"fp32": cores * ghz * 1e9 * flops_per_cycle}
    if int8_per_cycle:
        flops["int8"] = cores * ghz * 1e9 * int8_per_cycle
    notes = f"{cores} cores x {ghz} GHz x {flops_per_cycle:g} FLOP/cycle"
    return Peak(name, "cpu", flops, bandwidth_gbs * 1e9, tdp_w, source, notes)


# Per socket, fp32 only, at base clock. Bandwidth: channels x MT/s x 8 bytes.
CPU_PEAKS: dict[str, Peak] = {
    "EPYC 9554": cpu_peak("AMD EPYC 9554", 64, 3.1, 460.8, 360,
                          source="AMD EPYC 9554 product page (12 x DDR5-4800), Zen 4 FMA"),
    "EPYC 7763": cpu_peak("AMD EPYC 7763", 64, 2.45, 204.8, 280,
                          source="AMD EPYC 7763 product page (8 x DDR4-3200), Zen 3 FMA"),
    "Platinum 8480": cpu_peak("Intel Xeon Platinum 8480+", 56, 2.0, 307.2, 350,
                              flops_per_cycle=64.0,
                              source="Intel ark 8480+ (8 x DDR5-4800), 2 AVX-512 FMA; no AMX"),
}  # fmt: skip


def _match_gpu(name: str) -> tuple[str | None, str]:
    n = name.lower()
    if "nvl" in n:
        return None, f"GPU {name!r}: NVL boards are not in the table"
    # Word boundaries keep the GH200 superchip (other memory, other power) out.
    if re.search(r"\bh200\b", n):
        return "h200-sxm", ""
    if re.search(r"\bh100\b", n):
        if "pcie" in n:
            return "h100-pcie", ""
        if "hbm3" in n or "sxm" in n:
            return "h100-sxm", ""
        return None, f"GPU {name!r}: cannot tell H100 SXM from PCIe by its name"
    if re.search(r"\ba100\b", n):
        form = "sxm4" if "sxm" in n else "pcie" if "pcie" in n else None
        mem = "80gb" if "80gb" in n else "40gb" if "40gb" in n else None
        if form and mem:
            return f"a100-{form}-{mem}", ""
        return None, f"GPU {name!r}: cannot tell the A100 form factor and memory by its name"
    if re.search(r"\bl4\b", n):
        return "l4", ""
    return None, f"GPU {name!r} is not in the spec-sheet table"


def _uses_gpu(rec: Mapping[str, Any]) -> bool:
    providers = rec.get("providers")
    if providers is None:
        return True
    return any(("CUDA" in p or "Tensorrt" in p or "TensorRT" in p) for p in providers)


def lookup_peak(
    device_record: Mapping[str, Any], precision: str, *, target: str = "auto"
) -> tuple[Peak | None, str]:
    """(peak, "") for the device a figure ran on, or (None, why not).

    ``target``: "gpu", "cpu", or "auto" (the first GPU when the record has one and its
    ``providers`` are unknown or include CUDA/TensorRT; else the CPU). CPU entries are per
    socket; the record's ``sockets`` multiplies them.
    """
    prec = _norm_precision(precision)
    if prec not in PRECISIONS:
        return None, f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})"
    gpus = device_record.get("gpus") or []
    if target not in ("auto", "gpu", "cpu"):
        raise ValueError(f"target must be auto, gpu or cpu, not {target!r}")
    if target == "gpu" or (target == "auto" and gpus and _uses_gpu(device_record)):
        if not gpus:
            return None, "the device record lists no GPU"
        gname = str(gpus[0].get("name") or "")
        key, why = _match_gpu(gname)
        if key is None:
            return None, why
        peak = PEAKS[key]
    else:
        cpu = device_record.get("cpu") or {}
        model = str(cpu.get("model") or "unknown")
        found = [
            p
            for k, p in CPU_PEAKS.items()
            if re.search(r"(?<![\w-])" + re.escape(k) + r"\+?(?!\w)", model, re.IGNORECASE)
        ]
        if not found:
            return None, (
                f"CPU {model!r} is not in the table (a model string without its SKU gives no "
                "core count, clock or memory channels): build one with cpu_peak()"
            )
        peak = found[0]
        sockets = int(cpu.get("sockets") or 1)
        if sockets > 1:
            peak = Peak(
                f"{sockets} x {peak.name}",
                "cpu",
                {k: v * sockets for k, v in peak.flops.items()},
                peak.bandwidth * sockets,
                peak.tdp_w * sockets,
                peak.source,
                f"{peak.notes}; x{sockets} sockets",
            )
    if peak.flops_for(prec) is None:
        return None, f"{peak.name}: no spec-sheet {prec} figure"
    return peak, ""


def peak_for(
    device_record: Mapping[str, Any], precision: str, *, target: str = "auto"
) -> Peak | None:
    """The spec-sheet peak for a device record (``bench.device.device_record()``), or None
    when the device or the precision is not in the table (the reason is logged; use
    ``lookup_peak`` to get it)."""
    peak, why = lookup_peak(device_record, precision, target=target)
    if peak is None:
        log.info("no roofline reference: %s", why)
    return peak


# --- reference energy -------------------------------------------------------------------------


def reference_energy(cost: GraphCost, peak: Peak, precision: str) -> dict[str, Any]:
    """``P_TDP x max(compute time, bytes / bandwidth)`` for both bytes estimates.

    Compute time = matmul-class FLOPs / peak at ``precision`` + other FLOPs / the fp32 (vector)
    peak + int ops / the int8 peak (the ``precision`` peak where no int8 figure exists). With
    only matmul-class work this is the textbook ``FLOPs / peak``. A reference, not a bound:
    see the module docstring.
    """
    prec = _norm_precision(precision)
    pf = peak.flops_for(prec)
    if pf is None:
        raise ValueError(f"{peak.name} has no {prec} figure")
    vector = peak.flops.get("fp32", pf)
    int_peak = peak.flops.get("int8", pf)
    compute_s = cost.matmul_flops / pf + cost.vector_flops / vector + cost.int_ops / int_peak
    ai = cost.arithmetic_intensity()
    out: dict[str, Any] = {
        "label": REFERENCE_LABEL,
        "precision": prec,
        "peak": peak.to_dict(),
        "compute_time_s": compute_s,
        "arithmetic_intensity": _nan_to_none(ai),
        "ridge_point": pf / peak.bandwidth,
        "complete": cost.complete,
        "unknown_nodes": len(cost.unknown),
    }
    for est, nbytes in (("unfused", cost.bytes_unfused), ("fused", cost.bytes_fused)):
        mem_s = nbytes / peak.bandwidth
        t = max(compute_s, mem_s)
        out[est] = {
            "joules": peak.tdp_w * t,
            "time_s": t,
            "bound": "compute" if compute_s >= mem_s else "memory",
            "memory_time_s": mem_s,
            "bytes": nbytes,
        }
    return out


def beside_measured(measured_j: float | None, reference: Mapping[str, Any]) -> dict[str, Any]:
    """A measured J/inference next to the reference, with measured / reference ratios."""

    def ratio(est: str) -> float | None:
        ref = reference[est]["joules"]
        return measured_j / ref if measured_j is not None and ref > 0 else None

    return {
        "measured_j": measured_j,
        "reference_j": {
            "fused": reference["fused"]["joules"],
            "unfused": reference["unfused"]["joules"],
        },
        "ratio_to_reference": {"fused": ratio("fused"), "unfused": ratio("unfused")},
        "label": REFERENCE_LABEL,
    }


# --- command line -----------------------------------------------------------------------------


def _human(x: float, unit: str) -> str:
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= p:
            return f"{x / p:.3g} {s}{unit}"
    return f"{x:.3g} {unit}"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lepton_compile.bench.roofline MODEL [--shape NAME=1,3,224,224] [--peak KEY]``"""
    ap = argparse.ArgumentParser(prog="python -m lepton_compile.bench.roofline")
    ap.add_argument("model")
    ap.add_argument("--shape", action="append", default=[], help="NAME=d0,d1,...")
    ap.add_argument("--peak", choices=sorted(PEAKS), help="spec-sheet device for a reference")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS)
    args = ap.parse_args(argv)
    shapes = {}
    for s in args.shape:
        name, _, dims = s.rpartition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            print(f"error: bad --shape {s!r}", file=sys.stderr)
            return 2
    try:
        model = onnx.load(args.model)
        cost = count(model, shapes or None)
    except Exception as e:  # noqa: BLE001 - one line for any unreadable model
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return 2
    print(f"{'op':28} {'n':>5} {'FLOPs':>12} {'MACs':>12} {'int ops':>10} {'bytes':>12}")
    for op, c in sorted(cost.by_op.items(), key=lambda kv: -kv[1].flops):
        print(
            f"{op:28} {c.count:5d} {_human(c.flops, ''):>12} {_human(c.macs, ''):>12} "
            f"{_human(c.int_ops, ''):>10} {_human(c.bytes, 'B'):>12}"
        )
    print(
        f"total FLOPs {_human(cost.flops, 'FLOP')}, MACs {_human(cost.macs, 'MAC')}, "
        f"int ops {_human(cost.int_ops, 'op')}"
    )
    print(
        f"bytes: unfused {_human(cost.bytes_unfused, 'B')} (upper), "
        f"fused {_human(cost.bytes_fused, 'B')} (lower)"
    )
    for u in cost.unknown:
        print(f"not counted: {u.op_type} {u.name!r}: {u.reason}")
    if args.peak:
        ref = reference_energy(cost, PEAKS[args.peak], args.precision)
        for est in ("fused", "unfused"):
            r = ref[est]
            print(
                f"{est}: {r['joules']:.4g} J, {r['time_s'] * 1e3:.4g} ms, {r['bound']}-bound "
                f"-- {REFERENCE_LABEL}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
