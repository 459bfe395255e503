"""Runtime backends: each turns an ONNX file into a session with ``run(feeds) -> dict``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lepton_compile.runtime.base import Backend, Session
from lepton_compile.runtime.ort import OrtBackend

BACKENDS: dict[str, type[Backend]] = {"ort": OrtBackend}


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})") from None


def load(path: str | Path, backend: str = "ort", device: str = "cpu", **options: Any) -> Session:
    """Open a model for inference on a backend: ``load("m.onnx").run({"x": arr})``."""
    return get_backend(backend).load(Path(path), device=device, options=options)


__all__ = ["BACKENDS", "Backend", "Session", "get_backend", "load"]
