"""The backend contract: devices it can use, and sessions that run feeds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Session(Protocol):
    """A loaded model. ``describe()`` records every option that affects a measurement."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict[str, Any]: ...


class Backend(Protocol):
    name: str

    def devices(self) -> list[str]:
        """Devices usable here, e.g. ["cpu"] or ["cpu", "cuda"]."""
        ...

    def load(
        self, path: Path, device: str = "cpu", options: Mapping[str, Any] | None = None
    ) -> Session: ...
