"""The Ray executor (``--executor ray``) against a real local Ray cluster of two nodes.

The cluster's second node alone has the custom resource ``bench``: measurement pinned to it
must run there, while builds may run on either node. Both nodes share this machine's
filesystem, as a multi-node cluster on one machine does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import lepton_compile
from lepton_compile.errors import InputError
from lepton_compile.options import CompileOptions
from lepton_compile.recipes import Recipe

QUICK = {
    "quick": True,
    "recipes": ["original", "fused", "int8-dynamic"],
    "backends": ["ort"],
    "cache": False,
    "eval_samples": 4,
    "calibration_samples": 4,
}

# A custom step that kills the process it runs in, counting its attempts in a file next to it.
KILLER = textwrap.dedent(
    """
    import os
    import signal
    from pathlib import Path

    ATTEMPTS = Path(__file__).with_name("attempts.txt")

    def die(model):
        with ATTEMPTS.open("a") as f:
            f.write("attempt\\n")
        os.kill(os.getpid(), signal.SIGKILL)
    """
)


@pytest.fixture(scope="module")
def steps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("ray_steps")
    (d / "killer_steps.py").write_text(KILLER)
    return d


@pytest.fixture(scope="module")
def cluster(steps_dir: Path) -> Iterator[dict[str, str]]:
    """Two Ray nodes on this machine, the second with the resource ``bench``; the driver is
    connected to it for the module, and everything is shut down after."""
    ray = pytest.importorskip("ray", reason="the Ray executor needs ray (the ray extra)")
    from ray.cluster_utils import Cluster

    # Small object stores: the feeds and replies here are kilobytes.
    store = 100 * 2**20
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False, "object_store_memory": store},
    )
    try:
        # It declares a GPU too (Ray schedules by the count given): where CUDA variants go.
        bench = c.add_node(
            num_cpus=1, num_gpus=1, resources={"bench": 1}, object_store_memory=store
        )
        c.wait_for_nodes()
        # Actors import the test's custom step module by name, as worker processes do.
        path = os.pathsep.join([str(steps_dir), os.environ.get("PYTHONPATH", "")])
        ray.init(address=c.address, runtime_env={"env_vars": {"PYTHONPATH": path}})
        try:
            yield {"address": c.address, "bench": bench.node_id, "head": c.head_node.node_id}
        finally:
            ray.shutdown()
    finally:
        c.shutdown()


def _folded(status: str) -> str:
    # Racing drops a variant on its timings, which differ from run to run on any executor.
    return "ok" if status == "dropped" else status


@pytest.mark.slow
def test_same_variants_statuses_and_fidelity_as_local(tinycnn_path: Path, cluster: dict):
    local = lepton_compile.compile(tinycnn_path, **QUICK)
    on_ray = lepton_compile.compile(tinycnn_path, executor="ray", **QUICK)
    assert [v.id for v in on_ray.variants] == [v.id for v in local.variants]
    assert {v.id: _folded(v.status) for v in on_ray.variants} == {
        v.id: _folded(v.status) for v in local.variants
    }
    assert all(v.fidelity is not None for v in on_ray.variants)
    for a, b in zip(local.variants, on_ray.variants, strict=True):
        assert b.fidelity.drop == pytest.approx(a.fidelity.drop, abs=1e-6), a.id
        assert b.status != "failed", b.reason
    ran = on_ray.report["measurement"]["isolation"]["executor"]
    assert ran["kind"] == "ray" and len(ran["measured_on"]) == 1
    assert "executor" not in local.report["measurement"]["isolation"]


@pytest.mark.slow
def test_measurement_runs_on_the_node_with_the_target_resource(mlp_path: Path, cluster: dict):
    res = lepton_compile.compile(mlp_path, executor="ray", target_resource="bench", **QUICK)
    measured = [v for v in res.variants if v.measurement is not None]
    assert res.baseline in measured and len(measured) >= 2, [(v.id, v.reason) for v in res.variants]
    ran = res.report["measurement"]["isolation"]["executor"]
    assert ran["target_resource"] == "bench"
    assert ran["measured_on"] == [cluster["bench"]]
    assert set(ran["nodes"]) <= {cluster["bench"], cluster["head"]}


@pytest.mark.slow
def test_a_worker_moves_to_the_measuring_node_and_replays_its_load(mlp_path: Path, cluster: dict):
    """Driven as the stages drive it: verified anywhere, then measured on the pinned node;
    a measuring worker killed between calls is restarted there with its model loaded."""
    import numpy as np

    from lepton_compile.bench.protocol import Protocol
    from lepton_compile.executor_ray import RayExecutor

    feed = {"x": np.ones((1, 32), np.float32)}
    with RayExecutor(timeout_s=120, target_resource="bench") as ex:
        w = ex.worker("original-ort-cpu")
        w.call("load", str(mlp_path), "ort", "cpu", {})
        before = w.call("run", [feed])[0]
        w.call("set_measurement", feed, "estimate", "cpu", None)
        assert w.node_id() == cluster["bench"]
        os.kill(w.pid(), 9)
        w.call("warmup", Protocol.quick())  # the restarted actor reloaded the model first
        after = w.call("run", [feed])[0]
        assert w.node_id() == cluster["bench"]
        for name in before:
            np.testing.assert_allclose(after[name], before[name], rtol=1e-6, atol=1e-6)
        measuring = {n for _, m, n in ex.ledger if m in ("set_measurement", "warmup", "window")}
        assert measuring == {cluster["bench"]}


@pytest.mark.slow
def test_a_worker_killed_every_time_is_retried_then_failed(
    mlp_path: Path, cluster: dict, steps_dir: Path
):
    from lepton_compile.executor_ray import MAX_RESTARTS

    die = Recipe("custom-die", "kills its worker", custom_step="killer_steps:die")
    res = lepton_compile.compile(mlp_path, executor="ray", **{**QUICK, "recipes": ["fused", die]})
    by = {v.recipe.name: v for v in res.variants}
    assert by["custom-die"].status == "failed"
    assert "died" in by["custom-die"].reason and "build:" in by["custom-die"].reason
    attempts = (steps_dir / "attempts.txt").read_text().splitlines()
    assert len(attempts) == 1 + MAX_RESTARTS
    assert by["fused"].status in ("ok", "dropped")
    assert by["original"].status == "ok" and res.best.status == "ok"


@pytest.mark.slow
def test_an_unreachable_cluster_is_one_line_and_nothing_written(tinycnn_path: Path, tmp_path: Path):
    pytest.importorskip("ray", reason="the Ray executor needs ray (the ray extra)")
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "lepton_compile", str(tinycnn_path), "--quick", "-o", str(out)]
        + ["--executor", "ray", "--ray-address", "127.0.0.1:1", "--no-cache"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "Ray" in lines[0], done.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"executor": "dask"}, "--executor"),
        ({"ray_address": "10.0.0.1:6379"}, "--ray-address needs --executor ray"),
        ({"target_resource": "bench"}, "--target-resource needs --executor ray"),
        ({"executor": "ray", "target_resource": " "}, "--target-resource"),
        ({"executor": "ray", "isolate": False}, "--no-isolate"),
    ],
)
def test_executor_options_are_checked(fields: dict, message: str):
    with pytest.raises(InputError, match=message):
        CompileOptions(**fields).validate()


def test_the_cluster_flags_reach_the_options():
    from lepton_compile.cli import build_parser, cmd_compile, route

    argv = ["m.onnx", "--executor", "ray", "--ray-address", "10.0.0.1:6379"]
    opts = cmd_compile.build_options(
        build_parser().parse_args(
            route([*argv, "--target-resource", "bench", "--work-dir", "/shared/lepton"])
        )
    )
    assert (opts.executor, opts.ray_address, opts.target_resource, opts.work_dir) == (
        "ray",
        "10.0.0.1:6379",
        "bench",
        "/shared/lepton",
    )
    defaults = cmd_compile.build_options(build_parser().parse_args(route(["m.onnx"])))
    assert defaults.executor == "local" and defaults.ray_address is None


@pytest.mark.slow
def test_one_measuring_actor_per_model_on_the_pinned_node(mlp_path: Path, cluster: dict):
    """Every variant is timed in the run's one measuring actor (each in a process of its own
    inside it), on the node with the resource; a crash of that actor replays every load."""
    import numpy as np

    from lepton_compile.bench.protocol import Protocol
    from lepton_compile.executor_ray import RayExecutor

    feed = {"x": np.ones((1, 32), np.float32)}
    with RayExecutor(timeout_s=120, target_resource="bench") as ex:
        workers = [ex.worker(k) for k in ("a", "b")]
        for w in workers:
            w.call("load", str(mlp_path), "ort", "cpu", {})
            w.call("set_measurement", feed, "estimate", "cpu", None)
        assert len({w.pid() for w in workers}) == 1
        assert all(w.rss_bytes() > 0 for w in workers)  # each variant's own process
        os.kill(workers[0].pid(), 9)
        for w in workers:
            w.call("warmup", Protocol.quick())
        assert {w.node_id() for w in workers} == {cluster["bench"]}


@pytest.mark.slow
def test_artifacts_through_the_object_store(tinycnn_path: Path, cluster: dict, tmp_path: Path):
    """Nodes that do not see the driver's files get the model from the object store and send
    the built variant back the same way; it is the variant a local build gives."""
    import numpy as np
    import onnx

    from lepton_compile.executor_ray import RayExecutor
    from lepton_compile.recipes import RECIPES
    from lepton_compile.worker import VariantWorker

    fused = RECIPES["fused"]

    first = onnx.load(tinycnn_path).graph.input[0]
    shape = [d.dim_value or 1 for d in first.type.tensor_type.shape.dim]
    feed = {first.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    outs = {}
    for name, make in (
        ("store", lambda: RayExecutor(timeout_s=120, artifacts="store")),
        ("local", lambda: None),
    ):
        art = tmp_path / name / "variants" / "fused.onnx"
        art.parent.mkdir(parents=True)
        ex = make()
        w = ex.worker("fused") if ex is not None else VariantWorker("fused")
        try:
            w.call("build", fused, str(tinycnn_path), [], str(art), None)
            assert art.is_file()
            w.call("load", str(art), "ort", "cpu", {})
            outs[name] = w.call("run", [feed])[0]
        finally:
            (ex or w).close()
    for k in outs["local"]:
        np.testing.assert_array_equal(outs["store"][k], outs["local"][k])


def test_a_model_too_big_for_the_object_store_names_work_dir(tmp_path: Path, monkeypatch):
    pytest.importorskip("ray", reason="the Ray executor needs ray (the ray extra)")
    from lepton_compile import executor_ray
    from lepton_compile.worker import WorkerError

    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0" * 4096)
    monkeypatch.setattr(executor_ray, "OBJECT_STORE_MAX_BYTES", 1024)
    ex = executor_ray.RayExecutor.__new__(executor_ray.RayExecutor)
    with pytest.raises(WorkerError, match="--work-dir"):
        ex.blob(str(big))


@pytest.mark.slow
def test_sensitivity_probes_as_ray_tasks_match_serial_ones(mlp_path: Path, cluster: dict):
    import onnx

    from lepton_compile import compress
    from lepton_compile.executor_ray import RayProbes

    model = onnx.load(mlp_path)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 32)).astype(np.float32)} for _ in range(4)]
    ev = compress.Evaluator(model, feeds, compress.AccuracyContext(max_drop=0.01))
    candidates = []
    for scale in (1.0, 1.01, 1.1, 2.0):
        m = onnx.ModelProto()
        m.CopyFrom(model)
        for init in m.graph.initializer:
            a = onnx.numpy_helper.to_array(init) * scale
            init.CopyFrom(onnx.numpy_helper.from_array(a.astype(np.float32), init.name))
        candidates.append(m)
    serial = ev.drops(candidates)
    compress.set_probe_runner(RayProbes(width=2))
    try:
        parallel = ev.drops(candidates)
    finally:
        compress.set_probe_runner(None)
    assert parallel == pytest.approx(serial, abs=1e-9)
    assert serial[0] == 0.0 and serial[-1] > serial[1]
    assert ev.evaluations == 2 * len(candidates)


@pytest.mark.slow
def test_the_result_cache_takes_many_ray_tasks_writing_at_once(cluster: dict, tmp_path: Path):
    import ray

    from lepton_compile.bench.cache import ResultCache

    path = tmp_path / "results.sqlite"

    @ray.remote(num_cpus=0)
    def write(task: int) -> int:
        cache = ResultCache(path)
        return sum(bool(cache.put(f"k{task}-{i}", {"task": task, "i": i})) for i in range(40))

    assert ray.get([write.remote(t) for t in range(6)]) == [40] * 6
    cache = ResultCache(path)
    assert all(cache.get(f"k{t}-{i}") == {"task": t, "i": i} for t in range(6) for i in range(40))


def test_work_dir_is_checked_and_holds_the_run(tmp_path: Path, tinycnn_path: Path):
    with pytest.raises(InputError, match="--work-dir"):
        CompileOptions(work_dir=tmp_path / "absent").validate()
    res = lepton_compile.compile(
        tinycnn_path, work_dir=tmp_path, **{**QUICK, "recipes": ["original"]}
    )
    assert Path(res.workdir).parent == tmp_path


@pytest.mark.slow
def test_a_fleet_on_ray_with_a_broken_model_then_resumed(
    tinycnn_path: Path, mlp_path: Path, cluster: dict, tmp_path: Path
):
    from lepton_compile.fleet import run_fleet

    models = tmp_path / "models"
    models.mkdir()
    (models / "cnn.onnx").write_bytes(tinycnn_path.read_bytes())
    (models / "mlp.onnx").write_bytes(mlp_path.read_bytes())
    (models / "broken.onnx").write_bytes(b"not a model")
    out = tmp_path / "out"
    # Two models at once: their builds share the cluster, their measurements take turns.
    first = run_fleet(models, out, executor="ray", jobs=2, **QUICK)
    assert [r["name"] for r in first.rows] == ["broken", "cnn", "mlp"]
    rows = {r["name"]: r for r in first.rows}
    assert rows["broken"]["status"] == "failed" and rows["broken"]["reason"]
    assert rows["cnn"]["status"] != "failed" and rows["mlp"]["status"] != "failed"
    ran = json.loads((out / "cnn" / "report.json").read_text())["measurement"]["isolation"]
    assert ran["executor"]["kind"] == "ray"
    again = run_fleet(models, out, executor="ray", **QUICK)
    resumed = {r["name"]: r["resumed"] for r in again.rows}
    assert resumed == {"broken": False, "cnn": True, "mlp": True}


@pytest.mark.slow
def test_a_metric_from_the_users_file_reaches_the_actors(
    mlp_path: Path, cluster: dict, tmp_path: Path
):
    """--metric path/to/file.py:fn: the accuracy search in an actor judges by it, though the
    cluster's workers cannot import that file by name."""
    from lepton_compile.cli.cmd_compile import load_metric

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "ray_user_metric.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def top1(outputs, labels):
                return float(np.mean([
                    int(o["y"].argmax(-1)[0] == lab["label"][0])
                    for o, lab in zip(outputs, labels)
                ]))
            """
        )
    )
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        x = rng.standard_normal((1, 32)).astype(np.float32)
        np.savez(data / f"{i:03d}.npz", x=x, label=np.array([i % 8], dtype=np.int64))
    metric = load_metric(f"{mine / 'ray_user_metric.py'}:top1")
    res = lepton_compile.compile(
        mlp_path,
        executor="ray",
        inputs_dir=data,
        metric=metric,
        **{**QUICK, "recipes": ["int8-mixed"], "eval_samples": 4},
    )
    v = next(v for v in res.variants if v.recipe.name == "int8-mixed")
    assert v.status != "failed", v.reason
    search = next(s for s in v.build["steps"] if "criterion" in s)
    assert search["criterion"].startswith("user metric")


@pytest.mark.slow
def test_a_cuda_variant_is_verified_on_a_node_with_a_gpu(mlp_path: Path, cluster: dict):
    """Its actor asks for a share of a GPU, so it lands on the one node that declares one
    (where this machine has no CUDA, the load then fails there, with the reason)."""
    from lepton_compile.executor_ray import RayExecutor
    from lepton_compile.worker import WorkerError

    with RayExecutor(timeout_s=120) as ex:
        w = ex.worker("original-ort-cuda")
        w.call("load", str(mlp_path), "ort", "cpu", {})
        try:
            w.call("load", str(mlp_path), "ort", "cuda", {})
        except WorkerError as e:
            assert e.reason
        assert w.node_id() == cluster["bench"]


@pytest.mark.slow
def test_a_cluster_lost_mid_run_is_one_line_and_nothing_written(tinycnn_path: Path, tmp_path: Path):
    """A cluster of its own (the module's stays up), killed while the run measures on it."""
    pytest.importorskip("ray", reason="the Ray executor needs ray (the ray extra)")
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Ray's token authentication would need the head's token passed to the driver.
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    head = subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
        + [f"--port={port}", "--num-cpus=1", "--include-dashboard=false"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its processes in a group of their own, to end together
    )
    out = tmp_path / "out"
    try:
        deadline = time.monotonic() + 90
        while True:  # until the head answers
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head did not start"
                time.sleep(1)
        run = subprocess.Popen(
            [sys.executable, "-m", "lepton_compile", str(tinycnn_path), "--quick", "-o", str(out)]
            + ["--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--no-cache"]
            # Many trials: the run is still measuring when the cluster goes.
            + ["--recipes", "fused", "--backend", "ort", "--min-trials", "1000"]
            + ["--max-trials", "1000", "--measure-budget-s", "600"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(25)
        assert run.poll() is None, run.communicate()
        os.killpg(head.pid, signal.SIGKILL)
        _, err = run.communicate(timeout=240)
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", f"gcs-address=127.0.0.1:{port}"], check=False)
    lines = [ln for ln in err.splitlines() if ln.strip() and "lepton-compile" in ln]
    assert run.returncode == 2, err
    assert len(lines) == 1 and "lost the connection to the Ray cluster" in lines[0], err
    assert not out.exists()
