"""Stage emit: the roofline beside each measured variant, and the report of the run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from lepton_compile import report as report_mod
from lepton_compile import serving
from lepton_compile.stages.context import RunContext
from lepton_compile.stages.select import Selection
from lepton_compile.variant import VariantResult


def emit(ctx: RunContext, variants: Sequence[VariantResult], sel: Selection) -> dict[str, Any]:
    """report.json's content (``lepton-compile/report/v1``) for this run."""
    add_roofline(variants, ctx)
    opts = ctx.options
    serving_section = None
    if ctx.batches is not None:
        serving_section = serving.section(ctx.batches, sel.recommendation, ctx.serving_wall_s)
    return report_mod.build_report(
        loaded=ctx.loaded,
        feeds=ctx.feeds,
        variants=list(variants),
        baseline=sel.baseline,
        best=sel.best,
        pick_reason=sel.reason,
        objective=opts.objective,
        meter=ctx.meters[ctx.plan.primary],
        protocol=ctx.protocol,
        max_accuracy_drop=opts.max_accuracy_drop,
        wall_s=time.perf_counter() - ctx.t_start,
        constraints_met=sel.constraints_met,
        device_at_start=ctx.device_at_start,
        isolation={
            "isolated": opts.isolate,
            "variant_timeout_s": opts.variant_timeout_s,
            "memory_limit_bytes": ctx.memory_limit,
            "budget_s": opts.budget_s,
            **({"executor": ctx.executor} if ctx.executor else {}),
        },
        rules=ctx.rules,
        serving=serving_section,
    )


def add_roofline(variants: Sequence[VariantResult], ctx: RunContext) -> None:
    """FLOPs and bytes of each built variant, and the spec-sheet reference energy beside the
    measured one where the device is in the peak table (a reference, not a bound)."""
    from lepton_compile.bench import roofline

    costs: dict[tuple[Path, int], Any] = {}
    base = ctx.batches.base if ctx.batches is not None else 1

    def cost_at(v: VariantResult, batch: int) -> Any:
        assert v.artifact is not None
        if (v.artifact, batch) not in costs:
            shapes = {
                s.name: [batch if isinstance(d, str) else int(d) for d in (s.shape or ())]
                for s in ctx.loaded.inputs
            }
            costs[v.artifact, batch] = roofline.count(onnx.load(str(v.artifact)), shapes)
        return costs[v.artifact, batch]

    for v in variants:
        if v.artifact is None or not v.artifact.exists():
            continue
        try:
            cost = cost_at(v, base)
        except Exception as e:  # the count is a help for the reader, never a reason to fail
            v.roofline = {"error": f"not counted: {type(e).__name__}: {e}"}
            continue
        rec = dict(ctx.device_at_start, providers=v.session.get("providers"))
        prec = {"int8": "int8", "fp16": "fp16"}.get(v.precision, "fp32")
        peak, why = roofline.lookup_peak(rec, prec)
        v.roofline = _entry(roofline, cost, peak, why, prec, v.energy.mean if v.energy else None)
        for b, point in v.serving.items():
            if b == base or not point.ok:
                continue
            try:
                bc = cost_at(v, b)
            except Exception as e:  # as above
                point.roofline = {"error": f"not counted: {type(e).__name__}: {e}"}
                continue
            # Per inference: the batch's counts over its size, beside J/inference.
            point.roofline = _entry(roofline, bc, peak, why, prec, point.joules, per=b)


def _entry(
    roofline: Any,
    cost: Any,
    peak: Any,
    why: str,
    prec: str,
    measured: float | None,
    per: int = 1,
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "flops": cost.flops / per,
        "int_ops": cost.int_ops / per,
        "bytes_unfused": cost.bytes_unfused / per,
        "bytes_fused": cost.bytes_fused / per,
        "complete": cost.complete,
    }
    if per != 1:
        entry["per"] = "inference (the batch's counts over its size)"
    if peak is None:
        entry["reference_energy"] = None
        entry["reference_note"] = why
    else:
        ref = roofline.reference_energy(cost, peak, prec)
        if per != 1:
            for est in ("fused", "unfused"):
                ref[est] = {**ref[est], "joules": ref[est]["joules"] / per}
        entry["reference_energy"] = roofline.beside_measured(measured, ref)
    return entry
