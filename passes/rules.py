"""Rewrite rules on onnxscript's rewriter: one base whose check says why it turns a match down.

onnxscript calls a rule's ``check(context, **bindings)`` after a structural match and its
``rewrite(op, **bindings)`` if the check passed; both see every pattern variable by name. A
``Rule`` writes ``why_not`` instead of ``check``: the reason a match may not be rewritten, or
None. The base turns that into onnxscript's MatchResult (which ``rejections`` reports for "why
did this not fuse?"), keeps the graph the match lies in, and names new initializers there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript import rewriter
from onnxscript.rewriter import RewriteRule, RewriteRuleClassBase
from onnxscript.rewriter._basics import MatchingTracer, MatchResult, MatchStatus
from onnxscript.rewriter._rewrite_rule import RewriteRuleSet

from lepton_compile.passes._utils import fresh_name


class Rule(RewriteRuleClassBase):
    """A pattern / why_not / rewrite rule (see the module docstring).

    ``graph`` is the graph of the match last checked: where ``rewrite`` adds initializers.
    """

    def __init__(
        self, name: str | None = None, *, remove_nodes: bool = True, as_function: bool = False
    ) -> None:
        super().__init__(name, remove_nodes=remove_nodes, as_function=as_function)
        self.graph: ir.Graph | None = None

    # onnxscript names the first parameter `op`; it is passed positionally.
    def check(self, context: Any, *_: Any, **bindings: Any) -> MatchResult:  # type: ignore[override]
        result = MatchResult()
        self.graph = context.root.graph
        reason = self.why_not(context, **bindings)
        if reason is not None:
            self.rejected(context.root, reason)
            return result.fail(reason)
        return result

    def why_not(self, context: Any, **bindings: Any) -> str | None:
        """None if the match may be rewritten, else the reason it may not."""
        return None

    def rejected(self, node: ir.Node, reason: str) -> None:
        """Told of every match the check turns down, at its root `node` (for logs)."""

    def new_initializer(self, op: Any, array: np.ndarray, base: str) -> ir.Value:
        """An initializer holding `array` in the matched graph, under a fresh name from `base`."""
        assert self.graph is not None
        return op.initializer(ir.tensor(array), name=fresh_name(self.graph, base))


def producer(value: ir.Value) -> ir.Node:
    """The node that writes `value`, which the pattern matched (so there is one)."""
    node = value.producer()
    assert node is not None
    return node


def apply_rules(model: ir.Model, rules: Sequence[RewriteRule]) -> bool:
    """Rewrite `model` in place with `rules`; whether anything changed."""
    modified = rewriter.RewritePass(list(rules))(model).modified
    if modified:
        # Replaced weights and BatchNorm statistics are left behind as unused initializers.
        common_passes.RemoveUnusedNodesPass()(model)
    return modified


def rejections(model: ir.Model, rules: Sequence[RewriteRule]) -> list[tuple[str, str, str]]:
    """(rule, node, reason) for every match a rule's check turned down; `model` is unchanged.

    For "why did this not fuse?": the rules run with onnxscript's matching tracer, which
    keeps each rule's most complete failed matches.
    """
    tracer = MatchingTracer()
    RewriteRuleSet(list(rules)).apply_to_model(model, tracer=tracer)
    found = []
    for rule, matches in tracer.best_matches_map.items():
        for info in matches:
            if info.status == MatchStatus.CONDITION_FAILED:
                name = rule.name or type(rule).__name__
                root = info.root_node
                found.append((name, root.name or root.op_type, info.match_result.reason))
    return found
