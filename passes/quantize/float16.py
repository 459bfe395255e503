"""FP16 compute with FP32 graph inputs and outputs: onnxruntime's converter, and fixes for
what it gets wrong (Constant value_float(s), value_info it believes, input Cast order)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from lepton_compile.passes.quantize.model import (
    FLOAT,
    check_exclusions,
    elem_types,
    finish,
    prepare,
    unchanged,
)
from lepton_compile.passes.quantize.quiet import quiet_root_logger
from lepton_compile.passes.walk import proto_nodes

# Ops that stay in FP32: numerically fragile in FP16 (reductions over many elements, exp/log
# ranges) or without FP16 kernels on common providers.
FP16_BLOCK_LIST = (
    "Resize",
    "Range",
    "RandomNormalLike",
    "RandomUniformLike",
    "NonMaxSuppression",
    "TopK",
    "CumSum",
    "Upsample",
    "Einsum",
    "Loop",
    "If",
    "Scan",
)
FP16_MAX = 65504.0
# Smallest FP16 subnormal. Smaller magnitudes become this, with their sign, rather than zero:
# an epsilon (x + 1e-12 before a division) must stay an epsilon.
FP16_TINY = 5.96e-08


def _float_io_nodes(
    graph: onnx.GraphProto, types: Mapping[str, int], blocked: Iterable[str], excluded: set[str]
) -> list[str]:
    """Main-graph nodes, not blocked nor excluded, that read or write a float tensor."""
    blocked = set(blocked)
    return [
        n.name
        for n in graph.node
        if n.op_type not in blocked
        and n.name not in excluded
        and any(types.get(x) == FLOAT for x in (*n.input, *n.output) if x)
    ]


class Float16Pass(ir.passes.FunctionalPass):
    """Convert float tensors and ops to FP16, keeping FP32 graph inputs and outputs.

    Blocked op types and ``nodes_to_exclude`` stay FP32 with Casts around them. Constants
    beyond FP16's range clip to +-65504 (never inf); magnitudes below its smallest subnormal
    become that subnormal (FP16_TINY), not zero.
    """

    def __init__(
        self, block_list: Sequence[str] = FP16_BLOCK_LIST, nodes_to_exclude: Sequence[str] = ()
    ):
        super().__init__()
        self.block_list = list(block_list)
        self.nodes_to_exclude = check_exclusions(nodes_to_exclude)

    def _candidates(self, proto: onnx.ModelProto) -> list[str]:
        return _float_io_nodes(
            proto.graph, elem_types(proto), self.block_list, set(self.nodes_to_exclude)
        )

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """Main-graph nodes that touch a float tensor and are neither blocked nor excluded."""
        return self._candidates(prepare(model))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = prepare(model)
        if not self._candidates(proto):
            return unchanged(model)
        # The converter turns `value` tensors of Constant nodes to FP16 but leaves
        # value_float(s), whose FP32 output then meets FP16 tensors: make them tensors first.
        _constants_as_tensors(proto.graph)
        # It also turns every float value_info to FP16, those of initializers it keeps FP32
        # (read only by blocked nodes) included, and then believes them: drop those entries.
        _drop_value_info(proto.graph)
        with quiet_root_logger():
            converted = convert_float_to_float16(
                proto,
                min_positive_val=FP16_TINY,
                max_finite_val=FP16_MAX,
                keep_io_types=True,
                op_block_list=self.block_list,
                node_block_list=list(self.nodes_to_exclude),
                disable_shape_infer=False,
            )
        # keep_io_types appends the input Casts after their consumers (onnxconverter-common
        # #208 has the same bug): _finish restores topological order.
        return finish(converted)


def _drop_value_info(graph: onnx.GraphProto) -> None:
    """Remove value_info entries of initializers and graph inputs/outputs (declared there)."""
    declared = {t.name for t in graph.initializer}
    declared.update(v.name for v in (*graph.input, *graph.output))
    keep = [vi for vi in graph.value_info if vi.name not in declared]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _constants_as_tensors(graph: onnx.GraphProto) -> None:
    """Constant nodes with value_float / value_floats get the same value as a `value` tensor."""
    for node in proto_nodes(graph):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        for k, attr in enumerate(node.attribute):
            if attr.name in ("value_float", "value_floats"):
                scalar = attr.name == "value_float"
                data = np.array(attr.f if scalar else list(attr.floats), dtype=np.float32)
                tensor = onnx.numpy_helper.from_array(data)
                del node.attribute[k]
                node.attribute.append(helper.make_attribute("value", tensor))
                break
