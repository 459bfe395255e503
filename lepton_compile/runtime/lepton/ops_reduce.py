"""Reductions (ReduceX with axes as attribute or input across opsets) and ArgMax/ArgMin."""

from __future__ import annotations

import math

import torch

from lepton_compile.runtime.lepton.lower import NodeCtx
from lepton_compile.runtime.lepton.registry import op


def _axes(ctx: NodeCtx, x: torch.Tensor) -> list[int] | None:
    """The reduced axes; None means identity (noop_with_empty_axes with no axes)."""
    since = 13 if ctx.op_type == "ReduceSum" else 18
    if ctx.opset < since:
        axes = ctx.attr("axes")
        axes = [int(a) for a in axes] if axes else []
    else:
        axes = ctx.ints(1, "axes") if ctx.has(1) else []
    if not axes:
        if ctx.attr("noop_with_empty_axes", 0):
            return None
        return list(range(x.dim()))
    return sorted({a + x.dim() if a < 0 else a for a in axes})


def _float(x: torch.Tensor) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(torch.float64)


def _reducer(name: str):
    def reduce_(x: torch.Tensor, axes: list[int], keep: bool) -> torch.Tensor:
        if name == "ReduceSum":
            return torch.sum(x, axes, keepdim=keep, dtype=x.dtype)
        if name == "ReduceMean":
            return torch.mean(_float(x), axes, keepdim=keep)
        if name == "ReduceMax":
            return torch.amax(x, axes, keepdim=keep)
        if name == "ReduceMin":
            return torch.amin(x, axes, keepdim=keep)
        if name == "ReduceProd":
            out = x
            for a in reversed(axes):
                out = torch.prod(out, a, keepdim=keep)
            return out
        if name == "ReduceL1":
            return torch.sum(torch.abs(x), axes, keepdim=keep)
        if name == "ReduceL2":
            return torch.sqrt(torch.sum(_float(x) * _float(x), axes, keepdim=keep))
        if name == "ReduceSumSquare":
            return torch.sum(x * x, axes, keepdim=keep)
        if name == "ReduceLogSum":
            return torch.log(torch.sum(_float(x), axes, keepdim=keep))
        if name == "ReduceLogSumExp":
            return torch.logsumexp(_float(x), axes, keepdim=keep)
        raise AssertionError(name)

    return reduce_


def _empty_value(name: str, dtype: torch.dtype) -> float:
    if dtype == torch.bool:
        return name in ("ReduceMin", "ReduceProd")
    if name in ("ReduceMax", "ReduceLogSumExp", "ReduceLogSum"):
        return -math.inf if dtype.is_floating_point else torch.iinfo(dtype).min
    if name == "ReduceMin":
        return math.inf if dtype.is_floating_point else torch.iinfo(dtype).max
    if name == "ReduceProd":
        return 1
    if name == "ReduceMean":
        return math.nan
    return 0


def _make(name: str):
    reduce_ = _reducer(name)

    def convert(ctx: NodeCtx):
        x = ctx.input(0)
        axes = _axes(ctx, x)
        if axes is None:
            return x
        keep = bool(ctx.attr("keepdims", 1))
        if x.numel() == 0 and any(x.shape[a] == 0 for a in axes):
            shape = [1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes]
            return torch.full(shape, _empty_value(name, x.dtype), dtype=x.dtype, device=x.device)
        src = x.to(torch.uint8) if x.dtype == torch.bool else x
        out = reduce_(src, axes, keep)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    return convert


for _name in (
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "ReduceL1",
    "ReduceL2",
    "ReduceSumSquare",
    "ReduceLogSum",
    "ReduceLogSumExp",
):
    op(_name)(_make(_name))


def _arg(ctx: NodeCtx, fn) -> torch.Tensor:
    x = ctx.input(0)
    axis = int(ctx.attr("axis", 0))
    axis = axis + x.dim() if axis < 0 else axis
    keep = bool(ctx.attr("keepdims", 1))
    if ctx.attr("select_last_index", 0):
        idx = fn(x.flip(axis), dim=axis, keepdim=keep)
        return x.shape[axis] - 1 - idx
    return fn(x, dim=axis, keepdim=keep)


@op("ArgMax")
def argmax(ctx: NodeCtx):
    return _arg(ctx, torch.argmax)


@op("ArgMin")
def argmin(ctx: NodeCtx):
    return _arg(ctx, torch.argmin)
