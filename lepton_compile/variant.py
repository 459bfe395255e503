"""One candidate of a run: its recipe on one backend and device, and what was learned of it.

A leaf module: the stages fill a VariantResult, the search and the reports read it, and it
imports none of them.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lepton_compile.accuracy import Fidelity
    from lepton_compile.bench.protocol import Measurement
    from lepton_compile.bench.stats import Ratio, Stats
    from lepton_compile.recipes import Recipe
    from lepton_compile.serving import ServingPoint

log = logging.getLogger(__name__)


class Status(str, enum.Enum):
    """Where a variant ended. A str, so that reports and comparisons read it as text."""

    PENDING = "pending"  # not judged yet
    OK = "ok"  # built, verified, measured: a candidate for the pick
    DROPPED = "dropped"  # built and verified, then screened out or dropped by racing
    REJECTED = "rejected"  # broke a constraint (accuracy, latency)
    FAILED = "failed"  # crashed, timed out, ran out of memory
    SKIPPED = "skipped"  # not built or not run, with the reason (hopeless, budget, unsupported)

    def __str__(self) -> str:
        return self.value


@dataclass
class VariantResult:
    """One candidate: its recipe on one backend and device, and everything learned about it."""

    id: str
    recipe: Recipe
    backend: str
    device: str
    status: Status = Status.PENDING
    # Backend load options that make this variant (lepton's modes: channels-last, ...).
    options: dict[str, Any] = field(default_factory=dict)
    reason: str = ""
    artifact: Path | None = None
    size_bytes: int = 0
    build: dict[str, Any] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)
    fidelity: Fidelity | None = None
    measurement: Measurement | None = None
    pareto: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    roofline: dict[str, Any] = field(default_factory=dict)
    # Racing: the screen's figure when screened out, the race's decision record, and the
    # paired ratios to the original measured in the same trials, by quantity.
    screen: dict[str, Any] | None = None
    race: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, Ratio] = field(default_factory=dict)
    # The serving profile: this variant at each batch size measured.
    serving: dict[int, ServingPoint] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        return self.recipe.precision

    @property
    def latency(self) -> Stats | None:
        return self.measurement.latency_ms if self.measurement else None

    @property
    def energy(self) -> Stats | None:
        return self.measurement.energy_j if self.measurement else None

    # The search.Candidate protocol.
    @property
    def drop(self) -> float:
        return self.fidelity.drop if self.fidelity else 1.0

    @property
    def size(self) -> int:
        return self.size_bytes

    def fail(self, status: Status | str, reason: str) -> None:
        self.status = Status(status)
        self.reason = reason
        log.warning("variant %s %s: %s", self.id, self.status, reason)
