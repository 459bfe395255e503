"""The serving profile: batch sizes as a search dimension (batch fixing, stacked feeds, the
(variant, batch) decision under a latency limit, failed sizes, report fields)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import lepton_compile as lc
from lepton_compile.batching import check_batch, plan_batches, stack
from lepton_compile.bench.protocol import Measurement, Protocol
from lepton_compile.bench.stats import summarize
from lepton_compile.cli.common import batch_sizes
from lepton_compile.errors import InputError
from lepton_compile.intake import declared_dims, load_model
from lepton_compile.options import CompileOptions
from lepton_compile.serving import ServingPoint, mark_front, recommend

# --- models -----------------------------------------------------------------------------------


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, path)
    return path


def dense(path: Path, batch: int | str = "N", width: int = 16) -> Path:
    """x[batch, 8] @ W[8, width] -> relu -> y[batch, width]."""
    w = np.random.default_rng(0).standard_normal((8, width)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])],
        [numpy_helper.from_array(w, "W")],
    )
    return _save(g, path)


def token_model(path: Path) -> Path:
    """A masked embedding mean: input_ids and attention_mask [batch, seq], the BERT shape."""
    table = np.random.default_rng(1).standard_normal((50, 4)).astype(np.float32)
    g = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "input_ids"], ["emb"]),
            helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
            helper.make_node("Mul", ["emb", "m3"], ["masked"]),
            helper.make_node("ReduceMean", ["masked"], ["y"], axes=[1], keepdims=0),
        ],
        "tokens",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", 6]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch_size", 6]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch_size", 4])],
        [
            numpy_helper.from_array(table, "E"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "axis"),
        ],
    )
    return _save(g, path)


# --- batch fixing -------------------------------------------------------------------------------


def test_dynamic_batch_stays_symbolic_and_feeds_are_made_at_batch_1(tmp_path):
    loaded = load_model(dense(tmp_path / "d.onnx"), keep_batch=True)
    assert loaded.batch_inputs == ["x"]
    assert loaded.inputs[0].shape == ("N", 8)
    # The output shared the input's batch name, and keeps it.
    assert declared_dims(loaded.model.graph.output[0]) == ("N", 16)
    plan = plan_batches(loaded, [8, 1, 32, 8])
    assert plan.sizes == (1, 8, 32) and plan.pinned is None and plan.base == 1
    feeds = lc.inputs.prepare(loaded, None, 0, 2, seed=0)
    assert feeds.eval[0]["x"].shape == (1, 8)


def test_without_the_profile_the_batch_is_fixed_as_before(tmp_path):
    loaded = load_model(dense(tmp_path / "d.onnx"))
    assert loaded.batch_inputs == [] and loaded.inputs[0].shape == (1, 8)


def test_a_pinned_batch_is_measured_at_that_size_alone(tmp_path):
    loaded = load_model(dense(tmp_path / "p.onnx", batch=2), keep_batch=True)
    plan = plan_batches(loaded, [1, 8, 32])
    assert plan.sizes == (2,) and plan.pinned == 2 and plan.base == 2
    assert plan.notes == ("batch fixed at 2 by the model: measured at that size alone",)


def test_token_ids_and_mask_share_one_batch(tmp_path):
    loaded = load_model(token_model(tmp_path / "t.onnx"), keep_batch=True)
    assert loaded.batch_inputs == ["input_ids", "attention_mask"]
    assert [s.shape for s in loaded.inputs] == [("batch_size", 6), ("batch_size", 6)]
    feeds = lc.inputs.prepare(loaded, None, 0, 3, seed=0)
    big = stack(feeds.eval, loaded.batch_inputs, 7)
    assert big["input_ids"].shape == (7, 6) and big["attention_mask"].shape == (7, 6)
    assert big["input_ids"].dtype == np.int64
    import onnxruntime as ort

    sess = ort.InferenceSession(
        loaded.model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    assert sess.run(None, big)[0].shape == (7, 4)


# --- stacking and tiling ----------------------------------------------------------------------


def test_stack_cycles_through_the_samples_and_keeps_other_inputs():
    samples = [
        {"x": np.full((1, 2), i, dtype=np.float32), "scale": np.array([3.0 + i], np.float32)}
        for i in range(3)
    ]
    out = stack(samples, ["x"], 8)
    assert out["x"].shape == (8, 2)
    assert out["x"][:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]  # tiled when short
    assert out["scale"].tolist() == [3.0]  # not a batch input: the first sample's value


def test_stack_takes_user_samples_of_any_batch_and_cuts_to_size():
    samples = [{"x": np.arange(6, dtype=np.float32).reshape(3, 2) + 10 * i} for i in range(2)]
    out = stack(samples, ["x"], 4)
    assert out["x"][:, 0].tolist() == [0, 2, 4, 10]
    assert stack(samples, ["x"], 1)["x"].shape == (1, 2)


def test_inputs_dir_samples_are_stacked_to_the_batch(tmp_path):
    model = dense(tmp_path / "d.onnx")
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # a kept batch takes samples of any batch: here 1, 2, 1
        rows = 2 if i == 1 else 1
        np.savez(data / f"{i}.npz", x=rng.standard_normal((rows, 8)).astype(np.float32))
    loaded = load_model(model, keep_batch=True)
    feeds = lc.inputs.prepare(loaded, data, 2, 1, seed=0)
    samples = [*feeds.calibration, *feeds.eval]
    big = stack(samples, loaded.batch_inputs, 5)
    expected = np.concatenate([s["x"] for s in samples] * 2)[:5]
    assert np.array_equal(big["x"], expected)
    with pytest.raises(InputError, match="shape"):
        lc.inputs.prepare(load_model(model), data, 2, 1, seed=0)  # no profile: batch 1 only


def test_batch_check_splits_outputs_by_sample_and_names_what_does_not_follow():
    ref = [{"y": np.array([[1.0, 2.0]])}, {"y": np.array([[3.0, 1.0]])}]
    good = {"y": np.array([[1.0, 2.0], [3.0, 1.0], [1.0, 2.0]])}
    fid = check_batch(good, ref, 3, set(), 0.01)
    assert not isinstance(fid, str) and fid.passed
    mixed = {"y": np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])}  # sample 2 took sample 1's
    fid = check_batch(mixed, ref, 3, set(), 0.01)
    assert not isinstance(fid, str) and not fid.passed
    flat = {"y": np.array([[1.0, 2.0]])}
    why = check_batch(flat, ref, 3, set(), 0.01)
    assert isinstance(why, str) and "does not follow the batch" in why


def test_batch_sizes_flag_and_option_are_checked():
    assert batch_sizes("16,1, 4,4") == [1, 4, 16]
    import argparse

    for bad in ("0,4", "a", ","):
        with pytest.raises(argparse.ArgumentTypeError):
            batch_sizes(bad)
    with pytest.raises(InputError, match="--batch-sizes"):
        CompileOptions(batch_sizes=[0]).validate()
    assert CompileOptions(batch_sizes=[1, 4, 16, 64], quick=True).profiled_batches() == [1, 64]
    assert CompileOptions(batch_sizes=[4, 1]).profiled_batches() == [1, 4]
    assert CompileOptions().profiled_batches() is None


# --- the decision, on injected measurements ---------------------------------------------------

# Mean 1 with equal sums at even and odd trials: means come out exact.
DRIFT = [1.0, 1.2, 0.8, 0.9, 1.2, 0.9]


def M(batch_ms: float, joules_per_batch: float, race: str, p99: float | None = None):
    """A measurement at one size: trial t is level x DRIFT[t] (a small alternating wobble)."""
    lat = {t: batch_ms * d * (1 + 0.01 * (-1) ** t) for t, d in enumerate(DRIFT)}
    en = {t: joules_per_batch * lat[t] / batch_ms for t in lat}
    stats = summarize(list(lat.values()))
    if p99 is not None:
        stats = dataclasses.replace(stats, p99=p99)
    return Measurement(
        variant_id="x",
        latency_ms=stats,
        energy_j=summarize(list(en.values())),
        energy_method="estimated",
        meter={},
        runs=len(lat),
        trials=len(lat),
        window_s=[0.1] * len(lat),
        protocol=Protocol(),
        trial_latency_ms=lat,
        trial_energy_j=en,
        race=race,
    )


@dataclass
class V:
    id: str
    serving: dict[int, ServingPoint] = field(default_factory=dict)
    status: str = "ok"
    drop: float = 0.0
    size: int = 100


def profile(per_batch: dict[int, tuple[float, float, float]]) -> dict[int, ServingPoint]:
    """{batch: (batch ms, joules per batch, p99 ms)} -> points, each size its own race."""
    return {
        b: ServingPoint(b, measurement=M(ms, j, f"cpu@b{b}", p99))
        for b, (ms, j, p99) in per_batch.items()
    }


def _variants() -> list[V]:
    # The original: 10 ms and 1 J per inference at batch 1; batching spreads the fixed cost.
    orig = V("original", profile({1: (10, 1.0, 11), 8: (30, 2.4, 33), 32: (90, 6.4, 99)}))
    fp16 = V("fp16", profile({1: (6, 0.6, 7), 8: (20, 1.6, 22), 32: (60, 3.2, 66)}))
    return [orig, fp16]


def test_energy_objective_picks_the_lowest_joules_whose_p99_meets_the_limit():
    vs = _variants()
    rec = recommend(vs, "fp16", "energy", 25.0, 1, "original")
    assert (rec.variant, rec.batch) == ("fp16", 8)  # batch 32 breaks the 25 ms limit
    assert rec.text.startswith("best: fp16 at batch 8, 200 mJ/inference, p99 22.0 ms")
    assert "(limit 25 ms)" in rec.text
    assert rec.text.endswith("at batch 1 the same variant takes 600 mJ")
    unlimited = recommend(vs, "fp16", "energy", None, 1, "original")
    assert (unlimited.variant, unlimited.batch) == ("fp16", 32)
    assert unlimited.joules == pytest.approx(0.1)


def test_a_limit_no_batched_point_meets_keeps_the_smallest_batch():
    rec = recommend(_variants(), "fp16", "energy", 8.0, 1, "original")
    assert (rec.variant, rec.batch) == ("fp16", 1)


def test_latency_objective_stays_at_the_smallest_batch():
    rec = recommend(_variants(), "fp16", "latency", None, 1, "original")
    assert (rec.variant, rec.batch) == ("fp16", 1)
    assert "stays at the smallest batch" in rec.text


def test_points_that_failed_or_failed_the_batch_check_are_not_recommended():
    vs = _variants()
    vs[1].serving[32].check = {"passed": False, "batch": 32, "reason": "drop 0.2 > 0.01"}
    vs[0].serving[32] = ServingPoint(32, "failed", "batch 32: out of memory")
    rec = recommend(vs, "fp16", "energy", None, 1, "original")
    assert (rec.variant, rec.batch) == ("fp16", 8)


def test_a_batched_point_within_noise_of_the_pick_does_not_replace_it():
    orig = V("original", profile({1: (10, 1.0, 11), 4: (40, 3.99, 44)}))
    orig.serving[4].measurement = M(40, 3.99, "cpu@b4")
    # 0.9975 J/inference at batch 4 vs 1.0 at batch 1: no gain beyond the noise.
    noisy = {
        t: x * (1 + 0.3 * (-1) ** t) for t, x in orig.serving[4].measurement.trial_energy_j.items()
    }
    orig.serving[4].measurement.trial_energy_j = noisy
    rec = recommend([orig], "original", "energy", None, 1, "original")
    assert rec.batch == 1


def test_the_frontier_ranges_over_variant_and_batch():
    vs = _variants()
    mark_front(vs)
    front = {(v.id, b) for v in vs for b, p in v.serving.items() if p.pareto}
    # fp16 beats the original at every size on both figures; its sizes trade latency for J.
    assert front == {("fp16", 1), ("fp16", 8), ("fp16", 32)}


def test_per_inference_ratio_across_sizes_scales_by_the_batch():
    vs = _variants()
    r = vs[1].serving[32].ratio(vs[1].serving[1], "energy")
    assert r.ratio == pytest.approx((3.2 / 32) / 0.6, rel=1e-6)
    assert r.low < r.ratio < r.high


# --- end to end -------------------------------------------------------------------------------


def test_profile_end_to_end_report_fields_and_an_out_of_memory_batch(tmp_path):
    """A size that runs out of memory is failed for that size; the run goes on."""
    model = dense(tmp_path / "wide.onnx", width=65536)  # 256 KiB of output per row
    res = lc.compile(
        model,
        recipes=["original", "fused"],
        backends=["ort"],
        batch_sizes=[1, 4, 16384],  # 4 GiB of output at 16384
        memory_limit_bytes=3 << 30,
        min_trials=2,
        max_trials=3,
        window_s=0.02,
        cache=False,
    )
    ok = [v for v in res.variants if v.status == "ok"]
    assert ok
    for v in ok:
        assert v.serving[1].ok and v.serving[4].ok
        big = v.serving[16384]
        assert big.status == "failed" and "out of memory" in big.reason
    # The check ran at the largest size that ran.
    assert all(v.serving[4].check and v.serving[4].check["passed"] for v in ok)
    assert res.recommendation is not None and res.recommendation.batch in (1, 4)
    out = res.save(tmp_path / "out")
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema_minor"] == 1
    assert rep["serving"]["batch_sizes"] == [1, 4, 16384]
    assert rep["serving"]["recommendation"]["batch"] == res.recommendation.batch
    assert rep["best"]["batch"] == res.recommendation.batch
    point = next(v for v in rep["variants"] if v["id"] == ok[0].id)["serving"]["4"]
    assert point["batch"] == 4 and point["status"] == "ok"
    assert point["throughput_per_s"] > 0
    per_inf = point["energy_j_per_inference"]
    assert per_inf["estimated"] is True and per_inf["mean"] > 0 and len(per_inf["per_trial"]) >= 2
    assert per_inf["mean"] == pytest.approx(point["energy_j"]["per_inference"] / 4)
    assert point["latency_ms"]["p99"] >= point["latency_ms"]["p50"]
    failed = next(v for v in rep["variants"] if v["id"] == ok[0].id)["serving"]["16384"]
    assert failed["status"] == "failed" and "out of memory" in failed["reason"]
    # best.onnx keeps the model's dynamic batch.
    best = onnx.load(str(out / "best.onnx"))
    assert declared_dims(best.graph.input[0])[0] == "N"
    assert "Serving profile" in (out / "report.md").read_text()


def test_a_cached_run_reuses_every_size_it_holds(tmp_path):
    model = dense(tmp_path / "d.onnx")
    kw = dict(
        recipes=["original"],
        backends=["ort"],
        min_trials=2,
        max_trials=2,
        window_s=0.02,
        cache_path=tmp_path / "cache.sqlite",
        isolate=False,
    )
    first = lc.compile(model, batch_sizes=[1, 4], **kw)
    again = lc.compile(model, batch_sizes=[1, 4, 8], **kw)
    v1, v2 = first.variants[0], again.variants[0]
    assert v2.cache.get("measurement_reused") is True
    # Batch 4 is the very measurement of the first run; batch 8 is new.
    assert v2.serving[4].measurement.trial_latency_ms == v1.serving[4].measurement.trial_latency_ms
    assert v2.serving[8].ok and 8 not in v1.serving


def test_rows_split_user_samples_into_batch_1_feeds():
    from lepton_compile.batching import rows

    samples = [{"x": np.arange(6.0).reshape(3, 2), "k": np.array([7])}, {"x": np.ones((1, 2))}]
    split = rows(samples, ["x"])
    assert [r["x"].shape for r in split] == [(1, 2)] * 4
    assert split[2]["x"].tolist() == [[4.0, 5.0]] and split[0]["k"].tolist() == [7]
