"""Channel groups: the output channels that must be pruned together, and every tensor that
reads them, found by following each Conv/Gemm/MatMul's channels through the graph.

Anything the analysis does not know freezes a group (see ``ChannelGroup``); ``_Analysis.apply``
slices every weight, bias, normalization parameter and per-channel constant of the groups
it is given the kept channels of, and updates value shapes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from lepton_compile.passes._utils import FLOAT_TYPES, ONNX_DOMAINS, const_array
from lepton_compile.passes.prune.weights import (
    ModelLike,
    infer_shapes,
    node_labels,
    set_initializer,
    tensor_reason,
    to_ir,
)

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


class _Analysis:
    """Channel groups of a model's main graph (shapes must have been inferred)."""

    def __init__(self, model: ir.Model) -> None:
        self.graph = model.graph
        self.labels = node_labels(self.graph)
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
        reason = tensor_reason(value)
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
        if weight is None or weight_value is None or weight_value.dtype not in FLOAT_TYPES:
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
                set_initializer(node, index, array)
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


def analyse(model: ModelLike) -> tuple[ir.Model, _Analysis]:
    copy = to_ir(model)
    infer_shapes(copy)
    return copy, _Analysis(copy)


def channel_groups(model: ModelLike) -> list[ChannelGroup]:
    """The channel groups of `model` (not modified), in the order of their first producer."""
    return [group for _, group in analyse(model)[1].groups()]
