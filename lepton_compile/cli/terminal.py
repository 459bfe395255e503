"""The terminal: consoles, logging through rich, and progress drawn from the run's hooks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.status import Status

from lepton_compile.engine import Observer


def stdout_console() -> Console:
    """The console for results (tables, JSON)."""
    # Logs and CI consoles are not terminals: give the table room instead of 80 columns.
    return Console() if Console().is_terminal else Console(width=140)


def setup_logging(verbose: int, console: Console) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    # onnxruntime's quantizer logs at INFO through the root logger; keep it out of the way.
    logging.getLogger("onnxruntime").setLevel(max(level, logging.WARNING))


class RichObserver(Observer):
    """A compile run's stages as rich progress bars, one per stage."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: TaskID | None = None

    def stage(self, name: str, total: int | None = None) -> None:
        if self.task is not None:
            t = self.progress.tasks[-1]
            self.progress.update(self.task, completed=t.total or 1, total=t.total or 1)
        self.task = self.progress.add_task(name, total=total)

    def advance(self, detail: str = "") -> None:
        if self.task is not None:
            self.progress.update(
                self.task,
                advance=1,
                description=self.progress.tasks[-1].description.split(" · ")[0]
                + (f" · {detail}" if detail else ""),
            )

    def done(self) -> None:
        self.stage("done", total=1)
        self.advance()


@contextmanager
def stage_progress(console: Console) -> Iterator[RichObserver]:
    """An observer that draws on ``console`` while the block runs."""
    cols = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*cols, console=console, transient=False) as progress:
        yield RichObserver(progress)


class PassStatus:
    """Instrument that shows the running pass in a rich status line."""

    def __init__(self, status: Status) -> None:
        self.status = status

    def before_pass(self, name: str, model: object) -> None:
        self.status.update(f"optimizing · {name}")

    def after_pass(self, name: str, model: object, result: object) -> None:
        self.status.update("optimizing · verifying")
