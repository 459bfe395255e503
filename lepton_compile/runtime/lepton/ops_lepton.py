"""The `ai.lepton` ops (FusedConv, FusedGemm, FusedMatMul): our Triton kernel or torch's ops.

Y = post_activation(activation(base(inputs)) + Z), as the contract (`lepton_compile.contract`)
defines it. Each node has two routes, chosen per layer by the session's router (routing.py):

    triton  one kernel launch: lepton::conv2d (NHWC implicit GEMM, depthwise kernel) or
            lepton::gemm, base and epilogue fused; on Hopper also lepton::gemm_tma
            ("triton-tma": TMA loads, persistent wgmma) for fp16/bf16 GEMMs
    torch   the base op (cuDNN / cuBLAS / CPU kernels) and the epilogue as separate ops

Our kernels take 2-D convolutions, Gemm without alpha/beta/transA and a bias of shape (N,),
and MatMul with a 2-D weight; anything else runs on torch's route.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lepton_compile.contract import (
    DOMAIN,
    RESIDUAL_INPUT,
    SCHEMAS,
    Epilogue,
    epilogue_from_attributes,
)
from lepton_compile.runtime.lepton import kernel_ops
from lepton_compile.runtime.lepton.lower import NodeCtx
from lepton_compile.runtime.lepton.ops_nn import _ints, conv, conv_weight, explicit_pads, gemm
from lepton_compile.runtime.lepton.registry import op
from lepton_compile.runtime.lepton.routing import Route, shape_signature, unavailable

# One torch function per contract activation, taking the resolved parameters in order.
TORCH_ACTIVATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "none": lambda x: x,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "leaky_relu": lambda x, alpha: F.leaky_relu(x, alpha),
    "clip": lambda x, lo, hi: torch.clamp(x, lo, hi),
    "hard_sigmoid": lambda x, alpha, beta: torch.clamp(alpha * x + beta, 0.0, 1.0),
    "hardswish": F.hardswish,
    "silu": F.silu,
    "gelu": lambda x: F.gelu(x, approximate="none"),
}


def node_epilogue(ctx: NodeCtx) -> Epilogue:
    """The node's epilogue, validated against the contract (NotSupported if invalid)."""
    schema = SCHEMAS[ctx.op_type]
    values = {}
    for a in schema.attributes:
        if a.name.startswith(("activation", "post_activation")):
            values[a.name] = ctx.attr(a.name, a.default)
    try:
        return epilogue_from_attributes(values, has_residual=ctx.has(RESIDUAL_INPUT))
    except ValueError as e:
        raise ctx.unsupported(str(e)) from None


def torch_epilogue(
    epilogue: Epilogue, y: torch.Tensor, z: torch.Tensor | None, ctx: NodeCtx
) -> torch.Tensor:
    """The epilogue with torch ops on the base result `y` (and the residual `z`)."""
    y = TORCH_ACTIVATIONS[epilogue.activation](y, *epilogue.activation_params)
    if z is None:
        return y
    if tuple(z.shape) != tuple(y.shape):
        raise ctx.unsupported(f"residual shape {tuple(z.shape)} is not {tuple(y.shape)}")
    y = y + z
    return TORCH_ACTIVATIONS[epilogue.post_activation](y, *epilogue.post_activation_params)


def _epilogue_args(epilogue: Epilogue) -> tuple:
    return (
        epilogue.activation,
        list(epilogue.activation_params),
        epilogue.post_activation,
        list(epilogue.post_activation_params),
    )


def _run(
    ctx: NodeCtx,
    op_name: str,
    tensors: list,
    torch_route: Route,
    triton_route: Route,
    extra: dict[str, Route] | None = None,
):
    router = ctx.router
    if router is None:
        return torch_route.fn(*torch_route.args)
    sig = shape_signature(op_name, tensors, **ctx.attr_values())
    routes = {"triton": triton_route, **(extra or {}), "torch": torch_route}
    return router.run(ctx, op_name, sig, routes)


# ---------------------------------------------------------------------------------------
# FusedConv


def _conv_triton(ctx: NodeCtx, epilogue: Epilogue, x: torch.Tensor) -> Route:
    router = ctx.router
    reason = router.float_unavailable(x.dtype) if router is not None else "no router"
    if reason is None and x.dim() != 4:
        reason = f"our conv kernel is 2-D only, this is {x.dim() - 2}-D"
    if reason is not None:
        return unavailable(reason)
    w = conv_weight(ctx)
    kernel = list(w.shape[2:])
    strides = _ints(ctx, "strides", 2, 1)
    dilations = _ints(ctx, "dilations", 2, 1)
    group = int(ctx.attr("group", 1))
    begin, end = explicit_pads(ctx, x.shape[2:], kernel, strides, dilations)
    if w.dtype != x.dtype:
        return unavailable(f"weight dtype {w.dtype} is not the input's {x.dtype}")
    depthwise = group > 1 and group == x.shape[1] and w.shape[1] == 1
    cl = torch.channels_last
    if depthwise and ctx.is_const(1):
        # (R, S, C_out) memory: each tap reads its channels contiguously.
        w = ctx.input(1).permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)
    else:
        w = ctx.input(1, memory_format=cl)
    b, z = ctx.input(2), ctx.input(RESIDUAL_INPUT)
    pads = [begin[0], begin[1], end[0], end[1]]
    epi = _epilogue_args(epilogue)

    def fn(x, w, b, z):
        x = x.contiguous(memory_format=cl)
        z = z.contiguous(memory_format=cl) if z is not None else None
        return kernel_ops.conv2d(x, w, b, z, strides, pads, dilations, group, *epi, x.dtype)

    return Route(fn, (x, w, b, z), True)


@op("FusedConv", domain=DOMAIN)
def fused_conv(ctx: NodeCtx):
    epilogue = node_epilogue(ctx)
    x = ctx.input(0)

    def torch_fn(x, w, b, z):
        return torch_epilogue(epilogue, conv(ctx, x, w, b), z, ctx)

    torch_route = Route(
        torch_fn, (x, conv_weight(ctx), ctx.input(2), ctx.input(RESIDUAL_INPUT)), False
    )
    tensors = [x, ctx.input(1), ctx.input(2), ctx.input(RESIDUAL_INPUT)]
    return _run(ctx, "FusedConv", tensors, torch_route, _conv_triton(ctx, epilogue, x))


# ---------------------------------------------------------------------------------------
# FusedGemm / FusedMatMul


def _gemm_triton(
    ctx: NodeCtx,
    epilogue: Epilogue,
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None,
    z: torch.Tensor | None,
) -> Route:
    """Our GEMM for a (..., K) @ b (K, N) [+ bias (N,)] [+ z], else why not."""
    router = ctx.router
    reason = router.float_unavailable(a.dtype) if router is not None else "no router"
    if reason is None:
        n = b.shape[-1]
        if a.dim() < 2 or b.dim() != 2:
            reason = f"{tuple(a.shape)} @ {tuple(b.shape)}: the kernel takes (..., K) @ (K, N)"
        elif b.dtype != a.dtype:
            reason = f"operand dtypes differ ({a.dtype}, {b.dtype})"
        elif bias is not None and (bias.numel() != n or bias.dim() > 2 or bias.dtype != a.dtype):
            reason = f"bias of shape {tuple(bias.shape)} is not one value per column"
        elif z is not None and tuple(z.shape) != (*a.shape[:-1], n):
            reason = f"residual of shape {tuple(z.shape)} is not the output's"
    if reason is not None:
        return unavailable(reason)
    bias = bias.reshape(-1) if bias is not None else None
    epi = _epilogue_args(epilogue)

    def fn(a, b, bias, z):
        if a.stride(-1) != 1 and a.stride(-2) != 1:
            a = a.contiguous()
        return kernel_ops.gemm(a, b, bias, z, *epi, a.dtype)

    return Route(fn, (a, b, bias, z), True)


def _gemm_tma(ctx: NodeCtx, epilogue: Epilogue, plain: Route) -> dict[str, Route]:
    """Hopper's TMA + persistent-wgmma GEMM as a second candidate where it applies."""
    router = ctx.router
    if plain.unavailable is not None or router is None:
        return {}
    arch = router.arch()
    if arch != "interpreter" and int(arch) < 90:
        return {}
    a, b, bias, z = plain.args
    from lepton_compile.runtime.lepton.kernel_ops import kernel_module

    reason = kernel_module("gemm_tma").supported(a, b)
    if reason is not None:
        return {"triton-tma": unavailable(reason)}
    epi = _epilogue_args(epilogue)

    def fn(a, b, bias, z):
        return kernel_ops.gemm_tma(a, b, bias, z, *epi, a.dtype)

    return {"triton-tma": Route(fn, (a, b, bias, z), True)}


@op("FusedGemm", domain=DOMAIN)
def fused_gemm(ctx: NodeCtx):
    epilogue = node_epilogue(ctx)
    a, b, c, z = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(RESIDUAL_INPUT)

    def torch_fn(a, b, c, z):
        return torch_epilogue(epilogue, gemm(ctx, a, b, c), z, ctx)

    torch_route = Route(torch_fn, (a, b, c, z), False)
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    if ctx.attr("transA", 0):
        triton_route = unavailable("transA")
    elif alpha != 1.0 or (c is not None and beta != 1.0):
        triton_route = unavailable(f"alpha={alpha}, beta={beta}")
    else:
        b_kn = b.t() if ctx.attr("transB", 0) else b
        triton_route = _gemm_triton(ctx, epilogue, a, b_kn, c, z)
    extra = _gemm_tma(ctx, epilogue, triton_route)
    return _run(ctx, "FusedGemm", [a, b, c, z], torch_route, triton_route, extra)


@op("FusedMatMul", domain=DOMAIN)
def fused_matmul(ctx: NodeCtx):
    epilogue = node_epilogue(ctx)
    a, b, bias, z = ctx.input(0), ctx.input(1), ctx.input(2), ctx.input(RESIDUAL_INPUT)

    def torch_fn(a, b, bias, z):
        y = torch.matmul(a, b)
        if bias is not None:
            y = y + bias
        return torch_epilogue(epilogue, y, z, ctx)

    torch_route = Route(torch_fn, (a, b, bias, z), False)
    triton_route = _gemm_triton(ctx, epilogue, a, b, bias, z)
    extra = _gemm_tma(ctx, epilogue, triton_route)
    return _run(ctx, "FusedMatMul", [a, b, bias, z], torch_route, triton_route, extra)
