"""Conv2d on NHWC (channels-last) as an implicit GEMM -> fused ai.lepton epilogue.

    Y = cast(post_activation(activation(conv2d(X, W) + bias) + residual))

Implicit GEMM: rows are output pixels (n, p, q), columns output channels of one group,
K runs over (r, s, c) with c fastest, so every A tile row is a contiguous run of NHWC
channels. One loop over K-iterations (not nested r/s/c loops) keeps the software pipeline
full even when a (r, s) tap has a single channel block. Inputs with few channels per group
(the RGB stem, grouped convs) gather K flat instead of padding each tap's channels to a
block. Depthwise convs (groups == C) go to `depthwise_conv2d_kernel`: K is only R*S there,
so tensor cores would multiply mostly padding; it runs FMAs on channel-contiguous tiles.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from lepton_compile.kernels._common import (
    FLOAT_OUT,
    Arch,
    FusedOutput,
    cdiv,
    check_device,
    check_dtype,
    check_out_dtype,
    check_output_size,
    dedupe,
    device_facts,
    dot_upcast,
    epilogue_args,
    epilogue_reference,
    epilogue_store,
    fit_smem,
    grouped_tile,
    launch,
    make_configs,
    num_sms,
    pick_split_k,
    pinned_or_memo,
    scale_block_k,
    split_epilogue,
    splitk_range,
    store_partial,
)
from lepton_compile.kernels.configs import CONV_SM80, CONV_SM90, DEPTHWISE

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FLAT_BELOW = 32  # channels per group under which K is gathered flat over (r, s, c)


@triton.jit
def conv2d_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr, ws_ptr,
    N, H, W, P, Q, COUT, CIN_G, COUT_G,
    stride_xn, stride_xh, stride_xw, stride_xc, stride_wo, stride_wc, stride_wr, stride_ws,
    stride_rm, stride_rn, stride_ym, stride_yn,
    conv_stride_h, conv_stride_w, pad_h, pad_w, dil_h, dil_w,
    p0, p1, q0, q1,
    R: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, K_FLAT: tl.constexpr, EVEN_C: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, POST_ACT: tl.constexpr,
    DOT_MODE: tl.constexpr,
):  # fmt: skip
    M = N * P * Q
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, COUT_G, BLOCK_M, BLOCK_N, GROUP_M)
    g = tl.program_id(1)
    pid_k = tl.program_id(2)

    # Output pixels of this tile; rows past M wrap (their stores are masked).
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_safe = offs_m % M
    n_img = m_safe // (P * Q)
    pq = m_safe % (P * Q)
    h0 = (pq // Q) * conv_stride_h - pad_h
    w0 = (pq % Q) * conv_stride_w - pad_w
    x_rows = x_ptr + n_img * stride_xn
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    co = g * COUT_G + offs_n % COUT_G
    w_cols = w_ptr + co * stride_wo
    c_base = g * CIN_G
    offs_k = tl.arange(0, BLOCK_K)

    if K_FLAT:
        k_total = R * S * CIN_G
        k_iters = tl.cdiv(k_total, BLOCK_K)
    else:
        c_blocks = tl.cdiv(CIN_G, BLOCK_K)
        k_iters = R * S * c_blocks
    it_lo, it_hi = splitk_range(k_iters, pid_k, SPLIT_K)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    a_zero = tl.zeros((BLOCK_M, BLOCK_K), x_ptr.dtype.element_ty)
    b_zero = tl.zeros((BLOCK_K, BLOCK_N), w_ptr.dtype.element_ty)
    for it in range(it_lo, it_hi):
        if K_FLAT:
            kk = it * BLOCK_K + offs_k
            k_ok = kk < k_total
            c = kk % CIN_G
            rs = kk // CIN_G
            r = rs // S
            s = rs % S
            h = h0[:, None] + (r * dil_h)[None, :]
            w = w0[:, None] + (s * dil_w)[None, :]
            a_ok = k_ok[None, :] & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            a_ptrs = (
                x_rows[:, None] + h * stride_xh + w * stride_xw + (c_base + c)[None, :] * stride_xc
            )
            a = tl.load(a_ptrs, mask=a_ok, other=a_zero)
            b_ptrs = w_cols[None, :] + (c * stride_wc + r * stride_wr + s * stride_ws)[:, None]
            b = tl.load(b_ptrs, mask=k_ok[:, None], other=b_zero)
        else:
            rs = it // c_blocks
            c = (it % c_blocks) * BLOCK_K + offs_k
            r = rs // S
            s = rs % S
            h = h0 + r * dil_h
            w = w0 + s * dil_w
            row_ok = (h >= 0) & (h < H) & (w >= 0) & (w < W)
            a_ptrs = (
                x_rows[:, None]
                + (h * stride_xh + w * stride_xw)[:, None]
                + (c_base + c)[None, :] * stride_xc
            )
            b_ptrs = w_cols[None, :] + c[:, None] * stride_wc + (r * stride_wr + s * stride_ws)
            if EVEN_C:
                a = tl.load(a_ptrs, mask=row_ok[:, None], other=a_zero)
                b = tl.load(b_ptrs)
            else:
                c_ok = c < CIN_G
                a = tl.load(a_ptrs, mask=row_ok[:, None] & c_ok[None, :], other=a_zero)
                b = tl.load(b_ptrs, mask=c_ok[:, None], other=b_zero)
        if DOT_MODE == 1:
            acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
        else:
            acc = tl.dot(a, b, acc)

    if SPLIT_K == 1:
        # This group's columns only: offsets by g * COUT_G, masks on the group's width.
        bias_g = bias_ptr + g * COUT_G
        res_g = res_ptr + g * COUT_G * stride_rn
        y_g = y_ptr + g * COUT_G * stride_yn
        epi = (bias_g, res_g, stride_rm, stride_rn, y_g, stride_ym, stride_yn, p0, p1, q0, q1)
        epilogue_store(acc, offs_m, offs_n, M, COUT_G, epi, HAS_BIAS, ACT, HAS_RES, POST_ACT)
    else:  # split-K runs with groups == 1 only
        store_partial(acc, offs_m, offs_n, M, COUT, ws_ptr, pid_k)


@triton.jit
def depthwise_conv2d_kernel(
    x_ptr, w_ptr, bias_ptr, res_ptr, y_ptr,
    N, H, W, P, Q, COUT,
    stride_xn, stride_xh, stride_xw, stride_xc, stride_wo, stride_wr, stride_ws,
    stride_rm, stride_rn, stride_ym, stride_yn,
    conv_stride_h, conv_stride_w, pad_h, pad_w, dil_h, dil_w,
    p0, p1, q0, q1,
    R: tl.constexpr, S: tl.constexpr, MULT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, POST_ACT: tl.constexpr,
):  # fmt: skip
    """Output channel co reads input channel co // MULT; fp32 FMAs over the R*S taps."""
    M = N * P * Q
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    m_ok = offs_m < M
    c_ok = offs_c < COUT
    n_img = offs_m // (P * Q)
    pq = offs_m % (P * Q)
    h0 = (pq // Q) * conv_stride_h - pad_h
    w0 = (pq % Q) * conv_stride_w - pad_w
    ci = offs_c // MULT
    x_rows = x_ptr + n_img * stride_xn
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for r in tl.static_range(R):
        for s in tl.static_range(S):
            h = h0 + r * dil_h
            w = w0 + s * dil_w
            ok = m_ok & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            x_ptrs = (
                x_rows[:, None] + (h * stride_xh + w * stride_xw)[:, None] + ci[None, :] * stride_xc
            )
            xv = tl.load(x_ptrs, mask=ok[:, None] & c_ok[None, :], other=0.0).to(tl.float32)
            wv = tl.load(
                w_ptr + offs_c * stride_wo + r * stride_wr + s * stride_ws, mask=c_ok, other=0.0
            )
            acc += xv * wv.to(tl.float32)[None, :]
    epi = (bias_ptr, res_ptr, stride_rm, stride_rn, y_ptr, stride_ym, stride_yn, p0, p1, q0, q1)
    epilogue_store(acc, offs_m, offs_c, M, COUT, epi, HAS_BIAS, ACT, HAS_RES, POST_ACT)


# ---------------------------------------------------------------------------------------
# Configs: the tables CONV_SM90 / CONV_SM80 (implicit GEMM) and DEPTHWISE in
# kernels/configs.py.

CONV_META = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M")
DW_META = ("BLOCK_M", "BLOCK_C")

_INTERPRETER = [(32, 32, 16, 2, 1, 4)]
_DW_INTERPRETER = [(16, 32, 1, 4)]


def get_configs(
    arch: Arch, m: int | None = None, pointwise: bool = True, elem_bytes: int = 2
) -> list[triton.Config]:
    """Implicit-GEMM configs for `arch`; m=None gives all (the compile gate's set).

    pointwise: the conv is 1x1 (where 8-warp tiles are allowed).
    """
    if arch == "interpreter":
        return make_configs(_INTERPRETER, CONV_META)
    table = CONV_SM90 if int(arch) >= 90 else CONV_SM80
    rows: list[tuple[int, ...]]
    if m is None:
        rows = [*table["large"], *table["small"]]
    else:
        rows = [*table["small" if m <= 1024 else "large"]]
    if pointwise and (m is None or m > 1024):
        rows += table["pointwise"]
    if elem_bytes > 2:
        rows = scale_block_k(rows, elem_bytes)
    return dedupe(make_configs(rows, CONV_META))


def get_depthwise_configs(arch: Arch) -> list[triton.Config]:
    rows = _DW_INTERPRETER if arch == "interpreter" else DEPTHWISE
    return make_configs(rows, DW_META)


def _fitted_configs(
    arch: Arch, m: int, pointwise: bool, elem: int, smem: int
) -> list[triton.Config]:
    """The autotuning set of one M bucket: get_configs, less those over the shared memory
    (the smallest when none fits, as for the GEMMs)."""
    configs = get_configs(arch, m, pointwise=pointwise, elem_bytes=elem)
    if arch == "interpreter":
        return configs
    return fit_smem(configs, smem, elem, elem)


CONV_TUNE_KEY = (
    "N",
    "H",
    "W",
    "P",
    "Q",
    "COUT",
    "CIN_G",
    "COUT_G",
    "R",
    "S",
    "SPLIT_K",
    "conv_stride_h",
    "conv_stride_w",
)
DW_TUNE_KEY = ("N", "H", "W", "P", "Q", "COUT", "R", "S", "MULT", "conv_stride_h", "conv_stride_w")


def _even_c(meta: dict) -> bool:
    return meta["CIN_G"] % meta["BLOCK_K"] == 0


_CONV_HEURISTICS = {"EVEN_C": _even_c}


def _conv_grid(meta: dict) -> tuple:
    m_all = meta["N"] * meta["P"] * meta["Q"]
    tiles = cdiv(m_all, meta["BLOCK_M"]) * cdiv(meta["COUT_G"], meta["BLOCK_N"])
    return (tiles, meta["COUT"] // meta["COUT_G"], meta["SPLIT_K"])


def _depthwise_grid(meta: dict) -> tuple:
    m_all = meta["N"] * meta["P"] * meta["Q"]
    return (cdiv(m_all, meta["BLOCK_M"]), cdiv(meta["COUT"], meta["BLOCK_C"]))


# ---------------------------------------------------------------------------------------
# Launchers.


def _pair(v: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v}")
    return v  # type: ignore[return-value]


def _pads(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, (pad_h, pad_w) or ONNX-order 4 values."""
    if isinstance(padding, int):
        return padding, padding, padding, padding
    p = tuple(int(x) for x in padding)
    if len(p) == 2:
        return p[0], p[1], p[0], p[1]
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, 2 or 4 values, got {p}")


def _out_size(size: int, k: int, stride: int, pad_lo: int, pad_hi: int, dil: int) -> int:
    return (size + pad_lo + pad_hi - dil * (k - 1) - 1) // stride + 1


def pack_depthwise_weight(weight: torch.Tensor) -> torch.Tensor:
    """The (C_out, 1, R, S) weight with (R, S, C_out) memory: contiguous per-tap channel loads.

    Do it once per model; `conv2d` takes either layout.
    """
    return weight.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)


def _prepare(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    stride: int | Sequence[int],
    padding: int | Sequence[int],
    dilation: int | Sequence[int],
    groups: int,
    epilogue: dict[str, Any],
    depthwise: bool = False,
) -> tuple[torch.device, tuple, dict[str, Any], FusedOutput]:
    """Checks shared by both conv kernels, then (device, dims, kernel arguments, output).

    dims: (n, c, h, w, cout, cin_g, r, s, p, q); the kernel arguments are the geometry both
    kernels take (sizes, strides, padding, dilation); Y is channels-last.
    """
    device = check_device({"x": x, "weight": weight, "bias": bias, "residual": residual})
    check_dtype("x", x, INPUT_DTYPES)
    if weight.dtype != x.dtype:
        raise ValueError(f"weight has dtype {weight.dtype}, expected x's dtype {x.dtype}")
    if x.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"x (N, C, H, W) and weight (C_out, C/groups, R, S) must be 4-D, "
            f"got {tuple(x.shape)} and {tuple(weight.shape)}"
        )
    n, c, h, w = x.shape
    cout, cin_g, r, s = weight.shape
    if groups < 1 or c % groups or cout % groups:
        raise ValueError(f"groups={groups} must divide C={c} and C_out={cout}")
    if cin_g != c // groups:
        raise ValueError(f"weight has {cin_g} input channels per group, expected {c // groups}")
    if x.stride(1) != 1 and c > 1:
        raise ValueError(
            "x must be channels-last (NHWC memory): x.contiguous(memory_format=torch.channels_last)"
        )
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pl, pb, pr = _pads(padding)
    if min(sh, sw, dh, dw) < 1 or min(pt, pl, pb, pr) < 0:
        raise ValueError("stride and dilation must be >= 1 and padding >= 0")
    p = _out_size(h, r, sh, pt, pb, dh)
    q = _out_size(w, s, sw, pl, pr, dw)
    if p < 1 or q < 1:
        raise ValueError(f"the output would be {p}x{q}: kernel larger than the padded input")
    check_output_size(n * cout * p * q)
    out_dtype, epi_spec = split_epilogue(epilogue, None)
    out_dtype = out_dtype or x.dtype
    check_out_dtype(out_dtype)
    if bias is not None:
        check_dtype("bias", bias, FLOAT_OUT)
        if bias.dim() != 1 or bias.shape[0] != cout or (cout > 1 and bias.stride(0) != 1):
            raise ValueError(f"bias must be a contiguous ({cout},), got {tuple(bias.shape)}")
    if residual is not None:
        check_dtype("residual", residual, FLOAT_OUT)
        if tuple(residual.shape) != (n, cout, p, q):
            raise ValueError(
                f"residual has shape {tuple(residual.shape)}, expected {(n, cout, p, q)}"
            )
        if not residual.is_contiguous(memory_format=torch.channels_last):
            raise ValueError("residual must be channels-last contiguous, like the output")
    if depthwise and cin_g != 1:
        raise ValueError(f"depthwise conv needs groups == C, got weight {tuple(weight.shape)}")
    epi = epilogue_args(**epi_spec)
    y = torch.empty(
        (n, cout, p, q), device=device, dtype=out_dtype, memory_format=torch.channels_last
    )
    r2 = _as_rows(residual) if residual is not None else None
    out = FusedOutput(y, _as_rows(y), r2, bias, epi)
    x_st, w_st = x.stride(), weight.stride()
    args = dict(x_ptr=x, w_ptr=weight, N=n, H=h, W=w, P=p, Q=q, COUT=cout, R=r, S=s)
    args.update(stride_xn=x_st[0], stride_xh=x_st[2], stride_xw=x_st[3], stride_xc=x_st[1])
    args.update(stride_wo=w_st[0], stride_wr=w_st[2], stride_ws=w_st[3])
    args.update(conv_stride_h=sh, conv_stride_w=sw, pad_h=pt, pad_w=pl, dil_h=dh, dil_w=dw)
    return device, (n, c, h, w, cout, cin_g, r, s, p, q), args, out


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    """(N, C, P, Q) channels-last tensor as its (N*P*Q, C) matrix (a view)."""
    n, c, p, q = t.shape
    return t.permute(0, 2, 3, 1).reshape(n * p * q, c)


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    split_k: int | None = None,
    config: triton.Config | None = None,
    **epilogue: Any,
) -> torch.Tensor:
    """Y = post_activation(activation(conv2d(x, weight) + bias) + residual), channels-last out.

    x: (N, C, H, W) fp16/bf16/fp32 in channels-last memory; weight (C_out, C/groups, R, S)
    in any layout (channels-last, i.e. (C_out, R, S, C/groups) memory, gives K-contiguous
    loads); padding: int, (h, w) or ONNX (top, left, bottom, right). Depthwise convs
    (groups == C > 1, weight with one input channel) run `depthwise_conv2d`. epilogue: the
    `Epilogue` keywords (out_dtype fp16/bf16/fp32, default x's dtype).
    """
    if (
        x.dim() == 4
        and weight.dim() == 4
        and groups > 1
        and groups == x.shape[1]
        and weight.shape[1] == 1
    ):
        return depthwise_conv2d(
            x,
            weight,
            bias,
            residual,
            stride=stride,
            padding=padding,
            dilation=dilation,
            config=config,
            **epilogue,
        )
    device, dims, args, out = _prepare(
        x, weight, bias, residual, stride, padding, dilation, groups, epilogue
    )
    n, c, h, w, cout, cin_g, r, s, p, q = dims
    m = n * p * q
    facts = device_facts(device)
    arch = facts.arch
    k_flat = cin_g < FLAT_BELOW or cin_g % 8 != 0
    elem = x.element_size()
    small = m <= 1024
    pointwise = r == 1 and s == 1
    configs = pinned_or_memo(
        config,
        ("conv2d", arch, small, pointwise, elem, facts.smem),
        lambda: _fitted_configs(arch, m, pointwise, elem, facts.smem),
    )
    if split_k is None:
        split_k = 1
        if groups == 1:
            c0 = configs[0].kwargs
            tiles = cdiv(m, c0["BLOCK_M"]) * cdiv(cout, c0["BLOCK_N"])
            bk = c0["BLOCK_K"]
            k_iters = cdiv(r * s * cin_g, bk) if k_flat else r * s * cdiv(cin_g, bk)
            split_k = pick_split_k(tiles, k_iters, num_sms(device))
    if split_k < 1 or (split_k > 1 and groups > 1):
        raise ValueError(f"split_k={split_k}: must be >= 1, and 1 for grouped convs")
    if split_k > 1:
        ws = torch.empty((split_k, m, cout), device=device, dtype=torch.float32)
    else:
        ws = out.y2d
    args.update(out.kernel_args(fused=split_k == 1))
    args.update(
        ws_ptr=ws,
        CIN_G=cin_g,
        COUT_G=cout // groups,
        stride_wc=weight.stride(1),
        SPLIT_K=split_k,
        K_FLAT=k_flat,
        DOT_MODE=1 if dot_upcast(x.dtype) else 0,
    )
    tuner_id = ("conv2d", arch, small, pointwise, elem, config is None)
    launch(conv2d_kernel, _conv_grid, args, configs, tuner_id, CONV_TUNE_KEY, _CONV_HEURISTICS)
    if split_k > 1:
        out.reduce(ws, split_k)
    return out.y


def depthwise_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    config: triton.Config | None = None,
    **epilogue: Any,
) -> torch.Tensor:
    """Depthwise conv (groups == C, C_out = C x multiplier) with the fused epilogue.

    weight: (C_out, 1, R, S), any layout; `pack_depthwise_weight` gives the fast one.
    epilogue: as for `conv2d`.
    """
    groups = x.shape[1] if x.dim() == 4 else 1
    device, dims, args, out = _prepare(
        x, weight, bias, residual, stride, padding, dilation, groups, epilogue, depthwise=True
    )
    c, cout = dims[1], dims[4]
    arch = device_facts(device).arch
    configs = pinned_or_memo(config, ("depthwise", arch), lambda: get_depthwise_configs(arch))
    args.update(out.kernel_args(), MULT=cout // c)
    tuner_id = ("depthwise", arch, config is None)
    launch(depthwise_conv2d_kernel, _depthwise_grid, args, configs, tuner_id, DW_TUNE_KEY)
    return out.y


def conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    stride: int | Sequence[int] = 1,
    padding: int | Sequence[int] = 0,
    dilation: int | Sequence[int] = 1,
    groups: int = 1,
    **epilogue: Any,
) -> torch.Tensor:
    """torch reference of `conv2d` (and `depthwise_conv2d`): fp32 conv and epilogue."""
    pt, pl, pb, pr = _pads(padding)
    xf = F.pad(x.float(), (pl, pr, pt, pb))
    acc = F.conv2d(
        xf, weight.float(), None, _pair(stride, "stride"), 0, _pair(dilation, "dilation"), groups
    )
    y = epilogue_reference(acc, bias, residual, x.dtype, bias_dim=1, **epilogue)
    return y.contiguous(memory_format=torch.channels_last)
