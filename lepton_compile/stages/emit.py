"""Stage emit: the roofline beside each measured variant, and the report of the run."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from lepton_compile import report as report_mod
from lepton_compile.stages.context import RunContext
from lepton_compile.stages.select import Selection
from lepton_compile.variant import VariantResult


def emit(ctx: RunContext, variants: Sequence[VariantResult], sel: Selection) -> dict[str, Any]:
    """report.json's content (``lepton-compile/report/v1``) for this run."""
    add_roofline(variants, ctx)
    opts = ctx.options
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
        },
        rules=ctx.rules,
    )


def add_roofline(variants: Sequence[VariantResult], ctx: RunContext) -> None:
    """FLOPs and bytes of each built variant, and the spec-sheet reference energy beside the
    measured one where the device is in the peak table (a reference, not a bound)."""
    from lepton_compile.bench import roofline

    costs: dict[Path, Any] = {}
    shapes = {s.name: [int(d) for d in (s.shape or ())] for s in ctx.loaded.inputs}
    for v in variants:
        if v.artifact is None or not v.artifact.exists():
            continue
        try:
            if v.artifact not in costs:
                costs[v.artifact] = roofline.count(onnx.load(str(v.artifact)), shapes)
            cost = costs[v.artifact]
        except Exception as e:  # the count is a help for the reader, never a reason to fail
            v.roofline = {"error": f"not counted: {type(e).__name__}: {e}"}
            continue
        rec = dict(ctx.device_at_start, providers=v.session.get("providers"))
        prec = {"int8": "int8", "fp16": "fp16"}.get(v.precision, "fp32")
        peak, why = roofline.lookup_peak(rec, prec)
        entry: dict[str, Any] = {
            "flops": cost.flops,
            "int_ops": cost.int_ops,
            "bytes_unfused": cost.bytes_unfused,
            "bytes_fused": cost.bytes_fused,
            "complete": cost.complete,
        }
        if peak is None:
            entry["reference_energy"] = None
            entry["reference_note"] = why
        else:
            ref = roofline.reference_energy(cost, peak, prec)
            measured = v.energy.mean if v.energy else None
            entry["reference_energy"] = roofline.beside_measured(measured, ref)
        v.roofline = entry
