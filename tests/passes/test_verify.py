"""optimize(verify=True): broken passes are found, dropped and reported; good ones are kept."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from pass_harness import ops

from lepton_compile.passes import optimize, registry
from lepton_compile.passes.testing import model_from_text, run_ort
from lepton_compile.passes.verify import (
    DEFAULT_TOLERANCES,
    Reference,
    compare,
    make_inputs,
    verify_model,
)

RNG = np.random.default_rng(0)
MLP_WEIGHTS = {
    "w1": RNG.standard_normal((32, 64)).astype(np.float32) * 0.2,
    "b1": RNG.standard_normal(64).astype(np.float32) * 0.1,
    "w2": RNG.standard_normal((64, 8)).astype(np.float32) * 0.2,
    "b2": RNG.standard_normal(8).astype(np.float32) * 0.1,
}


def mlp(batch: str = "1") -> onnx.ModelProto:
    """MatMul+Add (fuse-matmul-add makes Gemm), Relu, an Identity (eliminate-identity)."""
    return model_from_text(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        mlp (float[{batch}, 32] x) => (float[{batch}, 8] y) {{
            h = MatMul (x, w1)
            hb = Add (h, b1)
            r = Relu (hb)
            i = Identity (r)
            o = MatMul (i, w2)
            y = Add (o, b2)
        }}
        """,
        MLP_WEIGHTS,
    )


class FlipReluPass(ir.passes.InPlacePass):
    """Deliberately wrong: Relu -> Sigmoid."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "Sigmoid"
                modified = True
        return ir.passes.PassResult(model, modified)


class RaisingPass(ir.passes.InPlacePass):
    def call(self, model: ir.Model) -> ir.passes.PassResult:
        raise RuntimeError("this pass always fails")


class DanglingInputPass(ir.passes.InPlacePass):
    """Invalid graph: the Relu reads a value nothing produces."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in model.graph:
            if node.op_type == "Relu":
                node.replace_input_with(0, ir.Value(name="nowhere"))
                return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)


class BadAttributePass(ir.passes.InPlacePass):
    """onnx.checker accepts it, ORT refuses it: Softmax on an axis out of range."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in model.graph:
            if node.op_type == "Relu":
                node.op_type = "Softmax"
                node.attributes["axis"] = ir.AttrInt64("axis", 7)
                return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)


class LeptonReluPass(ir.passes.InPlacePass):
    """Relu -> ai.lepton::Relu, with a model-local function body when `function`."""

    def __init__(self, function: bool = True) -> None:
        super().__init__()
        self.function = function

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in model.graph:
            if node.op_type == "Relu" and node.domain == "":
                node.domain = "ai.lepton"
                modified = True
        if modified:
            model.opset_imports["ai.lepton"] = 1
            if self.function:
                x = ir.Value(name="x")
                body = ir.node("Relu", [x])
                body.outputs[0].name = "y"
                graph = ir.Graph([x], body.outputs, nodes=[body], opset_imports={"": 17})
                function = ir.Function("ai.lepton", "Relu", "", graph=graph, attributes=[])
                model.functions[function.identifier()] = function
        return ir.passes.PassResult(model, modified)


@pytest.fixture
def broken(monkeypatch):
    """Registers the broken test passes for this test only."""
    specs = {
        "test-flip-relu": FlipReluPass,
        "test-raise": RaisingPass,
        "test-dangling": DanglingInputPass,
        "test-bad-attribute": BadAttributePass,
        "test-lepton-relu": LeptonReluPass,
        "test-lepton-relu-nofunc": lambda: LeptonReluPass(function=False),
    }
    for name, factory in specs.items():
        spec = registry.PassSpec(name, "broken on purpose (test)", factory)
        monkeypatch.setitem(registry._REGISTRY, name, spec)
    return specs


GOOD = ["eliminate-identity", "fuse-matmul-add", "remove-unused"]


def test_broken_pass_is_dropped_and_good_passes_kept(broken, caplog):
    model = mlp()
    before = model.SerializeToString()
    names = ["eliminate-identity", "test-flip-relu", "fuse-matmul-add", "remove-unused"]
    with caplog.at_level(logging.WARNING):
        result = optimize(model, passes=names)
    v = result.verification
    assert v.status == "passed" and v.passed is True
    assert [(d.name, d.reason.split(":")[0]) for d in v.dropped] == [
        ("test-flip-relu", "output 'y'")
    ]
    assert result.dropped == ["test-flip-relu"]
    assert result.passes == GOOD
    assert [r.name for r in result.records] == GOOD
    # The good passes' work survives: no Identity, the MatMul+Add pairs are Gemms.
    assert "Identity" not in ops(result.model) and "Sigmoid" not in ops(result.model)
    assert ops(result.model)[0] == "Gemm"
    assert any("test-flip-relu" in r.message for r in caplog.records if r.levelname == "WARNING")
    assert model.SerializeToString() == before
    report = v.to_dict()
    assert report["dropped"][0]["pass"] == "test-flip-relu"
    assert report["inputs"] == {"seed": 0, "shapes": {"x": [1, 32]}}
    assert report["tolerances"]["float32"]["rtol"] == DEFAULT_TOLERANCES["float32"].rtol
    expected = run_ort(model, make_inputs(model))
    actual = run_ort(result.model, make_inputs(model))
    np.testing.assert_allclose(actual[0], expected[0], rtol=1e-4, atol=1e-5)


def test_culprit_found_among_many_passes(broken):
    names = registry.resolve_pipeline("fused", "ort")
    names.insert(names.index("fuse-matmul-add") + 1, "test-flip-relu")
    result = optimize(mlp(), passes=names)
    assert result.dropped == ["test-flip-relu"]
    assert result.verification.passed
    assert "Gemm" in ops(result.model)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("test-raise", "raised this pass always fails"),
        ("test-dangling", "onnx.checker"),
    ],
)
def test_raising_or_invalid_pass_is_dropped(broken, bad, reason):
    result = optimize(mlp(), passes=["eliminate-identity", bad, "fuse-matmul-add"])
    assert [d.name for d in result.verification.dropped] == [bad]
    assert result.verification.dropped[0].reason.startswith(reason)
    assert result.verification.passed
    assert "Gemm" in ops(result.model)


def test_result_ort_cannot_load_is_dropped(broken):
    # check=False so that ORT, not onnx.checker, is the one to refuse it.
    result = optimize(mlp(), passes=["test-bad-attribute", "eliminate-identity"], check=False)
    (dropped,) = result.verification.dropped
    assert dropped.name == "test-bad-attribute"
    assert "onnxruntime" in dropped.reason
    assert result.passes == ["eliminate-identity"]


def test_no_verify_keeps_a_broken_pass(broken):
    result = optimize(mlp(), passes=["test-flip-relu"], verify=False)
    assert result.verification is None and result.dropped == []
    assert "Sigmoid" in ops(result.model)
    with pytest.raises(ir.passes.PassError):
        optimize(mlp(), passes=["test-raise"], verify=False)


def test_original_ort_cannot_run_is_skipped_not_failed(broken):
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2, 4] x) => (float[2, 4] y) {
            a = Identity (x)
            r = Relu (a)
            y = com.example.Mystery (r)
        }
        """
    )
    result = optimize(model, passes=["eliminate-identity", "test-dangling"])
    v = result.verification
    assert v.status == "skipped" and v.passed is None
    assert "com.example::Mystery" in v.reason
    # onnx.checker still applies: the pass that breaks the graph goes.
    assert [d.name for d in v.dropped] == ["test-dangling"]
    assert ops(result.model) == ["Relu", "Mystery"]
    assert v.to_dict()["summary"].startswith("skipped: ")


def test_lepton_ops_with_local_function_are_verified(broken):
    result = optimize(mlp(), target="lepton", passes=["test-lepton-relu", "eliminate-identity"])
    assert result.verification.status == "passed"
    assert result.dropped == []
    assert any(n.domain == "ai.lepton" for n in result.model.graph.node)


def test_lepton_ops_without_function_skip_the_comparison(broken):
    result = optimize(mlp(), target="lepton", passes=["test-lepton-relu-nofunc"])
    v = result.verification
    assert v.status == "skipped" and "ai.lepton::Relu" in v.reason
    assert result.dropped == []


def test_unverifiable_round_trip_returns_the_model_unchanged(monkeypatch):
    monkeypatch.setattr(Reference, "check", lambda self, candidate, outputs=True: "boom")
    model = mlp()
    result = optimize(model, passes=GOOD)
    assert result.verification.status == "failed" and result.verification.passed is False
    assert "boom" in result.verification.reason
    assert result.passes == [] and result.records == []
    assert result.model.SerializeToString() == model.SerializeToString()


def test_dynamic_model_verified_at_1_and_still_dynamic():
    """Shape -> Gather -> Concat -> Reshape on a dynamic batch: folding must leave it."""
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[N, 4, 8] x) => (float[N, 32] y) {
            s = Shape (x)
            zero = Constant <value = int64[1] {0}> ()
            n = Gather <axis = 0> (s, zero)
            rest = Constant <value = int64[1] {-1}> ()
            shape = Concat <axis = 0> (n, rest)
            r = Reshape (x, shape)
            one = Constant <value = float {1.0}> ()
            m = Mul (r, one)
            h = MatMul (m, w)
            y = Add (h, b)
        }
        """,
        {
            "w": RNG.standard_normal((32, 32)).astype(np.float32),
            "b": RNG.standard_normal(32).astype(np.float32),
        },
    )
    result = optimize(model)
    assert result.verification.input_shapes == {"x": [1, 4, 8]}
    assert result.verification.passed and not result.dropped
    assert len(result.model.graph.node) < len(model.graph.node)
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N"
    for batch in (2, 5):
        feeds = {"x": RNG.standard_normal((batch, 4, 8)).astype(np.float32)}
        (expected,) = run_ort(model, feeds)
        (actual,) = run_ort(result.model, feeds)
        assert actual.shape == (batch, 32)
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_verify_shapes_and_symbols_shared_between_inputs():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[B, T] a, float[B, T] b, float[B, 3] c) => (float[B, T] y, float[B, 3] z) {
            y = Add (a, b)
            z = Relu (c)
        }
        """
    )
    result = optimize(model, verify_shapes={"a": [3, 7]})
    assert result.verification.input_shapes == {"a": [3, 7], "b": [3, 7], "c": [3, 3]}
    assert result.verification.passed
    with pytest.raises(ValueError, match="not a fed input"):
        optimize(model, verify_shapes={"nope": [1]})


def test_integer_inputs_index_within_gather_tables():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[B, 16] input_ids, int64[B, 16] attention_mask) => (float[B, 16, 4] y) {
            e = Gather (table, input_ids)
            m = Cast <to = 1> (attention_mask)
            mu = Unsqueeze (m, axes)
            y = Mul (e, mu)
        }
        """,
        {
            "table": RNG.standard_normal((5, 4)).astype(np.float32),
            "axes": np.array([-1], dtype=np.int64),
        },
    )
    feeds = make_inputs(model, seed=3)
    assert feeds["input_ids"].min() >= 0 and feeds["input_ids"].max() < 5
    assert (feeds["attention_mask"] == 1).all()
    assert optimize(model).verification.passed


def random_and_identity() -> onnx.ModelProto:
    """An unseeded random output beside an Identity that eliminate-identity removes."""
    return model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2, 3] x) => (float[2, 3] noise, float[2, 3] y) {
            noise = RandomUniformLike (x)
            i = Identity (x)
            y = Relu (i)
        }
        """
    )


def test_random_ops_do_not_fail_verification():
    result = optimize(random_and_identity(), passes=["eliminate-identity"])
    # A fresh ORT session repeats its random draws; were they to move between the two
    # runs of the original, that output would be held to dtype and shape only.
    assert result.verification.passed and not result.dropped


def test_duplicate_graph_outputs_are_refused():
    original = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (float[2] a, float[2] b) => (float[2] y, float[2] z) {
            y = Add (a, b)
            z = Identity (y)
        }
        """
    )
    broken = onnx.ModelProto()
    broken.CopyFrom(original)
    broken.graph.output[0].name = "z"
    del broken.graph.node[1]
    broken.graph.node[0].output[0] = "z"
    problem = Reference.prepare(original).check(broken)
    assert problem is not None and "twice" in problem


def test_compare_tolerances_per_dtype():
    f32 = np.array([1000.0, 0.0], dtype=np.float32)
    # atol is relative to the output's scale: 1e-4 * 1000.
    assert compare(f32, f32 + np.float32(0.05)) is None
    small = np.array([1.0, 0.0], dtype=np.float32)
    assert "differ" in compare(small, small + np.float32(0.05))
    half = np.array([1.0, 0.5], dtype=np.float16)
    assert compare(half, half + np.float16(0.004)) is None  # fp16 is looser
    assert compare(half.astype(np.float32), half.astype(np.float32) + 0.004) is not None
    ints = np.array([1, 2, 3])
    assert compare(ints, ints) is None
    assert "exact" in compare(ints, ints + np.array([0, 0, 1]))
    assert "dtype" in compare(ints, ints.astype(np.int32))
    assert "shape" in compare(small, small[:1])
    nan = np.array([np.nan, np.inf], dtype=np.float32)
    assert compare(nan, nan.copy()) is None
    assert compare([small, ints], [small, ints]) is None
    assert "sequence" in compare([small], [small, small])
    assert compare(None, None) is None and compare(None, small) is not None


def test_verify_model_helper():
    model = mlp()
    assert verify_model(model, optimize(model, passes=GOOD).model) is None
    flipped = onnx.ModelProto()
    flipped.CopyFrom(model)
    for node in flipped.graph.node:
        if node.op_type == "Relu":
            node.op_type = "Sigmoid"
    assert "differ" in verify_model(model, flipped)


def test_instruments_see_full_attempts_only(broken):
    seen: list[str] = []

    class Recorder:
        def before_pass(self, name, model):
            seen.append(name)

        def after_pass(self, name, model, result):
            pass

    optimize(mlp(), passes=["test-flip-relu", *GOOD], instruments=[Recorder()])
    # First attempt (all four), then the one without the dropped pass; not the bisection.
    assert seen == ["test-flip-relu", *GOOD, *GOOD]


def test_outputs_that_move_between_runs_are_held_to_dtype_and_shape(monkeypatch):
    from lepton_compile.passes import verify

    real = verify._session
    runs: list[int] = []

    class Drifting:
        """The first output changes on every run, as an unseeded random op's would."""

        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            runs.append(1)
            first, *rest = self.session.run(names, feeds)
            return [first + np.float32(len(runs)), *rest]

    monkeypatch.setattr(verify, "_session", lambda model: Drifting(real(model)))
    result = optimize(random_and_identity(), passes=["eliminate-identity"])
    assert result.verification.passed and not result.dropped
    assert any("noise" in note for note in result.verification.notes)
