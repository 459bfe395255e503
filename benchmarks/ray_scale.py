"""Ray scale-out benchmark: a fleet of models and one sensitivity search, local vs Ray.

    python benchmarks/ray_scale.py [MODEL ...] [--search-model ppocr-cls] [--out FILE]

Two measurements, each local executor first, then the Ray executor on a local Ray cluster
that this script starts on this machine (``ray.init`` with every CPU):

- fleet: ``lepton_compile.run_fleet`` over the models (quick protocol, onnxruntime variants,
  cold result cache), wall time per model and per stage (from the stages' progress hooks):
  local, Ray with one model at a time, Ray with two at once (``--jobs 2``);
- search: the accuracy-aware INT8 recipe of one model under a tight accuracy constraint, so
  that its layer-sensitivity search probes many layers: serial probes in a local worker vs
  probes as Ray tasks; seconds, probes done and probes per second.

Then a projection, labelled as one, to clusters of N nodes with this machine's CPUs each,
from the durations measured here with the local executor (work one at a time):

- search: the first probe alone, then batches of N x CPUs probes between checkpoints;
- fleet: per model, the builds scheduled longest-first on N x CPUs slots, each whole (an
  upper bound: the probes inside an accuracy-aware build spread too), verification spread
  likewise, measurement as measured (it stays on one node, one model at a time), the rest
  (loading, reference outputs, emitting) as measured; and the floor that models at once
  approach, the measurements alone.

Figures on one machine tell what its cores allow, nothing more: with 2 cores a build or
probe already uses both (onnxruntime's threads), so running two at once mostly shares them.
"""

from __future__ import annotations

import argparse
import heapq
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from suite import RESULTS, check_models, write_results

import lepton_compile
from lepton_compile.bench.zoo import MODELS, fetch
from lepton_compile.fleet import FleetObserver, ModelEntry
from lepton_compile.fleet import run_fleet as fleet_run
from lepton_compile.stages import Observer

DEFAULT_MODELS = [
    "resnet50",
    "densenet121",
    "ppocr-cls",
    "ppocrv4-det",
    "ppocrv4-rec",
    "picodet-layout",
]
FLEET_OPTIONS: dict[str, Any] = {"quick": True, "backends": ["ort"], "cache": False}
SEARCH_OPTIONS: dict[str, Any] = {
    "recipes": ["int8-mixed"],
    "backends": ["ort"],
    "quick": True,
    "cache": False,
    "max_accuracy_drop": 0.003,
}
PROJECT_NODES = (1, 2, 4, 8, 16)
# The accuracy search's checkpoints (compress.MIN_PROBES_JUDGED, then doubling) and cap.
CHECKPOINTS = (8, 16, 32, 64)

log = logging.getLogger("bench.ray_scale")


class _StageClock(Observer):
    """Seconds per stage of one compile, from the stages' ``stage`` hooks."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float]] = []

    def stage(self, name: str, total: int | None = None) -> None:
        self.marks.append((_stage_kind(name), time.perf_counter()))

    def done(self) -> None:
        self.marks.append(("done", time.perf_counter()))

    def seconds(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for (kind, t), (_, t_next) in zip(self.marks, self.marks[1:], strict=False):
            out[kind] = round(out.get(kind, 0.0) + t_next - t, 2)
        return out


def _stage_kind(name: str) -> str:
    for kind in ("building", "verifying", "measuring", "serving"):
        if name.startswith(kind):
            return kind
    return "other"


class _FleetClock(FleetObserver):
    def __init__(self) -> None:
        self.clocks: dict[str, _StageClock] = {}

    def started(self, index: int, total: int, name: str) -> Observer:
        log.info("[%d/%d] %s", index, total, name)
        self.clocks[name] = _StageClock()
        return self.clocks[name]


def run_fleet(models: Sequence[str], executor: str, jobs: int, work: Path) -> dict[str, Any]:
    entries = [
        ModelEntry(fetch(m), m, tuple((k, tuple(v)) for k, v in MODELS[m].input_shapes.items()))
        for m in models
    ]
    clock = _FleetClock()
    load0 = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    out = work / f"{executor}-jobs{jobs}"
    res = fleet_run(entries, out, observer=clock, executor=executor, jobs=jobs, **FLEET_OPTIONS)
    wall = time.perf_counter() - t0
    rows = []
    for row in res.rows:
        name = row["name"]
        report = out / name / "report.json"
        rows.append(
            {
                "model": name,
                "status": row["status"],
                "pick": row.get("pick"),
                "seconds": row.get("seconds"),
                "stages_s": clock.clocks[name].seconds() if name in clock.clocks else {},
                "builds_s": _build_seconds(report),
                "executor": _executor_record(report),
            }
        )
    log.info("fleet on %s, %d at once: %.1f s", executor, jobs, wall)
    return {
        "executor": executor,
        "jobs": jobs,
        "wall_s": round(wall, 1),
        # What else the machine ran meanwhile: 1-minute load averages at the start and end.
        "load_avg_1min": [load0, round(os.getloadavg()[0], 2)],
        "models": rows,
    }


def _build_seconds(report: Path) -> dict[str, float]:
    """Each recipe's build time (the first variant of a recipe built it)."""
    import json

    if not report.is_file():
        return {}
    out: dict[str, float] = {}
    for v in json.loads(report.read_text())["variants"]:
        name = v["recipe"]["name"] if isinstance(v["recipe"], dict) else v["recipe"]
        secs = (v.get("build") or {}).get("seconds")
        if secs is not None and name not in out:
            out[name] = secs
    return out


def _executor_record(report: Path) -> dict[str, Any] | None:
    import json

    if not report.is_file():
        return None
    iso = json.loads(report.read_text())["measurement"].get("isolation", {})
    return iso.get("executor")


def run_search(model: str, executor: str) -> dict[str, Any]:
    """The accuracy-aware INT8 recipe's build, its search's figures."""
    load0 = round(os.getloadavg()[0], 2)
    t0 = time.perf_counter()
    res = lepton_compile.compile(
        fetch(model), input_shapes=MODELS[model].input_shapes, executor=executor, **SEARCH_OPTIONS
    )
    wall = time.perf_counter() - t0
    v = next(v for v in res.variants if v.recipe.name == "int8-mixed")
    search = next((s for s in (v.build or {}).get("steps", []) if "probes" in s), None)
    row: dict[str, Any] = {
        "executor": executor,
        "wall_s": round(wall, 1),
        "build_s": (v.build or {}).get("seconds"),
        "status": str(v.status),
        "reason": v.reason,
        "load_avg_1min": [load0, round(os.getloadavg()[0], 2)],
    }
    if search is not None:
        row.update(
            search_s=search.get("seconds"),
            probes=search.get("probes"),
            probes_single=search.get("probes_single"),
            probing_stopped=search.get("probing_stopped"),
            first_probe_s=(search.get("budget") or {}).get("first_probe_s"),
            probes_per_s=round(search["probes"] / search["seconds"], 2)
            if search.get("seconds")
            else None,
        )
    log.info("search on %s: %s", executor, row)
    return row


# --------------------------------------------------------------------------- projection


def _makespan(durations: Sequence[float], slots: int) -> float:
    """Longest-first list scheduling of ``durations`` on ``slots`` slots."""
    ends = [0.0] * max(1, slots)
    for d in sorted(durations, reverse=True):
        heapq.heapreplace(ends, ends[0] + d)
    return max(ends)


def project_search(serial: dict[str, Any], ray_run: dict[str, Any], cpus: int) -> list[dict]:
    """Probing seconds on N nodes: the first probe alone, then batches between checkpoints.

    A probe task lasts what the Ray run's did here, one CPU each (its probing seconds times
    the slots over the probes: an upper bound, since it counts the waits at each batch's
    end); the group probes and the search for how many layers to keep stay serial, as long
    as they took in the serial run.
    """
    needed = ("probes_single", "search_s", "probes")
    if not all(serial.get(k) for k in needed) or not all(ray_run.get(k) for k in needed):
        return []
    per_serial = serial["search_s"] / serial["probes"]
    rest = serial["search_s"] - serial["probes_single"] * per_serial
    per_task = ray_run["search_s"] * cpus / ray_run["probes"]
    n = max(serial["probes_single"], ray_run["probes_single"])
    out = []
    for nodes in PROJECT_NODES:
        width = nodes * cpus
        batches, done = 1, 1
        for cp in (*CHECKPOINTS, n):
            end = min(cp, n)
            if end > done:
                batches += math.ceil((end - done) / width)
                done = end
        out.append(
            {
                "nodes": nodes,
                "slots": width,
                "probes": n,
                "search_s": round(rest + batches * per_task, 2),
                "serial_search_s": round(rest + n * per_serial, 2),
            }
        )
    return out


def project_fleet(local: dict[str, Any], cpus: int) -> list[dict[str, Any]]:
    """Models one after another, each one's builds and verification spread over the slots;
    and the floor that models at once (``--jobs``) approach: the measurements alone, which
    take turns on the measuring node."""
    floor = sum(m["stages_s"].get("measuring", 0.0) for m in local["models"])
    out = []
    for nodes in PROJECT_NODES:
        slots = nodes * cpus
        total = 0.0
        for m in local["models"]:
            st = m["stages_s"]
            builds = list(m["builds_s"].values())
            total += st.get("other", 0.0) + st.get("measuring", 0.0) + st.get("serving", 0.0)
            total += _makespan(builds, slots) if builds else st.get("building", 0.0)
            # Verification: each variant's run, spread over the slots as evenly as they go.
            n_var = max(1, len(builds))
            total += st.get("verifying", 0.0) * math.ceil(n_var / slots) / n_var
        out.append(
            {
                "nodes": nodes,
                "slots": slots,
                "fleet_s": round(total, 1),
                "fleet_s_floor_models_at_once": round(floor, 1),
            }
        )
    return out


def _search_projection(search: list[dict[str, Any]], cpus: int) -> dict[str, Any]:
    return {
        "note": "a projection from the probe durations measured here (serial, and Ray tasks "
        "on a warm cluster), not a measurement",
        "rows": project_search(search[0], search[-1], cpus),
    }


def _fleet_projection(local: dict[str, Any], cpus: int) -> dict[str, Any]:
    return {
        "note": "a projection from the stage and build durations of the local run, not a "
        "measurement. Each build is scheduled whole, so an accuracy-aware build's sensitivity "
        "search counts as serial here (an upper bound: its probes spread too, see "
        "search_projection); measurement stays serial on one node",
        "rows": project_fleet(local, cpus),
    }


def reproject(path: Path) -> None:
    """Recompute the projections of a results file from the durations it holds."""
    import json

    data = json.loads(path.read_text())
    cpus = data["cpus"]
    if data.get("search"):
        data["search_projection"] = _search_projection(data["search"], cpus)
    if data.get("fleet"):
        data["fleet_projection"] = _fleet_projection(data["fleet"][0], cpus)
    path.write_text(json.dumps(data, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--search-model", default="ppocr-cls")
    ap.add_argument("--out", type=Path, default=RESULTS / "ray-scale-cpu.json")
    ap.add_argument(
        "--reproject", action="store_true", help="only recompute the projections of --out"
    )
    args = ap.parse_args(argv)
    if args.reproject:
        reproject(args.out)
        print(f"rewrote the projections of {args.out}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_models(ap, [*args.models, args.search_model])
    import ray

    cpus = os.cpu_count() or 1
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    fields: dict[str, Any] = {
        "protocol": (
            "local executor first, then the Ray executor on a local Ray cluster of this "
            f"machine's {cpus} CPUs; fleet options {FLEET_OPTIONS}; search options "
            f"{SEARCH_OPTIONS} on {args.search_model}"
        ),
        "ray_version": ray.__version__,
        "cpus": cpus,
    }
    with tempfile.TemporaryDirectory(prefix="lepton-ray-scale-") as tmp:
        work = Path(tmp)
        # Ray twice: its first probes start the cluster's worker processes (imports), the
        # second finds them running, as a long-lived cluster has them.
        search = [run_search(args.search_model, ex) for ex in ("local", "ray", "ray")]
        search[1]["cluster"], search[2]["cluster"] = "fresh", "warm"
        fields["search"] = search
        fields["search_projection"] = _search_projection(search, cpus)
        write_results(args.out, "ray_scale", argv, [], **fields)
        fleets = []
        for ex, jobs in (("local", 1), ("ray", 1), ("ray", 2)):
            fleets.append(run_fleet(args.models, ex, jobs, work))
            fields["fleet"] = fleets
            write_results(args.out, "ray_scale", argv, [], **fields)
        fields["fleet_wall_ratio_to_local"] = {
            f"{f['executor']} jobs={f['jobs']}": round(f["wall_s"] / fleets[0]["wall_s"], 3)
            for f in fleets
        }
        fields["fleet_projection"] = _fleet_projection(fleets[0], cpus)
        write_results(args.out, "ray_scale", argv, [], **fields)
    ray.shutdown()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
