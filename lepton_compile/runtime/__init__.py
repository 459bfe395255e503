"""Runtime backends: each turns an ONNX file into a session with ``run(feeds) -> dict``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lepton_compile.runtime.base import Backend, Session
from lepton_compile.runtime.lepton import LeptonBackend, torch_available
from lepton_compile.runtime.ort import OrtBackend


class InductorLeptonBackend(LeptonBackend):
    """The lepton backend with its program compiled by torch.compile (Inductor)."""

    name = "lepton+inductor"

    def load(self, path: Path, device: str = "cpu", options: Mapping[str, Any] | None = None):
        return super().load(path, device, {"compile": "inductor", **(options or {})})


BACKENDS: dict[str, type[Backend]] = {
    "ort": OrtBackend,
    "lepton": LeptonBackend,
    "lepton+inductor": InductorLeptonBackend,
}


def default_backends() -> tuple[str, ...]:
    """``$LEPTON_BACKENDS`` (comma-separated), else onnxruntime plus lepton when torch is
    installed. Inductor is opt-in: its compile time is minutes per model on a CPU."""
    env = os.environ.get("LEPTON_BACKENDS", "").strip()
    if env:
        return tuple(b.strip() for b in env.split(",") if b.strip())
    return ("ort", "lepton") if torch_available() else ("ort",)


def get_backend(name: str) -> Backend:
    try:
        return BACKENDS[name]()
    except KeyError:
        raise ValueError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})") from None


def load(path: str | Path, backend: str = "ort", device: str = "cpu", **options: Any) -> Session:
    """Open a model for inference on a backend: ``load("m.onnx").run({"x": arr})``."""
    return get_backend(backend).load(Path(path), device=device, options=options)


__all__ = ["BACKENDS", "Backend", "Session", "default_backends", "get_backend", "load"]
