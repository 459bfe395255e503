"""ONNX Runtime backend: the CPU provider, and CUDA where installed and a GPU is present."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from lepton_compile.errors import NotSupported
from lepton_compile.passes.ort_session import OPTIMIZATION_LEVELS, session_options

log = logging.getLogger(__name__)


_UNSUPPORTED = (
    re.compile(r"(\S+) is not a registered function/op"),
    re.compile(r"Could not find an implementation for (\S+\(\d+\))"),
    re.compile(r"No opset import for domain '([^']+)'"),
)


def unsupported_op(message: str) -> str | None:
    """The op named by an onnxruntime 'no kernel' error, or None for other errors."""
    for pat in _UNSUPPORTED:
        m = pat.search(message)
        if m:
            return m.group(1)
    return None


def _cuda_present() -> bool:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    # The provider is listed by onnxruntime-gpu even on machines without a GPU.
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


class OrtSession:
    def __init__(self, path: Path, device: str, options: Mapping[str, Any]):
        level = options.get("graph_optimization_level", "all")
        if level not in OPTIMIZATION_LEVELS:
            raise ValueError(
                f"graph_optimization_level must be one of {', '.join(OPTIMIZATION_LEVELS)}"
            )
        so = session_options(level)
        so.intra_op_num_threads = int(options.get("intra_op_num_threads", 0))
        so.inter_op_num_threads = int(options.get("inter_op_num_threads", 0))
        if device == "cuda":
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self._sess = ort.InferenceSession(str(path), sess_options=so, providers=providers)
        except Exception as e:
            unsupported = unsupported_op(str(e))
            if unsupported:
                raise NotSupported(
                    f"onnxruntime ({device}) has no kernel for {unsupported}"
                ) from None
            raise
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        self._options = {
            "graph_optimization_level": level,
            "intra_op_num_threads": so.intra_op_num_threads,
            "inter_op_num_threads": so.inter_op_num_threads,
            "execution_mode": "sequential",
        }
        self.device = device

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self._sess.run(None, dict(feeds))
        return dict(zip(self.output_names, outs, strict=True))

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "ort",
            "onnxruntime": ort.__version__,
            "device": self.device,
            "providers": self._sess.get_providers(),
            "session_options": dict(self._options),
        }


class OrtBackend:
    name = "ort"

    def devices(self) -> list[str]:
        return ["cpu", "cuda"] if _cuda_present() else ["cpu"]

    def load(
        self, path: Path, device: str = "cpu", options: Mapping[str, Any] | None = None
    ) -> OrtSession:
        if device not in self.devices():
            raise NotSupported(f"onnxruntime cannot use device {device!r} here")
        return OrtSession(path, device, options or {})
