"""Executors: where the stages' work on each variant runs.

A stage asks the executor for the worker of a variant and sends it requests (``build``,
``load``, ``run``, ``set_measurement``, timed windows). The local executor gives each variant
its own worker process (``worker.VariantWorker``: time and memory limits, crash isolation),
or runs everything in this process with ``isolate=False``. A distributed executor plugs in
here with the same interface; measurement stays on the device the figures are for:
``executor_ray.RayExecutor`` runs each variant's worker as a Ray actor (``--executor ray``).

Stages hand independent work (a recipe's build, a variant's verification) to ``each``, which
runs as much of it at once as the executor's ``parallelism`` allows: one at a time locally,
where each build already uses every core; as many as the cluster has CPUs on Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from lepton_compile.worker import VariantWorker

if TYPE_CHECKING:
    from lepton_compile.options import CompileOptions

T = TypeVar("T")
R = TypeVar("R")


class Worker(Protocol):
    """What a stage may do with a variant's worker."""

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any: ...

    def rss_bytes(self) -> int: ...

    def suspend(self) -> None: ...

    def resume(self) -> None: ...

    def close(self) -> None: ...


class Executor(Protocol):
    """Hands out one worker per key (a variant id) and closes them all at the end.

    ``parallelism``: how many variants' builds or verification runs may go at once.
    """

    parallelism: int

    def worker(self, key: str) -> Worker: ...

    def prepare_measurement(self, keys: Sequence[str]) -> None:
        """The variants ``keys`` are about to be raced: have them ready to time."""

    def close(self) -> None: ...


class LocalExecutor:
    """Worker processes on this machine, one per variant, created on first use.

    One variant's work at a time: a build or a verification run takes what the machine has
    (onnxruntime and torch use every core), and two at once would only share them.
    """

    parallelism = 1

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

    def prepare_measurement(self, keys: Sequence[str]) -> None:
        """Nothing to do: each variant's process holds its model, loaded when verified."""

    def close(self) -> None:
        for w in self._workers.values():
            w.close()
        self._workers.clear()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def each(
    executor: Executor,
    items: Sequence[T],
    work: Callable[[T], R],
    done: Callable[[T, R], None] = lambda item, result: None,
) -> list[R]:
    """``work`` on every item, up to ``executor.parallelism`` at once; the results in the
    items' order. ``done`` runs in this thread as each finishes (progress, bookkeeping). An
    exception from ``work`` is raised here once the items already started have finished."""
    width = getattr(executor, "parallelism", 1)
    if width <= 1 or len(items) <= 1:
        results = []
        for item in items:
            results.append(work(item))
            done(item, results[-1])
        return results
    # Threads only wait on workers (processes or Ray actors): the work itself runs there.
    with ThreadPoolExecutor(min(width, len(items))) as pool:
        futures = {pool.submit(work, item): i for i, item in enumerate(items)}
        out: dict[int, R] = {}
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in finished:
                if f.exception() is not None:
                    for p in pending:
                        p.cancel()
                    raise f.exception()  # type: ignore[misc]
                i = futures[f]
                out[i] = f.result()
                done(items[i], out[i])
        return [out[i] for i in range(len(items))]


def connect(opts: CompileOptions) -> None:
    """Reach the executor's cluster, if it has one: InputError, one line, when it cannot.
    Called before a run writes anything."""
    if opts.executor == "ray":
        _ray().connect(opts.ray_address)


def executor_for(
    opts: CompileOptions, memory_limit: int | None, devices: Iterable[str] = ()
) -> LocalExecutor | Any:
    """The executor ``opts`` asks for; ``devices`` are the run's, whose kind picks the node
    that Ray measures on when no ``target_resource`` is named (a GPU node for CUDA)."""
    if opts.executor != "ray":
        return LocalExecutor(opts.isolate, opts.variant_timeout_s, memory_limit)
    resource = opts.target_resource
    if resource is None and any(d.startswith("cuda") for d in devices):
        resource = "GPU"
    return _ray().RayExecutor(
        opts.variant_timeout_s,
        resource,
        address=opts.ray_address,
        artifacts="shared" if opts.work_dir is not None else "auto",
    )


def _ray() -> Any:
    """``executor_ray``, imported only when asked for: Ray is an optional dependency."""
    from lepton_compile.errors import InputError

    try:
        from lepton_compile import executor_ray
    except ImportError as e:
        if e.name is not None and e.name.split(".")[0] != "ray":
            raise
        raise InputError("--executor ray needs Ray: pip install 'lepton-compile[ray]'") from None
    return executor_ray
