"""Ray executor: each variant's worker is a Ray actor running the local worker's ``_Handler``.

``RayExecutor`` has the ``Executor`` interface of ``LocalExecutor``: the stages ask for a
variant's worker and send it the same requests (``build``, ``load``, ``run``,
``set_measurement``, timed windows), so builds, verification runs, calibration and the
accuracy search run in actors wherever the cluster has room. Ray's own fault tolerance does
the retrying: an actor whose process dies is restarted, and the call it was serving retried,
at most ``max_restarts`` times; the requests that set a worker up (the last ``load`` and
``set_measurement``) are replayed into a restarted actor before the retried call, so a retry
sees the state the call was sent to. A worker that dies beyond that is a
``WorkerError(kind="crash")`` with Ray's reason, and the stage marks that variant failed.

Measurement is pinned: the calls that time a variant (``set_measurement``, ``warmup``,
``window``) run in an actor on one node, the same node for every variant of the run, so that
their figures compare. That node has ``target_resource`` (``"GPU"`` when a variant runs on
CUDA; none asked for on a CPU run, where the node is the one the first measured variant's
worker is on): a variant's first measuring call moves it to an actor created with
``resources={target_resource: 0.001}`` and a hard node affinity to the measuring node, which
replays the variant's ``load`` there. Builds and verification stay wherever Ray put them. The
parent still drives the interleaved trials, one window per worker in turn, exactly as with
local workers.

Artifacts travel as paths: the handler reads the model and writes the built variant where the
stage says, in the run's work directory. That is correct on one machine, whether the cluster
has one Ray node or several (as ``ray.cluster_utils.Cluster`` starts them, sharing the
filesystem). A cluster that spans machines needs the work directory on a filesystem every node
mounts at the same path: point ``TMPDIR`` there for the driver (the work directory is a
temporary directory). An actor that cannot see a path it is given says so in its reply.

The device record and the choice of energy meter are this driver's, as with local workers:
on a cluster of several machines, run the driver on the measuring node. The per-worker
address-space limit of local workers does not apply: Ray's memory monitor ends a worker when
its node runs short, which reads as ``oom``.
"""

from __future__ import annotations

import itertools
import logging
import os
import socket
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lepton_compile.errors import InputError
from lepton_compile.worker import (
    DEFAULT_TIMEOUT_S,
    WorkerError,
    _Handler,
    _kind,
    _one_line,
    resident_bytes,
)

log = logging.getLogger(__name__)

# Restarts of a variant's actor after its process died; each restart retries the call it was
# serving. Bounded: a variant that kills its worker every time must end as failed.
MAX_RESTARTS = 2
# The calls that time a variant: they run on the measuring node.
MEASURE_CALLS = frozenset({"set_measurement", "warmup", "window"})
# The calls that set up a worker's state; a restarted actor replays them (in this order).
STATE_CALLS = ("load", "set_measurement")
# A sliver of the target resource: enough to place the actor on a node that has it, small
# enough that every variant's actor fits there at once (they take turns, never run together).
PIN_AMOUNT = 0.001


def connect(address: str | None) -> None:
    """Join the Ray cluster at ``address`` (None: the one ``ray start`` left for this machine).

    Raises InputError, one line, when there is no cluster there. A driver that is already
    connected (``ray.init`` in the caller's own code) stays on its cluster.
    """
    if ray.is_initialized():
        return
    where = address or "auto"
    _check_reachable(where)
    try:
        # Worker logs stay in the cluster's log directory: each failure comes back as a reason.
        ray.init(address=where, logging_level=logging.WARNING, log_to_driver=False)
    except Exception as e:
        raise InputError(
            f"--ray-address {where}: cannot connect to a Ray cluster ({_ray_reason(e)}); start "
            "one with `ray start --head` or give the address of a running one"
        ) from None


def _check_reachable(address: str) -> None:
    """A host:port that refuses connections fails here at once; Ray itself would retry for a
    minute before giving up on it."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise InputError(
            f"--ray-address {address}: cannot connect to a Ray cluster ({e.strerror or e}); "
            "start one with `ray start --head` or give the address of a running one"
        ) from None


def _ray_reason(e: BaseException) -> str:
    """Ray's messages run over many lines; the first says what happened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class _RayActor:
    """A variant's worker in the cluster: the local worker's handler, replies as tuples.

    Replies carry the node that served them, so the parent can say where each figure came
    from. The handler's own exceptions come back as (kind, reason), as from a worker process:
    raised, Ray would wrap them and could retry them, and a retry only helps a dead process.
    """

    def __init__(self) -> None:
        self.handler = _Handler()
        self.applied: set[int] = set()
        self.node = ray.get_runtime_context().get_node_id()

    def call(self, method: str, args: tuple, sid: int | None, setup: list) -> tuple:
        try:
            for s, m, ref in setup:
                if s not in self.applied:  # a restarted actor: set it up again first
                    getattr(self.handler, m)(*ray.get(ref))
                    self.applied.add(s)
            _check_paths(method, args)
            result = getattr(self.handler, method)(*args)
            if sid is not None:
                self.applied.add(sid)
            return ("ok", result, self.node)
        except MemoryError:
            return ("err", ("oom", "out of memory"), self.node)
        except Exception as e:
            log.debug("worker %s failed", method, exc_info=True)
            return ("err", (_kind(e), _one_line(e)), self.node)

    def node_id(self) -> str:
        return self.node

    def pid(self) -> int:
        return os.getpid()

    def rss(self) -> int:
        return resident_bytes()


def _check_paths(method: str, args: tuple) -> None:
    """The model a call reads must be on this node's filesystem (see the module docstring)."""
    if method in ("build", "load"):
        path = Path(args[1] if method == "build" else args[0])
        if not path.exists():
            raise FileNotFoundError(
                f"{path} is not visible on this Ray node: a cluster of several machines needs "
                "the work directory (TMPDIR) on a filesystem every node shares"
            )


_RemoteActor = ray.remote(_RayActor)


class RayWorker:
    """One variant's worker on Ray, with the ``Worker`` interface of ``VariantWorker``."""

    def __init__(self, executor: RayExecutor, name: str):
        self.executor = executor
        self.name = name
        self.dead: str | None = None
        self.suspended = False
        self._actor: Any = None
        self._node: str | None = None
        self._measuring = False  # its actor is on the measuring node
        self._state: dict[str, tuple[int, Any]] = {}  # method -> (setup id, ObjectRef of args)

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        if self.dead:
            raise WorkerError(self.dead, "crash")
        if method in MEASURE_CALLS and not self._measuring:
            self._move_to_measuring_node()
        sid: int | None = None
        payload: Any = args
        if method in STATE_CALLS:
            sid = next(self.executor.ids)
            payload = ray.put(args)  # kept for a replay; passed on its own, Ray resolves it
        setup = [(s, m, ref) for m, (s, ref) in self._state.items() if m != method]
        limit = timeout_s or self.executor.timeout_s
        try:
            actor = self._ensure_actor()
            reply = actor.call.remote(method, payload, sid, setup)
            status, value, node = ray.get(reply, timeout=limit)
        except ray.exceptions.GetTimeoutError:
            self.kill()
            self.dead = f"{method} timed out after {limit:g} s"
            raise WorkerError(self.dead, "timeout") from None
        except ray.exceptions.RayTaskError as e:
            # The actor lives; what it returned could not come back (not serializable).
            raise WorkerError(f"result not transferable: {_ray_reason(e)}", "error") from None
        except ray.exceptions.RayError as e:
            raise self._died(e) from None
        self._node = node
        self.executor.ledger.append((self.name, method, node))
        if status == "ok":
            if sid is not None:
                self._state[method] = (sid, payload)
            return value
        kind, text = value
        raise WorkerError(text, kind)

    def _ensure_actor(self) -> Any:
        if self._actor is None:
            self._actor = self.executor.new_actor(self.name, measuring=self._measuring)
            self._node = None
        return self._actor

    def _move_to_measuring_node(self) -> None:
        """Measure on the run's measuring node, in an actor pinned there (a restart stays
        there too); the next call replays this variant's ``load`` into it."""
        self.executor.choose_measure_node(self._node)
        self._measuring = True
        self._end_actor()

    def _died(self, e: BaseException) -> WorkerError:
        oom = isinstance(e, ray.exceptions.OutOfMemoryError) or "out of memory" in str(e).lower()
        what = "ran out of memory" if oom else "died"
        self.dead = (
            f"worker {what} ({self.executor.max_restarts} restarts allowed): {_ray_reason(e)}"
            if isinstance(e, ray.exceptions.RayActorError)
            else f"worker failed: {_ray_reason(e)}"
        )
        self._end_actor()
        return WorkerError(self.dead, "oom" if oom else "crash")

    def node_id(self) -> str | None:
        """The node of this worker's actor (None before its first call)."""
        return self._node

    def pid(self) -> int:
        return int(ray.get(self._ensure_actor().pid.remote(), timeout=self.executor.timeout_s))

    def rss_bytes(self) -> int:
        if self._actor is None or self.dead:
            return 0
        try:
            return int(ray.get(self._actor.rss.remote(), timeout=30))
        except ray.exceptions.RayError:
            return 0

    def suspend(self) -> None:
        """End the actor to free its memory; the next call replays ``load`` in a new one."""
        if self._actor is None or self.dead:
            return
        self._end_actor()
        self.suspended = True

    def resume(self) -> None:
        self.suspended = False

    def kill(self) -> None:
        self._end_actor()

    def close(self) -> None:
        self._end_actor()

    def _end_actor(self) -> None:
        if self._actor is not None:
            try:
                ray.kill(self._actor, no_restart=True)
            except Exception:  # already gone, or the cluster is: nothing left to free
                pass
        self._actor = None
        self._node = None


class RayExecutor:
    """Ray actors, one per variant, created on first use; measurement on one node.

    ``target_resource`` names the custom resource (or ``"GPU"``) of the node to measure on;
    None measures on the node of the first measured variant's worker. ``max_restarts`` bounds
    the restarts (and so the retries) of each actor.
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        target_resource: str | None = None,
        max_restarts: int = MAX_RESTARTS,
        address: str | None = None,
    ):
        connect(address)
        self.timeout_s = timeout_s
        self.target_resource = target_resource
        self.max_restarts = max_restarts
        self.address = address or "auto"
        self.measure_node: str | None = None
        self.ids = itertools.count(1)
        self.ledger: list[tuple[str, str, str]] = []  # (variant, method, node) of each call
        self._workers: dict[str, RayWorker] = {}
        if target_resource and not any(
            n.get("Resources", {}).get(target_resource) for n in ray.nodes() if n.get("Alive")
        ):
            raise InputError(
                f"--target-resource {target_resource}: no node of the Ray cluster at "
                f"{self.address} has it"
            )

    def worker(self, key: str) -> RayWorker:
        if key not in self._workers:
            self._workers[key] = RayWorker(self, key)
        return self._workers[key]

    def new_actor(self, name: str, measuring: bool) -> Any:
        options: dict[str, Any] = {
            "max_restarts": self.max_restarts,
            "max_task_retries": self.max_restarts,
        }
        if measuring:
            assert self.measure_node is not None
            # Measuring actors take turns on one node (the parent drives one window at a
            # time): none of them may wait for a CPU that an idle sibling is holding.
            options["num_cpus"] = 0
            if self.target_resource:
                options["resources"] = {self.target_resource: PIN_AMOUNT}
            # Hard affinity: the actor, and every restart of it, runs on the measuring node.
            options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
                self.measure_node, soft=False
            )
        return _RemoteActor.options(**options).remote()  # type: ignore[attr-defined]

    def choose_measure_node(self, hint: str | None) -> str:
        """The node every variant is measured on, chosen once: one with the target resource
        (``hint``, the node of the first measured variant's worker, where it has it), or
        without a target resource ``hint`` itself (else this driver's node)."""
        if self.measure_node is None:
            if self.target_resource:
                alive = sorted(
                    n["NodeID"]
                    for n in ray.nodes()
                    if n.get("Alive") and n.get("Resources", {}).get(self.target_resource)
                )
                if not alive:
                    raise WorkerError(
                        f"no live node of the Ray cluster has {self.target_resource}", "crash"
                    )
                self.measure_node = hint if hint in alive else alive[0]
            else:
                self.measure_node = hint or ray.get_runtime_context().get_node_id()
        assert self.measure_node is not None
        return self.measure_node

    def describe(self) -> dict[str, Any]:
        """Where the work ran, for the report."""
        measured = sorted({n for _, m, n in self.ledger if m in MEASURE_CALLS})
        return {
            "kind": "ray",
            "address": self.address,
            "target_resource": self.target_resource,
            "max_restarts": self.max_restarts,
            "measured_on": measured,
            "nodes": sorted({n for _, _, n in self.ledger}),
        }

    def close(self) -> None:
        for w in self._workers.values():
            w.close()
        self._workers.clear()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
