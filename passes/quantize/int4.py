"""INT4 weight-only, block-wise along K: onnxruntime's MatMulNBitsQuantizer (MatMulNBits, or
int4 weights with a blocked DequantizeLinear)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx
import onnx_ir as ir

from lepton_compile.passes.quantize.model import (
    check_exclusions,
    elem_types,
    finish,
    float_nodes,
    initializers,
    prepare,
    unchanged,
)
from lepton_compile.passes.quantize.quiet import quiet_root_logger
from lepton_compile.passes.walk import proto_nodes

# int4 tensors and blocked DequantizeLinear (`block_size`) arrived in opset 21 (IR 10).
INT4_QDQ_OPSET = 21
INT4_IR_VERSION = 10


def _import_nbits() -> Any:
    """onnxruntime's MatMulNBitsQuantizer, imported without its ``logging.basicConfig``."""
    with quiet_root_logger():
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    return MatMulNBitsQuantizer


class QuantizeInt4WeightOnlyPass(ir.passes.FunctionalPass):
    """INT4 weight-only, block-wise along K, for MatMuls with a constant 2-D float weight.

    ``quant_format="qoperator"``: com.microsoft MatMulNBits (onnxruntime CPU/CUDA);
    ``"qdq"``: int4 weight + blocked DequantizeLinear (opset 21) + MatMul. A K that is not a
    multiple of ``block_size`` (or is smaller) is handled, not skipped: MatMulNBits pads the
    last block, blocked DequantizeLinear has a shorter last block.
    """

    def __init__(
        self,
        block_size: int = 32,
        symmetric: bool = True,
        quant_format: str = "qoperator",
        nodes_to_exclude: Sequence[str] = (),
    ):
        super().__init__()
        if block_size < 16 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of 2 >= 16, got {block_size}")
        if quant_format not in ("qoperator", "qdq"):
            raise ValueError(f"quant_format must be qoperator or qdq, got {quant_format!r}")
        self.block_size = block_size
        self.symmetric = symmetric
        self.quant_format = quant_format
        self.nodes_to_exclude = check_exclusions(nodes_to_exclude)

    def _prepare(self, model: ir.Model | onnx.ModelProto) -> onnx.ModelProto:
        return prepare(model, INT4_QDQ_OPSET if self.quant_format == "qdq" else 0)

    def _candidates(self, proto: onnx.ModelProto) -> list[str]:
        consts = initializers(proto.graph)
        excluded = set(self.nodes_to_exclude)
        out = []
        for node in float_nodes(proto, ("MatMul",), elem_types(proto)):
            w = consts.get(node.input[1])
            if node.name in excluded or w is None:
                continue
            if w.data_type == onnx.TensorProto.FLOAT and len(w.dims) == 2:
                out.append(node.name)
        return out

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """MatMul nodes whose weight (input B) is a 2-D float initializer, any K."""
        return self._candidates(self._prepare(model))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import QuantFormat

        proto = self._prepare(model)
        names = set(self._candidates(proto))
        if not names:
            return unchanged(model)
        # The quantizer takes every MatMul not excluded: exclude all that are no candidates.
        skip = [n.name for n in proto_nodes(proto.graph) if n.name not in names]
        quantizer_cls = _import_nbits()
        with quiet_root_logger():
            quantizer = quantizer_cls(
                proto,
                bits=4,
                block_size=self.block_size,
                is_symmetric=self.symmetric,
                nodes_to_exclude=skip,
                quant_format=QuantFormat.QDQ
                if self.quant_format == "qdq"
                else QuantFormat.QOperator,
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
        out = quantizer.model.model
        if self.quant_format == "qdq":
            out.ir_version = max(out.ir_version, INT4_IR_VERSION)
        _dedupe(out.graph)
        return finish(out)


def _dedupe(graph: onnx.GraphProto) -> None:
    """Drop repeats that the nbits quantizer writes for a weight shared by several MatMuls.

    It quantizes the weight once per MatMul under the same names: the later copies (identical
    initializers, identical DequantizeLinear nodes) would break single assignment.
    """
    seen_init: set[str] = set()
    keep_init = []
    for t in graph.initializer:
        if t.name not in seen_init:
            seen_init.add(t.name)
            keep_init.append(t)
    if len(keep_init) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep_init)
    produced: dict[str, onnx.NodeProto] = {}
    keep = []
    for node in graph.node:
        first = next((produced[o] for o in node.output if o in produced), None)
        if first is not None:
            same = (
                first.op_type == node.op_type
                and first.domain == node.domain
                and list(first.input) == list(node.input)
                and list(first.attribute) == list(node.attribute)
            )
            if not same:
                raise ValueError(f"two different nodes write {node.output[0]!r}")
            continue
        produced.update((o, node) for o in node.output if o)
        keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
