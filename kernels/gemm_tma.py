"""Hopper GEMM: TMA tile loads, persistent programs, wgmma, fused ai.lepton epilogue.

    Y = cast(post_activation(activation(A @ B + bias) + residual))

One program per SM walks the output tiles (grouped order, so B tiles stay in L2); A and B
tiles arrive by TMA (host-built tensor descriptors: boundary tiles are zero-filled by the
hardware, so the main loop has no masks), the software pipeline overlaps the next loads
with the current wgmma. A is (M, K) row-major; B is (K, N) row-major or, K-major, the
(N, K) weight of a linear layer. fp16/bf16 only, sm90+, and every row stride a multiple of
16 bytes (TMA). The descriptor API used (`triton.tools.tensor_descriptor.TensorDescriptor`,
`desc.load`) is the one triton 3.6 and 3.9 share.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from lepton_compile.kernels._common import (
    GEMM_META,
    Arch,
    FusedOutput,
    cdiv,
    check_device,
    check_dtype,
    device_facts,
    dot_upcast,
    epilogue_store,
    fit_smem,
    gemm_rows,
    grouped_tile,
    launch,
    make_configs,
    new_output,
    num_sms,
    pinned_or_memo,
    split_epilogue,
)
from lepton_compile.kernels.configs import TMA_SM90
from lepton_compile.kernels.gemm import gemm_reference

INPUT_DTYPES = (torch.float16, torch.bfloat16)
TMA_ALIGN = 16  # bytes: TMA wants 16-byte aligned bases and row strides


@triton.jit
def gemm_tma_kernel(
    a_desc, b_desc, bias_ptr, res_ptr, y_ptr,
    M, N, K,
    stride_rm, stride_rn, stride_ym, stride_yn, p0, p1, q0, q1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_SMS: tl.constexpr, B_KMAJOR: tl.constexpr, DOT_MODE: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, POST_ACT: tl.constexpr,
):  # fmt: skip
    """B_KMAJOR: b_desc covers the (N, K) weight (tiles transposed in registers).

    DOT_MODE 1 (interpreter bf16 only): tiles upcast to fp32 before tl.dot.
    """
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    epi = (bias_ptr, res_ptr, stride_rm, stride_rn, y_ptr, stride_ym, stride_yn, p0, p1, q0, q1)
    for tile in range(tl.program_id(0), num_tiles, NUM_SMS):
        pid_m, pid_n = grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for kt in range(k_tiles):
            off_k = kt * BLOCK_K
            a = a_desc.load([off_m, off_k])
            if B_KMAJOR:
                b = b_desc.load([off_n, off_k]).T
            else:
                b = b_desc.load([off_k, off_n])
            if DOT_MODE == 1:
                acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
            else:
                acc = tl.dot(a, b, acc)
        offs_m = off_m + tl.arange(0, BLOCK_M)
        offs_n = off_n + tl.arange(0, BLOCK_N)
        epilogue_store(acc, offs_m, offs_n, M, N, epi, HAS_BIAS, ACT, HAS_RES, POST_ACT)


# ---------------------------------------------------------------------------------------
# Configs (sm90 only): the table TMA_SM90 in kernels/configs.py.

_INTERPRETER = [(32, 32, 32, 2, 1, 4)]


def set_tma_blocks(nargs: dict) -> None:
    """A config's pre-hook: the descriptors' tile shapes follow its BLOCK_* (they are part of
    the descriptor's type, so they must be set before the launch binds its arguments)."""
    bm, bn, bk = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["a_desc"].block_shape = [bm, bk]
    nargs["b_desc"].block_shape = [bn, bk] if nargs["B_KMAJOR"] else [bk, bn]


def get_configs(arch: Arch) -> list[triton.Config]:
    """Configs for `arch`: sm90 and newer, or "interpreter"."""
    if arch == "interpreter":
        rows = _INTERPRETER
    elif int(arch) < 90:
        raise ValueError(f"the TMA GEMM needs sm90 or newer, got sm{arch}")
    else:
        rows = TMA_SM90
    return [
        triton.Config(
            c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages, pre_hook=set_tma_blocks
        )
        for c in make_configs(rows, GEMM_META)
    ]


def supported(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """None if `gemm_tma` takes a (..., K) @ b (K, N), else why not (layout, dtype, arch)."""
    if a.dtype not in INPUT_DTYPES or b.dtype != a.dtype:
        return f"dtypes {a.dtype}, {b.dtype}: fp16/bf16 only"
    if b.dim() != 2 or a.dim() < 1 or a.shape[-1] != b.shape[0]:
        return f"shapes {tuple(a.shape)} @ {tuple(b.shape)}"
    if a.device.type == "cuda" and torch.cuda.get_device_capability(a.device) < (9, 0):
        return "TMA needs sm90 or newer"
    elem = a.element_size()
    k, n = b.shape
    if (k * elem) % TMA_ALIGN:
        return f"K={k}: rows of A must be a multiple of {TMA_ALIGN} bytes"
    kmajor = b.stride(0) == 1
    if kmajor and (b.stride(1) * elem) % TMA_ALIGN:
        return "B's rows must be a multiple of 16 bytes"
    if not kmajor and (b.stride(1) != 1 or (b.stride(0) * elem) % TMA_ALIGN):
        return "B must be row-major or K-major with 16-byte aligned rows"
    if a.stride(-1) != 1:
        return "A must be contiguous along K"
    return None


def gemm_tma(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    config: triton.Config | None = None,
    **epilogue: Any,
) -> torch.Tensor:
    """Y = post_activation(activation(a @ b + bias) + residual) on Hopper's TMA path.

    a: (..., K) fp16/bf16, contiguous along K; b: (K, N) row-major, or the (N, K) weight
    passed as `w.t()`; `supported(a, b)` says whether a pair qualifies. epilogue: the
    `Epilogue` keywords, as for `gemm`.
    """
    from triton.tools.tensor_descriptor import TensorDescriptor

    device = check_device({"a": a, "b": b, "bias": bias, "residual": residual})
    check_dtype("a", a, INPUT_DTYPES)
    reason = supported(a, b)
    if reason is not None:
        raise ValueError(f"gemm_tma: {reason}")
    k, n = b.shape
    out_dtype, spec = split_epilogue(epilogue, None)
    out_dtype = out_dtype or a.dtype
    a2, out_shape, epi = gemm_rows(a, n, bias, residual, spec)
    m = a2.shape[0]
    out = FusedOutput.of_matrix(new_output(out_shape, out_dtype, device), bias, residual, epi)
    if out.y.numel() == 0:
        return out.y
    facts = device_facts(device)
    arch, smem = facts.arch, facts.smem
    configs = pinned_or_memo(
        config, ("gemm_tma", arch, smem), lambda: fit_smem(get_configs(arch), smem, 2, 2)
    )
    kmajor = b.stride(0) == 1 and b.shape[1] > 1
    sms = num_sms(device)
    b_mat = b.t() if kmajor else b  # the (N, K) weight itself when K-major
    c0 = configs[0].kwargs
    # Tile shapes are placeholders until a config's pre-hook sets them (set_tma_blocks).
    a_desc = TensorDescriptor.from_tensor(a2, [c0["BLOCK_M"], c0["BLOCK_K"]])
    b_desc = TensorDescriptor.from_tensor(b_mat, [c0["BLOCK_N"], c0["BLOCK_K"]])
    args = out.kernel_args()
    args.update(a_desc=a_desc, b_desc=b_desc, M=m, N=n, K=k, NUM_SMS=sms, B_KMAJOR=kmajor)
    args.update(DOT_MODE=1 if dot_upcast(a.dtype) else 0)

    def grid(meta: dict) -> tuple:
        tiles = cdiv(meta["M"], meta["BLOCK_M"]) * cdiv(meta["N"], meta["BLOCK_N"])
        return (min(sms, tiles),)

    tuner_id = ("gemm_tma", arch, kmajor, a.dtype, config is None)
    launch(gemm_tma_kernel, grid, args, configs, tuner_id, key=("M", "N", "K"))
    return out.y


# The same product and epilogue as gemm's.
gemm_tma_reference = gemm_reference
