"""The batch dimension of a run: which sizes a serving profile measures, the feeds at each
size, and the check that a variant's outputs do not depend on the batch.

Feeds at batch ``b`` stack the run's samples (each made at batch 1, generated or the user's
``--inputs``) along dim 0 of the batch inputs, cycling through them when there are fewer
than ``b`` (tiling); inputs without a batch dimension keep the first sample's value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from lepton_compile.accuracy import Fidelity, compare
from lepton_compile.intake import LoadedModel, pinned_batch

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class BatchPlan:
    """The sizes to measure. ``inputs`` hold the batch on dim 0 (empty when the model pins
    it: then ``pinned`` is its size and the only one measured)."""

    sizes: tuple[int, ...]
    requested: tuple[int, ...]
    inputs: tuple[str, ...]
    pinned: int | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def base(self) -> int:
        """The size the main race measures: every feed of the run is made at it."""
        return self.pinned or 1

    def to_dict(self) -> dict:
        return {
            "batch_sizes": list(self.sizes),
            "requested": list(self.requested),
            "batch_inputs": list(self.inputs),
            "pinned": self.pinned,
            "notes": list(self.notes),
        }


def plan_batches(loaded: LoadedModel, requested: Sequence[int]) -> BatchPlan:
    """The sizes a profile of ``loaded`` measures for the ``requested`` ones."""
    asked = tuple(sorted(set(requested)))
    if loaded.batch_inputs:
        return BatchPlan(asked, asked, tuple(loaded.batch_inputs))
    pinned = pinned_batch(loaded.model) or 1
    note = f"batch fixed at {pinned} by the model: measured at that size alone"
    return BatchPlan((pinned,), asked, (), pinned, (note,))


def stack(samples: Sequence[Feed], batch_inputs: Sequence[str], size: int) -> Feed:
    """One feed at batch ``size`` from ``samples`` (each at batch 1), cycled when short."""
    if not samples:
        raise ValueError("no samples to stack")
    first = samples[0]
    out: Feed = {}
    for name, arr in first.items():
        if name not in batch_inputs:
            out[name] = arr
            continue
        rows: list[np.ndarray] = []
        have = 0
        i = 0
        while have < size:
            part = samples[i % len(samples)][name]
            rows.append(part)
            have += part.shape[0]
            i += 1
        out[name] = np.ascontiguousarray(np.concatenate(rows, axis=0)[:size])
    return out


def rows(samples: Sequence[Feed], batch_inputs: Sequence[str]) -> list[Feed]:
    """The samples split into feeds of batch 1 (user samples may hold several rows)."""
    out: list[Feed] = []
    for sample in samples:
        n = min((sample[k].shape[0] for k in batch_inputs if k in sample), default=1)
        for i in range(n):
            out.append({k: (a[i : i + 1] if k in batch_inputs else a) for k, a in sample.items()})
    return out


def unstack(
    outputs: Mapping[str, np.ndarray], reference: Sequence[Mapping[str, np.ndarray]], size: int
) -> list[dict[str, np.ndarray]] | str:
    """Split one batch's outputs into per-sample outputs shaped like ``reference`` (outputs of
    samples at batch 1); a reason when they do not split (an output that does not grow with
    the batch)."""
    per_sample: list[dict[str, np.ndarray]] = [{} for _ in range(size)]
    for name, ref in reference[0].items():
        out = outputs.get(name)
        rows = ref.shape[0] if ref.ndim else 0
        if out is None or rows == 0 or out.ndim == 0 or out.shape[0] != rows * size:
            got = "missing" if out is None else f"of shape {list(out.shape)}"
            return (
                f"output {name!r} is {got} at batch {size} (at batch 1: {list(ref.shape)}): "
                "it does not follow the batch"
            )
        for i in range(size):
            per_sample[i][name] = out[i * rows : (i + 1) * rows]
    return per_sample


def check_batch(
    outputs: Mapping[str, np.ndarray],
    reference: Sequence[Mapping[str, np.ndarray]],
    size: int,
    score_outputs: set[str],
    max_drop: float,
) -> Fidelity | str:
    """A variant's outputs at batch ``size`` (from ``stack`` of the batch-1 samples
    ``reference`` was computed on) against the original's at batch 1, sample by sample,
    under the run's own accuracy rule; a reason when the outputs do not split by sample."""
    split = unstack(outputs, reference, size)
    if isinstance(split, str):
        return split
    expected = [reference[i % len(reference)] for i in range(size)]
    return compare(expected, split, score_outputs, max_drop)
