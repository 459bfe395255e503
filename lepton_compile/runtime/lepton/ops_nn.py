"""Neural-network ops: Conv/ConvTranspose, Gemm/MatMul, normalizations, pooling, Softmax."""

from __future__ import annotations

import math
from collections.abc import Sequence

import onnx
import torch
import torch.nn.functional as F

from lepton_compile.contract import same_pads
from lepton_compile.runtime.lepton.lower import Const, NodeCtx, no_tracing
from lepton_compile.runtime.lepton.registry import op

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _ints(ctx: NodeCtx, name: str, n: int, default: int) -> list[int]:
    value = ctx.attr(name)
    if not value:
        return [default] * n
    if len(value) != n:
        raise ctx.unsupported(f"{name}={list(value)} does not have {n} values")
    return [int(v) for v in value]


def explicit_pads(
    ctx: NodeCtx,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[list[int], list[int]]:
    n = len(spatial)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(auto_pad, spatial, kernel, strides, dilations)
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    if auto_pad not in ("NOTSET", ""):
        raise ctx.unsupported(f"auto_pad={auto_pad!r}")
    pads = _ints(ctx, "pads", 2 * n, 0)
    return pads[:n], pads[n:]


def torch_pad(begin: Sequence[int], end: Sequence[int]) -> list[int]:
    """F.pad's argument (last dimension first) for per-dimension begin/end pads."""
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


def conv(ctx: NodeCtx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """ONNX Conv (attributes from ctx) on tensors."""
    n = x.dim() - 2
    if n not in _CONV:
        raise ctx.unsupported(f"{n}-D convolution")
    kernel = list(w.shape[2:])
    strides = _ints(ctx, "strides", n, 1)
    dilations = _ints(ctx, "dilations", n, 1)
    group = int(ctx.attr("group", 1))
    begin, end = explicit_pads(ctx, x.shape[2:], kernel, strides, dilations)
    if begin != end:
        x = F.pad(x, torch_pad(begin, end))
        begin = [0] * n
    return _CONV[n](x, w, b, strides, begin, dilations, group)


def conv_weight(ctx: NodeCtx, i: int = 1) -> torch.Tensor:
    return ctx.input(i, memory_format=torch.channels_last if ctx.channels_last else None)


class ConvOrigin:
    """A Conv with constant weights, which a following BatchNormalization can fold into."""

    def __init__(self, ctx: NodeCtx, x: torch.Tensor):
        self.ctx = ctx
        self.x = x
        self.w = ctx.const_tensor(1)
        self.b = ctx.const_tensor(2) if ctx.has(2) else None

    def refold(self, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        """conv(x, W * scale, B * scale + shift): the Conv with a per-channel affine folded in."""
        with no_tracing():
            w = self.w.to(torch.float64) * scale.reshape(-1, *([1] * (self.w.dim() - 1)))
            b = shift if self.b is None else self.b.to(torch.float64) * scale + shift
            w, b = w.to(self.w.dtype), b.to(self.w.dtype)
        ctx = self.ctx
        fmt = torch.channels_last if ctx.channels_last else None
        w_t = ctx.lowering.lift(Const(w), fmt)
        return conv(ctx, self.x, w_t, ctx.lowering.lift(Const(b)))


@op("Conv")
def conv_op(ctx: NodeCtx):
    from lepton_compile.runtime.lepton.quant_layers import quantized_conv

    y = quantized_conv(ctx)  # a QDQ layer: integer / FP8 arithmetic
    if y is not None:
        return y
    x = ctx.input(0)
    if not ctx.folding and ctx.is_const(1) and (not ctx.has(2) or ctx.is_const(2)):
        ctx.origin_out = ConvOrigin(ctx, x)
    return conv(ctx, x, conv_weight(ctx), ctx.input(2))


@op("ConvTranspose")
def conv_transpose(ctx: NodeCtx):
    x, w, b = ctx.input(0), conv_weight(ctx), ctx.input(2)
    n = x.dim() - 2
    if n not in _CONV_T:
        raise ctx.unsupported(f"{n}-D transposed convolution")
    group = int(ctx.attr("group", 1))
    kernel = list(w.shape[2:])
    strides = _ints(ctx, "strides", n, 1)
    dilations = _ints(ctx, "dilations", n, 1)
    out_pad = _ints(ctx, "output_padding", n, 0)
    spatial = list(x.shape[2:])
    full = [
        (i - 1) * s + (k - 1) * d + 1
        for i, s, k, d in zip(spatial, strides, kernel, dilations, strict=True)
    ]
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    output_shape = ctx.attr("output_shape")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        # Crop the full output to the asked size (output_shape, else input x stride), the odd
        # pixel at the end for SAME_UPPER and at the start otherwise.
        if output_shape:
            target = list(output_shape)[-n:]
        else:
            target = [i * s for i, s in zip(spatial, strides, strict=True)]
        total = [f + op_ - t for f, op_, t in zip(full, out_pad, target, strict=True)]
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        end = [t - bb for t, bb in zip(total, begin, strict=True)]
    elif auto_pad == "VALID":
        begin, end = [0] * n, [0] * n
    else:
        pads = _ints(ctx, "pads", 2 * n, 0)
        begin, end = pads[:n], pads[n:]
    if begin == end and all(
        0 <= p < max(s, d) for p, s, d in zip(out_pad, strides, dilations, strict=True)
    ):
        if all(p >= 0 for p in begin):
            return _CONV_T[n](x, w, b, strides, begin, out_pad, group, dilations)
    # General case: full transposed conv, then crop/extend each spatial dim, then the bias.
    y = _CONV_T[n](x, w, None, strides, 0, 0, group, dilations)
    lengths = [f + op_ - bb - e for f, op_, bb, e in zip(full, out_pad, begin, end, strict=True)]
    tail = [length - (f - bb) for length, f, bb in zip(lengths, full, begin, strict=True)]
    y = F.pad(y, torch_pad([-bb for bb in begin], tail))
    if b is not None:
        y = y + b.reshape(1, -1, *([1] * n))
    return y


# -- Gemm / MatMul ---------------------------------------------------------------------


def gemm(ctx: NodeCtx, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    alpha, beta = float(ctx.attr("alpha", 1.0)), float(ctx.attr("beta", 1.0))
    ta, tb = int(ctx.attr("transA", 0)), int(ctx.attr("transB", 0))
    if not ta and tb and alpha == 1.0 and (c is None or (beta == 1.0 and c.dim() <= 1)):
        if c is not None and c.dim() == 1 and c.shape[0] == b.shape[0]:
            return F.linear(a, b, c)
        if c is None:
            return F.linear(a, b)
    a = a.t() if ta else a
    b = b.t() if tb else b
    y = torch.matmul(a, b)
    if alpha != 1.0:
        y = y * alpha if y.is_floating_point() else (y * alpha).to(y.dtype)
    if c is not None and beta != 0.0:
        y = y + (c if beta == 1.0 else c * beta).to(y.dtype)
    return y


@op("Gemm")
def gemm_op(ctx: NodeCtx):
    from lepton_compile.runtime.lepton.quant_layers import quantized_matmul

    y = quantized_matmul(ctx, bias_index=2)
    if y is not None:
        return y
    return gemm(ctx, ctx.input(0), ctx.input(1), ctx.input(2))


@op("MatMul")
def matmul(ctx: NodeCtx):
    from lepton_compile.runtime.lepton.quant_layers import quantized_matmul

    y = quantized_matmul(ctx)
    if y is not None:
        return y
    return torch.matmul(ctx.input(0), ctx.input(1))


@op("Einsum")
def einsum(ctx: NodeCtx):
    equation = ctx.attr("equation", "").replace(" ", "")
    xs = [x for x in ctx.inputs() if x is not None]
    if equation == "->" and len(xs) == 1:
        return xs[0]  # torch.einsum rejects a lone 0-d operand
    return torch.einsum(equation, *xs)


@op("Det")
def det(ctx: NodeCtx):
    return torch.linalg.det(ctx.input(0))


# -- normalizations ---------------------------------------------------------------------


@op("BatchNormalization")
def batch_norm(ctx: NodeCtx):
    x, scale, bias, mean, var = (ctx.input(i) for i in range(5))
    eps = float(ctx.attr("epsilon", 1e-5))
    if ctx.opset < 9 and not ctx.attr("spatial", 1):
        raise ctx.unsupported("spatial=0")
    params = [t.to(x.dtype) for t in (scale, bias, mean, var)]
    scale, bias, mean, var = params
    training = bool(ctx.attr("training_mode", 0)) if ctx.opset >= 14 else False
    if not training and not ctx.folding and all(ctx.is_const(i) for i in range(1, 5)):
        # y = x * s + t with s = scale / sqrt(var + eps), t = bias - mean * s, computed in
        # float64 here: the running variance can be far outside float16's range.
        if any(ctx.output_used(i) for i in range(1, 5)):
            raise ctx.unsupported("running statistics outputs outside training mode")
        with no_tracing():
            g, beta, mu, var = (ctx.const_tensor(i).to(torch.float64) for i in range(1, 5))
            s = g / torch.sqrt(var + eps)
            t = beta - mu * s
        origin = ctx.origin(0)
        if isinstance(origin, ConvOrigin) and x.dim() > 2:
            return origin.refold(s, t)
        s_t = ctx.constant(s, ctx.dtype(onnx.TensorProto.FLOAT))
        t_t = ctx.constant(t, ctx.dtype(onnx.TensorProto.FLOAT))
        if x.dim() < 2:
            raise ctx.unsupported(f"input of rank {x.dim()}")
        shape = [1, -1] + [1] * (x.dim() - 2)
        return x * s_t.to(x.dtype).reshape(shape) + t_t.to(x.dtype).reshape(shape)
    if not training:
        if any(ctx.output_used(i) for i in range(1, 5)):
            raise ctx.unsupported("running statistics outputs outside training mode")
        if x.dim() < 2:
            raise ctx.unsupported(f"input of rank {x.dim()}")
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)
    momentum = float(ctx.attr("momentum", 0.9))
    dims = [0, *range(2, x.dim())]
    shape = [1, -1] + [1] * (x.dim() - 2)
    batch_mean = x.mean(dims)
    batch_var = x.var(dims, unbiased=False)
    y = (x - batch_mean.reshape(shape)) / torch.sqrt(batch_var.reshape(shape) + eps)
    y = y * scale.reshape(shape) + bias.reshape(shape)
    running_mean = mean * momentum + batch_mean * (1 - momentum)
    running_var = var * momentum + batch_var * (1 - momentum)
    return y, running_mean, running_var


@op("InstanceNormalization")
def instance_norm(ctx: NodeCtx):
    x = ctx.input(0)
    scale, bias = ctx.input(1).to(x.dtype), ctx.input(2).to(x.dtype)
    return F.instance_norm(x, weight=scale, bias=bias, eps=float(ctx.attr("epsilon", 1e-5)))


def _stash(ctx: NodeCtx, x: torch.Tensor) -> torch.Tensor:
    if ctx.attr("stash_type", 1) == 1 and x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


@op("LayerNormalization")
def layer_norm(ctx: NodeCtx):
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    axis = int(ctx.attr("axis", -1)) % x.dim()
    eps = float(ctx.attr("epsilon", 1e-5))
    normalized = tuple(x.shape[axis:])
    simple = tuple(scale.shape) == normalized and (bias is None or tuple(bias.shape) == normalized)
    if simple and not ctx.output_used(1) and not ctx.output_used(2):
        return F.layer_norm(x, normalized, scale.to(x.dtype), _opt(bias, x.dtype), eps)
    xs = _stash(ctx, x)
    dims = tuple(range(axis, x.dim()))
    mean = xs.mean(dims, keepdim=True)
    centered = xs - mean
    inv_std = torch.rsqrt((centered * centered).mean(dims, keepdim=True) + eps)
    y = (centered * inv_std).to(x.dtype) * scale.to(x.dtype)
    if bias is not None:
        y = y + bias.to(x.dtype)
    stash_dtype = ctx.dtype(ctx.attr("stash_type", 1))
    return y, mean.to(stash_dtype), inv_std.to(stash_dtype)


def _opt(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


@op("GroupNormalization")
def group_norm(ctx: NodeCtx):
    x, scale, bias = ctx.input(0), ctx.input(1), ctx.input(2)
    groups = int(ctx.attr("num_groups"))
    eps = float(ctx.attr("epsilon", 1e-5))
    channels = x.shape[1]
    if scale.numel() == groups and groups != channels:
        # opset 18: scale and bias per group
        scale = scale.repeat_interleave(channels // groups)
        bias = bias.repeat_interleave(channels // groups)
    xs = _stash(ctx, x)
    shape = x.shape
    g = xs.reshape(shape[0], groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(shape).to(x.dtype)
    bshape = [1, -1] + [1] * (x.dim() - 2)
    return y * scale.to(x.dtype).reshape(bshape) + bias.to(x.dtype).reshape(bshape)


@op("RMSNormalization")
def rms_norm(ctx: NodeCtx):
    x, scale = ctx.input(0), ctx.input(1)
    axis = int(ctx.attr("axis", -1)) % x.dim()
    eps = float(ctx.attr("epsilon", 1e-5))
    xs = _stash(ctx, x)
    dims = tuple(range(axis, x.dim()))
    y = xs * torch.rsqrt((xs * xs).mean(dims, keepdim=True) + eps)
    return y.to(x.dtype) * scale.to(x.dtype)


@op("LRN")
def lrn(ctx: NodeCtx):
    x = ctx.input(0)
    size = int(ctx.attr("size"))
    alpha, beta, bias = ctx.attr("alpha", 1e-4), ctx.attr("beta", 0.75), ctx.attr("bias", 1.0)
    sq = (x * x).reshape(x.shape[0], 1, x.shape[1], -1)
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    sq = F.pad(sq, [0, 0, before, after])
    window = F.avg_pool2d(sq, (size, 1), stride=1) * size
    window = window.reshape(x.shape)
    return x / (bias + alpha / size * window) ** beta


@op("LpNormalization")
def lp_normalization(ctx: NodeCtx):
    x = ctx.input(0)
    p = int(ctx.attr("p", 2))
    axis = int(ctx.attr("axis", -1))
    if p not in (1, 2):
        raise ctx.unsupported(f"p={p}")
    norm = torch.linalg.vector_norm(x, ord=p, dim=axis, keepdim=True)
    return torch.where(norm == 0, torch.zeros_like(x), x / norm)


@op("MeanVarianceNormalization")
def mean_variance_normalization(ctx: NodeCtx):
    x = ctx.input(0)
    axes = [int(a) for a in ctx.attr("axes", [0, 2, 3])]
    mean = x.mean(axes, keepdim=True)
    std = torch.sqrt((x * x).mean(axes, keepdim=True) - mean * mean)
    return (x - mean) / (std + 1e-9)


# -- softmax family ---------------------------------------------------------------------


def _softmax_like(ctx: NodeCtx, fn) -> torch.Tensor:
    x = ctx.input(0)
    if ctx.opset >= 13:
        return fn(x, int(ctx.attr("axis", -1)))
    axis = int(ctx.attr("axis", 1)) % max(x.dim(), 1)
    shape = x.shape
    outer = math.prod(shape[:axis])
    return fn(x.reshape(outer, -1), 1).reshape(shape)


def _hardmax(x: torch.Tensor, axis: int) -> torch.Tensor:
    idx = torch.argmax(x, dim=axis, keepdim=True)
    return torch.zeros_like(x).scatter(axis, idx, 1.0)


@op("Softmax")
def softmax(ctx: NodeCtx):
    return _softmax_like(ctx, lambda x, a: torch.softmax(x, a))


@op("LogSoftmax")
def log_softmax(ctx: NodeCtx):
    return _softmax_like(ctx, lambda x, a: torch.log_softmax(x, a))


@op("Hardmax")
def hardmax(ctx: NodeCtx):
    return _softmax_like(ctx, _hardmax)


# -- pooling -----------------------------------------------------------------------------

_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


class _Pool:
    """Geometry of one pooling node: kernel, strides, dilations, pads and output sizes."""

    def __init__(self, ctx: NodeCtx, x: torch.Tensor):
        n = x.dim() - 2
        if n not in _MAX_POOL:
            raise ctx.unsupported(f"{n}-D pooling")
        self.n = n
        self.spatial = list(x.shape[2:])
        self.kernel = [int(k) for k in ctx.attr("kernel_shape")]
        self.strides = _ints(ctx, "strides", n, 1)
        self.dilations = _ints(ctx, "dilations", n, 1)
        self.ceil = bool(ctx.attr("ceil_mode", 0))
        auto_pad = ctx.attr("auto_pad", "NOTSET")
        self.begin, self.end = explicit_pads(
            ctx, self.spatial, self.kernel, self.strides, self.dilations
        )
        self.out = []
        for i in range(n):
            span = (self.kernel[i] - 1) * self.dilations[i] + 1
            if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                o = -(-self.spatial[i] // self.strides[i])
            elif auto_pad == "VALID" and not self.ceil:
                o = (self.spatial[i] - span) // self.strides[i] + 1
            else:
                total = self.spatial[i] + self.begin[i] + self.end[i] - span
                if self.ceil:
                    o = -(-total // self.strides[i]) + 1
                    # the last window must start inside the input or the left padding
                    if (o - 1) * self.strides[i] >= self.spatial[i] + self.begin[i]:
                        o -= 1
                else:
                    o = total // self.strides[i] + 1
            self.out.append(o)
        # Padding at the end that the windows actually reach (>= 0).
        self.reach = [
            max(0, (o - 1) * s + (k - 1) * d + 1 - size - b)
            for o, s, k, d, size, b in zip(
                self.out,
                self.strides,
                self.kernel,
                self.dilations,
                self.spatial,
                self.begin,
                strict=True,
            )
        ]

    def torch_native(self, dilation_ok: bool = True) -> bool:
        """Whether torch's pooling with symmetric padding gives exactly these windows."""
        if self.begin != self.end or (not dilation_ok and any(d != 1 for d in self.dilations)):
            return False
        for i in range(self.n):
            span = (self.kernel[i] - 1) * self.dilations[i] + 1
            if self.begin[i] * 2 > span:
                return False
            total = self.spatial[i] + 2 * self.begin[i] - span
            o = (-(-total // self.strides[i]) if self.ceil else total // self.strides[i]) + 1
            if self.ceil and (o - 1) * self.strides[i] >= self.spatial[i] + self.begin[i]:
                o -= 1
            if o != self.out[i]:
                return False
        return True

    def crop(self, y: torch.Tensor) -> torch.Tensor:
        for i, o in enumerate(self.out):
            if y.shape[2 + i] != o:
                y = y.narrow(2 + i, 0, o)
        return y


def _min_value(dtype: torch.dtype) -> float:
    if dtype.is_floating_point:
        return -math.inf
    return torch.iinfo(dtype).min


@op("MaxPool")
def max_pool(ctx: NodeCtx):
    x = ctx.input(0)
    g = _Pool(ctx, x)
    if ctx.output_used(1):
        if not g.torch_native() or int(ctx.attr("storage_order", 0)) not in (0, 1):
            raise ctx.unsupported("Indices output with asymmetric or ceil-mode padding")
        y, idx = _MAX_POOL[g.n](x, g.kernel, g.strides, g.begin, g.dilations, g.ceil, True)
        plane = math.prod(g.spatial)
        if int(ctx.attr("storage_order", 0)) == 1:
            if g.n != 2:
                raise ctx.unsupported("storage_order=1 outside 2-D pooling")
            h, w = g.spatial
            idx = (idx % w) * h + idx // w
        offsets = torch.arange(x.shape[0] * x.shape[1], device=x.device) * plane
        idx = idx + offsets.reshape(x.shape[0], x.shape[1], *([1] * g.n))
        return y, idx
    if g.torch_native():
        return _MAX_POOL[g.n](x, g.kernel, g.strides, g.begin, g.dilations, g.ceil)
    xp = F.pad(x, torch_pad(g.begin, g.reach), value=_min_value(x.dtype))
    y = _MAX_POOL[g.n](xp, g.kernel, g.strides, 0, g.dilations, False)
    return g.crop(y)


def _window_sum(x: torch.Tensor, g: _Pool) -> torch.Tensor:
    """Sum over each pooling window (dilations included) as a depthwise convolution."""
    channels = x.shape[1]
    ones = torch.ones((channels, 1, *g.kernel), dtype=x.dtype, device=x.device)
    return _CONV[g.n](x, ones, None, g.strides, 0, g.dilations, channels)


def _window_count(ctx: NodeCtx, x: torch.Tensor, g: _Pool, include_pad: bool) -> torch.Tensor:
    """How many elements each window averages over (a constant of the geometry)."""
    with no_tracing():
        ones = torch.ones((1, 1, *g.spatial), dtype=torch.float64)
        if include_pad:
            mask = F.pad(ones, torch_pad(g.begin, g.end), value=1.0)
            extra = [r - e for r, e in zip(g.reach, g.end, strict=True)]
            mask = F.pad(mask, torch_pad([0] * g.n, extra), value=0.0)
        else:
            mask = F.pad(ones, torch_pad(g.begin, g.reach), value=0.0)
        kernel = torch.ones((1, 1, *g.kernel), dtype=torch.float64)
        count = _CONV[g.n](mask, kernel, None, g.strides, 0, g.dilations)
        count = g.crop(count).clamp(min=1).to(x.dtype).to(x.device)
    return count


@op("AveragePool")
def average_pool(ctx: NodeCtx):
    x = ctx.input(0)
    g = _Pool(ctx, x)
    include_pad = bool(ctx.attr("count_include_pad", 0))
    if g.torch_native(dilation_ok=False):
        return _AVG_POOL[g.n](x, g.kernel, g.strides, g.begin, g.ceil, include_pad)
    xp = F.pad(x, torch_pad(g.begin, g.reach))
    total = g.crop(_window_sum(xp, g))
    return total / _window_count(ctx, x, g, include_pad)


@op("LpPool")
def lp_pool(ctx: NodeCtx):
    x = ctx.input(0)
    g = _Pool(ctx, x)
    p = float(ctx.attr("p", 2))
    xp = F.pad(torch.abs(x) ** p, torch_pad(g.begin, g.reach))
    return g.crop(_window_sum(xp, g)) ** (1.0 / p)


@op("GlobalAveragePool")
def global_average_pool(ctx: NodeCtx):
    x = ctx.input(0)
    return x.mean(tuple(range(2, x.dim())), keepdim=True)


@op("GlobalMaxPool")
def global_max_pool(ctx: NodeCtx):
    x = ctx.input(0)
    return x.amax(tuple(range(2, x.dim())), keepdim=True)


@op("GlobalLpPool")
def global_lp_pool(ctx: NodeCtx):
    x = ctx.input(0)
    p = float(ctx.attr("p", 2))
    return torch.linalg.vector_norm(x, ord=p, dim=tuple(range(2, x.dim())), keepdim=True)


# -- GridSample ---------------------------------------------------------------------------

_GRID_MODES = {
    "bilinear": "bilinear",
    "linear": "bilinear",
    "nearest": "nearest",
    "bicubic": "bicubic",
    "cubic": "bicubic",
}


@op("GridSample")
def grid_sample(ctx: NodeCtx):
    x, grid = ctx.input(0), ctx.input(1)
    mode = _GRID_MODES.get(ctx.attr("mode", "bilinear" if ctx.opset < 20 else "linear"))
    padding = ctx.attr("padding_mode", "zeros")
    if mode is None or padding not in ("zeros", "border", "reflection"):
        raise ctx.unsupported(f"mode={ctx.attr('mode')!r} padding_mode={padding!r}")
    if x.dim() not in (4, 5) or (x.dim() == 5 and mode == "bicubic"):
        raise ctx.unsupported(f"{x.dim() - 2}-D sampling with mode {mode}")
    return F.grid_sample(
        x,
        grid.to(x.dtype),
        mode=mode,
        padding_mode=padding,
        align_corners=bool(ctx.attr("align_corners", 0)),
    )


@op("AffineGrid")
def affine_grid(ctx: NodeCtx):
    theta = ctx.input(0)
    size = ctx.ints(1, "size")
    return F.affine_grid(theta, size, align_corners=bool(ctx.attr("align_corners", 0)))


@op("Col2Im")
def col2im(ctx: NodeCtx):
    x = ctx.input(0)
    image = ctx.ints(1, "image_shape")
    block = ctx.ints(2, "block_shape")
    n = len(image)
    if n != 2:
        raise ctx.unsupported(f"{n}-D images (torch folds 2-D only)")
    dilations = _ints(ctx, "dilations", n, 1)
    strides = _ints(ctx, "strides", n, 1)
    pads = _ints(ctx, "pads", 2 * n, 0)
    if pads[:n] != pads[n:]:
        raise ctx.unsupported(f"asymmetric pads {pads}")
    return F.fold(x, image, block, dilation=dilations, padding=pads[:n], stride=strides)
