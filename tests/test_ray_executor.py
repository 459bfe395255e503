"""The Ray executor (``--executor ray``) against a real local Ray cluster of two nodes.

The cluster's second node alone has the custom resource ``bench``: measurement pinned to it
must run there, while builds may run on either node. Both nodes share this machine's
filesystem, as a multi-node cluster on one machine does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

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
        bench = c.add_node(num_cpus=1, resources={"bench": 1}, object_store_memory=store)
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
        build_parser().parse_args(route([*argv, "--target-resource", "bench"]))
    )
    assert (opts.executor, opts.ray_address, opts.target_resource) == (
        "ray",
        "10.0.0.1:6379",
        "bench",
    )
    defaults = cmd_compile.build_options(build_parser().parse_args(route(["m.onnx"])))
    assert defaults.executor == "local" and defaults.ray_address is None
