"""The ModelProto a quantization pass works on, and the ir.Model it hands back.

onnxruntime's tools take and give ModelProtos and select nodes by name, so every pass here
starts from a copy of the model whose nodes all have unique names (``ensure_node_names``), at
the opset the pass needs, and ends by turning the tool's result back into a sorted ir.Model.
The helpers the passes share to pick their nodes (element types, constant initializers, float
nodes of given op types) live here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnx_ir.passes.common
from onnx import helper, version_converter

from lepton_compile.passes.model_size import over_limit
from lepton_compile.passes.walk import proto_nodes

ONNX_DOMAINS = ("", "ai.onnx")
FLOAT = onnx.TensorProto.FLOAT

# Per-channel QuantizeLinear/DequantizeLinear (the `axis` attribute) arrived in opset 13.
QDQ_MIN_OPSET = 13


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` whose every node (subgraphs included) has a unique name.

    Unnamed and repeated names become ``f"{op_type}_{index}"`` (index: position in a
    depth-first walk of the graphs), with a suffix where that is taken. onnxruntime's tools
    select nodes by name, so the passes and their ``candidates()`` both call this first.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = list(proto_nodes(out.graph))
    taken: set[str] = set()
    rename: list[int] = []
    for i, node in enumerate(nodes):
        if node.name and node.name not in taken:
            taken.add(node.name)
        else:
            rename.append(i)
    for i in rename:
        node = nodes[i]
        base = f"{node.op_type}_{i}"
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        node.name = name
        taken.add(name)
    return out


def to_proto(model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
    """The model as a ModelProto; never the caller's object when given one (callers mutate)."""
    if isinstance(model, onnx.ModelProto):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    return ir.serde.serialize_model(model)


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ONNX_DOMAINS), 0)


def upgrade_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """`model` at default-domain opset >= `version` (onnx's version converter), names kept."""
    if default_opset(model) >= version:
        return model
    converted = version_converter.convert_version(model, version)
    return ensure_node_names(converted)


def prepare(model: ir.Model | onnx.ModelProto, min_opset: int = 0) -> onnx.ModelProto:
    """The proto a pass works on: a named copy, upgraded to `min_opset` where lower."""
    proto = ensure_node_names(to_proto(model))
    if min_opset:
        proto = upgrade_opset(proto, min_opset)
    return proto


def elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every main-graph tensor that onnx type inference can tell."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is a hint here; the passes fall back to declared types
        inferred = model
    g = inferred.graph
    types: dict[str, int] = {}
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for init in g.initializer:
        types[init.name] = init.data_type
    return types


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    """Initializers that are constants (not also graph inputs a user may override)."""
    inputs = {i.name for i in graph.input}
    return {t.name: t for t in graph.initializer if t.name not in inputs}


def node_attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    """The value of `node`'s attribute `name`, `default` where it has none."""
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def check_exclusions(nodes_to_exclude: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(nodes_to_exclude, str):
        raise TypeError("nodes_to_exclude takes a sequence of node names, not one string")
    return tuple(nodes_to_exclude)


def float_nodes(
    model: onnx.ModelProto, op_types: Iterable[str], types: Mapping[str, int]
) -> list[onnx.NodeProto]:
    """Main-graph nodes of `op_types` (default domain) that read a float tensor."""
    wanted = set(op_types)
    return [
        n
        for n in model.graph.node
        if n.op_type in wanted
        and n.domain in ONNX_DOMAINS
        and any(types.get(i) == FLOAT for i in n.input if i)
    ]


def drop_unused_initializers(graph: onnx.GraphProto, names: Iterable[str]) -> None:
    """Remove the initializers among `names` that no node (subgraphs included) or output reads."""
    used = {i for n in proto_nodes(graph) for i in n.input}
    used.update(o.name for o in graph.output)
    for name in set(names) - used:
        for k, t in enumerate(graph.initializer):
            if t.name == name:
                del graph.initializer[k]
                break


def save(model: onnx.ModelProto, path: Path) -> bool:
    """Write `model`; a model past protobuf's limit goes with external data. True if so."""
    external = over_limit(model)
    onnx.save(model, str(path), save_as_external_data=external, location=path.name + ".data")
    return external


def unchanged(model: ir.Model | onnx.ModelProto) -> ir.passes.PassResult:
    """modified=False, with a model object that is not the caller's (a functional pass)."""
    return ir.passes.PassResult(ir.serde.deserialize_model(to_proto(model)), modified=False)


def finish(model: onnx.ModelProto) -> ir.passes.PassResult:
    """The tool's result as a topologically sorted ir.Model, modified=True."""
    out = ir.serde.deserialize_model(model)
    onnx_ir.passes.common.TopologicalSortPass()(out)
    return ir.passes.PassResult(out, modified=True)
