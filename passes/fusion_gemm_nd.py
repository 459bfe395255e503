"""N-D MatMul(a, b[K, N]) + c[N] -> Reshape(Gemm(Reshape(a), b, c)), kept if the graph shrinks.

ORT's MatMulAddFusion (CPU, onnxruntime 1.32) makes the same rewrite at session creation,
one Reshape on each side of every Gemm. Done here, the Reshapes are merged and shared
before counting: the input Reshape of the q/k/v projections that read one tensor is
shared (CSE), an output Reshape merges with a following Reshape (the attention heads'
split) and an input Reshape with a preceding one (the heads' merge), and an elementwise
chain between two rewritten Gemms (a GELU between the FFN's two projections) is run on
the 2-D tensor, so that its Reshape pair cancels. The result is kept only if the whole
graph has fewer nodes than without the rewrite; otherwise the model is left unchanged.

Registered for the lepton target only. For onnxruntime the rewrite is ORT's to make: its
MatMulAddFusion makes it on static shapes, where it chooses to (newer sources skip attention
projections to leave them to AttentionFusion). Made ahead of it, the choice is taken from
ORT and the bias sits in a Gemm where BiasGelu and the attention fusions cannot find it (the
offline `onnxruntime.transformers` BERT optimizer finds Gelu instead of BiasGelu after this
pass, as after onnxsim). tests/passes/test_fusion_ort_parity.py holds the ort target to the
fusions ORT finds on the original.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import rewriter
from onnxscript.rewriter import RewriteRule

from lepton_compile.passes._utils import (
    allow_private_initializers,
    const_array,
    count_nodes,
    fresh_name,
    is_onnx_op,
    onnx_opset,
)
from lepton_compile.passes.cleanup import CommonSubexpressionEliminationPass, SimplifyPass
from lepton_compile.passes.fusion import gemm_reason
from lepton_compile.passes.rules import Rule

logger = logging.getLogger(__name__)


# Ops that compute each output element from the same element of every input (inputs of
# one shape, or constants of rank <= 1 broadcast along the last axis): they give the
# same values on a [M, N] view of a [..., N] tensor.
_ELEMENTWISE = frozenset(
    {
        "Abs",
        "Add",
        "Cast",
        "Ceil",
        "Celu",
        "Clip",
        "Cos",
        "Div",
        "Elu",
        "Erf",
        "Exp",
        "Floor",
        "Gelu",
        "HardSigmoid",
        "HardSwish",
        "Identity",
        "LeakyRelu",
        "Log",
        "Max",
        "Mean",
        "Min",
        "Mish",
        "Mul",
        "Neg",
        "Pow",
        "PRelu",
        "Reciprocal",
        "Relu",
        "Round",
        "Selu",
        "Sigmoid",
        "Sign",
        "Sin",
        "Softplus",
        "Softsign",
        "Sqrt",
        "Sub",
        "Sum",
        "Tanh",
        "ThresholdedRelu",
    }
)


def _static_dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None or not value.shape.is_static():
        return None
    return [int(d) for d in value.shape]  # type: ignore[arg-type, call-overload]


class _ShapeConstants:
    """One int64 initializer per (graph, shape), so that equal Reshapes are CSE-equal."""

    def __init__(self) -> None:
        self._values: dict[tuple[int, tuple[int, ...]], ir.Value] = {}

    def get(self, graph: ir.Graph, dims: Sequence[int], base: str) -> ir.Value:
        key = (id(graph), tuple(dims))
        value = self._values.get(key)
        if value is None or value.graph is not graph:
            name = fresh_name(graph, base)
            tensor = ir.tensor(np.asarray(dims, dtype=np.int64), name=name)
            value = ir.Value(
                name=name,
                shape=ir.Shape([len(dims)]),
                type=ir.TensorType(ir.DataType.INT64),
                const_value=tensor,
            )
            graph.register_initializer(value)
            self._values[key] = value
        return value


class _MatMulAddNd(Rule):
    """Add(MatMul(a[..., K], b[K, N]), c[N]) -> Reshape(Gemm(Reshape(a, [M, K]), b, c), [..., N]).

    a needs a static shape of rank >= 3 (rank 2 is fuse-matmul-add's), b a constant
    [K, N] that the user cannot feed, c a constant [N]: anything else Add broadcasts
    differently from Gemm's C, or needs a runtime shape.
    """

    def __init__(self, shapes: _ShapeConstants) -> None:
        super().__init__()
        self._shapes = shapes

    def pattern(self, op, a, b, c):
        return op.Add(op.MatMul(a, b, _outputs=["mm"]), c, _outputs=["out"])

    def why_not(
        self, context, a: ir.Value, b: ir.Value, c: ir.Value, mm: ir.Value, out: ir.Value
    ) -> str | None:
        if not isinstance(context.graph_or_function, ir.Graph):
            return "inside a function: shapes there are not static"
        if (reason := gemm_reason(onnx_opset(context.model), a.dtype)) is not None:
            return reason
        if b.dtype != a.dtype or c.dtype != a.dtype:
            return "dtype mismatch"
        a_dims = _static_dims(a)
        if a_dims is None:
            return f"shape of {a.name} is not static ({a.shape})"
        if len(a_dims) < 3:
            return f"{a.name} has rank {len(a_dims)}: fuse-matmul-add's case"
        if 0 in a_dims:
            return f"{a.name} is empty"
        w = const_array(b)
        if w is None or b.is_graph_input():
            return f"{b.name} is not a constant the user cannot feed"
        if w.ndim != 2:
            return f"{b.name} has rank {w.ndim}, Gemm takes 2"
        k, n = (int(d) for d in w.shape)
        if a_dims[-1] != k:
            return f"{a.name} {a_dims} @ {b.name} {list(w.shape)}"
        bias = const_array(c)
        if bias is None or c.is_graph_input():
            return f"{c.name} is not a constant the user cannot feed"
        if bias.shape != (n,):
            # (1, ..., N) would grow the output's rank, (M, N) is not one row per output.
            return f"{c.name} has shape {list(bias.shape)}, not [{n}]"
        if mm.is_graph_output():
            return f"{mm.name} is a graph output"
        m = math.prod(a_dims[:-1])
        self._dims = (m, k, n, [*a_dims[:-1], n])
        return None

    def rewrite(self, op, a: ir.Value, b: ir.Value, c: ir.Value, mm: ir.Value, out: ir.Value):
        m, k, n, out_dims = self._dims
        graph = self.graph
        assert graph is not None
        flat = op.Reshape(a, self._shapes.get(graph, [m, k], "gemm_nd_in_shape"))
        flat.dtype, flat.shape = a.dtype, ir.Shape([m, k])
        product = op.Gemm(flat, b, c)
        product.dtype, product.shape = a.dtype, ir.Shape([m, n])
        # `out` hands its name, type and shape to the result.
        return op.Reshape(product, self._shapes.get(graph, out_dims, "gemm_nd_out_shape"))


def _broadcasts_along_last_axis(value: ir.Value, n: int) -> bool:
    """A constant of rank <= 1 that a [..., n] tensor broadcasts the same in 2-D."""
    array = const_array(value)
    return array is not None and array.shape in ((), (1,), (n,))


def _region_2d(reshape: ir.Node) -> list[ir.Value] | None:
    """The values of the elementwise region after Reshape([M, N] -> [..., N]).

    None unless every value the region computes is read only by elementwise ops of the
    region or by Reshapes to a constant shape without `0` copies (exits), every other
    operand of a region op is a constant of rank <= 1, and no value is a graph output.
    Such a region gives the same values on the [M, N] tensor itself, and the exits
    reshape that just as well.
    """
    source, target = reshape.inputs[0], reshape.outputs[0]
    src_dims, dims = _static_dims(source), _static_dims(target)
    graph = reshape.graph
    if src_dims is None or dims is None or len(src_dims) != 2 or len(dims) < 3:
        return None
    if dims[-1] != src_dims[1] or math.prod(dims[:-1]) != src_dims[0]:
        return None
    values: list[ir.Value] = [target]
    nodes: list[ir.Node] = []
    seen: set[ir.Node] = set()
    i = 0
    while i < len(values):
        value = values[i]
        i += 1
        if value.is_graph_output():
            return None
        for user, index in value.uses():
            if user in seen:
                continue
            seen.add(user)
            if user.graph is not graph:
                return None  # read from inside a subgraph
            if is_onnx_op(user, "Reshape"):
                shape = const_array(user.inputs[1]) if len(user.inputs) > 1 else None
                if index != 0 or shape is None:
                    return None
                if 0 in shape.tolist() and not user.attributes.get_int("allowzero", 0):
                    return None  # `0` would copy a dim of the 2-D tensor
                continue
            if user.domain not in ("", "ai.onnx") or user.op_type not in _ELEMENTWISE:
                return None
            if len(user.outputs) != 1:
                return None
            output = user.outputs[0]
            if output.shape is not None and _static_dims(output) != dims:
                return None
            nodes.append(user)
            values.append(output)
    # Only now are all members known: a diamond's second operand comes later.
    members = set(values)
    for node in nodes:
        for operand in node.inputs:
            if operand is None or operand in members:
                continue
            if not _broadcasts_along_last_axis(operand, dims[-1]):
                return None
    return values


def _run_regions_in_2d(model: ir.Model) -> int:
    """Elementwise regions after a Gemm's [M, N] -> [..., N] Reshape run on [M, N].

    The Reshape then has no reader, and exits to [M, N] become no-ops (SimplifyPass).
    Returns the number of regions with at least one elementwise op.
    """
    regions = 0
    for graph in model.graphs():
        for node in list(graph):
            if not is_onnx_op(node, "Reshape") or node.graph is not graph:
                continue
            source = node.inputs[0]
            producer = source.producer() if source is not None else None
            if producer is None or not is_onnx_op(producer, "Gemm"):
                continue
            region = _region_2d(node)
            if region is None:
                continue
            values = region
            regions += len(values) > 1  # else a Reshape pair (MergeReshape would do it)
            assert source is not None
            flat = ir.Shape(list(source.shape))  # type: ignore[arg-type]
            target = node.outputs[0]
            for value in values[1:]:
                value.shape = flat
            target.replace_all_uses_with(source)
            graph.remove(node, safe=True)
    return regions


def _has_candidates(model: ir.Model) -> bool:
    """Whether a MatMul of a static rank >= 3 tensor feeds an Add: worth cloning the model."""
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if not is_onnx_op(node, "MatMul") or node.inputs[0] is None:
            continue
        dims = _static_dims(node.inputs[0])
        if dims is not None and len(dims) >= 3:
            if any(is_onnx_op(user, "Add") for user, _ in node.outputs[0].uses()):
                return True
    return False


def _count_gemm(model: ir.Model) -> int:
    return sum(
        1 for node in ir.traversal.RecursiveGraphIterator(model.graph) if is_onnx_op(node, "Gemm")
    )


def _cleanup(model: ir.Model) -> None:
    # Merge the Reshape chains, drop no-op Reshapes, share the input Reshapes.
    SimplifyPass()(model)
    CommonSubexpressionEliminationPass()(model)
    common_passes.RemoveUnusedNodesPass()(model)


class FuseMatMulAddNdPass(ir.passes.InPlacePass):
    """N-D Add(MatMul(a, b), c) -> Reshape -> Gemm -> Reshape, when the graph shrinks.

    The rewrite, and the Reshape merging and sharing it relies on, run on a copy of the
    model; the copy replaces the model's graph only if it has fewer nodes than the
    model cleaned up the same way without the rewrite.

    Args:
        only_if_smaller: when False, keep the rewrite whatever the node count.
    """

    def __init__(self, *, only_if_smaller: bool = True) -> None:
        super().__init__()
        self.only_if_smaller = only_if_smaller

    def _rules(self) -> list[RewriteRule]:
        return _MatMulAddNd.rule(_ShapeConstants()).commute()

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if onnx_opset(model) is None or not _has_candidates(model):
            return ir.passes.PassResult(model, False)
        trial = model.clone(deep_copy=True)
        rules = self._rules()
        fused = rewriter.RewritePass(rules)(trial).modified
        if not fused:
            return ir.passes.PassResult(model, False)
        fused_count = _count_gemm(trial) - _count_gemm(model)
        regions = _run_regions_in_2d(trial)
        _cleanup(trial)
        after = count_nodes(trial)
        if self.only_if_smaller:
            baseline = model.clone(deep_copy=True)
            _cleanup(baseline)
            before = count_nodes(baseline)
            if after >= before:
                logger.info(
                    "fuse-matmul-add-nd: not applied: %d nodes with the rewrite, %d without",
                    after,
                    before,
                )
                return ir.passes.PassResult(model, False)
        else:
            before = count_nodes(model)
        logger.info(
            "fuse-matmul-add-nd: %d Gemm, %d elementwise regions in 2-D: %d -> %d nodes",
            fused_count,
            regions,
            before,
            after,
        )
        _adopt(model, trial)
        return ir.passes.PassResult(model, True)


def _adopt(model: ir.Model, trial: ir.Model) -> None:
    """Make `model` hold `trial`'s graph and functions (the pass is in place)."""
    model.graph = trial.graph
    model.functions.clear()
    model.functions.update(trial.functions)
    model.ir_version = trial.ir_version
    allow_private_initializers(model)
