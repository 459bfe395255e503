"""Eval and calibration inputs: generated from the model's input specs, or read from .npz files."""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from lepton_compile.errors import InputError
from lepton_compile.intake import LoadedModel, TensorSpec

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]

# Keys in .npz files that carry labels for a user metric rather than model inputs.
LABEL_KEY = re.compile(r"^labels?$|^label[_:]")


@dataclass
class InputSet:
    """Calibration and held-out eval feeds, and where they came from."""

    calibration: list[Feed]
    eval: list[Feed]
    source: str
    labels: list[dict[str, np.ndarray]] = field(default_factory=list)  # of the eval feeds
    calibration_labels: list[dict[str, np.ndarray]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "calibration_samples": len(self.calibration),
            "eval_samples": len(self.eval),
        }


def _gather_bounds(model: onnx.ModelProto) -> dict[str, int]:
    """Upper bounds for integer inputs used as Gather indices into a constant table (ids)."""
    shapes = {i.name: tuple(i.dims) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    shapes[n.output[0]] = tuple(a.t.dims)
    bounds: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in shapes:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 0)
            dims = shapes[n.input[0]]
            # An axis out of range or an empty table gives no bound: the model then fails
            # on the runtime with its own message, not here.
            if -len(dims) <= axis < len(dims) and dims[axis] > 0:
                size = int(dims[axis])
                prev = bounds.get(n.input[1])
                bounds[n.input[1]] = size if prev is None else min(prev, size)
    return bounds


def _static_shape(spec: TensorSpec) -> tuple[int, ...]:
    # Intake made every input static but a kept batch dimension (made at batch 1 here, stacked
    # to other sizes by ``batching``); another symbol left over would be a bug there, not data.
    dims = spec.shape or ()
    if dims and isinstance(dims[0], str):
        dims = (1, *dims[1:])
    if not all(isinstance(d, int) for d in dims):
        raise RuntimeError(f"input {spec.name!r} has no static shape ({list(dims)})")
    return tuple(int(d) for d in dims if isinstance(d, int))


def _generate_one(spec: TensorSpec, rng: np.random.Generator, bounds: dict[str, int]) -> np.ndarray:
    shape = _static_shape(spec)
    dtype = spec.dtype
    lname = spec.name.lower()
    if dtype == np.bool_:
        return np.ones(shape, dtype=np.bool_)
    if np.issubdtype(dtype, np.integer):
        if "mask" in lname:
            return np.ones(shape, dtype=dtype)
        if "token_type" in lname or "segment" in lname:
            return np.zeros(shape, dtype=dtype)
        if "position" in lname and shape:
            return np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
        high = bounds.get(spec.name, 100)
        # Ids: avoid the first few (often special tokens) when the table is large enough.
        low = 5 if high > 50 else 0
        return rng.integers(low, high, size=shape, dtype=np.int64).astype(dtype)
    if np.issubdtype(dtype, np.floating):
        # Image-like tensors get [0, 1) values; everything else a unit normal.
        if len(shape) == 4:
            return rng.random(shape, dtype=np.float32).astype(dtype)
        return rng.standard_normal(shape, dtype=np.float32).astype(dtype)
    raise InputError(
        f"input {spec.name!r} has dtype {dtype}, which the input generator does not support; "
        "pass real inputs with --inputs DIR"
    )


def _memory_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 16 << 30


def _check_generated_size(loaded: LoadedModel, n: int) -> None:
    """Refuse feeds that cannot fit: a typo in --input-shape must be an error, not a machine
    that swaps (or a MemoryError from deep inside numpy)."""
    per_sample = 0
    for s in loaded.inputs:
        per_sample += math.prod(_static_shape(s)) * max(1, s.dtype.itemsize)
    total = per_sample * n
    # A quarter of memory: the feeds are held beside the model, its variants and the runtime.
    limit = _memory_bytes() // 4
    if total > limit:
        shapes = ", ".join(f"{s.name}={'x'.join(map(str, s.shape or ()))}" for s in loaded.inputs)
        raise InputError(
            f"{n} generated input sample(s) of {shapes} would take {_gib(total)}, more than "
            f"{_gib(limit)} (a quarter of this machine's memory); fix smaller dimensions with "
            "--input-shape, lower --calibration-samples / --eval-samples, or pass --inputs DIR"
        )


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB"


def generate(loaded: LoadedModel, n: int, seed: int) -> list[Feed]:
    """n random feeds, dtype- and name-aware (ids within the embedding table, masks of ones)."""
    _check_generated_size(loaded, n)
    rng = np.random.default_rng(seed)
    bounds = _gather_bounds(loaded.model)
    return [{s.name: _generate_one(s, rng, bounds) for s in loaded.inputs} for _ in range(n)]


def _check_feed(feed: dict[str, np.ndarray], specs: Sequence[TensorSpec], where: str) -> None:
    names = {s.name for s in specs}
    missing = sorted(names - feed.keys())
    extra = sorted(feed.keys() - names)
    if missing:
        raise InputError(f"{where}: missing input(s) {', '.join(missing)}")
    if extra:
        raise InputError(
            f"{where}: {', '.join(extra)} is not an input of the model "
            f"(inputs: {', '.join(sorted(names))})"
        )
    for s in specs:
        arr = feed[s.name]
        if arr.dtype != s.dtype:
            raise InputError(f"{where}: {s.name} has dtype {arr.dtype}, the model wants {s.dtype}")
        want = _static_shape(s)
        got = tuple(arr.shape)
        if s.shape and isinstance(s.shape[0], str) and got[:1] and got[0] >= 1:
            want = (got[0], *want[1:])  # a kept batch dimension takes samples of any batch
        if got != want:
            raise InputError(
                f"{where}: {s.name} has shape {list(arr.shape)}, the model wants {list(want)} "
                "(set --input-shape to match the data)"
            )


def load_npz_dir(directory: str | Path, loaded: LoadedModel) -> tuple[list[Feed], list[dict]]:
    """One feed per .npz file (sorted by name). Keys named label/labels are returned apart."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"--inputs {d}: not a directory")
    files = sorted(d.glob("*.npz"))
    if not files:
        raise InputError(f"--inputs {d}: no .npz files")
    feeds: list[Feed] = []
    labels: list[dict] = []
    for f in files:
        try:
            with np.load(f, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except Exception as e:
            raise InputError(f"{f}: not a readable .npz file ({e})") from None
        label = {k: v for k, v in data.items() if LABEL_KEY.match(k)}
        feed = {k: v for k, v in data.items() if k not in label}
        _check_feed(feed, loaded.inputs, str(f))
        feeds.append(feed)
        labels.append(label)
    return feeds, labels


def prepare(
    loaded: LoadedModel,
    inputs_dir: str | Path | None = None,
    calibration_samples: int = 8,
    eval_samples: int = 4,
    seed: int = 0,
) -> InputSet:
    """Calibration and held-out eval feeds; with user data the eval part is never calibrated on."""
    if eval_samples < 1:
        raise InputError(f"--eval-samples must be at least 1 (got {eval_samples})")
    if calibration_samples < 0:
        raise InputError(f"--calibration-samples must not be negative (got {calibration_samples})")
    if seed < 0:
        # numpy's generators take non-negative seeds only.
        raise InputError(f"--seed must not be negative (got {seed})")
    if inputs_dir is None:
        _check_generated_size(loaded, calibration_samples + eval_samples)
        return InputSet(
            calibration=generate(loaded, calibration_samples, seed),
            eval=generate(loaded, eval_samples, seed + 1),
            source=f"generated (seed {seed})",
        )
    feeds, labels = load_npz_dir(inputs_dir, loaded)
    if len(feeds) == 1:
        log.warning("one input file: it serves for calibration and evaluation both")
        return InputSet(feeds, feeds, f"{inputs_dir} (1 file, used for both)", labels, labels)
    n_eval = max(1, min(eval_samples, len(feeds) // 2))
    return InputSet(
        calibration=feeds[:-n_eval],
        eval=feeds[-n_eval:],
        source=f"{inputs_dir} ({len(feeds)} files: {len(feeds) - n_eval} calibration, "
        f"{n_eval} eval)",
        labels=labels[-n_eval:],
        calibration_labels=labels[:-n_eval],
    )
