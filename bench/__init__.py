"""Measurement: statistics, energy meters, device records and the interleaved trial protocol.

The subpackages ``roofline`` (FLOP and byte counts, spec-sheet peaks, reference energy) and
``zoo`` (pinned benchmark models) are imported where they are used; the benchmark suites that
use this library live in ``benchmarks/``.
"""

from lepton_compile.bench.device import device_record, record_key
from lepton_compile.bench.energy import (
    EnergyReading,
    EstimateMeter,
    Meter,
    MeterUnavailable,
    NvmlMeter,
    RaplMeter,
    get_meter,
)
from lepton_compile.bench.protocol import Measurement, Protocol, measure
from lepton_compile.bench.stats import Stats, better_than, summarize

__all__ = [
    "EnergyReading",
    "EstimateMeter",
    "Measurement",
    "Meter",
    "MeterUnavailable",
    "NvmlMeter",
    "Protocol",
    "RaplMeter",
    "Stats",
    "better_than",
    "device_record",
    "get_meter",
    "measure",
    "record_key",
    "summarize",
]
