"""A @ B (fp16/bf16/fp32, fp32 accumulate) -> fused ai.lepton epilogue, one Triton kernel.

    Y = cast(post_activation(activation(A @ B + bias) + residual))

A is (..., K), B is (K, N) in any row- or column-major layout (an nn.Linear weight (N, K)
is passed as `w.t()`), bias (N,), residual the shape of Y. fp32 inputs use TF32 tensor
cores on the GPU. Small M splits K over programs (fp32 partials, then a reduce pass that
runs the epilogue), because a few output tiles cannot fill the GPU.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import triton
import triton.language as tl

from lepton_compile.kernels._common import (
    Arch,
    FusedOutput,
    check_device,
    check_dtype,
    check_gemm_inputs,
    device_facts,
    dot_upcast,
    epilogue_reference,
    fit_smem,
    gemm_bucket,
    gemm_strides,
    gemm_tile,
    launch_gemm,
    new_output,
    pinned_or_memo,
    scale_block_k,
    split_epilogue,
    store_tile,
    table_configs,
)
from lepton_compile.kernels.configs import GEMM_SM80, GEMM_SM90

INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def gemm_kernel(
    a_ptr, b_ptr, bias_ptr, res_ptr, y_ptr, ws_ptr,
    M, N, K, stride_am, stride_ak, stride_bk, stride_bn,
    stride_rm, stride_rn, stride_ym, stride_yn, p0, p1, q0, q1,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr, EVEN_K: tl.constexpr,
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, POST_ACT: tl.constexpr,
    DOT_MODE: tl.constexpr,
):  # fmt: skip
    a = (a_ptr, stride_am, stride_ak)
    b = (b_ptr, stride_bk, stride_bn)
    acc, offs_m, offs_n, pid_k = gemm_tile(
        a, b, M, N, K, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, SPLIT_K, EVEN_K, tl.float32, DOT_MODE
    )
    epi = (bias_ptr, res_ptr, stride_rm, stride_rn, y_ptr, stride_ym, stride_yn, p0, p1, q0, q1)
    store_tile(
        acc, offs_m, offs_n, M, N, epi, ws_ptr, pid_k, SPLIT_K, HAS_BIAS, ACT, HAS_RES, POST_ACT
    )


# ---------------------------------------------------------------------------------------
# Configs: the tables GEMM_SM90 / GEMM_SM80 in kernels/configs.py (16-bit operands).

# The interpreter runs one config; 32x32x32 tiles make small test shapes span several tiles.
_INTERPRETER = [(32, 32, 32, 2, 1, 4)]


def get_configs(arch: Arch, m: int | None = None, elem_bytes: int = 2) -> list[triton.Config]:
    """Autotune configs for `arch` (90: Hopper, 80: Ampere, ..., "interpreter") and M.

    m=None gives the union over all M buckets (the compile gate compiles each of them).
    """
    adjust = functools.partial(scale_block_k, elem_bytes=elem_bytes) if elem_bytes > 2 else None
    return table_configs(arch, m, GEMM_SM90, GEMM_SM80, _INTERPRETER, adjust)


def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    *,
    split_k: int | None = None,
    config: triton.Config | None = None,
    **epilogue: Any,
) -> torch.Tensor:
    """Y = post_activation(activation(a @ b + bias) + residual), cast to out_dtype.

    a: (..., K) fp16/bf16/fp32; b: (K, N) of a's dtype, row- or column-major; bias: (N,);
    residual: Y's shape (any strides); split_k: None picks it from the shape; config pins one
    triton.Config (no autotuning). epilogue: the `Epilogue` keywords (activation,
    activation_params, post_activation, post_activation_params, out_dtype: fp16/bf16/fp32,
    default a's dtype).
    """
    device = check_device({"a": a, "b": b, "bias": bias, "residual": residual})
    check_dtype("a", a, INPUT_DTYPES)
    if b.dtype != a.dtype:
        raise ValueError(f"b has dtype {b.dtype}, expected a's dtype {a.dtype}")
    out_dtype, spec = split_epilogue(epilogue, None)
    out_dtype = out_dtype or a.dtype
    a2, m, k, n, out_shape, epi = check_gemm_inputs(a, b, bias, residual, out_dtype, spec)
    out = FusedOutput.of_matrix(new_output(out_shape, out_dtype, device), bias, residual, epi)
    if out.y.numel() == 0:
        return out.y
    facts = device_facts(device)
    arch, smem = facts.arch, facts.smem
    elem = a.element_size()
    bucket = gemm_bucket(m)
    configs = pinned_or_memo(
        config,
        ("gemm", arch, bucket, elem, smem),
        lambda: fit_smem(get_configs(arch, m, elem), smem, elem, elem),
    )
    args = dict(a_ptr=a2, b_ptr=b, M=m, N=n, K=k, DOT_MODE=1 if dot_upcast(a.dtype) else 0)
    args.update(gemm_strides(a2, b))
    tuner_id = ("gemm", arch, bucket, elem, config is None)
    launch_gemm(gemm_kernel, args, configs, out, split_k, tuner_id)
    return out.y


def gemm_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    **epilogue: Any,
) -> torch.Tensor:
    """torch reference of `gemm`: fp32 matmul, fp32 epilogue, cast at the end."""
    return epilogue_reference(a.float() @ b.float(), bias, residual, a.dtype, **epilogue)
