"""Static shape and element type of every tensor of a graph, as counting needs them.

Shapes come from ``onnx.shape_inference.infer_shapes(..., data_prop=True)`` on a twin of the
graph in which common onnxruntime contrib ops stand as standard ops with the same output
shapes. Where data propagation stops short of some shape arithmetic (a float ``Cast`` in a
``Shape -> Gather -> Concat -> Reshape`` chain, as many exporters write), onnxscript's constant
folder, the one the graph passes use, evaluates the small constant subgraphs with incremental
shape inference, and the shapes it finds are added. Only shapes are taken from folding: the
graph that is counted is the one given.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import onnx
from onnx import helper, shape_inference

__all__ = ["BITS", "DOMAIN_MS", "FOLD_LIMIT", "TensorTypes", "Unknown", "infer_types", "prepare"]

log = logging.getLogger(__name__)

DOMAIN_MS = "com.microsoft"
# Elements: constants evaluated to recover shapes are shape arithmetic, not weights.
FOLD_LIMIT = 4096

# bits per element by TensorProto data type (sub-byte types pack)
BITS: dict[int, int] = {}
for _name, _bits in [
    ("FLOAT", 32), ("UINT8", 8), ("INT8", 8), ("UINT16", 16), ("INT16", 16), ("INT32", 32),
    ("INT64", 64), ("BOOL", 8), ("FLOAT16", 16), ("DOUBLE", 64), ("UINT32", 32),
    ("UINT64", 64), ("COMPLEX64", 64), ("COMPLEX128", 128), ("BFLOAT16", 16),
    ("FLOAT8E4M3FN", 8), ("FLOAT8E4M3FNUZ", 8), ("FLOAT8E5M2", 8), ("FLOAT8E5M2FNUZ", 8),
    ("FLOAT8E8M0", 8), ("UINT4", 4), ("INT4", 4), ("FLOAT4E2M1", 4), ("UINT2", 2),
    ("INT2", 2), ("FLOAT6E2M3", 6), ("FLOAT6E3M2", 6),
]:  # fmt: skip
    if hasattr(onnx.TensorProto, _name):
        BITS[getattr(onnx.TensorProto, _name)] = _bits


class Unknown(Exception):
    """A tensor or node that cannot be counted; the message says why."""


class TensorTypes:
    """(element type, static shape or None) of every named tensor of a graph."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.types: dict[str, tuple[int, tuple[int, ...] | None]] = {}
        for vi in [*graph.input, *graph.value_info, *graph.output]:
            self._add_value_info(vi)
        for t in graph.initializer:
            self.types[t.name] = (t.data_type, tuple(int(d) for d in t.dims))
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                self._add_constant(node)

    def _add_value_info(self, vi: onnx.ValueInfoProto) -> None:
        tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if tt is None:
            return
        shape: tuple[int, ...] | None = None
        if tt.HasField("shape"):
            dims = tt.shape.dim
            if all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
                shape = tuple(int(d.dim_value) for d in dims)
        prev = self.types.get(vi.name)
        if prev is None or (prev[1] is None and shape is not None):
            self.types[vi.name] = (tt.elem_type, shape)

    def _add_constant(self, node: onnx.NodeProto) -> None:
        for a in node.attribute:
            if a.name == "value":
                self.types[node.output[0]] = (a.t.data_type, tuple(int(d) for d in a.t.dims))
            elif a.name == "sparse_value":
                v = a.sparse_tensor.values
                self.types[node.output[0]] = (v.data_type, tuple(a.sparse_tensor.dims))
            elif a.name in ("value_float", "value_int"):
                dt = onnx.TensorProto.FLOAT if a.name == "value_float" else onnx.TensorProto.INT64
                self.types[node.output[0]] = (dt, ())
            elif a.name in ("value_floats", "value_ints"):
                n = len(a.floats) if a.name == "value_floats" else len(a.ints)
                dt = onnx.TensorProto.FLOAT if a.name == "value_floats" else onnx.TensorProto.INT64
                self.types[node.output[0]] = (dt, (n,))

    def shape(self, name: str) -> tuple[int, ...]:
        t = self.types.get(name)
        if t is None or t[1] is None:
            raise Unknown(f"shape of {name!r} unknown")
        return t[1]

    def has_shape(self, name: str) -> bool:
        t = self.types.get(name)
        return t is not None and t[1] is not None

    def numel(self, name: str) -> int:
        return math.prod(self.shape(name))

    def nbytes(self, name: str) -> float:
        t = self.types.get(name)
        if t is None or t[1] is None:
            raise Unknown(f"shape of {name!r} unknown")
        bits = BITS.get(t[0])
        if bits is None:
            raise Unknown(f"element size of {name!r} unknown (data type {t[0]})")
        return math.ceil(math.prod(t[1]) * bits / 8)


# --- the graph that is counted ----------------------------------------------------------------


def prepare(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None
) -> onnx.ModelProto:
    """A copy of ``model`` ready to count: large initializers without their data, graph inputs
    fixed to ``input_shapes``, symbolic output shapes cleared, model-local functions inlined."""
    m = _skeleton(model)
    if input_shapes:
        _fix_input_shapes(m, input_shapes)
    for o in m.graph.output:
        # A declared output shape with symbolic (or invalid -1) dims would stop inference from
        # writing the static one it finds.
        tt = o.type.tensor_type
        if any(not d.HasField("dim_value") or d.dim_value < 0 for d in tt.shape.dim):
            tt.ClearField("shape")
    if m.functions:
        try:
            from onnx import inliner

            m = inliner.inline_local_functions(m)
        except Exception as e:  # noqa: BLE001
            log.warning("could not inline local functions (%s); their calls count as unknown", e)
    return m


def infer_types(m: onnx.ModelProto) -> TensorTypes:
    """Element types and static shapes of every tensor of ``m`` (a ``prepare``d model)."""
    # Shapes come from a twin in which onnxruntime's contrib ops (which onnx cannot infer)
    # stand as standard ops with the same output shapes; the counting walks the real graph.
    twin = _infer(_standard_twin(m))
    types = TensorTypes(twin.graph)
    needed = {i for n in twin.graph.node for i in n.input if i}
    needed |= {o.name for o in twin.graph.output}
    if any(not types.has_shape(o) for n in twin.graph.node for o in n.output if o in needed):
        types = TensorTypes(_fold_shape_arithmetic(twin, types).graph)
    return types


def _fix_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]]) -> None:
    known = {i.name: i for i in model.graph.input}
    for name, dims in shapes.items():
        if name not in known:
            raise ValueError(f"no graph input named {name!r}")
        tt = known[name].type.tensor_type
        tt.shape.Clear()
        for d in dims:
            tt.shape.dim.add().dim_value = int(d)


def _skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose large initializers keep their name, type and dims but not their data:
    counting needs shapes only, and shape inference serializes the model each time."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    # Below IR 4, shape inference ignores initializers that are not also graph inputs, which
    # is how onnxruntime saves optimized IR-3 models.
    m.ir_version = max(m.ir_version, 4)
    for t in m.graph.initializer:
        if math.prod(t.dims) > FOLD_LIMIT or t.data_location == onnx.TensorProto.EXTERNAL:
            light = onnx.TensorProto(name=t.name, data_type=t.data_type, dims=t.dims)
            t.CopyFrom(light)
    return m


def _twin_nodes(node: onnx.NodeProto, fresh: Callable[[], str]) -> list[onnx.NodeProto] | None:
    """Standard ops giving a contrib node's main outputs their shapes, or None."""
    op, ins, outs = node.op_type, list(node.input), list(node.output)
    attrs = [a for a in node.attribute if not a.name.startswith("activation")]

    def make(op_type: str, inputs: Sequence[str], output: str, **kw: Any) -> onnx.NodeProto:
        n = helper.make_node(op_type, list(inputs), [output], **kw)
        if op_type == node.op_type.removeprefix("Fused"):
            n.attribute.extend(attrs)
        return n

    if op == "FusedConv":
        return [make("Conv", ins[:3], outs[0])]
    if op == "FusedGemm":
        return [make("Gemm", ins[:3], outs[0])]
    if op == "FusedMatMul" and not any(
        a.i for a in node.attribute if a.name in ("transA", "transB", "transBatchA", "transBatchB")
    ):
        return [helper.make_node("MatMul", ins[:2], outs[:1])]
    if op in ("Gelu", "FastGelu", "QuickGelu", "SimplifiedLayerNormalization",
              "LayerNormalization", "QLinearSigmoid", "QLinearLeakyRelu"):  # fmt: skip
        return [helper.make_node("Identity", ins[:1], outs[:1])]
    if op in ("SkipLayerNormalization", "SkipSimplifiedLayerNormalization"):
        return [
            helper.make_node("Identity", ins[:1], [o])
            for i, o in enumerate(outs)
            if o and i in (0, 3)  # output and input+skip(+bias); mean and inv_std are [..., 1]
        ]
    if op in ("BiasGelu", "BiasAdd"):
        mid = fresh()
        nodes = [helper.make_node("Add", ins[:2], [mid if op == "BiasAdd" else outs[0]])]
        if op == "BiasAdd":
            nodes.append(helper.make_node("Add", [mid, ins[2]], outs[:1]))
        return nodes
    if op in ("QLinearAdd", "QLinearMul"):
        return [helper.make_node("Add", [ins[0], ins[3]], outs[:1])]
    if op == "QLinearGlobalAveragePool" and not any(
        a.name == "channels_last" and a.i for a in node.attribute
    ):
        return [helper.make_node("GlobalAveragePool", ins[:1], outs[:1])]
    return None


def _standard_twin(m: onnx.ModelProto) -> onnx.ModelProto:
    if not any(n.domain == DOMAIN_MS for n in m.graph.node):
        return m
    twin = onnx.ModelProto()
    twin.CopyFrom(m)
    counter = iter(range(1 << 62))

    def fresh() -> str:
        return f"__lepton_twin_{next(counter)}"

    nodes: list[onnx.NodeProto] = []
    for n in twin.graph.node:
        repl = _twin_nodes(n, fresh) if n.domain == DOMAIN_MS else None
        nodes.extend(repl if repl is not None else [n])
    del twin.graph.node[:]
    twin.graph.node.extend(nodes)
    return twin


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception as e:  # noqa: BLE001 - a model we cannot infer is still partly countable
        log.warning("shape inference failed (%s); counting with the shapes the model states", e)
        return model


def _fold_shape_arithmetic(m: onnx.ModelProto, types: TensorTypes) -> onnx.ModelProto:
    """``m`` with the static shapes that constant folding finds added to its value_info.

    The folder runs on an onnx-ir copy with incremental shape inference; every value it
    replaces keeps the shape inferred for it, so the shapes are read from the copy's values
    under their original names, whether or not folding kept them in the graph.
    """
    # Imported here: only graphs that inference alone cannot finish need them, and together
    # they take longer to import than most graphs take to count.
    import onnx_ir as ir
    from onnxscript.optimizer import fold_constants

    model = ir.serde.deserialize_model(m)
    values = {v.name: v for node in model.graph for v in node.outputs if v.name}

    def small_inputs_only(node: ir.Node) -> bool | None:
        # Large initializers carry no data here (see _skeleton), and weights are not shape
        # arithmetic: onnxscript would fold a single-use Transpose of one whatever its size.
        for v in node.inputs:
            if v is not None and v.const_value is not None and v.const_value.size > FOLD_LIMIT:
                return False
        return None

    try:
        fold_constants(
            model,
            onnx_shape_inference=True,
            input_size_limit=FOLD_LIMIT,
            output_size_limit=FOLD_LIMIT,
            should_fold=small_inputs_only,
        )
    except Exception as e:  # noqa: BLE001 - the shapes inference found still count
        log.warning("constant folding for shapes failed (%s); some shapes stay unknown", e)
        return m
    for name, v in values.items():
        if types.has_shape(name) or not isinstance(v.type, ir.TensorType):
            continue
        if v.shape is None or not v.shape.is_static():
            continue
        dims = [int(d) for d in v.shape.numpy()]
        elem = int(v.type.dtype)
        m.graph.value_info.append(helper.make_tensor_value_info(name, elem, dims))
    return m
