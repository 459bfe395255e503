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

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from lepton_compile.kernels._common import (
    GEMM_META,
    Arch,
    cdiv,
    check_device,
    check_dtype,
    check_epilogue_inputs,
    check_output_size,
    device_facts,
    dot_upcast,
    epilogue_args,
    epilogue_kernel_args,
    epilogue_reference,
    epilogue_store,
    fit_smem,
    grouped_tile,
    launch,
    make_configs,
    memo_configs,
    num_sms,
)

INPUT_DTYPES = (torch.float16, torch.bfloat16)
TMA_ALIGN = 16  # bytes: TMA wants 16-byte aligned bases and row strides


@triton.jit
def gemm_tma_kernel(
    a_desc,
    b_desc,
    bias_ptr,
    res_ptr,
    y_ptr,
    M,
    N,
    K,
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
    NUM_SMS: tl.constexpr,
    B_KMAJOR: tl.constexpr,
    DOT_MODE: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    POST_ACT: tl.constexpr,
):
    """B_KMAJOR: b_desc covers the (N, K) weight (tiles transposed in registers).

    DOT_MODE 1 (interpreter bf16 only): tiles upcast to fp32 before tl.dot.
    """
    num_tiles = tl.cdiv(M, BLOCK_M) * tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
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
        epilogue_store(
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
            p0,
            p1,
            q0,
            q1,
            HAS_BIAS,
            ACT,
            HAS_RES,
            POST_ACT,
        )


# ---------------------------------------------------------------------------------------
# Configs (sm90 only): (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_stages, num_warps).

_SM90 = [
    (128, 256, 64, 8, 3, 8),
    (128, 128, 64, 8, 4, 8),
    (128, 128, 64, 8, 4, 4),
    (128, 64, 64, 8, 4, 4),
    (64, 128, 64, 8, 4, 4),
]
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
        rows = _SM90
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
    activation: str = "none",
    activation_params: Sequence[float] = (),
    post_activation: str = "none",
    post_activation_params: Sequence[float] = (),
    out_dtype: torch.dtype | None = None,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """Y = post_activation(activation(a @ b + bias) + residual) on Hopper's TMA path.

    a: (..., K) fp16/bf16, contiguous along K; b: (K, N) row-major, or the (N, K) weight
    passed as `w.t()`; `supported(a, b)` says whether a pair qualifies.
    """
    from triton.tools.tensor_descriptor import TensorDescriptor

    device = check_device({"a": a, "b": b, "bias": bias, "residual": residual})
    check_dtype("a", a, INPUT_DTYPES)
    reason = supported(a, b)
    if reason is not None:
        raise ValueError(f"gemm_tma: {reason}")
    k, n = b.shape
    out_dtype = out_dtype or a.dtype
    out_shape = (*a.shape[:-1], n)
    check_epilogue_inputs(bias, residual, n, out_shape)
    epi = epilogue_args(activation, activation_params, post_activation, post_activation_params)
    a2 = a.reshape(-1, k) if a.dim() != 2 else a
    m = a2.shape[0]
    check_output_size(m * n)
    y = torch.empty(out_shape, device=device, dtype=out_dtype)
    if m == 0 or n == 0:
        return y
    y2 = y if y.dim() == 2 else y.view(m, n)
    r2 = None
    if residual is not None:
        r2 = residual if residual.dim() == 2 else residual.reshape(m, n)
    facts = device_facts(device)
    arch = facts.arch
    if config is not None:
        configs: Sequence[triton.Config] = (config,)
    else:
        configs = memo_configs(
            ("gemm_tma", arch, facts.smem),
            lambda: (
                fit_smem(get_configs(arch), facts.smem, 2, 2)
                if arch != "interpreter"
                else get_configs(arch)
            ),
        )
    kmajor = b.stride(0) == 1 and b.shape[1] > 1
    sms = num_sms(device)
    b_mat = b.t() if kmajor else b  # the (N, K) weight itself when K-major
    c0 = configs[0].kwargs
    # Tile shapes are placeholders until a config's pre-hook sets them (set_tma_blocks).
    a_desc = TensorDescriptor.from_tensor(a2, [c0["BLOCK_M"], c0["BLOCK_K"]])
    b_desc = TensorDescriptor.from_tensor(b_mat, [c0["BLOCK_N"], c0["BLOCK_K"]])
    args = epilogue_kernel_args(epi, bias, r2, y2)
    args.update(
        a_desc=a_desc,
        b_desc=b_desc,
        M=m,
        N=n,
        K=k,
        NUM_SMS=sms,
        B_KMAJOR=kmajor,
        DOT_MODE=1 if dot_upcast(a.dtype) else 0,
    )

    def grid(meta: dict) -> tuple:
        tiles = cdiv(meta["M"], meta["BLOCK_M"]) * cdiv(meta["N"], meta["BLOCK_N"])
        return (min(sms, tiles),)

    launch(
        gemm_tma_kernel,
        grid,
        args,
        configs,
        tuner_id=("gemm_tma", arch, kmajor, a.dtype, config is None),
        key=("M", "N", "K"),
    )
    return y


def gemm_tma_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    activation: str = "none",
    activation_params: Sequence[float] = (),
    post_activation: str = "none",
    post_activation_params: Sequence[float] = (),
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """torch reference of `gemm_tma`: fp32 matmul and epilogue, cast at the end."""
    return epilogue_reference(
        a.float() @ b.float(),
        bias,
        residual,
        activation,
        activation_params,
        post_activation,
        post_activation_params,
        out_dtype or a.dtype,
    )
