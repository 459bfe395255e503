"""ai.lepton ops on onnx-ir: node validation, ONNX function bodies, numpy references.

What the ops compute (schemas, activations, epilogue semantics) is the contract of
`lepton_compile.contract`; this module applies it to onnx-ir nodes. The fusion rules
(`fusion_lepton.py`) build nodes with it, and `attach_functions` gives every op used in a
model an ONNX function body so that onnx.checker and onnxruntime (which inlines model-local
functions) still run and verify a lepton-target model.

A function body can branch on neither a string attribute nor on which optional inputs
are present, so every distinct epilogue in a model gets its own body: a function
*overload* (FunctionProto.overload, NodeProto.overload; IR version >= 10) whose name
`overload_name` derives from the element type, the epilogue and the inputs present.
The base op's own attributes (pads, strides, transB, ...) are forwarded to the body by
attribute reference, so nodes that differ only in those share one body.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from lepton_compile.contract import (
    ACTIVATIONS,
    DOMAIN,
    FLOAT_TYPE_NAMES,
    MIN_IR_VERSION,
    RESIDUAL_INPUT,
    SCHEMAS,
    VERSION,
    AttrSpec,
    Epilogue,
    epilogue_from_attributes,
    same_pads,
)
from lepton_compile.passes._utils import onnx_opset

FLOAT_TYPES = frozenset(ir.DataType[name] for name in FLOAT_TYPE_NAMES)

_INF = float("inf")


def attribute_type(spec: AttrSpec) -> ir.AttributeType:
    """The onnx-ir attribute type of a contract attribute."""
    return ir.AttributeType[spec.type]


def node_epilogue(node: ir.Node) -> Epilogue:
    """The epilogue of an ai.lepton node, parameters resolved; ValueError if invalid."""
    values: dict[str, Any] = {}
    for prefix in ("activation", "post_activation"):
        values[prefix] = node.attributes.get_string(prefix, "none")
        values[f"{prefix}_params"] = node.attributes.get_floats(f"{prefix}_params", ())
    return epilogue_from_attributes(values)


def _present(node: ir.Node, index: int) -> bool:
    return len(node.inputs) > index and node.inputs[index] is not None


def validate(node: ir.Node) -> str | None:
    """None if `node` is a well-formed ai.lepton op, else what is wrong with it."""
    schema = SCHEMAS.get(node.op_type)
    if node.domain != DOMAIN or schema is None:
        return f"{node.domain}.{node.op_type} is not an op of {DOMAIN}"
    n = len(node.inputs)
    if not schema.min_inputs <= n <= len(schema.inputs):
        return f"{node.op_type} takes {schema.min_inputs} to {len(schema.inputs)} inputs, got {n}"
    if any(node.inputs[i] is None for i in range(schema.min_inputs)):
        return f"{node.op_type}: a required input is missing"
    if len(node.outputs) != 1:
        return f"{node.op_type} has one output, got {len(node.outputs)}"
    for name, attr in node.attributes.items():
        spec = schema.attribute(name)
        if spec is None:
            return f"{node.op_type} has no attribute {name!r}"
        if attr.is_ref() or attr.type != attribute_type(spec):
            return f"{node.op_type}.{name} must be a {spec.type}"
    try:
        epilogue = node_epilogue(node)
    except ValueError as e:
        return f"{node.op_type}: {e}"
    if epilogue.post_activation != "none" and not _present(node, RESIDUAL_INPUT):
        return f"{node.op_type}: post_activation needs the residual input Z"
    return None


def node_dtype(node: ir.Node) -> ir.DataType | None:
    """The element type T of a node's tensors (from the first input that records one)."""
    for value in (*node.inputs, *node.outputs):
        if value is not None and value.dtype is not None:
            return value.dtype
    return None


def _fmt(x: float) -> str:
    return "inf" if x == _INF else "-inf" if x == -_INF else f"{x:.9g}"


def _token(name: str, params: Sequence[float]) -> str:
    return f"{name}({','.join(_fmt(p) for p in params)})" if params else name


def overload_name(node: ir.Node, dtype: ir.DataType) -> str:
    """The function overload that computes `node`: type, epilogue and inputs present."""
    epilogue = node_epilogue(node)
    parts = [dtype.name.lower(), _token(epilogue.activation, epilogue.activation_params)]
    # Conv and Gemm take a missing bias themselves; FusedMatMul's bias is an extra Add.
    if node.op_type == "FusedMatMul" and _present(node, 2):
        parts.insert(1, "bias")
    if _present(node, RESIDUAL_INPUT):
        parts += ["res", _token(epilogue.post_activation, epilogue.post_activation_params)]
    return ".".join(parts)


# ---------------------------------------------------------------------------------------
# Function bodies.


class _Body:
    """Straight-line node list for a function body; values are named t0, t1, ..."""

    def __init__(self, opset: int, dtype: ir.DataType) -> None:
        self.opset = opset
        self.dtype = dtype
        self.nodes: list[ir.Node] = []

    def op(self, op_type: str, *inputs: ir.Value | None, **attrs: Any) -> ir.Value:
        attributes = [
            a if isinstance(a, ir.Attr) else ir.convenience.convert_attribute(k, a)
            for k, a in attrs.items()
        ]
        node = ir.Node("", op_type, inputs, attributes, num_outputs=1)
        node.outputs[0].name = f"t{len(self.nodes)}"
        self.nodes.append(node)
        return node.outputs[0]

    def const(self, value: float) -> ir.Value:
        array = np.array(value, dtype=self.dtype.numpy())
        out = self.op("Constant", value=ir.tensor(array))
        # What the rewriter's constant propagation would record later: keeps bodies stable.
        out.type, out.shape = ir.TensorType(self.dtype), ir.Shape([])
        return out


def _emit_activation(body: _Body, name: str, params: Sequence[float], x: ir.Value) -> ir.Value:
    opset = body.opset
    if name == "none":
        return x
    if name == "relu":
        return body.op("Relu", x)
    if name == "sigmoid":
        return body.op("Sigmoid", x)
    if name == "tanh":
        return body.op("Tanh", x)
    if name == "leaky_relu":
        return body.op("LeakyRelu", x, alpha=float(params[0]))
    if name == "clip":
        lo, hi = params
        if opset < 11:
            return body.op("Clip", x, min=float(lo), max=float(hi))
        return body.op(
            "Clip",
            x,
            body.const(lo) if lo != -_INF else None,
            body.const(hi) if hi != _INF else None,
        )
    if name == "hard_sigmoid":
        return body.op("HardSigmoid", x, alpha=float(params[0]), beta=float(params[1]))
    if name == "hardswish":
        if opset >= 14:
            return body.op("HardSwish", x)
        return body.op("Mul", x, body.op("HardSigmoid", x, alpha=1 / 6, beta=0.5))
    if name == "silu":
        return body.op("Mul", x, body.op("Sigmoid", x))
    if name == "gelu":
        if opset >= 20:
            return body.op("Gelu", x)
        erf = body.op("Erf", body.op("Div", x, body.const(math.sqrt(2.0))))
        return body.op(
            "Mul", body.op("Mul", x, body.op("Add", erf, body.const(1.0))), body.const(0.5)
        )
    raise ValueError(f"unknown activation {name!r}")


def build_function(node: ir.Node, dtype: ir.DataType, opset: int) -> ir.Function:
    """The ONNX function (domain ai.lepton, overload `overload_name`) that computes `node`."""
    if (reason := validate(node)) is not None:
        raise ValueError(reason)
    schema = SCHEMAS[node.op_type]
    epilogue = node_epilogue(node)
    for name in (epilogue.activation, epilogue.post_activation):
        if ACTIVATIONS[name].min_opset > opset:
            raise ValueError(f"activation {name!r} needs opset {ACTIVATIONS[name].min_opset}")
    body = _Body(opset, dtype)
    inputs = [ir.Value(name=spec.name) for spec in schema.inputs]
    base_attrs = {
        a.name: ir.RefAttr(a.name, a.name, attribute_type(a)) for a in schema.base_attributes
    }
    if schema.base_op == "MatMul":
        y = body.op("MatMul", inputs[0], inputs[1])
        if _present(node, 2):
            y = body.op("Add", y, inputs[2])
    else:
        y = body.op(schema.base_op, *inputs[:3], **base_attrs)
    y = _emit_activation(body, epilogue.activation, epilogue.activation_params, y)
    if _present(node, RESIDUAL_INPUT):
        y = body.op("Add", y, inputs[RESIDUAL_INPUT])
        y = _emit_activation(body, epilogue.post_activation, epilogue.post_activation_params, y)
    y.name = "Y"
    graph = ir.Graph(inputs, [y], nodes=body.nodes, opset_imports={"": opset})
    attributes = [ir.Attr(a.name, attribute_type(a), None) for a in schema.attributes]
    return ir.Function(
        DOMAIN, node.op_type, overload_name(node, dtype), graph=graph, attributes=attributes
    )


def lepton_nodes(model: ir.Model) -> list[ir.Node]:
    """All ai.lepton nodes of the main graph and its subgraphs (not of functions)."""
    return [n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.domain == DOMAIN]


def attach_functions(model: ir.Model) -> bool:
    """Give every ai.lepton node its overload and function; drop unused ones. Modified?

    Also imports the domain and raises the IR version to 10 (overloads) where needed.
    Raises ValueError on a malformed node or one whose element type is unknown.
    """
    modified = False
    nodes = lepton_nodes(model)
    opset = onnx_opset(model)
    wanted: dict[tuple[str, str, str], ir.Node] = {}
    for node in nodes:
        if (reason := validate(node)) is not None:
            raise ValueError(f"node {node.name!r}: {reason}")
        dtype = node_dtype(node)
        if dtype is None or dtype not in FLOAT_TYPES:
            raise ValueError(f"node {node.name!r}: element type {dtype} is not a float type")
        overload = overload_name(node, dtype)
        if node.overload != overload:
            node.overload = overload
            modified = True
        key = (DOMAIN, node.op_type, overload)
        if key not in wanted:
            wanted[key] = node
            if key not in model.functions:
                if opset is None:
                    raise ValueError("the model imports no default-domain opset")
                model.functions[key] = build_function(node, dtype, opset)
                modified = True
    for key in [k for k in model.functions if k[0] == DOMAIN and k not in wanted]:
        del model.functions[key]
        modified = True
    if nodes:
        if model.opset_imports.get(DOMAIN) != VERSION:
            model.opset_imports[DOMAIN] = VERSION
            modified = True
        if (model.ir_version or 0) < MIN_IR_VERSION:
            model.ir_version = MIN_IR_VERSION
            modified = True
    return modified


# ---------------------------------------------------------------------------------------
# numpy references (float64 inside, result in the input's dtype).


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf, otypes=[np.float64])(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


_ACTIVATION_REFS: dict[str, Callable[..., np.ndarray]] = {
    "none": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "sigmoid": _sigmoid,
    "tanh": np.tanh,
    "leaky_relu": lambda x, alpha: np.where(x >= 0, x, alpha * x),
    "clip": lambda x, lo, hi: np.minimum(np.maximum(x, lo), hi),
    "hard_sigmoid": lambda x, alpha, beta: np.clip(alpha * x + beta, 0.0, 1.0),
    "hardswish": lambda x: x * np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "silu": lambda x: x * _sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
}


def activation_ref(name: str, x: np.ndarray, params: Sequence[float] = ()) -> np.ndarray:
    """An activation of ACTIVATIONS on a float64 array (`params` empty: defaults)."""
    resolved = ACTIVATIONS[name].resolve(params)
    if resolved is None:
        raise ValueError(f"activation {name!r}: wrong number of parameters {list(params)}")
    return _ACTIVATION_REFS[name](x, *resolved)


def _conv_pads(
    auto_pad: str,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
    pads: Sequence[int] | None,
) -> list[int]:
    n = len(spatial)
    if auto_pad in ("NOTSET", ""):
        return list(pads) if pads else [0] * 2 * n
    if auto_pad == "VALID":
        return [0] * 2 * n
    begin, end = same_pads(auto_pad, spatial, kernel, strides, dilations)
    return begin + end


def conv_ref(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    *,
    auto_pad: str = "NOTSET",
    dilations: Sequence[int] | None = None,
    group: int = 1,
    kernel_shape: Sequence[int] | None = None,
    pads: Sequence[int] | None = None,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """ONNX Conv in float64: sum over kernel offsets of strided slices (no im2col)."""
    n_sp = x.ndim - 2
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * n_sp)
    dilations = list(dilations or [1] * n_sp)
    p = _conv_pads(auto_pad, x.shape[2:], kernel, strides, dilations, pads)
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0)] + [(p[i], p[i + n_sp]) for i in range(n_sp)])
    out = [
        (xp.shape[2 + i] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
        for i in range(n_sp)
    ]
    m = w.shape[0]
    cg, mg = x.shape[1] // group, m // group
    y = np.zeros((x.shape[0], m, *out))
    w64 = w.astype(np.float64)
    for g in range(group):
        xg = xp[:, g * cg : (g + 1) * cg]
        wg = w64[g * mg : (g + 1) * mg]
        for offset in np.ndindex(*kernel):
            window = tuple(
                slice(o * d, o * d + s * (size - 1) + 1, s)
                for o, d, s, size in zip(offset, dilations, strides, out, strict=True)
            )
            patch = xg[(slice(None), slice(None), *window)]
            y[:, g * mg : (g + 1) * mg] += np.einsum(
                "nc...,mc->nm...", patch, wg[(slice(None), slice(None), *offset)]
            )
    if b is not None:
        y += b.astype(np.float64).reshape(1, -1, *[1] * n_sp)
    return y


def gemm_ref(
    a: np.ndarray,
    b: np.ndarray,
    c: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    transB: int = 0,
) -> np.ndarray:
    a64 = a.astype(np.float64).T if transA else a.astype(np.float64)
    b64 = b.astype(np.float64).T if transB else b.astype(np.float64)
    y = alpha * (a64 @ b64)
    if c is not None:
        y = y + beta * c.astype(np.float64)
    return y


def reference(
    op_type: str, inputs: Sequence[np.ndarray | None], attributes: Mapping[str, Any] | None = None
) -> np.ndarray:
    """What an ai.lepton op computes, in numpy (no onnxruntime, no torch).

    `inputs` in schema order (None for an absent optional input); `attributes` as plain
    Python values, with the same names and defaults as the node's.
    """
    schema = SCHEMAS[op_type]
    attrs = dict(attributes or {})
    unknown = set(attrs) - {a.name for a in schema.attributes}
    if unknown:
        raise ValueError(f"{op_type} has no attributes {sorted(unknown)}")
    inputs = list(inputs) + [None] * (len(schema.inputs) - len(inputs))
    a, b, bias = inputs[0], inputs[1], inputs[2]
    if a is None or b is None:
        raise ValueError(f"{op_type}: a required input is missing")
    base = {s.name: attrs[s.name] for s in schema.base_attributes if s.name in attrs}
    if op_type == "FusedConv":
        y = conv_ref(a, b, bias, **base)
    elif op_type == "FusedGemm":
        y = gemm_ref(a, b, bias, **base)
    else:
        y = np.matmul(a.astype(np.float64), b.astype(np.float64))
        if bias is not None:
            y = y + bias.astype(np.float64)
    y = activation_ref(attrs.get("activation", "none"), y, attrs.get("activation_params", ()))
    z = inputs[RESIDUAL_INPUT]
    post = attrs.get("post_activation", "none")
    if z is not None:
        if z.shape != y.shape:
            raise ValueError(f"residual shape {z.shape} is not the output shape {y.shape}")
        y = y + z.astype(np.float64)
        y = activation_ref(post, y, attrs.get("post_activation_params", ()))
    elif post != "none":
        raise ValueError("post_activation needs the residual input Z")
    return y.astype(a.dtype)
