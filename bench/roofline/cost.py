"""FLOPs, integer ops and bytes moved by one run of an ONNX graph, op by op.

    cost = count(onnx.load("model.onnx"), {"images": [1, 3, 640, 640]})
    cost.flops, cost.bytes_fused, cost.by_op["Conv"].macs, cost.unknown

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

import logging
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from onnx import helper

from lepton_compile.bench.roofline.shapes import (
    BITS,
    DOMAIN_MS,
    TensorTypes,
    Unknown,
    infer_types,
    prepare,
)
from lepton_compile.contract import ACTIVATIONS as LEPTON_ACTIVATIONS
from lepton_compile.contract import DOMAIN as LEPTON_DOMAIN
from lepton_compile.contract import SCHEMAS as LEPTON_SCHEMAS

__all__ = [
    "BATCHNORM_FLOPS",
    "DATA_MOVEMENT",
    "DEQUANTIZE_FLOPS",
    "LAYERNORM_FLOPS",
    "QUANTIZE_FLOPS",
    "RMSNORM_FLOPS",
    "SOFTMAX_FLOPS",
    "TRANSCENDENTAL_FLOPS",
    "GraphCost",
    "OpCost",
    "UnknownNode",
    "count",
    "nan_to_none",
]

log = logging.getLogger(__name__)

# Per-element costs of the non-MAC ops (FLOPs). Stated constants, not measurements: a libm exp
# or erf is a polynomial of roughly this many multiply-adds.
TRANSCENDENTAL_FLOPS = 8
SOFTMAX_FLOPS = 5  # max, subtract, exp (counted as 1 here: vectorized), sum, divide
LAYERNORM_FLOPS = 8  # mean, subtract, square, mean, rsqrt, multiply, scale, shift
RMSNORM_FLOPS = 5
BATCHNORM_FLOPS = 2  # x * scale' + shift' once the per-channel constants are folded
QUANTIZE_FLOPS = 4  # divide by scale, round, add zero point, saturate
DEQUANTIZE_FLOPS = 2  # subtract zero point, multiply by scale


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
            "arithmetic_intensity": nan_to_none(self.arithmetic_intensity()),
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


def nan_to_none(d: dict[str, float]) -> dict[str, float | None]:
    """JSON-ready: a ratio with a zero denominator (nan) becomes None."""
    return {k: (v if math.isfinite(v) else None) for k, v in d.items()}


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _inp(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


# --- per-op formulas: return (flops, matmul_flops, macs, int_ops, int_macs) ----------------------

_Cost = tuple[float, float, float, float, float]


def _conv(node: onnx.NodeProto, ctx: TensorTypes, x: str, w: str, b: str, integer: bool) -> _Cost:
    xs, ws, ys = ctx.shape(x), ctx.shape(w), ctx.shape(node.output[0])
    if len(xs) < 3 or len(ws) != len(xs):
        raise Unknown(f"unexpected ranks x{list(xs)} w{list(ws)}")
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


def _activation_flops(node: onnx.NodeProto, ctx: TensorTypes) -> float:
    """Fused activation of a contrib FusedConv / FusedGemm (per output element)."""
    act = _attrs(node).get("activation", b"")
    act = act.decode() if isinstance(act, bytes) else str(act)
    if not act:
        return 0.0
    return _ELEMENTWISE.get(act, TRANSCENDENTAL_FLOPS) * ctx.numel(node.output[0])


def _gemm(node: onnx.NodeProto, ctx: TensorTypes, integer: bool = False) -> _Cost:
    a = _attrs(node)
    as_, bs = ctx.shape(node.input[0]), ctx.shape(node.input[1])
    if len(as_) != 2 or len(bs) != 2:
        raise Unknown(f"Gemm wants 2-D inputs, got {list(as_)} and {list(bs)}")
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


def _matmul(node: onnx.NodeProto, ctx: TensorTypes, a_name: str, integer: bool = False) -> _Cost:
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


def _einsum(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    eq = _attrs(node)["equation"]
    eq = (eq.decode() if isinstance(eq, bytes) else eq).replace(" ", "")
    lhs = eq.split("->")[0].split(",")
    if len(lhs) != len(node.input):
        raise Unknown(f"equation {eq!r} does not match {len(node.input)} inputs")
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
            raise Unknown(f"term {term!r} does not match shape {list(shp)}")
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


def _attention_onnx(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    a = _attrs(node)
    qs, ks, vs = ctx.shape(node.input[0]), ctx.shape(node.input[1]), ctx.shape(node.input[2])
    if len(qs) == 4:
        b, h, sq, dh = qs
        dqk = h * dh
    elif len(qs) == 3 and a.get("q_num_heads"):
        b, sq, dqk = qs
        h = int(a["q_num_heads"])
    else:
        raise Unknown(f"Attention Q shape {list(qs)} needs q_num_heads")
    skv = ks[2] if len(ks) == 4 else ks[1]
    if len(vs) == 4:
        dv = h * vs[3]  # each query head reads a (possibly shared) value head
    elif len(vs) == 3 and a.get("kv_num_heads"):
        dv = h * vs[2] // int(a["kv_num_heads"])
    else:
        raise Unknown(f"Attention V shape {list(vs)} needs kv_num_heads")
    past = _inp(node, 4)
    if past:
        skv += ctx.shape(past)[2]
    masked = bool(_inp(node, 3)) or bool(a.get("is_causal", 0))
    return _attention_core(b, h, sq, skv, dqk, dv, masked)


def _mha_contrib(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    h = int(_attrs(node).get("num_heads", 1))
    qs = ctx.shape(node.input[0])
    key, value = _inp(node, 1), _inp(node, 2)
    if len(qs) != 3 or not key or not value or len(ctx.shape(key)) != 3:
        raise Unknown("only the unpacked 3-D query/key/value layout is counted")
    b, sq, dqk = qs
    skv, dv = ctx.shape(key)[1], ctx.shape(value)[2]
    return _attention_core(b, h, sq, skv, dqk, dv, bool(_inp(node, 4)))


def _attention_contrib(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    a = _attrs(node)
    h = int(a.get("num_heads", 1))
    xs, ws = ctx.shape(node.input[0]), ctx.shape(node.input[1])
    if len(xs) != 3 or len(ws) != 2:
        raise Unknown(f"unexpected input {list(xs)} / weights {list(ws)}")
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


def _rnn(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    a = _attrs(node)
    xs, ws, rs = ctx.shape(node.input[0]), ctx.shape(node.input[1]), ctx.shape(node.input[2])
    seq, batch = (xs[1], xs[0]) if a.get("layout", 0) else (xs[0], xs[1])
    dirs, gh, inp = ws
    hidden = rs[2]
    macs = dirs * seq * batch * gh * (inp + hidden)
    # Gate activations and bias adds, then the cell/hidden state update (about 4 per unit).
    other = dirs * seq * batch * (gh * (TRANSCENDENTAL_FLOPS + 2) + hidden * 4)
    return 2.0 * macs + other, 2.0 * macs, float(macs), 0.0, 0.0


def _pool(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    k = math.prod(_attrs(node).get("kernel_shape", []) or [1])
    out = ctx.numel(node.output[0])
    f = out * k + (out if node.op_type in ("AveragePool", "QLinearAveragePool") else 0)
    if node.op_type == "LpPool":
        f = out * k * 2 + out * TRANSCENDENTAL_FLOPS
    if node.op_type.startswith("QLinear"):
        return 0.0, 0.0, 0.0, float(f), 0.0
    return float(f), 0.0, 0.0, 0.0, 0.0


def _resize(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    mode = _attrs(node).get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode == "nearest":
        return 0.0, 0.0, 0.0, 0.0, 0.0  # a gather: data movement
    xs, ys = ctx.shape(node.input[0]), ctx.shape(node.output[0])
    r = sum(1 for i, o in zip(xs, ys, strict=False) if i != o)
    taps = (2 if mode == "linear" else 4) ** r
    return 2.0 * taps * math.prod(ys), 0.0, 0.0, 0.0, 0.0


def _variadic(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    n = len([i for i in node.input if i])
    per = n if node.op_type == "Mean" else max(1, n - 1)
    return float(per * ctx.numel(node.output[0])), 0.0, 0.0, 0.0, 0.0


def _qlinear_elementwise(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    # QLinearAdd / QLinearMul: dequantize both, operate, requantize; ORT runs these in ints.
    return 0.0, 0.0, 0.0, float(4 * ctx.numel(node.output[0])), 0.0


def _lepton_activation_flops(node: onnx.NodeProto, prefix: str) -> float:
    """Per-element FLOPs of an ai.lepton epilogue activation, counted as its ONNX op."""
    name = _attrs(node).get(prefix, b"none")
    name = name.decode() if isinstance(name, bytes) else str(name)
    spec = LEPTON_ACTIVATIONS.get(name)
    if spec is None:
        raise Unknown(f"{prefix} {name!r} is not an ai.lepton activation")
    if spec.onnx_op is None:
        return 0.0
    return float(_ELEMENTWISE.get(spec.onnx_op, TRANSCENDENTAL_FLOPS))


def _lepton_cost(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    """An ai.lepton fused op (lepton_compile.contract): its base op plus the epilogue."""
    schema = LEPTON_SCHEMAS.get(node.op_type)
    if schema is None:
        raise Unknown(f"{LEPTON_DOMAIN}.{node.op_type} is not an op of the contract")
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


def _node_cost(node: onnx.NodeProto, ctx: TensorTypes) -> _Cost:
    op, dom = node.op_type, node.domain
    if op in _CONTROL_FLOW:
        raise Unknown("control flow: subgraph work is not counted")
    if dom == LEPTON_DOMAIN:
        return _lepton_cost(node, ctx)
    if dom not in ("", "ai.onnx", DOMAIN_MS):
        raise Unknown(f"custom domain {dom!r}: no formula")
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
        return _attention_contrib(node, ctx) if dom == DOMAIN_MS else _attention_onnx(node, ctx)
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
    raise Unknown(f"op type {op!r} has no formula here")


def _read_bytes(node: onnx.NodeProto, name: str, ctx: TensorTypes) -> float:
    """Bytes a node reads of input ``name``: all of it, except the table of a gather, of which
    it reads about as many elements as it writes (an embedding lookup reads rows, not the
    whole table)."""
    full = ctx.nbytes(name)
    if node.op_type in ("Gather", "GatherElements", "GatherND") and node.input[0] == name:
        t = ctx.types[name]
        touched = math.ceil(ctx.numel(node.output[0]) * BITS.get(t[0], 0) / 8)
        return float(min(full, touched))
    return float(full)


# --- counting ---------------------------------------------------------------------------------


def _foldable(node: onnx.NodeProto, const: set[str], ctx: TensorTypes) -> bool:
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


def count(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> GraphCost:
    """FLOPs, integer ops and bytes moved by one run of ``model``; ``model`` is not modified.

    ``input_shapes`` fixes graph input shapes first (needed when the model's are symbolic).
    Shapes are inferred with ``onnx.shape_inference.infer_shapes(..., data_prop=True)`` after
    inlining model-local functions, on a copy in which common onnxruntime contrib ops
    (FusedConv, FusedGemm, Gelu, SkipLayerNormalization, QLinearAdd, ...) stand as standard
    ops with the same output shapes; shape arithmetic that ``data_prop`` cannot follow is
    evaluated by onnxscript's constant folder (see ``shapes``). Nodes whose shapes stay
    unknown are listed in ``GraphCost.unknown``.
    """
    m = prepare(model, input_shapes)
    ctx = infer_types(m)
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
        except Unknown:
            reads = {}
        for t in inputs:
            if t in const:
                r = reads.get(t)
                if r is None:
                    try:
                        r = ctx.nbytes(t)
                    except Unknown as e:
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
        except Unknown as e:
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
            except Unknown as e:
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
