"""Cleanup passes: initializer inputs -> plain initializers, folding, no-op removal, CSE."""

from __future__ import annotations

import hashlib
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
    allow_private_initializers,
    const_array,
    fresh_name,
    is_onnx_op,
    onnx_opset,
)

logger = logging.getLogger(__name__)


class RemoveInitializerInputsPass(ir.passes.InPlacePass):
    """Graph inputs that have an initializer -> plain initializers (IR version >= 4).

    Old exporters (the onnx wheel's `light_*.onnx`, IR 3) list every weight as a graph
    input. A value that the caller may override cannot be folded, so nothing downstream
    of those weights folds until they are private. Inputs without an initializer (the
    real, user-visible inputs) are never touched.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        result = common_passes.RemoveInitializersFromInputsPass()(model)
        if result.modified:
            allow_private_initializers(model)
        return ir.passes.PassResult(model, result.modified)


class LiftConstantsPass(ir.passes.InPlacePass):
    """Constant nodes -> initializers (onnx-ir's pass, valid at any IR version).

    onnx-ir 1.1.0's LiftConstantsToInitializersPass registers initializers that are not
    graph inputs whatever the model's IR version; below IR 4 onnx.checker rejects that
    ("in initializer but not in graph input": the onnx wheel's IR 3 pytorch-operator
    models). The model is moved to IR 4 when anything was lifted, as
    RemoveInitializerInputsPass does.

    Args: those of onnx-ir's pass (`lift_all_constants`, `size_limit`).
    """

    def __init__(self, *, lift_all_constants: bool = False, size_limit: int = 16) -> None:
        super().__init__()
        self.lift_all_constants = lift_all_constants
        self.size_limit = size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        lift = common_passes.LiftConstantsToInitializersPass(
            lift_all_constants=self.lift_all_constants, size_limit=self.size_limit
        )
        modified = lift(model).modified
        if modified:
            allow_private_initializers(model)
        return ir.passes.PassResult(model, modified)


def _tensor_bytes(tensor: ir.TensorProtocol) -> np.ndarray | None:
    """The tensor's content as a C-contiguous uint8 array (None: unreadable)."""
    try:
        if tensor.dtype.is_string():
            # Fixed-width bytes: equal string lists give equal bytes (shape is in the key).
            array = np.array(tensor.string_data())  # type: ignore[attr-defined]
        else:
            array = tensor.numpy()
    except Exception:  # external data not at hand, ...
        return None
    # Folded tensors wrap whatever numpy returned, often a transposed or strided view.
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)


class DeduplicateInitializersPass(ir.passes.InPlacePass):
    """Initializers with equal dtype, shape and bytes -> one initializer, in each graph.

    onnx-ir 1.1.0's DeduplicateHashedInitializersPass hashes `tensor.numpy()` as a
    buffer, which raises "ndarray is not C-contiguous" on the strided arrays that
    constant folding leaves (a folded Transpose: pytorch-converted test_Linear_no_bias),
    fails on string tensors, and warns about every initializer that is a graph input
    (all weights of an IR 3 model). Ours hashes a contiguous copy only where needed and
    compares the bytes of equal hashes (NaNs with equal bits are equal). Graph inputs
    (overridable) and graph outputs are never merged.

    Args:
        size_limit: largest initializer (in elements) compared.
    """

    def __init__(self, *, size_limit: int = 1 << 24) -> None:
        super().__init__()
        self.size_limit = size_limit

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = 0
        for graph in model.graphs():
            kept: dict[tuple[ir.DataType, tuple[int, ...], bytes], list[ir.Value]] = {}
            for value in tuple(graph.initializers.values()):
                tensor = value.const_value
                if value.is_graph_input() or value.is_graph_output() or tensor is None:
                    continue
                if tensor.size > self.size_limit:
                    continue
                data = _tensor_bytes(tensor)
                if data is None:
                    continue
                digest = hashlib.sha256(data.data).digest()
                key = (tensor.dtype, tuple(tensor.shape.numpy()), digest)
                same = kept.setdefault(key, [])
                for other in same:
                    assert other.const_value is not None
                    other_data = _tensor_bytes(other.const_value)
                    if other_data is not None and np.array_equal(other_data, data):
                        value.replace_all_uses_with(other)
                        assert value.name is not None
                        graph.initializers.pop(value.name)
                        logger.debug("Initializer %s merged into %s", value.name, other.name)
                        count += 1
                        break
                else:
                    same.append(value)
        if count:
            logger.info("Merged %d duplicate initializers", count)
        return ir.passes.PassResult(model, bool(count))


def _in_scope(value: ir.Value, graph: ir.Graph | None) -> bool:
    """Whether `value` is defined in `graph` itself (not in an enclosing graph)."""
    return graph is not None and value.graph is graph


def _merge_type_and_shape(x: ir.Value, y: ir.Value) -> None:
    """What y = Identity(x) knows of its value and x does not: x's type if unknown,
    static dims where x's are symbolic (same rank only)."""
    if x.type is None:
        x.type = y.type
    if y.shape is None:
        return
    if x.shape is None:
        x.shape = y.shape
    elif len(x.shape) == len(y.shape) and x.shape != y.shape:
        x.shape = ir.Shape(_merge_dim(a, b) for a, b in zip(x.shape, y.shape, strict=True))


def _merge_dim(a: int | ir.SymbolicDim, b: int | ir.SymbolicDim) -> int | ir.SymbolicDim:
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a if a.value is not None else b


class EliminateIdentityPass(ir.passes.InPlacePass):
    """Identity(x) -> x, in every graph, subgraph and function.

    onnx-ir 1.1.0's IdentityEliminationPass turns `y = Add(a, b); z = Identity(y)`, with
    y and z both graph outputs, into outputs (z, z): it renames y to z although y is
    itself an output (ORT: "a graph lists an output twice"; Scan/Loop bodies of the
    onnx backend node tests). Ours keeps an Identity whose output is a graph output when
    x cannot take its name: x is a graph input, an initializer, another graph output, or
    defined in an enclosing graph (renaming it would rename the outer value).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        count = 0
        roots: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        for root in roots:
            for node in list(ir.traversal.RecursiveGraphIterator(root)):
                if self._eliminate(node):
                    count += 1
        if count:
            logger.debug("Removed %d Identity nodes", count)
        return ir.passes.PassResult(model, bool(count))

    @staticmethod
    def _eliminate(node: ir.Node) -> bool:
        if not is_onnx_op(node, "Identity") or len(node.inputs) != 1 or len(node.outputs) != 1:
            return False
        x, y, graph = node.inputs[0], node.outputs[0], node.graph
        if x is None or graph is None:
            return False
        if y.is_graph_output():
            if (
                x.is_graph_input()
                or x.is_initializer()
                or x.is_graph_output()
                or not _in_scope(x, graph)
            ):
                return False
            # x now stands for the graph output and takes its name.
            _merge_type_and_shape(x, y)
            name = y.name
            ir.convenience.replace_all_uses_with(y, x, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            x.name = name
            return True
        if not (x.is_graph_input() or x.is_initializer()):
            _merge_type_and_shape(x, y)
        y.replace_all_uses_with(x)
        graph.remove(node, safe=True)
        return True


# Domain a node is moved to while onnxscript's folder runs, so that the folder skips it.
_HIDDEN_DOMAIN = "lepton.hidden_from_folder"


def _folder_mishandles(node: ir.Node, opset: int | None) -> str | None:
    """Why onnxscript's folder (0.7.2) must not see this node, or None.

    Its partial evaluators for the sequence ops are registered for every opset but emit
    opset-13+ forms (Split's `split` and Squeeze/Unsqueeze's `axes` as inputs) and
    opset-18+ forms (Split's `num_outputs`, for a scalar split), and the one for
    SplitToSequence raises on a split that is neither constant nor 1-D (it reads `.ndim`
    off the missing value). A split that only becomes constant while the folder runs is
    seen by the next round.
    """
    if node.domain not in ONNX_DOMAINS or opset is None:
        return None
    if node.op_type == "ConcatFromSequence" and opset < 13:
        if node.attributes.get_int("new_axis", 0) == 1:
            return f"it would emit Unsqueeze with an axes input at opset {opset}"
    if node.op_type != "SplitToSequence" or len(node.inputs) < 2 or node.inputs[1] is None:
        return None
    if opset < 13:
        return f"it would emit Split/Squeeze with input operands at opset {opset}"
    split = node.inputs[1]
    try:
        tensor = ir.convenience.get_const_tensor(split)
    except ValueError:  # a malformed Constant
        tensor = None
    rank: int | None
    if tensor is not None:
        rank = len(tensor.shape)
    else:
        rank = len(split.shape) if split.shape is not None else None
    if rank == 1:
        return None
    if rank == 0 and tensor is not None and opset >= 18:
        return None
    return f"split of rank {rank} ({'constant' if tensor is not None else 'not constant'})"


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

    - its sequence-op evaluators ignore the model's opset (`_folder_mishandles`): such
      nodes are hidden from it (moved to a private domain while it runs; its `should_fold`
      hook is asked only after those evaluators ran), and stay as they are.

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
            hidden = self._hide_from_folder(model, opset)
            try:
                changed = folder(model).modified
            finally:
                for node, domain in hidden:
                    node.domain = domain
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
            # Folded values and materialised fills are new initializers.
            allow_private_initializers(model)
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _hide_from_folder(model: ir.Model, opset: int | None) -> list[tuple[ir.Node, str]]:
        hidden = []
        roots: list[ir.Graph | ir.Function] = [model.graph, *model.functions.values()]
        for root in roots:
            for node in ir.traversal.RecursiveGraphIterator(root):
                reason = _folder_mishandles(node, opset)
                if reason is not None:
                    logger.debug("%s %s not folded: %s", node.op_type, node.name, reason)
                    hidden.append((node, node.domain))
                    node.domain = _HIDDEN_DOMAIN
        return hidden


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
            EliminateIdentityPass()(model)
        cleaned = EliminateIdentityPass()(model).modified
        removed = common_passes.RemoveUnusedNodesPass()(model).modified if rewritten else False
        if rewritten:
            # Merged Reshape/Slice/Squeeze operands are new initializers.
            allow_private_initializers(model)
        return ir.passes.PassResult(model, rewritten or cleaned or removed)
