"""Standard-op fusions: Conv/Gemm(BatchNorm) and per-channel affine -> Conv, MatMul+Add -> Gemm."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import rewriter
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules.common import (
    _fuse_batchnorm,
    _fuse_hardswish,
    _matmul_add_to_gemm,
)

from lepton_compile.passes._utils import (
    const_array,
    fresh_name,
    onnx_opset,
    per_channel,
    private_initializer,
)

logger = logging.getLogger(__name__)

_FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
)


def _batchnorm_is_inference(bn: ir.Node, opset: int | None) -> str | None:
    """None if `bn` is a plain inference BatchNormalization, else why it is not."""
    if opset is None or opset < 7:
        # BatchNormalization-1/6 default to training (is_test=0).
        return f"BatchNormalization at opset {opset} may run in training mode"
    if len(bn.outputs) != 1:
        # Before opset 14 the extra outputs *are* the training-mode switch.
        return "BatchNormalization has training outputs (running mean/var)"
    if bn.attributes.get_int("training_mode", 0) != 0:
        return "BatchNormalization has training_mode=1"
    if bn.attributes.get_int("spatial", 1) != 1:
        # spatial=0 (opset < 9) normalises per element, not per channel.
        return "BatchNormalization has spatial=0"
    return None


def _batchnorm_params_ok(bn: ir.Node, channels: int, dtype: ir.DataType | None) -> str | None:
    """None if scale/bias/mean/var are constant (channels,) tensors of `dtype`."""
    for value in bn.inputs[1:5]:
        array = const_array(value)
        if value is None or array is None:
            return "BatchNormalization parameters are not all constant"
        if value.is_graph_input():
            return f"{value.name} is a graph input"
        if array.shape != (channels,):
            return f"{value.name} has shape {array.shape}, expected ({channels},)"
        if value.dtype != dtype:
            return f"{value.name} is {value.dtype}, weights are {dtype}"
    return None


class _SafeFuseBatchNorm:
    """Extra checks on top of onnxscript's BatchNorm fusions.

    onnxscript's rules check that the weights are private constant initializers, but not
    that the BatchNormalization is in inference mode, that its parameters are
    (channels,) vectors (numpy would silently broadcast anything else), that all dtypes
    agree (numpy would promote fp16 weights to fp32), or that the bias name they invent
    for a bias-less Conv is free (the rewriter overwrites an initializer of that name).
    """

    def check(self, context, x, inbound_out: ir.Value, batchnorm_out: ir.Value) -> MatchResult:
        result = super().check(context, x, inbound_out, batchnorm_out)  # type: ignore[misc]
        if not result:
            return result
        bn = batchnorm_out.producer()
        inbound = inbound_out.producer()
        assert bn is not None and inbound is not None
        if (reason := _batchnorm_is_inference(bn, onnx_opset(context.model))) is not None:
            return result.fail(reason)
        weight = inbound.inputs[1]
        w = const_array(weight)
        assert weight is not None and w is not None  # checked by the base rule
        if weight.dtype not in _FLOAT_TYPES:
            return result.fail(f"weights are {weight.dtype}")
        channels = self._channels(inbound, w)
        if channels is None:
            return result.fail("cannot tell the number of output channels")
        if (reason := _batchnorm_params_ok(bn, channels, weight.dtype)) is not None:
            return result.fail(reason)
        if len(inbound.inputs) > 2 and inbound.inputs[2] is not None:
            bias = const_array(inbound.inputs[2])
            if bias is None or inbound.inputs[2].dtype != weight.dtype:
                return result.fail("bias is not a constant of the weights' dtype")
            if bias.size not in (1, channels) or bias.ndim > 1:
                return result.fail(f"bias has shape {bias.shape}")
        elif len(inbound.inputs) == 2:
            graph = inbound.graph
            if graph is not None and f"{weight.name}_bias" in graph.initializers:
                return result.fail(f"initializer {weight.name}_bias already exists")
        return result

    def _channels(self, inbound: ir.Node, w: np.ndarray) -> int | None:
        raise NotImplementedError


class _FuseBatchNormIntoConv(_SafeFuseBatchNorm, _fuse_batchnorm.FuseBatchNormIntoConv):
    def _channels(self, inbound: ir.Node, w: np.ndarray) -> int | None:
        return int(w.shape[0]) if w.ndim >= 3 else None


class _FuseBatchNormIntoConvTranspose(
    _SafeFuseBatchNorm, _fuse_batchnorm.FuseBatchNormIntoConvTranspose
):
    def _channels(self, inbound: ir.Node, w: np.ndarray) -> int | None:
        group = inbound.attributes.get_int("group", 1)
        return int(w.shape[1]) * group if w.ndim >= 3 else None


class _FuseBatchNormIntoGemm(_SafeFuseBatchNorm, _fuse_batchnorm.FuseBatchNormIntoGemm):
    def _channels(self, inbound: ir.Node, w: np.ndarray) -> int | None:
        if w.ndim != 2:
            return None
        return int(w.shape[0] if inbound.attributes.get_int("transB", 0) else w.shape[1])


def _apply_rules(model: ir.Model, rules: list[RewriteRule]) -> bool:
    modified = rewriter.RewritePass(rules)(model).modified
    if modified:
        # Replaced weights and BatchNorm statistics are left behind as unused initializers.
        common_passes.RemoveUnusedNodesPass()(model)
    return modified


class FuseBatchNormPass(ir.passes.InPlacePass):
    """BatchNormalization(Conv|ConvTranspose|Gemm(x)) -> Conv|ConvTranspose|Gemm, folded weights.

    onnxscript's rules (fuse_batchnorm_into_conv/conv_transpose/gemm) with the stricter
    checks of `_SafeFuseBatchNorm`.

    Args:
        conv_transpose: also fold into ConvTranspose.
        gemm: also fold into Gemm.
    """

    def __init__(self, *, conv_transpose: bool = True, gemm: bool = True) -> None:
        super().__init__()
        self.conv_transpose = conv_transpose
        self.gemm = gemm

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rules = [_FuseBatchNormIntoConv().rule()]
        if self.conv_transpose:
            rules.append(_FuseBatchNormIntoConvTranspose().rule())
        if self.gemm:
            rules.append(_FuseBatchNormIntoGemm().rule())
        return ir.passes.PassResult(model, _apply_rules(model, rules))


# ---------------------------------------------------------------------------------------
# Per-channel Mul/Add after Conv or BatchNormalization. Our own: onnxscript's
# conv_affine_fusion only takes scalar scale *and* offset together, while exporters
# (Caffe2 densenet/inception, Paddle) emit Conv -> BN -> Mul(per-channel) ->
# Add(per-channel), which ORT folds at its basic level (ConvMulFusion/ConvAddFusion).


def _affine_operand(
    value: ir.Value, rank: int | None, channels: int, dtype: ir.DataType | None
) -> tuple[np.ndarray | None, str]:
    array = const_array(value)
    if array is None:
        return None, f"{value.name} is not a constant"
    if value.is_graph_input():
        return None, f"{value.name} is a graph input"
    if value.dtype != dtype:
        return None, f"{value.name} is {value.dtype}, expected {dtype}"
    if rank is None:
        return None, "rank of the fused tensor is unknown"
    vector = per_channel(array, rank, channels)
    if vector is None:
        return None, f"{value.name} of shape {array.shape} is not per-channel"
    return vector, ""


class _ConvAffine(RewriteRuleClassBase):
    """Op(Conv(x, w, b), c) with c constant per output channel -> Conv(x, w', b')."""

    op_type: ClassVar[str]

    def pattern(self, op, x, c):
        conv = op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"])
        return getattr(op, self.op_type)(conv, c)

    def check(self, context, x, c, conv_out: ir.Value) -> MatchResult:
        result = MatchResult()
        conv = conv_out.producer()
        assert conv is not None
        if len(conv.inputs) < 2:
            return result.fail("Conv has no weights")
        weight, bias = conv.inputs[1], conv.inputs[2] if len(conv.inputs) > 2 else None
        if not private_initializer(weight, {conv}):
            return result.fail("Conv weights are not a private constant initializer")
        if bias is not None and not private_initializer(bias, {conv}):
            return result.fail("Conv bias is not a private constant initializer")
        assert weight is not None
        if weight.dtype not in _FLOAT_TYPES:
            return result.fail(f"weights are {weight.dtype}")
        w = const_array(weight)
        assert w is not None
        if w.ndim < 3:
            return result.fail(f"weights have rank {w.ndim}")
        vector, reason = _affine_operand(c, w.ndim, int(w.shape[0]), weight.dtype)
        if vector is None:
            return result.fail(reason)
        if bias is None and (graph := conv.graph) is not None:
            self._bias_name = fresh_name(graph, f"{weight.name}_bias")
        self._vector = vector
        return result

    def rewrite(self, op, x, c, conv_out: ir.Value):
        conv = conv_out.producer()
        assert conv is not None
        weight, bias = conv.inputs[1], conv.inputs[2] if len(conv.inputs) > 2 else None
        assert weight is not None
        w = const_array(weight)
        b = const_array(bias)
        assert w is not None
        new_w, new_b = self._fold(w.astype(np.float64), b, self._vector.astype(np.float64))
        dtype = w.dtype
        if new_w is None:
            w_value = weight
        else:
            w_value = op.initializer(ir.tensor(new_w.astype(dtype)), name=weight.name)
        inputs = [x, w_value]
        if new_b is not None:
            b_name = bias.name if bias is not None else self._bias_name
            inputs.append(op.initializer(ir.tensor(new_b.astype(dtype)), name=b_name))
        return op.Conv(*inputs, **conv.attributes)

    def _fold(
        self, w: np.ndarray, b: np.ndarray | None, vector: np.ndarray
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(new weights or None if unchanged, new bias or None if still absent)."""
        raise NotImplementedError


class _ConvMul(_ConvAffine):
    op_type: ClassVar[str] = "Mul"

    def _fold(self, w, b, vector):
        scale = vector.reshape((-1,) + (1,) * (w.ndim - 1))
        if b is None:
            return w * scale, None
        return w * scale, np.broadcast_to(b.reshape(-1).astype(np.float64) * vector, vector.shape)


class _ConvAdd(_ConvAffine):
    op_type: ClassVar[str] = "Add"

    def _fold(self, w, b, vector):
        if b is None:
            return None, vector
        return None, np.broadcast_to(b.reshape(-1).astype(np.float64) + vector, vector.shape)


class _BatchNormAffine(RewriteRuleClassBase):
    """Op(BatchNormalization(x), c) with c constant per channel -> BatchNormalization."""

    op_type: ClassVar[str]

    def pattern(self, op, x, scale, bias, mean, var, c):
        bn = op.BatchNormalization(x, scale, bias, mean, var, _outputs=["bn_out"])
        return getattr(op, self.op_type)(bn, c)

    def check(self, context, x, scale, bias, mean, var, c, bn_out: ir.Value) -> MatchResult:
        result = MatchResult()
        bn = bn_out.producer()
        assert bn is not None
        if (reason := _batchnorm_is_inference(bn, onnx_opset(context.model))) is not None:
            return result.fail(reason)
        if not (private_initializer(scale, {bn}) and private_initializer(bias, {bn})):
            return result.fail("BatchNormalization scale/bias are not private initializers")
        if scale.dtype not in _FLOAT_TYPES:
            return result.fail(f"scale is {scale.dtype}")
        channels = int(const_array(scale).size)  # type: ignore[union-attr]
        if (reason := _batchnorm_params_ok(bn, channels, scale.dtype)) is not None:
            return result.fail(reason)
        shape = x.shape if x.shape is not None else bn_out.shape
        rank = len(shape) if shape is not None else None
        vector, reason = _affine_operand(c, rank, channels, scale.dtype)
        if vector is None:
            return result.fail(reason)
        self._vector = vector
        return result

    def rewrite(self, op, x, scale, bias, mean, var, c, bn_out: ir.Value):
        bn = bn_out.producer()
        assert bn is not None
        s, b = const_array(scale), const_array(bias)
        assert s is not None and b is not None
        new_s, new_b = self._fold(s.astype(np.float64), b.astype(np.float64), self._vector)
        s_value = op.initializer(ir.tensor(new_s.astype(s.dtype)), name=scale.name)
        b_value = op.initializer(ir.tensor(new_b.astype(b.dtype)), name=bias.name)
        return op.BatchNormalization(x, s_value, b_value, mean, var, **bn.attributes)

    def _fold(
        self, s: np.ndarray, b: np.ndarray, vector: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class _BatchNormMul(_BatchNormAffine):
    op_type: ClassVar[str] = "Mul"

    def _fold(self, s, b, vector):
        return s * vector, b * vector


class _BatchNormAdd(_BatchNormAffine):
    op_type: ClassVar[str] = "Add"

    def _fold(self, s, b, vector):
        return s, b + vector


class FuseChannelAffinePass(ir.passes.InPlacePass):
    """Mul/Add by a per-channel constant after Conv or BatchNormalization -> folded weights.

    Args:
        batchnorm: also fold into a BatchNormalization that has no Conv before it.
    """

    def __init__(self, *, batchnorm: bool = True) -> None:
        super().__init__()
        self.batchnorm = batchnorm

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        classes: list[type[RewriteRuleClassBase]] = [_ConvMul, _ConvAdd]
        if self.batchnorm:
            classes += [_BatchNormMul, _BatchNormAdd]
        rules = [r for cls in classes for r in cls.rule().commute()]
        return ir.passes.PassResult(model, _apply_rules(model, rules))


# ---------------------------------------------------------------------------------------
# MatMul + Add -> Gemm.


def _dims_match(a: Any, b: Any) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a is not None and b is not None and a == b and a.value is not None


class _LegalGemm:
    """Extra checks on top of onnxscript's MatMul+Add -> Gemm rules.

    onnxscript only checks that A and B are 2-D. Gemm's C must also broadcast
    *unidirectionally* to (M, N): Add broadcasts both ways, so a rank-3 or an (M, N)
    bias added to a (1, N) product would change the output shape. Gemm also takes
    fewer dtypes than MatMul and, before opset 7, needs an explicit broadcast flag.
    """

    trans_a: ClassVar[bool]
    trans_b: ClassVar[bool]

    def check(self, context: Any, *args: Any, **kwargs: Any) -> MatchResult:
        # The rewriter passes the pattern's bindings as keywords.
        result = super().check(context, *args, **kwargs)  # type: ignore[misc]
        if not result:
            return result
        input_a, input_b, input_c = kwargs["input_a"], kwargs["input_b"], kwargs["input_c"]
        opset = onnx_opset(context.model)
        if opset is None or opset < 7:
            return result.fail(f"Gemm at opset {opset} needs the broadcast attribute")
        allowed = set(_FLOAT_TYPES) if opset >= 13 else _FLOAT_TYPES - {ir.DataType.BFLOAT16}
        if input_a.dtype not in allowed:
            return result.fail(f"Gemm does not take {input_a.dtype} at opset {opset}")
        if input_c.shape is None:
            return result.fail("shape of the Add operand is unknown")
        m = input_a.shape[1 if self.trans_a else 0]
        n = input_b.shape[0 if self.trans_b else 1]
        c_dims = list(input_c.shape)
        if len(c_dims) > 2:
            return result.fail(f"Add operand has rank {len(c_dims)}")
        for c_dim, out_dim in zip(reversed(c_dims), (n, m), strict=False):
            if c_dim != 1 and not _dims_match(c_dim, out_dim):
                return result.fail(f"Add operand {input_c.shape} does not broadcast to ({m}, {n})")
        if input_c.dtype != input_a.dtype:
            return result.fail("dtype mismatch")
        return result


# ignore[misc]: onnxscript's own check() signatures disagree (context vs op, **_).
class _MatMulAddToGemm(_LegalGemm, _matmul_add_to_gemm.MatMulAddToGemm):  # type: ignore[misc]
    pass


class _TransAMatMulAddToGemm(  # type: ignore[misc]
    _LegalGemm, _matmul_add_to_gemm.TransAMatMulAddToGemm
):
    pass


class _TransBMatMulAddToGemm(  # type: ignore[misc]
    _LegalGemm, _matmul_add_to_gemm.TransBMatMulAddToGemm
):
    pass


class _TransABMatMulAddToGemm(  # type: ignore[misc]
    _LegalGemm, _matmul_add_to_gemm.TransABMatMulAddToGemm
):
    pass


class FuseMatMulAddPass(ir.passes.InPlacePass):
    """Add(MatMul(a, b), c) with 2-D a, b (optionally transposed) -> Gemm(a, b, c).

    Args:
        transposes: also absorb a Transpose(perm=[1, 0]) of a or b into transA/transB.
    """

    def __init__(self, *, transposes: bool = True) -> None:
        super().__init__()
        self.transposes = transposes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        classes: list[type[RewriteRuleClassBase]] = [_MatMulAddToGemm]
        if self.transposes:
            classes = [
                _TransABMatMulAddToGemm,
                _TransAMatMulAddToGemm,
                _TransBMatMulAddToGemm,
                *classes,
            ]
        rules = [r for cls in classes for r in cls.rule().commute()]
        return ir.passes.PassResult(model, _apply_rules(model, rules))


# ---------------------------------------------------------------------------------------
# HardSwish: x * Clip(x + 3, 0, 6) / 6, as Paddle and MobileNetV3 exporters write it.


class _FloatInputMixin:
    """HardSigmoid/HardSwish take only float tensors; Add/Clip/Div also take ints."""

    def check(self, context: Any, *args: Any, **kwargs: Any) -> MatchResult:
        # The rewriter passes the pattern's bindings as keywords.
        result = super().check(context, *args, **kwargs)  # type: ignore[misc]
        x = kwargs["x"]
        if result and x.dtype not in _FLOAT_TYPES:
            return result.fail(f"input is {x.dtype}")
        return result


# ignore[misc]: onnxscript's own check() signatures disagree (context vs op).
class _HardSwishFusion(_FloatInputMixin, _fuse_hardswish.HardSwishFusion):  # type: ignore[misc]
    pass


class _HardSigmoidFusion(_FloatInputMixin, _fuse_hardswish.HardSigmoidFusion):  # type: ignore[misc]
    pass


class _HardSwishFromHardSigmoid(  # type: ignore[misc]
    _FloatInputMixin, _fuse_hardswish.HardSwishFusionFromHardSigmoid
):
    pass


class _HardSwishAsHardSigmoidMul(  # type: ignore[misc]
    _FloatInputMixin, _fuse_hardswish._HardSigmoidFusionBase
):
    """x * Clip(x + 3, 0, 6) / 6 -> x * HardSigmoid(x, 1/6, 0.5).

    Our own: onnxscript's rule emits HardSwish, which needs opset 14; models at lower
    opsets (PP-OCR at 11/12, PicoDet at 13) can still drop two of the four nodes.
    """

    def pattern(self, op, x, clip_min, clip_max, bias, divisor):
        return op.Clip(x + bias, clip_min, clip_max) * x / divisor

    def rewrite(self, op, x, clip_min, clip_max, bias, divisor):
        return op.Mul(x, op.HardSigmoid(x, alpha=1 / 6, beta=0.5))


class FuseHardSwishPass(ir.passes.InPlacePass):
    """x * Clip(x + 3, 0, 6) / 6 -> HardSwish(x) (opset >= 14) or x * HardSigmoid(x).

    Also Clip(x + 3, 0, 6) / 6 -> HardSigmoid(x), and HardSigmoid(x) * x -> HardSwish(x)
    at opset >= 14 (onnxscript's fuse_hardswish rules, restricted to float inputs).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = onnx_opset(model)
        if opset is None or opset < 11:
            # The patterns need Clip with min/max inputs (opset 11).
            return ir.passes.PassResult(model, False)
        classes: list[type[RewriteRuleClassBase]]
        if opset >= 14:
            classes = [_HardSwishFusion, _HardSigmoidFusion, _HardSwishFromHardSigmoid]
        else:
            classes = [_HardSwishAsHardSigmoidMul, _HardSigmoidFusion]
        rules = [r for cls in classes for r in cls.rule().commute()]
        return ir.passes.PassResult(model, _apply_rules(model, rules))
