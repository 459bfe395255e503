"""Accuracy searches give up early when the probes show the target cannot be met, and scale
their probing budget to the model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from search_fakes import AdditiveEvaluator, keep_maker

import lepton_compile
from lepton_compile import compress


def _layers(names: Sequence[str]) -> list[tuple[str, str]]:
    return [(n, "MatMul") for n in names]


def test_spread_order_is_a_permutation_whose_prefixes_cover_the_depth():
    for n in (0, 1, 2, 5, 16, 37):
        order = compress.spread_order(n)
        assert sorted(order) == list(range(n))
    order = compress.spread_order(64)
    assert order[:4] == [0, 32, 16, 48]
    # any prefix of 8 touches every eighth of the graph
    assert sorted(i // 8 for i in order[:8]) == list(range(8))


def test_equal_contributions_are_rejected_after_a_few_probes():
    # 64 layers, each adds the same damage: only keeping (nearly) all of them meets the target.
    names = [f"l{i}" for i in range(64)]
    ev = AdditiveEvaluator({n: 0.01 for n in names})
    ctx = compress.AccuracyContext(max_drop=0.01)
    with pytest.raises(compress.CompressionFailed, match=r"rejected after (\d+) probes") as e:
        compress.search_keep("int8", _layers(names), keep_maker(names), ev, ctx)  # type: ignore[arg-type]
    n = int(str(e.value).split("rejected after ")[1].split()[0])
    assert n == ev.evaluations
    assert n <= compress.MIN_PROBES_JUDGED + 2  # the full model, 8 probes, one group probe
    assert "extrapolate" in str(e.value)


def test_an_irreparable_break_is_rejected_after_a_few_probes():
    # Something outside the layers breaks the model: reverting any of them changes nothing.
    names = [f"l{i}" for i in range(40)]
    ev = AdditiveEvaluator({n: 0.0 for n in names} | {"broken": 0.5})
    ctx = compress.AccuracyContext(max_drop=0.01)

    def make(kept):
        return frozenset({"broken"})

    with pytest.raises(
        compress.CompressionFailed,
        match="rejected after 10 probes: the layers' measured effects fall short",
    ):
        compress.search_keep("int8", _layers(names), make, ev, ctx)  # type: ignore[arg-type]


def test_one_critical_layer_is_not_mistaken_for_a_hopeless_search():
    # The probes before the first checkpoint miss the one layer that matters; the group probe
    # of the unprobed layers shows that they hold more than the sample predicts.
    names = [f"l{i}" for i in range(64)]
    damage = {n: 0.0001 for n in names} | {"l37": 0.5}
    ev = AdditiveEvaluator(damage)
    ctx = compress.AccuracyContext(max_drop=0.01)
    res = compress.search_keep("int8", _layers(names), keep_maker(names), ev, ctx)  # type: ignore[arg-type]
    assert res.record["layers_kept"] == ["l37"]
    assert res.record["probing_stopped"] == "every unit probed"
    assert res.record["probes"] == ev.evaluations
    assert res.record["stopped"] == "target met keeping 1"


def test_keep_search_stops_once_the_ranked_curve_shows_the_target_needs_most_layers():
    # Sensitivities decrease slowly: keeping the top layers lowers the drop at a rate that
    # would need more than MAX_KEPT_SHARE of them. All 8 are probed (no checkpoint before).
    names = [f"l{i}" for i in range(8)]
    damage = {n: 0.01 - 0.0005 * i for i, n in enumerate(names)}
    ev = AdditiveEvaluator(damage)
    ctx = compress.AccuracyContext(max_drop=0.001, margin=1.0)
    with pytest.raises(compress.CompressionFailed, match="rejected after .* probes: keeping"):
        compress.search_keep("q", _layers(names), keep_maker(names), ev, ctx)  # type: ignore[arg-type]
    assert ev.evaluations < 1 + 8 + 4  # the old search went on to all 8 layers


def test_keep_hopeless_bound_and_extrapolation():
    # all measured effects together fall short of what must go
    assert "fall short" in compress.keep_hopeless([0.0, 0.001], 10, 0.002, 0.3, 10)
    # the unprobed rest could sit in one layer: a small set may exist, so no verdict
    assert compress.keep_hopeless([0.0, 0.0, 0.001], 20, 0.3, 0.25, 18) is None
    # evenly spread: the sample extrapolates to every layer
    why = compress.keep_hopeless([0.01] * 8, 56, 0.56, 0.63, 51)
    assert why is not None and "about 63 of 64" in why
    # a few strong layers in the sample: a small set is predicted
    assert compress.keep_hopeless([0.2, 0.0, 0.0, 0.0], 12, 0.6, 0.7, 12) is None


def test_prune_search_gives_up_when_no_unit_can_be_pruned():
    names = [f"g{i}" for i in range(100)]
    ev = AdditiveEvaluator({n: 0.05 for n in names})
    ctx = compress.AccuracyContext(max_drop=0.01)
    # 0 of 16 passing bounds the share that could under 25% (Wilson, 95%): the full model
    # and 16 probes.
    with pytest.raises(compress.CompressionFailed, match="rejected after 17 probes: 0 of the"):
        compress.search_prune(
            "prune",
            [(n, "channel group") for n in names],
            lambda pruned: frozenset(pruned),
            ev,  # type: ignore[arg-type]
            ctx,
        )


def test_probing_budget_scales_with_the_first_probe_and_is_reported():
    names = [f"l{i}" for i in range(100)]
    damage = {n: 0.0 for n in names} | {"l3": 0.05, "l70": 0.05}
    ev = AdditiveEvaluator(damage)
    ctx = compress.AccuracyContext(max_drop=0.01)
    res = compress.search_keep("q", _layers(names), keep_maker(names), ev, ctx)  # type: ignore[arg-type]
    rec = res.record
    assert set(rec["layers_kept"]) == {"l3", "l70"}
    budget = rec["budget"]
    assert budget["probe_cap"] == compress.MAX_PROBES
    assert rec["probes_single"] == compress.MAX_PROBES  # the cap, not the clock, stopped it
    assert rec["probing_stopped"] == f"probe cap {compress.MAX_PROBES}"
    assert budget["limit_s"] <= ctx.budget_s
    assert "not probed" in rec["note"]


def _chain_model(path: Path, layers: int = 24, width: int = 16) -> Path:
    """x -> (MatMul with a random weight) x layers: every layer's INT8 noise weighs alike."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    cur = "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(onnx.numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(onnx.helper.make_node("MatMul", [cur, f"w{i}"], [out], name=f"mm{i}"))
        cur = out
    graph = onnx.helper.make_graph(
        nodes,
        "chain",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, width])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, width])],
        inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_hopeless_int8_search_is_rejected_after_few_probes_end_to_end(tmp_path: Path):
    path = _chain_model(tmp_path / "chain.onnx", layers=24)
    res = lepton_compile.compile(
        path,
        recipes=["int8-dynamic"],
        quick=True,
        isolate=False,
        cache=False,
        eval_samples=2,
        calibration_samples=4,
        max_accuracy_drop=1e-9,  # nothing short of every layer in FP32 meets this
    )
    v = next(v for v in res.variants if v.recipe.name == "int8-dynamic")
    assert v.status == "rejected"
    assert "rejected after" in v.reason
    n = int(v.reason.split("rejected after ")[1].split()[0])
    assert n <= compress.MIN_PROBES_JUDGED + 2 < 24
