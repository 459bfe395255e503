"""2:4 semi-structured sparsity: 2 of every 4 consecutive weights kept along the GEMM
reduction dimension, the layout of NVIDIA's sparse tensor cores."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from lepton_compile.passes._utils import const_array
from lepton_compile.passes.prune.weights import (
    matches_exclusions,
    node_labels,
    weight_record,
    weight_skip_reason,
    weight_users,
)


def check_24(array: np.ndarray, axis: int, *, exact: bool = False) -> bool:
    """True if every group of 4 consecutive entries along `axis` has at most 2 non-zeros.

    With `exact`, every group must have exactly 2 non-zeros. False if the axis length is
    not a multiple of 4.
    """
    moved = np.moveaxis(np.asarray(array), axis, -1)
    if moved.shape[-1] % 4:
        return False
    nonzeros = np.count_nonzero(moved.reshape(-1, 4), axis=1)
    return bool(np.all(nonzeros == 2) if exact else np.all(nonzeros <= 2))


def prune_24(array: np.ndarray, axis: int) -> np.ndarray:
    """A copy of `array` keeping the 2 largest-magnitude of every 4 entries along `axis`."""
    moved = np.moveaxis(np.asarray(array), axis, -1)
    if moved.shape[-1] % 4:
        raise ValueError(f"axis {axis} has length {moved.shape[-1]}, not a multiple of 4")
    groups = moved.reshape(-1, 4)
    order = np.argsort(-np.abs(groups.astype(np.float32)), axis=1, kind="stable")
    keep = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(keep, order[:, :2], True, axis=1)
    out = np.where(keep, groups, np.zeros((), groups.dtype)).reshape(moved.shape)
    return np.moveaxis(out, -1, axis)


def reduction_axis(node: ir.Node, weight: np.ndarray) -> int | None:
    """The weight axis that 2:4 sparsity groups along for `node`, None if unsupported.

    Gemm B: dim 0 (dim 1 with transB=1). MatMul B [..., K, N]: dim -2. Conv W
    [O, I/g, kh, kw]: dim 1, the input channels.
    """
    if node.op_type == "Gemm" and weight.ndim == 2:
        return 1 if node.attributes.get_int("transB", 0) else 0
    if node.op_type == "MatMul" and weight.ndim >= 2:
        return weight.ndim - 2
    if node.op_type == "Conv" and weight.ndim >= 3:
        return 1
    return None


class SemiStructured24Pass(ir.passes.FunctionalPass):
    """2:4 sparsity: in every group of 4 consecutive weights along K, keep the 2 largest.

    K is the GEMM reduction dimension, as NVIDIA's sparse tensor cores see it. Gemm B:
    dim 0 of B, dim 1 with transB=1. MatMul B [K, N]: along K for each column. Conv W
    [O, I/g, kh, kw]: an NHWC implicit GEMM reduces over (kh, kw, I) with I innermost,
    so groups run along the input-channel dim I/g for each (o, kh, kw). A layer whose K
    (for Conv, I/g) is not a multiple of 4 is skipped.

    Args:
        nodes_to_exclude: node names or labels (a nameless node's first output name), or
            fnmatch patterns of them, left untouched.

    After a call, `report` holds one record per Conv/Gemm/MatMul node with a float
    constant weight: node, op_type, weight, shape, axis (the grouped weight axis),
    sparsity (fraction of zeros afterwards) and skipped (the reason, or None).
    """

    def __init__(self, nodes_to_exclude: Sequence[str] = ()) -> None:
        super().__init__()
        self.nodes_to_exclude = tuple(nodes_to_exclude)
        self.report: list[dict] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model = model.clone()
        labels = node_labels(model.graph)
        users = weight_users(model.graph, ("Conv", "Gemm", "MatMul"))
        records: dict[ir.Node, dict] = {}
        modified = False
        for weight, nodes in users.items():
            array = const_array(weight)
            reason = weight_skip_reason(weight, set(nodes))
            axes = {reduction_axis(n, array) for n in nodes} if array is not None else {None}
            axis = next(iter(axes)) if len(axes) == 1 else None
            if reason is None and matches_exclusions(nodes, labels, self.nodes_to_exclude):
                reason = "excluded"
            if reason is None and len(axes) > 1:
                reason = "shared by nodes that reduce along different axes"
            if reason is None and axis is None:
                reason = "unsupported weight layout"
            if reason is None and array is not None and axis is not None:
                if array.shape[axis] % 4:
                    reason = f"K={array.shape[axis]} (weight dim {axis}) is not a multiple of 4"
            if reason is None and array is not None and axis is not None:
                array = prune_24(array, axis)
                weight.const_value = ir.tensor(array, name=weight.name)
                modified = True
            for node in nodes:
                records[node] = weight_record(labels[node], node, weight, array, reason, axis=axis)
        self.report = [records[n] for n in model.graph if n in records]
        return ir.passes.PassResult(model, modified=modified)
