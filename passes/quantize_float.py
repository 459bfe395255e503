"""Float precision passes: FP16 and BF16 compute with FP32 inputs/outputs, FP8 E4M3 QDQ.

FP16 wraps onnxruntime's converter (``onnxruntime.transformers.float16``) and fixes what it
gets wrong. BF16 and FP8 are written here on onnx-ir: onnxruntime's converter does FP16 only,
and its FP8 quantization (``quantize_static`` with ``QFLOAT8E4M3FN``) takes only the
Distribution calibration, whose scale comes from a standard deviation (std / std_fp8) rather
than the range: outliers saturate, and on the example CNN the class scores moved by 0.17.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper

from lepton_compile.passes.model_size import over_limit
from lepton_compile.passes.quantize import (
    _check_exclusions,
    _count_calibration,
    _default_opset,
    _elem_types,
    _finish,
    _initializers,
    _prepare,
    _quiet_root_logger,
    _unchanged,
    _upgrade_opset,
    _walk_nodes,
    check_calibration,
    ensure_node_names,
)

log = logging.getLogger(__name__)

FLOAT = onnx.TensorProto.FLOAT

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
FP16_MAX = 65504.0
# Smallest FP16 subnormal. Smaller magnitudes become this, with their sign, rather than zero:
# an epsilon (x + 1e-12 before a division) must stay an epsilon.
FP16_TINY = 5.96e-08
# Opset 22 adds bfloat16 to Conv, pooling and most of the ops it lacked before.
BF16_OPSET = 22
BF16_IR_VERSION = 10
BF16_MAX = float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
FP8_E4M3_MAX = 448.0
# QuantizeLinear/DequantizeLinear take float8 in opset 19 (IR 9).
FP8_OPSET = 19
FP8_IR_VERSION = 9
FP8_OP_TYPES = ("Conv", "Gemm", "MatMul")


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


# -- FP16 -----------------------------------------------------------------------------------


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
        self.nodes_to_exclude = _check_exclusions(nodes_to_exclude)

    def _candidates(self, proto: onnx.ModelProto) -> list[str]:
        return _float_io_nodes(
            proto.graph, _elem_types(proto), self.block_list, set(self.nodes_to_exclude)
        )

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """Main-graph nodes that touch a float tensor and are neither blocked nor excluded."""
        return self._candidates(_prepare(model))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        proto = _prepare(model)
        if not self._candidates(proto):
            return _unchanged(model)
        # The converter turns `value` tensors of Constant nodes to FP16 but leaves
        # value_float(s), whose FP32 output then meets FP16 tensors: make them tensors first.
        _constants_as_tensors(proto.graph)
        # It also turns every float value_info to FP16, those of initializers it keeps FP32
        # (read only by blocked nodes) included, and then believes them: drop those entries.
        _drop_value_info(proto.graph)
        with _quiet_root_logger():
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
        return _finish(converted)


def _drop_value_info(graph: onnx.GraphProto) -> None:
    """Remove value_info entries of initializers and graph inputs/outputs (declared there)."""
    declared = {t.name for t in graph.initializer}
    declared.update(v.name for v in (*graph.input, *graph.output))
    keep = [vi for vi in graph.value_info if vi.name not in declared]
    del graph.value_info[:]
    graph.value_info.extend(keep)


def _constants_as_tensors(graph: onnx.GraphProto) -> None:
    """Constant nodes with value_float / value_floats get the same value as a `value` tensor."""
    for node in _walk_nodes(graph):
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


# -- BF16 -----------------------------------------------------------------------------------


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
    if node.domain not in ("", "ai.onnx") or any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute
    ):
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


class _Names:
    """Fresh value/node names for one graph."""

    def __init__(self, graph: ir.Graph):
        self.taken: set[str] = set(graph.initializers)
        self.taken.update(v.name for v in graph.inputs if v.name)
        for node in ir.traversal.RecursiveGraphIterator(graph):
            self.taken.update(v.name for v in node.outputs if v.name)
            if node.name:
                self.taken.add(node.name)

    def __call__(self, base: str) -> str:
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


def _cast(names: _Names, value: ir.Value, to: ir.DataType, tag: str) -> ir.Node:
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
        self.nodes_to_exclude = _check_exclusions(nodes_to_exclude)

    def _plan(self, model: ir.Model | onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
        proto = _prepare(model)
        if _default_opset(proto) < BF16_OPSET:
            try:
                proto = _upgrade_opset(proto, BF16_OPSET)
                proto.ir_version = max(proto.ir_version, BF16_IR_VERSION)
            except Exception as e:  # an op without a version adapter: schemas decide per node
                log.info("BF16: opset stays %d (%s)", _default_opset(proto), e)
        types = _elem_types(proto)
        opset = _default_opset(proto)
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
            return _unchanged(model)
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
    names = _Names(graph)
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
    wants = {(n, i) for n in graph if n.name in plan for i in plan[n.name].inputs}
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


# -- FP8 ------------------------------------------------------------------------------------


def _fp8(array: np.ndarray) -> np.ndarray:
    return np.clip(array, -FP8_E4M3_MAX, FP8_E4M3_MAX).astype(ml_dtypes.float8_e4m3fn)


def _scale(amax: np.ndarray) -> np.ndarray:
    """Symmetric E4M3 scale amax/448; a zero or non-finite range gets 1 (any scale fits 0)."""
    amax = np.asarray(amax, dtype=np.float32)
    ok = np.isfinite(amax) & (amax > 0)
    return np.where(ok, amax / np.float32(FP8_E4M3_MAX), np.float32(1.0)).astype(np.float32)


class QuantizeFP8Pass(ir.passes.FunctionalPass):
    """FP8 E4M3FN QDQ for Conv/Gemm/MatMul: symmetric scales amax/448, float8 zero points.

    Activations: QuantizeLinear -> DequantizeLinear with a per-tensor scale from the largest
    magnitude seen on the calibration feeds (run through onnxruntime). Constant weights are
    stored as float8 with a DequantizeLinear, per output channel if ``per_channel``. The
    model goes to opset 19 where it is lower. Runs as fake-quant on onnxruntime's CPU.
    """

    def __init__(
        self,
        calibration: Sequence[Mapping[str, np.ndarray]],
        nodes_to_exclude: Sequence[str] = (),
        per_channel: bool = False,
    ):
        super().__init__()
        self.calibration = _count_calibration(calibration, "FP8 quantization")
        self.nodes_to_exclude = _check_exclusions(nodes_to_exclude)
        self.per_channel = per_channel

    def _candidates(self, proto: onnx.ModelProto) -> list[str]:
        types = _elem_types(proto)
        excluded = set(self.nodes_to_exclude)
        return [
            n.name
            for n in proto.graph.node
            if n.op_type in FP8_OP_TYPES
            and n.domain in ("", "ai.onnx")
            and n.name not in excluded
            and len(n.input) >= 2
            and types.get(n.input[0]) == FLOAT
            and types.get(n.input[1]) == FLOAT
        ]

    def candidates(self, model: ir.Model | onnx.ModelProto) -> list[str]:
        """Conv, Gemm and MatMul nodes with float inputs, less the exclusions."""
        return self._candidates(_prepare(model, FP8_OPSET))

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        proto = _prepare(model, FP8_OPSET)
        feeds = check_calibration(self.calibration, proto, "FP8 quantization")
        names = self._candidates(proto)
        if not names:
            return _unchanged(model)
        consts = _initializers(proto.graph)
        acts: list[str] = []
        for node in proto.graph.node:
            if node.name in names:
                acts.extend(x for x in node.input[:2] if x not in consts and x not in acts)
        amax = _calibrate_amax(proto, acts, feeds)
        out = ir.serde.deserialize_model(proto)
        _insert_fp8_qdq(out.graph, set(names), amax, self.per_channel)
        out.ir_version = max(out.ir_version or 0, FP8_IR_VERSION)
        return ir.passes.PassResult(out, modified=True)


def _calibrate_amax(
    model: onnx.ModelProto, names: Sequence[str], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, float]:
    """Largest finite magnitude of each named tensor over the feeds, on onnxruntime's CPU."""
    aug = onnx.ModelProto()
    aug.CopyFrom(model)
    outputs = {o.name for o in aug.graph.output}
    inputs = {i.name for i in aug.graph.input}
    for name in names:
        if name not in outputs and name not in inputs:
            aug.graph.output.append(helper.make_tensor_value_info(name, FLOAT, None))
    fetch = [n for n in names if n not in inputs]
    amax = dict.fromkeys(names, 0.0)
    sess = None
    if fetch:
        sess = _session(aug)
    for feed in feeds:
        got = dict(zip(fetch, sess.run(fetch, dict(feed)), strict=True)) if sess else {}
        got.update({n: feed[n] for n in names if n in inputs})
        for name in names:
            a = np.abs(np.asarray(got[name], dtype=np.float32))
            a = a[np.isfinite(a)]
            if a.size:
                amax[name] = max(amax[name], float(a.max()))
    return amax


def _session(model: onnx.ModelProto):
    """An onnxruntime CPU session without graph optimizations or console warnings.

    A model over the protobuf limit is loaded from a file with its external data.
    """
    import tempfile
    from pathlib import Path

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with _quiet_root_logger():
        if not over_limit(model):
            return ort.InferenceSession(
                model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
            )
        with tempfile.TemporaryDirectory(prefix="lepton-q-") as tmp:
            path = Path(tmp) / "calibrate.onnx"
            onnx.save(model, str(path), save_as_external_data=True, location="calibrate.data")
            # The session reads the weights while it is built: the files may go afterwards.
            return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _weight_axis(node: ir.Node, index: int, rank: int) -> int | None:
    """The output-channel axis of a weight input, None for a per-tensor scale."""
    if index != 1 or rank < 2:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans = node.attributes.get("transB")
        return 0 if trans is not None and trans.as_int() else 1
    return rank - 1


def _insert_fp8_qdq(
    graph: ir.Graph, nodes: set[str], amax: Mapping[str, float], per_channel: bool
) -> None:
    names = _Names(graph)
    done: dict[tuple[ir.Value, int | None], ir.Value] = {}
    weights: list[str] = []
    wants = {(n, i) for n in graph if n.name in nodes for i in (0, 1)}

    def const(base: str, array: np.ndarray) -> ir.Value:
        t = ir.Tensor(array, name=names(base))
        v = ir.Value(name=t.name, shape=ir.Shape(array.shape), type=ir.TensorType(t.dtype))
        v.const_value = t
        graph.register_initializer(v)
        return v

    def dq(base: str, q: ir.Value, scale: ir.Value, zp: ir.Value, axis: int | None) -> ir.Node:
        attrs = [ir.AttrInt64("axis", axis)] if axis is not None else []
        out = ir.Value(name=names(f"{base}_dq"), type=ir.TensorType(ir.DataType.FLOAT))
        return ir.Node(
            "",
            "DequantizeLinear",
            [q, scale, zp],
            attrs,
            outputs=[out],
            name=names(f"{base}_DequantizeLinear"),
        )

    def weight(node: ir.Node, v: ir.Value, w: np.ndarray, axis: int | None) -> ir.Value:
        base = v.name or "w"
        if axis is None:
            s = _scale(np.abs(w).max(initial=0.0))
            s_b = s
        else:
            red = tuple(d for d in range(w.ndim) if d != axis)
            s = _scale(np.abs(w).max(axis=red, initial=0.0))
            s_b = s.reshape([-1 if d == axis else 1 for d in range(w.ndim)])
        q = const(f"{base}_fp8", _fp8(w / s_b))
        scale = const(f"{base}_scale", s)
        zp = const(f"{base}_zero_point", np.zeros(s.shape, ml_dtypes.float8_e4m3fn))
        deq = dq(base, q, scale, zp, axis)
        graph.insert_before(node, deq)
        deq.outputs[0].shape = v.shape
        weights.append(v.name or "")
        return deq.outputs[0]

    def activation(node: ir.Node, v: ir.Value, scale_of: str) -> ir.Value:
        base = v.name or "x"
        scale = const(f"{base}_scale", _scale(amax.get(scale_of, 0.0)))
        zp = const(f"{base}_zero_point", np.zeros((), ml_dtypes.float8_e4m3fn))
        qv = ir.Value(
            name=names(f"{base}_fp8"),
            type=ir.TensorType(ir.DataType.FLOAT8E4M3FN),
            shape=v.shape,
        )
        quant = ir.Node(
            "", "QuantizeLinear", [v, scale, zp], outputs=[qv], name=names(f"{base}_QuantizeLinear")
        )
        deq = dq(base, qv, scale, zp, None)
        graph.insert_before(node, [quant, deq])
        deq.outputs[0].shape = v.shape
        return deq.outputs[0]

    for node in list(graph):
        if node.name not in nodes:
            continue
        for i in (0, 1):
            v = node.inputs[i]
            if v is None:
                continue
            is_weight = v.is_initializer() and not v.is_graph_input() and v.const_value is not None
            w = v.const_value.numpy() if is_weight else None
            axis = _weight_axis(node, i, w.ndim) if w is not None and per_channel else None
            key = (v, axis)
            if key not in done:
                clamp = v.producer()
                if w is not None:
                    done[key] = weight(node, v, w, axis)
                elif _clamp_feeding_only(clamp, v, wants):
                    # onnxruntime mishandles a Relu or Clip whose only reader is a float8
                    # QuantizeLinear: ReluQuantFusion deletes the Relu (it keeps it only for an
                    # int8 zero point other than -128 or a uint8 one other than 0), so negatives
                    # pass; ClipQuantFusion throws on the float8 zero point. Quantize the op's
                    # input instead, with its output's scale: the same values for Relu, since
                    # symmetric E4M3 rounding keeps signs; for Clip, the same up to one
                    # rounding step at the bounds.
                    assert clamp is not None
                    clamp.replace_input_with(0, activation(clamp, clamp.inputs[0], v.name or ""))
                    done[key] = v
                else:
                    done[key] = activation(node, v, v.name or "")
            node.replace_input_with(i, done[key])
    for name in weights:
        init = graph.initializers.get(name)
        if init is not None and not init.uses() and not init.is_graph_output():
            del graph.initializers[name]


def _clamp_feeding_only(producer: ir.Node | None, v: ir.Value, wants: set) -> bool:
    """True if `v` comes from a Relu or Clip and only quantized inputs read it."""
    return (
        producer is not None
        and producer.op_type in ("Relu", "Clip")
        and producer.domain in ("", "ai.onnx")
        and producer.inputs[0] is not None
        and not v.is_graph_output()
        and all(use in wants for use in v.uses())
    )


__all__ = [
    "BF16_BLOCK_LIST",
    "FP16_BLOCK_LIST",
    "FP8_E4M3_MAX",
    "BFloat16Pass",
    "Float16Pass",
    "QuantizeFP8Pass",
    "ensure_node_names",
]
