"""Roofline of an ONNX graph: FLOPs and bytes per run, spec-sheet peaks, a reference energy.

    cost = count(onnx.load("model.onnx"))                  # static input shapes required
    peak = peak_for(device_record(["CUDAExecutionProvider"]), "fp16")
    ref = reference_energy(cost, peak, "fp16") if peak else None

``cost`` counts (its docstring states the conventions), ``shapes`` gives it static shapes,
``peaks`` holds the spec-sheet tables and ``reference`` sets ``P_TDP x roofline time`` beside a
measured J/inference: a reference, not a bound, and never a measurement.
``python benchmarks/roofline.py MODEL`` prints a model's count.
"""

from lepton_compile.bench.roofline.cost import (
    BATCHNORM_FLOPS,
    DATA_MOVEMENT,
    DEQUANTIZE_FLOPS,
    LAYERNORM_FLOPS,
    QUANTIZE_FLOPS,
    RMSNORM_FLOPS,
    SOFTMAX_FLOPS,
    TRANSCENDENTAL_FLOPS,
    GraphCost,
    OpCost,
    UnknownNode,
    count,
)
from lepton_compile.bench.roofline.peaks import (
    CPU_PEAKS,
    PEAKS,
    PRECISIONS,
    Peak,
    cpu_peak,
    lookup_peak,
    peak_for,
)
from lepton_compile.bench.roofline.reference import (
    REFERENCE_LABEL,
    beside_measured,
    reference_energy,
)

__all__ = [
    "BATCHNORM_FLOPS",
    "CPU_PEAKS",
    "DATA_MOVEMENT",
    "DEQUANTIZE_FLOPS",
    "LAYERNORM_FLOPS",
    "PEAKS",
    "PRECISIONS",
    "QUANTIZE_FLOPS",
    "REFERENCE_LABEL",
    "RMSNORM_FLOPS",
    "SOFTMAX_FLOPS",
    "TRANSCENDENTAL_FLOPS",
    "GraphCost",
    "OpCost",
    "Peak",
    "UnknownNode",
    "beside_measured",
    "count",
    "cpu_peak",
    "lookup_peak",
    "peak_for",
    "reference_energy",
]
