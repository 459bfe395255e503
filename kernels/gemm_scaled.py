"""Scaled low-precision GEMMs: (A @ B) x a_scale x b_scale -> fused ai.lepton epilogue.

    W8A8: A, B int8, int32 accumulate; FP8: A, B float8_e4m3fn, fp32 accumulate (sm89+).
    Y = cast(post_activation(activation(acc * a_scale[m] * b_scale[n] + bias) + residual))

a_scale is per token (one per row of A) or one for all; b_scale per output channel (one per
column of B) or one for all. B is (K, N); both 8-bit tensor-core paths want it K-major, i.e.
the (N, K) weight passed as `w.t()` (the quantize_* helpers below give that layout).
The design follows vLLM's `triton_scaled_mm`; split-K partials are scaled before the reduce.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from lepton_compile.kernels._common import (
    GEMM_META,
    GEMM_TUNE_KEY,
    Arch,
    apply_scales,
    check_device,
    check_gemm_inputs,
    check_output_size,
    dedupe,
    device_facts,
    epilogue_kernel_args,
    epilogue_reference,
    even_k,
    fit_smem,
    gemm_bucket,
    gemm_grid,
    gemm_mainloop,
    gemm_split_k,
    grouped_tile,
    launch,
    launched_split,
    make_configs,
    memo_configs,
    run_splitk_epilogue,
    store_tile,
)

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
INT8_MAX = 127


@triton.jit
def scaled_gemm_kernel(
    a_ptr,
    b_ptr,
    a_scale_ptr,
    b_scale_ptr,
    bias_ptr,
    res_ptr,
    y_ptr,
    ws_ptr,
    M,
    N,
    K,
    stride_am,
    stride_ak,
    stride_bk,
    stride_bn,
    stride_rm,
    stride_rn,
    stride_ym,
    stride_yn,
    p0,
    p1,
    q0,
    q1,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    A_PER_ROW: tl.constexpr,
    B_PER_COL: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    POST_ACT: tl.constexpr,
    ACC_TYPE: tl.constexpr,
    DOT_MODE: tl.constexpr,
):
    """ACC_TYPE int32 for int8 inputs, float32 for fp8 (DOT_MODE 2: promoted every BLOCK_K)."""
    pid_m, pid_n = grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_k = tl.program_id(1)
    acc = gemm_mainloop(
        a_ptr,
        b_ptr,
        M,
        N,
        K,
        stride_am,
        stride_ak,
        stride_bk,
        stride_bn,
        pid_m,
        pid_n,
        pid_k,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
        SPLIT_K,
        EVEN_K,
        ACC_TYPE,
        DOT_MODE,
    )
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = apply_scales(acc, offs_m, offs_n, M, N, a_scale_ptr, b_scale_ptr, A_PER_ROW, B_PER_COL)
    store_tile(
        acc,
        offs_m,
        offs_n,
        M,
        N,
        bias_ptr,
        res_ptr,
        stride_rm,
        stride_rn,
        y_ptr,
        stride_ym,
        stride_yn,
        ws_ptr,
        pid_k,
        p0,
        p1,
        q0,
        q1,
        SPLIT_K,
        HAS_BIAS,
        ACT,
        HAS_RES,
        POST_ACT,
    )


# ---------------------------------------------------------------------------------------
# Configs for 1-byte operands: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_stages, num_warps).
# BLOCK_K >= 32 (8-bit mma/wgmma K), 128 where it fits: a 128-byte row per stage.

_SM90 = {
    "large": [
        (128, 256, 128, 8, 3, 8),
        (256, 128, 128, 8, 3, 8),
        (128, 128, 128, 8, 4, 8),
        (128, 128, 128, 8, 4, 4),
        (128, 64, 128, 8, 4, 4),
        (64, 128, 128, 8, 4, 4),
        (128, 128, 256, 8, 3, 8),  # BERT-class K of 768..3072: fewer, deeper K steps
    ],
    "m512": [
        (128, 128, 128, 8, 4, 8),
        (128, 64, 128, 8, 4, 4),
        (64, 128, 128, 8, 4, 4),
        (64, 64, 128, 8, 5, 4),
    ],
    "m128": [
        (64, 128, 128, 8, 4, 4),
        (64, 64, 256, 8, 4, 4),
        (64, 64, 128, 8, 5, 4),
        (64, 256, 128, 8, 3, 8),
        (32, 64, 256, 8, 4, 4),  # batch 1 of a BERT-class encoder: more, smaller tiles
        (32, 128, 128, 8, 4, 4),
    ],
    "m32": [
        (16, 64, 256, 1, 4, 4),
        (32, 64, 256, 1, 4, 4),
        (16, 128, 128, 1, 4, 4),
        (32, 128, 128, 1, 4, 4),
        (64, 64, 256, 1, 4, 4),
    ],
}

_SM80 = {
    "large": [
        (128, 256, 64, 8, 3, 8),
        (256, 128, 64, 8, 3, 8),
        (128, 128, 64, 8, 4, 4),
        (64, 128, 64, 8, 4, 4),
        (128, 64, 64, 8, 4, 4),
    ],
    "m512": [
        (128, 128, 64, 8, 4, 4),
        (64, 128, 64, 8, 4, 4),
        (128, 64, 64, 8, 4, 4),
    ],
    "m128": [
        (64, 128, 64, 8, 4, 4),
        (64, 64, 128, 8, 4, 4),
        (32, 128, 128, 8, 4, 4),
    ],
    "m32": [
        (16, 64, 128, 1, 4, 4),
        (32, 64, 128, 1, 4, 4),
        (16, 128, 128, 1, 4, 4),
    ],
}

_INTERPRETER = [(32, 32, 32, 2, 1, 4)]  # int8 K-block >= 32 holds in the real compiler too
BUCKETS = ("m32", "m128", "m512", "large")


def get_configs(arch: Arch, m: int | None = None) -> list[triton.Config]:
    """Autotune configs for 8-bit operands on `arch` (90, 89, 80, ... or "interpreter")."""
    if arch == "interpreter":
        return make_configs(_INTERPRETER, GEMM_META)
    table = _SM90 if int(arch) >= 90 else _SM80
    buckets = BUCKETS if m is None else (gemm_bucket(m),)
    return dedupe(make_configs([row for b in buckets for row in table[b]], GEMM_META))


def _fitted_configs(arch: Arch, m: int, smem: int) -> list[triton.Config]:
    """The autotuning set of one M bucket: get_configs, less those over the shared memory."""
    configs = get_configs(arch, m)
    if arch != "interpreter":
        configs = fit_smem(configs, smem, 1, 1)
    return configs


_HEURISTICS = {"EVEN_K": even_k}


def _scale_kind(name: str, scale: torch.Tensor, rows: int) -> bool:
    """True: one scale per row/column; False: one scale for all. ValueError otherwise."""
    if scale.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {scale.dtype}")
    if scale.numel() == 1 and rows != 1:
        return False
    if scale.numel() != rows:
        raise ValueError(f"{name} has {scale.numel()} elements, expected {rows} or 1")
    if scale.numel() > 1 and not scale.is_contiguous():
        raise ValueError(f"{name} must be contiguous")
    return True


def _scaled_gemm(
    kind: str,
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    epi_spec: tuple,
    out_dtype: torch.dtype,
    split_k: int | None,
    config: triton.Config | None,
    fast_accum: bool,
) -> torch.Tensor:
    in_dtype = torch.int8 if kind == "w8a8" else FP8_DTYPE
    device = check_device(
        {"a": a, "b": b, "a_scale": a_scale, "b_scale": b_scale, "bias": bias, "residual": residual}
    )
    for name, t in (("a", a), ("b", b)):
        if t.dtype != in_dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, expected {in_dtype} for {kind}")
    a2, m, k, n, out_shape, epi = check_gemm_inputs(a, b, bias, residual, out_dtype, epi_spec)
    a_per_row = _scale_kind("a_scale", a_scale, m)
    b_per_col = _scale_kind("b_scale", b_scale, n)
    facts = device_facts(device)
    arch = facts.arch
    if kind == "fp8" and arch != "interpreter" and int(arch) < 89:
        raise ValueError(f"fp8 GEMM needs compute capability 8.9 or newer, this GPU is sm{arch}")

    check_output_size(m * n)
    y = torch.empty(out_shape, device=device, dtype=out_dtype)
    if m == 0 or n == 0:
        return y
    y2 = y if y.dim() == 2 else y.view(m, n)
    r2 = None
    if residual is not None:
        r2 = residual if residual.dim() == 2 else residual.reshape(m, n)
    bucket = gemm_bucket(m)
    if config is not None:
        configs: Sequence[triton.Config] = (config,)
    else:
        configs = memo_configs(
            ("scaled_gemm", arch, bucket, 1, facts.smem),
            lambda: _fitted_configs(arch, m, facts.smem),
        )
    rule, ws = gemm_split_k(split_k, configs, m, n, k, device, y2)
    a_st, b_st = a2.stride(), b.stride()
    args = epilogue_kernel_args(epi, bias, r2, y2)
    args.update(
        a_ptr=a2,
        b_ptr=b,
        a_scale_ptr=a_scale,
        b_scale_ptr=b_scale,
        ws_ptr=ws,
        M=m,
        N=n,
        K=k,
        stride_am=a_st[0],
        stride_ak=a_st[1],
        stride_bk=b_st[0],
        stride_bn=b_st[1],
        A_PER_ROW=a_per_row,
        B_PER_COL=b_per_col,
        ACC_TYPE=tl.int32 if kind == "w8a8" else tl.float32,
        DOT_MODE=2 if kind == "fp8" and not fast_accum else 0,
    )

    cfg = launch(
        scaled_gemm_kernel,
        gemm_grid,
        args,
        configs,
        tuner_id=(kind, arch, bucket, fast_accum, config is None, rule.key),
        key=GEMM_TUNE_KEY,
        heuristics={**_HEURISTICS, "SPLIT_K": rule},
    )
    split = launched_split(rule, args, cfg)
    if split > 1:
        run_splitk_epilogue(ws, bias, residual, y2, r2, epi, split)
    return y


def w8a8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    activation: str = "none",
    activation_params: Sequence[float] = (),
    post_activation: str = "none",
    post_activation_params: Sequence[float] = (),
    out_dtype: torch.dtype = torch.float16,
    split_k: int | None = None,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """int8 a (..., K) @ int8 b (K, N), int32 accumulate, x a_scale x b_scale, then the epilogue.

    a_scale: float32, one per row of a (per token) or one; b_scale: float32, one per column
    of b (per output channel) or one. bias (N,) and residual (Y's shape): fp16/bf16/fp32.
    """
    spec = (activation, activation_params, post_activation, post_activation_params)
    return _scaled_gemm(
        "w8a8", a, b, a_scale, b_scale, bias, residual, spec, out_dtype, split_k, config, False
    )


def fp8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    activation: str = "none",
    activation_params: Sequence[float] = (),
    post_activation: str = "none",
    post_activation_params: Sequence[float] = (),
    out_dtype: torch.dtype = torch.float16,
    fast_accum: bool = False,
    split_k: int | None = None,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """float8_e4m3fn a (..., K) @ b (K, N), fp32 accumulate, scaled, then the epilogue (sm89+).

    fast_accum=True lets Hopper's fp8 wgmma accumulate the whole K in its reduced-precision
    accumulator (cuBLAS's FAST_ACCUM); the default promotes to fp32 after every BLOCK_K.
    """
    spec = (activation, activation_params, post_activation, post_activation_params)
    return _scaled_gemm(
        "fp8", a, b, a_scale, b_scale, bias, residual, spec, out_dtype, split_k, config, fast_accum
    )


# ---------------------------------------------------------------------------------------
# Quantization helpers and references (torch).


def quantize_rowwise(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantization of a 2-D tensor: (q, fp32 scale per row), x ~ q * scale.

    dtype torch.int8 (absmax -> 127) or torch.float8_e4m3fn (absmax -> 448). Rows of an
    (N, K) weight are output channels: pass `q.t()` (K-major) and the scales to the GEMM.
    """
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D, got shape {tuple(x.shape)}")
    qmax = INT8_MAX if dtype == torch.int8 else FP8_MAX
    amax = x.float().abs().amax(dim=1).clamp_min(1e-12)
    scale = amax / qmax
    y = x.float() / scale[:, None]
    if dtype == torch.int8:
        q = y.round().clamp(-INT8_MAX, INT8_MAX).to(torch.int8)
    elif dtype == FP8_DTYPE:
        q = y.clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    else:
        raise ValueError(f"dtype must be torch.int8 or {FP8_DTYPE}, got {dtype}")
    return q, scale.contiguous()


def scaled_gemm_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    activation: str = "none",
    activation_params: Sequence[float] = (),
    post_activation: str = "none",
    post_activation_params: Sequence[float] = (),
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """torch reference of w8a8_gemm / fp8_gemm: exact float64 product, scales, fp32 epilogue."""
    k = a.shape[-1]
    a2 = a.reshape(-1, k)
    acc = a2.to(torch.float64) @ b.to(torch.float64)
    acc = acc * a_scale.reshape(-1, 1).double() * b_scale.reshape(1, -1).double()
    y = epilogue_reference(
        acc.float(),
        bias,
        residual.reshape(acc.shape) if residual is not None else None,
        activation,
        activation_params,
        post_activation,
        post_activation_params,
        out_dtype,
    )
    return y.reshape(*a.shape[:-1], b.shape[1])
