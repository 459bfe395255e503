"""Standard-op fusions: BN/affine into Conv/Gemm/MatMul, Pad into Conv/pools, MatMul+Add -> Gemm."""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules.common import (
    _fuse_batchnorm,
    _fuse_hardswish,
    _matmul_add_to_gemm,
)

from lepton_compile.passes._utils import (
    FLOAT_TYPES,
    const_array,
    fresh_name,
    onnx_opset,
    per_channel,
    private_initializer,
)
from lepton_compile.passes.errors import one_line
from lepton_compile.passes.rules import Rule, apply_rules, producer

logger = logging.getLogger(__name__)


class _InferenceFailure(logging.Filter):
    """Takes the failure record onnx-ir's ShapeInferencePass logs, traceback and all."""

    def __init__(self) -> None:
        super().__init__()
        self.error: BaseException | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            self.error = record.exc_info[1]
            return False
        return True


class QuietShapeInferencePass(common_passes.ShapeInferencePass):
    """onnx-ir's ShapeInferencePass (not strict by default), whose failure is one log line.

    onnx-ir logs a failed inference as a warning with the whole traceback, which reaches the
    user's terminal though the pass goes on without shapes, as it should: inference only
    helps the passes here, and a model onnx cannot infer (a string op below the opset that
    allows strings, a custom op) is still a model to optimize.
    """

    def __init__(self, strict_mode: bool = False, **options: Any) -> None:
        super().__init__(strict_mode=strict_mode, **options)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        failure = _InferenceFailure()
        source = logging.getLogger(common_passes.ShapeInferencePass.__module__)
        source.addFilter(failure)
        try:
            result = super().call(model)
        finally:
            source.removeFilter(failure)
        if failure.error is not None:
            logger.info(
                "shape inference failed, shapes left as they were: %s", one_line(failure.error)
            )
        return result


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
        bn = producer(batchnorm_out)
        inbound = producer(inbound_out)
        if (reason := _batchnorm_is_inference(bn, onnx_opset(context.model))) is not None:
            return result.fail(reason)
        weight = inbound.inputs[1]
        w = const_array(weight)
        assert weight is not None and w is not None  # checked by the base rule
        if weight.dtype not in FLOAT_TYPES:
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
        return ir.passes.PassResult(model, apply_rules(model, rules))


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


class _ConvAffine(Rule):
    """Op(Conv(x, w, b), c) with c constant per output channel -> Conv(x, w', b')."""

    op_type: ClassVar[str]

    def pattern(self, op, x, c):
        conv = op.Conv(x, _allow_other_inputs=True, _outputs=["conv_out"])
        return getattr(op, self.op_type)(conv, c)

    def why_not(self, context, x, c, conv_out: ir.Value) -> str | None:
        conv = producer(conv_out)
        if len(conv.inputs) < 2:
            return "Conv has no weights"
        weight, bias = conv.inputs[1], conv.inputs[2] if len(conv.inputs) > 2 else None
        if not private_initializer(weight, {conv}):
            return "Conv weights are not a private constant initializer"
        if bias is not None and not private_initializer(bias, {conv}):
            return "Conv bias is not a private constant initializer"
        assert weight is not None
        if weight.dtype not in FLOAT_TYPES:
            return f"weights are {weight.dtype}"
        w = const_array(weight)
        assert w is not None
        if w.ndim < 3:
            return f"weights have rank {w.ndim}"
        vector, reason = _affine_operand(c, w.ndim, int(w.shape[0]), weight.dtype)
        if vector is None:
            return reason
        if bias is None and (graph := conv.graph) is not None:
            self._bias_name = fresh_name(graph, f"{weight.name}_bias")
        self._vector = vector
        return None

    def rewrite(self, op, x, c, conv_out: ir.Value):
        conv = producer(conv_out)
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


class _BatchNormAffine(Rule):
    """Op(BatchNormalization(x), c) with c constant per channel -> BatchNormalization."""

    op_type: ClassVar[str]

    def pattern(self, op, x, scale, bias, mean, var, c):
        bn = op.BatchNormalization(x, scale, bias, mean, var, _outputs=["bn_out"])
        return getattr(op, self.op_type)(bn, c)

    def why_not(self, context, x, scale, bias, mean, var, c, bn_out: ir.Value) -> str | None:
        bn = producer(bn_out)
        if (reason := _batchnorm_is_inference(bn, onnx_opset(context.model))) is not None:
            return reason
        if not (private_initializer(scale, {bn}) and private_initializer(bias, {bn})):
            return "BatchNormalization scale/bias are not private initializers"
        if scale.dtype not in FLOAT_TYPES:
            return f"scale is {scale.dtype}"
        channels = int(const_array(scale).size)  # type: ignore[union-attr]
        if (reason := _batchnorm_params_ok(bn, channels, scale.dtype)) is not None:
            return reason
        shape = x.shape if x.shape is not None else bn_out.shape
        rank = len(shape) if shape is not None else None
        vector, reason = _affine_operand(c, rank, channels, scale.dtype)
        if vector is None:
            return reason
        self._vector = vector
        return None

    def rewrite(self, op, x, scale, bias, mean, var, c, bn_out: ir.Value):
        bn = producer(bn_out)
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
        return ir.passes.PassResult(model, apply_rules(model, rules))


# ---------------------------------------------------------------------------------------
# MatMul + Add -> Gemm.


def _dims_match(a: Any, b: Any) -> bool:
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a is not None and b is not None and a == b and a.value is not None


def gemm_reason(opset: int | None, dtype: ir.DataType | None) -> str | None:
    """Why a Gemm cannot take `dtype` inputs at default-domain `opset`, None if it can."""
    if opset is None or opset < 7:
        return f"Gemm at opset {opset} needs the broadcast attribute"
    allowed = FLOAT_TYPES if opset >= 13 else FLOAT_TYPES - {ir.DataType.BFLOAT16}
    if dtype not in allowed:
        return f"Gemm does not take {dtype} at opset {opset}"
    return None


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
        if (reason := gemm_reason(onnx_opset(context.model), input_a.dtype)) is not None:
            return result.fail(reason)
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


def _legal_gemm(rule: type[RewriteRuleClassBase]) -> type[RewriteRuleClassBase]:
    """onnxscript's MatMul+Add -> Gemm ``rule`` behind _LegalGemm's checks, named _<rule>."""
    return type(f"_{rule.__name__}", (_LegalGemm, rule), {"__module__": __name__})


_MatMulAddToGemm = _legal_gemm(_matmul_add_to_gemm.MatMulAddToGemm)
_TransAMatMulAddToGemm = _legal_gemm(_matmul_add_to_gemm.TransAMatMulAddToGemm)
_TransBMatMulAddToGemm = _legal_gemm(_matmul_add_to_gemm.TransBMatMulAddToGemm)
_TransABMatMulAddToGemm = _legal_gemm(_matmul_add_to_gemm.TransABMatMulAddToGemm)


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
        return ir.passes.PassResult(model, apply_rules(model, rules))


# ---------------------------------------------------------------------------------------
# HardSwish: x * Clip(x + 3, 0, 6) / 6, as Paddle and MobileNetV3 exporters write it.


class _FloatInputMixin:
    """HardSigmoid/HardSwish take only float tensors; Add/Clip/Div also take ints."""

    def check(self, context: Any, *args: Any, **kwargs: Any) -> MatchResult:
        # The rewriter passes the pattern's bindings as keywords.
        result = super().check(context, *args, **kwargs)  # type: ignore[misc]
        x = kwargs["x"]
        if result and x.dtype not in FLOAT_TYPES:
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
        return ir.passes.PassResult(model, apply_rules(model, rules))


# ---------------------------------------------------------------------------------------
# MatMul + BatchNormalization. onnxscript has no rule for it (only Conv/ConvTranspose/
# Gemm); a bias-free Linear, or a 1x1 "conv" written as W @ x, followed by BatchNorm1d
# reaches ONNX as MatMul -> BatchNormalization.


class _MatMulBatchNorm(Rule):
    """BatchNormalization(MatMul(a, b)) with one constant 2-D operand -> folded weights.

    BatchNormalization scales axis 1 of its input. That axis is the constant operand's
    own output axis in two cases, which are the two we fold:

    - b constant (K, N), a of rank 2: axis 1 is N, the columns of b. Result:
      Gemm(a, b * s, shift) (Gemm takes the same float types as MatMul at every opset
      that has an inference-mode BatchNormalization, so no MatMul + Add fallback).
    - a constant (C, K), b of rank 3 (batch, K, L): axis 1 is C, the rows of a.
      Result: MatMul(s[:, None] * a, b) + shift[:, None].

    with s = gamma / sqrt(var + eps) and shift = beta - mean * s. Any other rank puts
    axis 1 on a dimension the constant does not own, and the BN cannot be folded.
    """

    def pattern(self, op, a, b, scale, bias, mean, var):
        mm = op.MatMul(a, b, _outputs=["mm_out"])
        return op.BatchNormalization(mm, scale, bias, mean, var, _outputs=["bn_out"])

    def why_not(
        self, context, a, b, scale, bias, mean, var, mm_out: ir.Value, bn_out: ir.Value
    ) -> str | None:
        bn = producer(bn_out)
        mm = producer(mm_out)
        opset = onnx_opset(context.model)
        if (reason := _batchnorm_is_inference(bn, opset)) is not None:
            return reason
        if private_initializer(b, {mm}) and a.shape is not None and len(a.shape) == 2:
            weight, side = b, "right"
        elif private_initializer(a, {mm}) and b.shape is not None and len(b.shape) == 3:
            weight, side = a, "left"
        else:
            return "neither (a rank 2, b a private constant) nor (a a private constant, b rank 3)"
        w = const_array(weight)
        assert w is not None
        if w.ndim != 2:
            return f"constant operand has rank {w.ndim}, expected 2"
        if weight.dtype not in FLOAT_TYPES:
            return f"weights are {weight.dtype}"
        other = a if side == "right" else b
        if other.dtype != weight.dtype:
            return f"operands are {other.dtype} and {weight.dtype}"
        channels = int(w.shape[1] if side == "right" else w.shape[0])
        if (reason := _batchnorm_params_ok(bn, channels, weight.dtype)) is not None:
            return reason
        self._side = side
        graph = context.graph_or_function
        self._bias_name = fresh_name(graph, f"{weight.name}_bn_bias")
        return None

    def rewrite(self, op, a, b, scale, bias, mean, var, mm_out: ir.Value, bn_out: ir.Value):
        bn = producer(bn_out)
        eps = bn.attributes.get_float("epsilon", 1e-5)
        arrays = [const_array(v) for v in (scale, bias, mean, var)]
        gamma, beta, mu, sigma2 = (x.astype(np.float64) for x in arrays)  # type: ignore[union-attr]
        s = gamma / np.sqrt(sigma2 + eps)
        shift = beta - mu * s
        weight = b if self._side == "right" else a
        w = const_array(weight)
        assert w is not None
        dtype = w.dtype
        if self._side == "right":
            new_w = op.initializer(ir.tensor((w * s[None, :]).astype(dtype)), name=weight.name)
            shift_value = op.initializer(ir.tensor(shift.astype(dtype)), name=self._bias_name)
            return op.Gemm(a, new_w, shift_value)
        new_w = op.initializer(ir.tensor((s[:, None] * w).astype(dtype)), name=weight.name)
        shift_value = op.initializer(ir.tensor(shift[:, None].astype(dtype)), name=self._bias_name)
        return op.Add(op.MatMul(new_w, b), shift_value)


class FuseMatMulBatchNormPass(ir.passes.InPlacePass):
    """BatchNormalization(MatMul(a, W)) -> Gemm(a, W', b') (or MatMul + Add), folded weights.

    See `_MatMulBatchNorm` for the two foldable layouts.
    """

    def rules(self) -> list[RewriteRule]:
        return [_MatMulBatchNorm.rule()]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, apply_rules(model, self.rules()))


# ---------------------------------------------------------------------------------------
# Pad into Conv / AveragePool / MaxPool. onnxscript's fuse_pad_into_conv reads pads from
# Pad's inputs only (opset >= 11; older Pads keep them in attributes and crash it) and has
# no pool rules. Ours handles both Pad forms and the pools' own padding semantics.


def _pad_spec(pad: ir.Node, rank: int) -> tuple[list[int], float] | str:
    """(pads as 2*rank begin/end list, constant value) of a constant-mode Pad, or why not."""
    mode = pad.attributes.get_string("mode", "constant")
    if mode != "constant":
        return f"Pad mode is {mode!r}"
    if len(pad.inputs) >= 2:  # opset >= 11: pads, constant_value, axes are inputs
        pads = const_array(pad.inputs[1])
        if pads is None:
            return "Pad's pads are not constant"
        value = 0.0
        if len(pad.inputs) > 2 and pad.inputs[2] is not None:
            array = const_array(pad.inputs[2])
            if array is None or array.size != 1:
                return "Pad's constant_value is not a constant scalar"
            value = float(array.reshape(()))
        if len(pad.inputs) > 3 and pad.inputs[3] is not None:
            axes = const_array(pad.inputs[3])
            if axes is None:
                return "Pad's axes are not constant"
            axes_list = [int(x) % rank for x in axes.reshape(-1)]
        else:
            axes_list = list(range(rank))
        pads_list = [int(p) for p in pads.reshape(-1)]
        if len(pads_list) != 2 * len(axes_list):
            return f"Pad has {len(pads_list)} pads for {len(axes_list)} axes"
        full = [0] * 2 * rank
        for i, axis in enumerate(axes_list):
            full[axis] = pads_list[i]
            full[axis + rank] = pads_list[i + len(axes_list)]
    else:  # opset < 11: attributes (`paddings` in opset 1)
        attr = pad.attributes.get("pads") or pad.attributes.get("paddings")
        if attr is None:
            return "Pad has no pads"
        full = list(attr.as_ints())
        value = pad.attributes.get_float("value", 0.0)
        if len(full) != 2 * rank:
            return f"Pad has {len(full)} pads for rank {rank}"
    if any(p < 0 for p in full):
        return f"Pad crops (negative pads {full})"
    if any(full[i] or full[i + rank] for i in (0, 1)):
        return f"Pad pads the batch or channel axis ({full})"
    return full, value


def _lower_bound(value: ir.Value) -> float | None:
    """A value every element of `value` is known to be >= to, from its producer, or None."""
    if value.dtype is not None and value.dtype.is_integer() and not value.dtype.is_signed():
        return 0.0
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type in ("Relu", "Sigmoid", "HardSigmoid", "Softmax", "Abs", "Softplus"):
        return 0.0
    if node.op_type == "Clip":
        if len(node.inputs) >= 2 and node.inputs[1] is not None:
            array = const_array(node.inputs[1])
            return float(array.reshape(())) if array is not None and array.size == 1 else None
        if len(node.inputs) == 1 and "min" in node.attributes:
            return node.attributes.get_float("min")
    return None


class _FusePad(Rule):
    """Op(Pad(x)) -> Op(x) with the Pad's spatial pads added to Op's own `pads`.

    remove_nodes=False: a Pad that other nodes also read stays for them (and goes away
    with the cleanup when nothing else does).
    """

    op_type: ClassVar[str]

    def __init__(self) -> None:
        super().__init__(remove_nodes=False)

    def pattern(self, op, x):
        padded = op.Pad(x, _allow_other_inputs=True, _outputs=["pad_out"])
        return getattr(op, self.op_type)(padded, _allow_other_inputs=True, _outputs=["op_out"])

    def why_not(self, context, x: ir.Value, pad_out: ir.Value, op_out: ir.Value) -> str | None:
        pad, node = producer(pad_out), producer(op_out)
        if node.inputs[0] is not pad_out:
            return f"the Pad feeds {self.op_type}'s weights, not its data input"
        rank = self._rank(node)
        if rank is None:
            return f"rank of the {self.op_type} input is unknown"
        spec = _pad_spec(pad, rank)
        if isinstance(spec, str):
            return spec
        pads, value = spec
        auto_pad = node.attributes.get_string("auto_pad", "NOTSET")
        if auto_pad not in ("NOTSET", "VALID"):
            return f"{self.op_type} has auto_pad={auto_pad}"
        own = list(node.attributes.get_ints("pads", [0] * 2 * (rank - 2)))
        if auto_pad == "VALID":
            own = [0] * 2 * (rank - 2)
        spatial = pads[2:rank] + pads[rank + 2 :]
        merged = [p + q for p, q in zip(own, spatial, strict=True)]
        opset = onnx_opset(context.model) or 0
        if (reason := self._check_op(node, x, value, own, merged, opset)) is not None:
            return reason
        self._merged = merged
        return None

    def _rank(self, node: ir.Node) -> int | None:
        kernel = node.attributes.get_ints("kernel_shape")
        return len(kernel) + 2 if kernel else None

    def _check_op(
        self,
        node: ir.Node,
        x: ir.Value,
        value: float,
        own: list[int],
        merged: list[int],
        opset: int,
    ) -> str | None:
        raise NotImplementedError

    def _attributes(self, node: ir.Node) -> dict[str, Any]:
        attrs: dict[str, Any] = {k: v for k, v in node.attributes.items() if k != "auto_pad"}
        attrs["pads"] = self._merged
        return attrs

    def rewrite(self, op, x: ir.Value, pad_out: ir.Value, op_out: ir.Value):
        node = producer(op_out)
        return op.op(self.op_type, x, *node.inputs[1:], **self._attributes(node))


def _pool_checks(node: ir.Node, merged: list[int]) -> str | None:
    if len(node.outputs) != 1:
        return "MaxPool's Indices output would index the padded tensor"
    if node.attributes.get_int("ceil_mode", 0):
        # A ceil_mode window may start inside the end padding; runtimes differ on what
        # such a window (and the divisor of a partial one) sees.
        return "ceil_mode=1"
    kernel = node.attributes.get_ints("kernel_shape")
    n = len(kernel)
    if any(merged[i] >= kernel[i] or merged[i + n] >= kernel[i] for i in range(n)):
        # onnxruntime rejects pools whose pads reach the kernel size.
        return f"pads {merged} would not be smaller than the kernel {list(kernel)}"
    return None


class _PadConv(_FusePad):
    op_type: ClassVar[str] = "Conv"

    def _rank(self, node: ir.Node) -> int | None:
        weight = node.inputs[1] if len(node.inputs) > 1 else None
        if weight is not None and weight.shape is not None:
            return len(weight.shape)
        return super()._rank(node)

    def _check_op(self, node, x, value, own, merged, opset):
        if value != 0.0:
            return f"pad value {value} is not 0 (Conv pads with zeros)"
        return None


class _PadAveragePool(_FusePad):
    """count_include_pad=1 after the fusion: the Pad's zeros were counted in the mean."""

    op_type: ClassVar[str] = "AveragePool"

    def _check_op(self, node, x, value, own, merged, opset):
        if value != 0.0:
            return f"pad value {value} is not 0 (AveragePool pads with zeros)"
        if opset < 7:
            return f"AveragePool at opset {opset} has no count_include_pad"
        if any(own) and not node.attributes.get_int("count_include_pad", 0):
            # Its own pads are excluded from the divisor, the Pad's zeros were counted:
            # no single count_include_pad expresses both.
            return "AveragePool has its own pads with count_include_pad=0"
        return _pool_checks(node, merged)

    def _attributes(self, node):
        attrs = super()._attributes(node)
        attrs["count_include_pad"] = 1
        return attrs


class _PadMaxPool(_FusePad):
    """Only when the pad value can never be a window's maximum.

    MaxPool's own padding never wins a max (it is -inf); an explicit pad value does
    whenever it exceeds every real element of a window. So the value must be -inf, or
    at most a known lower bound of x (0 after Relu/Sigmoid/..., Clip's min).
    """

    op_type: ClassVar[str] = "MaxPool"

    def _check_op(self, node, x, value, own, merged, opset):
        if value != -math.inf:
            bound = _lower_bound(x)
            if bound is None:
                return (
                    f"pad value {value} could be a window maximum: x has no known lower "
                    "bound, and MaxPool's own padding is -inf"
                )
            if value > bound:
                return f"pad value {value} exceeds x's lower bound {bound}"
            if any(d != 1 for d in node.attributes.get_ints("dilations", ())):
                return "dilated window could see only padding"
        return _pool_checks(node, merged)


class FusePadPass(ir.passes.InPlacePass):
    """Conv|AveragePool|MaxPool(Pad(x)) -> the op with the Pad's spatial pads in `pads`.

    Constant mode, zero batch/channel pads, no cropping. Conv and AveragePool need the
    value 0 (AveragePool then counts the pads: count_include_pad=1); MaxPool needs -inf
    or a value no larger than what x can hold.

    Args:
        pools: also fold into AveragePool and MaxPool.
    """

    def __init__(self, *, pools: bool = True) -> None:
        super().__init__()
        self.pools = pools

    def rules(self) -> list[RewriteRule]:
        classes: list[type[_FusePad]] = [_PadConv]
        if self.pools:
            classes += [_PadAveragePool, _PadMaxPool]
        return [cls.rule() for cls in classes]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        return ir.passes.PassResult(model, apply_rules(model, self.rules()))
