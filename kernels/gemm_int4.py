"""INT4 weight-only GEMM: A @ dequantize(B4) -> fused ai.lepton epilogue, dequantized in-kernel.

    W[n, k] = (q[n, k] - zero[n, k // QBLOCK]) * scale[n, k // QBLOCK]     q in 0..15
    Y = cast(post_activation(activation(A @ W^T + bias) + residual))

B is the layout of onnxruntime's MatMulNBits (com.microsoft, bits=4): an (N, K_pad / 2)
uint8 matrix, two 4-bit values per byte along K, the even k in the low nibble; K_pad is K
rounded up to a whole block. scale and zero are (N, n_blocks); without zero points every
zero is 8 (the symmetric default). The weight stays 4-bit in memory: each K-tile of B is
loaded as bytes, unpacked and dequantized in registers, then fed to tl.dot in A's type, so a
memory-bound small-M GEMM (batch 1) reads a quarter of an fp16 weight. Small M splits K.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from lepton_compile.kernels._common import (
    Arch,
    FusedOutput,
    cdiv,
    check_device,
    check_dtype,
    check_out_dtype,
    device_facts,
    dot_upcast,
    epilogue_reference,
    even_k,
    gemm_bucket,
    gemm_program,
    gemm_rows,
    launch_gemm,
    new_output,
    pinned_or_memo,
    split_epilogue,
    splitk_range,
    store_tile,
    table_configs,
)
from lepton_compile.kernels.configs import INT4_SM80, INT4_SM90

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
DEFAULT_ZERO = 8  # MatMulNBits without zero points: 2 ** (bits - 1)


@triton.jit
def int4_gemm_kernel(
    a_ptr, b_ptr, scale_ptr, zero_ptr,
    bias_ptr, res_ptr, y_ptr, ws_ptr,
    M, N, K, stride_am, stride_ak, stride_bn, stride_sn,
    stride_rm, stride_rn, stride_ym, stride_yn, p0, p1, q0, q1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    QBLOCK: tl.constexpr, HAS_ZERO: tl.constexpr, ONE_GROUP: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, POST_ACT: tl.constexpr,
    DOT_MODE: tl.constexpr,
):  # fmt: skip
    """ONE_GROUP: a K-tile lies inside one quantization block (one scale per column).

    DOT_MODE 1 (interpreter bf16 only): operands upcast to fp32 before tl.dot.
    """
    pid_m, pid_n, pid_k = gemm_program(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    # Rows/columns past M/N wrap around (the store masks them): unmasked loads along M, N.
    offs_am = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M
    offs_bn = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    it_lo, it_hi = splitk_range(tl.cdiv(K, BLOCK_K), pid_k, SPLIT_K)
    n_groups = tl.cdiv(K, QBLOCK)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for it in range(it_lo, it_hi):
        kk = it * BLOCK_K + offs_k
        a_ptrs = a_ptr + offs_am[:, None] * stride_am + kk[None, :] * stride_ak
        b_ptrs = b_ptr + offs_bn[None, :] * stride_bn + (kk // 2)[:, None]
        if EVEN_K:
            a = tl.load(a_ptrs)
            packed = tl.load(b_ptrs)
        else:
            k_ok = kk < K
            a = tl.load(
                a_ptrs,
                mask=k_ok[None, :],
                other=tl.zeros((BLOCK_M, BLOCK_K), a_ptr.dtype.element_ty),
            )
            packed = tl.load(b_ptrs, mask=k_ok[:, None], other=0)
        q = (packed.to(tl.int32) >> ((kk % 2) * 4)[:, None]) & 0xF
        if ONE_GROUP:
            g = (it * BLOCK_K) // QBLOCK
            s = tl.load(scale_ptr + offs_bn * stride_sn + g).to(tl.float32)
            if HAS_ZERO:
                z = tl.load(zero_ptr + offs_bn * stride_sn + g).to(tl.float32)
                w = (q.to(tl.float32) - z[None, :]) * s[None, :]
            else:
                w = (q.to(tl.float32) - 8.0) * s[None, :]
        else:
            g = tl.minimum(kk // QBLOCK, n_groups - 1)
            s_ptrs = scale_ptr + offs_bn[None, :] * stride_sn + g[:, None]
            s = tl.load(s_ptrs).to(tl.float32)
            if HAS_ZERO:
                z = tl.load(zero_ptr + offs_bn[None, :] * stride_sn + g[:, None]).to(tl.float32)
                w = (q.to(tl.float32) - z) * s
            else:
                w = (q.to(tl.float32) - 8.0) * s
        if DOT_MODE == 1:
            acc = tl.dot(a.to(tl.float32), w, acc)
        else:
            acc = tl.dot(a, w.to(a_ptr.dtype.element_ty), acc)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    epi = (bias_ptr, res_ptr, stride_rm, stride_rn, y_ptr, stride_ym, stride_yn, p0, p1, q0, q1)
    store_tile(
        acc, offs_m, offs_n, M, N, epi, ws_ptr, pid_k, SPLIT_K, HAS_BIAS, ACT, HAS_RES, POST_ACT
    )


# ---------------------------------------------------------------------------------------
# Configs: the tables INT4_SM90 / INT4_SM80 in kernels/configs.py (16-bit A).

_INTERPRETER = [(32, 32, 32, 2, 1, 4)]


def _fewer_stages(rows: list[tuple]) -> list[tuple]:
    # fp32 A: fewer stages keep the A tiles in shared memory.
    return [(bm, bn, bk, g, min(st, 3), w) for bm, bn, bk, g, st, w in rows]


def get_configs(arch: Arch, m: int | None = None, elem_bytes: int = 2) -> list[triton.Config]:
    """Configs for `arch` (90, 80, ... or "interpreter") and M; m=None: every bucket."""
    adjust = _fewer_stages if elem_bytes > 2 else None
    return table_configs(arch, m, INT4_SM90, INT4_SM80, _INTERPRETER, adjust)


def _one_group(meta: dict) -> bool:
    return meta["QBLOCK"] % meta["BLOCK_K"] == 0


_HEURISTICS = {"EVEN_K": even_k, "ONE_GROUP": _one_group}
_TUNE_KEY = ("M", "N", "K", "QBLOCK", "HAS_ZERO", "stride_ak")


def check_packed(
    b: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, k: int, block_size: int
) -> tuple[int, int]:
    """(N, n_blocks) of a packed weight; ValueError naming what does not fit."""
    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of 2 >= 16, got {block_size}")
    n_blocks = cdiv(k, block_size)
    if b.dtype != torch.uint8 or b.dim() != 2 or b.shape[1] != n_blocks * block_size // 2:
        raise ValueError(
            f"b must be a uint8 (N, {n_blocks * block_size // 2}) matrix (two 4-bit values per "
            f"byte, K={k} padded to blocks of {block_size}), got {b.dtype} {tuple(b.shape)}"
        )
    if b.stride(1) != 1:
        raise ValueError("b must be row-major (contiguous along K)")
    n = b.shape[0]
    for name, t in (("scales", scales), ("zeros", zeros)):
        if t is None:
            continue
        check_dtype(name, t, INPUT_DTYPES)
        if tuple(t.shape) != (n, n_blocks) or t.stride(1) != 1:
            raise ValueError(f"{name} must be a row-major ({n}, {n_blocks}), got {tuple(t.shape)}")
    if zeros is not None and zeros.stride() != scales.stride():
        raise ValueError("zeros and scales must have the same strides")
    return n, n_blocks


def int4_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    block_size: int = 32,
    split_k: int | None = None,
    config: triton.Config | None = None,
    **epilogue: Any,
) -> torch.Tensor:
    """Y = post_activation(activation(a @ dequantize(b)^T + bias) + residual).

    a: (..., K) fp16/bf16/fp32; b: (N, K_pad / 2) uint8, MatMulNBits' packing; scales and
    zeros (optional, default 8): (N, n_blocks) floats; bias (N,); residual Y's shape.
    epilogue: the `Epilogue` keywords (out_dtype fp16/bf16/fp32, default a's dtype).
    """
    device = check_device(
        {"a": a, "b": b, "scales": scales, "zeros": zeros, "bias": bias, "residual": residual}
    )
    check_dtype("a", a, INPUT_DTYPES)
    if a.dim() < 1:
        raise ValueError("a must have at least one dimension")
    k = a.shape[-1]
    n, _ = check_packed(b, scales, zeros, k, block_size)
    out_dtype, spec = split_epilogue(epilogue, None)
    out_dtype = out_dtype or a.dtype
    check_out_dtype(out_dtype)
    a2, out_shape, epi = gemm_rows(a, n, bias, residual, spec)
    m = a2.shape[0]
    out = FusedOutput.of_matrix(new_output(out_shape, out_dtype, device), bias, residual, epi)
    if out.y.numel() == 0:
        return out.y
    arch = device_facts(device).arch
    elem = a.element_size()
    bucket = gemm_bucket(m)
    configs = pinned_or_memo(
        config, ("int4", arch, bucket, elem), lambda: get_configs(arch, m, elem_bytes=elem)
    )
    zero_ptr = zeros if zeros is not None else scales
    args = dict(a_ptr=a2, b_ptr=b, scale_ptr=scales, zero_ptr=zero_ptr, M=m, N=n, K=k)
    args.update(stride_am=a2.stride(0), stride_ak=a2.stride(1))
    args.update(stride_bn=b.stride(0), stride_sn=scales.stride(0))
    args.update(QBLOCK=block_size, HAS_ZERO=zeros is not None)
    args.update(DOT_MODE=1 if dot_upcast(a.dtype) else 0)
    tuner_id = ("int4", arch, bucket, elem, config is None)
    launch_gemm(int4_gemm_kernel, args, configs, out, split_k, tuner_id, _TUNE_KEY, _HEURISTICS)
    return out.y


# ---------------------------------------------------------------------------------------
# Packing helpers and the torch reference.


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """(N, K) values 0..15 (K even) -> (N, K / 2) uint8, even k in the low nibble."""
    if q.dim() != 2 or q.shape[1] % 2:
        raise ValueError(f"q must be (N, K) with K even, got {tuple(q.shape)}")
    q = q.to(torch.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_int4(b: torch.Tensor, k: int | None = None) -> torch.Tensor:
    """(N, K_pad / 2) uint8 -> (N, K) uint8 values 0..15 (the first k columns)."""
    lo, hi = b & 0xF, b >> 4
    q = torch.stack([lo, hi], dim=-1).reshape(b.shape[0], -1)
    return q if k is None else q[:, :k]


def dequantize_int4(
    b: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None,
    k: int,
    block_size: int = 32,
) -> torch.Tensor:
    """The (N, K) fp32 weight a packed one stands for."""
    q = unpack_int4(b).float()
    s = scales.float().repeat_interleave(block_size, dim=1)[:, : q.shape[1]]
    z = (
        zeros.float().repeat_interleave(block_size, dim=1)[:, : q.shape[1]]
        if zeros is not None
        else float(DEFAULT_ZERO)
    )
    return ((q - z) * s)[:, :k]


def quantize_int4(
    w: torch.Tensor, block_size: int = 32, symmetric: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(N, K) float weight -> (packed, scales, zeros | None), blocks of `block_size` along K.

    Symmetric: scale = absmax / 7 (q - 8 in -8..7); asymmetric: (max - min) / 15 with a
    zero point. For tests and benchmarks; models get MatMulNBits from onnxruntime's quantizer.
    """
    n, k = w.shape
    n_blocks = cdiv(k, block_size)
    padded = torch.zeros((n, n_blocks * block_size), dtype=torch.float32, device=w.device)
    padded[:, :k] = w.float()
    blocks = padded.reshape(n, n_blocks, block_size)
    if symmetric:
        scale = (blocks.abs().amax(dim=-1) / 7.0).clamp_min(1e-12)
        q = (blocks / scale[..., None]).round().clamp(-8, 7) + DEFAULT_ZERO
        zeros = None
    else:
        lo = blocks.amin(dim=-1).clamp_max(0.0)
        hi = blocks.amax(dim=-1).clamp_min(0.0)
        scale = ((hi - lo) / 15.0).clamp_min(1e-12)
        zero = (-lo / scale).round().clamp(0, 15)
        q = ((blocks / scale[..., None]).round() + zero[..., None]).clamp(0, 15)
        zeros = zero.contiguous()
    packed = pack_int4(q.reshape(n, -1).to(torch.uint8))
    return packed, scale.contiguous(), zeros


def int4_gemm_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    block_size: int = 32,
    **epilogue: Any,
) -> torch.Tensor:
    """torch reference of `int4_gemm`: fp32 dequantized weight, fp32 matmul and epilogue."""
    w = dequantize_int4(b, scales, zeros, a.shape[-1], block_size)
    return epilogue_reference(a.float() @ w.t(), bias, residual, a.dtype, **epilogue)
