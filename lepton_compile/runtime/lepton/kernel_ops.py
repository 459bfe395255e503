"""Our Triton kernels as torch custom ops (`torch.ops.lepton.*`), so lowered programs call them.

A lowered program is recorded with make_fx on fake tensors: a Triton launch cannot run there,
so each kernel is a `torch.library.triton_op` with a fake implementation that gives the
output's shape, dtype and strides. The recorded fx graph then holds one call per layer,
which runs the kernel eagerly, under a CUDA graph, and through torch.compile alike; when
Inductor compiles the program (torch.compile, or AOTInductor in `lepton-compile export`) it
sees the Triton kernels inside the op and compiles them into its output.

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

import contextlib
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Callable, Iterator
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
        _record_kernels(name, mod)
        if name != "_common":  # the split-K epilogue of the GEMMs lives there
            _record_kernels("_common", importlib.import_module("lepton_compile.kernels._common"))
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
#
# Each is a `torch.library.triton_op`: eagerly it runs the launcher as before, and when
# Inductor compiles a program (torch.compile, AOTInductor's export) it traces into the
# launcher, whose launches go through `wrap_triton` (kernels/_common.py), so the Triton
# kernels themselves are compiled into the program; torch.export keeps the op whole. The
# fake implementations give the output's shape, dtype and strides alone: the launchers'
# own checks ask the device, which a fake tensor's trace must not need.

# The names of the epilogue arguments every op ends with, passed on to the launchers.
_EPILOGUE = (
    "activation",
    "activation_params",
    "post_activation",
    "post_activation_params",
    "out_dtype",
)
# The Triton kernels each op may launch, as (module in kernels/, kernel): the Hopper compile
# gate (tests/kernels/test_compile_hopper.py) checks that every one has specs that compile,
# since that is what Inductor compiles into a GPU package; lepton_compile.export reads the
# op names.
_SPLITK = ("_common", "splitk_epilogue_kernel")
OP_KERNELS: dict[str, tuple[tuple[str, str], ...]] = {
    "lepton::gemm": (("gemm", "gemm_kernel"), _SPLITK),
    "lepton::gemm_tma": (("gemm_tma", "gemm_tma_kernel"),),
    "lepton::conv2d": (("conv", "conv2d_kernel"), ("conv", "depthwise_conv2d_kernel")),
    "lepton::scaled_gemm": (("gemm_scaled", "scaled_gemm_kernel"), _SPLITK),
    "lepton::int4_gemm": (("gemm_int4", "int4_gemm_kernel"), _SPLITK),
}
TRITON_OPS = frozenset(OP_KERNELS)


@contextlib.contextmanager
def _triton_unimportable() -> Iterator[None]:
    """Make `import triton` fail for the moment, unless it is imported already.

    triton_op looks for the Triton kernels in a function's source when it registers it, and
    imports triton to do so. Importing triton here, at import time, would decide too early
    whether the kernels run compiled or in the interpreter (TRITON_INTERPRET is read when
    triton and the kernels are imported; `triton_unavailable` chooses later). Our ops find
    their kernels through `kernel_module`, which records them for torch when it imports
    them (`_record_kernels`), so the search has nothing to find anyway.
    """
    if "triton" in sys.modules:
        yield
        return
    library_log = logging.getLogger("torch._library.triton")
    level = library_log.level
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` raises
    library_log.setLevel(logging.ERROR)  # its "Triton not available" warning
    try:
        yield
    finally:
        del sys.modules["triton"]
        library_log.setLevel(level)


def _record_kernels(module: str, mod: ModuleType) -> None:
    """Tell torch which Triton kernels our ops launch, once their module is imported: what
    AOTAutograd's cache keys an op's compiled form on."""
    try:
        from torch._library.triton import triton_ops_to_kernels
    except ImportError:
        return
    for op, kernels in OP_KERNELS.items():
        for where, name in kernels:
            if where == module and hasattr(mod, name):
                known = triton_ops_to_kernels.setdefault(op, [])
                if getattr(mod, name) not in known:
                    known.append(getattr(mod, name))


def _define(fn: Callable[..., Tensor], fake: Callable[..., Tensor]) -> Any:
    """Register `fn` (typed: its annotations are the schema) as lepton::<fn's name>."""
    name = f"lepton::{fn.__name__}"
    triton_op = getattr(torch.library, "triton_op", None)
    if triton_op is not None:
        with _triton_unimportable():
            op = triton_op(name, fn, mutates_args=())
    else:  # torch < 2.6: an opaque custom op (runs the same; Inductor cannot see inside)
        op = torch.library.custom_op(name, fn, mutates_args=())
    op.register_fake(fake)
    return op


def _epi(*values: Any) -> dict[str, Any]:
    return dict(zip(_EPILOGUE, values, strict=True))


def gemm(
    a: Tensor,
    b: Tensor,
    bias: Tensor | None,
    residual: Tensor | None,
    activation: str,
    activation_params: list[float],
    post_activation: str,
    post_activation_params: list[float],
    out_dtype: torch.dtype,
) -> Tensor:
    epi = _epi(activation, activation_params, post_activation, post_activation_params, out_dtype)
    return kernel_module("gemm").gemm(_rows(a), _rows(b), bias, residual, **epi)


def gemm_tma(
    a: Tensor,
    b: Tensor,
    bias: Tensor | None,
    residual: Tensor | None,
    activation: str,
    activation_params: list[float],
    post_activation: str,
    post_activation_params: list[float],
    out_dtype: torch.dtype,
) -> Tensor:
    if a.stride(-1) != 1:
        a = a.contiguous()
    epi = _epi(activation, activation_params, post_activation, post_activation_params, out_dtype)
    return kernel_module("gemm_tma").gemm_tma(a, b, bias, residual, **epi)


def _matmul_out(a: Tensor, b: Tensor, *args: Any) -> Tensor:
    """a (..., K) @ b (K, N) -> (..., N); the last argument is out_dtype."""
    return a.new_empty((*a.shape[:-1], b.shape[1]), dtype=args[-1])


def conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    residual: Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
    activation: str,
    activation_params: list[float],
    post_activation: str,
    post_activation_params: list[float],
    out_dtype: torch.dtype,
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
        **_epi(activation, activation_params, post_activation, post_activation_params, out_dtype),
    )


def _conv2d_out(x: Tensor, weight: Tensor, *args: Any) -> Tensor:
    """(N, C_out, P, Q) channels-last; args: bias, residual, stride, padding, dilation,
    groups, the epilogue (out_dtype last)."""
    stride, (top, left, bottom, right), dilation = args[2:5]
    n, _, h, w = x.shape
    cout, _, r, s = weight.shape
    p = (h + top + bottom - dilation[0] * (r - 1) - 1) // stride[0] + 1
    q = (w + left + right - dilation[1] * (s - 1) - 1) // stride[1] + 1
    return torch.empty(
        (n, cout, p, q), dtype=args[-1], device=x.device, memory_format=torch.channels_last
    )


def scaled_gemm(
    a: Tensor,
    b: Tensor,
    a_scale: Tensor,
    b_scale: Tensor,
    bias: Tensor | None,
    residual: Tensor | None,
    kind: str,
    activation: str,
    activation_params: list[float],
    post_activation: str,
    post_activation_params: list[float],
    out_dtype: torch.dtype,
) -> Tensor:
    mod = kernel_module("gemm_scaled")
    fn = mod.w8a8_gemm if kind == "w8a8" else mod.fp8_gemm
    epi = _epi(activation, activation_params, post_activation, post_activation_params, out_dtype)
    return fn(_rows(a), _rows(b), a_scale, b_scale, bias, residual, **epi)


def int4_gemm(
    a: Tensor,
    b: Tensor,
    scales: Tensor,
    zeros: Tensor | None,
    bias: Tensor | None,
    residual: Tensor | None,
    block_size: int,
    activation: str,
    activation_params: list[float],
    post_activation: str,
    post_activation_params: list[float],
    out_dtype: torch.dtype,
) -> Tensor:
    epi = _epi(activation, activation_params, post_activation, post_activation_params, out_dtype)
    return kernel_module("gemm_int4").int4_gemm(
        a, b, scales, zeros, bias, residual, block_size=block_size, **epi
    )


def _int4_out(a: Tensor, b: Tensor, *args: Any) -> Tensor:
    """a (..., K) @ the packed (N, K / 2) weight -> (..., N)."""
    return a.new_empty((*a.shape[:-1], b.shape[0]), dtype=args[-1])


gemm = _define(gemm, _matmul_out)
gemm_tma = _define(gemm_tma, _matmul_out)
conv2d = _define(conv2d, _conv2d_out)
scaled_gemm = _define(scaled_gemm, _matmul_out)
int4_gemm = _define(int4_gemm, _int4_out)
