"""The `ai.lepton` op contract: op schemas, epilogue activations and what they compute.

One home for what the custom-domain ops mean, imported by every part that deals with them:
the graph passes (fusion rules and ONNX function bodies, `passes/lepton_ops.py`), the lepton
runtime (`runtime/lepton/ops_lepton.py`), the Triton kernels (`kernels/_common.py`) and the
roofline (`bench/roofline/cost.py`). It imports nothing but the standard library, so any part may
import it without pulling in another.

Every op is a "base" computation followed by the same epilogue:

    Y = post_activation(activation(base(inputs)) + Z)

    FusedConv(X, W, [B], [Z])      base = Conv(X, W, B) with Conv's attributes
    FusedGemm(A, B, [C], [Z])      base = Gemm(A, B, C) with Gemm's attributes
    FusedMatMul(A, B, [bias], [Z]) base = MatMul(A, B) + bias, bias of shape (N,)
                                   (N = last dimension of the product)

- `activation` / `post_activation` name an entry of ACTIVATIONS; `*_params` hold that
  activation's parameters in order (empty: its defaults).
- Z (the residual) has exactly the shape of Y: no broadcasting.
- `post_activation` is only allowed with Z (without Z it would just be a second activation).
- All tensors have one float type T (float, float16, bfloat16, double).

An implementation computes the epilogue in at least float32 on the base result and casts to
T once at the end. The position of an activation in ACTIVATIONS is its `code`: the Triton
kernels branch on it as a compile-time constant.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

DOMAIN = "ai.lepton"
VERSION = 1
# FunctionProto.overload and NodeProto.overload first exist in IR version 10.
MIN_IR_VERSION = 10

# ONNX element types (TensorProto.DataType names) an ai.lepton op may compute in.
FLOAT_TYPE_NAMES = ("FLOAT", "DOUBLE", "FLOAT16", "BFLOAT16")

_INF = float("inf")


def _sigmoid(x: float) -> float:
    # Split by sign so exp never overflows.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclasses.dataclass(frozen=True)
class ActivationSpec:
    """An epilogue activation: its parameters (name, default), positional in `*_params`.

    `fn` is the definition on one real number (parameters resolved); `onnx_op` the standard
    ONNX op that computes it where there is one (cost models count it as that op).
    """

    name: str
    code: int
    fn: Callable[..., float]
    params: tuple[tuple[str, float], ...] = ()
    min_opset: int = 1  # lowest default-domain opset whose ops can express the body
    onnx_op: str | None = None
    doc: str = ""

    def resolve(self, params: Sequence[float]) -> tuple[float, ...] | None:
        """`params` with defaults filled in (empty -> all defaults); None if the count is wrong."""
        if not params:
            return tuple(default for _, default in self.params)
        if len(params) != len(self.params):
            return None
        return tuple(float(p) for p in params)

    @property
    def defaults(self) -> tuple[float, ...]:
        return tuple(default for _, default in self.params)


_SPECS: tuple[tuple[Any, ...], ...] = (
    # name, fn, params, min_opset, onnx_op, doc
    ("none", lambda x: x, (), 1, None, "identity"),
    ("relu", lambda x: max(x, 0.0), (), 1, "Relu", "max(x, 0)"),
    ("sigmoid", _sigmoid, (), 1, "Sigmoid", "1 / (1 + exp(-x))"),
    ("tanh", math.tanh, (), 1, "Tanh", "tanh(x)"),
    (
        "leaky_relu",
        lambda x, alpha: x if x >= 0 else alpha * x,
        (("alpha", 0.01),),
        1,
        "LeakyRelu",
        "x if x >= 0 else alpha * x",
    ),
    (
        "clip",
        lambda x, lo, hi: min(max(x, lo), hi),
        (("min", -_INF), ("max", _INF)),
        1,
        "Clip",
        "min(max(x, min), max)",
    ),
    (
        "hard_sigmoid",
        lambda x, alpha, beta: max(0.0, min(1.0, alpha * x + beta)),
        (("alpha", 0.2), ("beta", 0.5)),
        1,
        "HardSigmoid",
        "max(0, min(1, alpha * x + beta))",
    ),
    (
        "hardswish",
        lambda x: x * max(0.0, min(1.0, x / 6.0 + 0.5)),
        (),
        1,
        "HardSwish",
        "x * max(0, min(1, x / 6 + 1 / 2))",
    ),
    ("silu", lambda x: x * _sigmoid(x), (), 1, "Swish", "x * sigmoid(x)"),
    # Erf is opset 9; Gelu itself (opset 20) is used where the model has it.
    (
        "gelu",
        lambda x: 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))),
        (),
        9,
        "Gelu",
        "x / 2 * (1 + erf(x / sqrt(2)))",
    ),
)

ACTIVATIONS: Mapping[str, ActivationSpec] = MappingProxyType(
    {
        name: ActivationSpec(name, code, fn, params, min_opset, onnx_op, doc)
        for code, (name, fn, params, min_opset, onnx_op, doc) in enumerate(_SPECS)
    }
)
ACTIVATION_CODES: Mapping[str, int] = MappingProxyType(
    {name: spec.code for name, spec in ACTIVATIONS.items()}
)


def resolve_activation(
    name: str, params: Sequence[float] = (), what: str = "activation"
) -> tuple[float, ...]:
    """The parameters of activation `name`, defaults filled in; ValueError if invalid."""
    spec = ACTIVATIONS.get(name)
    if spec is None:
        raise ValueError(f"{what} {name!r} is not one of {', '.join(ACTIVATIONS)}")
    resolved = spec.resolve(params)
    if resolved is None:
        raise ValueError(
            f"{what} {name!r} takes {len(spec.params)} parameters "
            f"({', '.join(p for p, _ in spec.params) or 'none'}), got {len(params)}: "
            f"{[float(p) for p in params]}"
        )
    return resolved


def activation_value(name: str, x: float, params: Sequence[float] = ()) -> float:
    """Activation `name` of one real number: the definition every implementation follows."""
    return ACTIVATIONS[name].fn(float(x), *resolve_activation(name, params))


# ---------------------------------------------------------------------------------------
# Schemas.


@dataclasses.dataclass(frozen=True)
class AttrSpec:
    """An attribute: name, ONNX attribute type name and default (None: the base op's rule).

    `type` is an `onnx.AttributeProto.AttributeType` name: "INT", "INTS", "FLOAT", "FLOATS",
    "STRING".
    """

    name: str
    type: str
    default: Any = None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    name: str
    optional: bool = False
    doc: str = ""


EPILOGUE_ATTRIBUTES: tuple[AttrSpec, ...] = (
    AttrSpec("activation", "STRING", "none"),
    AttrSpec("activation_params", "FLOATS", ()),
    AttrSpec("post_activation", "STRING", "none"),
    AttrSpec("post_activation_params", "FLOATS", ()),
)

# Index of the residual input Z, the same in every op.
RESIDUAL_INPUT = 3


@dataclasses.dataclass(frozen=True)
class OpSchema:
    """One ai.lepton op: base ONNX op, inputs, forwarded base attributes, epilogue."""

    name: str
    base_op: str
    inputs: tuple[InputSpec, ...]
    base_attributes: tuple[AttrSpec, ...]
    doc: str

    @property
    def attributes(self) -> tuple[AttrSpec, ...]:
        return self.base_attributes + EPILOGUE_ATTRIBUTES

    def attribute(self, name: str) -> AttrSpec | None:
        return next((a for a in self.attributes if a.name == name), None)

    @property
    def min_inputs(self) -> int:
        return sum(1 for i in self.inputs if not i.optional)


_Z = InputSpec("Z", True, "residual, exactly the shape of Y; added after `activation`")

SCHEMAS: Mapping[str, OpSchema] = MappingProxyType(
    {
        schema.name: schema
        for schema in (
            OpSchema(
                "FusedConv",
                "Conv",
                (
                    InputSpec("X", doc="(N, C, D1, ..., Dn)"),
                    InputSpec("W", doc="(M, C / group, k1, ..., kn)"),
                    InputSpec("B", True, "(M,)"),
                    _Z,
                ),
                (
                    AttrSpec("auto_pad", "STRING", "NOTSET"),
                    AttrSpec("dilations", "INTS"),
                    AttrSpec("group", "INT", 1),
                    AttrSpec("kernel_shape", "INTS"),
                    AttrSpec("pads", "INTS"),
                    AttrSpec("strides", "INTS"),
                ),
                "Conv(X, W, B), then the epilogue",
            ),
            OpSchema(
                "FusedGemm",
                "Gemm",
                (
                    InputSpec("A", doc="(M, K), or (K, M) with transA"),
                    InputSpec("B", doc="(K, N), or (N, K) with transB"),
                    InputSpec("C", True, "broadcastable to (M, N)"),
                    _Z,
                ),
                (
                    AttrSpec("alpha", "FLOAT", 1.0),
                    AttrSpec("beta", "FLOAT", 1.0),
                    AttrSpec("transA", "INT", 0),
                    AttrSpec("transB", "INT", 0),
                ),
                "Gemm(A, B, C), then the epilogue",
            ),
            OpSchema(
                "FusedMatMul",
                "MatMul",
                (
                    InputSpec("A", doc="(..., M, K)"),
                    InputSpec("B", doc="(..., K, N)"),
                    InputSpec("bias", True, "(N,)"),
                    _Z,
                ),
                (),
                "MatMul(A, B) (numpy broadcasting) + bias, then the epilogue",
            ),
        )
    }
)


def same_pads(
    auto_pad: str,
    spatial: Sequence[int],
    kernel: Sequence[int],
    strides: Sequence[int],
    dilations: Sequence[int],
) -> tuple[list[int], list[int]]:
    """(begin, end) pads of Conv's (and FusedConv's) auto_pad SAME_UPPER / SAME_LOWER:
    output = ceil(input / stride), the odd pixel at the end for SAME_UPPER."""
    begin, end = [], []
    for size, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        out = -(-size // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return begin, end


# ---------------------------------------------------------------------------------------
# The epilogue of one node.


@dataclasses.dataclass(frozen=True)
class Epilogue:
    activation: str = "none"
    activation_params: tuple[float, ...] = ()
    post_activation: str = "none"
    post_activation_params: tuple[float, ...] = ()

    @property
    def spec(self) -> tuple[str, tuple[float, ...], str, tuple[float, ...]]:
        """(activation, params, post_activation, params): the launchers' argument order."""
        return (
            self.activation,
            self.activation_params,
            self.post_activation,
            self.post_activation_params,
        )


def epilogue_from_attributes(
    attributes: Mapping[str, Any], has_residual: bool | None = None
) -> Epilogue:
    """The epilogue of a node from its attribute values, parameters resolved.

    `attributes` maps names to plain values (str, sequence of float); missing ones take the
    defaults. `has_residual`, when given, checks that `post_activation` has its Z.
    ValueError names what is wrong.
    """
    values: dict[str, Any] = {}
    for prefix in ("activation", "post_activation"):
        name = attributes.get(prefix) or "none"
        if isinstance(name, bytes):
            name = name.decode("utf-8")
        params = tuple(attributes.get(f"{prefix}_params") or ())
        values[prefix] = name
        values[f"{prefix}_params"] = resolve_activation(name, params, prefix)
    epilogue = Epilogue(**values)
    if has_residual is False and epilogue.post_activation != "none":
        raise ValueError("post_activation needs the residual input Z")
    return epilogue


def epilogue_attributes(epilogue: Epilogue) -> dict[str, Any]:
    """Node attributes for `epilogue` (defaults left out, parameters always explicit)."""
    attrs: dict[str, Any] = {}
    for prefix in ("activation", "post_activation"):
        name = getattr(epilogue, prefix)
        if name != "none":
            attrs[prefix] = name
            params = getattr(epilogue, f"{prefix}_params")
            if params:
                attrs[f"{prefix}_params"] = [float(p) for p in params]
    return attrs


def epilogue_value(epilogue: Epilogue, base: float, residual: float | None = None) -> float:
    """The epilogue on one element of the base result (and of Z): the reference semantics."""
    y = activation_value(epilogue.activation, base, epilogue.activation_params)
    if residual is None:
        return y
    return activation_value(epilogue.post_activation, y + residual, epilogue.post_activation_params)


__all__ = [
    "ACTIVATIONS",
    "ACTIVATION_CODES",
    "DOMAIN",
    "EPILOGUE_ATTRIBUTES",
    "FLOAT_TYPE_NAMES",
    "MIN_IR_VERSION",
    "RESIDUAL_INPUT",
    "SCHEMAS",
    "VERSION",
    "ActivationSpec",
    "AttrSpec",
    "Epilogue",
    "InputSpec",
    "OpSchema",
    "activation_value",
    "epilogue_attributes",
    "epilogue_from_attributes",
    "epilogue_value",
    "resolve_activation",
]
