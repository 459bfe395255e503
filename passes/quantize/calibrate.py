"""Calibration data: checked against the model's inputs, read by onnxruntime, bounded by memory.

The calibrated passes (static INT8, FP8) take their samples as a sequence of feeds (input name
-> array). ``check_calibration`` holds them to the model's inputs and raises PassInputError
(one line) where they do not fit; ``calibrate_amax`` runs them for the largest magnitude of
chosen tensors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper

from lepton_compile.passes import ort_session
from lepton_compile.passes.errors import PassInputError
from lepton_compile.passes.quantize.model import FLOAT
from lepton_compile.passes.quantize.quiet import quiet_root_logger

# Fewer calibration samples give ranges that say more about the one sample than the data.
MIN_CALIBRATION_SAMPLES = 2
# Share of physical memory the histogram calibrators may fill: onnxruntime's entropy and
# percentile calibration keep every intermediate tensor of every sample until the end.
HISTOGRAM_MEMORY_SHARE = 0.25

Feeds = Sequence[Mapping[str, np.ndarray]]


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: Feeds):
        self._feeds = list(feeds)
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        nxt = next(self._it, None)
        return dict(nxt) if nxt is not None else None

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def count_calibration(calibration: Feeds | None, what: str) -> list:
    """The samples as a list; PassInputError when there are fewer than MIN_CALIBRATION_SAMPLES."""
    feeds = list(calibration or ())
    if len(feeds) < MIN_CALIBRATION_SAMPLES:
        raise PassInputError(
            f"{what} needs at least {MIN_CALIBRATION_SAMPLES} calibration samples, got {len(feeds)}"
        )
    return feeds


def _dims_text(dims: Sequence[int | None]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def check_calibration(
    calibration: Feeds,
    model: onnx.ModelProto,
    what: str = "calibration",
) -> list[dict[str, np.ndarray]]:
    """The feeds as dicts of arrays; PassInputError (one line) unless they fit the model's inputs.

    Every feed must name exactly the model's inputs, with their element type, their rank and
    their fixed dimensions, and hold finite values; there must be MIN_CALIBRATION_SAMPLES.
    """
    feeds = count_calibration(calibration, what)
    consts = {t.name for t in model.graph.initializer}
    specs = [i for i in model.graph.input if i.name not in consts]
    expected = [i.name for i in specs]
    out: list[dict[str, np.ndarray]] = []
    for k, feed in enumerate(feeds):
        where = f"{what} sample {k}"
        if not isinstance(feed, Mapping):
            raise PassInputError(
                f"{where} is a {type(feed).__name__}, not a mapping of input names"
            )
        missing = [n for n in expected if n not in feed]
        unknown = [str(n) for n in feed if n not in expected]
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"lacks input(s) {', '.join(missing)}")
            if unknown:
                parts.append(f"has unknown input(s) {', '.join(unknown)}")
            raise PassInputError(
                f"{where} {' and '.join(parts)} (model inputs: {', '.join(expected)})"
            )
        arrays: dict[str, np.ndarray] = {}
        for spec in specs:
            arr = np.asarray(feed[spec.name])
            tt = spec.type.tensor_type
            if tt.elem_type:
                want = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type))
                if arr.dtype != want:
                    raise PassInputError(
                        f"{where}: input {spec.name!r} is {arr.dtype}, the model expects {want}"
                    )
            if tt.HasField("shape"):
                dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
                fits = len(dims) == arr.ndim and all(
                    d is None or d == s for d, s in zip(dims, arr.shape, strict=True)
                )
                if not fits:
                    raise PassInputError(
                        f"{where}: input {spec.name!r} has shape {list(arr.shape)}, "
                        f"the model expects {_dims_text(dims)}"
                    )
            if arr.dtype.kind == "f" and not np.isfinite(arr).all():
                raise PassInputError(f"{where}: input {spec.name!r} holds NaN or Inf")
            arrays[spec.name] = arr
        out.append(arrays)
    return out


def _activation_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all float intermediate tensors of one inference (from inferred shapes)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return 0
    total = 0
    for vi in inferred.graph.value_info:
        t = vi.type.tensor_type
        if t.elem_type != FLOAT or not t.HasField("shape"):
            continue
        n = 1
        for d in t.shape.dim:
            n *= d.dim_value if d.HasField("dim_value") else 1
        total += 4 * n
    return total


def histogram_sample_cap(model: onnx.ModelProto) -> int | None:
    """How many calibration samples the histogram calibrators can hold in memory (None: any)."""
    per_sample = _activation_bytes(model)
    if not per_sample:
        return None
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    return max(MIN_CALIBRATION_SAMPLES, int(mem * HISTOGRAM_MEMORY_SHARE // per_sample))


def calibrate_amax(model: onnx.ModelProto, names: Sequence[str], feeds: Feeds) -> dict[str, float]:
    """Largest finite magnitude of each named tensor over the feeds, on onnxruntime's CPU."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    outputs = {o.name for o in aug.graph.output}
    inputs = {i.name for i in aug.graph.input}
    for name in names:
        if name not in outputs and name not in inputs:
            aug.graph.output.append(helper.make_tensor_value_info(name, FLOAT, None))
    fetch = [n for n in names if n not in inputs]
    amax = dict.fromkeys(names, 0.0)
    sess = None
    if fetch:
        with quiet_root_logger():
            sess = ort_session.session(aug)
    for feed in feeds:
        got = dict(zip(fetch, sess.run(fetch, dict(feed)), strict=True)) if sess else {}
        got.update({n: feed[n] for n in names if n in inputs})
        for name in names:
            a = np.abs(np.asarray(got[name], dtype=np.float32))
            a = a[np.isfinite(a)]
            if a.size:
                amax[name] = max(amax[name], float(a.max()))
    return amax
