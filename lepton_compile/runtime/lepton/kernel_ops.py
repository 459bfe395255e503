"""Our Triton kernels as torch custom ops (`torch.ops.lepton.*`), so lowered programs call them.

A lowered program is recorded with make_fx on fake tensors: a Triton launch cannot run there,
so each kernel is a `torch.library.custom_op` with a fake implementation that gives the
output's shape, dtype and strides. The recorded fx graph then holds one call per layer,
which runs the kernel eagerly, under a CUDA graph, and through torch.compile alike.

    lepton::gemm         kernels.gemm.gemm              fp16/bf16/fp32 + fused epilogue
    lepton::gemm_tma     kernels.gemm_tma.gemm_tma      Hopper: TMA loads, persistent wgmma
    lepton::conv2d       kernels.conv.conv2d            NHWC implicit GEMM / depthwise
    lepton::scaled_gemm  kernels.gemm_scaled            W8A8 (int8) or FP8 e4m3, scales
    lepton::int4_gemm    kernels.gemm_int4.int4_gemm    4-bit weights dequantized in-kernel

The kernel modules are imported at the first call (triton is optional). On the CPU they run
only in Triton's interpreter, which must be chosen before they are imported:
`triton_unavailable` says whether they can run on a device and sets that up where it can.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

_MODULES: dict[str, ModuleType] = {}
_INTERPRET_HINT = (
    "set TRITON_INTERPRET=1 before triton and lepton_compile.kernels are imported to run the "
    "kernels in Triton's interpreter on the CPU"
)


def _interpreter_flag() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


def triton_unavailable(device: torch.device) -> str | None:
    """None if our kernels can run on `device` in this process, else why not.

    On the CPU that means Triton's interpreter: when neither triton nor the kernels are
    imported yet, TRITON_INTERPRET=1 is set here (for this process) and they are imported.
    """
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    common = sys.modules.get("lepton_compile.kernels._common")
    if device.type == "cuda":
        if common is not None and common.interpreting():
            return "the kernels were imported for Triton's interpreter (TRITON_INTERPRET=1)"
        return None
    if device.type != "cpu":
        return f"no kernels for device {device}"
    if common is not None:
        return None if common.interpreting() else f"on the CPU: {_INTERPRET_HINT}"
    if "triton" in sys.modules and not _interpreter_flag():
        return f"triton was imported without the interpreter: {_INTERPRET_HINT}"
    os.environ["TRITON_INTERPRET"] = "1"
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    return None


def kernel_module(name: str) -> ModuleType:
    """lepton_compile.kernels.<name>, imported once."""
    mod = _MODULES.get(name)
    if mod is None:
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence 3.9's warning
        mod = _MODULES[name] = importlib.import_module(f"lepton_compile.kernels.{name}")
    return mod


def _rows(t: torch.Tensor) -> torch.Tensor:
    """`t` with unit stride along one of its last two dimensions (what the GEMMs take).

    The ops below see real tensors, whose strides may differ from what the trace predicted
    for them (fake tensors): layouts are fixed here, where they are known.
    """
    if t.dim() >= 2 and t.stride(-1) != 1 and t.stride(-2) != 1:
        return t.contiguous()
    return t


def _channels_last(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or t.is_contiguous(memory_format=torch.channels_last):
        return t
    return t.contiguous(memory_format=torch.channels_last)


def launch_counts() -> dict[str, int]:
    """Launches per kernel family in this process ({} before any kernel was imported)."""
    common = sys.modules.get("lepton_compile.kernels._common")
    return common.launch_counts() if common is not None else {}


# ---------------------------------------------------------------------------------------
# The ops: each is lepton::<name>(<its inputs>, <the epilogue>) -> Tensor.

# The epilogue arguments every op ends with, passed on to the kernel launchers by name.
_EPILOGUE_SCHEMA = (
    "str activation, float[] activation_params, str post_activation, "
    "float[] post_activation_params, ScalarType out_dtype"
)
_EPILOGUE = tuple(arg.split()[-1] for arg in _EPILOGUE_SCHEMA.split(", "))


def _fused_op(
    name: str,
    inputs: str,
    run: Callable[..., torch.Tensor],
    fake: Callable[..., torch.Tensor],
) -> Any:
    """Register lepton::<name>(<inputs>, <epilogue>) -> Tensor as a torch custom op.

    `inputs` is the schema of the leading arguments; `run(*inputs, **epilogue)` computes the
    op on real tensors, `fake(*inputs, out_dtype=...)` makes the output for fake ones.
    """
    count = inputs.count(",") + 1

    def impl(*args: Any) -> torch.Tensor:
        return run(*args[:count], **dict(zip(_EPILOGUE, args[count:], strict=True)))

    def fake_impl(*args: Any) -> torch.Tensor:
        return fake(*args[:count], out_dtype=args[-1])

    schema = f"({inputs}, {_EPILOGUE_SCHEMA}) -> Tensor"
    op = torch.library.custom_op(f"lepton::{name}", impl, mutates_args=(), schema=schema)
    op.register_fake(fake_impl)
    return op


def _gemm(a: Tensor, b: Tensor, bias: Tensor | None, residual: Tensor | None, **epi: Any) -> Tensor:
    return kernel_module("gemm").gemm(_rows(a), _rows(b), bias, residual, **epi)


def _gemm_tma(
    a: Tensor, b: Tensor, bias: Tensor | None, residual: Tensor | None, **epi: Any
) -> Tensor:
    if a.stride(-1) != 1:
        a = a.contiguous()
    return kernel_module("gemm_tma").gemm_tma(a, b, bias, residual, **epi)


def _matmul_out(a: Tensor, b: Tensor, *_: Any, out_dtype: torch.dtype) -> Tensor:
    """a (..., K) @ b (K, N) -> (..., N)."""
    return a.new_empty((*a.shape[:-1], b.shape[1]), dtype=out_dtype)


def _conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    residual: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    **epi: Any,
) -> Tensor:
    return kernel_module("conv").conv2d(
        _channels_last(x),
        weight,
        bias,
        _channels_last(residual),
        stride=stride,
        padding=padding,
        dilation=dilation,
        groups=groups,
        **epi,
    )


def _conv2d_out(x: Tensor, weight: Tensor, *args: Any, out_dtype: torch.dtype) -> Tensor:
    """(N, C_out, P, Q) channels-last; args: bias, residual, stride, padding, dilation, groups."""
    stride, (top, left, bottom, right), dilation = args[2:5]
    n, _, h, w = x.shape
    cout, _, r, s = weight.shape
    p = (h + top + bottom - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (w + left + right - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return torch.empty(
        (n, cout, p, q), dtype=out_dtype, device=x.device, memory_format=torch.channels_last
    )


def _scaled_gemm(
    a: Tensor,
    b: Tensor,
    a_scale: Tensor,
    b_scale: Tensor,
    bias: Tensor | None,
    residual: Tensor | None,
    kind: str,
    **epi: Any,
) -> Tensor:
    mod = kernel_module("gemm_scaled")
    fn = mod.w8a8_gemm if kind == "w8a8" else mod.fp8_gemm
    return fn(_rows(a), _rows(b), a_scale, b_scale, bias, residual, **epi)


def _int4_gemm(a: Tensor, b: Tensor, *args: Any, **epi: Any) -> Tensor:
    """args: scales, zeros, bias, residual, block_size."""
    *tensors, block_size = args
    return kernel_module("gemm_int4").int4_gemm(a, b, *tensors, block_size=block_size, **epi)


def _int4_out(a: Tensor, b: Tensor, *_: Any, out_dtype: torch.dtype) -> Tensor:
    """a (..., K) @ the packed (N, K / 2) weight -> (..., N)."""
    return a.new_empty((*a.shape[:-1], b.shape[0]), dtype=out_dtype)


_MATMUL = "Tensor a, Tensor b, Tensor? bias, Tensor? residual"
gemm = _fused_op("gemm", _MATMUL, _gemm, _matmul_out)
gemm_tma = _fused_op("gemm_tma", _MATMUL, _gemm_tma, _matmul_out)
conv2d = _fused_op(
    "conv2d",
    "Tensor x, Tensor weight, Tensor? bias, Tensor? residual, SymInt[] stride, "
    "SymInt[] padding, SymInt[] dilation, SymInt groups",
    _conv2d,
    _conv2d_out,
)
scaled_gemm = _fused_op(
    "scaled_gemm",
    "Tensor a, Tensor b, Tensor a_scale, Tensor b_scale, Tensor? bias, Tensor? residual, str kind",
    _scaled_gemm,
    _matmul_out,
)
int4_gemm = _fused_op(
    "int4_gemm",
    "Tensor a, Tensor b, Tensor scales, Tensor? zeros, Tensor? bias, Tensor? residual, "
    "SymInt block_size",
    _int4_gemm,
    _int4_out,
)
