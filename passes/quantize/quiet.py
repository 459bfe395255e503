"""onnxruntime's quantization tools, kept off the console while they run."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator


@contextlib.contextmanager
def quiet_root_logger() -> Iterator[None]:
    """Keep onnxruntime's quantization chatter off the console.

    The tools log advice through the root logger, print calibration progress to stdout, and
    ``matmul_nbits_quantizer`` calls ``logging.basicConfig(level=INFO)`` when imported; the
    root logger's handlers and levels are restored on the way out.
    """
    root = logging.getLogger()
    ort_logger = logging.getLogger("onnxruntime")
    handlers, root_level, ort_level = list(root.handlers), root.level, ort_logger.level
    root.setLevel(max(root_level, logging.ERROR))
    ort_logger.setLevel(max(ort_level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(root_level)
        ort_logger.setLevel(ort_level)
