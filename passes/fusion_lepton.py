"""Conv/Gemm/MatMul (+bias) + activation (+residual [+activation]) -> ai.lepton Fused* ops.

Target "lepton" only: the ops are defined in `lepton_compile.contract` (their function
bodies in `lepton_ops`). Each rule anchors at one epilogue op and absorbs it into the op that
produces its input, so a chain is fused one step at a time in a single sweep (the rewriter
sees its own results):

    Add(MatMul(a, b), bias)          -> FusedMatMul(a, b, bias)
    act(Conv|Gemm|MatMul|Fused*)     -> Fused*(activation=act)      (empty epilogue)
    Add|Sum(Conv|...|Fused*, z)      -> Fused*(..., Z=z)            (no residual yet)
    act(Fused*(..., Z))              -> Fused*(post_activation=act) (no post yet)

The producer's output must have no other reader (its value disappears) and must not be a
graph output. Rules never look inside function bodies: the bodies of the ai.lepton
functions are themselves Conv+Relu chains.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter._basics import MatchResult

from lepton_compile.contract import (
    ACTIVATIONS,
    DOMAIN,
    RESIDUAL_INPUT,
    SCHEMAS,
    VERSION,
    Epilogue,
    epilogue_attributes,
)
from lepton_compile.passes import lepton_ops
from lepton_compile.passes._utils import const_array, fresh_name, is_onnx_op, onnx_opset
from lepton_compile.passes.fusion import QuietShapeInferencePass
from lepton_compile.passes.lepton_ops import FLOAT_TYPES
from lepton_compile.passes.rules import apply_rules as _apply_rules

logger = logging.getLogger(__name__)

_FUSED_FOR = {"Conv": "FusedConv", "Gemm": "FusedGemm", "MatMul": "FusedMatMul"}


@dataclasses.dataclass
class _Plan:
    """What a matched epilogue op is fused into."""

    base: ir.Node  # Conv/Gemm/MatMul or an ai.lepton node
    fused_type: str
    epilogue: Epilogue  # the base's epilogue so far (empty for a plain op)


def _has_residual(node: ir.Node) -> bool:
    return len(node.inputs) > RESIDUAL_INPUT and node.inputs[RESIDUAL_INPUT] is not None


def _plan(context: Any, y: ir.Value, matched: Sequence[ir.Node]) -> _Plan | str:
    """The base that produces `y` and can take one more epilogue step, or why not."""
    if isinstance(context.graph_or_function, ir.Function):
        return "inside a function body"
    base = y.producer()
    if base is None:
        return f"{y.name} is not computed by a node"
    if y.is_graph_output():
        return f"{y.name} is a graph output"
    if any(user not in matched for user, _ in y.uses()):
        return f"{y.name} has readers outside the pattern"
    if base.domain == DOMAIN and base.op_type in SCHEMAS:
        if (reason := lepton_ops.validate(base)) is not None:
            return reason
        fused_type, epilogue = base.op_type, lepton_ops.node_epilogue(base)
    elif base.op_type in _FUSED_FOR and is_onnx_op(base, base.op_type):
        fused_type, epilogue = _FUSED_FOR[base.op_type], Epilogue()
        schema = SCHEMAS[fused_type]
        extra = set(base.attributes) - {a.name for a in schema.base_attributes}
        if extra:
            return f"{base.op_type} has attributes {sorted(extra)} that {fused_type} lacks"
        if len(base.outputs) != 1 or len(base.inputs) > 3:
            return f"{base.op_type} has an unexpected number of inputs or outputs"
    else:
        return f"{y.name} comes from {base.op_type}, not Conv/Gemm/MatMul"
    dtype = lepton_ops.node_dtype(base)
    if dtype not in FLOAT_TYPES:
        return f"element type {dtype} is not a float type"
    return _Plan(base, fused_type, epilogue)


def _fused_node(
    op: Any,
    plan: _Plan,
    epilogue: Epilogue,
    *,
    bias: ir.Value | None = None,
    residual: ir.Value | None = None,
) -> ir.Value:
    base = plan.base
    inputs: list[ir.Value | None] = list(base.inputs) + [None] * (4 - len(base.inputs))
    if bias is not None:
        inputs[2] = bias
    if residual is not None:
        inputs[RESIDUAL_INPUT] = residual
    while inputs and inputs[-1] is None:
        inputs.pop()
    schema = SCHEMAS[plan.fused_type]
    base_names = {a.name for a in schema.base_attributes}
    attrs: dict[str, Any] = {k: v for k, v in base.attributes.items() if k in base_names}
    attrs.update(epilogue_attributes(epilogue))
    return op.op(plan.fused_type, *inputs, _domain=DOMAIN, _version=VERSION, **attrs)


# ---------------------------------------------------------------------------------------
# Activations.


def _scalar(value: ir.Value | None) -> float | None:
    array = const_array(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()))


class _ActivationRule(RewriteRuleClassBase):
    """act(y) with y from a fusable base -> the base with `act` in its next epilogue slot."""

    activation: str = ""

    def params(self, context: Any, bindings: dict[str, Any]) -> tuple[float, ...] | str:
        """The activation's parameters read off the matched nodes, or why they do not fit."""
        return ()

    # ignore[override]: onnxscript's check() takes the bindings as keywords.
    def check(  # type: ignore[override]
        self, context: Any, y: ir.Value, **bindings: Any
    ) -> MatchResult:
        result = MatchResult()
        plan = _plan(context, y, context.nodes)
        if isinstance(plan, str):
            return result.fail(plan)
        params = self.params(context, bindings)
        if isinstance(params, str):
            return result.fail(params)
        spec = ACTIVATIONS[self.activation]
        opset = onnx_opset(context.model) or 0
        if spec.min_opset > opset:
            return result.fail(f"{self.activation} needs opset {spec.min_opset} in the body")
        epilogue = plan.epilogue
        if _has_residual(plan.base):
            if epilogue.post_activation != "none":
                return result.fail(f"{plan.base.op_type} already has a post_activation")
            epilogue = dataclasses.replace(
                epilogue, post_activation=self.activation, post_activation_params=params
            )
        elif epilogue.activation != "none":
            return result.fail(f"{plan.base.op_type} already has an activation")
        else:
            epilogue = dataclasses.replace(
                epilogue, activation=self.activation, activation_params=params
            )
        self._plan, self._epilogue = plan, epilogue
        return result

    def rewrite(self, op: Any, y: ir.Value, **_: Any) -> ir.Value:
        return _fused_node(op, self._plan, self._epilogue)


class _Relu(_ActivationRule):
    activation = "relu"

    def pattern(self, op, y):
        return op.Relu(y)


class _Sigmoid(_ActivationRule):
    activation = "sigmoid"

    def pattern(self, op, y):
        return op.Sigmoid(y)


class _Tanh(_ActivationRule):
    activation = "tanh"

    def pattern(self, op, y):
        return op.Tanh(y)


class _LeakyRelu(_ActivationRule):
    activation = "leaky_relu"

    def pattern(self, op, y):
        return op.LeakyRelu(y)

    def params(self, context, bindings):
        return (context.root.attributes.get_float("alpha", 0.01),)


class _HardSigmoid(_ActivationRule):
    activation = "hard_sigmoid"

    def pattern(self, op, y):
        return op.HardSigmoid(y)

    def params(self, context, bindings):
        attrs = context.root.attributes
        return (attrs.get_float("alpha", 0.2), attrs.get_float("beta", 0.5))


class _HardSwish(_ActivationRule):
    activation = "hardswish"

    def pattern(self, op, y):
        return op.HardSwish(y)


class _HardSwishAsMul(_ActivationRule):
    """y * HardSigmoid(y, 1/6, 1/2): fuse-hardswish's form below opset 14."""

    activation = "hardswish"

    def pattern(self, op, y):
        return op.Mul(y, op.HardSigmoid(y, _outputs=["hs"]))

    def params(self, context, bindings):
        hs = bindings["hs"].producer()
        alpha, beta = hs.attributes.get_float("alpha", 0.2), hs.attributes.get_float("beta", 0.5)
        if not (math.isclose(alpha, 1 / 6, rel_tol=1e-6) and beta == 0.5):
            return f"HardSigmoid({alpha}, {beta}) is not the HardSwish gate (1/6, 1/2)"
        return ()


class _Silu(_ActivationRule):
    activation = "silu"

    def pattern(self, op, y):
        return op.Mul(y, op.Sigmoid(y))


class _Clip(_ActivationRule):
    activation = "clip"

    def pattern(self, op, y):
        return op.Clip(y, _allow_other_inputs=True)

    def params(self, context, bindings):
        clip = context.root
        if len(clip.inputs) == 1:  # opset < 11: attributes (or no bounds at all)
            lo = clip.attributes.get_float("min", -math.inf)
            hi = clip.attributes.get_float("max", math.inf)
            return (lo, hi)
        bounds = []
        for value, default in zip(clip.inputs[1:3], (-math.inf, math.inf), strict=False):
            if value is None:
                bounds.append(default)
            elif (scalar := _scalar(value)) is None:
                return f"Clip bound {value.name} is not a constant scalar"
            else:
                bounds.append(scalar)
        bounds += [math.inf] * (2 - len(bounds))
        return tuple(bounds)


class _Gelu(_ActivationRule):
    activation = "gelu"

    def pattern(self, op, y):
        return op.Gelu(y)

    def params(self, context, bindings):
        approximate = context.root.attributes.get_string("approximate", "none")
        if approximate != "none":
            return f"Gelu(approximate={approximate!r}) has no lepton epilogue"
        return ()


def _gelu_constants(sqrt2: ir.Value, one: ir.Value, half: ir.Value) -> tuple[()] | str:
    expected = ((sqrt2, math.sqrt(2.0)), (one, 1.0), (half, 0.5))
    for value, want in expected:
        got = _scalar(value)
        if got is None or not math.isclose(got, want, rel_tol=1e-6):
            return f"{value.name} is not the constant {want:.7g} of erf-GELU"
    return ()


class _GeluErf(_ActivationRule):
    """y * (erf(y / sqrt 2) + 1) * 0.5: torch's export of GELU below opset 20."""

    activation = "gelu"

    def pattern(self, op, y, sqrt2, one, half):
        return op.Mul(op.Mul(y, op.Add(op.Erf(op.Div(y, sqrt2)), one)), half)

    def params(self, context, bindings):
        return _gelu_constants(bindings["sqrt2"], bindings["one"], bindings["half"])


class _GeluErfHalfFirst(_GeluErf):
    """(y * 0.5) * (erf(y / sqrt 2) + 1): the Hugging Face formula's export."""

    def pattern(self, op, y, sqrt2, one, half):
        return op.Mul(op.Mul(y, half), op.Add(op.Erf(op.Div(y, sqrt2)), one))


_ACTIVATION_RULES: tuple[type[_ActivationRule], ...] = (
    _Relu,
    _Sigmoid,
    _Tanh,
    _LeakyRelu,
    _HardSigmoid,
    _HardSwish,
    _HardSwishAsMul,
    _Silu,
    _Clip,
    _Gelu,
    _GeluErf,
    _GeluErfHalfFirst,
)


# ---------------------------------------------------------------------------------------
# MatMul bias and residual.


def _static_dims(shape: ir.Shape | None) -> tuple[int, ...] | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape)  # type: ignore[arg-type]


class _MatMulBias(RewriteRuleClassBase):
    """Add(MatMul(a, b), bias) with bias broadcasting along the last axis only."""

    def pattern(self, op, y, bias):
        return op.Add(y, bias)

    def check(self, context: Any, y: ir.Value, bias: ir.Value) -> MatchResult:
        result = MatchResult()
        plan = _plan(context, y, context.nodes)
        if isinstance(plan, str):
            return result.fail(plan)
        if plan.base.domain == DOMAIN or plan.base.op_type != "MatMul":
            return result.fail("only a plain MatMul takes a bias")
        if bias is y:
            return result.fail("both operands are the same value")
        if bias.dtype != y.dtype:
            return result.fail(f"bias is {bias.dtype}, MatMul gives {y.dtype}")
        if y.shape is None or bias.shape is None:
            return result.fail("shape of the product or of the bias is unknown")
        n = y.shape[-1] if len(y.shape) else None
        dims = list(bias.shape)
        if not isinstance(n, int) or len(dims) > len(y.shape) or not dims:
            return result.fail(f"bias {bias.shape} is not a vector over the last axis of {y.shape}")
        if dims[-1] != n or any(d != 1 for d in dims[:-1]):
            return result.fail(f"bias {bias.shape} is not ({n},) broadcast over the last axis")
        self._plan, self._reshape = plan, None
        if len(dims) > 1:
            array = const_array(bias)
            if array is None:
                return result.fail(f"bias {bias.shape} is not 1-D and not a constant")
            graph = context.graph_or_function
            self._reshape = (array.reshape(-1), fresh_name(graph, f"{bias.name}_1d"))
        return result

    def rewrite(self, op: Any, y: ir.Value, bias: ir.Value) -> ir.Value:
        if self._reshape is not None:
            array, name = self._reshape
            bias = op.initializer(ir.tensor(np.ascontiguousarray(array)), name=name)
        return _fused_node(op, self._plan, self._plan.epilogue, bias=bias)


class _Residual(RewriteRuleClassBase):
    """Add(y, z) / Sum(y, z) with z of exactly y's shape -> Z input of y's producer."""

    def __init__(self, op_type: str, swap: bool = False) -> None:
        super().__init__(name=f"lepton-residual-{op_type}{'-swapped' if swap else ''}")
        self.op_type, self.swap = op_type, swap

    def pattern(self, op, y, z):
        a, b = (z, y) if self.swap else (y, z)
        return getattr(op, self.op_type)(a, b)

    def check(self, context: Any, y: ir.Value, z: ir.Value) -> MatchResult:
        result = MatchResult()
        plan = _plan(context, y, context.nodes)
        if isinstance(plan, str):
            return result.fail(plan)
        if z is y:
            return result.fail("both operands are the same value")
        if _has_residual(plan.base):
            return result.fail(f"{plan.base.op_type} already has a residual input")
        if z.dtype != y.dtype:
            return result.fail(f"residual is {z.dtype}, output is {y.dtype}")
        y_dims, z_dims = _static_dims(y.shape), _static_dims(z.shape)
        if y_dims is None or y_dims != z_dims:
            return result.fail(f"residual shape {z.shape} is not the output shape {y.shape}")
        self._plan = plan
        return result

    def rewrite(self, op: Any, y: ir.Value, z: ir.Value) -> ir.Value:
        return _fused_node(op, self._plan, self._plan.epilogue, residual=z)


def lepton_rules(*, residual: bool = True, matmul_bias: bool = True) -> list[RewriteRule]:
    """The rules, in the order they are tried at each anchor node (bias before residual)."""
    rules: list[RewriteRule] = []
    if matmul_bias:
        rules += _MatMulBias.rule().commute()
    if residual:
        for op_type in ("Add", "Sum"):
            rules += [_Residual.rule(op_type), _Residual.rule(op_type, swap=True)]
    for cls in _ACTIVATION_RULES:
        rules += cls.rule().commute()
    return rules


class FuseLeptonPass(ir.passes.InPlacePass):
    """Conv/Gemm/MatMul epilogues -> ai.lepton FusedConv/FusedGemm/FusedMatMul.

    Attaches the function body of every ai.lepton op used (`lepton_ops.attach_functions`),
    so the result still runs on onnxruntime and passes onnx.checker.

    Args:
        residual: also absorb a residual Add/Sum.
        matmul_bias: also absorb the bias Add of a MatMul.
    """

    def __init__(self, *, residual: bool = True, matmul_bias: bool = True) -> None:
        super().__init__()
        self.residual = residual
        self.matmul_bias = matmul_bias

    def rules(self) -> list[RewriteRule]:
        return lepton_rules(residual=self.residual, matmul_bias=self.matmul_bias)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if onnx_opset(model) is None:
            return ir.passes.PassResult(model, False)
        # The residual and bias checks compare shapes; a lone pass may get a model
        # without value shapes. Annotations only: not a modification of the graph.
        QuietShapeInferencePass()(model)
        modified = _apply_rules(model, self.rules())
        modified = lepton_ops.attach_functions(model) or modified
        return ir.passes.PassResult(model, modified)
