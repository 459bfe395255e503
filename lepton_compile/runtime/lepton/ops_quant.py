"""Quantization ops: Quantize/DequantizeLinear (per-tensor, per-axis, blocked), the integer
and QLinear ops, emulated in float (exact: integer products accumulate in float64)."""

from __future__ import annotations

import torch

from lepton_compile.runtime.lepton import dtypes
from lepton_compile.runtime.lepton.lower import NodeCtx
from lepton_compile.runtime.lepton.ops_elementwise import cast_to
from lepton_compile.runtime.lepton.ops_nn import conv
from lepton_compile.runtime.lepton.registry import op

_RANGES = {
    torch.uint8: (0, 255),
    torch.int8: (-128, 127),
    torch.int16: (-32768, 32767),
    torch.int32: (-(2**31), 2**31 - 1),
}


def _broadcast_param(p: torch.Tensor, x: torch.Tensor, axis: int, block: int) -> torch.Tensor:
    """A scale/zero point reshaped to broadcast against x (per tensor, axis or block)."""
    if p.numel() == 1:
        return p.reshape(())
    axis = axis + x.dim() if axis < 0 else axis
    if block and p.dim() == x.dim():
        p = p.repeat_interleave(block, dim=axis).narrow(axis, 0, x.shape[axis])
        return p
    shape = [1] * x.dim()
    shape[axis] = p.numel()
    return p.reshape(shape)


def _exact(ctx: NodeCtx, i: int) -> torch.Tensor | None:
    """Input i with its declared float type (the compute-dtype policy would round scales)."""
    return ctx.input(i, exact=True)


@op("DequantizeLinear")
def dequantize_linear(ctx: NodeCtx):
    x, scale, zp = ctx.input(0), _exact(ctx, 1), ctx.input(2)
    axis, block = int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0))
    out_type = ctx.attr("output_dtype")
    out_dtype = ctx.dtype(out_type) if out_type else ctx.in_dtype(1)
    dx = x.to(torch.float32)
    if zp is not None and x.dtype not in dtypes.FLOAT8:
        dx = dx - _broadcast_param(zp, x, axis, block).to(torch.float32)
    y = dx * _broadcast_param(scale, x, axis, block).to(torch.float32)
    return y.to(out_dtype)


def quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zp: torch.Tensor | None,
    out: torch.dtype,
    saturate: bool = True,
) -> torch.Tensor:
    y = x.to(torch.float32) / scale.to(torch.float32)
    if out in dtypes.FLOAT8:
        return cast_to(y, out, saturate)
    y = torch.round(y)
    if zp is not None:
        y = y + zp.to(torch.float32)
    lo, hi = _RANGES[out]
    return y.clamp(lo, hi).to(out)


@op("QuantizeLinear")
def quantize_linear(ctx: NodeCtx):
    x, scale, zp = ctx.input(0), _exact(ctx, 1), ctx.input(2)
    axis, block = int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0))
    if zp is not None:
        out = zp.dtype
    elif ctx.attr("output_dtype"):
        out = ctx.dtype(ctx.attr("output_dtype"))
    else:
        out = torch.uint8
    if out not in _RANGES and out not in dtypes.FLOAT8:
        raise ctx.unsupported(f"output type {out}")
    scale_b = _broadcast_param(scale, x, axis, block)
    zp_b = None if zp is None else _broadcast_param(zp, x, axis, block)
    return quantize(x, scale_b, zp_b, out, bool(ctx.attr("saturate", 1)))


@op("DynamicQuantizeLinear")
def dynamic_quantize_linear(ctx: NodeCtx):
    x = ctx.input(0).to(torch.float32)
    hi = torch.clamp(x.max(), min=0.0)
    lo = torch.clamp(x.min(), max=0.0)
    scale = torch.where(hi == lo, torch.ones_like(hi), hi - lo) / 255.0
    zp = torch.round(torch.clamp(0.0 - lo / scale, 0.0, 255.0))
    y = torch.clamp(torch.round(x / scale) + zp, 0, 255).to(torch.uint8)
    return y, scale.to(ctx.in_dtype(0)), zp.to(torch.uint8)


def _minus(
    t: torch.Tensor, zp: torch.Tensor | None, shape: list[int] | None = None
) -> torch.Tensor:
    t = t.to(torch.float64)
    if zp is None:
        return t
    zp = zp.to(torch.float64)
    if shape is not None and zp.numel() > 1:
        zp = zp.reshape(shape)
    return t - zp


@op("MatMulInteger")
def matmul_integer(ctx: NodeCtx):
    a, b = ctx.input(0), ctx.input(1)
    a_zp, b_zp = ctx.input(2), ctx.input(3)
    a_shape = [-1, 1] if a_zp is not None and a_zp.numel() > 1 else None
    acc = torch.matmul(_minus(a, a_zp, a_shape), _minus(b, b_zp))
    return acc.to(torch.int32)


@op("ConvInteger")
def conv_integer(ctx: NodeCtx):
    x, w = ctx.input(0), ctx.input(1)
    w_shape = [-1] + [1] * (w.dim() - 1)
    # Padding holds the zero point, which is 0 after the subtraction: conv pads with 0.
    xf = _minus(x, ctx.input(2))
    return conv(ctx, xf, _minus(w, ctx.input(3), w_shape), None).to(torch.int32)


def _requantize(
    acc: torch.Tensor, multiplier: torch.Tensor, zp: torch.Tensor | None, out: torch.dtype
) -> torch.Tensor:
    y = acc * multiplier
    if zp is not None:
        y = y + zp.to(torch.float64)
    lo, hi = _RANGES[out]
    return torch.round(y.clamp(lo, hi)).to(out)


@op("QLinearMatMul")
def qlinear_matmul(ctx: NodeCtx):
    a, a_s, a_zp, b, b_s, b_zp, y_s, y_zp = (ctx.input(i, exact=True) for i in range(8))
    acc = torch.matmul(_minus(a, a_zp), _minus(b, b_zp))
    mult = a_s.to(torch.float64) * b_s.to(torch.float64) / y_s.to(torch.float64)
    out = y_zp.dtype if y_zp is not None else a.dtype
    y = acc * mult
    if y_zp is not None:
        y = y + y_zp.to(torch.float64)
    lo, hi = _RANGES[out]
    return torch.round(y).clamp(lo, hi).to(out)


@op("QLinearConv")
def qlinear_conv(ctx: NodeCtx):
    x, x_s, x_zp, w, w_s, w_zp, y_s, y_zp = (ctx.input(i, exact=True) for i in range(8))
    bias = ctx.input(8)
    w_shape = [-1] + [1] * (w.dim() - 1)
    acc = conv(ctx, _minus(x, x_zp), _minus(w, w_zp, w_shape), None)
    if bias is not None:
        acc = acc + bias.to(torch.float64).reshape(1, -1, *([1] * (acc.dim() - 2)))
    ws = w_s.to(torch.float64)
    if ws.numel() > 1:
        ws = ws.reshape(1, -1, *([1] * (acc.dim() - 2)))
    mult = x_s.to(torch.float64) * ws / y_s.to(torch.float64)
    out = y_zp.dtype if y_zp is not None else x.dtype
    return _requantize(acc, mult, y_zp, out)
