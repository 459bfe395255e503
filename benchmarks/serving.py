"""Serving-profile benchmark: `lepton-compile MODEL --batch-sizes ...` on real public models.

    python benchmarks/serving.py [MODEL ...] [--batch-sizes 1,4,16] [--max-latency-ms X]
                                 [--out bench/results/serving-cpu.json]

For each model (default: a CNN, a detector and a transformer whose batch is dynamic) it runs
the command line with default flags and an empty result cache, and records per variant and
batch size the joules per inference (with the meter method: estimated where no meter can
be read), the throughput, p50/p99 latency of a batch call, the recommendation, the whole
run's wall time and the seconds the profile added to it.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from suite import RESULTS, check_models, cold_run, run_models, write_results

from lepton_compile.bench.zoo import MODELS

DEFAULT_MODELS = ["ppocr-cls", "ppocrv4-det", "minilm-l6-dyn"]

log = logging.getLogger("bench.serving")


def _points(variant: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for b, p in (variant.get("serving") or {}).items():
        per = p.get("energy_j_per_inference") or {}
        lat = p.get("latency_ms") or {}
        out[b] = {
            "status": p["status"],
            "reason": p.get("reason"),
            "j_per_inference": per.get("mean"),
            "j_per_inference_ci95": per.get("ci95"),
            "energy_method": per.get("method"),
            "throughput_per_s": p.get("throughput_per_s"),
            "p50_ms": lat.get("p50"),
            "p99_ms": lat.get("p99"),
            "trials": len(per.get("per_trial") or []),
            "pareto": p.get("pareto"),
            "batch_check": p.get("batch_check"),
        }
    return out


def run_one(name: str, sizes: str, limit: float | None, work: Path) -> dict[str, Any]:
    flags = ["--batch-sizes", sizes]
    if limit is not None:
        flags += ["--max-latency-ms", f"{limit:g}"]
    run = cold_run(name, flags, work)
    rep, wall = run.report, run.wall_s
    serving = rep.get("serving") or {}
    row = {
        "model": name,
        "kind": MODELS[name].kind,
        "size_bytes": run.path.stat().st_size,
        "command": run.shown_command,
        "exit_code": run.exit_code,
        "wall_s": round(wall, 1),
        "profile_wall_s": serving.get("wall_s"),
        "batch_sizes": serving.get("batch_sizes"),
        "pinned": serving.get("pinned"),
        "recommendation": serving.get("recommendation"),
        "pick": rep["best"]["id"],
        "pick_reason": rep["best"]["reason"],
        "variants": {v["id"]: _points(v) for v in rep["variants"] if v.get("serving")},
        "notes": serving.get("notes"),
    }
    rec = row["recommendation"] or {}
    log.info(
        "%s: %.0f s (profile %.0f s); %s",
        name,
        wall,
        row["profile_wall_s"] or 0.0,
        rec.get("text", "no recommendation"),
    )
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--max-latency-ms", type=float, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "serving-cpu.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_models(ap, args.models)
    protocol = "default flags, cold result cache, --batch-sizes " + args.batch_sizes
    with tempfile.TemporaryDirectory(prefix="lepton-serving-") as tmp:
        run_models(
            args.models,
            lambda name: run_one(name, args.batch_sizes, args.max_latency_ms, Path(tmp)),
            lambda rows: write_results(args.out, "serving", argv, rows, protocol=protocol),
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
