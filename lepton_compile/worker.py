"""Variant workers: build, verify and measure one variant, in a child process by default.

A variant that crashes its backend (a segfault in a kernel), hangs, or eats all memory must
not take the run down with it. Each variant gets a worker process (``spawn``, so no inherited
runtime threads) with an address-space limit; every request to it has a deadline. A crash,
a hang or an out-of-memory becomes a ``WorkerError`` whose reason says which it was, and the
search records that variant as failed and goes on.

Measurement stays interleaved across variants: the parent drives the trials and asks each
worker, in turn, for one timed window; the worker reads its own energy meter (the estimate
integrates the worker's CPU time, which is exactly that variant's inference work).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Mapping, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 900.0


class WorkerError(Exception):
    """The worker could not do what was asked: crashed, timed out, ran out of memory, or raised."""

    def __init__(self, reason: str, kind: str = "error"):
        super().__init__(reason)
        self.reason = reason
        self.kind = kind  # error | crash | timeout | oom | unsupported | skip | constraint | input


def resident_bytes(pid: int | str = "self") -> int:
    """Resident memory of process ``pid`` (this one by default); 0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def default_memory_limit() -> int | None:
    """80% of physical memory: a runaway variant is stopped before the machine starts to swap."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.8)
    except (ValueError, OSError, AttributeError):
        return None


class _Handler:
    """The work itself; runs in the child (or in this process when isolation is off)."""

    def __init__(self) -> None:
        self.session: Any = None
        self.feed: dict[str, np.ndarray] | None = None
        self.meter: Any = None

    def build(
        self,
        recipe: Any,
        model_path: str,
        calibration: Sequence[Mapping[str, np.ndarray]],
        out_path: str,
        accuracy: Any = None,
    ) -> list[dict]:
        import onnx

        from lepton_compile import modelio, recipes

        model = onnx.load(model_path, load_external_data=True)
        built, steps = recipes.build(recipe, model, calibration, accuracy=accuracy)
        # Saved first: a model over the protobuf limit can only be checked from its file.
        out = modelio.save_model(built, Path(out_path))
        try:
            modelio.check_model(built, out)
        except Exception as e:
            # A recipe that builds an invalid model is our fault, not the user's input.
            raise RuntimeError(f"the built model fails onnx.checker: {e}") from None
        return steps

    def load(self, path: str, backend: str, device: str, options: Mapping[str, Any]) -> dict:
        from lepton_compile.runtime import get_backend

        self.session = None
        self.session = get_backend(backend).load(Path(path), device=device, options=options)
        return self.session.describe()

    def run(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        return [self.session.run(f) for f in feeds]

    def set_measurement(
        self, feed: Mapping[str, np.ndarray], meter: str, device: str, cpu_watts: float | None
    ) -> dict:
        from lepton_compile.bench.energy import get_meter

        self.feed = dict(feed)
        self.meter = get_meter(meter, device=device, cpu_watts=cpu_watts)
        return self.meter.describe()

    def _fn(self) -> Any:
        sess, feed = self.session, self.feed
        return lambda: sess.run(feed)

    def warmup(self, protocol: Any) -> None:
        from lepton_compile.bench.protocol import run_warmup

        run_warmup(self._fn(), protocol)

    def window(self, window_s: float, protocol: Any) -> tuple:
        from lepton_compile.bench.protocol import run_window

        return run_window(self._fn(), self.meter, window_s, protocol)


def _serve(conn: Connection, memory_limit: int | None) -> None:
    """Child main loop: (method, args) in, ("ok", result) | ("err", kind, text) out."""
    if memory_limit:
        import resource

        try:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and kills us
    handler = _Handler()
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        method, args = msg
        try:
            reply: tuple = ("ok", getattr(handler, method)(*args))
        except MemoryError:
            reply = ("err", "oom", "out of memory")
        except BaseException as e:  # report everything; the parent decides
            log.debug("worker %s failed:\n%s", method, traceback.format_exc())
            reply = ("err", _kind(e), _one_line(e))
        try:
            try:
                conn.send(reply)
            except (BrokenPipeError, EOFError, OSError):
                raise
            except Exception as e:  # the result could not be pickled
                conn.send(("err", "error", f"result not transferable: {_one_line(e)}"))
        except (BrokenPipeError, EOFError, OSError):
            return  # the parent has gone (timed out, interrupted): nothing left to tell


def _kind(e: BaseException) -> str:
    """The WorkerError kind of an exception raised by the work itself."""
    from lepton_compile.compress import CompressionFailed, NotApplicable
    from lepton_compile.errors import InputError, NotSupported
    from lepton_compile.passes.errors import PassInputError

    if isinstance(e, NotApplicable):
        return "skip"
    if isinstance(e, NotSupported):
        return "unsupported"
    if isinstance(e, CompressionFailed):
        return "constraint"
    if isinstance(e, InputError | PassInputError):  # a pass's bad input is the user's too
        return "input"
    return "error"


def _one_line(e: BaseException) -> str:
    """What a worker reports of an error: our own errors as they are, others with their
    type; an allocation failure in any library reads as what it is."""
    from lepton_compile.errors import LeptonError
    from lepton_compile.passes.errors import one_line

    if isinstance(e, LeptonError):
        return str(e)
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    # A native library's message ends in its reason: the last line, not the first.
    text = one_line(lines[-1]) if lines else ""
    if "bad_alloc" in text or "Failed to allocate" in text:
        return "out of memory"
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class VariantWorker:
    """One variant's worker. ``isolate=False`` runs the same code in this process."""

    def __init__(
        self,
        name: str,
        isolate: bool = True,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        memory_limit: int | None = None,
    ):
        self.name = name
        self.isolate = isolate
        self.timeout_s = timeout_s
        self.memory_limit = memory_limit
        self._proc: Any = None
        self._conn: Connection | None = None
        self._local = _Handler() if not isolate else None
        self.dead: str | None = None
        self._load_args: tuple | None = None  # the last "load", replayed by resume()
        self.suspended = False

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_serve,
            args=(child, self.memory_limit),
            name=f"lepton-{self.name}",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        if method == "load":
            self._load_args = args
        if self.dead:
            raise WorkerError(self.dead, "crash")
        if self._local is not None:
            try:
                return getattr(self._local, method)(*args)
            except MemoryError:
                raise WorkerError("out of memory", "oom") from None
            except Exception as e:
                raise WorkerError(_one_line(e), _kind(e)) from e
        if self._proc is None:
            self._start()
        assert self._conn is not None
        limit = timeout_s or self.timeout_s
        try:
            self._conn.send((method, args))
        except (BrokenPipeError, OSError):
            raise self._died() from None
        start = time.monotonic()
        while True:
            if self._conn.poll(0.2):
                try:
                    reply = self._conn.recv()
                except (EOFError, OSError):
                    raise self._died() from None
                break
            if not self._proc.is_alive():
                raise self._died()
            if time.monotonic() - start > limit:
                self.kill()
                self.dead = f"{method} timed out after {limit:g} s"
                raise WorkerError(self.dead, "timeout")
        if reply[0] == "ok":
            return reply[1]
        _, kind, text = reply
        raise WorkerError(text, kind)

    def _died(self) -> WorkerError:
        proc = self._proc
        proc.join(timeout=5)
        code = proc.exitcode
        if code is not None and code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = str(-code)
            # The kernel's OOM killer and an address-space limit both end in SIGKILL/SIGSEGV.
            kind = "oom" if sig == "SIGKILL" else "crash"
            what = "killed (out of memory?)" if kind == "oom" else "crashed"
            self.dead = f"worker {what}: signal {sig}"
        else:
            kind = "crash"
            self.dead = f"worker exited unexpectedly (exit code {code})"
        return WorkerError(self.dead, kind)

    def rss_bytes(self) -> int:
        """Resident memory of the worker process (0 in-process or when it cannot be read)."""
        if self._proc is None or not self._proc.is_alive():
            return 0
        return resident_bytes(self._proc.pid)

    def suspend(self) -> None:
        """End the worker process to free its memory; ``resume`` loads the model again."""
        if self._local is not None or self._proc is None or self.dead:
            return
        self.close()
        self._proc = None
        self._conn = None
        self.suspended = True

    def resume(self) -> None:
        """Start a suspended worker again and replay its last ``load``."""
        if not self.suspended:
            return
        self.suspended = False
        if self._load_args is not None:
            self.call("load", *self._load_args)

    def kill(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)

    def close(self) -> None:
        if self._local is not None:
            self._local.session = None
            return
        if self._proc is None:
            return
        try:
            if self._proc.is_alive() and self._conn is not None:
                self._conn.send(None)
                self._proc.join(timeout=5)
        except (BrokenPipeError, OSError):
            pass
        self.kill()
        if self._conn is not None:
            self._conn.close()


class WorkerRunner:
    """A worker as a ``bench.protocol.WindowRunner``: the parent interleaves, the child times."""

    def __init__(self, worker: VariantWorker, window_timeout_s: float):
        self.worker = worker
        self.window_timeout_s = window_timeout_s

    def warmup(self, p: Any) -> None:
        self.worker.call("warmup", p, timeout_s=self.window_timeout_s)

    def window(self, window_s: float, p: Any) -> tuple:
        return self.worker.call(
            "window", window_s, p, timeout_s=window_s * 20 + self.window_timeout_s
        )
