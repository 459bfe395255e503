"""Cleanup passes: initializer inputs -> plain initializers, constant folding, no-op removal."""

from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import rewriter
from onnxscript.optimizer import _constant_folding
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter.rules import common as rules

from lepton_compile.passes._utils import const_array, fresh_name, is_onnx_op, onnx_opset

logger = logging.getLogger(__name__)

# IR version 4 (onnx 1.4) is the first that lets an initializer exist without being
# listed as a graph input; older models must be bumped when those inputs are dropped.
_MIN_IR_VERSION_FOR_PRIVATE_INITIALIZERS = 4


class RemoveInitializerInputsPass(ir.passes.InPlacePass):
    """Graph inputs that have an initializer -> plain initializers (IR version >= 4).

    Old exporters (the onnx wheel's `light_*.onnx`, IR 3) list every weight as a graph
    input. A value that the caller may override cannot be folded, so nothing downstream
    of those weights folds until they are private. Inputs without an initializer (the
    real, user-visible inputs) are never touched.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = common_passes.RemoveInitializersFromInputsPass()(model)
        if result.modified and (model.ir_version or 0) < _MIN_IR_VERSION_FOR_PRIVATE_INITIALIZERS:
            logger.info(
                "IR version %s -> %s: initializers are no longer graph inputs",
                model.ir_version,
                _MIN_IR_VERSION_FOR_PRIVATE_INITIALIZERS,
            )
            model.ir_version = _MIN_IR_VERSION_FOR_PRIVATE_INITIALIZERS
        return ir.passes.PassResult(model, result.modified)


class ConstantFoldingPass(ir.passes.InPlacePass):
    """Subgraphs of constants (and of static shapes) -> initializers.

    Wraps onnxscript's folder, which already folds Shape/Size/Gather-of-shape chains
    from (node-level inferred) static shapes. What it lacks for us: it never folds
    ConstantOfShape (to keep files small), and its default size limits (8192 elements
    in, 262144 out) keep most real weights from folding, so a weight built as
    ConstantOfShape(shape) never becomes a constant that Conv+BN folding can use.

    Args:
        size_limit: largest tensor (in elements) the folder reads or writes.
        fold_constant_of_shape: also materialise ConstantOfShape with a constant shape.
        shape_inference: run onnx node-level shape inference while folding (needed to
            see static shapes behind Shape nodes).
    """

    def __init__(
        self,
        *,
        size_limit: int = 1 << 24,
        fold_constant_of_shape: bool = True,
        shape_inference: bool = True,
    ) -> None:
        super().__init__()
        self.size_limit = size_limit
        self.fold_constant_of_shape = fold_constant_of_shape
        self.shape_inference = shape_inference

    def _should_fold(self, node: ir.Node) -> bool | None:
        if not (self.fold_constant_of_shape and is_onnx_op(node, "ConstantOfShape")):
            return None  # onnxscript's default rules
        shape = const_array(node.inputs[0] if node.inputs else None)
        if shape is None:
            return False
        # Decide before evaluating: a huge fill would be computed only to be discarded.
        return int(np.prod(shape, dtype=np.int64)) <= self.size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        # A fresh folder per run: onnxscript's pass keeps per-run state on the instance.
        folder = _constant_folding.FoldConstantsPass(
            shape_inference=self.shape_inference,
            input_size_limit=self.size_limit,
            output_size_limit=self.size_limit,
            should_fold=self._should_fold,
        )
        modified = folder(model).modified
        if modified:
            # Folding leaves the folded-away producers (and Constant nodes) dead.
            common_passes.RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)


class RemoveUnusedPass(ir.passes.InPlacePass):
    """Dead nodes, unread optional outputs and unused initializers -> removed.

    onnx-ir's RemoveUnusedNodesPass, plus unused initializers of subgraphs (If/Loop
    bodies), which it leaves in place.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = common_passes.RemoveUnusedNodesPass()(model).modified
        for graph in model.graphs():
            if graph is model.graph:
                continue
            for name, value in list(graph.initializers.items()):
                if not (value.uses() or value.is_graph_output() or value.is_graph_input()):
                    del graph.initializers[name]
                    modified = True
        return ir.passes.PassResult(model, modified)


def _dropout_is_identity(node: ir.Node, opset: int | None) -> bool:
    """Whether this Dropout is known to run in inference mode (output == input)."""
    if opset is None:
        return False
    if opset < 7:
        # Dropout-1/6 default to training (is_test=0).
        return node.attributes.get_int("is_test", 0) == 1
    if opset < 12:
        # Dropout-7..10 have no training switch: inference is identity.
        return True
    training = node.inputs[2] if len(node.inputs) > 2 else None
    if training is None:
        return True
    training_value = const_array(training)
    if training_value is None:
        return False
    if not bool(training_value.reshape(-1)[0]):
        return True
    ratio = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    return ratio is not None and ratio.size == 1 and float(ratio.reshape(-1)[0]) == 0.0


class EliminateDropoutPass(ir.passes.InPlacePass):
    """Dropout in inference mode -> its input.

    Our own because onnxscript's dropout rules and folder only know opset >= 12
    Dropout (training_mode input); opset 7-11 Dropout (ratio attribute, optional mask
    output, as in the onnx wheel's light models) is inference-mode identity too.
    A Dropout whose mask output is read is kept.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = onnx_opset(model)
        count = 0
        graphs: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        for root in graphs:
            for node in list(ir.traversal.RecursiveGraphIterator(root)):
                if not is_onnx_op(node, "Dropout") or not _dropout_is_identity(node, opset):
                    continue
                if len(node.outputs) > 1 and (
                    node.outputs[1].uses() or node.outputs[1].is_graph_output()
                ):
                    logger.debug("Dropout %s kept: its mask is read", node.name)
                    continue
                if self._bypass(node):
                    count += 1
        if count:
            logger.info("Removed %d inference-mode Dropout nodes", count)
        return ir.passes.PassResult(model, bool(count))

    @staticmethod
    def _bypass(node: ir.Node) -> bool:
        x, y = node.inputs[0], node.outputs[0]
        graph = node.graph
        if x is None or graph is None:
            return False
        if y.is_graph_output():
            if x.is_graph_input() or x.is_initializer() or x.is_graph_output():
                # One value cannot carry two names: keep an Identity for the output name.
                identity = ir.node("Identity", [x], name=node.name)
                identity.outputs[0].name = y.name
                identity.outputs[0].type = y.type
                identity.outputs[0].shape = y.shape
                ir.convenience.replace_nodes_and_values(
                    graph, node, [node], [identity], [y], [identity.outputs[0]]
                )
                return True
            name = y.name
            # x now stands for the graph output, which must keep its declared type.
            if x.type is None:
                x.type = y.type
            if x.shape is None:
                x.shape = y.shape
            ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
            x.name = name
        else:
            y.replace_all_uses_with(x)
        graph.remove(node, safe=True)
        return True


def _slice_params(node: ir.Node, rank: int | None) -> list[np.ndarray] | None:
    """[starts, ends, axes (non-negative), steps] of an opset >= 10 Slice, if all constant."""
    if len(node.inputs) < 3:
        return None
    starts, ends = const_array(node.inputs[1]), const_array(node.inputs[2])
    if starts is None or ends is None or starts.ndim != 1 or starts.shape != ends.shape:
        return None
    n = starts.size
    axes_in = node.inputs[3] if len(node.inputs) > 3 else None
    steps_in = node.inputs[4] if len(node.inputs) > 4 else None
    axes = np.arange(n) if axes_in is None else const_array(axes_in)
    steps = np.ones(n, np.int64) if steps_in is None else const_array(steps_in)
    if axes is None or steps is None or axes.shape != (n,) or steps.shape != (n,):
        return None
    if (axes < 0).any():
        if rank is None:
            return None
        axes = np.where(axes < 0, axes + rank, axes)
    return [a.astype(np.int64) for a in (starts, ends, axes, steps)]


class _MergeSlices(RewriteRuleClassBase):
    """Slice(Slice(x)) on disjoint axes -> one Slice.

    Our own: onnxscript's slice rules only drop no-op slices. YOLOX's Focus layer (and
    other space-to-depth code) slices rows then columns in two steps.
    """

    def pattern(self, op, x):
        inner = op.Slice(x, _allow_other_inputs=True, _outputs=["inner_out"])
        return op.Slice(inner, _allow_other_inputs=True, _outputs=["outer_out"])

    def check(self, context, x, inner_out: ir.Value, outer_out: ir.Value) -> MatchResult:
        result = MatchResult()
        rank = len(x.shape) if x.shape is not None else None
        inner = _slice_params(inner_out.producer(), rank)  # type: ignore[arg-type]
        outer = _slice_params(outer_out.producer(), rank)  # type: ignore[arg-type]
        if inner is None or outer is None:
            return result.fail("Slice parameters are not constant 1-D tensors")
        if set(inner[2].tolist()) & set(outer[2].tolist()):
            return result.fail("the two Slices share an axis")
        if len(set(inner[2].tolist())) != inner[2].size:
            return result.fail("repeated axes")
        self._params = [np.concatenate([a, b]) for a, b in zip(inner, outer, strict=True)]
        return result

    def rewrite(self, op, x, inner_out: ir.Value, outer_out: ir.Value):
        graph = outer_out.producer().graph  # type: ignore[union-attr]
        assert graph is not None
        params = []
        for suffix, array in zip(("starts", "ends", "axes", "steps"), self._params, strict=True):
            # Initializers, not Constant nodes: constants were lifted before this runs.
            name = fresh_name(graph, f"{outer_out.name}_{suffix}")
            params.append(op.initializer(ir.tensor(array), name=name))
        return op.Slice(x, *params)


def _simplify_rules() -> list[RewriteRule]:
    """Rewrites that turn an op into a no-op, or merge two ops into one.

    Left out on purpose: slice_split_rule (emits Split with num_outputs, opset >= 18
    only) and flatten_to_reshape_rule (not a simplification on its own).
    """
    return [
        *rules.mul_by_1_rule.commute(),
        *rules.add_0_rule.commute(),
        rules.sub_0_rule,
        rules.div_by_1_rule,
        rules.no_op_cast_rule,
        rules.cast_cast_rule,
        rules.no_op_expand_rule,
        rules.no_op_transpose_rule,
        rules.transpose_transpose_rule,
        # Keeps `0` dims correct: it only rewrites when the merged shape is unambiguous
        # (onnxoptimizer gets Reshape(Reshape(x[2,12], [12,2]), [0,-1]) wrong).
        rules.reshape_reshape_rule,
        rules.unsqueeze_unsqueeze_rule,
        rules.squeeze_reshape_1d_rule,
        _MergeSlices.rule(),  # a fresh instance: it carries state from check to rewrite
    ]


class SimplifyPass(ir.passes.InPlacePass):
    """x*1, x+0, x-0, x/1, same-type Cast, no-op Expand/Transpose -> x; merge op pairs.

    Pairs merged: Transpose, Reshape, Unsqueeze, Cast (float->float16) and Slices on
    disjoint axes.

    onnxscript's no-op and basic rules, then identity elimination so that the
    Identity nodes those rules leave behind disappear in the same pass.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        rewritten = rewriter.RewritePass(_simplify_rules())(model).modified
        cleaned = common_passes.IdentityEliminationPass()(model).modified
        removed = common_passes.RemoveUnusedNodesPass()(model).modified if rewritten else False
        return ir.passes.PassResult(model, rewritten or cleaned or removed)
