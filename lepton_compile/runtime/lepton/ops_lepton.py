"""The `ai.lepton` ops (FusedConv, FusedGemm, FusedMatMul) as torch references.

Y = post_activation(activation(base(inputs)) + Z), exactly as `passes/lepton_ops.py` defines
it: attribute names, defaults, activation names and parameters all come from that schema.
Kernels (Triton) can take over per op and device later; until then this is what runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from lepton_compile.passes.lepton_ops import ACTIVATIONS, DOMAIN, RESIDUAL_INPUT, SCHEMAS
from lepton_compile.runtime.lepton.lower import NodeCtx
from lepton_compile.runtime.lepton.ops_nn import conv, conv_weight, gemm
from lepton_compile.runtime.lepton.registry import op

# One torch function per entry of ACTIVATIONS, taking the resolved parameters in order.
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


def _epilogue_fn(ctx: NodeCtx, prefix: str) -> Callable[[torch.Tensor], torch.Tensor]:
    schema = SCHEMAS[ctx.op_type]
    default = schema.attribute(prefix)
    name = ctx.attr(prefix, default.default if default else "none")
    spec = ACTIVATIONS.get(name)
    if spec is None:
        raise ctx.unsupported(f"{prefix} {name!r} is not one of {', '.join(ACTIVATIONS)}")
    params = spec.resolve(ctx.attr(f"{prefix}_params", ()) or ())
    if params is None:
        raise ctx.unsupported(f"{prefix} {name!r} takes {len(spec.params)} parameters")
    fn = TORCH_ACTIVATIONS.get(name)
    if fn is None:
        raise ctx.unsupported(f"{prefix} {name!r} has no torch implementation in lepton")
    return lambda x: fn(x, *params)


def _epilogue(ctx: NodeCtx, y: torch.Tensor) -> torch.Tensor:
    y = _epilogue_fn(ctx, "activation")(y)
    z = ctx.input(RESIDUAL_INPUT)
    post = _epilogue_fn(ctx, "post_activation")
    if z is None:
        if ctx.attr("post_activation", "none") != "none":
            raise ctx.unsupported("post_activation needs the residual input Z")
        return y
    if tuple(z.shape) != tuple(y.shape):
        raise ctx.unsupported(f"residual shape {tuple(z.shape)} is not {tuple(y.shape)}")
    return post(y + z)


@op("FusedConv", domain=DOMAIN)
def fused_conv(ctx: NodeCtx):
    return _epilogue(ctx, conv(ctx, ctx.input(0), conv_weight(ctx), ctx.input(2)))


@op("FusedGemm", domain=DOMAIN)
def fused_gemm(ctx: NodeCtx):
    return _epilogue(ctx, gemm(ctx, ctx.input(0), ctx.input(1), ctx.input(2)))


@op("FusedMatMul", domain=DOMAIN)
def fused_matmul(ctx: NodeCtx):
    y = torch.matmul(ctx.input(0), ctx.input(1))
    if ctx.has(2):
        y = y + ctx.input(2)
    return _epilogue(ctx, y)
