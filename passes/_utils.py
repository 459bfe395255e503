"""Small IR helpers shared by the passes: node counts, constants, fresh names."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

ONNX_DOMAINS = ("", "ai.onnx")

# The float element types whose weights and activations the passes fold and fuse.
FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
)


def count_nodes(model: ir.Model) -> int:
    """Number of nodes in the main graph and all its subgraphs (functions excluded)."""
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


def is_onnx_op(node: ir.Node, op_type: str) -> bool:
    return node.op_type == op_type and node.domain in ONNX_DOMAINS


def onnx_opset(model: ir.Model) -> int | None:
    """The model's default-domain opset version, None if it imports none."""
    for domain in ONNX_DOMAINS:
        if domain in model.opset_imports:
            return model.opset_imports[domain]
    return None


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The numpy value of a constant (initializer or folded constant), else None."""
    if value is None or value.const_value is None:
        return None
    try:
        return value.const_value.numpy()
    except Exception:  # external data that cannot be read, string tensors, ...
        return None


def private_initializer(value: ir.Value | None, allowed_users: set[ir.Node]) -> bool:
    """True if `value` is a constant initializer that only `allowed_users` read.

    Fusions overwrite weights under their old name, so a weight that another node also
    reads, or that the user can feed as an input, must be left alone.
    """
    if value is None or value.const_value is None or not value.is_initializer():
        return False
    if value.is_graph_input() or value.is_graph_output():
        return False
    return all(user in allowed_users for user, _ in value.uses())


# IR version 4 (onnx 1.4) is the first that lets an initializer exist without being
# listed as a graph input: onnx.checker rejects such an initializer below it.
MIN_IR_VERSION_FOR_PRIVATE_INITIALIZERS = 4


def allow_private_initializers(model: ir.Model) -> bool:
    """Bump an IR < 4 model to IR 4 if any graph holds an initializer that is no input.

    A pass that registers a new initializer (folded or lifted constants, merged shapes)
    must call this: an IR 3 model may only have initializers that are also graph inputs.
    Returns whether the version changed.
    """
    if (model.ir_version or 0) >= MIN_IR_VERSION_FOR_PRIVATE_INITIALIZERS:
        return False
    if not any(
        not value.is_graph_input()
        for graph in model.graphs()
        for value in graph.initializers.values()
    ):
        return False
    logger.info(
        "IR version %s -> %s: the model has initializers that are not graph inputs",
        model.ir_version,
        MIN_IR_VERSION_FOR_PRIVATE_INITIALIZERS,
    )
    model.ir_version = MIN_IR_VERSION_FOR_PRIVATE_INITIALIZERS
    return True


def fresh_name(graph: ir.Graph, base: str) -> str:
    """A value name not yet used by an initializer, input or node output of `graph`."""
    taken = set(graph.initializers)
    taken.update(v.name for v in graph.inputs if v.name)
    taken.update(v.name for node in graph for v in node.outputs if v.name)
    if base not in taken:
        return base
    i = 1
    while f"{base}_{i}" in taken:
        i += 1
    return f"{base}_{i}"


class FreshNames:
    """Fresh value and node names for one graph and its subgraphs, each handed out once."""

    def __init__(self, graph: ir.Graph):
        self.taken: set[str] = set(graph.initializers)
        self.taken.update(v.name for v in graph.inputs if v.name)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self.taken.update(v.name for v in node.outputs if v.name)
            if node.name:
                self.taken.add(node.name)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


def per_channel(array: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """`array` as a (channels,) vector if it broadcasts along axis 1 of a rank-`rank` tensor.

    Returns None if broadcasting `array` would touch any other axis, or would grow the
    other operand: then the op is not a per-channel scale/shift and cannot be folded.
    """
    if array.ndim > rank or rank < 2:
        return None
    shape = (1,) * (rank - array.ndim) + tuple(array.shape)
    if any(d != 1 for i, d in enumerate(shape) if i != 1):
        return None
    if shape[1] not in (1, channels):
        return None
    return np.broadcast_to(array.reshape(-1), (channels,)).copy()
