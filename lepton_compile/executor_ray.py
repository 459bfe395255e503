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

Builds and verification runs go as many at once as the cluster has CPUs (``parallelism``:
the stages hand the executor independent variants together); a CUDA variant's actor holds a
share of a GPU (``GPU_SHARE``) on a node that has one. Inside a build, the layer
probes of an accuracy-aware recipe's sensitivity search are Ray tasks of their own
(``RayProbes``, installed in every actor): each probe judges one candidate model, which
travels to it through the object store, against the reference outputs put there once.

Measurement runs in one actor per model (``_MeasureActor``), pinned to one node: the calls
that time a variant (``set_measurement``, ``warmup``, ``window``) and every call after them
go there. That node has ``target_resource`` (``"GPU"`` when a variant runs on CUDA; none
asked for on a CPU run, where the node is the one the first measured variant's worker is
on), and the actor holds all of that node's CPUs while it lives, so nothing the cluster
schedules runs beside the trials and two models' measurements never overlap. Inside it each
variant has its own worker process, as on a local run (the same ``VariantWorker``), so a
variant that crashes fails alone and the figures compare with local ones; the parent drives
the interleaved trials, one window per worker in turn, exactly as with local workers. When
the measuring actor itself dies, Ray restarts it and the variants' ``load`` and
``set_measurement`` are replayed into it.

Artifacts: the handler reads the model and writes the built variant where the stage says,
in the run's work directory. With ``--work-dir`` on a filesystem every node mounts at the
same path, that is all (``artifacts="shared"``). Without it, a model of up to
``OBJECT_STORE_MAX_BYTES`` travels through the object store: an actor that cannot see a
path it is given asks for the file, gets it from the object store into a directory of its
own, and sends the variant it built back the same way. A bigger model, or one with external
data, goes by path only: on a node that cannot see it that is one error naming
``--work-dir``. (A cluster of several nodes on one machine sees every path.)

The device record and the choice of energy meter are this driver's, as with local workers:
on a cluster of several machines, run the driver on the measuring node. The per-worker
address-space limit of local workers does not apply: Ray's memory monitor ends a worker when
its node runs short, which reads as ``oom``.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import socket
import sys
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from lepton_compile import compress
from lepton_compile.errors import ClusterLost, InputError
from lepton_compile.worker import (
    DEFAULT_TIMEOUT_S,
    VariantWorker,
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
# A sliver of the target resource: enough to place the measuring actor on a node that has it.
PIN_AMOUNT = 0.001
# Files up to this size travel through the object store to a node that cannot see them;
# bigger ones need a shared --work-dir (the object store holds them in memory, twice over).
OBJECT_STORE_MAX_BYTES = 512 * 2**20
# The share of a GPU that a CUDA variant's actor asks for while it is built and verified:
# four such actors share one GPU (they run the held-out inputs, not timed work).
GPU_SHARE = 0.25
# Extra seconds the parent waits on the measuring actor beyond a call's own time limit, which
# the variant's worker process inside it enforces.
MEASURE_GRACE_S = 30.0


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


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _ray_reason(e: BaseException) -> str:
    """Ray's messages run over many lines, colored; the first that is not the name of the
    task ("ray::Actor.call() (pid=...)") says what happened. A task's own error is its cause."""
    cause = getattr(e, "cause", None)
    if isinstance(e, ray.exceptions.RayTaskError) and isinstance(cause, BaseException):
        return _one_line(cause)
    lines = [_ANSI.sub("", ln).strip() for ln in str(e).splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("ray::")]
    return lines[0] if lines else type(e).__name__


class _Missing(Exception):
    """A path this node cannot see: the parent sends the file through the object store."""

    def __init__(self, path: str):
        super().__init__(path)
        self.path = path


# How artifacts reach an actor: "auto" by path where the node sees it, else through the
# object store; "shared" by path always (--work-dir); "store" through the object store always
# (as on a cluster whose nodes do not share files, on one machine).
ARTIFACT_MODES = ("auto", "shared", "store")


class _Files:
    """Where an actor reads the files it is sent and writes the variants it builds, when the
    driver's work directory is not on this node (see the module docstring)."""

    def __init__(self, mode: str):
        self.mode = mode
        self._dir: Path | None = None

    def local(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="lepton-ray-"))
        return self._dir

    def visible(self, path: str) -> bool:
        return self.mode == "shared" or (self.mode == "auto" and Path(path).exists())

    def source(self, path: str, blobs: dict[str, Any]) -> str:
        """A local path holding the file ``path`` names: itself, or its copy from the store."""
        if self.visible(path):
            if not Path(path).exists():
                raise FileNotFoundError(
                    f"{path} is not visible on this Ray node: --work-dir must be on a "
                    "filesystem every node mounts at the same path"
                )
            return path
        if path not in blobs:
            raise _Missing(path)
        copy = self.local() / f"in-{abs(hash(path))}-{Path(path).name}"
        if not copy.exists():
            copy.write_bytes(ray.get(blobs[path]))
        return str(copy)

    def target(self, path: str) -> str:
        """Where to write the file the parent expects at ``path``."""
        if self.visible(str(Path(path).parent)):
            return path
        return str(self.local() / f"out-{abs(hash(path))}-{Path(path).name}")


def _replay(applied: set[int], files: _Files, setup: list, blobs: dict[str, Any], run: Any) -> None:
    """Run the set-up calls (setup id, method, ObjectRef of args) this actor has not seen:
    a restarted actor, or a variant new to it, is set up again first."""
    for s, m, ref in setup:
        if s not in applied:
            run(m, *_localize(files, m, ray.get(ref), blobs))
            applied.add(s)


def _localize(files: _Files, method: str, args: tuple, blobs: dict[str, Any]) -> tuple:
    """``args`` with the paths this node reads and writes made local to it."""
    if method == "load":
        return (files.source(args[0], blobs), *args[1:])
    if method == "build":
        recipe, model, calibration, out, *rest = args
        return (recipe, files.source(model, blobs), calibration, files.target(out), *rest)
    return args


class _RayActor:
    """A variant's worker in the cluster: the local worker's handler, replies as tuples.

    Replies carry the node that served them, so the parent can say where each figure came
    from. The handler's own exceptions come back as (kind, reason), as from a worker process:
    raised, Ray would wrap them and could retry them, and a retry only helps a dead process.
    A variant built into this actor's own directory comes back as bytes with the reply.
    """

    def __init__(self, artifacts: str, probe_width: int) -> None:
        self.handler = _Handler()
        self.applied: set[int] = set()
        self.node = ray.get_runtime_context().get_node_id()
        self.files = _Files(artifacts)
        compress.set_probe_runner(RayProbes(probe_width))

    def call(self, method: str, args: tuple, sid: int | None, setup: list, blobs: dict) -> tuple:
        try:
            _replay(self.applied, self.files, setup, blobs, self._run)
            local = _localize(self.files, method, args, blobs)
            result = getattr(self.handler, method)(*local)
            if sid is not None:
                self.applied.add(sid)
            if method == "build" and local[3] != args[3]:
                result = (result, Path(local[3]).read_bytes())  # the variant, to the parent
            return ("ok", result, self.node)
        except _Missing as e:
            return ("missing", e.path, self.node)
        except MemoryError:
            return ("err", ("oom", "out of memory"), self.node)
        except Exception as e:
            log.debug("worker %s failed", method, exc_info=True)
            return ("err", (_kind(e), _one_line(e)), self.node)

    def _run(self, method: str, *args: Any) -> Any:
        return getattr(self.handler, method)(*args)

    def pid(self) -> int:
        return os.getpid()

    def rss(self) -> int:
        return resident_bytes()


class _MeasureActor:
    """One model's measurement on the pinned node: a worker process per variant inside it.

    The processes are the local executor's ``VariantWorker``: each variant's session is timed
    in a process of its own, as on a local run. Setup calls that a restarted actor has not
    seen are replayed first, as in ``_RayActor``.
    """

    def __init__(self, artifacts: str, timeout_s: float) -> None:
        self.node = ray.get_runtime_context().get_node_id()
        self.files = _Files(artifacts)
        self.timeout_s = timeout_s
        self.workers: dict[str, VariantWorker] = {}
        self.applied: set[int] = set()

    def _worker(self, key: str) -> VariantWorker:
        if key not in self.workers:
            self.workers[key] = VariantWorker(key, timeout_s=self.timeout_s)
        return self.workers[key]

    def call(
        self,
        key: str,
        method: str,
        args: tuple,
        sid: int | None,
        setup: list,
        blobs: dict,
        timeout_s: float,
    ) -> tuple:
        w = self._worker(key)
        try:
            _replay(self.applied, self.files, setup, blobs, w.call)
            local = _localize(self.files, method, args, blobs)
            result = w.call(method, *local, timeout_s=timeout_s)
            if sid is not None:
                self.applied.add(sid)
            return ("ok", result, self.node)
        except _Missing as e:
            return ("missing", e.path, self.node)
        except WorkerError as e:
            return ("err", (e.kind, e.reason), self.node)

    def setup(self, items: list, blobs: dict) -> dict[str, str]:
        """Replay the set-up of several variants side by side (each starts a process and
        loads its model): ``items`` are (key, setup calls). Best effort: what fails here is
        replayed again, and reported, by that variant's next call. Returns key -> error."""
        from concurrent.futures import ThreadPoolExecutor

        def one(item: tuple) -> tuple[str, str]:
            key, setup = item
            try:
                _replay(self.applied, self.files, setup, blobs, self._worker(key).call)
            except Exception as e:
                return key, _one_line(e)
            return key, ""

        for key, _ in items:  # made here, not in the threads: one dict writer
            self._worker(key)
        with ThreadPoolExecutor(max(1, min(len(items), os.cpu_count() or 1))) as pool:
            return {k: why for k, why in pool.map(one, items) if why}

    def rss(self, key: str) -> int:
        return self.workers[key].rss_bytes() if key in self.workers else 0

    def suspend(self, key: str) -> None:
        if key in self.workers:
            self.workers[key].suspend()

    def resume(self, key: str) -> None:
        if key in self.workers:
            self.workers[key].resume()

    def close(self, key: str) -> None:
        if key in self.workers:
            self.workers.pop(key).close()

    def pid(self) -> int:
        return os.getpid()


@ray.remote(num_cpus=1)
def _probe(ev: compress.Evaluator, blob: bytes) -> float:
    """One sensitivity probe as a Ray task: the drop of one candidate model, computed on the
    one CPU the task was given (onnxruntime would otherwise take every core of the node, and
    the probes beside it would fight over them)."""
    import onnx

    from lepton_compile.passes import ort_session

    ort_session.limit_threads(1)
    return ev.drop(onnx.load_from_string(blob))


class RayProbes:
    """Runs an accuracy search's independent probes as Ray tasks (``compress.ProbeRunner``).

    The evaluator (feeds, reference outputs, the metric) goes to the object store once per
    search; each candidate travels as its serialized model.
    """

    def __init__(self, width: int):
        self.width = max(1, width)
        self._put: tuple[int, Any] | None = None

    def drops(self, ev: compress.Evaluator, models: Sequence[Any]) -> list[float]:
        if self._put is None or self._put[0] != id(ev):
            self._put = (id(ev), ray.put(ev))
        ref = self._put[1]
        tasks = [_probe.remote(ref, m.SerializeToString()) for m in models]
        return [float(d) for d in ray.get(tasks)]


_RemoteActor = ray.remote(_RayActor)
_RemoteMeasure = ray.remote(_MeasureActor)


class RayWorker:
    """One variant's worker on Ray, with the ``Worker`` interface of ``VariantWorker``."""

    def __init__(self, executor: RayExecutor, name: str):
        self.executor = executor
        self.name = name
        self.dead: str | None = None
        self.suspended = False
        self._actor: Any = None
        self._node: str | None = None
        self._measuring = False  # its calls go to the run's measuring actor
        self._gpu = False  # it runs a CUDA variant: its actor holds a share of a GPU
        self._state: dict[str, tuple[int, Any]] = {}  # method -> (setup id, ObjectRef of args)
        self.blobs: dict[str, Any] = {}  # path -> ObjectRef of its bytes, sent when asked

    def call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        if self.dead:
            raise WorkerError(self.dead, "crash")
        if method in MEASURE_CALLS:
            self.to_measuring()
        elif method == "load" and str(args[2]).startswith("cuda") and not self._gpu:
            self._gpu = True  # from now on on a node with a GPU, a share of it its own
            self._end_actor()
        sid: int | None = None
        payload: Any = args
        if method == "build" and len(args) > 4 and args[4] is not None:
            _metric_by_value(args[4].metric)
        if method in STATE_CALLS:
            sid = next(self.executor.ids)
            payload = ray.put(args)  # kept for a replay; passed on its own, Ray resolves it
        setup = [c for c in self.setup_calls() if c[1] != method]
        limit = timeout_s or self.executor.timeout_s
        while True:
            status, value, node = self._send(method, payload, sid, setup, limit)
            if status != "missing":
                break
            self.blobs[value] = self.executor.blob(value)  # the node asked for this file
        self._node = node
        self.executor.ledger.append((self.name, method, node))
        if status == "ok":
            if sid is not None:
                self._state[method] = (sid, payload)
            if method == "build" and isinstance(value, tuple):
                value = _receive(value, args[3])
            return value
        kind, text = value
        raise WorkerError(text, kind)

    def to_measuring(self) -> None:
        """From now on this variant's calls go to the run's measuring actor, where its
        ``load`` is replayed."""
        if not self._measuring:
            self.executor.choose_measure_node(self._node)
            self._measuring = True
            self._end_actor()

    def setup_calls(self) -> list:
        """The calls that set this worker up, for a replay: (setup id, method, ObjectRef)."""
        return [(s, m, ref) for m, (s, ref) in self._state.items()]

    def _send(self, method: str, payload: Any, sid: int | None, setup: list, limit: float) -> tuple:
        try:
            if self._measuring:
                actor = self.executor.measurer(self._node)
                reply = actor.call.remote(self.name, method, payload, sid, setup, self.blobs, limit)
                return ray.get(reply, timeout=limit + MEASURE_GRACE_S)
            reply = self._ensure_actor().call.remote(method, payload, sid, setup, self.blobs)
            return ray.get(reply, timeout=limit)
        except ray.exceptions.GetTimeoutError:
            self.executor.check_cluster()
            if self._measuring:
                self.executor.restart_measurer()  # stuck beyond its worker's own time limit
            else:
                self.kill()
            self.dead = f"{method} timed out after {limit:g} s"
            raise WorkerError(self.dead, "timeout") from None
        except ray.exceptions.RayTaskError as e:
            # The actor lives; what was sent or returned could not cross (not serializable).
            raise WorkerError(f"cannot cross to the cluster: {_ray_reason(e)}", "error") from None
        except ray.exceptions.RayError as e:
            self.executor.check_cluster()
            raise self._died(e) from None

    def _ensure_actor(self) -> Any:
        if self._actor is None:
            self._actor = self.executor.new_actor(gpu=self._gpu)
            self._node = None
        return self._actor

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
        """The process of this worker's actor: the measuring actor's once it measures."""
        actor = self.executor.measurer(self._node) if self._measuring else self._ensure_actor()
        return int(ray.get(actor.pid.remote(), timeout=self.executor.timeout_s))

    def rss_bytes(self) -> int:
        if self.dead:
            return 0
        try:
            if self._measuring:
                return int(ray.get(self.executor.measurer(self._node).rss.remote(self.name)))
            if self._actor is None:
                return 0
            return int(ray.get(self._actor.rss.remote(), timeout=30))
        except ray.exceptions.RayError:
            return 0

    def suspend(self) -> None:
        """End the variant's process to free its memory; the next call loads it again."""
        if self.dead:
            return
        if self._measuring:
            ray.get(self.executor.measurer(self._node).suspend.remote(self.name))
        elif self._actor is None:
            return
        else:
            self._end_actor()
        self.suspended = True

    def resume(self) -> None:
        if self.suspended and self._measuring and not self.dead:
            ray.get(self.executor.measurer(self._node).resume.remote(self.name))
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


def _metric_by_value(metric: Any) -> None:
    """A metric from the user's own file (``--metric path/to/m.py:fn``) is importable here,
    by the folder the driver put on its path, but not on the cluster's workers: its module
    goes to them by value, as cloudpickle can send it, instead of by name."""
    module = sys.modules.get(getattr(metric, "__module__", None) or "")
    where = getattr(module, "__file__", None)
    if module is None or where is None or module.__name__ == "__main__":
        return  # nothing to send, or cloudpickle sends __main__ by value already
    if any(part in ("site-packages", "dist-packages") for part in Path(where).parts):
        return  # installed: the workers import it as the driver does
    if module.__name__.split(".")[0] == "lepton_compile":
        return
    ray.cloudpickle.register_pickle_by_value(module)


def _receive(reply: tuple, path: str) -> Any:
    """A variant built on a node that cannot see the work directory: written where the
    stage expects it, whole or not at all."""
    steps, data = reply
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return steps


class RayExecutor:
    """Ray actors for the variants' builds and verification, one measuring actor per run.

    ``target_resource`` names the custom resource (or ``"GPU"``) of the node to measure on;
    None measures on the node of the first measured variant's worker. ``max_restarts`` bounds
    the restarts (and so the retries) of each actor. ``artifacts`` is one of
    ``ARTIFACT_MODES``: "shared" when the work directory is on a filesystem every node sees
    (``--work-dir``).
    """

    def __init__(
        self,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        target_resource: str | None = None,
        max_restarts: int = MAX_RESTARTS,
        address: str | None = None,
        artifacts: str = "auto",
    ):
        connect(address)
        self.timeout_s = timeout_s
        self.target_resource = target_resource
        self.max_restarts = max_restarts
        self.address = address or "auto"
        assert artifacts in ARTIFACT_MODES, artifacts
        self.artifacts = artifacts
        self.measure_node: str | None = None
        self.gcs_address = ray.get_runtime_context().gcs_address
        self.ids = itertools.count(1)
        self.ledger: list[tuple[str, str, str]] = []  # (variant, method, node) of each call
        self._workers: dict[str, RayWorker] = {}
        self._measurer: Any = None
        self._lock = threading.Lock()
        # Builds and verification runs at once: as many as the cluster has CPUs.
        self.parallelism = max(1, int(ray.cluster_resources().get("CPU", 1)))
        if target_resource and not any(
            n.get("Resources", {}).get(target_resource) for n in ray.nodes() if n.get("Alive")
        ):
            raise InputError(
                f"--target-resource {target_resource}: no node of the Ray cluster at "
                f"{self.address} has it"
            )

    def check_cluster(self) -> None:
        """Raise ClusterLost when the cluster's control service no longer answers: every call
        would fail now, and that is not the variants' fault."""
        host, _, port = self.gcs_address.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError) as e:
            raise ClusterLost(
                f"lost the connection to the Ray cluster at {self.address} "
                f"({getattr(e, 'strerror', None) or e}); nothing of this run was written"
            ) from None

    def worker(self, key: str) -> RayWorker:
        with self._lock:
            if key not in self._workers:
                self._workers[key] = RayWorker(self, key)
            return self._workers[key]

    def new_actor(self, gpu: bool = False) -> Any:
        """A variant's actor for builds and verification, wherever the cluster has room (with
        ``gpu``, a share of a GPU: a CUDA variant runs there)."""
        options: dict[str, Any] = {
            "max_restarts": self.max_restarts,
            "max_task_retries": self.max_restarts,
        }
        if gpu:
            # No CPU held while it lives, only the GPU share: the measuring actor, which takes
            # every CPU of its node, must not wait for an idle verification actor.
            options.update(num_gpus=GPU_SHARE, num_cpus=0)
        return _RemoteActor.options(**options).remote(  # type: ignore[attr-defined]
            self.artifacts, self.parallelism
        )

    def blob(self, path: str) -> Any:
        """The file at ``path`` in the object store, for a node that cannot see it."""
        p = Path(path)
        size = p.stat().st_size
        if size > OBJECT_STORE_MAX_BYTES or p.with_name(p.name + ".data").exists():
            what = (
                "has external data"
                if size <= OBJECT_STORE_MAX_BYTES
                else (f"is {size / 2**20:.0f} MiB (over {OBJECT_STORE_MAX_BYTES / 2**20:.0f} MiB)")
            )
            raise WorkerError(
                f"{p.name} {what}: it cannot go through Ray's object store to a node that does "
                "not see this machine's files; give --work-dir on a filesystem every node mounts",
                "error",
            )
        return ray.put(p.read_bytes())

    def measurer(self, hint: str | None) -> Any:
        """The run's measuring actor, created on first use on the measuring node."""
        if self._measurer is None:
            node = self.choose_measure_node(hint)
            cpus = next(
                (n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n["NodeID"] == node),
                0,
            )
            options: dict[str, Any] = {
                "max_restarts": self.max_restarts,
                "max_task_retries": self.max_restarts,
                # Every CPU of the node: nothing else is scheduled there while it measures.
                "num_cpus": cpus,
                # Hard affinity: the actor, and every restart of it, runs on the measuring node.
                "scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=False),
            }
            if self.target_resource:
                options["resources"] = {self.target_resource: PIN_AMOUNT}
            self._measurer = _RemoteMeasure.options(**options).remote(  # type: ignore[attr-defined]
                self.artifacts, self.timeout_s
            )
        return self._measurer

    def prepare_measurement(self, keys: Sequence[str]) -> None:
        """Set the variants of a race up in the measuring actor at once (their processes
        start and load side by side), before the race sets up their meters one by one."""
        workers = [self.worker(k) for k in keys]
        workers = [w for w in workers if not w.dead and not w.suspended]
        if not workers:
            return
        for w in workers:
            w.to_measuring()
        blobs: dict[str, Any] = {}
        for w in workers:
            blobs.update(w.blobs)
        items = [(w.name, w.setup_calls()) for w in workers]
        try:
            failed = ray.get(self.measurer(None).setup.remote(items, blobs), timeout=self.timeout_s)
        except ray.exceptions.RayError as e:  # each variant's own next call says what it is
            log.debug("measurement set-up: %s", _ray_reason(e))
            return
        for key, why in failed.items():
            log.debug("measurement set-up of %s: %s", key, why)

    def restart_measurer(self) -> None:
        """End a stuck measuring actor; Ray starts it again and the variants replay."""
        if self._measurer is not None:
            try:
                ray.kill(self._measurer, no_restart=False)
            except Exception:
                pass

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
            "parallelism": self.parallelism,
            "artifacts": self.artifacts,
            "measured_on": measured,
            "nodes": sorted({n for _, _, n in self.ledger}),
        }

    def close(self) -> None:
        for w in self._workers.values():
            w.close()
        self._workers.clear()
        if self._measurer is not None:
            try:
                ray.kill(self._measurer, no_restart=True)
            except Exception:  # the cluster is gone: nothing left to free
                pass
            self._measurer = None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
