"""Unstructured magnitude pruning: the smallest-magnitude weights of Conv/Gemm/MatMul set to
zero, per layer or over all layers together."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx_ir as ir

from lepton_compile.passes._utils import const_array
from lepton_compile.passes.prune.weights import (
    matches_exclusions,
    node_labels,
    weight_record,
    weight_skip_reason,
    weight_users,
    zero_fraction,
)


class MagnitudePrunePass(ir.passes.FunctionalPass):
    """Zero the smallest-magnitude weights of Conv/Gemm/MatMul nodes.

    Args:
        sparsity: fraction of each eligible weight (scope "layer") or of all eligible
            weights together (scope "global") to set to zero, in [0, 1].
        scope: "layer" or "global".
        op_types: node types whose input 1 is pruned when it is a float initializer.
        nodes_to_exclude: node names or labels (a nameless node's first output name), or
            fnmatch patterns of them, left untouched.
        min_params: weights with fewer elements are left untouched.

    After a call, `report` holds one record per eligible node: node, op_type, weight,
    shape, params, sparsity (fraction of zeros afterwards; before, if skipped) and
    skipped (the reason, or None). A weight that several pruned nodes share is pruned
    once.
    """

    def __init__(
        self,
        sparsity: float = 0.5,
        scope: Literal["layer", "global"] = "layer",
        op_types: Sequence[str] = ("Conv", "Gemm", "MatMul"),
        nodes_to_exclude: Sequence[str] = (),
        min_params: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= sparsity <= 1.0:
            raise ValueError(f"sparsity must be in [0, 1], got {sparsity}")
        if scope not in ("layer", "global"):
            raise ValueError(f"scope must be 'layer' or 'global', got {scope!r}")
        self.sparsity = sparsity
        self.scope = scope
        self.op_types = tuple(op_types)
        self.nodes_to_exclude = tuple(nodes_to_exclude)
        self.min_params = min_params
        self.report: list[dict] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model = model.clone()
        labels = node_labels(model.graph)
        users = weight_users(model.graph, self.op_types)
        records: dict[ir.Node, dict] = {}
        selected: dict[ir.Value, np.ndarray] = {}
        for weight, nodes in users.items():
            array = const_array(weight)
            reason = weight_skip_reason(weight, set(nodes))
            if reason is None and matches_exclusions(nodes, labels, self.nodes_to_exclude):
                reason = "excluded"
            if reason is None and array is not None and array.size < self.min_params:
                reason = f"{array.size} parameters < min_params={self.min_params}"
            for node in nodes:
                params = int(array.size) if array is not None else 0
                records[node] = weight_record(
                    labels[node], node, weight, array, reason, params=params
                )
            if reason is None and array is not None:
                selected[weight] = array
        pruned = self._prune(selected)
        for weight, array in pruned.items():
            # Only pruned nodes read it (weight_skip_reason): rewrite it in place.
            weight.const_value = ir.tensor(array, name=weight.name)
            for user in users[weight]:
                records[user]["sparsity"] = zero_fraction(array)
        self.report = [records[n] for n in model.graph if n in records]
        return ir.passes.PassResult(model, modified=bool(pruned))

    def _prune(self, weights: Mapping[ir.Value, np.ndarray]) -> dict[ir.Value, np.ndarray]:
        if self.sparsity == 0.0 or not weights:
            return {}
        if self.scope == "layer":
            return {w: _zero_smallest(a, _count(self.sparsity, a.size)) for w, a in weights.items()}
        flat = np.concatenate([np.abs(a.astype(np.float32)).reshape(-1) for a in weights.values()])
        k = _count(self.sparsity, flat.size)
        mask = np.zeros(flat.size, dtype=bool)
        if k > 0:
            mask[np.argpartition(flat, k - 1)[:k]] = True
        out: dict[ir.Value, np.ndarray] = {}
        start = 0
        for weight, array in weights.items():
            part = mask[start : start + array.size].reshape(array.shape)
            start += array.size
            out[weight] = np.where(part, np.zeros((), array.dtype), array)
        return out


def _count(fraction: float, size: int) -> int:
    return min(size, math.floor(fraction * size + 0.5))


def _zero_smallest(array: np.ndarray, k: int) -> np.ndarray:
    """A copy of `array` with its k smallest-magnitude entries set to zero."""
    out = array.copy().reshape(-1)
    if k > 0:
        magnitude = np.abs(out.astype(np.float32))
        out[np.argpartition(magnitude, k - 1)[:k]] = 0
    return out.reshape(array.shape)
