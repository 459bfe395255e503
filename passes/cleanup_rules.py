"""Cleanup rewrite rules: no-op ops -> Identity; chains of shape ops -> one op.

Pattern / check / rewrite rules on onnxscript's rewriter, for what its standard rules
(`onnxscript.rewriter.rules.common`) lack or get wrong: they know neither opset < 13
Squeeze/Unsqueeze (axes as attributes) nor Squeeze chains, merge only single-axis
non-negative Unsqueeze pairs, cancel only inverse Transpose pairs with explicit perms,
allow two Cast pairs, name new initializers after the output (which collides when a
chain is merged twice), and take constants within 1e-8 of 0 (1e-5 of 1) for x+0 (x*1).
Every check says why a match is rejected.

Rules that emit an op of an opset-dependent form (axes as input or attribute) take the
model's default-domain opset in their constructor: build them per run
(`simplify_rules(opset)`, `folding_rules(opset)`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RewriteRule

from lepton_compile.passes.rules import Rule, producer

INT64_MAX = 2**63 - 1
# Shapes and slice bounds are int64; wider results are clamped (Slice clamps them too).
_INT64_MIN = -(2**63)

# (from, to) pairs where every value of `from` is exactly representable in `to`.
_D = ir.DataType
_EXACT_INTO: dict[ir.DataType, frozenset[ir.DataType]] = {
    _D.BOOL: frozenset(
        {
            _D.INT8,
            _D.UINT8,
            _D.INT16,
            _D.UINT16,
            _D.INT32,
            _D.UINT32,
            _D.INT64,
            _D.UINT64,
            _D.FLOAT16,
            _D.BFLOAT16,
            _D.FLOAT,
            _D.DOUBLE,
        }
    ),
    # |x| <= 256 fits the 8-bit significand of bfloat16 and the 11-bit one of float16.
    _D.INT8: frozenset(
        {_D.INT16, _D.INT32, _D.INT64, _D.FLOAT16, _D.BFLOAT16, _D.FLOAT, _D.DOUBLE}
    ),
    _D.UINT8: frozenset(
        {
            _D.UINT16,
            _D.UINT32,
            _D.UINT64,
            _D.INT16,
            _D.INT32,
            _D.INT64,
            _D.FLOAT16,
            _D.BFLOAT16,
            _D.FLOAT,
            _D.DOUBLE,
        }
    ),
    _D.INT16: frozenset({_D.INT32, _D.INT64, _D.FLOAT, _D.DOUBLE}),
    _D.UINT16: frozenset({_D.UINT32, _D.UINT64, _D.INT32, _D.INT64, _D.FLOAT, _D.DOUBLE}),
    _D.INT32: frozenset({_D.INT64, _D.DOUBLE}),
    _D.UINT32: frozenset({_D.UINT64, _D.INT64, _D.DOUBLE}),
    _D.FLOAT16: frozenset({_D.FLOAT, _D.DOUBLE}),
    _D.BFLOAT16: frozenset({_D.FLOAT, _D.DOUBLE}),
    _D.FLOAT: frozenset({_D.DOUBLE}),
}
# Types whose values are (finite-precision) real numbers: a Cast between them depends
# only on the value. String formatting and float8 saturation do not.
_REAL_TYPES = frozenset(_EXACT_INTO) | {_D.INT64, _D.UINT64, _D.DOUBLE}
# Rounding to float first, then to a 16-bit float, rounds like rounding once: double
# rounding is innocuous when the wider precision p' >= 2p + 2 (24 >= 2*11 + 2).
_INNOCUOUS_DOUBLE_ROUNDING = frozenset({(_D.FLOAT, _D.FLOAT16), (_D.FLOAT, _D.BFLOAT16)})


# --- helpers -------------------------------------------------------------------------


def const_ints(value: ir.Value | None) -> list[int] | None:
    """A constant scalar or 1-D integer tensor as a list; None if not a true constant.

    A graph input with an initializer is a default the caller may override: not constant.
    """
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    try:
        array = value.const_value.numpy()
    except Exception:  # external data not at hand, string tensors, ...
        return None
    if array.ndim > 1 or not np.issubdtype(array.dtype, np.integer):
        return None
    return [int(v) for v in array.reshape(-1)]


def _const_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None or value.is_graph_input():
        return None
    try:
        return value.const_value.numpy()
    except Exception:
        return None


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _dims(value: ir.Value) -> list[int | None] | None:
    """Dims of `value`: ints where static, None where symbolic or unknown."""
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _static_dims(value: ir.Value) -> list[int] | None:
    dims = _dims(value)
    if dims is None or any(d is None for d in dims):
        return None
    return dims  # type: ignore[return-value]


def _inferred_static_dims(value: ir.Value) -> list[int] | None:
    """Static dims of an intermediate value. A graph output's shape is what the model
    declares, which exporters get wrong (ddddocr's OCR model declares (1, seqlen) for a
    (T, 1, C) output): never rewrite to it."""
    return None if value.is_graph_output() else _static_dims(value)


def _normalize_axes(axes: Sequence[int], rank: int | None) -> list[int] | None:
    """Axes as sorted non-negative ints; None if a negative axis needs an unknown rank,
    an axis is out of range, or an axis repeats."""
    out = []
    for axis in axes:
        if axis < 0:
            if rank is None:
                return None
            axis += rank
        if axis < 0 or (rank is not None and axis >= rank):
            return None
        out.append(axis)
    if len(set(out)) != len(out):
        return None
    return sorted(out)


def _position_skipping(index: int, taken: set[int]) -> int:
    """The `index`-th (0-based) position, counting up from 0, that is not in `taken`."""
    position, seen = 0, -1
    while True:
        if position not in taken:
            seen += 1
            if seen == index:
                return position
        position += 1


_ABSENT = "absent"


def _squeeze_axes(node: ir.Node) -> list[int] | str | None:
    """Axes of a Squeeze/Unsqueeze: attribute (opset < 13) or input (opset >= 13).

    Returns the list, _ABSENT when the node has none, or None when they are not constant
    or empty (an empty axes input is read as "none" by some runtimes, "all" by others).
    """
    attr = node.attributes.get("axes")
    axes: list[int] | None
    if attr is not None:
        axes = None if attr.is_ref() else [int(a) for a in attr.as_ints()]
    elif len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = const_ints(node.inputs[1])
    else:
        return _ABSENT
    return axes or None


def _int64(values: Sequence[int]) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


class _Rule(Rule):
    """A rule that knows the model's default-domain opset.

    New shape and axes tensors are initializers, not Constant nodes: constants were lifted
    before simplify runs, and fusions look for initializers.
    """

    def __init__(self, opset: int) -> None:
        # remove_nodes=False: a first op that another node also reads is still merged
        # into each of its readers (then dies unread) instead of blocking the match.
        super().__init__(name=type(self).__name__, remove_nodes=False)
        self.opset = opset

    def _axes_operand(self, op, base: str, axes: Sequence[int]):
        """(inputs, attributes) that carry Squeeze/Unsqueeze axes for this opset."""
        if self.opset >= 13:
            return [self.new_initializer(op, _int64(axes), base)], {}
        return [], {"axes": list(axes)}


# --- no-op ops -> Identity ---------------------------------------------------------


class NoOpBinary(_Rule):
    """x+0, 0+x, x-0, x*1, 1*x, x/1 -> x: the constant exactly 0 or 1 everywhere.

    Replaces onnxscript's add_0/sub_0/mul_by_1/div_by_1 rules, which match scalars
    *close to* 0 or 1 (abs_tol 1e-8, rel_tol 1e-5): they drop BERT's LayerNorm epsilon
    (x + 1e-12), turning var + eps = 0 into a division by zero. A constant tensor counts
    too, if broadcasting it does not grow x.
    """

    # op -> (neutral element, operand positions where it is neutral)
    _NEUTRAL = {"Add": (0, (0, 1)), "Sub": (0, (1,)), "Mul": (1, (0, 1)), "Div": (1, (1,))}

    def __init__(self, opset: int, op_type: str) -> None:
        super().__init__(opset)
        self.op_type = op_type
        self.name = f"NoOp{op_type}"

    def pattern(self, op, a, b):
        return getattr(op, self.op_type)(a, b)

    def why_not(self, context, a: ir.Value, b: ir.Value) -> str | None:
        neutral, positions = self._NEUTRAL[self.op_type]
        for position in positions:
            constant, x = (a, b) if position == 0 else (b, a)
            array = _const_array(constant)
            if array is None or array.size == 0 or not np.all(array == neutral):
                continue
            if array.ndim:
                dims = _dims(x)
                if dims is None or len(dims) < array.ndim:
                    return f"{array.shape} constant may broadcast x"
                for c, d in zip(reversed(array.shape), reversed(dims), strict=False):
                    if c != 1 and c != d:
                        return f"{array.shape} constant broadcasts x {dims}"
            self._x = x
            return None
        return f"no operand is exactly {neutral} in a neutral position"

    def rewrite(self, op, a: ir.Value, b: ir.Value):
        return op.Identity(self._x)


class NoOpReshape(_Rule):
    """Reshape(x, shape) -> x when `shape` resolves to x's own shape.

    `0` copies the input dim (allowzero=0) and a single `-1` is then the one dim left,
    so symbolic dims need not be known where the shape says `0` or `-1`.
    """

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _outputs=["out"])

    def why_not(self, context, x: ir.Value, shape: ir.Value, out: ir.Value) -> str | None:
        dims = _dims(x)
        if dims is None:
            return "input shape unknown"
        target = const_ints(shape)
        if target is None:
            out_dims = _inferred_static_dims(out)
            if out_dims is not None and out_dims == dims:
                return None  # inferred output shape equals the static input shape
            return "shape is not constant and the output shape is not static"
        if len(target) != len(dims):
            return f"rank changes: {len(dims)} -> {len(target)}"
        if target.count(-1) > 1:
            return "more than one -1"
        if any(d == 0 for d in dims):
            return "input has a zero-size dim: -1 would be ambiguous"
        allowzero = producer(out).attributes.get_int("allowzero", 0)
        for i, (t, d) in enumerate(zip(target, dims, strict=True)):
            if t == 0 and not allowzero:
                continue  # copies dim i
            if t == -1:
                continue  # the only dim not pinned: equal by element count
            if d is None or t != d:
                return f"dim {i}: {t} vs input {d if d is not None else '?'}"
        return None

    def rewrite(self, op, x: ir.Value, shape: ir.Value, out: ir.Value):
        return op.Identity(x)


class NoOpPad(_Rule):
    """Pad(x, pads) with all-zero pads -> x (whatever the mode and fill value)."""

    def pattern(self, op, x):
        return op.Pad(x, _allow_other_inputs=True, _outputs=["out"])

    def why_not(self, context, x: ir.Value, out: ir.Value) -> str | None:
        node = producer(out)
        pads: list[int] | None
        attr = node.attributes.get("pads") or node.attributes.get("paddings")  # opset < 11
        if attr is not None:
            pads = None if attr.is_ref() else [int(p) for p in attr.as_ints()]
        elif len(node.inputs) > 1:
            pads = const_ints(node.inputs[1])
        else:
            return "no pads"
        if pads is None:
            return "pads are not constant"
        if any(pads):
            return f"pads {pads} are not all zero"
        return None

    def rewrite(self, op, x: ir.Value, out: ir.Value):
        return op.Identity(x)


def _slice_params(node: ir.Node, rank: int | None) -> list[list[int]] | str:
    """[starts, ends, axes (non-negative), steps] of a Slice, or why they are unknown.

    Opset 10+ takes them as inputs (axes, steps optional), opset 1 as attributes.
    """
    if "starts" in node.attributes:
        attrs = node.attributes
        starts = [int(v) for v in attrs["starts"].as_ints()]
        ends = [int(v) for v in attrs["ends"].as_ints()]
        axes_attr = attrs.get("axes")
        axes = list(range(len(starts))) if axes_attr is None else list(axes_attr.as_ints())
        steps = [1] * len(starts)
    else:
        if len(node.inputs) < 3:
            return "too few inputs"
        starts_in, ends_in = const_ints(node.inputs[1]), const_ints(node.inputs[2])
        if starts_in is None or ends_in is None:
            return "starts/ends are not constant"
        starts, ends = starts_in, ends_in
        axes_v = node.inputs[3] if len(node.inputs) > 3 else None
        steps_v = node.inputs[4] if len(node.inputs) > 4 else None
        axes_c = list(range(len(starts))) if axes_v is None else const_ints(axes_v)
        steps_c = [1] * len(starts) if steps_v is None else const_ints(steps_v)
        if axes_c is None or steps_c is None:
            return "axes/steps are not constant"
        axes, steps = axes_c, steps_c
    if not len(starts) == len(ends) == len(axes) == len(steps):
        return "starts, ends, axes and steps differ in length"
    normalized = []
    for axis in axes:
        if axis < 0:
            if rank is None:
                return "negative axis and unknown rank"
            axis += rank
        normalized.append(axis)
    if len(set(normalized)) != len(normalized):
        return "repeated axes"
    if any(step == 0 for step in steps):
        return "zero step"
    return [starts, ends, normalized, steps]


class NoOpSlice(_Rule):
    """Slice(x) that keeps every element of every sliced axis -> x."""

    def pattern(self, op, x):
        return op.Slice(x, _allow_other_inputs=True, _outputs=["out"])

    def why_not(self, context, x: ir.Value, out: ir.Value) -> str | None:
        params = _slice_params(producer(out), _rank(x))
        if isinstance(params, str):
            return params
        dims = _dims(x)
        for start, end, axis, step in zip(*params, strict=True):
            dim = dims[axis] if dims is not None and axis < len(dims) else None
            if step != 1:
                return f"axis {axis}: step {step}"
            if not (start == 0 or (dim is not None and start + dim <= 0)):
                return f"axis {axis}: start {start} is not the first element"
            if not (end == INT64_MAX or (dim is not None and end >= dim)):
                return f"axis {axis}: end {end} may stop before dim {dim}"
        return None

    def rewrite(self, op, x: ir.Value, out: ir.Value):
        return op.Identity(x)


class NoOpExpand(_Rule):
    """Expand(x, shape) -> x when broadcasting x to `shape` gives x's own shape.

    onnxscript's rule asks for `shape == x.shape`; this also takes shorter shapes and 1s
    (`Expand(x[N,3], [1, 3])`, `Expand(x, [1])`), which are no-ops too.
    """

    def pattern(self, op, x, shape):
        return op.Expand(x, shape)

    def why_not(self, context, x: ir.Value, shape: ir.Value) -> str | None:
        dims = _dims(x)
        target = const_ints(shape)
        if dims is None:
            return "input shape unknown"
        if target is None:
            return "shape is not constant"
        if len(target) > len(dims):
            return "shape has a higher rank than the input"
        for t, d in zip(reversed(target), reversed(dims), strict=False):
            if t != 1 and t != d:
                return f"dim {d if d is not None else '?'} broadcast to {t}"
        return None

    def rewrite(self, op, x: ir.Value, shape: ir.Value):
        return op.Identity(x)


# --- pairs that cancel -------------------------------------------------------------


class SqueezeUnsqueezeCancel(_Rule):
    """Unsqueeze(Squeeze(x, axes), axes) -> x."""

    def pattern(self, op, x):
        inner = op.Squeeze(x, _allow_other_inputs=True, _outputs=["inner"])
        return op.Unsqueeze(inner, _allow_other_inputs=True, _outputs=["out"])

    def why_not(self, context, x: ir.Value, inner: ir.Value, out: ir.Value) -> str | None:
        squeezed = _squeeze_axes(producer(inner))
        unsqueezed = _squeeze_axes(producer(out))
        if squeezed is None or unsqueezed is None or unsqueezed == _ABSENT:
            return "axes are not constant"
        rank = _rank(x)
        if squeezed == _ABSENT:
            dims = _static_dims(x)
            if dims is None:
                return "Squeeze without axes on a non-static shape"
            squeezed = [i for i, d in enumerate(dims) if d == 1]
        assert isinstance(squeezed, list) and isinstance(unsqueezed, list)
        # Unsqueeze's axes count in its output, whose rank is x's when the counts agree.
        a = _normalize_axes(squeezed, rank)
        b = _normalize_axes(unsqueezed, rank)
        if a is None or b is None:
            return "negative axes with unknown rank, or invalid axes"
        if a != b:
            return f"Squeeze axes {a} != Unsqueeze axes {b}"
        return None

    def rewrite(self, op, x: ir.Value, inner: ir.Value, out: ir.Value):
        return op.Identity(x)


class UnsqueezeSqueezeCancel(_Rule):
    """Squeeze(Unsqueeze(x, axes), axes) -> x."""

    def pattern(self, op, x):
        inner = op.Unsqueeze(x, _allow_other_inputs=True, _outputs=["inner"])
        return op.Squeeze(inner, _allow_other_inputs=True, _outputs=["out"])

    def why_not(self, context, x: ir.Value, inner: ir.Value, out: ir.Value) -> str | None:
        unsqueezed = _squeeze_axes(producer(inner))
        squeezed = _squeeze_axes(producer(out))
        if unsqueezed is None or squeezed is None or unsqueezed == _ABSENT:
            return "axes are not constant"
        assert not isinstance(unsqueezed, str)
        rank = _rank(x)
        mid_rank = rank + len(unsqueezed) if rank is not None else None
        if squeezed == _ABSENT:
            # Squeeze drops every 1: x must have none of its own.
            dims = _static_dims(x)
            if dims is None or 1 in dims:
                return "Squeeze without axes would also drop dims of x"
            return None
        assert isinstance(squeezed, list)
        a = _normalize_axes(unsqueezed, mid_rank)
        b = _normalize_axes(squeezed, mid_rank)
        if a is None or b is None:
            if sorted(unsqueezed) == sorted(squeezed):
                return None  # same numbers in the same tensor: same axes
            return "negative axes with unknown rank, or invalid axes"
        if a != b:
            return f"Unsqueeze axes {a} != Squeeze axes {b}"
        return None

    def rewrite(self, op, x: ir.Value, inner: ir.Value, out: ir.Value):
        return op.Identity(x)


# --- pairs merged into one op ------------------------------------------------------


class MergeUnsqueeze(_Rule):
    """Unsqueeze(Unsqueeze(x, a1), a2) -> Unsqueeze(x, a) (axes input or attribute)."""

    def pattern(self, op, x):
        inner = op.Unsqueeze(x, _allow_other_inputs=True, _outputs=["inner"])
        return op.Unsqueeze(inner, _allow_other_inputs=True, _outputs=["out"])

    def why_not(self, context, x: ir.Value, inner: ir.Value, out: ir.Value) -> str | None:
        first = _squeeze_axes(producer(inner))
        second = _squeeze_axes(producer(out))
        if not isinstance(first, list) or not isinstance(second, list):
            return "axes are not constant"
        rank = _rank(x)
        mid = rank + len(first) if rank is not None else None
        a1 = _normalize_axes(first, mid)
        a2 = _normalize_axes(second, mid + len(second) if mid is not None else None)
        if a1 is None or a2 is None:
            return "negative axes with unknown rank, or invalid axes"
        # The second Unsqueeze's new axes sit at a2; the intermediate dims fill the other
        # positions in order, the first one's new axes among them.
        taken = set(a2)
        self._axes = sorted(taken | {_position_skipping(k, taken) for k in a1})
        if self.graph is None:
            return "the node is in no graph"
        return None

    def rewrite(self, op, x: ir.Value, inner: ir.Value, out: ir.Value):
        inputs, attrs = self._axes_operand(op, f"{out.name}_axes", self._axes)
        return op.Unsqueeze(x, *inputs, **attrs)


class MergeSqueeze(_Rule):
    """Squeeze(Squeeze(x, a1), a2) -> Squeeze(x, a) (axes input or attribute)."""

    def pattern(self, op, x):
        inner = op.Squeeze(x, _allow_other_inputs=True, _outputs=["inner"])
        return op.Squeeze(inner, _allow_other_inputs=True, _outputs=["out"])

    def why_not(self, context, x: ir.Value, inner: ir.Value, out: ir.Value) -> str | None:
        first = _squeeze_axes(producer(inner))
        second = _squeeze_axes(producer(out))
        if first is None or second is None:
            return "axes are not constant"
        if first == _ABSENT:
            dims = _static_dims(x)
            if dims is None:
                return "Squeeze without axes on a non-static shape"
            first = [i for i, d in enumerate(dims) if d == 1]
        if second == _ABSENT:
            dims = _static_dims(inner)
            if dims is None:
                return "Squeeze without axes on a non-static shape"
            second = [i for i, d in enumerate(dims) if d == 1]
        assert isinstance(first, list) and isinstance(second, list)
        rank = _rank(x)
        a1 = _normalize_axes(first, rank)
        a2 = _normalize_axes(second, rank - len(first) if rank is not None else None)
        if a1 is None or a2 is None:
            return "negative axes with unknown rank, or invalid axes"
        taken = set(a1)
        self._axes = sorted(taken | {_position_skipping(k, taken) for k in a2})
        if self.graph is None:
            return "the node is in no graph"
        return None

    def rewrite(self, op, x: ir.Value, inner: ir.Value, out: ir.Value):
        inputs, attrs = self._axes_operand(op, f"{out.name}_axes", self._axes)
        return op.Squeeze(x, *inputs, **attrs)


class MergeReshape(_Rule):
    """Reshape(Reshape(x, s1), s2) -> Reshape(x, s), keeping what `0` and `-1` mean.

    A `0` in s2 (allowzero=0) copies a dim of the *intermediate* tensor, not of x: it is
    replaced by that dim when s1 or shape inference pins it, kept as `0` when s1 also
    says `0` there (both copy x's dim), and turned into the single `-1` when it is the
    only unknown (the element count fixes it). Otherwise the pair is left alone:
    `Reshape(Reshape(x[2,12], [12,2]), [0,-1])` must stay (12, 2).
    """

    def pattern(self, op, x, s1, s2):
        inner = op.Reshape(x, s1, _outputs=["inner"])
        return op.Reshape(inner, s2, _outputs=["out"])

    def why_not(
        self, context, x: ir.Value, s1: ir.Value, s2: ir.Value, inner: ir.Value, out: ir.Value
    ) -> str | None:
        if self.graph is None:
            return "the node is in no graph"
        out_dims = _inferred_static_dims(out)
        if out_dims is not None and 0 not in out_dims:
            self._shape, self._allowzero = out_dims, False
            return None
        second = const_ints(s2)
        if second is None:
            return "second shape is not constant and the output is not static"
        first = const_ints(s1)
        inner_node, outer_node = producer(inner), producer(out)
        az1 = inner_node.attributes.get_int("allowzero", 0)
        az2 = outer_node.attributes.get_int("allowzero", 0)
        mid_dims = _dims(inner) or []
        shape: list[int | None] = []
        copies_x = literal_zero = False
        for i, t in enumerate(second):
            if t != 0 or az2:
                literal_zero |= t == 0
                shape.append(t)
                continue
            # `0`: dim i of the intermediate tensor.
            if first is not None and i < len(first) and first[i] > 0:
                shape.append(first[i])
            elif first is not None and i < len(first) and first[i] == 0 and not az1:
                shape.append(0)  # both copy x's dim i
                copies_x = True
            elif i < len(mid_dims) and mid_dims[i] is not None:
                shape.append(mid_dims[i])
            else:
                shape.append(None)
        unknown = shape.count(None)
        if unknown == 1 and -1 not in shape:
            shape = [-1 if s is None else s for s in shape]
        elif unknown:
            return "a `0` copies a dim of the intermediate tensor that is not known" + (
                " and the shape also has a -1" if -1 in shape else ""
            )
        if literal_zero and copies_x:
            return "mixes literal zeros (allowzero=1) with copied dims"
        if literal_zero and self.opset < 14:
            return "needs allowzero=1, which opset < 14 lacks"
        self._shape = [int(s) for s in shape]  # type: ignore[arg-type]
        self._allowzero = literal_zero
        return None

    def rewrite(self, op, x: ir.Value, s1: ir.Value, s2: ir.Value, inner: ir.Value, out: ir.Value):
        shape = self.new_initializer(op, _int64(self._shape), f"{out.name}_shape")
        if self._allowzero:
            return op.Reshape(x, shape, allowzero=1)
        return op.Reshape(x, shape)


def _moves_only_unit_dims(dims: Sequence[int | None], perm: Sequence[int]) -> bool:
    """Whether Transpose(perm) keeps the order of every dim not known to be 1.

    Such a Transpose does not reorder memory: it is a Reshape.
    """
    kept = [p for p in perm if dims[p] != 1]
    return kept == sorted(kept)


def _perm_of(node: ir.Node, rank: int) -> list[int] | None:
    attr = node.attributes.get("perm")
    if attr is None:
        return list(reversed(range(rank)))
    if attr.is_ref():
        return None
    return [int(p) for p in attr.as_ints()]


class ReshapeOfUnitTranspose(_Rule):
    """Reshape(Transpose(x), s) -> Reshape(x, s') when the Transpose moves only 1-dims.

    An LSTM's (T, 2, 1, H) output transposed to (T, 1, 2, H) and flattened is one
    Reshape. A `0` in s (allowzero=0) copies a dim of the transposed tensor: it becomes
    that dim's value, stays `0` where the Transpose keeps the axis in place, or becomes
    the single `-1`.
    """

    def pattern(self, op, x, shape):
        transposed = op.Transpose(x, _outputs=["transposed"])
        return op.Reshape(transposed, shape, _outputs=["out"])

    def why_not(
        self, context, x: ir.Value, shape: ir.Value, transposed: ir.Value, out: ir.Value
    ) -> str | None:
        dims = _dims(x)
        if dims is None:
            return "input shape unknown"
        perm = _perm_of(producer(transposed), len(dims))
        if perm is None or sorted(perm) != list(range(len(dims))):
            return "perm unknown or invalid"
        if not _moves_only_unit_dims(dims, perm):
            return f"perm {perm} reorders dims {dims}"
        target = const_ints(shape)
        if target is None:
            return "shape is not constant"
        allowzero = producer(out).attributes.get_int("allowzero", 0)
        new: list[int | None] = []
        for i, t in enumerate(target):
            if t != 0 or allowzero:
                new.append(t)
            elif i >= len(perm):
                return f"`0` at {i} beyond the input rank"
            elif dims[perm[i]] is not None:
                new.append(dims[perm[i]])
            elif perm[i] == i:
                new.append(0)
            else:
                new.append(None)
        if new.count(None) == 1 and -1 not in new:
            new = [-1 if t is None else t for t in new]
        elif None in new:
            return "a `0` copies a moved dim that is not static"
        self._shape = [int(t) for t in new]  # type: ignore[arg-type]
        self._allowzero = bool(allowzero)
        if self.graph is None:
            return "the node is in no graph"
        return None

    def rewrite(self, op, x: ir.Value, shape: ir.Value, transposed: ir.Value, out: ir.Value):
        new_shape = self.new_initializer(op, _int64(self._shape), f"{out.name}_shape")
        if self._allowzero:
            return op.Reshape(x, new_shape, allowzero=1)
        return op.Reshape(x, new_shape)


class MergeTranspose(_Rule):
    """Transpose(Transpose(x, p1), p2) -> Transpose(x, p1[p2]), or x if that is identity.

    Also when a perm is left out (the default reverses the axes), which onnxscript's
    rule does not match.
    """

    def pattern(self, op, x):
        inner = op.Transpose(x, _outputs=["inner"])
        return op.Transpose(inner, _outputs=["out"])

    def why_not(self, context, x: ir.Value, inner: ir.Value, out: ir.Value) -> str | None:
        perms = []
        for node in (producer(inner), producer(out)):
            attr = node.attributes.get("perm")
            if attr is not None and attr.is_ref():
                return "perm is a reference attribute"
            perms.append(None if attr is None else [int(p) for p in attr.as_ints()])
        p1, p2 = perms
        rank = _rank(x)
        if rank is None:
            rank = len(p1) if p1 is not None else (len(p2) if p2 is not None else None)
        if p1 is None and p2 is None:
            self._perm = None  # reverse twice
            return None
        assert rank is not None
        p1 = p1 if p1 is not None else list(reversed(range(rank)))
        p2 = p2 if p2 is not None else list(reversed(range(rank)))
        if len(p1) != len(p2):
            return "perms of different lengths"
        perm = [p1[p] for p in p2]
        self._perm = None if perm == list(range(len(perm))) else perm
        return None

    def rewrite(self, op, x: ir.Value, inner: ir.Value, out: ir.Value):
        if self._perm is None:
            return op.Identity(x)
        return op.Transpose(x, perm=self._perm)


class MergeCast(_Rule):
    """Cast(Cast(x, to=T2), to=T3) -> Cast(x, to=T3) (or x) where the first is lossless.

    float -> double -> float is x; float -> int32 -> float truncates and stays. Also the
    float -> float -> float16/bfloat16 pairs that onnxscript's rule allows (innocuous
    double rounding).
    """

    def pattern(self, op, x):
        inner = op.Cast(x, _outputs=["inner"])
        return op.Cast(inner, _outputs=["out"])

    def why_not(self, context, x: ir.Value, inner: ir.Value, out: ir.Value) -> str | None:
        t1 = x.dtype
        t2 = ir.DataType(producer(inner).attributes.get_int("to", 0))
        t3 = ir.DataType(producer(out).attributes.get_int("to", 0))
        if t1 is None:
            return "input type unknown"
        if t1 not in _REAL_TYPES or t3 not in _REAL_TYPES:
            return f"{t1.name} -> {t3.name}: not a cast between real numbers"
        exact = t2 == t1 or t2 in _EXACT_INTO.get(t1, frozenset())
        if not exact and (t2, t3) not in _INNOCUOUS_DOUBLE_ROUNDING:
            return f"{t1.name} -> {t2.name} loses information"
        self._to = None if t3 == t1 else t3
        return None

    def rewrite(self, op, x: ir.Value, inner: ir.Value, out: ir.Value):
        if self._to is None:
            return op.Identity(x)
        return op.Cast(x, to=self._to)


def _clamp64(v: int) -> int:
    return max(_INT64_MIN, min(INT64_MAX, v))


class MergeSlices(_Rule):
    """Slice(Slice(x)) -> one Slice: axes of one of them as they are, shared axes composed.

    On a shared axis with positive steps (s1:e1:k1 then s2:e2:k2), with non-negative
    bounds the result is (s1 + k1*s2) : min(e1, s1 + k1*e2) : k1*k2 whatever the dim;
    negative bounds are first resolved against the (static) dims. YOLOX's Focus layer
    slices rows then columns in two steps.
    """

    def pattern(self, op, x):
        inner = op.Slice(x, _allow_other_inputs=True, _outputs=["inner"])
        return op.Slice(inner, _allow_other_inputs=True, _outputs=["out"])

    def why_not(self, context, x: ir.Value, inner: ir.Value, out: ir.Value) -> str | None:
        rank = _rank(x)
        first = _slice_params(producer(inner), rank)
        second = _slice_params(producer(out), rank)
        if isinstance(first, str) or isinstance(second, str):
            return f"{first if isinstance(first, str) else second}"
        dims = _dims(x) or []
        mid_dims = _dims(inner) or []
        by_axis: dict[int, tuple[int, int, int]] = {}
        for start, end, axis, step in zip(*first, strict=True):
            by_axis[axis] = (start, end, step)
        for s2, e2, axis, k2 in zip(*second, strict=True):
            if axis not in by_axis:
                by_axis[axis] = (s2, e2, k2)
                continue
            s1, e1, k1 = by_axis[axis]
            if k1 < 0 or k2 < 0:
                return f"axis {axis}: negative step"
            dim = dims[axis] if axis < len(dims) else None
            if s1 < 0 or e1 < 0:
                if dim is None:
                    return f"axis {axis}: negative bound and unknown dim"
                s1, e1 = max(0, s1 + dim) if s1 < 0 else s1, max(0, e1 + dim) if e1 < 0 else e1
            if s2 < 0 or e2 < 0:
                mid = mid_dims[axis] if axis < len(mid_dims) else None
                if mid is None and dim is not None:
                    lo, hi = min(s1, dim), min(e1, dim)
                    mid = max(0, math.ceil((hi - lo) / k1))
                if mid is None:
                    return f"axis {axis}: negative bound and unknown dim"
                s2, e2 = max(0, s2 + mid) if s2 < 0 else s2, max(0, e2 + mid) if e2 < 0 else e2
            step = k1 * k2
            if step > INT64_MAX:
                return f"axis {axis}: step overflows"
            by_axis[axis] = (_clamp64(s1 + k1 * s2), _clamp64(min(e1, s1 + k1 * e2)), step)
        axes = sorted(by_axis)
        self._params = [[by_axis[a][i] for a in axes] for i in range(3)]
        self._params.insert(2, axes)
        if self.opset < 10 and any(s != 1 for s in self._params[3]):
            return "opset < 10 Slice has no steps"
        if self.graph is None:
            return "the node is in no graph"
        return None

    def rewrite(self, op, x: ir.Value, inner: ir.Value, out: ir.Value):
        starts, ends, axes, steps = self._params
        if self.opset < 10:
            return op.Slice(x, starts=starts, ends=ends, axes=axes)
        values = [
            self.new_initializer(op, _int64(array), f"{out.name}_{suffix}")
            for suffix, array in zip(("starts", "ends", "axes", "steps"), self._params, strict=True)
        ]
        return op.Slice(x, *values)


def _shape_refs(value: ir.Value) -> list[tuple[ir.Value, int]] | None:
    """(tensor, dim) for each element of a 1-D int64 value read off a Shape node.

    Knows Shape(t) (with start/end), Gather(Shape(t), i) and Unsqueeze of a scalar
    Gather(Shape(t), i): what `x.view(x.size(0), -1)` exports to.
    """
    node = value.producer()
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Identity":  # left by a no-op rule earlier in the same round
        return _shape_refs(node.inputs[0]) if node.inputs[0] is not None else None
    if node.op_type == "Unsqueeze":
        axes = _squeeze_axes(node)
        refs = _shape_refs(node.inputs[0]) if node.inputs[0] is not None else None
        return refs if axes in ([0], [-1]) and refs is not None and len(refs) == 1 else None
    if node.op_type == "Shape":
        tensor = node.inputs[0]
        rank = _rank(tensor) if tensor is not None else None
        if tensor is None or rank is None:
            return None
        start = node.attributes.get_int("start", 0)
        end = node.attributes.get_int("end", rank)
        return [(tensor, i) for i in range(rank)[slice(start, end)]]
    if node.op_type == "Gather" and node.attributes.get_int("axis", 0) in (0, -1):
        source = node.inputs[0]
        index = _const_array(node.inputs[1] if len(node.inputs) > 1 else None)
        refs = _shape_refs(source) if source is not None else None
        if refs is None or index is None or index.ndim > 1:
            return None
        picked = []
        for i in index.reshape(-1).tolist():
            if not -len(refs) <= i < len(refs):
                return None
            picked.append(refs[i])
        return picked
    return None


class ReshapeShapeFromInput(_Rule):
    """Reshape(x, Concat(dims of x, constants)) -> Reshape(x, constant shape).

    `x.view(x.size(0), -1)` exports to Shape/Gather/Unsqueeze/Concat; a dim of x read at
    its own position is `0` (allowzero=0), a static dim is its value, and a single dim
    that is neither becomes `-1`. The Shape chain then dies.
    """

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _outputs=["out"])

    def why_not(self, context, x: ir.Value, shape: ir.Value, out: ir.Value) -> str | None:
        concat = shape.producer()
        if concat is None or concat.op_type != "Concat" or concat.domain not in ("", "ai.onnx"):
            return "shape is not built by Concat"
        allowzero = producer(out).attributes.get_int("allowzero", 0)
        entries: list[int | None] = []
        for piece in concat.inputs:
            if piece is None:
                return "missing Concat input"
            literal = const_ints(piece)
            if literal is not None:
                entries.extend(literal)
                continue
            refs = _shape_refs(piece)
            if refs is None:
                return f"{piece.name} is neither constant nor a dim read off Shape"
            for tensor, dim in refs:
                position = len(entries)
                static = _dims(tensor)
                if static is not None and static[dim] is not None:
                    entries.append(static[dim])
                elif tensor is x and dim == position and not allowzero:
                    entries.append(0)
                else:
                    entries.append(None)
        unknown = entries.count(None)
        if unknown == 1 and -1 not in entries:
            entries = [-1 if e is None else e for e in entries]
        elif unknown:
            return f"{unknown} dims are neither static nor x's own"
        if allowzero and 0 in entries:
            return "allowzero=1 with a zero dim"
        self._shape = [int(e) for e in entries]  # type: ignore[arg-type]
        if self.graph is None:
            return "the node is in no graph"
        return None

    def rewrite(self, op, x: ir.Value, shape: ir.Value, out: ir.Value):
        new_shape = self.new_initializer(op, _int64(self._shape), f"{out.name}_shape")
        return op.Reshape(x, new_shape)


# --- folding -----------------------------------------------------------------------


class FoldShapeGather(_Rule):
    """Gather(Shape(x), i) -> constant when the gathered dims of x are static.

    onnxscript's folder folds Shape only when every dim is static and Gather of a shape
    only with 1-D indices; exporters gather one dim with a scalar index, and the other
    dims (a batch or sequence length) may stay symbolic.
    """

    def pattern(self, op, x, indices):
        shape = op.Shape(x, _outputs=["shape"])
        return op.Gather(shape, indices, _outputs=["out"])

    def why_not(
        self, context, x: ir.Value, indices: ir.Value, shape: ir.Value, out: ir.Value
    ) -> str | None:
        dims = _dims(x)
        if dims is None:
            return "input shape unknown"
        shape_node = producer(shape)
        start = shape_node.attributes.get_int("start", 0)
        end = shape_node.attributes.get_int("end", len(dims))
        dims = dims[slice(start, end)]
        if producer(out).attributes.get_int("axis", 0) not in (0, -1):
            return "axis is not 0"
        index = _const_array(indices)
        if index is None or index.ndim > 1 or not np.issubdtype(index.dtype, np.integer):
            return "indices are not a constant scalar or 1-D tensor"
        picked = []
        for i in index.reshape(-1).tolist():
            if not -len(dims) <= i < len(dims):
                return f"index {i} out of range"
            if dims[i] is None:
                return f"dim {i} is not static"
            picked.append(dims[i])
        self._value = np.asarray(picked, np.int64).reshape(index.shape)
        return None

    def rewrite(self, op, x: ir.Value, indices: ir.Value, shape: ir.Value, out: ir.Value):
        # A Constant node: the folder folds what reads it, and lift-constants follows.
        return op.Constant(value=ir.tensor(self._value))


def simplify_rules(opset: int) -> list[RewriteRule]:
    """Our shape-op rules for a model of default-domain `opset` (fresh instances)."""
    classes: list[type[_Rule]] = [
        NoOpReshape,
        NoOpPad,
        NoOpSlice,
        NoOpExpand,
        SqueezeUnsqueezeCancel,
        UnsqueezeSqueezeCancel,
        MergeUnsqueeze,
        MergeSqueeze,
        MergeReshape,
        ReshapeShapeFromInput,
        ReshapeOfUnitTranspose,
        MergeTranspose,
        MergeCast,
        MergeSlices,
    ]
    binary = [NoOpBinary.rule(opset, op_type) for op_type in NoOpBinary._NEUTRAL]
    return [*binary, *(cls.rule(opset) for cls in classes)]


def folding_rules(opset: int) -> list[RewriteRule]:
    return [FoldShapeGather.rule(opset)]
