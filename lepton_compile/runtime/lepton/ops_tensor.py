"""Shape and indexing ops: Reshape ... Pad, Shape-family (folded to constants), scatter/gather."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from lepton_compile.runtime.lepton import dtypes
from lepton_compile.runtime.lepton.lower import NodeCtx
from lepton_compile.runtime.lepton.ops_nn import torch_pad
from lepton_compile.runtime.lepton.registry import op


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _index_const(ctx: NodeCtx, values: np.ndarray | list[int]) -> torch.Tensor:
    """An int64 index tensor known at lowering time, on the program's device."""
    return ctx.constant(np.asarray(values, dtype=np.int64))


@op("Reshape")
def reshape(ctx: NodeCtx):
    x = ctx.input(0)
    shape = ctx.ints(1, "shape") if ctx.opset >= 5 else [int(s) for s in ctx.attr("shape")]
    if not ctx.attr("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


@op("Flatten")
def flatten(ctx: NodeCtx):
    x = ctx.input(0)
    axis = _axis(int(ctx.attr("axis", 1)), x.dim())
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@op("Transpose")
def transpose(ctx: NodeCtx):
    x = ctx.input(0)
    perm = ctx.attr("perm")
    perm = [int(p) for p in perm] if perm else list(reversed(range(x.dim())))
    return x.permute(perm)


def _axes(ctx: NodeCtx, since: int, index: int = 1) -> list[int] | None:
    """Axes from the attribute (opset < since) or from input `index` (None if absent)."""
    if ctx.opset < since:
        axes = ctx.attr("axes")
        return None if axes is None else [int(a) for a in axes]
    if not ctx.has(index):
        return None
    return ctx.ints(index, "axes")


@op("Squeeze")
def squeeze(ctx: NodeCtx):
    x = ctx.input(0)
    axes = _axes(ctx, 13)
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    axes = {_axis(a, x.dim()) for a in axes}
    return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


@op("Unsqueeze")
def unsqueeze(ctx: NodeCtx):
    x = ctx.input(0)
    axes = _axes(ctx, 13) or []
    rank = x.dim() + len(axes)
    axes = sorted(_axis(a, rank) for a in axes)
    shape = list(x.shape)
    for a in axes:
        shape.insert(a, 1)
    return x.reshape(shape)


@op("Expand")
def expand(ctx: NodeCtx):
    x = ctx.input(0)
    shape = torch.broadcast_shapes(tuple(x.shape), tuple(ctx.ints(1, "shape")))
    return x.expand(shape)


@op("Tile")
def tile(ctx: NodeCtx):
    return ctx.input(0).repeat(ctx.ints(1, "repeats"))


@op("Concat")
def concat(ctx: NodeCtx):
    xs = [x for x in ctx.inputs() if x is not None]
    axis = int(ctx.attr("axis", 1 if ctx.opset < 4 else 0))
    return torch.cat(xs, dim=axis)


@op("Split")
def split(ctx: NodeCtx):
    x = ctx.input(0)
    axis = _axis(int(ctx.attr("axis", 0)), x.dim())
    dim = x.shape[axis]
    if ctx.opset < 13:
        sizes = ctx.attr("split")
        if sizes is None and ctx.opset < 2 and ctx.has(1):
            sizes = ctx.ints(1, "split")
    else:
        sizes = ctx.ints(1, "split") if ctx.has(1) else None
    if sizes:
        sizes = [int(s) for s in sizes]
    else:
        n = int(ctx.attr("num_outputs", ctx.noutputs))
        chunk = -(-dim // n)
        sizes = [min(chunk, dim - i * chunk) for i in range(n)]
    if sum(sizes) != dim:
        raise ctx.unsupported(f"split sizes {sizes} do not add up to {dim}")
    return tuple(torch.split(x, sizes, dim=axis))


def slice_axis(x: torch.Tensor, axis: int, start: int, end: int, step: int) -> torch.Tensor:
    """x[start:end:step] along `axis` with numpy's clamping (negative steps included)."""
    n = x.shape[axis]
    if step == 0:
        raise ValueError("Slice step 0")
    r = range(*slice(start, end, step).indices(n))
    if len(r) == 0:
        return x.narrow(axis, 0, 0)
    if step > 0:
        if r.start == 0 and len(r) == n:
            return x
        return x.narrow(axis, r.start, len(r)) if step == 1 else _step(x, axis, r)
    flipped = x.flip(axis)
    start_f = n - 1 - r.start
    return _step(flipped, axis, range(start_f, start_f + len(r) * -step, -step))


def _step(x: torch.Tensor, axis: int, r: range) -> torch.Tensor:
    index = [slice(None)] * x.dim()
    index[axis] = slice(r.start, r.stop, r.step)
    return x[tuple(index)]


@op("Slice")
def slice_(ctx: NodeCtx):
    x = ctx.input(0)
    if ctx.opset < 10:
        starts = [int(v) for v in ctx.attr("starts")]
        ends = [int(v) for v in ctx.attr("ends")]
        axes = ctx.attr("axes")
        steps = [1] * len(starts)
    else:
        starts, ends = ctx.ints(1, "starts"), ctx.ints(2, "ends")
        axes = ctx.ints(3, "axes") if ctx.has(3) else None
        steps = ctx.ints(4, "steps") if ctx.has(4) else [1] * len(starts)
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    for a, s, e, st in zip(axes, starts, ends, steps, strict=True):
        x = slice_axis(x, _axis(a, x.dim()), s, e, st)
    return x


def _normalize_index(idx: torch.Tensor, n: int) -> torch.Tensor:
    return torch.where(idx < 0, idx + n, idx)


@op("Gather")
def gather(ctx: NodeCtx):
    x = ctx.input(0)
    axis = _axis(int(ctx.attr("axis", 0)), x.dim())
    n = x.shape[axis]
    if ctx.is_const(1) and not ctx.folding:
        values = ctx.const(1).astype(np.int64)
        values = np.where(values < 0, values + n, values)
        if values.ndim == 0:
            return x.select(axis, int(values))
        idx = _index_const(ctx, values.reshape(-1))
        shape = list(x.shape[:axis]) + list(values.shape) + list(x.shape[axis + 1 :])
        return torch.index_select(x, axis, idx).reshape(shape)
    idx = ctx.input(1)
    shape = list(x.shape[:axis]) + list(idx.shape) + list(x.shape[axis + 1 :])
    idx = _normalize_index(idx.to(torch.int64), n).reshape(-1)
    return torch.index_select(x, axis, idx).reshape(shape)


@op("GatherElements")
def gather_elements(ctx: NodeCtx):
    x = ctx.input(0)
    axis = _axis(int(ctx.attr("axis", 0)), x.dim())
    idx = _normalize_index(ctx.input(1).to(torch.int64), x.shape[axis])
    return torch.gather(x, axis, idx)


def _linear_index(idx: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Row-major linear index of the last dimension of `idx` (k coordinates) into `dims`."""
    k = idx.shape[-1]
    strides = [math.prod(dims[j + 1 : k]) for j in range(k)]
    lin = torch.zeros(idx.shape[:-1], dtype=torch.int64, device=idx.device)
    for j in range(k):
        lin = lin + _normalize_index(idx[..., j].to(torch.int64), dims[j]) * strides[j]
    return lin


@op("GatherND")
def gather_nd(ctx: NodeCtx):
    x, idx = ctx.input(0), ctx.input(1)
    b = int(ctx.attr("batch_dims", 0))
    k = idx.shape[-1]
    batch = tuple(x.shape[:b])
    nb = math.prod(batch)
    dims = tuple(x.shape[b : b + k])
    rest = tuple(x.shape[b + k :])
    xb = x.reshape(nb, math.prod(dims), *rest)
    lin = _linear_index(idx, dims).reshape(nb, -1)
    rows = torch.arange(nb, device=x.device).reshape(nb, 1)
    out = xb[rows, lin]
    return out.reshape(*batch, *idx.shape[b:-1], *rest)


_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@op("ScatterElements", "Scatter")
def scatter_elements(ctx: NodeCtx):
    x, idx, upd = ctx.input(0), ctx.input(1), ctx.input(2)
    axis = _axis(int(ctx.attr("axis", 0)), x.dim())
    idx = _normalize_index(idx.to(torch.int64), x.shape[axis])
    reduction = ctx.attr("reduction", "none")
    if reduction == "none":
        return torch.scatter(x, axis, idx, upd)
    if reduction not in _REDUCE:
        raise ctx.unsupported(f"reduction={reduction!r}")
    return torch.scatter_reduce(x, axis, idx, upd, _REDUCE[reduction], include_self=True)


@op("ScatterND")
def scatter_nd(ctx: NodeCtx):
    x, idx, upd = ctx.input(0), ctx.input(1), ctx.input(2)
    k = idx.shape[-1]
    dims = tuple(x.shape[:k])
    rest = math.prod(x.shape[k:])
    flat = x.reshape(math.prod(dims), rest)
    lin = _linear_index(idx, dims).reshape(-1, 1).expand(-1, rest)
    upd = upd.reshape(-1, rest)
    reduction = ctx.attr("reduction", "none")
    if reduction == "none":
        out = torch.scatter(flat, 0, lin, upd)
    elif reduction in _REDUCE:
        out = torch.scatter_reduce(flat, 0, lin, upd, _REDUCE[reduction], include_self=True)
    else:
        raise ctx.unsupported(f"reduction={reduction!r}")
    return out.reshape(x.shape)


_NP_PAD_MODES = {"reflect": "reflect", "edge": "edge", "wrap": "wrap"}


@op("Pad")
def pad(ctx: NodeCtx):
    x = ctx.input(0)
    rank = x.dim()
    mode = ctx.attr("mode", "constant")
    if ctx.opset < 11:
        pads = [int(p) for p in (ctx.attr("pads") or ctx.attr("paddings"))]
        value = float(ctx.attr("value", 0.0))
        axes = list(range(rank))
    else:
        pads = ctx.ints(1, "pads")
        value = 0.0
        if ctx.has(2):
            cv = ctx.const(2, "constant_value").reshape(-1)
            value = cv[0].item() if cv.size else 0.0
        axes = ctx.ints(3, "axes") if ctx.has(3) else list(range(rank))
    axes = [_axis(a, rank) for a in axes]
    n = len(axes)
    begin, end = [0] * rank, [0] * rank
    for i, a in enumerate(axes):
        begin[a], end[a] = pads[i], pads[n + i]
    if mode == "constant":
        if x.dtype == torch.bool:
            value = bool(value)
        elif not x.is_floating_point():
            value = int(value)
        return F.pad(x, torch_pad(begin, end), value=value)
    if mode not in _NP_PAD_MODES:
        raise ctx.unsupported(f"mode={mode!r}")
    for a in range(rank):
        b, e = begin[a], end[a]
        if b < 0 or e < 0:
            start, stop = max(-b, 0), x.shape[a] - max(-e, 0)
            x = x.narrow(a, start, stop - start)
            b, e = max(b, 0), max(e, 0)
        if b or e:
            if x.shape[a] == 0:
                raise ctx.unsupported(f"mode={mode!r} on an empty dimension")
            idx = np.pad(np.arange(x.shape[a]), (b, e), mode=_NP_PAD_MODES[mode])
            x = torch.index_select(x, a, _index_const(ctx, idx))
    return x


# -- shape family: constants whatever the input -----------------------------------------


@op("Shape")
def shape(ctx: NodeCtx):
    dims = list(ctx.shape(0))
    start = ctx.attr("start", 0)
    end = ctx.attr("end")
    return ctx.const_out(dims[slice(start, end)])


@op("Size")
def size(ctx: NodeCtx):
    return ctx.const_out(math.prod(ctx.shape(0)))


@op("ConstantOfShape")
def constant_of_shape(ctx: NodeCtx):
    dims = ctx.ints(0, "shape")
    value = ctx.attr("value")
    if value is None:
        value = torch.zeros(1, dtype=torch.float32)
    return ctx.const_out(torch.full(dims, value.reshape(-1)[0].item(), dtype=value.dtype))


@op("Range")
def range_(ctx: NodeCtx):
    start, limit, delta = (
        ctx.const(i, name).reshape(-1)[0] for i, name in enumerate(("start", "limit", "delta"))
    )
    if start.dtype.kind in "iu":
        s, lim, d = int(start), int(limit), int(delta)
        values = s + np.arange(max(-((s - lim) // d), 0), dtype=np.int64) * d
    else:
        values = np.arange(start.item(), limit.item(), delta.item())
    return ctx.const_out(torch.from_numpy(np.asarray(values)).to(ctx.in_dtype(0)))


@op("EyeLike")
def eye_like(ctx: NodeCtx):
    rows, cols = ctx.shape(0)
    elem = ctx.attr("dtype")
    dtype = dtypes.torch_dtype(elem, "EyeLike") if elem is not None else ctx.in_dtype(0)
    return ctx.const_out(np.eye(rows, cols, int(ctx.attr("k", 0))), dtype)


@op("OneHot")
def one_hot(ctx: NodeCtx):
    idx, values = ctx.input(0), ctx.input(2)
    depth = int(ctx.const(1, "depth").reshape(-1)[0])
    rank = idx.dim() + 1
    axis = _axis(int(ctx.attr("axis", -1)), rank)
    idx = idx.to(torch.int64)
    idx = torch.where(idx < 0, idx + depth, idx).unsqueeze(axis)
    shape = [1] * rank
    shape[axis] = depth
    classes = torch.arange(depth, device=idx.device).reshape(shape)
    off, on = values.reshape(-1)[0], values.reshape(-1)[1]
    return torch.where(idx == classes, on, off)


@op("DepthToSpace")
def depth_to_space(ctx: NodeCtx):
    x = ctx.input(0)
    bs = int(ctx.attr("blocksize"))
    b, c, h, w = x.shape
    if ctx.attr("mode", "DCR") == "DCR":
        y = x.reshape(b, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        y = x.reshape(b, c // (bs * bs), bs, bs, h, w).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(b, c // (bs * bs), h * bs, w * bs)


@op("SpaceToDepth")
def space_to_depth(ctx: NodeCtx):
    x = ctx.input(0)
    bs = int(ctx.attr("blocksize"))
    b, c, h, w = x.shape
    mode = ctx.attr("mode", "DCR")
    if mode not in ("DCR", "CRD"):
        raise ctx.unsupported(f"mode={mode!r}")
    perm = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    y = x.reshape(b, c, h // bs, bs, w // bs, bs).permute(perm)
    return y.reshape(b, c * bs * bs, h // bs, w // bs)


@op("Trilu")
def trilu(ctx: NodeCtx):
    x = ctx.input(0)
    k = int(ctx.const(1, "k").reshape(-1)[0]) if ctx.has(1) else 0
    return torch.triu(x, k) if ctx.attr("upper", 1) else torch.tril(x, k)


def _cumulative(ctx: NodeCtx, fn, identity: int):
    x = ctx.input(0)
    axis = _axis(int(ctx.const(1, "axis").reshape(-1)[0]), x.dim())
    if ctx.attr("reverse", 0):
        x = x.flip(axis)
    y = fn(x, axis)
    if ctx.attr("exclusive", 0):
        first = torch.full_like(x.narrow(axis, 0, 1), identity)
        y = torch.cat([first, y.narrow(axis, 0, x.shape[axis] - 1)], dim=axis)
    if ctx.attr("reverse", 0):
        y = y.flip(axis)
    return y.to(x.dtype)


@op("CumSum")
def cumsum(ctx: NodeCtx):
    return _cumulative(ctx, lambda x, a: torch.cumsum(x, a), 0)


@op("CumProd")
def cumprod(ctx: NodeCtx):
    return _cumulative(ctx, lambda x, a: torch.cumprod(x, a), 1)


@op("TopK")
def topk(ctx: NodeCtx):
    x = ctx.input(0)
    k = int(ctx.const(1, "K").reshape(-1)[0]) if ctx.opset >= 10 else int(ctx.attr("k"))
    axis = _axis(int(ctx.attr("axis", -1)), x.dim())
    largest = bool(ctx.attr("largest", 1))
    # A stable sort keeps equal values in index order, as ONNX asks.
    values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
    return values.narrow(axis, 0, k), indices.narrow(axis, 0, k)


@op("NonZero")
def non_zero(ctx: NodeCtx):
    x = torch.from_numpy(np.ascontiguousarray(ctx.const(0, "input")))
    return ctx.const_out(torch.nonzero(x).t().contiguous())


@op("Compress")
def compress(ctx: NodeCtx):
    x = ctx.input(0)
    cond = ctx.const(1, "condition").astype(bool).reshape(-1)
    axis = ctx.attr("axis")
    if axis is None:
        x = x.reshape(-1)
        axis = 0
    axis = _axis(int(axis), x.dim())
    keep = np.nonzero(cond[: x.shape[axis]])[0]
    return torch.index_select(x, axis, _index_const(ctx, keep))


@op("ReverseSequence")
def reverse_sequence(ctx: NodeCtx):
    x = ctx.input(0)
    lens = ctx.ints(1, "sequence_lens")
    batch_axis, time_axis = int(ctx.attr("batch_axis", 1)), int(ctx.attr("time_axis", 0))
    steps = x.shape[time_axis]
    table = np.tile(np.arange(steps)[:, None], (1, len(lens)))
    for b, n in enumerate(lens):
        table[:n, b] = np.arange(n)[::-1]
    if batch_axis < time_axis:
        table = table.T
    shape = [1] * x.dim()
    shape[time_axis], shape[batch_axis] = steps, len(lens)
    idx = _index_const(ctx, table.reshape(shape)).expand(x.shape)
    return torch.gather(x, time_axis, idx)


@op("CenterCropPad")
def center_crop_pad(ctx: NodeCtx):
    x = ctx.input(0)
    target = ctx.ints(1, "shape")
    axes = ctx.attr("axes")
    axes = [_axis(int(a), x.dim()) for a in axes] if axes else list(range(x.dim()))
    for a, t in zip(axes, target, strict=False):
        dim = x.shape[a]
        if t < dim:
            x = x.narrow(a, (dim - t) // 2, t)
        elif t > dim:
            begin = [0] * x.dim()
            end = [0] * x.dim()
            begin[a] = (t - dim) // 2
            end[a] = t - dim - begin[a]
            x = F.pad(x, torch_pad(begin, end))
    return x
