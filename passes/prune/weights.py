"""What the pruning passes share: the weights they may rewrite, node labels, exclusions."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lepton_compile.passes._utils import FLOAT_TYPES, ONNX_DOMAINS, const_array, fresh_name

logger = logging.getLogger(__name__)

ModelLike = ir.Model | onnx.ModelProto


def node_labels(graph: ir.Graph) -> dict[ir.Node, str]:
    """A stable, unique label per node: its name, else its first output's name."""
    labels: dict[ir.Node, str] = {}
    seen: dict[str, int] = {}
    for index, node in enumerate(graph):
        base = node.name or (node.outputs[0].name if node.outputs else "") or f"node_{index}"
        count = seen.get(base, 0)
        seen[base] = count + 1
        labels[node] = base if count == 0 else f"{base}#{count}"
    return labels


def to_ir(model: ModelLike) -> ir.Model:
    """A copy of `model` as an ir.Model; tensors are shared, so never write into them."""
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    return model.clone()


def infer_shapes(model: ir.Model) -> None:
    try:
        common_passes.ShapeInferencePass(strict_mode=False)(model)
    except Exception as error:  # shapes stay as they were: unknown shapes freeze groups
        logger.warning("shape inference failed: %s", error)


def set_initializer(node: ir.Node, index: int, array: np.ndarray) -> None:
    """Make `node`'s input `index` the constant `array`, copying a shared initializer."""
    value = node.inputs[index]
    assert value is not None and node.graph is not None
    uses = value.uses()
    private = len(uses) == 1 and not value.is_graph_output() and not value.is_graph_input()
    if private:
        value.const_value = ir.tensor(array, name=value.name)
        value.shape = ir.Shape(array.shape)
        return
    tensor = ir.tensor(array)
    new = ir.Value(
        name=fresh_name(node.graph, f"{value.name}_pruned"),
        shape=ir.Shape(array.shape),
        type=ir.TensorType(tensor.dtype),
        const_value=tensor,
    )
    tensor.name = new.name
    node.graph.register_initializer(new)
    node.replace_input_with(index, new)
    unused = not value.uses() and not value.is_graph_output() and not value.is_graph_input()
    if unused and value.name is not None:
        node.graph.initializers.pop(value.name, None)


def weight_input(node: ir.Node, op_types: Iterable[str]) -> ir.Value | None:
    """The float constant weight (input 1) of a Conv/ConvTranspose/Gemm/MatMul node."""
    if node.domain not in ONNX_DOMAINS or node.op_type not in op_types or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or not weight.is_initializer():
        return None
    if weight.dtype not in FLOAT_TYPES:
        return None
    return weight


def matches_exclusions(
    nodes: Iterable[ir.Node], labels: Mapping[ir.Node, str], patterns: Sequence[str]
) -> bool:
    """True if any of `nodes` has a name or label that matches one of the fnmatch `patterns`."""
    return any(
        fnmatch.fnmatchcase(name, pattern)
        for node in nodes
        for name in {node.name or "", labels[node]}
        for pattern in patterns
    )


def weight_skip_reason(weight: ir.Value, users: set[ir.Node]) -> str | None:
    """Why `weight` may not be rewritten for `users`, None if it may."""
    reason = tensor_reason(weight)
    if reason is not None:
        return f"weight {reason}"
    for user, index in weight.uses():
        if user not in users or index != 1:
            return f"weight {weight.name} is also read by {user.name or user.op_type}"
    return None


def tensor_reason(value: ir.Value | None) -> str | None:
    """Why `value` cannot be sliced as a constant, None if it can."""
    if value is None:
        return "missing input"
    if value.const_value is None or not value.is_initializer():
        return f"{value.name} is not a constant initializer"
    if value.is_graph_input():
        return f"{value.name} is a graph input"
    if value.is_graph_output():
        return f"{value.name} is a graph output"
    if const_array(value) is None:
        return f"{value.name} cannot be read"
    return None


def weight_users(graph: ir.Graph, op_types: Sequence[str]) -> dict[ir.Value, list[ir.Node]]:
    """Each constant weight of the given ops -> the nodes that read it as their weight."""
    users: dict[ir.Value, list[ir.Node]] = {}
    for node in graph:
        weight = weight_input(node, op_types)
        if weight is not None:
            users.setdefault(weight, []).append(node)
    return users


def zero_fraction(array: np.ndarray | None) -> float:
    if array is None or array.size == 0:
        return 0.0
    return float(np.count_nonzero(array == 0)) / array.size


def weight_record(
    label: str,
    node: ir.Node,
    weight: ir.Value,
    array: np.ndarray | None,
    reason: str | None,
    **extra: object,
) -> dict:
    """One report record of a pruning pass: node (its label), op_type, weight, shape, then
    `extra`, sparsity (fraction of zeros in `array`) and skipped (the reason, or None)."""
    return {
        "node": label,
        "op_type": node.op_type,
        "weight": weight.name,
        "shape": list(array.shape) if array is not None else None,
        **extra,
        "sparsity": zero_fraction(array),
        "skipped": reason,
    }
