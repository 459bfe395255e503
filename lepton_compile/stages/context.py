"""The run context: what every stage of one compile run reads, made once by ``prepare``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lepton_compile.batching import BatchPlan
from lepton_compile.bench.protocol import Protocol
from lepton_compile.bench.race import RaceRules
from lepton_compile.compress import AccuracyContext
from lepton_compile.inputs import InputSet
from lepton_compile.intake import LoadedModel
from lepton_compile.options import CompileOptions
from lepton_compile.recipes import Recipe
from lepton_compile.targets import TargetPlan

log = logging.getLogger(__name__)


class Observer:
    """Progress hooks; the CLI draws them with rich, the API logs them."""

    def stage(self, name: str, total: int | None = None) -> None:
        log.info("%s", name)

    def advance(self, detail: str = "") -> None:
        if detail:
            log.debug("  %s", detail)

    def done(self) -> None:
        pass


@dataclass
class RunContext:
    """One run: its options, the checked model and inputs, the targets, meters and protocol,
    the recipes to build, and where the work goes."""

    options: CompileOptions
    loaded: LoadedModel
    feeds: InputSet
    recipes: list[Recipe]
    plan: TargetPlan
    meters: dict[str, Any]  # device -> bench.energy.Meter
    protocol: Protocol
    rules: RaceRules
    accuracy: AccuracyContext
    work: Path
    observer: Observer
    device_at_start: dict[str, Any]
    # Recipes that cannot be built with these inputs (too few calibration samples): why.
    not_buildable: dict[str, str] = field(default_factory=dict)
    # The serving profile's sizes (None: no profile), and the seconds it took.
    batches: BatchPlan | None = None
    serving_wall_s: float = 0.0
    # Where the work ran when not in local workers (``RayExecutor.describe``), for the report.
    executor: dict[str, Any] = field(default_factory=dict)
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def deadline(self) -> float | None:
        """``time.perf_counter()`` value at which the whole search's budget is spent."""
        b = self.options.budget_s
        return None if b is None else self.t_start + b

    def over_budget(self) -> bool:
        d = self.deadline
        return d is not None and time.perf_counter() > d

    @property
    def memory_limit(self) -> int | None:
        from lepton_compile.worker import default_memory_limit

        m = self.options.memory_limit_bytes
        return m if m is not None else default_memory_limit()
