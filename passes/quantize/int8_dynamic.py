"""Dynamic INT8 (MatMulInteger, activations quantized at run time): onnxruntime's
quantize_dynamic, with Gemm candidates first rewritten as MatMul + Add."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper

from lepton_compile.passes.quantize.model import (
    QDQ_MIN_OPSET,
    check_exclusions,
    drop_unused_initializers,
    elem_types,
    finish,
    float_nodes,
    initializers,
    node_attr,
    prepare,
    save,
    unchanged,
)
from lepton_compile.passes.quantize.quiet import quiet_root_logger


class QuantizeDynamicInt8Pass(ir.passes.FunctionalPass):
    """Dynamic INT8 (MatMulInteger, activations quantized at run time) for constant weights.

    Meant for transformer MatMuls. ``op_types`` may add "Gemm": onnxruntime's dynamic
    quantizer has no Gemm (its IntegerOps registry lacks one), so a Gemm candidate is first
    rewritten here as MatMul (keeping the Gemm's name) + Add, with alpha folded into the weight.
    """

    def __init__(
        self,
        op_types: Sequence[str] = ("MatMul",),
        per_channel: bool = False,
        nodes_to_exclude: Sequence[str] = (),
    ):
        super().__init__()
        unknown = sorted(set(op_types) - {"MatMul", "Gemm"})
        if unknown:
            raise ValueError(f"dynamic INT8 quantizes MatMul and Gemm, not {', '.join(unknown)}")
        self.op_types = tuple(op_types)
        self.per_channel = per_channel
        self.nodes_to_exclude = check_exclusions(nodes_to_exclude)

    def _candidate_nodes(self, proto: onnx.ModelProto) -> list[onnx.NodeProto]:
        consts = initializers(proto.graph)
        excluded = set(self.nodes_to_exclude)
        out = []
        for node in float_nodes(proto, self.op_types, elem_types(proto)):
            if node.name in excluded or len(node.input) < 2:
                continue
            w = consts.get(node.input[1])
            if w is None or w.data_type != onnx.TensorProto.FLOAT or len(w.dims) != 2:
                continue
            if node.op_type == "Gemm":
                if node_attr(node, "transA", 0):
                    continue
                c = node.input[2] if len(node.input) > 2 else ""
                if c and c not in consts and node_attr(node, "beta", 1.0) != 1.0:
                    continue
            out.append(node)
        return out

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """MatMul (and Gemm, if asked) nodes with a 2-D float initializer weight."""
        return [n.name for n in self._candidate_nodes(prepare(model, QDQ_MIN_OPSET))]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        proto = prepare(model, QDQ_MIN_OPSET)
        nodes = self._candidate_nodes(proto)
        if not nodes:
            return unchanged(model)
        names = [n.name for n in nodes]
        for node in nodes:
            if node.op_type == "Gemm":
                _gemm_to_matmul(proto.graph, node)
        with tempfile.TemporaryDirectory(prefix="lepton-q-") as tmp, quiet_root_logger():
            src = Path(tmp) / "in.onnx"
            dst = Path(tmp) / "out.onnx"
            external = save(proto, src)
            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=["MatMul"],
                per_channel=self.per_channel,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=names,
                nodes_to_exclude=list(self.nodes_to_exclude),
                use_external_data_format=external,
                extra_options={"MatMulConstBOnly": True},
            )
            out = onnx.load(str(dst))
        return finish(out)


def _fresh(graph: onnx.GraphProto, base: str) -> str:
    taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
    taken.update(o for n in graph.node for o in n.output)
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _gemm_to_matmul(graph: onnx.GraphProto, gemm: onnx.NodeProto) -> None:
    """Rewrite a Gemm with a constant B (transA=0) in place as MatMul (same name) + Add."""
    consts = initializers(graph)
    alpha = float(node_attr(gemm, "alpha", 1.0))
    beta = float(node_attr(gemm, "beta", 1.0))
    b = numpy_helper.to_array(consts[gemm.input[1]])
    w = (b.T if node_attr(gemm, "transB", 0) else b) * np.float32(alpha)
    w_name = _fresh(graph, f"{gemm.input[1]}_matmul")
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w, np.float32), w_name))
    c = gemm.input[2] if len(gemm.input) > 2 else ""
    out = gemm.output[0]
    new: list[onnx.NodeProto] = []
    if c:
        if beta != 1.0:
            c_arr = numpy_helper.to_array(consts[c]) * np.float32(beta)
            c = _fresh(graph, f"{c}_beta")
            graph.initializer.append(numpy_helper.from_array(c_arr.astype(np.float32), c))
        mm_out = _fresh(graph, f"{out}_matmul")
        new.append(helper.make_node("MatMul", [gemm.input[0], w_name], [mm_out], name=gemm.name))
        new.append(helper.make_node("Add", [mm_out, c], [out], name=f"{gemm.name}_bias"))
    else:
        new.append(helper.make_node("MatMul", [gemm.input[0], w_name], [out], name=gemm.name))
    old_inputs = list(gemm.input[1:])
    idx = list(graph.node).index(gemm)
    del graph.node[idx]
    for k, n in enumerate(new):
        graph.node.insert(idx + k, n)
    drop_unused_initializers(graph, old_inputs)
