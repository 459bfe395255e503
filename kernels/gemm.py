"""A @ B (fp16/bf16/fp32, fp32 accumulate) -> fused ai.lepton epilogue, one Triton kernel.

    Y = cast(post_activation(activation(A @ B + bias) + residual))

A is (..., K), B is (K, N) in any row- or column-major layout (an nn.Linear weight (N, K)
is passed as `w.t()`), bias (N,), residual the shape of Y. fp32 inputs use TF32 tensor
cores on the GPU. Small M splits K over programs (fp32 partials, then a reduce pass that
runs the epilogue), because a few output tiles cannot fill the GPU.
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
    check_device,
    check_dtype,
    check_gemm_inputs,
    check_output_size,
    dedupe,
    device_facts,
    dot_upcast,
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

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def gemm_kernel(
    a_ptr,
    b_ptr,
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
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    HAS_RES: tl.constexpr,
    POST_ACT: tl.constexpr,
    DOT_MODE: tl.constexpr,
):
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
        tl.float32,
        DOT_MODE,
    )
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
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
# Configs: (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_stages, num_warps), for 16-bit inputs.

_SM90 = {
    # 128x256 / 256x128 with 8 warps (two warpgroups of wgmma) for the big square shapes;
    # BERT-class layers (M = batch x 128 tokens, N and K of 768..3072) also get deeper K
    # tiles and 64x256 tiles for their narrow N = 768.
    "large": [
        (128, 256, 64, 8, 3, 8),
        (256, 128, 64, 8, 3, 8),
        (128, 128, 64, 8, 4, 8),
        (128, 128, 64, 8, 4, 4),
        (128, 64, 64, 8, 4, 4),
        (64, 128, 64, 8, 4, 4),
        (128, 128, 128, 8, 3, 8),
        (64, 256, 64, 8, 4, 8),
    ],
    "m512": [
        (128, 128, 64, 8, 4, 8),
        (128, 64, 64, 8, 4, 4),
        (64, 128, 64, 8, 4, 4),
        (64, 256, 64, 8, 3, 8),
        (64, 64, 64, 8, 5, 4),
    ],
    # Batch 1 of a BERT-class encoder (M = 128): few 64-row tiles leave most SMs idle, so
    # 32-row tiles (mma.sync) and split-K (per config, see SplitKRule) compete too.
    "m128": [
        (64, 128, 64, 8, 4, 4),
        (64, 64, 128, 8, 4, 4),
        (64, 64, 64, 8, 5, 4),
        (128, 64, 64, 8, 4, 4),
        (64, 256, 64, 8, 3, 8),
        (32, 64, 128, 8, 4, 4),
        (32, 128, 64, 8, 4, 4),
    ],
    # M <= 32 cannot fill a 64-row wgmma: mma.sync tiles of 16/32 rows, long K blocks.
    "m32": [
        (16, 64, 128, 1, 4, 4),
        (32, 64, 128, 1, 4, 4),
        (16, 128, 128, 1, 3, 4),
        (32, 128, 64, 1, 4, 4),
        (64, 64, 128, 1, 4, 4),
        (16, 256, 64, 1, 3, 4),
        (16, 32, 256, 1, 4, 2),
    ],
}

_SM80 = {
    "large": [
        (128, 256, 32, 8, 3, 8),
        (256, 128, 32, 8, 3, 8),
        (128, 128, 32, 8, 4, 4),
        (128, 128, 64, 8, 3, 8),
        (64, 128, 32, 8, 4, 4),
        (128, 64, 32, 8, 4, 4),
    ],
    "m512": [
        (128, 128, 32, 8, 4, 4),
        (64, 128, 32, 8, 4, 4),
        (128, 64, 32, 8, 4, 4),
        (64, 64, 64, 8, 4, 4),
    ],
    "m128": [
        (64, 128, 32, 8, 4, 4),
        (64, 64, 64, 8, 4, 4),
        (32, 128, 64, 8, 4, 4),
        (64, 64, 32, 8, 5, 2),
    ],
    "m32": [
        (16, 64, 64, 1, 4, 4),
        (32, 64, 64, 1, 4, 4),
        (16, 128, 64, 1, 4, 4),
        (32, 128, 32, 1, 4, 4),
    ],
}

# The interpreter runs one config; 32x32x32 tiles make small test shapes span several tiles.
_INTERPRETER = [(32, 32, 32, 2, 1, 4)]

BUCKETS = ("m32", "m128", "m512", "large")


def _table(arch: Arch) -> dict[str, list[tuple]] | None:
    if arch == "interpreter":
        return None
    return _SM90 if int(arch) >= 90 else _SM80


def _scale_k(rows: list[tuple], elem_bytes: int) -> list[tuple]:
    # fp32 operands take twice the bytes: halve BLOCK_K (not below 16) to keep the footprint.
    if elem_bytes <= 2:
        return rows
    return [(bm, bn, max(16, bk * 2 // elem_bytes), *rest) for bm, bn, bk, *rest in rows]


def get_configs(arch: Arch, m: int | None = None, elem_bytes: int = 2) -> list[triton.Config]:
    """Autotune configs for `arch` (90: Hopper, 80: Ampere, ..., "interpreter") and M.

    m=None gives the union over all M buckets (the compile gate compiles each of them).
    """
    table = _table(arch)
    if table is None:
        return make_configs(_INTERPRETER, GEMM_META)
    buckets = BUCKETS if m is None else (gemm_bucket(m),)
    rows = [row for b in buckets for row in table[b]]
    return dedupe(make_configs(_scale_k(rows, elem_bytes), GEMM_META))


def _fitted_configs(arch: Arch, m: int, elem: int, smem: int) -> list[triton.Config]:
    """The autotuning set of one M bucket: get_configs, less those over the shared memory."""
    configs = get_configs(arch, m, elem)
    if arch != "interpreter":
        configs = fit_smem(configs, smem, elem, elem)
    return configs


_HEURISTICS = {"EVEN_K": even_k}


def gemm(
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
    split_k: int | None = None,
    config: triton.Config | None = None,
) -> torch.Tensor:
    """Y = post_activation(activation(a @ b + bias) + residual), cast to out_dtype.

    a: (..., K) fp16/bf16/fp32; b: (K, N) of a's dtype, row- or column-major; bias: (N,);
    residual: Y's shape (any strides); out_dtype: fp16/bf16/fp32 (default a's dtype).
    split_k: None picks it from the shape; config pins one triton.Config (no autotuning).
    """
    device = check_device({"a": a, "b": b, "bias": bias, "residual": residual})
    check_dtype("a", a, INPUT_DTYPES)
    if b.dtype != a.dtype:
        raise ValueError(f"b has dtype {b.dtype}, expected a's dtype {a.dtype}")
    out_dtype = out_dtype or a.dtype
    spec = (activation, activation_params, post_activation, post_activation_params)
    a2, m, k, n, out_shape, epi = check_gemm_inputs(a, b, bias, residual, out_dtype, spec)
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
    elem = a.element_size()
    bucket = gemm_bucket(m)
    if config is not None:
        configs: Sequence[triton.Config] = (config,)
    else:
        configs = memo_configs(
            ("gemm", arch, bucket, elem, facts.smem),
            lambda: _fitted_configs(arch, m, elem, facts.smem),
        )
    rule, ws = gemm_split_k(split_k, configs, m, n, k, device, y2)

    a_st, b_st = a2.stride(), b.stride()
    args = epilogue_kernel_args(epi, bias, r2, y2)
    args.update(
        a_ptr=a2,
        b_ptr=b,
        ws_ptr=ws,
        M=m,
        N=n,
        K=k,
        stride_am=a_st[0],
        stride_ak=a_st[1],
        stride_bk=b_st[0],
        stride_bn=b_st[1],
        DOT_MODE=1 if dot_upcast(a.dtype) else 0,
    )

    cfg = launch(
        gemm_kernel,
        gemm_grid,
        args,
        configs,
        tuner_id=("gemm", arch, bucket, elem, config is None, rule.key),
        key=GEMM_TUNE_KEY,
        heuristics={**_HEURISTICS, "SPLIT_K": rule},
    )
    split = launched_split(rule, args, cfg)
    if split > 1:
        run_splitk_epilogue(ws, bias, residual, y2, r2, epi, split)
    return y


def gemm_reference(
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
    """torch reference of `gemm`: fp32 matmul, fp32 epilogue, cast at the end."""
    acc = a.float() @ b.float()
    return epilogue_reference(
        acc,
        bias,
        residual,
        activation,
        activation_params,
        post_activation,
        post_activation_params,
        out_dtype or a.dtype,
    )
