"""Accuracy-aware compression: the layer search, QDQ revert, recipes, metric hook, bad input."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from search_fakes import AdditiveEvaluator, keep_maker

import lepton_compile
from lepton_compile import compress, recipes
from lepton_compile.errors import InputError


def test_search_keep_keeps_the_fewest_most_sensitive_layers():
    damage = {"a": 0.001, "b": 0.05, "c": 0.002, "d": 0.03, "e": 0.0}
    ev = AdditiveEvaluator(damage)
    ctx = compress.AccuracyContext(max_drop=0.01, margin=1.0)
    layers = [(n, "Conv") for n in damage]
    res = compress.search_keep("int8", layers, keep_maker(list(damage)), ev, ctx)  # type: ignore[arg-type]
    rec = res.record
    assert set(rec["layers_kept"]) == {"b", "d"}  # the two that carry the damage
    assert res.model == frozenset({"a", "c", "e"})
    assert rec["drop_final"] <= 0.01 < rec["drop_all_compressed"]
    by_name = {x["name"]: x for x in rec["layers"]}
    assert by_name["b"]["sensitivity"] == pytest.approx(0.05)
    assert by_name["e"]["sensitivity"] == pytest.approx(0.0)
    assert by_name["b"]["compressed"] is False and by_name["a"]["compressed"] is True


def test_search_keep_returns_everything_compressed_when_it_already_passes():
    ev = AdditiveEvaluator({"a": 0.001, "b": 0.001})
    ctx = compress.AccuracyContext(max_drop=0.01)
    res = compress.search_keep("q", [("a", "MatMul"), ("b", "MatMul")], keep_maker("ab"), ev, ctx)  # type: ignore[arg-type]
    assert res.record["layers_kept"] == [] and ev.evaluations == 1


def test_search_keep_fails_when_nothing_meets_the_target():
    ev = AdditiveEvaluator({"a": 0.5})

    def make(kept):
        return frozenset({"a"})  # keeping does not help: something else is broken

    with pytest.raises(compress.CompressionFailed, match="even with every layer"):
        compress.search_keep("q", [("a", "Conv")], make, ev, compress.AccuracyContext())  # type: ignore[arg-type]
    with pytest.raises(compress.NotApplicable):
        compress.search_keep("q", [], make, ev, compress.AccuracyContext())  # type: ignore[arg-type]


def test_search_keep_finds_a_small_set_past_an_overshoot():
    # 5 layers: the doubling search tries 1, 2, 4, then 8 -> 5 (all); the answer is 3.
    damage = {"a": 0.01, "b": 0.01, "c": 0.01, "d": 0.001, "e": 0.001}
    ev = AdditiveEvaluator(damage)
    ctx = compress.AccuracyContext(max_drop=0.003, margin=1.0)
    res = compress.search_keep(
        "q", [(n, "Conv") for n in damage], keep_maker(list(damage)), ev, ctx
    )  # type: ignore[arg-type]
    assert set(res.record["layers_kept"]) == {"a", "b", "c"}
    # Only keeping all five meets 0.0005: past MAX_KEPT_SHARE (4 of 5), so given up.
    with pytest.raises(compress.CompressionFailed, match=r"rejected after \d+ probes: .* 4 most"):
        compress.search_keep(
            "q",
            [(n, "Conv") for n in damage],
            keep_maker(list(damage)),
            AdditiveEvaluator(damage),  # type: ignore[arg-type]
            compress.AccuracyContext(max_drop=0.0005, margin=1.0),
        )


def test_search_keep_budget_ranks_unprobed_layers_last():
    damage = {f"l{i}": 0.004 for i in range(6)}
    ev = AdditiveEvaluator(damage)
    ctx = compress.AccuracyContext(max_drop=0.01, margin=1.0, budget_s=0.0)
    res = compress.search_keep(
        "q", [(n, "Conv") for n in damage], keep_maker(list(damage)), ev, ctx
    )  # type: ignore[arg-type]
    assert "not probed" in res.record["note"]
    assert res.record["drop_final"] <= 0.01
    assert len(res.record["layers_kept"]) == 4  # 6*0.004 -> keep 4 to get 0.008


def test_search_prune_prunes_the_least_sensitive_units():
    damage = {"g1": 0.0, "g2": 0.004, "g3": 0.02, "g4": 0.005}
    ev = AdditiveEvaluator(damage)
    ctx = compress.AccuracyContext(max_drop=0.01, margin=1.0)
    res = compress.search_prune(
        "prune",
        [(g, "channel group") for g in damage],
        lambda pruned: frozenset(pruned),
        ev,  # type: ignore[arg-type]
        ctx,
    )
    assert res.model == frozenset({"g1", "g2", "g4"})
    assert set(res.record["layers_kept"]) == {"g3"}
    with pytest.raises(compress.CompressionFailed):
        compress.search_prune(
            "prune",
            [("g3", "x")],
            lambda pruned: frozenset(pruned),
            AdditiveEvaluator({"g3": 0.5}),  # type: ignore[arg-type]
            ctx,
        )


def test_revert_qdq_restores_fp32_layers(mlp_path: Path):
    import onnx_ir as ir

    from lepton_compile import intake
    from lepton_compile.passes.quantize import (
        QuantizeStaticInt8Pass,
        ensure_node_names,
        revert_qdq,
    )

    loaded = intake.load_model(mlp_path, {"x": [2, 32]})
    named = ensure_node_names(loaded.model)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((2, 32)).astype(np.float32)} for _ in range(4)]
    q = ir.serde.serialize_model(
        QuantizeStaticInt8Pass(feeds)(ir.serde.deserialize_model(named)).model
    )
    matmuls = [n.name for n in named.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == 2
    reverted = revert_qdq(q, named, matmuls)
    assert reverted is not None
    onnx.checker.check_model(reverted, full_check=True)
    nodes = {n.name: n for n in reverted.graph.node}
    orig = {n.name: n for n in named.graph.node}
    # Weights are FP32 again; the first MatMul reads the graph input directly. The quantizer
    # folded the Relu before the second into the quantized range (the tensor of that name
    # now holds pre-Relu values), so the revert applies that Relu again in FP32.
    assert nodes[matmuls[0]].input[:] == orig[matmuls[0]].input[:]
    assert nodes[matmuls[1]].input[1] == orig[matmuls[1]].input[1]
    restored = nodes[matmuls[1]].input[0]
    producer = next(n for n in reverted.graph.node if restored in n.output)
    assert producer.op_type == "Relu" and restored.endswith("_fp32_restored")
    # The reverted graph computes the FP32 MatMuls; fewer DequantizeLinear nodes remain.
    n_dq = sum(n.op_type == "DequantizeLinear" for n in q.graph.node)
    assert sum(n.op_type == "DequantizeLinear" for n in reverted.graph.node) < n_dq
    ref = compress.run_ort(named, feeds)
    full = compress.run_ort(q, feeds)
    back = compress.run_ort(reverted, feeds)
    err_full = max(np.abs(r["y"] - o["y"]).max() for r, o in zip(ref, full, strict=True))
    err_back = max(np.abs(r["y"] - o["y"]).max() for r, o in zip(ref, back, strict=True))
    assert err_back <= err_full
    assert revert_qdq(q, named, ["no-such-node"]) is None


def test_recipe_aliases_and_unknown_names():
    names = [r.name for r in recipes.resolve(["quantize"])]
    assert names[0] == "original" and "int8-mixed" in names and "prune-50" not in names
    assert {"prune-50", "prune-2of4", "prune-channels"} <= {
        r.name for r in recipes.resolve(["prune"])
    }
    assert len(recipes.resolve(["all"])) == len(recipes.RECIPES)
    with pytest.raises(InputError, match="unknown recipe"):
        recipes.resolve(["int9"])


def _npz_dir(tmp: Path, n: int, labels: bool = True, shape=(1, 32), name: str = "data") -> Path:
    d = tmp / name
    d.mkdir()
    rng = np.random.default_rng(1)
    for i in range(n):
        arrays = {"x": rng.standard_normal(shape).astype(np.float32)}
        if labels:
            arrays["label"] = np.array([i % 8], dtype=np.int64)
        np.savez(d / f"{i:03d}.npz", **arrays)
    return d


def top1_accuracy(outputs, labels):
    hits = [
        int(o["y"].argmax(-1)[0] == lab["label"][0]) for o, lab in zip(outputs, labels, strict=True)
    ]
    return float(np.mean(hits))


def test_metric_hook_judges_variants(tmp_path: Path, mlp_path: Path):
    d = _npz_dir(tmp_path, 8)
    res = lepton_compile.compile(
        mlp_path,
        inputs_dir=d,
        recipes=["int8-mixed"],
        quick=True,
        isolate=False,
        metric=top1_accuracy,
        max_accuracy_drop=0.0,
        eval_samples=4,
    )
    v = next(v for v in res.variants if v.recipe.name == "int8-mixed")
    acc = res.report["variants"][1]["accuracy"]
    assert acc["metric"].startswith("user metric")
    um = acc["user_metric"]
    assert 0.0 <= um["original"] <= 1.0 and 0.0 <= um["variant"] <= 1.0
    # "dropped": passed the metric, then lost the race on speed.
    assert v.status in ("ok", "dropped", "rejected")
    assert (v.status != "rejected") == (um["original"] - um["variant"] <= 0.0)


def test_metric_errors_are_input_errors(tmp_path: Path, mlp_path: Path):
    d = _npz_dir(tmp_path, 6)

    compile_fused = functools.partial(
        lepton_compile.compile, mlp_path, recipes=["fused"], quick=True, isolate=False
    )

    def broken(outputs, labels):
        raise KeyError("logits")

    with pytest.raises(InputError, match="metric raised.*KeyError"):
        compile_fused(inputs_dir=d, metric=broken)
    with pytest.raises(InputError, match="expected a number"):
        compile_fused(inputs_dir=d, metric=lambda o, lab: "high")
    nolabels = _npz_dir(tmp_path, 6, labels=False, name="nolabels")
    with pytest.raises(InputError, match="needs labels"):
        compile_fused(inputs_dir=nolabels, metric=top1_accuracy)


def test_too_few_calibration_samples(tmp_path: Path, mlp_path: Path):
    d = _npz_dir(tmp_path, 1)
    with pytest.raises(InputError, match="calibration sample"):
        lepton_compile.compile(
            mlp_path, inputs_dir=d, recipes=["int8-mixed"], quick=True, isolate=False
        )
    res = lepton_compile.compile(mlp_path, inputs_dir=d, recipes=None, quick=True, isolate=False)
    v = next(v for v in res.variants if v.recipe.name == "int8-mixed")
    assert v.status == "skipped" and "calibration" in v.reason


def test_calibration_data_that_does_not_match(tmp_path: Path, mlp_path: Path):
    d = _npz_dir(tmp_path, 4, shape=(1, 31))
    with pytest.raises(InputError, match="shape"):
        lepton_compile.compile(mlp_path, inputs_dir=d, recipes=["int8-mixed"], quick=True)


@pytest.mark.parametrize("isolate", [False, True])
def test_calibration_data_a_pass_rejects_is_exit_2_with_one_line(
    tmp_path: Path, mlp_path: Path, capsys: pytest.CaptureFixture[str], isolate: bool
):
    """The quantization pass's own input check (not intake's) still ends as bad input."""
    from lepton_compile.cli import main

    d = _npz_dir(tmp_path, 6)
    with np.load(d / "000.npz") as sample:
        arrays = dict(sample)
    arrays["x"][0, 0] = np.nan  # intake takes it; the calibration check does not
    np.savez(d / "000.npz", **arrays)
    out = tmp_path / "o"
    args = [str(mlp_path), "--inputs", str(d), "--recipes", "int8-mixed", "--quick"]
    capsys.readouterr()
    assert main([*args, *([] if isolate else ["--no-isolate"]), "-o", str(out)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "holds NaN or Inf" in lines[0]
    assert not out.exists()


def test_a_pass_input_error_is_bad_input_to_the_driver():
    from lepton_compile import steps
    from lepton_compile.passes.errors import PassInputError
    from lepton_compile.worker import _kind

    assert _kind(PassInputError("calibration sample 0: holds NaN or Inf")) == "input"
    with pytest.raises(InputError, match="at least 2 calibration samples"):
        steps.apply("int8-static", onnx.ModelProto(), onnx.ModelProto(), [{}], {}, None)


def test_not_applicable_recipe_is_skipped_with_a_reason(tmp_path: Path):
    from conftest import text_model

    rng = np.random.default_rng(0)
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        convnet (float[1, 3, 8, 8] x) => (float[1, 4, 1, 1] y) {
            c = Conv <pads = [1, 1, 1, 1]> (x, w)
            r = Relu (c)
            y = GlobalAveragePool (r)
        }
        """,
        {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32)},
    )
    path = tmp_path / "convnet.onnx"
    onnx.save(m, path)
    res = lepton_compile.compile(
        path, recipes=["int4-weight", "int8-dynamic"], quick=True, isolate=False
    )
    for name in ("int4-weight", "int8-dynamic"):
        v = next(v for v in res.variants if v.recipe.name == name)
        assert v.status == "skipped" and "nothing in this model" in v.reason


def test_mixed_precision_is_reported_layer_by_layer(tmp_path: Path, tinycnn_path: Path):
    res = lepton_compile.compile(
        tinycnn_path,
        recipes=["int8-mixed"],
        quick=True,
        isolate=False,
        max_accuracy_drop=1e-5,  # strict: the search must keep some layers in FP32
    )
    v = next(v for v in res.variants if v.recipe.name == "int8-mixed")
    step = next(s for s in v.build["steps"] if s.get("name") == "int8-static")
    assert step["layers_total"] >= 2 and step["layers"]
    assert step["layers_total"] == step["layers_compressed"] + len(step["layers_kept"])
    assert step["layers_kept"], "a 1e-5 target cannot hold with every layer in INT8"
    assert step["drop_final"] <= step["target_drop"] < step["drop_all_compressed"]
    out = res.save(tmp_path / "o")
    md = (out / "report.md").read_text()
    assert "### int8-mixed" in md and "| layer | op | sensitivity | compressed |" in md
    rep = json.loads((out / "report.json").read_text())
    assert any(s.get("layers") for vv in rep["variants"] for s in (vv["build"].get("steps") or []))


def test_cli_metric_from_a_file(tmp_path: Path, mlp_path: Path):
    from lepton_compile.cli import main

    d = _npz_dir(tmp_path, 6)
    metric_file = tmp_path / "my_metrics.py"
    metric_file.write_text(
        "import numpy as np\n"
        "def top1(outputs, labels):\n"
        "    return float(np.mean([o['y'].argmax() == l['label'][0]"
        " for o, l in zip(outputs, labels)]))\n"
    )
    out = tmp_path / "o"
    args = [str(mlp_path), "--inputs", str(d), "--recipes", "fused", "--quick", "--no-isolate"]
    assert main([*args, "--metric", f"{metric_file}:top1", "-o", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert "user_metric" in rep["variants"][1]["accuracy"]
    assert main([*args, "--metric", f"{metric_file}:nope", "-o", str(tmp_path / "x")]) == 2
    assert main([*args, "--metric", "no_such_module_xyz:f", "-o", str(tmp_path / "y")]) == 2
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_quantize_steps_skip_a_model_that_is_quantized_already(tmp_path: Path, mlp_path: Path):
    import onnx_ir as ir

    from lepton_compile import intake, steps
    from lepton_compile.passes.quantize import QuantizeDynamicInt8Pass

    loaded = intake.load_model(mlp_path, {"x": [1, 32]})
    q = ir.serde.serialize_model(
        QuantizeDynamicInt8Pass()(ir.serde.deserialize_model(loaded.model)).model
    )
    assert steps.quantized_ops(q).get("MatMulInteger") == 2
    for step in ("fp16", "int8-dynamic", "int4-weight"):
        with pytest.raises(compress.NotApplicable, match="quantized already"):
            steps.apply(step, q, q, [], {}, None)
    # Pruning is not quantization: a float model's weights are still fair game.
    assert steps.quantized_ops(loaded.model) == {}


class _Batches:
    """A probe runner that runs the probes here, a batch at a time."""

    def __init__(self, width: int):
        self.width = width

    def drops(self, ev, models):
        return [ev.drop(m) for m in models]


class _NotedEvaluator(AdditiveEvaluator):
    """Notes how many single-layer probes each call asked for at once."""

    def __init__(self, damage: dict[str, float]):
        super().__init__(damage)
        self.sizes: list[int] = []

    def drops(self, models):
        self.sizes.append(len(models))
        return super().drops(models)


def test_probes_run_in_batches_that_stop_at_each_checkpoint():
    """With a probe runner (a Ray actor's), single-layer probes go a batch at a time, never
    across a checkpoint, and the search decides exactly as it does probing one by one."""
    rng = np.random.default_rng(3)
    names = [f"l{i}" for i in range(21)]
    damage = {n: float(d) for n, d in zip(names, rng.uniform(0, 0.004, len(names)), strict=True)}
    damage["l7"] = 0.05
    ctx = compress.AccuracyContext(max_drop=0.02, margin=1.0, budget_s=1e6)
    layers = [(n, "Conv") for n in names]
    serial = compress.search_keep("q", layers, keep_maker(names), AdditiveEvaluator(damage), ctx)  # type: ignore[arg-type]
    runner = _Batches(width=3)
    compress.set_probe_runner(runner)
    try:
        assert compress.probe_width() == 3
        noted = _NotedEvaluator(damage)
        batched = compress.search_keep("q", layers, keep_maker(names), noted, ctx)  # type: ignore[arg-type]
    finally:
        compress.set_probe_runner(None)
    assert batched.model == serial.model
    assert batched.record["layers_kept"] == serial.record["layers_kept"]
    assert "l7" in serial.record["layers_kept"]
    assert [x["sensitivity"] for x in batched.record["layers"]] == [
        x["sensitivity"] for x in serial.record["layers"]
    ]
    # The first probe alone; then at most 3 at once, ending on the checkpoints 8 and 16.
    assert noted.sizes[0] == 1 and max(noted.sizes) == 3
    ends = list(np.cumsum(noted.sizes))
    assert 8 in ends and 16 in ends and ends[-1] == len(names)
