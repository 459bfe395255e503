"""onnxruntime CPU sessions for the passes: one builder, from bytes or, past the protobuf limit,
from a file with external data.

Verification runs models with onnxruntime's own graph optimizations off, so that its rewrites
can neither hide nor cause a difference; calibration does the same, so that it sees the
tensors of the graph it calibrates. ``optimization`` picks another level where a caller wants
what a user would run.
"""

from __future__ import annotations

from typing import Any

import onnx

from lepton_compile.passes.model_size import model_source

# onnxruntime's GraphOptimizationLevel, by the name of its level.
OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")

# onnxruntime's log severities: 0 verbose, 1 info, 2 warning, 3 error, 4 fatal.
ERRORS_ONLY = 3
FATAL_ONLY = 4


# Threads each session of this process may use (None: onnxruntime's default, every core). A
# process that is one of several sharing a machine's cores (a Ray task given one CPU) caps it.
_threads: int | None = None


def limit_threads(n: int | None) -> None:
    """Sessions made after this use at most ``n`` intra-op threads (None: no cap)."""
    global _threads
    _threads = n


def session_options(optimization: str = "disable", log_level: int = ERRORS_ONLY) -> Any:
    """onnxruntime SessionOptions at an optimization level (OPTIMIZATION_LEVELS)."""
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if optimization not in levels:
        raise ValueError(
            f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}"
        )
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    options.log_severity_level = log_level
    if _threads is not None:
        options.intra_op_num_threads = _threads
    return options


def session(
    model: onnx.ModelProto | bytes | str,
    *,
    optimization: str = "disable",
    log_level: int = ERRORS_ONLY,
    options: Any = None,
) -> Any:
    """An onnxruntime InferenceSession on the CPU provider.

    ``model``: a ModelProto (read from its bytes, or past the protobuf limit from a temporary
    file with external data), serialized bytes, or a path. ``options``: SessionOptions to use
    as they are, instead of ``optimization`` and ``log_level`` (for settings such as
    ``optimized_model_filepath``).
    """
    import onnxruntime as ort

    opts = options if options is not None else session_options(optimization, log_level)
    providers = ["CPUExecutionProvider"]
    if not isinstance(model, onnx.ModelProto):
        return ort.InferenceSession(model, opts, providers=providers)
    with model_source(model, prefix="lepton-ort-") as source:
        # The session reads the weights while it is built: the files may go afterwards.
        return ort.InferenceSession(source, opts, providers=providers)
