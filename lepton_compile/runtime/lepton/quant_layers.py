"""Quantized layers in integer and FP8 arithmetic: QDQ Conv/MatMul/Gemm, ConvInteger, MatMulInteger.

A layer of a QDQ model reads DequantizeLinear outputs; the DequantizeLinear converter records
their quantized form (`Quantized`: q, scale, zero point, axis) beside the float value, and
the Conv / MatMul / Gemm converters compute from that form instead of the float one when
the activation is per-tensor and the weight a constant (per-tensor or per output channel):

    INT8  acc = sum_k (a_q - a_zero)(w_q - w_zero), in int32 from int8 x int8 products
          (torch._int_mm, or our W8A8 Triton kernel), then y = acc * a_scale * w_scale + bias
    FP8   acc = a_q @ w_q in FP8 with fp32 accumulation (torch._scaled_mm, or our FP8
          kernel), then y = acc * a_scale * w_scale + bias

Convolutions become GEMMs over im2col rows (padded with the zero point, so padding
contributes nothing, as in ONNX where the float input is padded with zeros); depthwise and
grouped int8 convs accumulate per tap in int32. uint8 operands are shifted to int8 (x - 128
with the zero point shifted alike): the products are the same. The results follow the QDQ
graph's float semantics up to the float rounding of one scale multiply; they are exact
where ONNX's integer ops (MatMulInteger, ConvInteger) define int32 outputs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from lepton_compile.runtime.lepton import kernel_ops
from lepton_compile.runtime.lepton.lower import Const, NodeCtx, no_tracing
from lepton_compile.runtime.lepton.ops_nn import _ints, explicit_pads
from lepton_compile.runtime.lepton.routing import Route, shape_signature, unavailable

FP8 = torch.float8_e4m3fn
INT8_TYPES = (torch.int8, torch.uint8)
# Grouped (not depthwise) int8 convs run one GEMM per group up to this many groups.
MAX_GROUP_LOOP = 64


@dataclasses.dataclass(eq=False)
class Quantized:
    """x = (q - zero) * scale: the quantized form of a DequantizeLinear output.

    `q` is traced (an activation) or a CPU constant (a weight); `scale` and `zero` are CPU
    constants, one value or one per index of `axis`.
    """

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    axis: int | None
    const: bool

    @property
    def kind(self) -> str:
        if self.q.dtype in INT8_TYPES:
            return "int8"
        return "fp8" if self.q.dtype == FP8 else "other"

    @property
    def per_tensor(self) -> bool:
        return self.scale.numel() == 1 and (self.zero is None or self.zero.numel() == 1)

    def scalar_scale(self) -> float:
        return float(self.scale.reshape(-1)[0])

    def zero_int(self) -> int:
        """The per-tensor zero point on the int8 scale (uint8 values shift by -128)."""
        z = int(self.zero.reshape(-1)[0]) if self.zero is not None and self.kind == "int8" else 0
        return z - 128 if self.q.dtype == torch.uint8 else z


def dense(t: torch.Tensor) -> torch.Tensor:
    """A row-major copy, recorded unconditionally.

    A traced tensor's strides are what fake tensors predict; a real kernel (a CPU cat of
    channels-last inputs, say) may lay its output out otherwise. A reshape that the trace
    recorded as a view of the predicted layout then fails at run time. A clone to the
    contiguous format is recorded whatever the prediction and gives that layout for real,
    so reshapes after it are safe. The tensors here are 1-byte activations: a cheap copy.
    """
    return t.clone(memory_format=torch.contiguous_format)


def to_int8(q: torch.Tensor) -> torch.Tensor:
    """uint8 -> int8 by subtracting 128 (exact; the zero point shifts alike), int8 as is."""
    if q.dtype == torch.uint8:
        return (q.to(torch.int16) - 128).to(torch.int8)
    return q


def _channel_values(t: torch.Tensor | None, n: int, dtype: torch.dtype) -> torch.Tensor | None:
    """A per-tensor or per-channel constant as n values (None stays None)."""
    if t is None:
        return None
    flat = t.reshape(-1).to(dtype)
    return flat.expand(n).clone() if flat.numel() == 1 else flat


# ---------------------------------------------------------------------------------------
# Integer and FP8 matrix products (torch's kernels), with the shapes CUDA's libraries want.


def int_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """int8 (M, K) @ int8 (K, N) -> int32, torch._int_mm (CUDA: padded to what cuBLAS takes)."""
    if a.device.type != "cuda":
        return torch._int_mm(a, b)
    m, k = a.shape
    n = b.shape[1]
    # cuBLASLt's int8 GEMM: M > 16, K and N multiples of 8. Zero padding adds nothing.
    pm, pk, pn = max(17, m), -(-k // 8) * 8, -(-n // 8) * 8
    if (pm, pk, pn) != (m, k, n):
        a = F.pad(a, (0, pk - k, 0, pm - m))
        b = F.pad(b, (0, pn - n, 0, pk - k))
    return torch._int_mm(a, b)[:m, :n]


def scaled_mm(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor) -> torch.Tensor:
    """FP8 (M, K) @ FP8 (K, N) * a_scale -> fp32, torch._scaled_mm (b column-major)."""
    one = torch.ones((), dtype=torch.float32, device=a.device)
    if a.device.type == "cuda":
        m, k = a.shape
        n = b.shape[1]
        pk, pn = -(-k // 16) * 16, -(-n // 16) * 16
        if (pk, pn) != (k, n):  # cuBLASLt FP8: K and N multiples of 16
            a = _pad_fp8(a, (0, pk - k))
            b = _pad_fp8(b.t(), (0, pk - k, 0, pn - n)).t()
        y = torch._scaled_mm(a, b, scale_a=a_scale, scale_b=one, out_dtype=torch.float32)
        return y[:m, :n]
    return torch._scaled_mm(a, b, scale_a=a_scale, scale_b=one, out_dtype=torch.float32)


def _pad_fp8(t: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    # FP8 tensors have no arithmetic: pad the bytes (0x00 is +0.0).
    return F.pad(t.contiguous().view(torch.uint8), tuple(pad)).view(FP8)


# ---------------------------------------------------------------------------------------
# im2col on NHWC rows, K ordered (r, s, c) with c fastest.


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
    kernel: tuple[int, int]
    strides: tuple[int, int]
    begin: tuple[int, int]
    end: tuple[int, int]
    dilations: tuple[int, int]
    group: int

    def out_size(self, h: int, w: int) -> tuple[int, int]:
        (r, s), (sh, sw), (dh, dw) = self.kernel, self.strides, self.dilations
        p = (h + self.begin[0] + self.end[0] - dh * (r - 1) - 1) // sh + 1
        q = (w + self.begin[1] + self.end[1] - dw * (s - 1) - 1) // sw + 1
        return p, q


def conv_geometry(ctx: NodeCtx, x_shape: Sequence[int], w_shape: Sequence[int]) -> ConvGeometry:
    kernel = list(w_shape[2:])
    strides = _ints(ctx, "strides", 2, 1)
    dilations = _ints(ctx, "dilations", 2, 1)
    begin, end = explicit_pads(ctx, x_shape[2:], kernel, strides, dilations)
    return ConvGeometry(
        (kernel[0], kernel[1]),
        (strides[0], strides[1]),
        (begin[0], begin[1]),
        (end[0], end[1]),
        (dilations[0], dilations[1]),
        int(ctx.attr("group", 1)),
    )


def im2col(x: torch.Tensor, g: ConvGeometry, pad_value: int = 0) -> torch.Tensor:
    """(N, C, H, W) 1-byte tensor -> (N * P * Q, R * S * C) rows of conv patches.

    Padding takes `pad_value` (for FP8, pass the uint8 view: byte 0 is +0.0).
    """
    n, c, h, w = x.shape
    p, q = g.out_size(h, w)
    (r, s), (sh, sw), (dh, dw) = g.kernel, g.strides, g.dilations
    x = dense(x.permute(0, 2, 3, 1))  # NHWC rows, the same layout in the trace and for real
    if any(g.begin) or any(g.end):
        pads = (0, 0, g.begin[1], g.end[1], g.begin[0], g.end[0])
        x = F.pad(x, pads, value=pad_value)
    if (r, s) == (1, 1):
        x = x[:, : (p - 1) * sh + 1 : sh, : (q - 1) * sw + 1 : sw, :]
        return x.reshape(n * p * q, c)
    span_h, span_w = dh * (r - 1) + 1, dw * (s - 1) + 1
    patches = x.unfold(1, span_h, sh).unfold(2, span_w, sw)  # (N, P', Q', C, span_h, span_w)
    patches = patches[:, :p, :q, :, ::dh, ::dw]
    return patches.permute(0, 1, 2, 4, 5, 3).reshape(n * p * q, r * s * c)


def weight_rows(w: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, R, S) -> (C_out, R * S * C_in): rows in im2col's K order."""
    return w.permute(0, 2, 3, 1).reshape(w.shape[0], -1).contiguous()


# ---------------------------------------------------------------------------------------
# The GEMM step of a quantized layer: routes for the router.


def _lift(ctx: NodeCtx, t: torch.Tensor) -> torch.Tensor:
    return ctx.lowering.lift(Const(t), exact=True)


def _run(ctx: NodeCtx, op: str, tensors: list, routes: dict[str, Route]) -> torch.Tensor:
    router = ctx.router
    if router is None:
        r = routes["torch"]
        return r.fn(*r.args)
    sig = shape_signature(op, tensors, **ctx.attr_values())
    return router.run(ctx, op, sig, routes)


def int8_gemm(
    ctx: NodeCtx,
    op: str,
    a8: torch.Tensor,
    a_zero: int,
    a_scale: float,
    w_nk: torch.Tensor,
    w_zero: torch.Tensor | None,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """(a8 - a_zero) @ (w - w_zero)^T * a_scale * w_scale + bias, a8 (M, K) traced int8.

    w_nk (N, K) int8, w_zero (N,) int (or None), w_scale (N,) and bias (N,): CPU constants.
    """
    with no_tracing():
        n, k = w_nk.shape
        colsum = w_nk.to(torch.int32).sum(dim=1)
        wz = w_zero.to(torch.int32) if w_zero is not None and bool(w_zero.any()) else None
        mult = (torch.tensor(a_scale, dtype=torch.float64) * w_scale.double()).float()
        # Folded into the int32 accumulator: a_zero * sum_k w[k, n] (- K a_zero w_zero[n]).
        corr = a_zero * colsum
        if wz is not None:
            corr = corr - k * a_zero * wz
        bias32 = bias.float() if bias is not None else None
    w_kn = _lift(ctx, w_nk).t()
    t_corr = _lift(ctx, corr.to(torch.int32)) if a_zero or wz is not None else None
    t_wz = _lift(ctx, wz) if wz is not None else None
    t_mult = _lift(ctx, mult)
    t_bias = _lift(ctx, bias32) if bias32 is not None else None

    def torch_fn(a8, w_kn, corr, wz, mult, bias):
        acc = int_mm(a8, w_kn)
        if corr is not None:
            acc = acc - corr
        if wz is not None:
            acc = acc - a8.to(torch.int32).sum(dim=1, keepdim=True) * wz
        y = acc.to(torch.float32) * mult
        if bias is not None:
            y = y + bias
        return y.to(out_dtype)

    routes = {"torch": Route(torch_fn, (a8, w_kn, t_corr, t_wz, t_mult, t_bias), False)}
    router = ctx.router
    reason = router.triton_unavailable() if router is not None else "no router"
    if reason is None and wz is not None:
        reason = "weight zero points (the W8A8 kernel takes symmetric weights)"
    if reason is None:
        with no_tracing():
            # The activation zero point as a bias: -a_scale * w_scale * a_zero * colsum.
            eff = -(mult.double() * corr.double()).float()
            if bias32 is not None:
                eff = eff + bias32
            sa = torch.tensor([a_scale], dtype=torch.float32)
            sw = w_scale.float().contiguous()
        t_eff = _lift(ctx, eff) if (a_zero or bias32 is not None) else None

        def triton_fn(a8, w_kn, sa, sw, eff):
            return kernel_ops.scaled_gemm(
                a8, w_kn, sa, sw, eff, None, "w8a8", "none", [], "none", [], out_dtype
            )

        routes["triton"] = Route(triton_fn, (a8, w_kn, _lift(ctx, sa), _lift(ctx, sw), t_eff), True)
    else:
        routes["triton"] = unavailable(reason)
    return _run(ctx, op, [a8, w_kn], routes)


def fp8_gemm(
    ctx: NodeCtx,
    op: str,
    a8: torch.Tensor,
    a_scale: float,
    w_nk: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """a8 @ w^T * a_scale * w_scale + bias in FP8 (e4m3) with fp32 accumulation."""
    with no_tracing():
        sa = torch.tensor([a_scale], dtype=torch.float32)
        sw = w_scale.float().contiguous()
        bias32 = bias.float() if bias is not None else None
    w_kn = _lift(ctx, w_nk.contiguous()).t()
    t_sa, t_sw = _lift(ctx, sa), _lift(ctx, sw)
    t_bias = _lift(ctx, bias32) if bias32 is not None else None

    def torch_fn(a8, w_kn, sa, sw, bias):
        y = scaled_mm(a8.contiguous(), w_kn, sa.reshape(())) * sw
        if bias is not None:
            y = y + bias
        return y.to(out_dtype)

    routes = {"torch": Route(torch_fn, (a8, w_kn, t_sa, t_sw, t_bias), False)}
    router = ctx.router
    reason = router.triton_unavailable() if router is not None else "no router"
    if reason is None:
        arch = router.arch()
        if arch != "interpreter" and int(arch) < 89:
            reason = f"FP8 needs compute capability 8.9 or newer, this GPU is sm{arch}"
    if ctx.device.type == "cuda" and torch.cuda.get_device_capability(ctx.device) < (8, 9):
        routes["torch"] = unavailable("torch._scaled_mm needs compute capability 8.9")
    if reason is None:

        def triton_fn(a8, w_kn, sa, sw, bias):
            a8 = a8.contiguous()
            epi = ("none", [], "none", [])
            return kernel_ops.scaled_gemm(a8, w_kn, sa, sw, bias, None, "fp8", *epi, out_dtype)

        routes["triton"] = Route(triton_fn, (a8, w_kn, t_sa, t_sw, t_bias), True)
    else:
        routes["triton"] = unavailable(reason)
    if routes["torch"].unavailable and routes["triton"].unavailable:
        return None  # type: ignore[return-value]  # the float path computes it
    return _run(ctx, op, [a8, w_kn], routes)


# ---------------------------------------------------------------------------------------
# Integer convolutions (any group count) for ConvInteger and grouped QDQ convs.


def int_conv(
    x8: torch.Tensor,
    x_zero: int | torch.Tensor,
    w8: torch.Tensor,
    w_zero: torch.Tensor | None,
    g: ConvGeometry,
    lift: Any,
) -> torch.Tensor:
    """sum over taps of (x - x_zero)(w - w_zero), int32, (N, C_out, P, Q) (channels-last memory).

    x8 traced int8 (N, C, H, W), padded with zeros: the terms padding would add are taken
    out with constants (weight sums over the taps inside the image, per output pixel), so a
    zero point known only at run time works too. w8 (C_out, C_in/g, R, S) int8 and w_zero
    (C_out,) int32 are CPU constants; `lift` makes a constant a tensor of the program.
    """
    n, c, h, w = x8.shape
    cout, cin_g, r, s = w8.shape
    groups = g.group
    p, q = g.out_size(h, w)
    with no_tracing():
        # Which taps of each output pixel fall inside the image: a float64 conv of ones
        # (exact small integers), per output channel weighted by its weight sum per tap.
        ones = torch.ones((1, 1, h, w), dtype=torch.float64)
        ones = F.pad(ones, (g.begin[1], g.end[1], g.begin[0], g.end[0]))
        wsum_taps = w8.to(torch.float64).sum(dim=1, keepdim=True)  # (C_out, 1, R, S)
        ones_c = ones.expand(1, cout, -1, -1)
        valid_w = F.conv2d(ones_c, wsum_taps, None, g.strides, 0, g.dilations, cout)
        kernel = torch.ones((1, 1, r, s), dtype=torch.float64)
        taps = F.conv2d(ones, kernel, None, g.strides, 0, g.dilations)
        valid_w = valid_w[0].permute(1, 2, 0).round().to(torch.int32)  # (P, Q, C_out)
        count = (taps[0, 0].round().to(torch.int32) * cin_g)[..., None]  # (P, Q, 1)
        wz = w_zero.to(torch.int32) if w_zero is not None and bool(w_zero.any()) else None
        per = cout // groups
        w_rows = [weight_rows(w8[i * per : (i + 1) * per]) for i in range(groups)]
        ones_w = torch.ones_like(w8)
    depthwise = groups == c and cin_g == 1
    if depthwise:
        acc = _depthwise_taps(x8, w8, g, p, q, lift)  # (N, P, Q, C_out)
        rowsum = None
        if wz is not None:
            rowsum = _depthwise_taps(x8, ones_w, g, p, q, lift)
    else:
        cg = c // groups
        parts, sums = [], []
        for i in range(groups):
            xg = x8[:, i * cg : (i + 1) * cg] if groups > 1 else x8
            cols = im2col(xg, g, 0)
            parts.append(int_mm(cols, lift(w_rows[i]).t()))
            if wz is not None:
                sums.append(cols.to(torch.int32).sum(dim=1, keepdim=True))
        acc = torch.cat(parts, dim=1) if groups > 1 else parts[0]
        acc = acc.reshape(n, p, q, cout)
        rowsum = None
        if wz is not None:
            per_group = torch.cat(sums, dim=1).reshape(n, p, q, groups)
            rowsum = per_group.repeat_interleave(cout // groups, dim=3)
    xz: torch.Tensor | int = (
        x_zero.to(torch.int32).reshape(()) if isinstance(x_zero, torch.Tensor) else x_zero
    )
    if isinstance(xz, torch.Tensor) or xz:
        acc = acc - xz * lift(valid_w)
    if wz is not None:
        assert rowsum is not None
        t_wz = lift(wz)
        acc = acc - rowsum * t_wz
        acc = acc + xz * lift(count) * t_wz
    return acc.permute(0, 3, 1, 2)


def _depthwise_taps(
    x8: torch.Tensor, w8: torch.Tensor, g: ConvGeometry, p: int, q: int, lift: Any
) -> torch.Tensor:
    """Depthwise int32 accumulation over the R x S taps: (N, P, Q, C_out)."""
    n, c, _, _ = x8.shape
    cout, _, r, s = w8.shape
    mult = cout // c
    (sh, sw), (dh, dw) = g.strides, g.dilations
    x = dense(x8.permute(0, 2, 3, 1))  # NHWC: channels contiguous in the products
    if any(g.begin) or any(g.end):
        x = F.pad(x, (0, 0, g.begin[1], g.end[1], g.begin[0], g.end[0]))
    x = x.to(torch.int32)
    if mult > 1:
        x = x.repeat_interleave(mult, dim=3)
    with no_tracing():
        taps = w8.to(torch.int32).reshape(cout, r * s).t().contiguous()  # (R*S, C_out)
    t_taps = lift(taps)
    acc = None
    for i in range(r):
        for j in range(s):
            xs = x[
                :, i * dh : i * dh + (p - 1) * sh + 1 : sh, j * dw : j * dw + (q - 1) * sw + 1 : sw
            ]
            term = xs * t_taps[i * s + j]
            acc = term if acc is None else acc + term
    assert acc is not None
    return acc


# ---------------------------------------------------------------------------------------
# QDQ layers: Conv, MatMul and Gemm reading DequantizeLinear outputs.


def _operands(ctx: NodeCtx) -> tuple[Quantized, Quantized] | None:
    """(activation, weight) quantized forms if this node can compute on them, else None."""
    if ctx.folding:
        return None
    qa, qw = ctx.quant(0), ctx.quant(1)
    if not isinstance(qa, Quantized) or not isinstance(qw, Quantized):
        return None
    if qa.const or not qw.const or not qa.per_tensor:
        return None
    if qa.kind != qw.kind or qa.kind not in ("int8", "fp8"):
        return None
    return qa, qw


def _weight_params(qw: Quantized, axis: int, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(scale (n,), zero (n,) on the int8 scale or None) of a weight, per output channel."""
    if not qw.per_tensor and qw.axis != axis:
        raise ValueError("per-axis weight scales along a non-output axis")
    scale = _channel_values(qw.scale, n, torch.float32)
    assert scale is not None
    zero = None
    if qw.kind == "int8" and qw.zero is not None:
        zero = _channel_values(qw.zero, n, torch.int32)
        if zero is not None and qw.q.dtype == torch.uint8:
            zero = zero - 128
    return scale, zero


def _bias(ctx: NodeCtx, i: int | None, n: int) -> torch.Tensor | None | bool:
    """A constant bias as n values (CPU), None when absent, False when it cannot be used."""
    if i is None or not ctx.has(i):
        return None
    if not ctx.is_const(i):
        return False
    b = ctx.const_tensor(i).reshape(-1)
    if b.numel() not in (1, n) or not b.is_floating_point():
        return False
    return b.expand(n).float().contiguous()


@dataclasses.dataclass
class _Layer:
    """The constants of a quantized layer, prepared outside the trace."""

    a_scale: float
    a_zero: int
    w_nk: torch.Tensor  # (N, K) int8 or FP8 rows in the activation's K order
    w_scale: torch.Tensor  # (N,) fp32
    w_zero: torch.Tensor | None  # (N,) int32 on the int8 scale
    bias: torch.Tensor | None  # (N,) fp32

    def gemm(
        self, ctx: NodeCtx, op: str, rows: torch.Tensor, kind: str, out_dtype: torch.dtype
    ) -> torch.Tensor | None:
        """The layer's GEMM on (M, K) activation rows (traced, of the layer's kind), (M, N)
        in out_dtype; None for FP8 when neither route can run it (the float path then)."""
        a_scale, w, w_scale, bias = self.a_scale, self.w_nk, self.w_scale, self.bias
        if kind == "fp8":
            return fp8_gemm(ctx, op, rows, a_scale, w, w_scale, bias, out_dtype)
        a_zero, w_zero = self.a_zero, self.w_zero
        return int8_gemm(ctx, op, rows, a_zero, a_scale, w, w_zero, w_scale, bias, out_dtype)


def _prepare(
    ctx: NodeCtx,
    qa: Quantized,
    qw: Quantized,
    w_nk: torch.Tensor,
    axis: int,
    bias_index: int | None,
) -> _Layer | None:
    with no_tracing():
        n = w_nk.shape[0]
        try:
            w_scale, w_zero = _weight_params(qw, axis, n)
        except ValueError:
            return None
        bias = _bias(ctx, bias_index, n)
        if bias is False:
            return None
        assert bias is None or isinstance(bias, torch.Tensor)
        w = to_int8(w_nk) if qw.kind == "int8" else w_nk
        return _Layer(qa.scalar_scale(), qa.zero_int(), w.contiguous(), w_scale, w_zero, bias)


def quantized_conv(ctx: NodeCtx) -> torch.Tensor | None:
    """Conv(DQ(x), DQ(w), b) on integers / FP8, or None to leave it to the float path."""
    ops = _operands(ctx)
    if ops is None:
        return None
    qa, qw = ops
    x = qa.q
    if x.dim() != 4 or qw.q.dim() != 4:
        return None
    g = conv_geometry(ctx, x.shape, qw.q.shape)
    n, c, h, w = x.shape
    cout = qw.q.shape[0]
    p, q = g.out_size(h, w)
    out_dtype = ctx.in_dtype(0)
    if qa.kind == "fp8" and g.group != 1:
        return None  # no FP8 elementwise arithmetic for depthwise taps: the float path
    depthwise = g.group == c and qw.q.shape[1] == 1
    if g.group != 1 and not depthwise and g.group > MAX_GROUP_LOOP:
        return None
    with no_tracing():
        rows = weight_rows(qw.q) if g.group == 1 else qw.q
    layer = _prepare(ctx, qa, qw, rows, 0, 2)
    if layer is None:
        return None
    if qa.kind == "fp8" or g.group == 1:
        if qa.kind == "fp8":  # padded through the uint8 view: byte 0 is +0.0
            cols = im2col(x.view(torch.uint8), g, 0).view(FP8)
        else:
            cols = im2col(to_int8(x), g, layer.a_zero)
        y = layer.gemm(ctx, "QConv", cols, qa.kind, out_dtype)
        return None if y is None else y.reshape(n, p, q, cout).permute(0, 3, 1, 2)
    a8 = to_int8(x)

    def lift(t: torch.Tensor) -> torch.Tensor:
        return _lift(ctx, t)

    shape = (1, cout, 1, 1)
    with no_tracing():
        mult = (torch.tensor(layer.a_scale, dtype=torch.float64) * layer.w_scale.double()).float()
        mult = mult.reshape(shape)
        bias = layer.bias.reshape(shape) if layer.bias is not None else None
    t_mult = lift(mult)
    t_bias = lift(bias) if bias is not None else None
    w8, w_zero, a_zero = layer.w_nk, layer.w_zero, layer.a_zero

    def torch_fn(a8, mult, bias):
        acc = int_conv(a8, a_zero, w8, w_zero, g, lift)
        y = acc.to(torch.float32) * mult
        if bias is not None:
            y = y + bias
        return y.to(out_dtype)

    what = "depthwise" if depthwise else "grouped"
    routes = {
        "torch": Route(torch_fn, (a8, t_mult, t_bias), False),
        "triton": unavailable(f"no {what} int8 kernel: int32 taps with torch ops"),
    }
    return _run(ctx, "QConv", [a8, w8], routes)


def quantized_matmul(ctx: NodeCtx, bias_index: int | None = None) -> torch.Tensor | None:
    """MatMul(DQ(a), DQ(w)) (or Gemm with bias input `bias_index`) on integers / FP8."""
    ops = _operands(ctx)
    if ops is None:
        return None
    qa, qw = ops
    a = qa.q
    trans_b = ctx.op_type == "Gemm" and bool(ctx.attr("transB", 0))
    if ctx.op_type == "Gemm":
        if ctx.attr("transA", 0) or float(ctx.attr("alpha", 1.0)) != 1.0:
            return None
        if ctx.has(2) and float(ctx.attr("beta", 1.0)) != 1.0:
            return None
    if a.dim() < 2 or qw.q.dim() != 2:
        return None
    with no_tracing():
        w_nk = qw.q if trans_b else qw.q.t()
    n, k = w_nk.shape
    if a.shape[-1] != k:
        return None
    layer = _prepare(ctx, qa, qw, w_nk, 0 if trans_b else 1, bias_index)
    if layer is None:
        return None
    a2 = dense(a).reshape(-1, k)
    rows = a2 if qa.kind == "fp8" else to_int8(a2)
    y = layer.gemm(ctx, "Q" + ctx.op_type, rows, qa.kind, ctx.in_dtype(0))
    return None if y is None else y.reshape(*a.shape[:-1], n)


__all__ = [
    "FP8",
    "ConvGeometry",
    "Quantized",
    "conv_geometry",
    "dense",
    "im2col",
    "int8_gemm",
    "int_conv",
    "int_mm",
    "fp8_gemm",
    "quantized_conv",
    "quantized_matmul",
    "scaled_mm",
    "to_int8",
    "weight_rows",
]
