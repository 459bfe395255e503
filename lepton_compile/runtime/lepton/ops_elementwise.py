"""Elementwise ops: arithmetic, comparison, logic, activations, Cast, Where, Clip, Constant."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from lepton_compile.runtime.lepton import dtypes
from lepton_compile.runtime.lepton.lower import NodeCtx
from lepton_compile.runtime.lepton.registry import op

# -- unary ------------------------------------------------------------------------------

_UNARY = {
    "Abs": torch.abs,
    "Neg": torch.neg,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal,
    "Floor": torch.floor,
    "Ceil": torch.ceil,
    "Round": torch.round,  # half to even, as ONNX
    "Sign": torch.sign,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Erf": torch.erf,
    "Sigmoid": torch.sigmoid,
    "Tanh": torch.tanh,
    "Softsign": F.softsign,
    "Mish": F.mish,
    "HardSwish": F.hardswish,
    "Not": torch.logical_not,
    "BitwiseNot": torch.bitwise_not,
    "IsNaN": torch.isnan,
}


def _unary(fn):
    return lambda ctx: fn(ctx.input(0))


for _name, _fn in _UNARY.items():
    op(_name)(_unary(_fn))


@op("Identity")
def identity(ctx: NodeCtx):
    return ctx.input(0)


@op("Softplus")
def softplus(ctx: NodeCtx):
    x = ctx.input(0)
    # log(1 + exp(x)) without overflow; F.softplus switches to x above a threshold.
    return torch.where(x > 0, x + torch.log1p(torch.exp(-x)), torch.log1p(torch.exp(x)))


@op("IsInf")
def isinf(ctx: NodeCtx):
    x = ctx.input(0)
    neg, pos = ctx.attr("detect_negative", 1), ctx.attr("detect_positive", 1)
    if neg and pos:
        return torch.isinf(x)
    if pos:
        return torch.isposinf(x)
    if neg:
        return torch.isneginf(x)
    return torch.zeros_like(x, dtype=torch.bool)


@op("Elu")
def elu(ctx: NodeCtx):
    return F.elu(ctx.input(0), alpha=ctx.attr("alpha", 1.0))


@op("Celu")
def celu(ctx: NodeCtx):
    return F.celu(ctx.input(0), alpha=ctx.attr("alpha", 1.0))


@op("Selu")
def selu(ctx: NodeCtx):
    x = ctx.input(0)
    alpha = ctx.attr("alpha", 1.67326319217681884765625)
    gamma = ctx.attr("gamma", 1.05070102214813232421875)
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@op("Relu")
def relu(ctx: NodeCtx):
    x = ctx.input(0)
    qx = ctx.quant(0)
    if qx is not None and not ctx.folding and not qx.const and qx.per_tensor:
        # relu(dequantize(q)) = dequantize(max(q, zero)): a quantized consumer (a QDQ Conv
        # after an FP8 recipe's Relu) can still compute in integers / FP8.
        from lepton_compile.runtime.lepton.lower import no_tracing
        from lepton_compile.runtime.lepton.quant_layers import Quantized

        q = qx.q
        if qx.kind == "int8":
            with no_tracing():
                zero = int(qx.zero.reshape(-1)[0]) if qx.zero is not None else 0
            q = torch.clamp(q, min=zero)
        elif qx.kind == "fp8":
            u = q.view(torch.uint8)  # sign bit set: negative (or -0): becomes +0
            q = torch.where(u >= 128, torch.zeros_like(u), u).view(q.dtype)
        if qx.kind in ("int8", "fp8"):
            ctx.quant_out = Quantized(q, qx.scale, qx.zero, None, False)
    return torch.relu(x)


@op("LeakyRelu")
def leaky_relu(ctx: NodeCtx):
    return F.leaky_relu(ctx.input(0), negative_slope=ctx.attr("alpha", 0.01))


@op("ThresholdedRelu")
def thresholded_relu(ctx: NodeCtx):
    x = ctx.input(0)
    return torch.where(x > ctx.attr("alpha", 1.0), x, torch.zeros_like(x))


@op("HardSigmoid")
def hard_sigmoid(ctx: NodeCtx):
    x = ctx.input(0)
    return torch.clamp(x * ctx.attr("alpha", 0.2) + ctx.attr("beta", 0.5), 0.0, 1.0)


@op("Gelu")
def gelu(ctx: NodeCtx):
    approximate = ctx.attr("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise ctx.unsupported(f"approximate={approximate!r}")
    return F.gelu(ctx.input(0), approximate=approximate)


@op("Swish")
def swish(ctx: NodeCtx):
    x = ctx.input(0)
    return x * torch.sigmoid(ctx.attr("alpha", 1.0) * x)


@op("Shrink")
def shrink(ctx: NodeCtx):
    x = ctx.input(0)
    lambd, bias = ctx.attr("lambd", 0.5), ctx.attr("bias", 0.0)
    zero = torch.zeros_like(x)
    out = torch.where(x < -lambd, x + bias, torch.where(x > lambd, x - bias, zero))
    return out.to(x.dtype)


@op("PRelu")
def prelu(ctx: NodeCtx):
    x, slope = ctx.input(0), ctx.input(1)
    if slope.dim() == 1 and x.dim() > 2 and slope.numel() == x.shape[1] > 1:
        try:
            torch.broadcast_shapes(tuple(x.shape), tuple(slope.shape))
            channel = ctx.opset < 7
        except RuntimeError:
            channel = True
        if channel:  # opset 6 and older: one slope per channel
            slope = slope.reshape(-1, *([1] * (x.dim() - 2)))
    return torch.where(x < 0, x * slope, x)


# -- binary and variadic ----------------------------------------------------------------

_BINARY = {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}


def _binary(fn):
    return lambda ctx: fn(ctx.input(0), ctx.input(1))


for _name, _fn in _BINARY.items():
    op(_name)(_binary(_fn))


@op("Div")
def div(ctx: NodeCtx):
    a, b = ctx.input(0), ctx.input(1)
    if a.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")  # C semantics, as onnxruntime


@op("Pow")
def pow_(ctx: NodeCtx):
    x, y = ctx.input(0), ctx.input(1)
    if x.is_floating_point() and y.is_floating_point() and y.dtype != x.dtype:
        y = y.to(x.dtype)
    out = torch.pow(x, y)
    return out if out.dtype == x.dtype else out.to(x.dtype)


@op("Mod")
def mod(ctx: NodeCtx):
    a, b = ctx.input(0), ctx.input(1)
    if ctx.attr("fmod", 0):
        return torch.fmod(a, b)
    return torch.remainder(a, b)


@op("BitShift")
def bit_shift(ctx: NodeCtx):
    a, b = ctx.input(0), ctx.input(1)
    direction = ctx.attr("direction", "")
    if direction == "LEFT":
        return torch.bitwise_left_shift(a, b)
    if direction == "RIGHT":
        return torch.bitwise_right_shift(a, b)
    raise ctx.unsupported(f"direction={direction!r}")


def _variadic(fn):
    def convert(ctx: NodeCtx):
        xs = [x for x in ctx.inputs() if x is not None]
        return functools.reduce(fn, xs)

    return convert


op("Max")(_variadic(torch.maximum))
op("Min")(_variadic(torch.minimum))
op("Sum")(_variadic(torch.add))


@op("Mean")
def mean(ctx: NodeCtx):
    xs = [x for x in ctx.inputs() if x is not None]
    return functools.reduce(torch.add, xs) / len(xs)


@op("Where")
def where(ctx: NodeCtx):
    return torch.where(ctx.input(0), ctx.input(1), ctx.input(2))


@op("Clip")
def clip(ctx: NodeCtx):
    x = ctx.input(0)
    if ctx.opset < 11:
        lo = ctx.attr("min", -math.inf)
        hi = ctx.attr("max", math.inf)
        return torch.clamp(x, lo, hi)
    lo, hi = ctx.input(1), ctx.input(2)
    if lo is None and hi is None:
        return x
    if lo is not None and hi is not None:
        # min > max gives max everywhere (numpy's clip)
        return torch.minimum(torch.maximum(x, lo), hi)
    return torch.clamp(x, lo, hi)


# -- types ----------------------------------------------------------------------------


def cast_to(x: torch.Tensor, dtype: torch.dtype, saturate: bool = True) -> torch.Tensor:
    """ONNX Cast, float8 saturation rules included."""
    if x.dtype == dtype:
        return x
    if dtype in dtypes.FLOAT8 and x.is_floating_point():
        if saturate:  # +-inf and out-of-range values go to +-max
            limit = torch.finfo(dtype).max
            return x.clamp(-limit, limit).to(dtype)
        if dtype == torch.float8_e4m3fn:
            # torch saturates e4m3fn; ONNX wants NaN beyond max + half an ulp (464)
            y = x.to(dtype)
            return torch.where(torch.abs(x) > 464.0, torch.full_like(y, float("nan")), y)
    if dtype == torch.bool:
        return x != 0
    return x.to(dtype)


@op("Cast")
def cast(ctx: NodeCtx):
    return cast_to(ctx.input(0), ctx.dtype(ctx.attr("to")), bool(ctx.attr("saturate", 1)))


@op("CastLike")
def cast_like(ctx: NodeCtx):
    return cast_to(ctx.input(0), ctx.in_dtype(1), bool(ctx.attr("saturate", 1)))


@op("BitCast")
def bit_cast(ctx: NodeCtx):
    x = ctx.input(0)
    target = dtypes.torch_dtype(ctx.attr("to"), "BitCast")
    if target.itemsize != x.dtype.itemsize:
        raise ctx.unsupported(f"{x.dtype} and {target} differ in width")
    if x.dtype == torch.bool or target == torch.bool:
        return (x.view(torch.uint8) if x.dtype == torch.bool else x).view(target)
    return x.view(target)


@op("Constant")
def constant(ctx: NodeCtx):
    for name in ("value_string", "value_strings"):
        if ctx.has_attr(name):
            raise ctx.unsupported("string constants are not supported")
    if ctx.has_attr("sparse_value"):
        raise ctx.unsupported("sparse constants are not supported")
    if ctx.has_attr("value"):
        return ctx.attr("value")
    if ctx.has_attr("value_float"):
        return torch.tensor(ctx.attr("value_float"), dtype=torch.float32)
    if ctx.has_attr("value_floats"):
        return torch.tensor(ctx.attr("value_floats"), dtype=torch.float32)
    if ctx.has_attr("value_int"):
        return torch.tensor(ctx.attr("value_int"), dtype=torch.int64)
    if ctx.has_attr("value_ints"):
        return torch.tensor(ctx.attr("value_ints"), dtype=torch.int64)
    raise ctx.unsupported("no value attribute")


@op("Dropout")
def dropout(ctx: NodeCtx):
    x = ctx.input(0)
    if ctx.has(2):
        training = ctx.const(2, "training_mode")
        if bool(training.reshape(-1)[0]):
            raise ctx.unsupported("training_mode=True (random masks)")
    if ctx.output_used(1):
        return x, torch.ones(x.shape, dtype=torch.bool, device=x.device)
    return x
