"""Pruning on ONNX graphs: unstructured magnitude, 2:4 semi-structured, structured channels.

All three work on the float initializers that feed Conv (input 1), Gemm (input 1, B) and
MatMul (a constant second input), and return a new model: the caller's model is never
modified.

- `MagnitudePrunePass` zeroes the smallest-magnitude weights, per layer or globally.
- `SemiStructured24Pass` keeps 2 of every 4 consecutive weights along the GEMM reduction
  dimension (the layout of NVIDIA's sparse tensor cores); `check_24` verifies it.
- `channel_groups` finds the sets of output channels that must be pruned together, and
  `StructuredChannelPrunePass` / `prune_channels_by_index` remove them, shrinking every
  weight, bias, BatchNormalization parameter and per-channel constant that reads them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from lepton_compile.passes._utils import ONNX_DOMAINS, const_array, fresh_name

logger = logging.getLogger(__name__)

_FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
)

ModelLike = ir.Model | onnx.ModelProto


# ---------------------------------------------------------------------------------------
# Shared helpers.


def _node_labels(graph: ir.Graph) -> dict[ir.Node, str]:
    """A stable, unique label per node: its name, else its first output's name."""
    labels: dict[ir.Node, str] = {}
    seen: dict[str, int] = {}
    for index, node in enumerate(graph):
        base = node.name or (node.outputs[0].name if node.outputs else "") or f"node_{index}"
        count = seen.get(base, 0)
        seen[base] = count + 1
        labels[node] = base if count == 0 else f"{base}#{count}"
    return labels


def _to_ir(model: ModelLike) -> ir.Model:
    """A copy of `model` as an ir.Model; tensors are shared, so never write into them."""
    if isinstance(model, onnx.ModelProto):
        return ir.serde.deserialize_model(model)
    return model.clone()


def _infer_shapes(model: ir.Model) -> None:
    try:
        common_passes.ShapeInferencePass(strict_mode=False)(model)
    except Exception as error:  # shapes stay as they were: unknown shapes freeze groups
        logger.warning("shape inference failed: %s", error)


def _set_initializer(node: ir.Node, index: int, array: np.ndarray) -> None:
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


def _weight_input(node: ir.Node, op_types: Iterable[str]) -> ir.Value | None:
    """The float constant weight (input 1) of a Conv/ConvTranspose/Gemm/MatMul node."""
    if node.domain not in ONNX_DOMAINS or node.op_type not in op_types or len(node.inputs) < 2:
        return None
    weight = node.inputs[1]
    if weight is None or weight.const_value is None or not weight.is_initializer():
        return None
    if weight.dtype not in _FLOAT_TYPES:
        return None
    return weight


def _excluded(
    nodes: Iterable[ir.Node], labels: Mapping[ir.Node, str], patterns: Sequence[str]
) -> bool:
    """True if any of `nodes` has a name or label that matches one of the fnmatch `patterns`."""
    return any(
        fnmatch.fnmatchcase(name, pattern)
        for node in nodes
        for name in {node.name or "", labels[node]}
        for pattern in patterns
    )


def _weight_skip_reason(weight: ir.Value, users: set[ir.Node]) -> str | None:
    """Why `weight` may not be rewritten for `users`, None if it may."""
    if weight.is_graph_input():
        return f"weight {weight.name} is a graph input"
    if weight.is_graph_output():
        return f"weight {weight.name} is a graph output"
    if const_array(weight) is None:
        return f"weight {weight.name} cannot be read"
    for user, index in weight.uses():
        if user not in users or index != 1:
            return f"weight {weight.name} is also read by {user.name or user.op_type}"
    return None


# ---------------------------------------------------------------------------------------
# Unstructured magnitude pruning.


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
        labels = _node_labels(model.graph)
        users = _weight_users(model.graph, self.op_types)
        records: dict[ir.Node, dict] = {}
        selected: dict[ir.Value, np.ndarray] = {}
        for weight, nodes in users.items():
            array = const_array(weight)
            reason = _weight_skip_reason(weight, set(nodes))
            if reason is None and _excluded(nodes, labels, self.nodes_to_exclude):
                reason = "excluded"
            if reason is None and array is not None and array.size < self.min_params:
                reason = f"{array.size} parameters < min_params={self.min_params}"
            for node in nodes:
                records[node] = {
                    "node": labels[node],
                    "op_type": node.op_type,
                    "weight": weight.name,
                    "shape": list(array.shape) if array is not None else None,
                    "params": int(array.size) if array is not None else 0,
                    "sparsity": _zero_fraction(array),
                    "skipped": reason,
                }
            if reason is None and array is not None:
                selected[weight] = array
        pruned = self._prune(selected)
        for weight, array in pruned.items():
            # Only pruned nodes read it (_weight_skip_reason): rewrite it in place.
            weight.const_value = ir.tensor(array, name=weight.name)
            for user in users[weight]:
                records[user]["sparsity"] = _zero_fraction(array)
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


def _weight_users(graph: ir.Graph, op_types: Sequence[str]) -> dict[ir.Value, list[ir.Node]]:
    """Each constant weight of the given ops -> the nodes that read it as their weight."""
    users: dict[ir.Value, list[ir.Node]] = {}
    for node in graph:
        weight = _weight_input(node, op_types)
        if weight is not None:
            users.setdefault(weight, []).append(node)
    return users


def _count(fraction: float, size: int) -> int:
    return min(size, math.floor(fraction * size + 0.5))


def _zero_fraction(array: np.ndarray | None) -> float:
    if array is None or array.size == 0:
        return 0.0
    return float(np.count_nonzero(array == 0)) / array.size


def _zero_smallest(array: np.ndarray, k: int) -> np.ndarray:
    """A copy of `array` with its k smallest-magnitude entries set to zero."""
    out = array.copy().reshape(-1)
    if k > 0:
        magnitude = np.abs(out.astype(np.float32))
        out[np.argpartition(magnitude, k - 1)[:k]] = 0
    return out.reshape(array.shape)


# ---------------------------------------------------------------------------------------
# 2:4 semi-structured sparsity.


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
        labels = _node_labels(model.graph)
        users = _weight_users(model.graph, ("Conv", "Gemm", "MatMul"))
        records: dict[ir.Node, dict] = {}
        modified = False
        for weight, nodes in users.items():
            array = const_array(weight)
            reason = _weight_skip_reason(weight, set(nodes))
            axes = {reduction_axis(n, array) for n in nodes} if array is not None else {None}
            axis = next(iter(axes)) if len(axes) == 1 else None
            if reason is None and _excluded(nodes, labels, self.nodes_to_exclude):
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
                records[node] = {
                    "node": labels[node],
                    "op_type": node.op_type,
                    "weight": weight.name,
                    "shape": list(array.shape) if array is not None else None,
                    "axis": axis,
                    "sparsity": _zero_fraction(array),
                    "skipped": reason,
                }
        self.report = [records[n] for n in model.graph if n in records]
        return ir.passes.PassResult(model, modified=modified)


# ---------------------------------------------------------------------------------------
# Structured channel pruning: dependency analysis.

# Elementwise ops of one tensor input (input 0): channel c of the output depends only on
# channel c of the input.
_UNARY = frozenset(
    {
        "Abs", "Cast", "Ceil", "Celu", "Clip", "Cos", "Dropout", "Elu", "Erf", "Exp",
        "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity", "IsInf", "IsNaN",
        "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round", "Selu",
        "Sigmoid", "Sign", "Sin", "Softplus", "Softsign", "Sqrt", "Swish", "Tan", "Tanh",
        "ThresholdedRelu",
    }
)  # fmt: skip
# Elementwise ops with multidirectional broadcasting (PRelu: unidirectional).
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Sum", "Max", "Min", "Mean", "Pow", "PRelu"})
_POOLS = frozenset(
    {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
)
# Per-channel normalizations: op -> inputs that are (C,) parameters.
_NORMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}

Segment = tuple[int | None, int]  # (leaf group, channels); None: channels never pruned


@dataclasses.dataclass(frozen=True)
class _Track:
    """How a tensor's channel axis is made of groups' channels."""

    axis: int
    rank: int
    segments: tuple[Segment, ...]
    inner: int = 1  # each channel spans `inner` consecutive entries (Flatten of C x H x W)

    @property
    def channels(self) -> int:
        return sum(length for _, length in self.segments)

    def leaves(self) -> list[int]:
        return [leaf for leaf, _ in self.segments if leaf is not None]


@dataclasses.dataclass(frozen=True)
class _Slice:
    """Slice input `index` of `node` along `axis` by the kept channels of `segments`."""

    node: ir.Node
    index: int
    axis: int
    segments: tuple[Segment, ...]
    inner: int = 1


@dataclasses.dataclass
class _Leaf:
    producer: ir.Node
    channels: int
    weight_axis: int  # output-channel axis of the producer's weight (input 1)
    producers: list[str] = dataclasses.field(default_factory=list)
    consumers: list[str] = dataclasses.field(default_factory=list)
    members: list[str] = dataclasses.field(default_factory=list)
    reason: str | None = None


@dataclasses.dataclass
class ChannelGroup:
    """Producer output channels that are pruned together, and the nodes they touch.

    `id` is the label (name, else first output name) of the first producer in graph
    order; `producers` make the channels (Conv with group=1, Gemm, MatMul), `consumers`
    read them and get their input dimension sliced (Conv, Gemm, MatMul), `members` pass
    them through (BatchNormalization, activations, per-channel constants, pools,
    depthwise Conv, Concat, Flatten). A group that is not `prunable` says why in `reason`.

    Anything the analysis does not know freezes a group: other ops (Reshape, Transpose,
    Split, Shape, LRN, Softmax, ...), graph outputs, grouped Conv with 1 < group < C,
    concatenation or broadcasting that touches another axis, values of unknown shape,
    and weights that are graph inputs (IR < 4 models: run remove-initializer-inputs).
    """

    id: str
    channels: int
    producers: list[str]
    consumers: list[str]
    members: list[str]
    prunable: bool
    reason: str | None = None


def _dim(shape: ir.Shape | None, index: int) -> int | None:
    if shape is None or not 0 <= index < len(shape):
        return None
    dim = shape[index]
    return dim if isinstance(dim, int) else None


def _tensor_reason(value: ir.Value | None) -> str | None:
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


class _Analysis:
    """Channel groups of a model's main graph (shapes must have been inferred)."""

    def __init__(self, model: ir.Model) -> None:
        self.graph = model.graph
        self.labels = _node_labels(self.graph)
        self.tracks: dict[ir.Value, _Track] = {}
        self.leaves: list[_Leaf] = []
        self.parent: list[int] = []
        self.slices: list[_Slice] = []
        self.group_attrs: list[tuple[ir.Node, _Track]] = []
        for node in self.graph:
            self._visit(node)
        for value in self.graph.outputs:
            if value in self.tracks:
                self._freeze(self.tracks[value], f"{value.name} is a graph output")
        for value, track in self.tracks.items():
            for user, _ in value.uses():
                if user.graph is not self.graph:
                    self._freeze(track, f"{value.name} is read inside a subgraph")
            shape = value.shape
            if shape is None or len(shape) != track.rank:
                self._freeze(track, f"shape of {value.name} is unknown")
            elif _dim(shape, track.axis) != track.channels * track.inner:
                self._freeze(track, f"{value.name} has shape {shape}, expected channels")

    # -- union-find over leaves

    def find(self, leaf: int) -> int:
        while self.parent[leaf] != leaf:
            self.parent[leaf] = self.parent[self.parent[leaf]]
            leaf = self.parent[leaf]
        return leaf

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def _freeze(self, track: _Track | Iterable[int], reason: str) -> None:
        leaves = track.leaves() if isinstance(track, _Track) else track
        for leaf in leaves:
            if self.leaves[leaf].reason is None:
                self.leaves[leaf].reason = reason

    def _note(self, track: _Track, role: str, node: ir.Node) -> None:
        for leaf in track.leaves():
            names = getattr(self.leaves[leaf], role)
            if self.labels[node] not in names:
                names.append(self.labels[node])

    def _slice(self, node: ir.Node, index: int, axis: int, track: _Track) -> bool:
        """Plan slicing input `index` of `node`; freezes `track` and returns False if it cannot."""
        value = node.inputs[index] if index < len(node.inputs) else None
        reason = _tensor_reason(value)
        if reason is None:
            array = const_array(value)
            assert array is not None
            if array.ndim <= axis or array.shape[axis] != track.channels * track.inner:
                reason = f"{value.name} has shape {array.shape}"  # type: ignore[union-attr]
        if reason is not None:
            self._freeze(track, f"{self.labels[node]}: {reason}")
            return False
        self.slices.append(_Slice(node, index, axis, track.segments, track.inner))
        return True

    # -- nodes

    def _visit(self, node: ir.Node) -> None:
        tracked = {
            i: self.tracks[v]
            for i, v in enumerate(node.inputs)
            if v is not None and v in self.tracks
        }
        op = node.op_type if node.domain in ONNX_DOMAINS else f"{node.domain}::{node.op_type}"
        if tracked:
            out = self._consume(node, op, tracked)
            if out is not None:
                self.tracks[node.outputs[0]] = out
        self._produce(node, op)

    def _extra_outputs_used(self, node: ir.Node) -> bool:
        return any(o.uses() or o.is_graph_output() for o in node.outputs[1:])

    def _consume(self, node: ir.Node, op: str, tracked: dict[int, _Track]) -> _Track | None:
        """Handle a node that reads tracked channels; its output's track, if it has one."""
        label = self.labels[node]
        if op in _ELEMENTWISE:
            return self._elementwise(node, tracked)
        if op == "Concat":
            return self._concat(node, tracked)
        if set(tracked) != {0}:
            for track in tracked.values():
                self._freeze(track, f"{op} {label} reads channels as a parameter")
            return None
        track = tracked[0]
        if self._extra_outputs_used(node):
            self._freeze(track, f"{op} {label} has extra outputs in use")
            return None
        if op in _UNARY:
            self._note(track, "members", node)
            return track
        if op in _NORMS or op in _POOLS:
            if track.axis != 1 or track.inner != 1 or track.rank < (3 if op in _POOLS else 2):
                self._freeze(track, f"{op} {label} does not act on the channel axis")
                return None
            if op in _NORMS and not all(self._slice(node, i, 0, track) for i in _NORMS[op]):
                return None
            self._note(track, "members", node)
            return track
        if op == "Flatten":
            return self._flatten(node, track)
        if op == "Conv":
            return self._conv(node, track)
        if op == "ConvTranspose":
            if node.attributes.get_int("group", 1) == 1 and track.axis == 1 and track.inner == 1:
                self._note(track, "consumers", node)
                self._slice(node, 1, 0, track)
            else:
                self._freeze(track, f"grouped ConvTranspose {label}")
            return None
        if op == "Gemm":
            if node.attributes.get_int("transA", 0) or track.rank != 2 or track.axis != 1:
                self._freeze(track, f"Gemm {label} does not reduce over the channels")
                return None
            k_axis = 1 if node.attributes.get_int("transB", 0) else 0
            self._note(track, "consumers", node)
            self._slice(node, 1, k_axis, track)
            return None
        if op == "MatMul":
            weight = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
            if track.axis != track.rank - 1 or weight is None or weight.ndim != 2:
                self._freeze(track, f"MatMul {label} does not reduce over the channels")
                return None
            self._note(track, "consumers", node)
            self._slice(node, 1, 0, track)
            return None
        self._freeze(track, f"{op} {label} is not channel-wise")
        return None

    def _flatten(self, node: ir.Node, track: _Track) -> _Track | None:
        axis = node.attributes.get_int("axis", 1)
        axis = axis + track.rank if axis < 0 else axis
        shape = node.inputs[0].shape if node.inputs[0] is not None else None
        if axis != 1 or track.axis != 1 or shape is None or len(shape) != track.rank:
            self._freeze(track, f"Flatten {self.labels[node]} moves the channel axis")
            return None
        inner = track.inner
        for d in range(2, track.rank):
            dim = _dim(shape, d)
            if dim is None:
                self._freeze(track, f"Flatten {self.labels[node]} of unknown spatial size")
                return None
            inner *= dim
        self._note(track, "members", node)
        return _Track(1, 2, track.segments, inner)

    def _conv(self, node: ir.Node, track: _Track) -> _Track | None:
        label = self.labels[node]
        if track.axis != 1 or track.inner != 1:
            self._freeze(track, f"Conv {label} does not read the channel axis")
            return None
        weight = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
        group = node.attributes.get_int("group", 1)
        if group == 1:
            self._note(track, "consumers", node)
            self._slice(node, 1, 1, track)
            return None
        depthwise = (
            group == track.channels
            and weight is not None
            and weight.shape[0] == group
            and weight.shape[1] == 1
        )
        if not depthwise:
            self._freeze(track, f"grouped Conv {label} (group={group}) is not depthwise")
            return None
        planned = self._slice(node, 1, 0, track)
        if planned and len(node.inputs) > 2 and node.inputs[2] is not None:
            planned = self._slice(node, 2, 0, track)
        if not planned:
            return None
        self.group_attrs.append((node, track))
        self._note(track, "members", node)
        return track

    def _elementwise(self, node: ir.Node, tracked: dict[int, _Track]) -> _Track | None:
        label = self.labels[node]
        first = next(iter(tracked.values()))
        out_shape = node.outputs[0].shape
        problem = None
        if out_shape is None or len(out_shape) != first.rank:
            problem = f"{node.op_type} {label} changes the rank or has an unknown shape"
        for track in tracked.values():
            if (track.axis, track.rank, track.inner) != (first.axis, first.rank, first.inner) or [
                n for _, n in track.segments
            ] != [n for _, n in first.segments]:
                problem = f"{node.op_type} {label} mixes different channel layouts"
        planned: list[tuple[int, int]] = []
        for i, value in enumerate(node.inputs):
            if i in tracked or value is None or problem is not None:
                continue
            shape = value.shape
            if shape is None or len(shape) > first.rank:
                problem = f"{node.op_type} {label}: {value.name} has an unknown or larger shape"
                break
            pos = first.axis - (first.rank - len(shape))
            if pos < 0 or _dim(shape, pos) == 1:
                continue  # broadcast along the channels
            if _dim(shape, pos) == first.channels and first.inner == 1:
                if value.const_value is not None:
                    planned.append((i, pos))
                    continue
            problem = f"{node.op_type} {label}: {value.name} is not a per-channel constant"
        if problem is not None:
            for track in tracked.values():
                self._freeze(track, problem)
            return None
        for i, pos in planned:
            if not self._slice(node, i, pos, first):
                return None
        for track in tracked.values():
            for (a, _), (b, _) in zip(first.segments, track.segments, strict=True):
                if a is not None and b is not None:
                    self._union(a, b)
                elif a is not None or b is not None:
                    self._freeze(
                        [x for x in (a, b) if x is not None], f"{label} adds fixed channels"
                    )
            self._note(track, "members", node)
        return first

    def _concat(self, node: ir.Node, tracked: dict[int, _Track]) -> _Track | None:
        first = next(iter(tracked.values()))
        axis = node.attributes.get_int("axis", 1)
        axis = axis + first.rank if axis < 0 else axis
        segments: list[Segment] = []
        problem = None
        if axis != first.axis:
            problem = f"Concat {self.labels[node]} is not along the channel axis"
        for i, value in enumerate(node.inputs):
            if problem is not None:
                break
            track = tracked.get(i)
            if track is not None:
                if (track.axis, track.rank, track.inner) != (first.axis, first.rank, 1):
                    problem = f"Concat {self.labels[node]} mixes channel layouts"
                segments.extend(track.segments)
                continue
            size = _dim(value.shape, axis) if value is not None else None
            if size is None or value is None or len(value.shape or ()) != first.rank:
                problem = f"Concat {self.labels[node]}: input of unknown shape"
                break
            segments.append((None, size))
        if problem is not None:
            for track in tracked.values():
                self._freeze(track, problem)
            return None
        out = _Track(first.axis, first.rank, tuple(segments))
        self._note(out, "members", node)
        return out

    def _produce(self, node: ir.Node, op: str) -> None:
        """Start a group at a Conv (group=1), Gemm or MatMul with a constant weight."""
        if op not in ("Conv", "Gemm", "MatMul") or len(node.inputs) < 2 or len(node.outputs) != 1:
            return
        weight_value = node.inputs[1]
        weight = const_array(weight_value)
        if weight is None or weight_value is None or weight_value.dtype not in _FLOAT_TYPES:
            return
        out = node.outputs[0]
        bias_index = None
        if op == "Conv":
            if node.attributes.get_int("group", 1) != 1 or weight.ndim < 3:
                return
            weight_axis, rank, axis = 0, weight.ndim, 1
            bias_index = 2
        elif op == "Gemm":
            if weight.ndim != 2:
                return
            weight_axis, rank, axis = (0 if node.attributes.get_int("transB", 0) else 1), 2, 1
            bias_index = 2
        else:
            a = node.inputs[0]
            rank_a = len(a.shape) if a is not None and a.shape is not None else None
            if weight.ndim != 2 or rank_a is None or rank_a < 2:
                return
            weight_axis, rank, axis = 1, rank_a, rank_a - 1
        channels = int(weight.shape[weight_axis])
        leaf = len(self.leaves)
        self.leaves.append(_Leaf(node, channels, weight_axis, producers=[self.labels[node]]))
        self.parent.append(leaf)
        track = _Track(axis, rank, ((leaf, channels),))
        self.tracks[out] = track
        self._slice(node, 1, weight_axis, track)
        bias = node.inputs[bias_index] if bias_index is not None and len(node.inputs) > 2 else None
        if bias is not None:
            shape = bias.shape
            if op == "Conv":
                self._slice(node, 2, 0, track)
            elif shape is None:
                self._freeze(track, f"Gemm {self.labels[node]}: bias of unknown shape")
            elif len(shape) > 0 and _dim(shape, len(shape) - 1) != 1:
                self._slice(node, 2, len(shape) - 1, track)

    # -- results

    def groups(self) -> list[tuple[int, ChannelGroup]]:
        """(root leaf, group) per group, in the order of their first producer."""
        by_root: dict[int, list[int]] = {}
        for leaf in range(len(self.leaves)):
            by_root.setdefault(self.find(leaf), []).append(leaf)
        groups = []
        for root, members in sorted(by_root.items()):
            leaves = [self.leaves[i] for i in members]
            reason = next((leaf.reason for leaf in leaves if leaf.reason), None)
            if reason is None and len({leaf.channels for leaf in leaves}) > 1:
                reason = "producers disagree on the number of channels"
            groups.append(
                (
                    root,
                    ChannelGroup(
                        id=self.labels[self.leaves[root].producer],
                        channels=self.leaves[root].channels,
                        producers=_merged(leaf.producers for leaf in leaves),
                        consumers=_merged(leaf.consumers for leaf in leaves),
                        members=_merged(leaf.members for leaf in leaves),
                        prunable=reason is None,
                        reason=reason,
                    ),
                )
            )
        return groups

    def scores(self, root: int, criterion: str) -> np.ndarray:
        """Per-channel norm of the group's producer weights, summed over the producers."""
        total = np.zeros(self.leaves[root].channels, dtype=np.float64)
        for i, leaf in enumerate(self.leaves):
            if self.find(i) != root:
                continue
            weight = const_array(leaf.producer.inputs[1])
            assert weight is not None
            moved = np.moveaxis(weight.astype(np.float64), leaf.weight_axis, 0)
            flat = moved.reshape(moved.shape[0], -1)
            if criterion == "l1":
                total += np.abs(flat).sum(axis=1)
            else:
                total += np.sqrt((flat * flat).sum(axis=1))
        return total

    def index_map(
        self, segments: tuple[Segment, ...], inner: int, kept: Mapping[int, np.ndarray]
    ) -> np.ndarray:
        """Kept entries of an axis made of `segments`, given the kept channels per root."""
        parts, offset = [], 0
        for leaf, length in segments:
            root = self.find(leaf) if leaf is not None else -1
            channels = kept[root] if root in kept else np.arange(length)
            parts.append(offset + np.asarray(channels, dtype=np.int64))
            offset += length
        channels = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return (channels[:, None] * inner + np.arange(inner)[None, :]).reshape(-1)

    def apply(self, kept: Mapping[int, np.ndarray]) -> dict[int, tuple[int, int]]:
        """Slice by the kept channels of each root; (params before, after) per pruned root.

        A root's parameter counts cover the tensors it slices, each sliced by that root
        alone (other axes at full size).
        """
        params = {root: [0, 0] for root in kept}
        planned: dict[tuple[ir.Node, int], list[_Slice]] = {}
        for item in self.slices:
            planned.setdefault((item.node, item.index), []).append(item)
        for (node, index), items in planned.items():
            original = const_array(node.inputs[index])
            assert original is not None
            array = original
            for item in items:
                full = original.shape[item.axis]
                for root in {self.find(leaf) for leaf in _leaves(item.segments)} & set(kept):
                    alone = self.index_map(item.segments, item.inner, {root: kept[root]})
                    params[root][0] += original.size
                    params[root][1] += original.size // full * len(alone)
                indices = self.index_map(item.segments, item.inner, kept)
                if len(indices) != full:
                    array = np.take(array, indices, axis=item.axis)
            if array is not original:
                _set_initializer(node, index, array)
        for node, track in self.group_attrs:
            channels = len(self.index_map(track.segments, 1, kept))
            node.attributes["group"] = ir.AttrInt64("group", channels)
        for value, track in self.tracks.items():
            size = len(self.index_map(track.segments, track.inner, kept))
            shape = value.shape
            if shape is not None and len(shape) == track.rank and _dim(shape, track.axis) != size:
                dims = list(shape)
                dims[track.axis] = size
                value.shape = ir.Shape(dims)
        return {root: (before, after) for root, (before, after) in params.items()}


def _leaves(segments: Iterable[Segment]) -> list[int]:
    return [leaf for leaf, _ in segments if leaf is not None]


def _merged(lists: Iterable[list[str]]) -> list[str]:
    out: list[str] = []
    for names in lists:
        out.extend(n for n in names if n not in out)
    return out


def _analyse(model: ModelLike) -> tuple[ir.Model, _Analysis]:
    copy = _to_ir(model)
    _infer_shapes(copy)
    return copy, _Analysis(copy)


def channel_groups(model: ModelLike) -> list[ChannelGroup]:
    """The channel groups of `model` (not modified), in the order of their first producer."""
    return [group for _, group in _analyse(model)[1].groups()]


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
        copy, analysis = _analyse(model)
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
    copy, analysis = _analyse(model)
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
