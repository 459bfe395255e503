"""Before/after hooks around each pass: wall time and node-count change per pass."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import onnx_ir as ir

from lepton_compile.passes._utils import count_nodes

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PassRecord:
    """What one pass did: its name, wall time, node counts around it, whether it changed."""

    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    modified: bool

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


class PassInstrument(Protocol):
    """Hooks called around every pass a `InstrumentedPipeline` runs."""

    def before_pass(self, name: str, model: ir.Model) -> None: ...

    def after_pass(self, name: str, model: ir.Model, result: ir.passes.PassResult) -> None: ...


class TimingInstrument:
    """Records a `PassRecord` per pass and logs it; `records` holds this run's list."""

    def __init__(self, log_level: int = logging.INFO) -> None:
        self.log_level = log_level
        self.records: list[PassRecord] = []
        self._start = 0.0
        self._nodes_before = 0

    def before_pass(self, name: str, model: ir.Model) -> None:
        self._nodes_before = count_nodes(model)
        # Counted before the clock starts, so the time is the pass's own.
        self._start = time.perf_counter()

    def after_pass(self, name: str, model: ir.Model, result: ir.passes.PassResult) -> None:
        seconds = time.perf_counter() - self._start
        record = PassRecord(
            name=name,
            seconds=seconds,
            nodes_before=self._nodes_before,
            nodes_after=count_nodes(result.model),
            modified=result.modified,
        )
        self.records.append(record)
        logger.log(
            self.log_level,
            "%-26s %8.3f s  nodes %5d -> %5d (%+d)%s",
            name,
            seconds,
            record.nodes_before,
            record.nodes_after,
            record.nodes_after - record.nodes_before,
            "" if record.modified else "  (unchanged)",
        )


class InstrumentedPipeline(ir.passes.InPlacePass):
    """Runs named in-place passes in order, calling every instrument around each one.

    onnx-ir's PassManager has no hooks, so this plays its role for our pipelines.
    """

    def __init__(
        self,
        passes: Sequence[tuple[str, ir.passes.PassBase]],
        instruments: Sequence[PassInstrument] = (),
    ) -> None:
        super().__init__()
        for name, pass_ in passes:
            if not pass_.in_place:
                raise ValueError(f"pass {name!r} is not in place")
        self.passes = tuple(passes)
        self.instruments = tuple(instruments)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for name, pass_ in self.passes:
            for instrument in self.instruments:
                instrument.before_pass(name, model)
            try:
                result = pass_(model)
            except Exception as e:
                raise ir.passes.PassError(f"pass {name!r} failed: {e}") from e
            for instrument in self.instruments:
                instrument.after_pass(name, model, result)
            modified = modified or result.modified
        return ir.passes.PassResult(model, modified)
