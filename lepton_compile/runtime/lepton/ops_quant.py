"""Quantization ops: Quantize/DequantizeLinear, DynamicQuantizeLinear, the integer ops
(MatMulInteger, ConvInteger) in int32 arithmetic, com.microsoft MatMulNBits (INT4 weights),
and the QLinear ops (emulated exactly in float64).

DequantizeLinear records its input's quantized form beside its float output, so that the
Conv / MatMul / Gemm reading it computes in integers or FP8 (quant_layers.py).
"""

from __future__ import annotations

import torch

from lepton_compile.runtime.lepton import dtypes, kernel_ops
from lepton_compile.runtime.lepton.lower import Const, NodeCtx, no_tracing
from lepton_compile.runtime.lepton.ops_elementwise import cast_to
from lepton_compile.runtime.lepton.ops_nn import conv
from lepton_compile.runtime.lepton.quant_layers import (
    FP8,
    Quantized,
    conv_geometry,
    dense,
    int_conv,
    int_mm,
    to_int8,
)
from lepton_compile.runtime.lepton.registry import op
from lepton_compile.runtime.lepton.routing import Route, shape_signature, unavailable

MS_DOMAIN = "com.microsoft"

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


def _record_quantized(ctx: NodeCtx, x: torch.Tensor, axis: int, block: int) -> None:
    """Keep (q, scale, zero point) beside the float output when consumers can use them."""
    if block or x.dtype not in (torch.int8, torch.uint8, FP8) or not ctx.is_const(1):
        return
    if ctx.has(2) and not ctx.is_const(2):
        return
    scale = ctx.const_tensor(1)
    if not scale.is_floating_point():
        return
    with no_tracing():
        scale = scale.to(torch.float32)
        zero = ctx.const_tensor(2) if ctx.has(2) else None
    per_axis = scale.numel() > 1 and x.dim() > 0
    ctx.quant_out = Quantized(
        q=x,
        scale=scale,
        zero=zero,
        axis=(axis + x.dim() if axis < 0 else axis) if per_axis else None,
        const=ctx.is_const(0),
    )


@op("DequantizeLinear")
def dequantize_linear(ctx: NodeCtx):
    x, scale, zp = ctx.input(0), _exact(ctx, 1), ctx.input(2)
    axis, block = int(ctx.attr("axis", 1)), int(ctx.attr("block_size", 0))
    _record_quantized(ctx, x, axis, block)
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


def _int8_zero(zp: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | int:
    """A zero point on the int8 scale of `to_int8` (int32; uint8 operands shift by 128)."""
    shift = 128 if dtype == torch.uint8 else 0
    if zp is None:
        return -shift
    return zp.to(torch.int32) - shift


def _record(ctx: NodeCtx, op_name: str, tensors: list, fn, args) -> torch.Tensor:
    """Run a layer with torch's integer route only, recorded for describe()."""
    router = ctx.router
    if router is None:
        return fn(*args)
    routes = {"torch": Route(fn, args, False), "triton": unavailable("no kernel for this op")}
    sig = shape_signature(op_name, tensors, **ctx.attr_values())
    return router.run(ctx, op_name, sig, routes)


@op("MatMulInteger")
def matmul_integer(ctx: NodeCtx):
    a, b = ctx.input(0), ctx.input(1)
    a_zp, b_zp = ctx.input(2), ctx.input(3)
    if ctx.folding or not ctx.is_const(1) or b.dim() != 2 or a.dim() < 2:
        a_shape = [-1, 1] if a_zp is not None and a_zp.numel() > 1 else None
        acc = torch.matmul(_minus(a, a_zp, a_shape), _minus(b, b_zp))
        return acc.to(torch.int32)
    if a_zp is not None and a_zp.numel() > 1:
        raise ctx.unsupported("per-row zero points of A")
    # int32 from int8 x int8 products; the zero points come out of the sum:
    #   sum (a - az)(b - bz) = a @ b - az * colsum(b) - bz * rowsum(a) + K * az * bz
    k, n = b.shape
    with no_tracing():
        b_const = ctx.const_tensor(1)
        bz_const = ctx.const_tensor(3).reshape(-1) if ctx.has(3) and ctx.is_const(3) else None
        b8 = to_int8(b_const)
        bz = _int8_zero(bz_const, b_const.dtype)
        colsum = b8.to(torch.int32).sum(dim=0)
        has_bz = bool(torch.as_tensor(bz).any())
    if ctx.has(3) and bz_const is None:
        raise ctx.unsupported("B's zero point must be known at lowering time")
    lift = ctx.lowering.lift
    t_b = lift(Const(b8), exact=True)
    t_colsum = lift(Const(colsum), exact=True)
    t_bz = lift(Const(torch.as_tensor(bz, dtype=torch.int32).expand(n).contiguous()), exact=True)

    def fn(a, a_zp, t_b, t_colsum, t_bz):
        a8 = to_int8(dense(a)).reshape(-1, k)
        az = _int8_zero(a_zp, a.dtype)
        acc = int_mm(a8, t_b)
        acc = acc - (az.reshape(()) if isinstance(az, torch.Tensor) else az) * t_colsum
        if has_bz:
            acc = acc - a8.to(torch.int32).sum(dim=1, keepdim=True) * t_bz
            acc = acc + k * (az.reshape(()) if isinstance(az, torch.Tensor) else az) * t_bz
        return acc.reshape(*a.shape[:-1], n)

    return _record(ctx, "MatMulInteger", [a, b], fn, (a, a_zp, t_b, t_colsum, t_bz))


@op("ConvInteger")
def conv_integer(ctx: NodeCtx):
    x, w = ctx.input(0), ctx.input(1)
    if ctx.folding or not ctx.is_const(1) or x.dim() != 4 or (ctx.has(3) and not ctx.is_const(3)):
        w_shape = [-1] + [1] * (w.dim() - 1)
        # Padding holds the zero point, which is 0 after the subtraction: conv pads with 0.
        xf = _minus(x, ctx.input(2))
        return conv(ctx, xf, _minus(w, ctx.input(3), w_shape), None).to(torch.int32)
    with no_tracing():
        w_const = ctx.const_tensor(1)
        w8 = to_int8(w_const)
        wz_const = ctx.const_tensor(3).reshape(-1) if ctx.has(3) else None
        wz = _int8_zero(wz_const, w_const.dtype)
        cout = w8.shape[0]
        w_zero = torch.as_tensor(wz, dtype=torch.int32).expand(cout).contiguous()
    g = conv_geometry(ctx, x.shape, w8.shape)

    def lift(t: torch.Tensor) -> torch.Tensor:
        return ctx.lowering.lift(Const(t), exact=True)

    def fn(x, x_zp):
        xz = _int8_zero(x_zp, x.dtype)
        return int_conv(to_int8(x), xz, w8, w_zero, g, lift)

    return _record(ctx, "ConvInteger", [x, w], fn, (x, ctx.input(2)))


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


# ---------------------------------------------------------------------------------------
# com.microsoft MatMulNBits: INT4 block-quantized weights.


def _unpack_nibbles(packed: torch.Tensor, count: int) -> torch.Tensor:
    """(rows, bytes) uint8 -> (rows, count) values 0..15, the low nibble first."""
    lo, hi = packed & 0xF, packed >> 4
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)[:, :count]


@op("MatMulNBits", domain=MS_DOMAIN)
def matmul_nbits(ctx: NodeCtx):
    """Y = A @ dequantize(B)^T (+ bias): our INT4 kernel, or the weight dequantized at load."""
    a = ctx.input(0)
    k, n = int(ctx.attr("K")), int(ctx.attr("N"))
    bits, block = int(ctx.attr("bits", 4)), int(ctx.attr("block_size", 32))
    if bits != 4:
        raise ctx.unsupported(f"bits={bits} (only 4)")
    if ctx.has(4):
        raise ctx.unsupported("g_idx (act-order) input")
    for i in (1, 2, 3):
        if ctx.has(i) and not ctx.is_const(i):
            raise ctx.unsupported(f"input {i} must be known at lowering time")
    n_blocks = -(-k // block)
    with no_tracing():
        packed = ctx.const_tensor(1)
        if packed.dtype != torch.uint8:
            raise ctx.unsupported(f"B of type {packed.dtype} (uint8 only)")
        packed = packed.reshape(n, n_blocks * block // 2).contiguous()
        scales = ctx.const_tensor(2).reshape(n, n_blocks).contiguous()
        zeros = None
        if ctx.has(3):
            zp = ctx.const_tensor(3)
            if zp.dtype == torch.uint8:  # packed two per byte, per row of blocks
                zeros = _unpack_nibbles(zp.reshape(n, -1), n_blocks).to(scales.dtype)
            else:
                zeros = zp.reshape(n, n_blocks).to(scales.dtype)
        q = _unpack_nibbles(packed, n_blocks * block).to(torch.float32)
        s = scales.float().repeat_interleave(block, dim=1)
        z = zeros.float().repeat_interleave(block, dim=1) if zeros is not None else 8.0
        w_kn = ((q - z) * s)[:, :k].t().contiguous()  # (K, N) float32
    bias = ctx.input(5)
    out_dtype = a.dtype
    w_t = ctx.lowering.lift(Const(w_kn))  # the compute dtype, like any float weight

    def torch_fn(a, w, bias):
        y = torch.matmul(a, w)
        return y + bias if bias is not None else y

    routes = {"torch": Route(torch_fn, (a, w_t, bias), False)}
    router = ctx.router
    reason = router.float_unavailable(a.dtype) if router is not None else "no router"
    if reason is None and a.dim() < 2:
        reason = "A must be at least 2-D"
    if reason is None:
        lift = ctx.lowering.lift
        t_packed = lift(Const(packed), exact=True)
        t_scales = lift(Const(scales))
        t_zeros = lift(Const(zeros)) if zeros is not None else None

        def triton_fn(a, packed, scales, zeros, bias):
            if a.stride(-1) != 1:
                a = a.contiguous()
            scales = scales.to(a.dtype)
            zeros = zeros.to(a.dtype) if zeros is not None else None
            epi = ("none", [], "none", [])
            return kernel_ops.int4_gemm(
                a, packed, scales, zeros, bias, None, block, *epi, out_dtype
            )

        routes["triton"] = Route(triton_fn, (a, t_packed, t_scales, t_zeros, bias), True)
    else:
        routes["triton"] = unavailable(reason)
    router = ctx.router
    if router is None:
        return torch_fn(a, w_t, bias)
    sig = shape_signature("MatMulNBits", [a, ctx.input(1)], K=k, N=n, block_size=block)
    return router.run(ctx, "MatMulNBits", sig, routes)
