"""Scaled low-precision GEMMs: (A @ B) x a_scale x b_scale -> fused ai.lepton epilogue.

    W8A8: A, B int8, int32 accumulate; FP8: A, B float8_e4m3fn, fp32 accumulate (sm89+).
    Y = cast(post_activation(activation(acc * a_scale[m] * b_scale[n] + bias) + residual))

a_scale is per token (one per row of A) or one for all; b_scale per output channel (one per
column of B) or one for all. B is (K, N); both 8-bit tensor-core paths want it K-major, i.e.
the (N, K) weight passed as `w.t()` (the quantize_* helpers below give that layout).
The design follows vLLM's `triton_scaled_mm`; split-K partials are scaled before the reduce.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from lepton_compile.kernels._common import (
    Arch,
    FusedOutput,
    apply_scales,
    check_device,
    check_gemm_inputs,
    device_facts,
    epilogue_reference,
    fit_smem,
    gemm_bucket,
    gemm_strides,
    gemm_tile,
    launch_gemm,
    new_output,
    pinned_or_memo,
    split_epilogue,
    store_tile,
    table_configs,
)
from lepton_compile.kernels.configs import SCALED_SM80, SCALED_SM90

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
INT8_MAX = 127


@triton.jit
def scaled_gemm_kernel(
    a_ptr, b_ptr, a_scale_ptr, b_scale_ptr, bias_ptr, res_ptr, y_ptr, ws_ptr,
    M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
    stride_rm, stride_rn, stride_ym, stride_yn, p0, p1, q0, q1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr, A_PER_ROW: tl.constexpr, B_PER_COL: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, POST_ACT: tl.constexpr,
    ACC_TYPE: tl.constexpr, DOT_MODE: tl.constexpr,
):  # fmt: skip
    """ACC_TYPE int32 for int8 inputs, float32 for fp8 (DOT_MODE 2: promoted every BLOCK_K)."""
    a = (a_ptr, stride_am, stride_ak)
    b = (b_ptr, stride_bk, stride_bn)
    acc, offs_m, offs_n, pid_k = gemm_tile(
        a, b, M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, EVEN_K, ACC_TYPE, DOT_MODE
    )
    acc = apply_scales(acc, offs_m, offs_n, M, N, a_scale_ptr, b_scale_ptr, A_PER_ROW, B_PER_COL)
    epi = (bias_ptr, res_ptr, stride_rm, stride_rn, y_ptr, stride_ym, stride_yn, p0, p1, q0, q1)
    store_tile(
        acc, offs_m, offs_n, M, N, epi, ws_ptr, pid_k, SPLIT_K, HAS_BIAS, ACT, HAS_RES, POST_ACT
    )


# ---------------------------------------------------------------------------------------
# Configs for 1-byte operands: the tables SCALED_SM90 / SCALED_SM80 in kernels/configs.py.

_INTERPRETER = [(32, 32, 32, 2, 1, 4)]  # int8 K-block >= 32 holds in the real compiler too


def get_configs(arch: Arch, m: int | None = None) -> list[triton.Config]:
    """Autotune configs for 8-bit operands on `arch` (90, 89, 80, ... or "interpreter")."""
    return table_configs(arch, m, SCALED_SM90, SCALED_SM80, _INTERPRETER)


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
    split_k: int | None,
    config: triton.Config | None,
    fast_accum: bool,
    epilogue: dict[str, Any],
) -> torch.Tensor:
    # fp16 output unless asked: the 8-bit inputs have no float type of their own.
    out_dtype, epi_spec = split_epilogue(epilogue, torch.float16)
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

    out = FusedOutput.of_matrix(new_output(out_shape, out_dtype, device), bias, residual, epi)
    if out.y.numel() == 0:
        return out.y
    smem = facts.smem
    bucket = gemm_bucket(m)
    configs = pinned_or_memo(
        config,
        ("scaled_gemm", arch, bucket, 1, smem),
        lambda: fit_smem(get_configs(arch, m), smem, 1, 1),
    )
    args = dict(a_ptr=a2, b_ptr=b, a_scale_ptr=a_scale, b_scale_ptr=b_scale, M=m, N=n, K=k)
    args.update(gemm_strides(a2, b), A_PER_ROW=a_per_row, B_PER_COL=b_per_col)
    args.update(ACC_TYPE=tl.int32 if kind == "w8a8" else tl.float32)
    args.update(DOT_MODE=2 if kind == "fp8" and not fast_accum else 0)
    tuner_id = (kind, arch, bucket, fast_accum, config is None)
    launch_gemm(scaled_gemm_kernel, args, configs, out, split_k, tuner_id)
    return out.y


def w8a8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    split_k: int | None = None,
    config: triton.Config | None = None,
    **epilogue: Any,
) -> torch.Tensor:
    """int8 a (..., K) @ int8 b (K, N), int32 accumulate, x a_scale x b_scale, then the epilogue.

    a_scale: float32, one per row of a (per token) or one; b_scale: float32, one per column
    of b (per output channel) or one. bias (N,) and residual (Y's shape): fp16/bf16/fp32.
    epilogue: the `Epilogue` keywords (out_dtype fp16/bf16/fp32, default fp16).
    """
    return _scaled_gemm(
        "w8a8", a, b, a_scale, b_scale, bias, residual, split_k, config, False, epilogue
    )


def fp8_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    a_scale: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    fast_accum: bool = False,
    split_k: int | None = None,
    config: triton.Config | None = None,
    **epilogue: Any,
) -> torch.Tensor:
    """float8_e4m3fn a (..., K) @ b (K, N), fp32 accumulate, scaled, then the epilogue (sm89+).

    fast_accum=True lets Hopper's fp8 wgmma accumulate the whole K in its reduced-precision
    accumulator (cuBLAS's FAST_ACCUM); the default promotes to fp32 after every BLOCK_K.
    epilogue: as for w8a8_gemm.
    """
    return _scaled_gemm(
        "fp8", a, b, a_scale, b_scale, bias, residual, split_k, config, fast_accum, epilogue
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
    **epilogue: Any,
) -> torch.Tensor:
    """torch reference of w8a8_gemm / fp8_gemm: exact float64 product, scales, fp32 epilogue."""
    k = a.shape[-1]
    acc = a.reshape(-1, k).to(torch.float64) @ b.to(torch.float64)
    acc = acc * a_scale.reshape(-1, 1).double() * b_scale.reshape(1, -1).double()
    res = residual.reshape(acc.shape) if residual is not None else None
    y = epilogue_reference(acc.float(), bias, res, torch.float16, **epilogue)
    return y.reshape(*a.shape[:-1], b.shape[1])
