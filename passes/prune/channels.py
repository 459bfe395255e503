"""Structured channel pruning: the lowest-norm channels of each channel group removed, and
every tensor that reads them shrunk (see ``dependency_groups``)."""

from __future__ import annotations

import fnmatch
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from lepton_compile.passes.prune.dependency_groups import analyse
from lepton_compile.passes.prune.weights import ModelLike

logger = logging.getLogger(__name__)


def _keep_count(channels: int, ratio: float, multiple_of: int, min_channels: int) -> int:
    keep = channels - math.floor(ratio * channels + 0.5)
    keep = math.ceil(keep / multiple_of) * multiple_of
    return min(channels, max(keep, min_channels, 1))


def _model_params(model: ir.Model) -> int:
    return sum(
        v.const_value.size if v.const_value is not None else 0
        for v in model.graph.initializers.values()
    )


class StructuredChannelPrunePass(ir.passes.FunctionalPass):
    """Remove the lowest-norm channels of every prunable channel group (see `channel_groups`).

    Channels are ranked by the norm of their producers' output weights, summed over the
    group's producers; every producer weight and bias, BatchNormalization parameter,
    per-channel constant, depthwise Conv and consumer weight is sliced, and value shapes
    are updated.

    Args:
        ratios: fraction of channels to remove, for every group, or per group id (exact id
            first, else the first fnmatch pattern that matches; unmatched groups keep all).
        criterion: "l2" or "l1" norm.
        multiple_of: the kept count is rounded up to a multiple of this (or all channels).
        min_channels: keep at least this many channels per group.

    After a call, `report` holds one record per group: group, channels, kept, ratio,
    prunable, reason, producers, consumers, params_before and params_after (elements of
    the tensors the group slices, before and after slicing by this group alone); and
    `params_before` / `params_after` count the model's initializer elements.
    """

    def __init__(
        self,
        ratios: float | Mapping[str, float] = 0.25,
        criterion: Literal["l2", "l1"] = "l2",
        multiple_of: int = 1,
        min_channels: int = 1,
    ) -> None:
        super().__init__()
        values = [ratios] if isinstance(ratios, int | float) else list(ratios.values())
        if any(not 0.0 <= r < 1.0 for r in values):
            raise ValueError(f"ratios must be in [0, 1), got {ratios}")
        if criterion not in ("l2", "l1"):
            raise ValueError(f"criterion must be 'l2' or 'l1', got {criterion!r}")
        if multiple_of < 1 or min_channels < 1:
            raise ValueError("multiple_of and min_channels must be >= 1")
        self.ratios = ratios
        self.criterion = criterion
        self.multiple_of = multiple_of
        self.min_channels = min_channels
        self.report: list[dict] = []
        self.params_before = 0
        self.params_after = 0

    def ratio_for(self, group_id: str) -> float:
        if isinstance(self.ratios, int | float):
            return float(self.ratios)
        if group_id in self.ratios:
            return float(self.ratios[group_id])
        for pattern, ratio in self.ratios.items():
            if fnmatch.fnmatchcase(group_id, pattern):
                return float(ratio)
        return 0.0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        copy, analysis = analyse(model)
        self.params_before = _model_params(copy)
        kept: dict[int, np.ndarray] = {}
        records: dict[int, dict] = {}
        for root, group in analysis.groups():
            ratio = self.ratio_for(group.id)
            keep = group.channels
            if group.prunable and ratio > 0:
                keep = _keep_count(group.channels, ratio, self.multiple_of, self.min_channels)
            if keep < group.channels:
                order = np.argsort(-analysis.scores(root, self.criterion), kind="stable")
                kept[root] = np.sort(order[:keep])
            records[root] = {
                "group": group.id,
                "channels": group.channels,
                "kept": keep,
                "ratio": ratio,
                "prunable": group.prunable,
                "reason": group.reason,
                "producers": group.producers,
                "consumers": group.consumers,
                "params_before": 0,
                "params_after": 0,
            }
        if not isinstance(self.ratios, int | float):
            ids = [r["group"] for r in records.values()]
            for key in self.ratios:
                if not any(fnmatch.fnmatchcase(i, key) or i == key for i in ids):
                    logger.warning("no channel group matches %r", key)
        for root, (before, after) in analysis.apply(kept).items():
            records[root]["params_before"] = before
            records[root]["params_after"] = after
        self.report = list(records.values())
        self.params_after = _model_params(copy)
        return ir.passes.PassResult(copy, modified=bool(kept))


def prune_channels_by_index(
    model: ModelLike, kept: Mapping[str, Sequence[int]]
) -> ir.Model | onnx.ModelProto:
    """A copy of `model` keeping exactly the channels `kept[group_id]` of each named group.

    Returns the same kind of model as given. Raises ValueError for an unknown or frozen
    group, or indices that are out of range, repeated or empty.
    """
    copy, analysis = analyse(model)
    groups = {group.id: (root, group) for root, group in analysis.groups()}
    selection: dict[int, np.ndarray] = {}
    for group_id, indices in kept.items():
        if group_id not in groups:
            raise ValueError(f"no channel group {group_id!r}")
        root, group = groups[group_id]
        if not group.prunable:
            raise ValueError(f"group {group_id!r} is not prunable: {group.reason}")
        array = np.asarray(sorted(int(i) for i in indices), dtype=np.int64)
        if not len(array) or len(set(array.tolist())) != len(array):
            raise ValueError(f"group {group_id!r}: kept indices must be non-empty and unique")
        if array[0] < 0 or array[-1] >= group.channels:
            raise ValueError(f"group {group_id!r}: indices out of range [0, {group.channels})")
        if len(array) < group.channels:
            selection[root] = array
    analysis.apply(selection)
    return ir.serde.serialize_model(copy) if isinstance(model, onnx.ModelProto) else copy
