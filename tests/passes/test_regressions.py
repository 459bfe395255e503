"""Regressions from the onnx backend node/model tests, each reduced to a small ONNX-text model.

Each test names the backend test that showed the bug and the layer it was fixed in
(ours, or a guard around an onnx-ir / onnxscript pass).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from pass_harness import ops

from lepton_compile.passes import optimize
from lepton_compile.passes.cleanup import DeduplicateInitializersPass
from lepton_compile.passes.testing import model_from_text
from lepton_compile.passes.verify import Reference, duplicate_outputs

RNG = np.random.default_rng(7)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def holds(
    model: onnx.ModelProto,
    passes: Sequence[str] | None = None,
    *,
    feeds: Mapping[str, np.ndarray] | None = None,
) -> onnx.ModelProto:
    """Run `passes` (default: the fused pipeline) without verification; the result must
    pass onnx.checker, list no output twice, match the original on ORT, and be left
    unchanged by a second run."""
    result = optimize(model, passes=passes, verify=False, check=False)
    onnx.checker.check_model(result.model, full_check=True)
    assert not duplicate_outputs(result.model)
    reference = Reference.prepare(model, feeds=feeds)
    assert reference.skipped is None, reference.skipped
    assert reference.check(result.model) is None
    again = optimize(result.model, passes=passes, verify=False, check=False)
    assert [r.name for r in again.records if r.modified] == [], "not idempotent"
    return result.model


# --- 1. Identity whose output and input are both graph outputs ----------------------
# test_scan_sum, test_scan9_sum, test_scan9_multi_state, test_loop11: onnx-ir 1.1.0's
# IdentityElimination made the body's outputs (scan_out, scan_out). Ours: EliminateIdentityPass.


@pytest.mark.parametrize("passes", [["eliminate-identity"], ["simplify"], None])
def test_identity_of_a_graph_output_is_kept(passes):
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] a, float[2,3] b) => (float[2,3] y, float[2,3] z) {
            y = Add(a, b)
            z = Identity(y)
        }
        """
    )
    out = holds(model, passes)
    assert [o.name for o in out.graph.output] == ["y", "z"]
    assert ops(out.graph) == ["Add", "Identity"]


def test_identity_in_scan_body_keeps_both_outputs():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 11]>
        g (float[2] initial, float[3,2] x) => (float[2] y, float[3,2] z) {
            y, z = Scan<num_scan_inputs = 1, body = scan_body (float[2] sum_in, float[2] next)
                => (float[2] sum_out, float[2] scan_out) {
                sum_out = Add(sum_in, next)
                scan_out = Identity(sum_out)
            }>(initial, x)
        }
        """
    )
    out = holds(model)
    (body,) = [a.g for a in out.graph.node[0].attribute if a.name == "body"]
    assert [o.name for o in body.output] == ["sum_out", "scan_out"]
    assert ops(body) == ["Add", "Identity"]


def test_identity_of_an_outer_scope_value_is_kept():
    # onnx-ir renames the outer `t` to the branch output `a`: the then-branch is left
    # with no node producing its output (onnx.checker rejects it).
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (bool c, float[2] x) => (float[2] y) {
            t = Relu(x)
            y = If(c) <
                then_branch = then_g () => (float[2] a) { a = Identity(t) },
                else_branch = else_g () => (float[2] b) { b = Neg(t) }
            >
        }
        """
    )
    for flag in (True, False):
        out = holds(model, ["eliminate-identity"], feeds={"c": np.array(flag), "x": rand(2)})
    (then_branch,) = [a.g for a in out.graph.node[1].attribute if a.name == "then_branch"]
    assert ops(then_branch) == ["Identity"]


def test_identity_chain_into_two_outputs():
    # z1 = Identity(y), z2 = Identity(y), y not an output: one Identity goes, one stays.
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] a) => (float[2,3] z1, float[2,3] z2) {
            y = Relu(a)
            z1 = Identity(y)
            z2 = Identity(y)
        }
        """
    )
    out = holds(model, ["eliminate-identity"])
    assert [o.name for o in out.graph.output] == ["z1", "z2"]
    assert ops(out.graph) == ["Relu", "Identity"]


# --- 2. Lifted constants in an IR 3 model -------------------------------------------
# test_PixelShuffle, test_operator_repeat(_dim_overflow): onnx-ir's lift pass left
# initializers that are no graph inputs in IR 3 models. Ours: LiftConstantsPass bumps IR.


@pytest.mark.parametrize("passes", [["lift-constants"], None])
def test_lift_constants_in_ir3_model_moves_to_ir4(passes):
    model = model_from_text(
        """
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[1,4,2,2] x) => (float[1,1,4,4] y) {
            shape = Constant<value = int64[6] {1, 1, 2, 2, 2, 2}>()
            r = Reshape(x, shape)
            t = Transpose<perm = [0, 1, 4, 2, 5, 3]>(r)
            shape2 = Constant<value = int64[4] {1, 1, 4, 4}>()
            y = Reshape(t, shape2)
        }
        """
    )
    out = holds(model, passes)
    assert out.ir_version >= 4
    assert "Constant" not in ops(out.graph)


def test_lift_constants_leaves_ir_alone_when_nothing_lifts():
    model = model_from_text(
        """
        <ir_version: 3, opset_import: ["" : 9]>
        g (float[2] x) => (float[2] y) {
            y = Relu(x)
        }
        """
    )
    result = optimize(model, passes=["lift-constants"], verify=False)
    assert result.records[0].modified is False
    assert result.model.ir_version == 3


# --- 3. Dedup of strided (folded) initializers --------------------------------------
# test_Linear_no_bias: onnx-ir's hashed dedup raised "ndarray is not C-contiguous" on a
# folded Transpose. Ours: DeduplicateInitializersPass.


def test_dedup_after_folded_transpose():
    w = rand(4, 3)
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2,3] x) => (float[2,4] y) {
            wt = Transpose<perm = [1, 0]>(w)
            a = MatMul(x, wt)
            b = MatMul(x, v)
            y = Add(a, b)
        }
        """,
        {"w": w, "v": np.ascontiguousarray(w.T)},
    )
    out = holds(model, ["fold-constants", "dedup-initializers", "cse", "remove-unused"])
    assert len(out.graph.initializer) == 1
    assert ops(out.graph) == ["MatMul", "Add"]
    holds(model)


def test_dedup_strided_and_string_tensors():
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 17})
    values = {
        "strided": base.T,  # not C-contiguous
        "contiguous": np.ascontiguousarray(base.T),
        "other": base.T + 1,
    }
    for name, array in values.items():
        graph.register_initializer(ir.Value(name=name, const_value=ir.tensor(array, name=name)))
    for name in ("s1", "s2"):
        tensor = ir.StringTensor(np.array([b"ab", b"c"], dtype=object), name=name)
        graph.register_initializer(ir.Value(name=name, const_value=tensor))
    model = ir.Model(graph, ir_version=8)
    assert DeduplicateInitializersPass()(model).modified
    assert sorted(graph.initializers) == ["other", "s1", "strided"]


# --- 4./5. Sequence-op folding against the model's opset ----------------------------
# test_sequence_model5/8 (opset 12): onnxscript's folder emitted opset-13 Unsqueeze/Split.
# test_split_to_sequence_1: it raised on a scalar split that is a graph input.
# Ours: ConstantFoldingPass hides those nodes from the folder.


@pytest.mark.parametrize("opset", [11, 12, 13])
def test_concat_from_sequence_new_axis_at_old_opsets(opset):
    model = model_from_text(
        f"""
        <ir_version: 7, opset_import: ["" : {opset}]>
        g (float[2,3,4] X, float[2,3,4] Y, float[2,3,4] Z) => (float[2,3,4,3] out) {{
            seq = SequenceConstruct(X, Y, Z)
            out = ConcatFromSequence<axis = -1, new_axis = 1>(seq)
        }}
        """
    )
    out = holds(model, ["fold-constants"])
    folded = "ConcatFromSequence" not in ops(out.graph)
    assert folded == (opset >= 13)
    holds(model)


@pytest.mark.parametrize("opset", [12, 13, 18])
def test_split_to_sequence_with_split_input(opset):
    model = model_from_text(
        f"""
        <ir_version: 7, opset_import: ["" : {opset}]>
        g (float[N] X, int64[3] splits) => (int64 n) {{
            seq = SplitToSequence(X, splits)
            n = SequenceLength(seq)
        }}
        """
    )
    feeds = {"X": rand(6), "splits": np.array([1, 2, 3], np.int64)}
    holds(model, ["fold-constants"], feeds=feeds)
    holds(model, feeds=feeds)


@pytest.mark.parametrize("opset", [12, 13, 17, 18])
@pytest.mark.parametrize("split", ["int64 {2}", "int64[3] {2, 2, 2}"], ids=["scalar", "1d"])
def test_split_to_sequence_with_constant_split(opset, split):
    # Scalar split: Split with num_outputs (opset >= 18); 1-D: Split with a split input
    # (opset >= 13). Below those, the SplitToSequence stays.
    model = model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : {opset}]>
        g (float[6,3] X) => (float[2,3] out) {{
            s = Constant<value = {split}>()
            seq = SplitToSequence<axis = 0>(X, s)
            one = Constant<value = int64 {{1}}>()
            out = SequenceAt(seq, one)
        }}
        """
    )
    out = holds(model, ["fold-constants"])
    folded = "SplitToSequence" not in ops(out.graph)
    assert folded == (opset >= (18 if split.startswith("int64 ") else 13))
    holds(model)


def test_split_to_sequence_with_scalar_split_input():
    # The folder read `.ndim` off the missing value of a non-constant scalar split.
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 18]>
        g (float[3,6] data, int64 split) => (int64 n) {
            seq = SplitToSequence<axis = 1>(data, split)
            n = SequenceLength(seq)
        }
        """
    )
    feeds = {"data": rand(3, 6), "split": np.array(2, np.int64)}
    out = holds(model, ["fold-constants"], feeds=feeds)
    assert ops(out.graph) == ["SplitToSequence", "SequenceLength"]
    holds(model, feeds=feeds)
