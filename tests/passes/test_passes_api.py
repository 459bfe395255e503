"""Tier 1: the public API of lepton_compile.passes: registry, pipelines, optimize(), records."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from lepton_compile.passes import PIPELINES, TARGETS, list_passes, optimize, resolve_pipeline
from lepton_compile.passes.testing import assert_same_outputs, model_from_text, run_ort

RNG = np.random.default_rng(7)

MODEL_TEXT = """
<ir_version: 3, opset_import: ["" : 9]>
g (float[1,3,8,8] x, float[4,3,3,3] w, float[4] gamma, float[4] beta, float[4] mean,
   float[4] var) => (float[1,4,8,8] y) {
    c = Conv<pads = [1, 1, 1, 1]>(x, w)
    n = BatchNormalization(c, gamma, beta, mean, var)
    d, mask = Dropout<ratio = 0.3>(n)
    i = Identity(d)
    y = Relu(i)
}
"""


def small_model() -> onnx.ModelProto:
    # IR 3 style: every initializer is also listed as a graph input.
    return model_from_text(
        MODEL_TEXT,
        {
            "w": RNG.standard_normal((4, 3, 3, 3)).astype(np.float32),
            "gamma": RNG.standard_normal(4).astype(np.float32),
            "beta": RNG.standard_normal(4).astype(np.float32),
            "mean": RNG.standard_normal(4).astype(np.float32),
            "var": (RNG.random(4) + 0.5).astype(np.float32),
        },
    )


def test_list_passes_and_pipelines():
    passes = dict(list_passes())
    assert all(desc and "\n" not in desc for desc in passes.values())
    for pipeline in PIPELINES.values():
        assert set(pipeline) <= set(passes)
    required = {
        "remove-initializer-inputs",
        "fold-constants",
        "remove-unused",
        "eliminate-identity",
        "eliminate-dropout",
        "fuse-batchnorm",
        "fuse-matmul-add",
        "cse",
        "topological-sort",
    }
    assert required <= set(PIPELINES["fused"])
    assert PIPELINES["fused"][0] == "remove-initializer-inputs"
    assert PIPELINES["fused"][-1] == "topological-sort"
    for target in TARGETS:
        assert resolve_pipeline("fused", target)


def test_optimize_fused_small_model():
    model = small_model()
    before = model.SerializeToString()
    result = optimize(model, pipeline="fused", target="ort")
    assert model.SerializeToString() == before
    assert isinstance(result.model, onnx.ModelProto)
    onnx.checker.check_model(result.model, full_check=True)
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "Relu"]
    assert [i.name for i in result.model.graph.input] == ["x"]
    assert [r.name for r in result.records] == list(resolve_pipeline("fused", "ort"))
    assert "fuse-lepton" not in [r.name for r in result.records]
    assert result.records[0].nodes_before == 5
    assert result.records[-1].nodes_after == 2
    for record in result.records:
        assert record.seconds >= 0
        assert isinstance(record.modified, bool)
    assert_same_outputs(model, result.model, rtol=1e-4, atol=1e-5)


def test_optimize_accepts_ir_model_and_leaves_it_alone():
    model = ir.serde.deserialize_model(small_model())
    nodes = [n.op_type for n in model.graph]
    inputs = [v.name for v in model.graph.inputs]
    result = optimize(model)
    assert [n.op_type for n in model.graph] == nodes
    assert [v.name for v in model.graph.inputs] == inputs
    assert isinstance(result.model, onnx.ModelProto)
    assert len(result.model.graph.node) == 2


def test_passes_override_and_skip():
    model = small_model()
    result = optimize(model, passes=["eliminate-dropout", "eliminate-identity"])
    assert [r.name for r in result.records] == ["eliminate-dropout", "eliminate-identity"]
    assert [n.op_type for n in result.model.graph.node] == ["Conv", "BatchNormalization", "Relu"]

    result = optimize(model, pipeline="fused", skip=["fuse-batchnorm"])
    assert "fuse-batchnorm" not in [r.name for r in result.records]
    assert "BatchNormalization" in [n.op_type for n in result.model.graph.node]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"passes": ["fold-constants", "no-such-pass"]},
        {"skip": ["no-such-pass"]},
        {"options": {"no-such-pass": {}}},
    ],
)
def test_unknown_pass_name(kwargs):
    with pytest.raises(ValueError, match="no-such-pass") as info:
        optimize(small_model(), **kwargs)
    assert "fold-constants" in str(info.value)  # lists the known passes


def test_unknown_pipeline_and_target():
    with pytest.raises(ValueError, match="no-such-pipeline"):
        optimize(small_model(), pipeline="no-such-pipeline")
    with pytest.raises(ValueError, match="tensorrt"):
        optimize(small_model(), target="tensorrt")


def test_lepton_target_runs():
    model = small_model()
    result = optimize(model, target="lepton")
    assert [(n.domain, n.op_type) for n in result.model.graph.node] == [("ai.lepton", "FusedConv")]
    assert_same_outputs(model, result.model, rtol=1e-4, atol=1e-5)


def test_instruments_see_every_pass():
    calls: list[tuple[str, str]] = []

    class Recorder:
        def before_pass(self, name, model):
            calls.append(("before", name))

        def after_pass(self, name, model, result):
            calls.append(("after", name))

    optimize(small_model(), passes=["fold-constants", "cse"], instruments=[Recorder()])
    assert calls == [
        ("before", "fold-constants"),
        ("after", "fold-constants"),
        ("before", "cse"),
        ("after", "cse"),
    ]


def test_fused_pipeline_inside_subgraphs():
    model = model_from_text(
        """
        <ir_version: 8, opset_import: ["" : 13]>
        g (float[2,3] x, bool c) => (float[2,3] y) {
            k = Constant<value = float[3] {1.0, 2.0, 3.0}>()
            y = If(c) <
                then_branch = then_g () => (float[2,3] a) {
                    t = Identity(x)
                    d = Dropout(t)
                    a = Add(d, k)
                },
                else_branch = else_g () => (float[2,3] b) {
                    one = Constant<value = float {1.0}>()
                    m = Mul(x, one)
                    b = Neg(m)
                }
            >
        }
        """
    )
    result = optimize(model)
    onnx.checker.check_model(result.model, full_check=True)
    (if_node,) = result.model.graph.node
    branches = {a.name: a.g for a in if_node.attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["Add"]
    assert [n.op_type for n in branches["else_branch"].node] == ["Neg"]
    assert not branches["else_branch"].initializer  # the folded-away `one`
    for cond in (True, False):
        feeds = {"x": RNG.standard_normal((2, 3)).astype(np.float32), "c": np.array(cond)}
        np.testing.assert_array_equal(run_ort(result.model, feeds)[0], run_ort(model, feeds)[0])
