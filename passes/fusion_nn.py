"""Network-block fusions: LayerNorm/GELU/HardSigmoid/HardSwish formulas -> standard ops, SDPA found.

Target-neutral: every op written here is a standard ONNX op, and only where the model's
opset has it (LayerNormalization >= 17, Gelu >= 20, HardSwish >= 14, Attention >= 23).
Where it does not, the pattern is only counted (LayerNorm, GELU: ORT fuses them itself) or
annotated on its nodes for later passes (SiLU, attention: `metadata_props`
``lepton.pattern`` = ``silu`` | ``sdpa`` and ``lepton.pattern.id`` = ``<pattern>/<n>``).

The rules are onnxscript pattern/check/rewrite classes. onnxscript's own rules do not fit
as they stand: its LayerNormFusion takes ReduceMean's axes only as an input (opset >= 18),
fp32/fp64 only, and checks neither the reduced axes nor the scale's shape; its GELU and
SDPA rules (ort_fusions) write com.microsoft / ORT-internal ops. Their patterns are the
model for ours. Each check returns why a match is turned down; the reasons are logged
(DEBUG) and returned in `FusionResult.rejected`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import RewriteRule, RewriteRuleSet, pattern
from onnxscript.rewriter._basics import MatchResult
from onnxscript.rewriter._ir_utils import get_numpy_value

from lepton_compile.passes._utils import FLOAT_TYPES, onnx_opset
from lepton_compile.passes.fusion import QuietShapeInferencePass
from lepton_compile.passes.rules import Rule

logger = logging.getLogger(__name__)

PATTERN_KEY = "lepton.pattern"
PATTERN_ID_KEY = "lepton.pattern.id"

# Tolerance for the formula constants: exporters write sqrt(2) as 1.4142 or 1.4142135.
_CONST_RTOL = 1e-4


@dataclasses.dataclass
class FusionResult(ir.passes.PassResult):
    """A PassResult that also says what the rules did.

    Attributes:
        fused: pattern name -> subgraphs replaced by a single op.
        detected: pattern name -> subgraphs found but left as they are (annotated or
            only counted, see the pass).
        rejected: "rule @ node: reason" for every structural match a check turned down.
    """

    fused: dict[str, int] = dataclasses.field(default_factory=dict)
    detected: dict[str, int] = dataclasses.field(default_factory=dict)
    rejected: list[str] = dataclasses.field(default_factory=list)


class _Log:
    """Rejections of one pass run (deduplicated: commuted variants repeat them)."""

    def __init__(self) -> None:
        self._seen: dict[str, None] = {}

    def reject(self, rule: str, node: ir.Node, reason: str) -> None:
        entry = f"{rule} @ {node.name or node.op_type}: {reason}"
        if entry not in self._seen:
            self._seen[entry] = None
            logger.debug("rejected %s", entry)

    @property
    def entries(self) -> list[str]:
        return list(self._seen)


# ---------------------------------------------------------------------------------------
# Helpers for checks.


def _const(value: ir.Value | None) -> np.ndarray | None:
    """A constant's value (initializer or Constant node), None for inputs a user can feed."""
    if value is None or value.is_graph_input():
        return None
    return get_numpy_value(value)


def _rank(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None:
        return None
    return value.shape.rank()


def _static_dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = [d for d in value.shape if isinstance(d, int)]
    return dims if len(dims) == value.shape.rank() else None


def _scalar(value: ir.Value | None, x: ir.Value | None, what: str) -> tuple[float | None, str]:
    """(value, "") of a one-element constant that does not raise x's rank, else (None, why)."""
    array = _const(value)
    if array is None:
        return None, f"{what} is not a constant"
    if array.size != 1:
        return None, f"{what} has shape {list(array.shape)}, not a single value"
    # A (1, 1, 1, 1) constant would broadcast a lower-rank x up to rank 4.
    limit = _rank(x)
    if array.ndim > (1 if limit is None else limit):
        return None, f"{what} has rank {array.ndim}, above the input's"
    item = array.reshape(-1)[0]
    if not np.issubdtype(array.dtype, np.floating) and not np.issubdtype(array.dtype, np.integer):
        return None, f"{what} is {array.dtype}"
    result = float(item)
    if not math.isfinite(result):
        return None, f"{what} is {result}"
    return result, ""


def _expect(value: ir.Value | None, x: ir.Value | None, what: str, expected: float) -> str | None:
    """None if `value` is a single constant close to `expected`, else why not."""
    got, why = _scalar(value, x, what)
    if got is None:
        return why
    if not math.isclose(got, expected, rel_tol=_CONST_RTOL, abs_tol=1e-12):
        return f"{what} is {got:g}, expected {expected:g}"
    return None


def _float_input(x: ir.Value) -> str | None:
    if x.dtype not in FLOAT_TYPES:
        return f"input is {x.dtype}, not a float type"
    return None


class _Rule(Rule):
    """Base of this module's rules: rejections go to the pass's log, what a check learns to
    `info`.

    `roots` (the op types the pattern can end in) and `anchor` (op types one of which
    lies at most `depth` producers above the root) only make matching cheaper: commuted
    variants multiply (256 for the tanh GELU), and most nodes need not try any.
    """

    roots: frozenset[str] = frozenset()
    anchor: tuple[frozenset[str], int] = (frozenset(), 0)

    def __init__(self, log: _Log, name: str | None = None) -> None:
        super().__init__(name or type(self).__name__.lstrip("_"))
        self._log = log
        # What the last successful check learned, for rewrite() and for annotations.
        self.info: dict[str, Any] = {}

    def check(self, context: Any, *args: Any, **bindings: Any) -> MatchResult:  # type: ignore[override]
        self.info = {}
        return super().check(context, *args, **bindings)

    def rejected(self, node: ir.Node, reason: str) -> None:
        self._log.reject(self.name, node, reason)

    def rules(self) -> list[RewriteRule]:
        """This rule with every order of the operands of its Add/Mul nodes."""
        rule = RewriteRule(
            self.pattern,
            self.rewrite,
            self.check,
            name=self.name,
            remove_nodes=self.remove_nodes,
        )
        return list(rule.commute())

    def may_match(self, node: ir.Node) -> bool:
        if node.op_type not in self.roots or node.domain not in ("", "ai.onnx"):
            return False
        ops, depth = self.anchor
        frontier, seen = [node], {node}
        for _ in range(depth + 1):
            if any(n.op_type in ops for n in frontier):
                return True
            producers = (v.producer() for n in frontier for v in n.inputs if v is not None)
            frontier = [p for p in producers if p is not None and p not in seen]
            seen.update(frontier)
        return False


class _DetectOnly(_Rule):
    """A rule used only to find subgraphs; it never rewrites."""

    def rewrite(self, op: Any, **_: Any) -> Any:
        raise AssertionError(f"{self.name} is a detection-only rule")


# ---------------------------------------------------------------------------------------
# Running rules: find (and annotate), or rewrite what was found.


@dataclasses.dataclass
class _Found:
    nodes: list[ir.Node]
    root: ir.Node
    info: dict[str, Any]
    variant: RewriteRule


def _find(model: ir.Model, rules: Sequence[_Rule]) -> list[_Found]:
    """Non-overlapping matches of `rules` in the graph and its subgraphs, in node order.

    Roots are tried last node first, so that the largest form of a pattern (LayerNorm
    with its scale and bias) claims its nodes before a smaller form inside it could.
    """
    order = {node: i for i, node in enumerate(ir.traversal.RecursiveGraphIterator(model.graph))}
    # Built on first use: building the 768 commuted tanh-GELU variants takes 0.3 s.
    variants: dict[_Rule, list[RewriteRule]] = {}
    claimed: set[ir.Node] = set()
    found: list[_Found] = []
    for node in sorted(order, key=order.__getitem__, reverse=True):
        if node in claimed or node.graph is None:
            continue
        for rule in rules:
            if not rule.may_match(node):
                continue
            if rule not in variants:
                variants[rule] = rule.rules()
            for variant in variants[rule]:
                match = variant.match(model, node.graph, node, check_nodes_are_removable=True)
                if match and not claimed.intersection(match.nodes):
                    break
            else:
                continue
            claimed.update(match.nodes)
            found.append(_Found(list(match.nodes), node, dict(rule.info), variant))
            break
    found.sort(key=lambda f: order[f.root])
    return found


def _rewrite(model: ir.Model, rules: Sequence[_Rule]) -> int:
    """Rewrite what `rules` find; the number of rewrites.

    The rewriter itself tries every rule at every node; it is handed only the commuted
    variants that matched somewhere.
    """
    variants = list(dict.fromkeys(found.variant for found in _find(model, rules)))
    if not variants:
        return 0
    count = RewriteRuleSet(variants).apply_to_model(model)
    if count:
        # Replaced constants (the formula's scalars, old scale vectors) are left unused.
        common_passes.RemoveUnusedNodesPass()(model)
    return count


def _annotate(
    model: ir.Model, found: Sequence[_Found], name: str, details: Callable[[_Found], dict]
) -> bool:
    """Tag each match's nodes with the pattern name and id, and drop stale tags of `name`.

    Returns whether any tag changed (so that a second run reports no change).
    """
    changed = False
    matched: set[ir.Node] = set()
    for i, match in enumerate(found):
        tags = {PATTERN_KEY: name, PATTERN_ID_KEY: f"{name}/{i}"}
        for node in match.nodes:
            matched.add(node)
            extra = details(match) if node is match.root else {}
            for key, val in {**tags, **extra}.items():
                if node.metadata_props.get(key) != val:
                    node.metadata_props[key] = val
                    changed = True
    # Tags left by an earlier run on nodes that no longer form the pattern.
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node not in matched and node.metadata_props.get(PATTERN_KEY) == name:
            for key in list(node.metadata_props):
                if key in (PATTERN_KEY, PATTERN_ID_KEY) or key.startswith(f"lepton.{name}."):
                    del node.metadata_props[key]
            changed = True
    return changed


def _ensure_shapes(model: ir.Model, op_types: Iterable[str]) -> bool:
    """Run onnx shape inference if a node of `op_types` exists and some value lacks a shape.

    Checks need ranks and dims (LayerNorm axes, scale shapes, attention heads). The
    pipelines' folding infers node by node; a pass run on its own may not have them.
    Returns whether there is anything to look at. Added shapes do not count as a change.
    """
    wanted = set(op_types)
    nodes = [
        n for n in ir.traversal.RecursiveGraphIterator(model.graph) if n.domain in ("", "ai.onnx")
    ]
    if not any(n.op_type in wanted for n in nodes):
        return False
    if any(v.shape is None for n in nodes for v in n.outputs):
        try:
            QuietShapeInferencePass()(model)
        except Exception as e:  # inference helps the checks; it is not required
            logger.debug("shape inference failed: %s", e)
    return True


def _result(
    model: ir.Model,
    modified: bool,
    log: _Log,
    fused: dict[str, int] | None = None,
    detected: dict[str, int] | None = None,
) -> FusionResult:
    return FusionResult(
        model,
        modified,
        fused={k: v for k, v in (fused or {}).items() if v},
        detected={k: v for k, v in (detected or {}).items() if v},
        rejected=log.entries,
    )


# ---------------------------------------------------------------------------------------
# LayerNorm: (x - mean) / sqrt(var + eps) [* gamma] [+ beta] -> LayerNormalization.


def _reduce_axes(node: ir.Node, opset: int, rank: int) -> tuple[list[int] | None, str]:
    """The sorted non-negative axes a ReduceMean reduces (keepdims=1), or (None, why)."""
    if node.attributes.get_int("keepdims", 1) != 1:
        return None, "ReduceMean has keepdims=0"
    if opset >= 18:
        axes_input = node.inputs[1] if len(node.inputs) > 1 else None
        if axes_input is None:
            axes = None
        else:
            array = _const(axes_input)
            if array is None:
                return None, "ReduceMean axes are not constant"
            axes = [int(a) for a in array.reshape(-1)]
        noop: int = node.attributes.get_int("noop_with_empty_axes", 0)
        if not axes and noop:
            return None, "ReduceMean reduces nothing (noop_with_empty_axes)"
    else:
        attr = node.attributes.get("axes")
        axes = list(attr.as_ints()) if attr is not None else None
    if not axes:
        return list(range(rank)), ""
    if any(not -rank <= a < rank for a in axes):
        return None, f"ReduceMean axes {axes} out of range for rank {rank}"
    return sorted({a % rank for a in axes}), ""


class _LayerNorm(_Rule):
    """ReduceMean(x) -> Sub -> Pow(2)|Mul(self) -> ReduceMean -> Add(eps) -> Sqrt -> Div|
    Mul(Reciprocal) [-> Mul(gamma) [-> Add(beta)]] -> LayerNormalization(axis=-k).

    The mean and variance must reduce the same trailing axes (keepdims=1; axes as an
    attribute before opset 18, as an input from 18); eps and the exponent must be
    constant scalars; gamma/beta must be of x's dtype and vary only along the normalized
    axes (a constant is broadcast to the normalized shape, which LayerNormalization
    wants; a missing gamma becomes ones).
    """

    def __init__(self, log: _Log, opset: int, affine: str, divide: bool) -> None:
        super().__init__(log, f"LayerNorm[{affine}, {'div' if divide else 'reciprocal'}]")
        root = {"scale+bias": "Add", "scale": "Mul", "none": "Div" if divide else "Mul"}[affine]
        self.roots = frozenset({root})
        self.anchor = (frozenset({"ReduceMean"}), 5)
        self.opset = opset
        self.affine = affine  # "none", "scale" or "scale+bias"
        # Div(d, std) or Mul(d, Reciprocal(std)): not an OrValue, which cannot be the
        # pattern's output (the "none" form).
        self.divide = divide

    def _core(self, op, x, eps, two):
        mean = op.ReduceMean(
            x, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["mean"]
        )
        d = op.Sub(x, mean)
        square = pattern.OrValue(
            [op.Pow(d, two), op.Mul(d, d)], tag_var="square", tag_values=["Pow", "Mul"]
        )
        var = op.ReduceMean(
            square, _allow_other_inputs=True, _allow_other_attributes=True, _outputs=["var"]
        )
        std = op.Sqrt(op.Add(var, eps))
        return op.Div(d, std) if self.divide else op.Mul(d, op.Reciprocal(std))

    def pattern(self, op, x, eps, two, gamma, beta):
        normalized = self._core(op, x, eps, two)
        if self.affine == "none":
            return normalized
        scaled = op.Mul(normalized, gamma)
        if self.affine == "scale":
            return scaled
        return op.Add(scaled, beta)

    def why_not(self, context, x, eps, two, mean, var, square, gamma=None, beta=None, **_):
        if (why := _float_input(x)) is not None:
            return why
        rank = _rank(x)
        if rank is None or rank == 0:
            return "rank of the input is unknown" if rank is None else "input is a scalar"
        axes, why = _reduce_axes(mean.producer(), self.opset, rank)
        if axes is None:
            return why
        var_axes, why = _reduce_axes(var.producer(), self.opset, rank)
        if var_axes is None:
            return why
        if var_axes != axes:
            return f"mean over axes {axes} but variance over axes {var_axes}"
        k = len(axes)
        if axes != list(range(rank - k, rank)):
            return f"mean over axes {axes} of a rank-{rank} input, not the trailing axes"
        if square == "Pow" and (why := _expect(two, x, "exponent", 2.0)) is not None:
            return why
        epsilon, why = _scalar(eps, x, "epsilon")
        if epsilon is None:
            return why
        if epsilon < 0:
            return f"epsilon is negative ({epsilon:g})"
        dims = list(x.shape)[rank - k :]
        static = all(isinstance(d, int) for d in dims)
        if self.affine == "none" and not static:
            return f"normalized shape {dims} is not static (needed for a ones scale)"
        params: dict[str, Any] = {}
        for name, value in (("scale", gamma), ("bias", beta)):
            if value is None:
                continue
            param, why = self._param(value, x, rank, k, name)
            if param is None:
                return why
            params[name] = param
        self.info = {
            "axis": -k,
            "epsilon": epsilon,
            "dims": dims,
            # fp16/bf16 patterns compute in their own type; LayerNormalization in fp32
            # (more accurate, not bit-equal). Double stays double.
            "stash_type": 11 if x.dtype == ir.DataType.DOUBLE else 1,
            **params,
        }
        return None

    @staticmethod
    def _param(
        value: ir.Value, x: ir.Value, rank: int, k: int, what: str
    ) -> tuple[ir.Value | np.ndarray | None, str]:
        """gamma/beta as it is (already the normalized shape) or as a broadcast array."""
        if value.dtype != x.dtype:
            return None, f"{what} is {value.dtype}, input is {x.dtype}"
        assert x.shape is not None  # the caller checked the rank
        x_dims = list(x.shape)
        array = _const(value)
        shape = list(array.shape) if array is not None else _static_dims(value)
        if shape is None:
            return None, f"shape of the {what} is unknown"
        if len(shape) > rank:
            return None, f"{what} has rank {len(shape)}, above the input's {rank}"
        aligned = [1] * (rank - len(shape)) + shape
        for i, (p, d) in enumerate(zip(aligned, x_dims, strict=True)):
            if i < rank - k and p != 1:
                return None, f"{what} {shape} varies along axis {i}, which is not normalized"
            if i >= rank - k and p != 1 and p != d:
                return None, f"{what} {shape} does not match the normalized dims"
        norm_dims = x_dims[rank - k :]
        if shape == norm_dims:
            return value, ""
        if array is None:
            return None, f"{what} {shape} would need a reshape but is not constant"
        target = tuple(d for d in norm_dims if isinstance(d, int))
        if len(target) != len(norm_dims):
            return None, f"normalized shape {norm_dims} is not static"
        return np.ascontiguousarray(np.broadcast_to(array.reshape(aligned[rank - k :]), target)), ""

    def _operand(self, op, x: ir.Value, key: str) -> ir.Value | None:
        param = self.info.get(key)
        if isinstance(param, np.ndarray):
            return self.new_initializer(op, param, f"{x.name or 'ln'}_{key}")
        return param

    def rewrite(self, op, x, **_):
        info = self.info
        scale = self._operand(op, x, "scale")
        if scale is None:
            ones = np.ones(info["dims"], dtype=x.dtype.numpy())
            scale = self.new_initializer(op, ones, f"{x.name or 'ln'}_scale")
        inputs = [x, scale]
        bias = self._operand(op, x, "bias")
        if bias is not None:
            inputs.append(bias)
        return op.LayerNormalization(
            *inputs,
            axis=info["axis"],
            epsilon=info["epsilon"],
            stash_type=info["stash_type"],
        )


class FuseLayerNormPass(ir.passes.InPlacePass):
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div [Mul gamma] [Add beta] -> LayerNormalization.

    From opset 17 (where LayerNormalization is standard). Below it, the patterns are
    counted (`FusionResult.detected`) and left alone.
    """

    def call(self, model: ir.Model) -> FusionResult:
        log = _Log()
        opset = onnx_opset(model) or 0
        if not _ensure_shapes(model, ["ReduceMean"]):
            return _result(model, False, log)
        stages = [
            [_LayerNorm(log, opset, affine, divide) for divide in (True, False)]
            for affine in ("scale+bias", "scale", "none")
        ]
        if opset < 17:
            found = len(_find(model, [rule for stage in stages for rule in stage]))
            if found:
                logger.info(
                    "fuse-layernorm: %d LayerNorm patterns; opset %d has no LayerNormalization",
                    found,
                    opset,
                )
            return _result(model, False, log, detected={"layernorm": found})
        # One stage at a time: the bare normalization would otherwise fire at the Div
        # before the Mul/Add after it were looked at.
        fused = sum(_rewrite(model, stage) for stage in stages)
        if fused:
            logger.info("fuse-layernorm: %d LayerNormalization", fused)
        return _result(model, bool(fused), log, fused={"layernorm": fused})


# ---------------------------------------------------------------------------------------
# GELU: 0.5 * x * (1 + erf(x / sqrt(2))) and the tanh form -> Gelu (opset >= 20).

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

# How the three factors 0.5, x and (1 + f(x)) are multiplied, as exporters write them.
_GELU_FORMS = ("(x*s)*h", "x*(s*h)", "(x*h)*s")


class _Gelu(_Rule):
    """0.5 * x * (1 + erf(x/sqrt2)) | (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))) -> Gelu.

    x/sqrt2 may be x * (1/sqrt2); x^3 may be Pow(x, 3) or x * (x * x). The constants must
    be single values within 1e-4 of the formula's.
    """

    def __init__(self, log: _Log, kind: str, form: str) -> None:
        super().__init__(log, f"Gelu[{kind}, {form}]")
        self.roots = frozenset({"Mul"})
        self.anchor = (frozenset({"Erf" if kind == "erf" else "Tanh"}), 3)
        self.kind = kind  # "erf" or "tanh"
        self.form = form

    def pattern(self, op, x, c_in, c_cube, three, one, half):
        if self.kind == "erf":
            u = pattern.OrValue(
                [op.Div(x, c_in), op.Mul(x, c_in)], tag_var="in_op", tag_values=["Div", "Mul"]
            )
            s = op.Add(op.Erf(u), one)
        else:
            cube = pattern.OrValue(
                [op.Pow(x, three), op.Mul(x, op.Mul(x, x))],
                tag_var="cube",
                tag_values=["Pow", "Mul"],
            )
            inner = op.Mul(c_in, op.Add(x, op.Mul(c_cube, cube)))
            s = op.Add(op.Tanh(inner), one)
        if self.form == "(x*s)*h":
            return op.Mul(op.Mul(x, s), half)
        if self.form == "x*(s*h)":
            return op.Mul(x, op.Mul(s, half))
        return op.Mul(op.Mul(x, half), s)

    def why_not(self, context, x, c_in, c_cube, three, one, half, in_op=None, cube=None, **_):
        if (why := _float_input(x)) is not None:
            return why
        checks: list[tuple[ir.Value | None, str, float]] = [(one, "1", 1.0), (half, "0.5", 0.5)]
        if self.kind == "erf":
            expected = _SQRT2 if in_op == "Div" else 1 / _SQRT2
            checks.append((c_in, f"erf input {'divisor' if in_op == 'Div' else 'scale'}", expected))
        else:
            checks += [
                (c_in, "tanh input scale", _SQRT_2_OVER_PI),
                (c_cube, "cube factor", 0.044715),
            ]
            if cube == "Pow":
                checks.append((three, "exponent", 3.0))
        for value, what, expected in checks:
            if (why := _expect(value, x, what, expected)) is not None:
                return why
        return None

    def rewrite(self, op, x, **_):
        return op.Gelu(x, approximate="none" if self.kind == "erf" else "tanh")


def _gelu_rules(log: _Log) -> list[_Rule]:
    return [_Gelu(log, kind, form) for kind in ("erf", "tanh") for form in _GELU_FORMS]


class FuseGeluPass(ir.passes.InPlacePass):
    """erf/tanh GELU formulas -> Gelu(approximate="none"|"tanh"), from opset 20.

    Below opset 20 there is no standard Gelu: the patterns are counted and left for ORT,
    whose own GeluFusion/FastGeluFusion handle them at run time.
    """

    def call(self, model: ir.Model) -> FusionResult:
        log = _Log()
        opset = onnx_opset(model) or 0
        if not _ensure_shapes(model, ["Erf", "Tanh"]):
            return _result(model, False, log)
        rules = _gelu_rules(log)
        if opset < 20:
            found = len(_find(model, rules))
            if found:
                logger.info("fuse-gelu: %d GELU patterns; opset %d has no Gelu", found, opset)
            return _result(model, False, log, detected={"gelu": found})
        fused = _rewrite(model, rules)
        if fused:
            logger.info("fuse-gelu: %d Gelu", fused)
        return _result(model, bool(fused), log, fused={"gelu": fused})


# ---------------------------------------------------------------------------------------
# HardSigmoid / HardSwish forms that fuse-hardswish (onnxscript's rules: Clip(x+3,0,6)/6
# only) leaves: Clip(a*x + b, 0, 1) (Keras, TF), Clip(x+3, 0, 6) * (1/6) (Keras
# MobileNetV3), and x * that.


class _HardSigmoidAffine(_Rule):
    """Clip(x * alpha + beta, 0, 1) (or x / d) -> HardSigmoid(alpha, beta)."""

    def __init__(self, log: _Log) -> None:
        super().__init__(log, "HardSigmoid[clip(ax+b,0,1)]")
        self.roots = frozenset({"Clip"})
        self.anchor = (frozenset({"Clip"}), 0)

    def pattern(self, op, x, alpha, beta, lo, hi):
        ax = pattern.OrValue(
            [op.Mul(x, alpha), op.Div(x, alpha)], tag_var="alpha_op", tag_values=["Mul", "Div"]
        )
        return op.Clip(op.Add(ax, beta), lo, hi)

    def why_not(self, context, x, alpha, beta, lo, hi, alpha_op, **_):
        if (why := _float_input(x)) is not None:
            return why
        for value, what, expected in ((lo, "Clip min", 0.0), (hi, "Clip max", 1.0)):
            if (why := _expect(value, x, what, expected)) is not None:
                return why
        a, why = _scalar(alpha, x, "slope")
        if a is None:
            return why
        b, why = _scalar(beta, x, "offset")
        if b is None:
            return why
        if alpha_op == "Div":
            if a == 0:
                return "slope divisor is 0"
            a = 1.0 / a
        self.info = {"alpha": a, "beta": b}
        return None

    def rewrite(self, op, x, **_):
        return op.HardSigmoid(x, alpha=self.info["alpha"], beta=self.info["beta"])


def _scaled_clip(
    x: ir.Value, bias: ir.Value, lo: ir.Value, hi: ir.Value, scale: ir.Value, scale_op: str
) -> tuple[tuple[float, float] | None, str]:
    """(alpha, beta) if s * Clip(x + b, 0, m) with s * m == 1 is HardSigmoid(s, s*b)."""
    if (why := _expect(lo, x, "Clip min", 0.0)) is not None:
        return None, why
    b, why = _scalar(bias, x, "offset")
    m, why_m = _scalar(hi, x, "Clip max")
    s, why_s = _scalar(scale, x, "scale")
    if b is None or m is None or s is None:
        return None, why or why_m or why_s
    if scale_op == "Div":
        if s == 0:
            return None, "divisor is 0"
        s = 1.0 / s
    if s <= 0 or not math.isclose(s * m, 1.0, rel_tol=_CONST_RTOL):
        return None, f"scale {s:g} times Clip max {m:g} is not 1"
    return (s, s * b), ""


class _HardSigmoidScaledClip(_Rule):
    """Clip(x + b, 0, m) * s (or / d) with s*m = 1 -> HardSigmoid(s, s*b)."""

    def __init__(self, log: _Log, scale_op: str) -> None:
        super().__init__(log, f"HardSigmoid[clip(x+b,0,m){'*' if scale_op == 'Mul' else '/'}s]")
        self.roots = frozenset({scale_op})
        self.anchor = (frozenset({"Clip"}), 1)
        self.scale_op = scale_op

    def pattern(self, op, x, bias, lo, hi, scale):
        clip = op.Clip(op.Add(x, bias), lo, hi)
        return op.Mul(clip, scale) if self.scale_op == "Mul" else op.Div(clip, scale)

    def why_not(self, context, x, bias, lo, hi, scale, **_):
        if (why := _float_input(x)) is not None:
            return why
        ab, why = _scaled_clip(x, bias, lo, hi, scale, self.scale_op)
        if ab is None:
            return why
        self.info = {"alpha": ab[0], "beta": ab[1]}
        return None

    def rewrite(self, op, x, **_):
        return op.HardSigmoid(x, alpha=self.info["alpha"], beta=self.info["beta"])


def _is_hardswish(alpha: float, beta: float) -> bool:
    return math.isclose(alpha, 1 / 6, rel_tol=_CONST_RTOL) and math.isclose(
        beta, 0.5, rel_tol=_CONST_RTOL
    )


class _HardSwishScaledClip(_Rule):
    """(x * Clip(x + b, 0, m)) * s (or / d), s*m = 1 -> HardSwish(x) (b=3, m=6, opset >= 14)
    or x * HardSigmoid(x, s, s*b)."""

    def __init__(self, log: _Log, scale_op: str, opset: int) -> None:
        super().__init__(log, f"HardSwish[x*clip(x+b,0,m){'*' if scale_op == 'Mul' else '/'}s]")
        self.roots = frozenset({scale_op})
        self.anchor = (frozenset({"Clip"}), 2)
        self.scale_op = scale_op
        self.opset = opset

    def pattern(self, op, x, bias, lo, hi, scale):
        gated = op.Mul(x, op.Clip(op.Add(x, bias), lo, hi))
        return op.Mul(gated, scale) if self.scale_op == "Mul" else op.Div(gated, scale)

    def why_not(self, context, x, bias, lo, hi, scale, **_):
        if (why := _float_input(x)) is not None:
            return why
        ab, why = _scaled_clip(x, bias, lo, hi, scale, self.scale_op)
        if ab is None:
            return why
        self.info = {"alpha": ab[0], "beta": ab[1]}
        return None

    def rewrite(self, op, x, **_):
        alpha, beta = self.info["alpha"], self.info["beta"]
        if self.opset >= 14 and _is_hardswish(alpha, beta):
            return op.HardSwish(x)
        return op.Mul(x, op.HardSigmoid(x, alpha=alpha, beta=beta))


class _HardSwishFromHardSigmoid(_Rule):
    """x * HardSigmoid(x, 1/6, 0.5) -> HardSwish(x) (opset >= 14)."""

    def __init__(self, log: _Log) -> None:
        super().__init__(log, "HardSwish[x*hardsigmoid(x)]")
        self.roots = frozenset({"Mul"})
        self.anchor = (frozenset({"HardSigmoid"}), 1)

    def pattern(self, op, x):
        return op.Mul(x, op.HardSigmoid(x, _allow_other_attributes=True, _outputs=["gate"]))

    def why_not(self, context, x, gate, **_):
        if (why := _float_input(x)) is not None:
            return why
        node = gate.producer()
        alpha = node.attributes.get_float("alpha", 0.2)
        beta = node.attributes.get_float("beta", 0.5)
        if not _is_hardswish(alpha, beta):
            return f"HardSigmoid(alpha={alpha:g}, beta={beta:g}) is not HardSwish's (1/6, 0.5)"
        return None

    def rewrite(self, op, x, **_):
        return op.HardSwish(x)


class FuseHardActivationsPass(ir.passes.InPlacePass):
    """Clip-based HardSigmoid/HardSwish forms -> HardSigmoid / HardSwish (opset >= 14).

    Complements fuse-hardswish (Clip(x+3,0,6)/6 forms): Clip(a*x+b, 0, 1),
    Clip(x+b, 0, m) * (1/m), x * Clip(x+b, 0, m) * (1/m), and x * HardSigmoid(x, 1/6,
    0.5) left behind by them -> HardSwish. Needs Clip with min/max inputs (opset >= 11).
    """

    def call(self, model: ir.Model) -> FusionResult:
        log = _Log()
        opset = onnx_opset(model) or 0
        if opset < 11 or not _ensure_shapes(model, ["Clip", "HardSigmoid"]):
            return _result(model, False, log)
        first: list[_Rule] = [
            _HardSwishScaledClip(log, "Mul", opset),
            _HardSwishScaledClip(log, "Div", opset),
            _HardSigmoidAffine(log),
            _HardSigmoidScaledClip(log, "Mul"),
            _HardSigmoidScaledClip(log, "Div"),
        ]
        count = _rewrite(model, first)
        if opset >= 14:
            # The HardSigmoids written above (and any already there) times x.
            count += _rewrite(model, [_HardSwishFromHardSigmoid(log)])
        if count:
            logger.info("fuse-hard-activations: %d rewrites", count)
        return _result(model, bool(count), log, fused={"hard-activation": count})


# ---------------------------------------------------------------------------------------
# SiLU: x * Sigmoid(x) has no standard op: annotate it.


class _SiLU(_DetectOnly):
    """x * Sigmoid(x), or x * Sigmoid(beta * x) (Swish) with a constant scalar beta."""

    def __init__(self, log: _Log) -> None:
        super().__init__(log, "SiLU")
        self.roots = frozenset({"Mul"})
        self.anchor = (frozenset({"Sigmoid"}), 1)

    def pattern(self, op, x, beta):
        gate = pattern.OrValue(
            [op.Sigmoid(x), op.Sigmoid(op.Mul(x, beta))],
            tag_var="scaled",
            tag_values=[False, True],
        )
        return op.Mul(x, gate)

    def why_not(self, context, x, beta, scaled, **_):
        if (why := _float_input(x)) is not None:
            return why
        value = 1.0
        if scaled:
            b, why = _scalar(beta, x, "beta")
            if b is None:
                return why
            value = b
        self.info = {"beta": value}
        return None


class DetectSiLUPass(ir.passes.InPlacePass):
    """x * Sigmoid(x) (and Swish, x * Sigmoid(beta * x)) -> nodes annotated, not rewritten.

    No standard op computes SiLU, and ORT fuses nothing for it on CPU; the annotation
    (``lepton.pattern=silu``, plus ``lepton.silu.beta`` on the Mul when beta != 1) is for
    later target-specific passes. `modified` is True only when an annotation changed.
    """

    def call(self, model: ir.Model) -> FusionResult:
        log = _Log()
        if not _ensure_shapes(model, ["Sigmoid"]):
            return _result(model, False, log)
        found = _find(model, [_SiLU(log)])

        def details(match: _Found) -> dict[str, str]:
            beta = match.info.get("beta", 1.0)
            return {} if beta == 1.0 else {"lepton.silu.beta": repr(beta)}

        changed = _annotate(model, found, "silu", details)
        if found:
            logger.info("detect-silu: %d SiLU patterns", len(found))
        return _result(model, changed, log, detected={"silu": len(found)})


# ---------------------------------------------------------------------------------------
# Scaled dot-product attention:
#   MatMul(Q [*|/ qs], Transpose(K) [*|/ ks]) [*|/ s] [+ mask] -> Softmax(last) ->
#   [Where(IsNaN(p), 0, p)] -> MatMul(., V)
# Modelled on onnxscript's ort_fusions SDPA pattern, whose replacement is an
# ORT-internal op; ours annotates, and writes the opset-23 Attention op where it can.

# Transpose perms that put K's feature axis before its sequence axis.
_KEY_LAYOUTS = {(0, 1, 3, 2): "BHSD", (0, 2, 3, 1): "BSHD", (0, 2, 1): "NSD"}


class _SDPA(_Rule):
    """The attention pattern above; with `to_attention`, also what Attention-23 needs."""

    def __init__(self, log: _Log, opset: int, to_attention: bool) -> None:
        super().__init__(log, "SDPA->Attention" if to_attention else "SDPA")
        self.roots = frozenset({"MatMul"})
        self.anchor = (frozenset({"Softmax"}), 2)
        self.opset = opset
        self.to_attention = to_attention

    @staticmethod
    def _scaled(op, x, scale, tag):
        return pattern.OrValue(
            [op.Mul(x, scale), op.Div(x, scale), x], tag_var=tag, tag_values=["Mul", "Div", None]
        )

    def pattern(self, op, query, key, value, mask, query_scale, key_scale, qk_scale, zero):
        key_t = op.Transpose(key, _allow_other_attributes=True, _outputs=["key_t"])
        q = self._scaled(op, query, query_scale, "query_scaling")
        k = self._scaled(op, key_t, key_scale, "key_scaling")
        scores = self._scaled(op, op.MatMul(q, k), qk_scale, "qk_scaling")
        scores = pattern.OrValue(
            [op.Add(scores, mask), scores], tag_var="has_mask", tag_values=[True, False]
        )
        probs = op.Softmax(scores, _allow_other_attributes=True, _outputs=["probs"])
        probs = pattern.OrValue(
            [op.Where(op.IsNaN(probs), zero, probs), probs],
            tag_var="nan_guard",
            tag_values=[True, False],
        )
        return op.MatMul(probs, value)

    def why_not(
        self,
        context,
        query,
        key,
        value,
        mask,
        key_t,
        probs,
        has_mask,
        nan_guard,
        zero=None,
        **bindings,
    ):
        if (why := _float_input(query)) is not None:
            return why
        softmax = probs.producer()
        scores = softmax.inputs[0]
        rank = _rank(scores)
        axis = softmax.attributes.get_int("axis", -1 if self.opset >= 13 else 1)
        if not (axis == -1 or (rank is not None and axis == rank - 1)):
            return f"Softmax over axis {axis} of rank {rank}, not the last axis"
        perm = tuple(key_t.producer().attributes.get_ints("perm", ()))
        layout = _KEY_LAYOUTS.get(perm)
        if layout is None:
            return f"key Transpose perm {list(perm)} is not a key-transpose of attention"
        scale = 1.0
        for tag, name in (
            ("query_scaling", "query_scale"),
            ("key_scaling", "key_scale"),
            ("qk_scaling", "qk_scale"),
        ):
            how = bindings.get(tag)
            if how is None:
                continue
            s, why = _scalar(bindings.get(name), query, name.replace("_", " "))
            if s is None:
                return why
            if s == 0:
                return f"{name.replace('_', ' ')} is 0"
            scale *= s if how == "Mul" else 1.0 / s
        if nan_guard and (why := _expect(zero, None, "IsNaN fill", 0.0)) is not None:
            return why
        self.info = {"scale": scale, "layout": layout, "mask": bool(has_mask)}
        if self.to_attention:
            return self._attention_why_not(query, key, value, mask, layout, nan_guard)
        return None

    def _attention_why_not(self, query, key, value, mask, layout, nan_guard):
        if nan_guard:
            return "softmax has a Where(IsNaN) guard; Attention's fully-masked rows may differ"
        if layout == "NSD":
            return "3-D attention: Attention-23 reads 3-D inputs as (batch, seq, heads*dim)"
        q, k, v = _static_dims(query), _static_dims(key), _static_dims(value)
        if q is None or k is None or v is None or not (len(q) == len(k) == len(v) == 4):
            return "query/key/value are not 4-D tensors of static shape"
        if layout == "BSHD":
            k = [k[0], k[2], k[1], k[3]]
        b, h, s, d = q
        if k[:2] != [b, h] or v[:2] != [b, h]:
            return f"batch/heads differ: query {q}, key {k} (B,H,S,D), value {v}"
        if k[3] != d or v[2] != k[2]:
            return f"head size or sequence length differ: query {q}, key {k}, value {v}"
        if key.dtype != query.dtype or value.dtype != query.dtype:
            return "query, key and value dtypes differ"
        if mask is not None:
            m = _static_dims(mask)
            if m is None or len(m) > 4:
                return "mask shape is unknown or of rank above 4"
            full = [b, h, s, k[2]]
            for mdim, fdim in zip(reversed(m), reversed(full), strict=False):
                if mdim not in (1, fdim):
                    return f"mask {m} does not broadcast to the scores {full}"
            if mask.dtype != query.dtype:
                return f"mask is {mask.dtype}, not {query.dtype}"
            # ORT's Attention broadcasts a mask over batch and heads only: its last two
            # dims must be (S, L), so a (..., 1, L) padding mask is expanded.
            self.info["mask_shape"] = [*m[:-2], s, k[2]]
            self.info["mask_dims"] = m
        return None

    def rewrite(self, op, query, key, value, mask, **_):
        info = self.info
        if info["layout"] == "BSHD":
            key = op.Transpose(key, perm=[0, 2, 1, 3])
        inputs = [query, key, value]
        if mask is not None:
            if info["mask_shape"] != info["mask_dims"]:
                shape = np.array(info["mask_shape"], dtype=np.int64)
                mask = op.Expand(mask, self.new_initializer(op, shape, "attention_mask_shape"))
            inputs.append(mask)
        return op.Attention(*inputs, scale=info["scale"])


def _sdpa_details(match: _Found) -> dict[str, str]:
    info = match.info
    return {
        "lepton.sdpa.scale": repr(info["scale"]),
        "lepton.sdpa.key_layout": info["layout"],
        "lepton.sdpa.mask": "add" if info["mask"] else "none",
    }


class FuseAttentionPass(ir.passes.InPlacePass):
    """Scaled dot-product attention subgraphs -> annotated; -> Attention at opset >= 23.

    Finds MatMul(Q, Kᵀ) -> (Div|Mul scale) -> (Add mask)? -> Softmax -> MatMul(V), with
    the scale possibly on Q and/or Kᵀ instead. Every node of a match gets
    ``lepton.pattern=sdpa`` and ``lepton.pattern.id=sdpa/<n>``; its last MatMul also
    ``lepton.sdpa.scale``, ``lepton.sdpa.key_layout`` (BHSD, BSHD or NSD) and
    ``lepton.sdpa.mask``. At opset >= 23 matches with 4-D static shapes become the
    standard Attention op (K transposed to BHSD, a mask expanded to (..., S, L) for
    ORT); the rest are annotated.

    Args:
        rewrite: write Attention at opset >= 23 (else only annotate).
    """

    def __init__(self, *, rewrite: bool = True) -> None:
        super().__init__()
        self.rewrite = rewrite

    def call(self, model: ir.Model) -> FusionResult:
        log = _Log()
        opset = onnx_opset(model) or 0
        if not _ensure_shapes(model, ["Softmax"]):
            return _result(model, False, log)
        fused = 0
        if self.rewrite and opset >= 23:
            fused = _rewrite(model, [_SDPA(log, opset, to_attention=True)])
        found = _find(model, [_SDPA(log, opset, to_attention=False)])
        changed = _annotate(model, found, "sdpa", _sdpa_details)
        if fused or found:
            logger.info(
                "fuse-attention: %d Attention, %d attention patterns annotated (opset %d)",
                fused,
                len(found),
                opset,
            )
        return _result(
            model, bool(fused) or changed, log, fused={"sdpa": fused}, detected={"sdpa": len(found)}
        )


def pattern_nodes(model: ir.Model, name: str) -> dict[str, list[ir.Node]]:
    """Annotated nodes of pattern `name` ("sdpa", "silu"), grouped by pattern id."""
    groups: dict[str, list[ir.Node]] = {}
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.metadata_props.get(PATTERN_KEY) == name:
            groups.setdefault(node.metadata_props.get(PATTERN_ID_KEY, ""), []).append(node)
    return groups


__all__ = [
    "PATTERN_ID_KEY",
    "PATTERN_KEY",
    "DetectSiLUPass",
    "FuseAttentionPass",
    "FuseGeluPass",
    "FuseHardActivationsPass",
    "FuseLayerNormPass",
    "FusionResult",
    "pattern_nodes",
]
