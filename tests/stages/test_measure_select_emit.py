"""Stages measure, select and emit: racing per device, the pick, the report."""

from __future__ import annotations

from stage_helpers import context, executor

from lepton_compile import stages
from lepton_compile.variant import Status


def _measured(mlp_path, **opts):
    ctx = context(mlp_path, **opts)
    variants = stages.plan_variants(ctx)
    with executor(ctx) as ex:
        ref = stages.reference(ctx, ex, variants[0])
        stages.build(ctx, ex, variants, {})
        stages.verify(ctx, ex, variants, ref)
        stages.measure(ctx, ex, variants)
    return ctx, variants


def test_measure_gives_paired_ratios_to_the_original(mlp_path):
    ctx, variants = _measured(mlp_path, recipes=["original", "fused"])
    base, fused = variants
    assert base.measurement is not None and base.measurement.trials >= 2
    assert fused.status in (Status.OK, Status.DROPPED)
    r = fused.ratios["latency"]
    assert r.n >= 2 and r.low <= r.ratio <= r.high
    assert base.race["race"] == "cpu" and "decided" in base.race


def test_select_and_emit(mlp_path):
    ctx, variants = _measured(mlp_path, recipes=["original", "fused"])
    sel = stages.select(ctx, variants)
    assert sel.baseline is variants[0]
    assert sel.best.status == Status.OK and sel.reason
    rep = stages.emit(ctx, variants, sel)
    assert rep["schema"] == "lepton-compile/report/v1"
    assert rep["best"]["id"] == sel.best.id
    assert rep["decision"] and rep["decision"][0]["race"] == "cpu"
    assert {"flops", "complete"} <= rep["variants"][0]["roofline"].keys()


def test_select_applies_the_latency_limit(mlp_path):
    ctx, variants = _measured(mlp_path, recipes=["original"], max_latency_ms=1e-9)
    sel = stages.select(ctx, variants)
    assert variants[0].status == Status.REJECTED and "--max-latency-ms" in variants[0].reason
    assert not sel.constraints_met and sel.reason == "nothing met the constraints"
