"""BF16 compute with FP32 graph inputs and outputs, written on onnx-ir: per node, the op
schema decides which inputs and outputs turn BF16, and Casts go where BF16 and FP32 meet."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir

from lepton_compile.passes._utils import FreshNames
from lepton_compile.passes.quantize.float16 import FP16_BLOCK_LIST
from lepton_compile.passes.quantize.model import (
    FLOAT,
    check_exclusions,
    default_opset,
    elem_types,
    prepare,
    unchanged,
    upgrade_opset,
)
from lepton_compile.passes.walk import node_subgraphs

log = logging.getLogger(__name__)

# BF16 has FP32's range, so fewer ops are fragile; quantization ops stay FP32 (their scales
# would lose precision), as do ops whose output type comes from a `dtype` attribute.
BF16_BLOCK_LIST = (
    *FP16_BLOCK_LIST,
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "RandomNormal",
    "RandomUniform",
    "EyeLike",
    "Bernoulli",
    "Multinomial",
)
# Opset 22 adds bfloat16 to Conv, pooling and most of the ops it lacked before.
BF16_OPSET = 22
BF16_IR_VERSION = 10
BF16_MAX = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)


@dataclass(frozen=True)
class _Bf16Node:
    """Which inputs and outputs of a node turn BF16."""

    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def _formal(params: Sequence[onnx.defs.OpSchema.FormalParameter], i: int):
    if i < len(params):
        return params[i]
    last = params[-1] if params else None
    variadic = onnx.defs.OpSchema.FormalParameterOption.Variadic
    return last if last is not None and last.option == variadic else None


def _bf16_node(node: onnx.NodeProto, types: Mapping[str, int], opset: int) -> _Bf16Node | None:
    """The BF16 plan of one node, from its schema: every type variable bound to float that
    admits bfloat16 and is fixed by an input turns BF16; None if nothing does."""
    if node.domain not in ("", "ai.onnx") or next(node_subgraphs(node), None) is not None:
        return None
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    allows = {
        c.type_param_str: "tensor(bfloat16)" in c.allowed_type_strs for c in schema.type_constraints
    }
    in_types = [types.get(x) if x else None for x in node.input]
    out_types = [types.get(x) if x else None for x in node.output]
    if node.op_type in ("Constant", "ConstantOfShape"):
        ok = out_types[0] == FLOAT and allows.get(schema.outputs[0].type_str, False)
        if node.op_type == "Constant":  # a sparse_value stays as it is
            ok = ok and any(
                a.name in ("value", "value_float", "value_floats") for a in node.attribute
            )
        return _Bf16Node((), (0,)) if ok else None
    ins: tuple[int, ...]
    outs: tuple[int, ...]
    if node.op_type == "Cast":
        ins = (0,) if in_types[0] == FLOAT and allows.get("T1", False) else ()
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        outs = (0,) if to == FLOAT and allows.get("T2", False) else ()
        return _Bf16Node(ins, outs) if ins or outs else None
    in_params = [_formal(schema.inputs, i) for i in range(len(node.input))]
    out_params = [_formal(schema.outputs, i) for i in range(len(node.output))]
    if any(p is None or not p.is_homogeneous for p in (*in_params, *out_params)):
        return None
    bound = {p.type_str for p, t in zip(in_params, in_types, strict=True) if t == FLOAT}
    other = {
        p.type_str for p, t in zip(in_params, in_types, strict=True) if t is not None and t != FLOAT
    }
    convert = {v for v in bound - other if allows.get(v, False)}
    if not convert:
        return None
    ins = tuple(
        i
        for i, (p, t) in enumerate(zip(in_params, in_types, strict=True))
        if p.type_str in convert and t == FLOAT
    )
    outs = tuple(j for j, p in enumerate(out_params) if p.type_str in convert and node.output[j])
    return _Bf16Node(ins, outs)


def _to_bf16(array: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even into bfloat16; finite values beyond its range clip, never inf."""
    a = np.asarray(array, dtype=np.float32)
    a = np.where(np.isfinite(a), np.clip(a, -BF16_MAX, BF16_MAX), a)
    return a.astype(ml_dtypes.bfloat16)


def _cast(names: FreshNames, value: ir.Value, to: ir.DataType, tag: str) -> ir.Node:
    out = ir.Value(name=names(f"{value.name}_{tag}"), type=ir.TensorType(to), shape=value.shape)
    return ir.Node(
        "",
        "Cast",
        [value],
        [ir.AttrInt64("to", to)],
        outputs=[out],
        name=names(f"{value.name}_cast_{tag}"),
    )


class BFloat16Pass(ir.passes.FunctionalPass):
    """Convert float compute to BF16, keeping FP32 graph inputs and outputs.

    Written on onnx-ir: onnxruntime's converter does FP16 only. The model goes to opset 22
    (BF16 for Conv and pooling) where it is lower; per node, the op schema decides which
    inputs and outputs turn BF16 (e.g. Resize scales stay float), Casts are inserted where
    BF16 and FP32 meet (graph boundary, blocked and excluded nodes), float initializers and
    Constant values are rounded to nearest even, and Cast `to` FLOAT becomes BFLOAT16.
    onnxruntime's CPU provider has few BF16 kernels: run the result on the lepton backend.
    """

    def __init__(
        self, block_list: Sequence[str] = BF16_BLOCK_LIST, nodes_to_exclude: Sequence[str] = ()
    ):
        super().__init__()
        self.block_list = list(block_list)
        self.nodes_to_exclude = check_exclusions(nodes_to_exclude)

    def _plan(self, model: ir.Model | onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
        proto = prepare(model)
        if default_opset(proto) < BF16_OPSET:
            try:
                proto = upgrade_opset(proto, BF16_OPSET)
                proto.ir_version = max(proto.ir_version, BF16_IR_VERSION)
            except Exception as e:  # an op without a version adapter: schemas decide per node
                log.info("BF16: opset stays %d (%s)", default_opset(proto), e)
        types = elem_types(proto)
        opset = default_opset(proto)
        blocked, excluded = set(self.block_list), set(self.nodes_to_exclude)
        plan: dict[str, _Bf16Node] = {}
        for node in proto.graph.node:
            if node.op_type in blocked or node.name in excluded:
                continue
            p = _bf16_node(node, types, opset)
            if p is not None:
                plan[node.name] = p
        return proto, plan

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """Main-graph nodes with a float tensor that turns BF16, less blocked and excluded."""
        _, plan = self._plan(model)
        return list(plan)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        proto, plan = self._plan(model)
        if not plan:
            return unchanged(model)
        out = ir.serde.deserialize_model(proto)
        ir.passes.common.TopologicalSortPass()(out)
        _apply_bf16(out.graph, plan)
        return ir.passes.PassResult(out, modified=True)


def _bf16_attrs(node: ir.Node) -> None:
    """Constant values, ConstantOfShape fill values and Cast targets, turned BF16."""
    attrs = node.attributes
    if node.op_type == "Cast":
        attrs["to"] = ir.AttrInt64("to", ir.DataType.BFLOAT16)
    elif node.op_type == "Constant":
        for key in ("value", "value_float", "value_floats"):
            if key in attrs:
                a = attrs.pop(key)
                data = a.value.numpy() if key == "value" else np.array(a.value, np.float32)
                attrs["value"] = ir.AttrTensor("value", ir.Tensor(_to_bf16(data)))
                break
    elif node.op_type == "ConstantOfShape":
        fill = attrs["value"].value.numpy() if "value" in attrs else np.zeros(1, np.float32)
        attrs["value"] = ir.AttrTensor("value", ir.Tensor(_to_bf16(fill)))


def _apply_bf16(graph: ir.Graph, plan: Mapping[str, _Bf16Node]) -> None:
    names = FreshNames(graph)
    bf16: dict[ir.Value, None] = {}  # values now BF16, in the order they turned
    to_bf16: dict[ir.Value, ir.Value] = {}  # FP32 value -> its BF16 copy
    converted_inits: list[str] = []
    for node in list(graph):
        p = plan.get(node.name or "")
        if p is None:
            continue
        for i in p.inputs:
            v = node.inputs[i]
            if v is None or v in bf16:
                continue
            if v not in to_bf16:
                if v.is_initializer() and not v.is_graph_input() and v.const_value is not None:
                    t = ir.Tensor(_to_bf16(v.const_value.numpy()), name=names(f"{v.name}_bf16"))
                    new = ir.Value(name=t.name, shape=v.shape, type=ir.TensorType(t.dtype))
                    new.const_value = t
                    graph.register_initializer(new)
                    converted_inits.append(v.name or "")
                else:
                    cast = _cast(names, v, ir.DataType.BFLOAT16, "bf16")
                    graph.insert_before(node, cast)
                    new = cast.outputs[0]
                to_bf16[v] = new
                bf16[new] = None
            node.replace_input_with(i, to_bf16[v])
        for j in p.outputs:
            v = node.outputs[j]
            v.dtype = ir.DataType.BFLOAT16
            bf16[v] = None
        if node.op_type in ("Cast", "Constant", "ConstantOfShape") and p.outputs:
            _bf16_attrs(node)
    # Readers that stay FP32 (blocked, excluded, subgraphs, graph outputs) get a Cast back.
    wants = {(n, i) for n in graph if n.name in plan for i in plan[n.name or ""].inputs}
    for v in [v for v in bf16 if not v.is_initializer()]:
        users = [(u, i) for u, i in v.uses() if (u, i) not in wants]
        if not users and not v.is_graph_output():
            continue
        cast = _cast(names, v, ir.DataType.FLOAT, "fp32")
        producer = v.producer()
        if producer is not None:
            graph.insert_after(producer, cast)
        else:
            graph.insert_before(next(iter(graph)), cast)
        for u, i in users:
            u.replace_input_with(i, cast.outputs[0])
        if v.is_graph_output():
            fp32 = cast.outputs[0]
            name = v.name
            v.name = names(f"{name}_bf16")
            fp32.name = name
            for k, o in enumerate(graph.outputs):
                if o is v:
                    graph.outputs[k] = fp32
    for name in converted_inits:
        init = graph.initializers.get(name)
        if init is not None and not init.uses() and not init.is_graph_output():
            del graph.initializers[name]
