"""Resize / Upsample: F.interpolate where it computes exactly ONNX's sampling, else per-axis taps.

The general path is separable: for every resized axis the source indices and weights of each
output position are computed at lowering time (numpy, float64, the formulas of the ONNX
reference implementation) and applied as K gathers and a weighted sum (K = 1 for nearest,
2 for linear, 4 for cubic, more with antialias). Every coordinate transformation mode,
nearest mode, cubic coefficient, exclude_outside, antialias, axes, keep_aspect_ratio_policy
and tf_crop_and_resize with its extrapolation value is covered.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lepton_compile.runtime.lepton.lower import NodeCtx
from lepton_compile.runtime.lepton.registry import op

_COORD_MODES = {
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "tf_crop_and_resize",
    "half_pixel_symmetric",
}
_NEAREST_MODES = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil"}
_TORCH_LINEAR = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _nearest_coeffs(mode: str) -> Callable[[float, float], np.ndarray]:
    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if float(ratio).is_integer():
            return np.array([0.0, 1.0])
        if mode == "round_prefer_floor":
            return np.array([ratio <= 0.5, ratio > 0.5], dtype=np.float64)
        if mode == "round_prefer_ceil":
            return np.array([ratio < 0.5, ratio >= 0.5], dtype=np.float64)
        if mode == "floor":
            return np.array([1.0, 0.0])
        return np.array([0.0, 1.0])  # ceil

    return coeffs


def _linear_coeffs(antialias: bool) -> Callable[[float, float], np.ndarray]:
    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if not antialias:
            return np.array([1 - ratio, ratio])
        scale = min(scale, 1.0)
        start = int(np.floor(-1 / scale) + 1)
        footprint = 2 - 2 * start
        args = (np.arange(start, start + footprint) - ratio) * scale
        c = np.clip(1 - np.abs(args), 0, 1)
        return c / c.sum()

    return coeffs


def _cubic_coeffs(a: float, antialias: bool) -> Callable[[float, float], np.ndarray]:
    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if not antialias:
            return np.array(
                [kernel(ratio + 1), kernel(ratio), kernel(1 - ratio), kernel(2 - ratio)]
            )
        scale = min(scale, 1.0)
        i_start = int(np.floor(-2 / scale) + 1)
        i_end = 2 - i_start
        c = np.array([kernel(scale * (i - ratio)) for i in range(i_start, i_end)])
        return c / c.sum()

    return coeffs


def _source_coords(
    coord: str, out_len: int, in_len: int, scale: float, roi: tuple[float, float] | None
) -> tuple[np.ndarray, np.ndarray | None]:
    y = np.arange(out_len, dtype=np.float64)
    out_f = scale * in_len
    extrapolated = None
    if coord == "align_corners":
        x = np.zeros(out_len) if out_f == 1 else y * (in_len - 1) / (out_f - 1)
    elif coord == "asymmetric":
        x = y / scale
    elif coord == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        if out_f == 1:
            x = np.full(out_len, (hi - lo) * (in_len - 1) / 2)
        else:
            x = y * (hi - lo) * (in_len - 1) / (out_f - 1)
        x = x + lo * (in_len - 1)
        extrapolated = (x < 0) | (x > in_len - 1)
    elif coord == "pytorch_half_pixel":
        x = np.full(out_len, -0.5) if out_f == 1 else (y + 0.5) / scale - 0.5
    elif coord == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric
        adjustment = out_len / out_f
        offset = in_len / 2 * (1 - adjustment)
        x = offset + (y + 0.5) / scale - 0.5
    return x, extrapolated


def axis_taps(
    in_len: int,
    out_len: int,
    scale: float,
    coord: str,
    get_coeffs: Callable[[float, float], np.ndarray],
    exclude_outside: bool,
    roi: tuple[float, float] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(indices [out, K] clamped into the input, weights [out, K], extrapolated [out] | None)."""
    x, extrapolated = _source_coords(coord, out_len, in_len, scale, roi)
    x_int = np.floor(x).astype(np.int64)
    ratios = np.where(x == x_int, 1.0, x - x_int)
    coeffs = np.stack([np.asarray(get_coeffs(float(r), scale), dtype=np.float64) for r in ratios])
    n = coeffs.shape[1]
    pad = int(np.ceil(n / 2))
    xp = x + pad
    p = np.floor(xp).astype(np.int64)
    frac = xp - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        base = -((n - 1) // 2)
        offset = np.where(frac <= 0.5, base, base + 1)
    idx = (p + offset)[:, None] + np.arange(n)[None, :] - pad
    if exclude_outside:
        coeffs = np.where((idx < 0) | (idx >= in_len), 0.0, coeffs)
        total = coeffs.sum(axis=1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    return np.clip(idx, 0, in_len - 1), coeffs, extrapolated


class _Spec:
    """A Resize node's sampling, normalized to every axis of the input."""

    def __init__(self, ctx: NodeCtx, x: torch.Tensor):
        rank = x.dim()
        self.in_shape = list(x.shape)
        self.antialias = bool(ctx.attr("antialias", 0))
        self.exclude_outside = bool(ctx.attr("exclude_outside", 0))
        self.cubic_a = float(ctx.attr("cubic_coeff_a", -0.75))
        self.extrapolation = float(ctx.attr("extrapolation_value", 0.0))
        mode = ctx.attr("mode", "nearest")
        if mode not in ("nearest", "linear", "cubic", "bilinear", "trilinear"):
            raise ctx.unsupported(f"mode={mode!r}")
        self.mode = "linear" if mode in ("bilinear", "trilinear") else mode
        scales: list[float] | None = None
        sizes: list[int] | None = None
        roi: list[float] | None = None
        if ctx.op_type == "Upsample" or ctx.opset < 11:
            # Upsample and Resize-10: asymmetric; nearest floors when upsampling and ceils
            # when downsampling (onnxruntime).
            self.coord = "asymmetric"
            self.nearest_mode = "legacy"
            if ctx.op_type == "Upsample" and ctx.opset < 9:
                scales = [float(s) for s in ctx.attr("scales")]
            else:
                scales = ctx.floats(1, "scales")
        else:
            self.coord = ctx.attr("coordinate_transformation_mode", "half_pixel")
            self.nearest_mode = ctx.attr("nearest_mode", "round_prefer_floor")
            if ctx.has(1) and self.coord == "tf_crop_and_resize":
                roi = ctx.floats(1, "roi") or None
            if ctx.has(2):
                scales = ctx.floats(2, "scales") or None
            if ctx.has(3):
                sizes = ctx.ints(3, "sizes") or None
        if self.coord not in _COORD_MODES:
            raise ctx.unsupported(f"coordinate_transformation_mode={self.coord!r}")
        if self.mode == "nearest" and self.nearest_mode not in _NEAREST_MODES | {"legacy"}:
            raise ctx.unsupported(f"nearest_mode={self.nearest_mode!r}")
        if self.mode == "nearest" and self.antialias:
            raise ctx.unsupported("antialias=1 with mode=nearest")
        if (scales is None) == (sizes is None):
            raise ctx.unsupported("exactly one of scales and sizes must be given")
        axes = ctx.attr("axes")
        axes = [a + rank if a < 0 else a for a in axes] if axes else list(range(rank))
        full_scales = [1.0] * rank
        out = list(self.in_shape)
        full_roi = [0.0] * rank + [1.0] * rank
        if roi is not None:
            for i, a in enumerate(axes):
                full_roi[a], full_roi[rank + a] = roi[i], roi[len(axes) + i]
        if scales is not None:
            for i, a in enumerate(axes):
                full_scales[a] = scales[i]
                out[a] = int(math.floor(scales[i] * self.in_shape[a]))
            self.given = "scales"
        else:
            assert sizes is not None
            for i, a in enumerate(axes):
                out[a] = sizes[i]
                full_scales[a] = sizes[i] / self.in_shape[a]
            policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
            if policy != "stretch":
                if policy not in ("not_larger", "not_smaller"):
                    raise ctx.unsupported(f"keep_aspect_ratio_policy={policy!r}")
                pick = min if policy == "not_larger" else max
                scale = pick(full_scales[a] for a in axes)
                for a in axes:
                    full_scales[a] = scale
                    out[a] = int(scale * self.in_shape[a] + 0.5)
            self.given = "sizes"
        self.scales = full_scales
        self.out = out
        self.roi = full_roi
        self.resized = [
            a
            for a in range(rank)
            if not (
                math.isclose(full_scales[a], 1.0)
                and out[a] == self.in_shape[a]
                and (
                    self.coord != "tf_crop_and_resize"
                    or (full_roi[a] == 0.0 and full_roi[rank + a] == 1.0)
                )
            )
        ]

    def coeffs(self, axis: int) -> Callable[[float, float], np.ndarray]:
        if self.mode == "nearest":
            mode = self.nearest_mode
            if mode == "legacy":
                mode = "floor" if self.scales[axis] >= 1 else "ceil"
            return _nearest_coeffs(mode)
        if self.mode == "linear":
            return _linear_coeffs(self.antialias)
        return _cubic_coeffs(self.cubic_a, self.antialias)


def _pow2(k: float) -> bool:
    return k >= 1 and float(k).is_integer() and (int(k) & (int(k) - 1)) == 0


def _torch_native(spec: _Spec, x: torch.Tensor) -> torch.Tensor | None:
    """F.interpolate when it samples exactly as ONNX does for this node, else None."""
    n = x.dim() - 2
    if n not in (1, 2, 3) or any(a < 2 for a in spec.resized) or spec.antialias:
        return None
    spatial_out = spec.out[2:]
    if spec.mode == "nearest":
        ratios = [o / i for o, i in zip(spatial_out, spec.in_shape[2:], strict=True)]
        if not all(_pow2(r) for r in ratios) or any(
            s != r for s, r in zip(spec.scales[2:], ratios, strict=True)
        ):
            return None
        floor_like = spec.nearest_mode in ("floor", "legacy")
        if spec.coord == "asymmetric" and floor_like:
            return F.interpolate(x, size=spatial_out, mode="nearest")
        if spec.coord in ("half_pixel", "pytorch_half_pixel") and spec.nearest_mode in (
            "round_prefer_floor",
            "round_prefer_ceil",
        ):
            # integer upscales never tie, so both rounding modes are torch's nearest-exact
            return F.interpolate(x, size=spatial_out, mode="nearest-exact")
        return None
    coord = spec.coord
    if coord == "pytorch_half_pixel" and all(o > 1 for o in spatial_out):
        coord = "half_pixel"
    if coord not in ("half_pixel", "align_corners"):
        return None
    if spec.mode == "linear":
        torch_mode = _TORCH_LINEAR[n]
    elif spec.mode == "cubic" and n == 2 and spec.cubic_a == -0.75 and not spec.exclude_outside:
        torch_mode = "bicubic"
    else:
        return None
    align = coord == "align_corners"
    if (
        align
        and spec.given == "scales"
        and any(
            s * i != o
            for s, i, o in zip(spec.scales[2:], spec.in_shape[2:], spatial_out, strict=True)
        )
    ):
        return None  # ONNX aligns to scale * input (not an integer here), torch to the size
    if spec.given == "sizes" or align:
        return F.interpolate(x, size=spatial_out, mode=torch_mode, align_corners=align)
    return F.interpolate(
        x,
        scale_factor=spec.scales[2:],
        mode=torch_mode,
        align_corners=False,
        recompute_scale_factor=False,
    )


def _saturate(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point:
        return y.to(dtype)
    info = torch.iinfo(dtype)
    return torch.round(y).clamp(info.min, info.max).to(dtype)


def _lift_index(ctx: NodeCtx, values: np.ndarray) -> torch.Tensor:
    return ctx.constant(np.ascontiguousarray(values, dtype=np.int64))


def _lift_weights(ctx: NodeCtx, values: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    return ctx.constant(np.ascontiguousarray(values), dtype)


def resize(ctx: NodeCtx, x: torch.Tensor, spec: _Spec) -> torch.Tensor:
    if not spec.resized:
        return x
    if x.is_floating_point():
        native = _torch_native(spec, x)
        if native is not None:
            return native
    rank = x.dim()
    dtype = x.dtype
    work = x if (x.is_floating_point() or spec.mode == "nearest") else x.to(torch.float32)
    for a in spec.resized:
        in_len, out_len = work.shape[a], spec.out[a]
        if out_len == 0:
            shape = list(work.shape)
            shape[a] = 0
            work = work.new_zeros(shape)
            continue
        roi = (spec.roi[a], spec.roi[rank + a])
        idx, coeffs, extrapolated = axis_taps(
            in_len,
            out_len,
            spec.scales[a],
            spec.coord,
            spec.coeffs(a),
            spec.exclude_outside,
            roi,
        )
        if spec.mode == "nearest":
            pick = np.argmax(coeffs, axis=1)
            sel = idx[np.arange(out_len), pick]
            out = torch.index_select(work, a, _lift_index(ctx, sel))
        else:
            bshape = [1] * rank
            bshape[a] = out_len
            out = None
            for k in range(idx.shape[1]):
                if not coeffs[:, k].any():
                    continue
                tap = torch.index_select(work, a, _lift_index(ctx, idx[:, k]))
                w = _lift_weights(ctx, coeffs[:, k].reshape(bshape), work.dtype)
                out = tap * w if out is None else out + tap * w
            if out is None:
                out = torch.zeros_like(torch.index_select(work, a, _lift_index(ctx, idx[:, 0])))
        if extrapolated is not None and extrapolated.any():
            bshape = [1] * rank
            bshape[a] = out_len
            mask = _lift_index(ctx, extrapolated.reshape(bshape).astype(np.int64)) != 0
            out = torch.where(mask, torch.full_like(out, spec.extrapolation), out)
        work = out
    return work if work.dtype == dtype else _saturate(work, dtype)


@op("Resize", "Upsample")
def resize_op(ctx: NodeCtx):
    x = ctx.input(0)
    return resize(ctx, x, _Spec(ctx, x))
