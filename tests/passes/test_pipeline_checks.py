"""optimize(require_outputs=True, extra_checks=[...]): unverifiable models refused early, extra
judges traced to a pass by the same prefix search as the numerics, and the model handed back
unchanged when it fails a judge before any pass."""

from __future__ import annotations

import onnx
import onnx_ir as ir
import pytest
from conftest import MarkNodePass

from lepton_compile.passes import optimize, registry
from lepton_compile.passes.testing import model_from_text
from lepton_compile.passes.verify import UnverifiableError

MLP = """
<ir_version: 8, opset_import: ["" : 17]>
mlp (float[2, 4] x) => (float[2, 4] y) {
    a = Identity (x)
    r = Relu (a)
    y = Neg (r)
}
"""


class MarkPass(MarkNodePass):
    """Names the Neg node "marked", so that a judge can tell it ran."""

    op_type, mark = "Neg", "marked"


class ForeignOpPass(ir.passes.InPlacePass):
    """Relu -> com.example::Relu with no function: ORT cannot run the result."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for node in model.graph:
            if node.op_type == "Relu" and node.domain == "":
                node.domain = "com.example"
                model.opset_imports["com.example"] = 1
                return ir.passes.PassResult(model, True)
        return ir.passes.PassResult(model, False)


@pytest.fixture
def test_passes(monkeypatch):
    for name, factory in {"test-mark": MarkPass, "test-foreign": ForeignOpPass}.items():
        spec = registry.PassSpec(name, "test pass", factory)
        monkeypatch.setitem(registry._REGISTRY, name, spec)


def marked(model: onnx.ModelProto) -> bool:
    return any(n.name == "marked" for n in model.graph.node)


class Judge:
    """Rejects models that `marked` flags; counts its calls."""

    def __init__(self, reject=marked) -> None:
        self.reject = reject
        self.calls = 0

    def __call__(self, candidate: onnx.ModelProto) -> str | None:
        self.calls += 1
        return "slower: 0.80x the input's speed" if self.reject(candidate) else None


PASSES = ["eliminate-identity", "test-mark", "remove-unused"]


def test_extra_check_drops_the_pass_it_blames(test_passes):
    judge = Judge()
    result = optimize(model_from_text(MLP), passes=PASSES, extra_checks=[judge])
    v = result.verification
    assert v.status == "passed" and v.unchanged is None
    assert [(d.name, d.reason) for d in v.dropped] == [
        ("test-mark", "slower: 0.80x the input's speed")
    ]
    assert result.passes == ["eliminate-identity", "remove-unused"]
    assert not marked(result.model)
    assert [n.op_type for n in result.model.graph.node] == ["Relu", "Neg"]
    # full result, round trip, bisection (about log2 of 3 prefixes), the result without it
    assert judge.calls <= 6


def test_extra_check_passing_keeps_everything(test_passes):
    judge = Judge(reject=lambda m: False)
    result = optimize(model_from_text(MLP), passes=PASSES, extra_checks=[judge])
    assert result.passes == PASSES and result.verification.dropped == []
    assert judge.calls == 1  # the final model only


def test_extra_check_failing_before_any_pass_returns_the_input(test_passes):
    model = model_from_text(MLP)
    result = optimize(model, passes=PASSES, extra_checks=[Judge(reject=lambda m: True)])
    v = result.verification
    assert v.status == "passed" and v.dropped == []
    assert v.unchanged == "slower: 0.80x the input's speed even with no pass applied"
    assert "returned unchanged" in v.summary() and v.to_dict()["unchanged"] == v.unchanged
    assert result.passes == [] and result.records == []
    assert result.model.SerializeToString() == model.SerializeToString()


def test_extra_checks_wait_for_the_numerics(test_passes):
    # Outputs not compared (ORT cannot run the original): no judgement on speed either.
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17, "com.example" : 1]>
        g (float[2, 4] x) => (float[2, 4] y) {
            r = Relu (x)
            y = com.example.Mystery (r)
        }
        """
    )
    judge = Judge()
    result = optimize(model, passes=["test-mark"], extra_checks=[judge])
    assert result.verification.status == "skipped" and judge.calls == 0


def test_require_outputs_refuses_before_any_pass(test_passes):
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (string[2] s, float[2] x) => (string[2] t, float[2] y) {
            t = Identity (s)
            y = Relu (x)
        }
        """
    )
    assert optimize(model, passes=PASSES).verification.status == "skipped"
    ran = []

    class Spy:
        def before_pass(self, name, model):
            ran.append(name)

        def after_pass(self, name, model, result):
            pass

    with pytest.raises(UnverifiableError, match="no inputs can be generated") as info:
        optimize(model, passes=PASSES, require_outputs=True, instruments=[Spy()])
    assert "input 's'" in info.value.reason
    assert ran == []


def test_require_outputs_drops_a_pass_whose_result_ort_cannot_run(test_passes):
    model = model_from_text(MLP)
    lenient = optimize(model, passes=["test-foreign", "eliminate-identity"])
    assert lenient.verification.status == "skipped" and lenient.dropped == []
    strict = optimize(model, passes=["test-foreign", "eliminate-identity"], require_outputs=True)
    assert strict.verification.status == "passed"
    assert strict.dropped == ["test-foreign"]
    assert "onnxruntime cannot run" in strict.verification.dropped[0].reason
