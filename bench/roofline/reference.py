"""A reference energy per inference from the roofline, to set beside a measured one.

    ref = reference_energy(count(model), PEAKS["h100-sxm"], "fp16")
    row = beside_measured(measured_j, ref)     # measured / reference, fused and unfused

``reference_energy`` gives ``P_TDP x max(compute time, bytes / bandwidth)`` from spec-sheet
peaks: a *reference* to set a measured J/inference beside, not a bound. Real kernels rarely
reach peak (so measurements usually sit above it), but a device can also draw less than its TDP
(so a measurement may sit below it). Nothing here is a measurement.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lepton_compile.bench.roofline.cost import GraphCost, nan_to_none
from lepton_compile.bench.roofline.peaks import Peak, norm_precision

__all__ = ["REFERENCE_LABEL", "beside_measured", "reference_energy"]

REFERENCE_LABEL = "reference (spec-sheet TDP x roofline time), not a bound"


def reference_energy(cost: GraphCost, peak: Peak, precision: str) -> dict[str, Any]:
    """``P_TDP x max(compute time, bytes / bandwidth)`` for both bytes estimates.

    Compute time = matmul-class FLOPs / peak at ``precision`` + other FLOPs / the fp32 (vector)
    peak + int ops / the int8 peak (the ``precision`` peak where no int8 figure exists). With
    only matmul-class work this is the textbook ``FLOPs / peak``. A reference, not a bound:
    see the module docstring.
    """
    prec = norm_precision(precision)
    pf = peak.flops_for(prec)
    if pf is None:
        raise ValueError(f"{peak.name} has no {prec} figure")
    vector = peak.flops.get("fp32", pf)
    int_peak = peak.flops.get("int8", pf)
    compute_s = cost.matmul_flops / pf + cost.vector_flops / vector + cost.int_ops / int_peak
    ai = cost.arithmetic_intensity()
    out: dict[str, Any] = {
        "label": REFERENCE_LABEL,
        "precision": prec,
        "peak": peak.to_dict(),
        "compute_time_s": compute_s,
        "arithmetic_intensity": nan_to_none(ai),
        "ridge_point": pf / peak.bandwidth,
        "complete": cost.complete,
        "unknown_nodes": len(cost.unknown),
    }
    for est, nbytes in (("unfused", cost.bytes_unfused), ("fused", cost.bytes_fused)):
        mem_s = nbytes / peak.bandwidth
        t = max(compute_s, mem_s)
        out[est] = {
            "joules": peak.tdp_w * t,
            "time_s": t,
            "bound": "compute" if compute_s >= mem_s else "memory",
            "memory_time_s": mem_s,
            "bytes": nbytes,
        }
    return out


def beside_measured(measured_j: float | None, reference: Mapping[str, Any]) -> dict[str, Any]:
    """A measured J/inference next to the reference, with measured / reference ratios."""

    def ratio(est: str) -> float | None:
        ref = reference[est]["joules"]
        return measured_j / ref if measured_j is not None and ref > 0 else None

    return {
        "measured_j": measured_j,
        "reference_j": {
            "fused": reference["fused"]["joules"],
            "unfused": reference["unfused"]["joules"],
        },
        "ratio_to_reference": {"fused": ratio("fused"), "unfused": ratio("unfused")},
        "label": REFERENCE_LABEL,
    }
