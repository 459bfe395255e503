"""Executors: where the stages' work on each variant runs.

A stage asks the executor for the worker of a variant and sends it requests (``build``,
``load``, ``run``, ``set_measurement``, timed windows). The local executor gives each variant
its own worker process (``worker.VariantWorker``: time and memory limits, crash isolation),
or runs everything in this process with ``isolate=False``. A distributed executor plugs in
here with the same interface; measurement stays on the device the figures are for.
"""

from __future__ import annotations

from typing import Any, Protocol

from lepton_compile.worker import VariantWorker


class Worker(Protocol):
    """What a stage may do with a variant's worker."""

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any: ...

    def rss_bytes(self) -> int: ...

    def suspend(self) -> None: ...

    def resume(self) -> None: ...

    def close(self) -> None: ...


class Executor(Protocol):
    """Hands out one worker per key (a variant id) and closes them all at the end."""

    def worker(self, key: str) -> Worker: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Worker processes on this machine, one per variant, created on first use."""

    def __init__(self, isolate: bool, timeout_s: float, memory_limit: int | None):
        self.isolate = isolate
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self._workers: dict[str, VariantWorker] = {}

    def worker(self, key: str) -> VariantWorker:
        if key not in self._workers:
            self._workers[key] = VariantWorker(
                key, isolate=self.isolate, timeout_s=self.timeout_s, memory_limit=self.memory_limit
            )
        return self._workers[key]

    def close(self) -> None:
        for w in self._workers.values():
            w.close()
        self._workers.clear()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
