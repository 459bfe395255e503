"""Cleanup passes: initializer inputs -> plain initializers, folding, no-op removal, CSE."""

from __future__ import annotations

import logging
import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import rewriter
from onnxscript.optimizer import _constant_folding
from onnxscript.rewriter import RewriteRule
from onnxscript.rewriter.rules import common as rules

from lepton_compile.passes import cleanup_rules
from lepton_compile.passes._utils import (
    ONNX_DOMAINS,
    const_array,
    fresh_name,
    is_onnx_op,
    onnx_opset,
)

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
    from (node-level inferred) static shapes. What it lacks for us:

    - it never folds ConstantOfShape (to keep files small), and its default size limits
      (8192 elements in, 262144 out) keep most real weights from folding, so a weight
      built as ConstantOfShape(shape) never becomes a constant that Conv+BN folding can
      use. We materialise ConstantOfShape ourselves, up to its own limit: left in the
      graph it is recomputed on every inference, and a weight is that size anyway.
    - it folds Gather(Shape(x), i) only for 1-D indices and only through a fully static
      Shape; exporters gather single dims with scalar indices while another dim (batch,
      sequence) stays symbolic (`cleanup_rules.FoldShapeGather`).

    Folding, materialising and the Gather rule repeat until none changes anything. The
    Gather rule leaves small Constant nodes where the folder cannot go on from them
    (lift-constants follows in the pipelines).

    Args:
        size_limit: largest tensor (in elements) the folder reads or writes.
        fold_constant_of_shape: also materialise ConstantOfShape with a constant shape.
        constant_of_shape_limit: largest ConstantOfShape output (in elements) to
            materialise (1 << 28: 1 GiB of float32; VGG-19's largest weight has 103M).
        shape_inference: run onnx node-level shape inference while folding (needed to
            see static shapes behind Shape nodes).
        max_rounds: bound on the fold / materialise / gather rounds.
    """

    def __init__(
        self,
        *,
        size_limit: int = 1 << 24,
        fold_constant_of_shape: bool = True,
        constant_of_shape_limit: int = 1 << 28,
        shape_inference: bool = True,
        max_rounds: int = 4,
    ) -> None:
        super().__init__()
        self.size_limit = size_limit
        self.fold_constant_of_shape = fold_constant_of_shape
        self.constant_of_shape_limit = constant_of_shape_limit
        self.shape_inference = shape_inference
        self.max_rounds = max_rounds

    @staticmethod
    def _should_fold(node: ir.Node) -> bool | None:
        # ConstantOfShape is ours (_materialize_constant_of_shape): the folder's output
        # size limit would stop the weights we want.
        return False if is_onnx_op(node, "ConstantOfShape") else None

    def _materialize_constant_of_shape(self, model: ir.Model) -> bool:
        count = 0
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):
            if not is_onnx_op(node, "ConstantOfShape") or node.graph is None:
                continue
            shape = cleanup_rules.const_ints(node.inputs[0] if node.inputs else None)
            if shape is None or any(d < 0 for d in shape):
                continue
            # Decide before evaluating: a huge fill would be computed only to be dropped.
            if math.prod(shape) > self.constant_of_shape_limit:
                logger.debug("ConstantOfShape %s kept: %s elements", node.name, shape)
                continue
            attr = node.attributes.get("value")
            fill = np.zeros(1, np.float32) if attr is None else attr.as_tensor().numpy()
            value = fill.reshape(-1)[0]
            # np.zeros takes pages the OS hands out zeroed: the common fill, and fast.
            array = np.zeros(shape, fill.dtype) if value == 0 else np.full(shape, value, fill.dtype)
            self._replace_with_initializer(node, array)
            count += 1
        if count:
            logger.info("Materialised %d ConstantOfShape nodes", count)
        return bool(count)

    @staticmethod
    def _replace_with_initializer(node: ir.Node, array: np.ndarray) -> None:
        graph, out = node.graph, node.outputs[0]
        assert graph is not None
        if out.is_graph_output():
            # A graph output keeps its producer: a Constant node.
            constant = ir.node("Constant", [], attributes={"value": ir.tensor(array)})
            ir.convenience.replace_nodes_and_values(
                graph, node, [node], [constant], [out], [constant.outputs[0]]
            )
            return
        name = out.name or fresh_name(graph, "constant_of_shape")
        value = ir.Value(
            type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
            shape=ir.Shape(array.shape),
            const_value=ir.tensor(array, name=name),
        )
        out.replace_all_uses_with(value)
        graph.remove(node, safe=True)
        value.name = name
        graph.register_initializer(value)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = onnx_opset(model)
        modified = False
        for _ in range(self.max_rounds):
            # A fresh folder per run: onnxscript's pass keeps per-run state on the instance.
            folder = _constant_folding.FoldConstantsPass(
                shape_inference=self.shape_inference,
                input_size_limit=self.size_limit,
                output_size_limit=self.size_limit,
                should_fold=self._should_fold,
            )
            changed = folder(model).modified
            if self.fold_constant_of_shape:
                changed |= self._materialize_constant_of_shape(model)
            if opset is not None:
                gather = rewriter.RewritePass(cleanup_rules.folding_rules(opset))
                changed |= gather(model).modified
            if not changed:
                break
            modified = True
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


# A tag that makes every random op's attributes unique while onnx-ir's CSE runs.
_CSE_GUARD = "_lepton_cse_guard"


def _may_be_random(node: ir.Node, opset: int | None) -> bool:
    op = node.op_type
    if op == "Dropout" and node.domain in ONNX_DOMAINS:
        return not _dropout_is_identity(node, opset)
    # Custom domains too: com.microsoft's BiasDropout, BitmaskDropout, Random*.
    return op in ("Bernoulli", "Multinomial") or op.startswith("Random") or "Dropout" in op


class CommonSubexpressionEliminationPass(ir.passes.InPlacePass):
    """Nodes with the same op, inputs and attributes -> one node, random ops excepted.

    onnx-ir's pass, which knows RandomNormal/Uniform(Like) and Multinomial as random but
    merges two Bernoulli(x), or two training-mode Dropout(x), into one draw (checked
    with onnx-ir 1.1.0). Each such node gets a unique temporary attribute while it runs.

    Args:
        size_limit: largest Constant (in elements) compared by value (onnx-ir's option).
    """

    def __init__(self, *, size_limit: int = 10) -> None:
        super().__init__()
        self.size_limit = size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = onnx_opset(model)
        guarded = [
            node
            for node in ir.traversal.RecursiveGraphIterator(model.graph)
            if _may_be_random(node, opset)
        ]
        for i, node in enumerate(guarded):
            node.attributes[_CSE_GUARD] = ir.AttrInt64(_CSE_GUARD, i)
        try:
            cse = common_passes.CommonSubexpressionEliminationPass(size_limit=self.size_limit)
            modified = cse(model).modified
        finally:
            for node in guarded:
                node.attributes.pop(_CSE_GUARD, None)
        return ir.passes.PassResult(model, modified)


def _simplify_rules(opset: int) -> list[RewriteRule]:
    """Rewrites that turn an op into a no-op, or merge two ops into one.

    onnxscript's rules where they are right and complete; ours (cleanup_rules) where
    they lack a case: its cast_cast, no_op_expand, transpose_transpose, reshape_reshape,
    unsqueeze_unsqueeze and collapse_slice rules are replaced by supersets, and its
    add_0/sub_0/mul_by_1/div_by_1 by exact ones (theirs drop x + 1e-12).

    Left out on purpose: slice_split_rule (emits Split with num_outputs, opset >= 18
    only) and flatten_to_reshape_rule (not a simplification on its own).
    """
    return [
        rules.no_op_cast_rule,
        rules.no_op_transpose_rule,
        rules.squeeze_reshape_1d_rule,
        *cleanup_rules.simplify_rules(opset),  # fresh instances: state from check to rewrite
    ]


class SimplifyPass(ir.passes.InPlacePass):
    """No-op ops -> their input; chains of shape ops -> one op.

    No-ops: x*1, x+0, x-0, x/1, same-type Cast, identity Transpose, Reshape to the
    input's own shape, all-zero Pad, full-range Slice, Expand that broadcasts nothing,
    Squeeze/Unsqueeze pairs on the same axes. Merged: Transpose, Reshape (`0`/`-1`
    kept right), Squeeze, Unsqueeze (either opset form), lossless Cast and Slice pairs.

    Rewrites repeat until none applies (a chain of n ops takes one round per merge at
    worst), then the Identity nodes the rules leave behind are removed.

    Args:
        max_rounds: bound on the rewrite rounds.
    """

    def __init__(self, *, max_rounds: int = 8) -> None:
        super().__init__()
        self.max_rounds = max_rounds

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        opset = onnx_opset(model)
        if opset is None:
            return ir.passes.PassResult(model, False)
        rewritten = False
        for _ in range(self.max_rounds):
            if not rewriter.RewritePass(_simplify_rules(opset))(model).modified:
                break
            rewritten = True
            # Patterns look through no Identity: drop those this round left behind.
            common_passes.IdentityEliminationPass()(model)
        cleaned = common_passes.IdentityEliminationPass()(model).modified
        removed = common_passes.RemoveUnusedNodesPass()(model).modified if rewritten else False
        return ir.passes.PassResult(model, rewritten or cleaned or removed)
