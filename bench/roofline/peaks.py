"""Spec-sheet peaks (FLOP/s by precision, memory bandwidth, TDP) and their lookup by device.

    peak, why = lookup_peak(device_record(["CUDAExecutionProvider"]), "fp16")
    PEAKS["h100-sxm"].flops_for("fp16")            # 989e12, dense
    cpu_peak("my box", cores=16, ghz=3.0, bandwidth_gbs=100, tdp_w=200)

GPU figures are the datasheets' dense tensor-core rates (no 2:4 sparsity) except fp32, the
vector rate; CPU entries are per socket at base clock. A device or precision that is not in
the tables gives no peak and says why: nothing is guessed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CPU_PEAKS",
    "PEAKS",
    "PRECISIONS",
    "Peak",
    "cpu_peak",
    "lookup_peak",
    "norm_precision",
    "peak_for",
]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
_ALIASES = {
    "float32": "fp32",
    "float": "fp32",
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "float8": "fp8",
    "e4m3": "fp8",
}


def norm_precision(p: str) -> str:
    """The table's name of a precision ("float16" -> "fp16")."""
    p = p.strip().lower()
    return _ALIASES.get(p, p)


@dataclass(frozen=True)
class Peak:
    """Spec-sheet peaks of one device. ``flops`` per second by precision: dense (no 2:4
    sparsity) tensor-core figures on GPUs, except fp32 which is the non-tensor (vector) rate.
    ``bandwidth`` in bytes/s, ``tdp_w`` the board or package power rating."""

    name: str
    kind: str  # "gpu" | "cpu"
    flops: Mapping[str, float]
    bandwidth: float
    tdp_w: float
    source: str
    notes: str = ""

    def flops_for(self, precision: str) -> float | None:
        return self.flops.get(norm_precision(precision))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "flops_per_s": dict(self.flops),
            "bandwidth_bytes_per_s": self.bandwidth,
            "tdp_w": self.tdp_w,
            "source": self.source,
            "notes": self.notes,
        }


_TERA = 1e12


def _gpu(
    name: str,
    fp32: float,
    tf32: float,
    fp16: float,
    int8: float,
    fp8: float | None,
    gbs: float,
    tdp: float,
    source: str,
) -> Peak:
    """Figures in TFLOP/s (dense) and GB/s, as the datasheets print them."""
    flops = {"fp32": fp32 * _TERA, "tf32": tf32 * _TERA, "fp16": fp16 * _TERA, "bf16": fp16 * _TERA}
    flops["int8"] = int8 * _TERA
    if fp8 is not None:
        flops["fp8"] = fp8 * _TERA
    return Peak(name, "gpu", flops, gbs * 1e9, tdp, source, "dense figures (half the 2:4 sparse)")


_NV = "NVIDIA {} datasheet"

PEAKS: dict[str, Peak] = {
    "h100-sxm": _gpu("NVIDIA H100 SXM5 80GB", 67, 495, 989, 1979, 1979, 3350, 700,
                     _NV.format("H100 Tensor Core GPU")),
    "h100-pcie": _gpu("NVIDIA H100 PCIe 80GB", 51, 378, 756, 1513, 1513, 2000, 350,
                      _NV.format("H100 Tensor Core GPU")),
    "h200-sxm": _gpu("NVIDIA H200 SXM 141GB", 67, 495, 989, 1979, 1979, 4800, 700,
                     _NV.format("H200 Tensor Core GPU")),
    "a100-sxm4-80gb": _gpu("NVIDIA A100 SXM4 80GB", 19.5, 156, 312, 624, None, 2039, 400,
                           _NV.format("A100 Tensor Core GPU")),
    "a100-sxm4-40gb": _gpu("NVIDIA A100 SXM4 40GB", 19.5, 156, 312, 624, None, 1555, 400,
                           _NV.format("A100 Tensor Core GPU")),
    "a100-pcie-80gb": _gpu("NVIDIA A100 PCIe 80GB", 19.5, 156, 312, 624, None, 1935, 300,
                           _NV.format("A100 Tensor Core GPU")),
    "a100-pcie-40gb": _gpu("NVIDIA A100 PCIe 40GB", 19.5, 156, 312, 624, None, 1555, 250,
                           _NV.format("A100 Tensor Core GPU")),
    "l4": _gpu("NVIDIA L4", 30.3, 60, 121, 242, 242, 300, 72, _NV.format("L4 Tensor Core GPU")),
}  # fmt: skip


def cpu_peak(
    name: str,
    cores: int,
    ghz: float,
    bandwidth_gbs: float,
    tdp_w: float,
    *,
    flops_per_cycle: float = 32.0,
    int8_per_cycle: float | None = None,
    source: str = "user-supplied",
) -> Peak:
    """A CPU's fp32 peak from cores x GHz x FLOPs/cycle/core.

    ``flops_per_cycle``: 32 for two 256-bit FMA pipes (AVX2; also Zen 4's AVX-512, which runs
    on 256-bit datapaths), 64 for two 512-bit FMA pipes (AVX-512 Xeons). Use the all-core
    clock the vector units sustain; base clock is the safe spec-sheet choice. ``int8_per_cycle``
    (VNNI / AMX) adds an int8 figure where the caller knows it.
    """
    if cores < 1 or ghz <= 0 or bandwidth_gbs <= 0 or tdp_w <= 0 or flops_per_cycle <= 0:
        raise ValueError("cores, ghz, bandwidth_gbs, tdp_w and flops_per_cycle must be > 0")
    flops = {"fp32": cores * ghz * 1e9 * flops_per_cycle}
    if int8_per_cycle:
        flops["int8"] = cores * ghz * 1e9 * int8_per_cycle
    notes = f"{cores} cores x {ghz} GHz x {flops_per_cycle:g} FLOP/cycle"
    return Peak(name, "cpu", flops, bandwidth_gbs * 1e9, tdp_w, source, notes)


# Per socket, fp32 only, at base clock. Bandwidth: channels x MT/s x 8 bytes.
CPU_PEAKS: dict[str, Peak] = {
    "EPYC 9554": cpu_peak("AMD EPYC 9554", 64, 3.1, 460.8, 360,
                          source="AMD EPYC 9554 product page (12 x DDR5-4800), Zen 4 FMA"),
    "EPYC 7763": cpu_peak("AMD EPYC 7763", 64, 2.45, 204.8, 280,
                          source="AMD EPYC 7763 product page (8 x DDR4-3200), Zen 3 FMA"),
    "Platinum 8480": cpu_peak("Intel Xeon Platinum 8480+", 56, 2.0, 307.2, 350,
                              flops_per_cycle=64.0,
                              source="Intel ark 8480+ (8 x DDR5-4800), 2 AVX-512 FMA; no AMX"),
}  # fmt: skip


def _match_gpu(name: str) -> tuple[str | None, str]:
    n = name.lower()
    if "nvl" in n:
        return None, f"GPU {name!r}: NVL boards are not in the table"
    # Word boundaries keep the GH200 superchip (other memory, other power) out.
    if re.search(r"\bh200\b", n):
        return "h200-sxm", ""
    if re.search(r"\bh100\b", n):
        if "pcie" in n:
            return "h100-pcie", ""
        if "hbm3" in n or "sxm" in n:
            return "h100-sxm", ""
        return None, f"GPU {name!r}: cannot tell H100 SXM from PCIe by its name"
    if re.search(r"\ba100\b", n):
        form = "sxm4" if "sxm" in n else "pcie" if "pcie" in n else None
        mem = "80gb" if "80gb" in n else "40gb" if "40gb" in n else None
        if form and mem:
            return f"a100-{form}-{mem}", ""
        return None, f"GPU {name!r}: cannot tell the A100 form factor and memory by its name"
    if re.search(r"\bl4\b", n):
        return "l4", ""
    return None, f"GPU {name!r} is not in the spec-sheet table"


def _uses_gpu(rec: Mapping[str, Any]) -> bool:
    providers = rec.get("providers")
    if providers is None:
        return True
    return any(("CUDA" in p or "Tensorrt" in p or "TensorRT" in p) for p in providers)


def lookup_peak(
    device_record: Mapping[str, Any], precision: str, *, target: str = "auto"
) -> tuple[Peak | None, str]:
    """(peak, "") for the device a figure ran on, or (None, why not).

    ``target``: "gpu", "cpu", or "auto" (the first GPU when the record has one and its
    ``providers`` are unknown or include CUDA/TensorRT; else the CPU). CPU entries are per
    socket; the record's ``sockets`` multiplies them.
    """
    prec = norm_precision(precision)
    if prec not in PRECISIONS:
        return None, f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})"
    gpus = device_record.get("gpus") or []
    if target not in ("auto", "gpu", "cpu"):
        raise ValueError(f"target must be auto, gpu or cpu, not {target!r}")
    if target == "gpu" or (target == "auto" and gpus and _uses_gpu(device_record)):
        if not gpus:
            return None, "the device record lists no GPU"
        gname = str(gpus[0].get("name") or "")
        key, why = _match_gpu(gname)
        if key is None:
            return None, why
        peak = PEAKS[key]
    else:
        cpu = device_record.get("cpu") or {}
        model = str(cpu.get("model") or "unknown")
        found = [
            p
            for k, p in CPU_PEAKS.items()
            if re.search(r"(?<![\w-])" + re.escape(k) + r"\+?(?!\w)", model, re.IGNORECASE)
        ]
        if not found:
            return None, (
                f"CPU {model!r} is not in the table (a model string without its SKU gives no "
                "core count, clock or memory channels): build one with cpu_peak()"
            )
        peak = found[0]
        sockets = int(cpu.get("sockets") or 1)
        if sockets > 1:
            peak = Peak(
                f"{sockets} x {peak.name}",
                "cpu",
                {k: v * sockets for k, v in peak.flops.items()},
                peak.bandwidth * sockets,
                peak.tdp_w * sockets,
                peak.source,
                f"{peak.notes}; x{sockets} sockets",
            )
    if peak.flops_for(prec) is None:
        return None, f"{peak.name}: no spec-sheet {prec} figure"
    return peak, ""


def peak_for(
    device_record: Mapping[str, Any], precision: str, *, target: str = "auto"
) -> Peak | None:
    """The spec-sheet peak for a device record (``bench.device.device_record()``), or None
    when the device or the precision is not in the table (the reason is logged; use
    ``lookup_peak`` to get it)."""
    peak, why = lookup_peak(device_record, precision, target=target)
    if peak is None:
        log.info("no roofline reference: %s", why)
    return peak
