"""The converter table: (domain, op_type) -> function that lowers one ONNX node to torch ops.

A converter takes a `NodeCtx` (lower.py) and returns a tensor, a `Const`, or a tuple of
them (one per produced output; trailing optional outputs may be left out). It reads
attributes with `ctx.attr`, tensors with `ctx.input(i)`, and values that must be known at
lowering time (shapes, axes, pads, scales) with `ctx.ints(i)` / `ctx.const(i)`. It raises
`ctx.unsupported("what")` for an attribute value or input it cannot lower.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

Converter = Callable[[Any], Any]

CONVERTERS: dict[tuple[str, str], Converter] = {}

_MODULES = (
    "ops_elementwise",
    "ops_nn",
    "ops_tensor",
    "ops_reduce",
    "ops_resize",
    "ops_quant",
    "ops_rnn",
    "ops_lepton",
)
_loaded = False


def op(*op_types: str, domain: str = "") -> Callable[[Converter], Converter]:
    """Register a converter for one or more op types of `domain` ("" is the ONNX domain)."""

    def register(fn: Converter) -> Converter:
        for op_type in op_types:
            key = (domain, op_type)
            if key in CONVERTERS:
                raise RuntimeError(f"two converters for {domain or 'ai.onnx'}.{op_type}")
            CONVERTERS[key] = fn
        return fn

    return register


def load_converters() -> dict[tuple[str, str], Converter]:
    """Import every op module (they register themselves) and return the table."""
    global _loaded
    if not _loaded:
        for name in _MODULES:
            importlib.import_module(f"{__package__}.{name}")
        _loaded = True
    return CONVERTERS


def normalize_domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain
