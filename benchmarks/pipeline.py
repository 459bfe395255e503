"""Pipeline benchmark: `lepton-compile MODEL` on real public models, cold, as a user runs it.

    python benchmarks/pipeline.py [MODEL ...] [--quick] [--out bench/results/pipeline-cpu.json]

For each model it runs the command line with default flags and an empty result cache,
records the wall time, the pick and its ratio to the original, and then re-measures OUTSIDE
the tool: every verified variant against the original, two sessions loaded afresh, windows
interleaved in shuffled order, judged by the per-trial ratio of window medians (Student t on
the log-ratios). That independent A/B is what the targets are checked on:

- cold wall time <= 180 s for models up to ~10 MB, <= 300 s up to ~100 MB;
- the pick's A/B ratio never below 0.97x (speed of pick / speed of original);
- wherever some verified variant is >= 1.2x faster in the A/B, the pick is >= 1.15x.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from suite import RESULTS, check_models, cold_run, run_models, write_results

from lepton_compile.bench.stats import paired_ratio
from lepton_compile.bench.zoo import MODELS

DEFAULT_MODELS = [
    "resnet50",
    "ppocr-cls",
    "ppocrv4-det",
    "picodet-layout",
    "ppocrv4-rec",
    "ddddocr-ocr-beta",
    "minilm-l6",
]

log = logging.getLogger("bench.pipeline")


def _session(path: Path, backend: str) -> Any:
    if backend == "ort":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return lambda feed: sess.run(None, feed)
    from lepton_compile import load

    s = load(path, backend=backend)
    return s.run


def ab(a: Any, b: Any, feed: dict, trials: int, window_s: float, seed: int = 0) -> dict:
    """Interleaved A/B of two callables: per trial one window each, order shuffled; the
    ratio of window medians (b over a) per trial, t interval on the logs."""
    rng = random.Random(seed)
    for fn in (a, b):  # warm-up
        for _ in range(3):
            fn(feed)
    med: dict[str, list[float]] = {"a": [], "b": []}
    for _ in range(trials):
        order = [("a", a), ("b", b)]
        rng.shuffle(order)
        for key, fn in order:
            lat = []
            start = time.perf_counter()
            while len(lat) < 3 or time.perf_counter() - start < window_s:
                t0 = time.perf_counter()
                fn(feed)
                lat.append(time.perf_counter() - t0)
            med[key].append(float(np.median(lat)) * 1e3)
    r = paired_ratio(med["b"], med["a"])
    return {
        "speedup": round(1.0 / r.ratio, 4),
        "speedup_ci95": [round(1.0 / r.high, 4), round(1.0 / r.low, 4)],
        "trials": trials,
        "window_s": window_s,
        "a_median_ms": round(float(np.median(med["a"])), 4),
        "b_median_ms": round(float(np.median(med["b"])), 4),
        "method": "interleaved windows, shuffled; t interval on per-trial log-ratios of medians",
    }


def run_one(name: str, quick: bool, work: Path) -> dict:
    spec = MODELS[name]
    run = cold_run(name, ["--quick"] if quick else [], work)
    path, out, rep, wall = run.path, run.out, run.report, run.wall_s
    by_id = {v["id"]: v for v in rep["variants"]}
    base = by_id[rep["baseline"]]
    best = rep["best"]

    from lepton_compile.inputs import prepare
    from lepton_compile.intake import load_model

    feed = prepare(load_model(path, spec.input_shapes), None, 0, 1, seed=7).eval[0]
    orig = _session(path, "ort")
    trials, window = (5, 0.1) if quick else (12, 0.3)
    checks = {}
    for v in rep["variants"]:
        if v["status"] not in ("ok", "dropped") or v["id"] == base["id"] or not v["artifact"]:
            continue
        if v.get("device") != "cpu":
            continue
        try:
            fn = _session(out / v["artifact"], v["backend"])
            checks[v["id"]] = ab(orig, fn, feed, trials, window)
        except Exception as e:  # a variant the A/B cannot load is reported, not fatal
            checks[v["id"]] = {"error": f"{type(e).__name__}: {e}"}
    pick_ab = checks.get(best["id"], {"speedup": 1.0, "note": "the original was picked"})
    fastest = max((c["speedup"] for c in checks.values() if "speedup" in c), default=1.0)
    ratio = (best.get("ratio_to_original") or {}).get("latency") or {}
    size = path.stat().st_size
    limit = 180 if size <= 12e6 else 300
    row = {
        "model": name,
        "kind": spec.kind,
        "size_bytes": size,
        "input_shapes": spec.input_shapes,
        "command": run.shown_command,
        "exit_code": run.exit_code,
        "wall_s": round(wall, 1),
        "wall_target_s": limit,
        "pick": best["id"],
        "pick_reason": best["reason"],
        "pick_ratio_to_original_latency": ratio,
        "decision": rep.get("decision"),
        "statuses": {v["id"]: v["status"] for v in rep["variants"]},
        "reasons": {v["id"]: v.get("reason") for v in rep["variants"] if v.get("reason")},
        "independent_ab": checks,
        "pick_ab_speedup": pick_ab.get("speedup"),
        "fastest_verified_ab_speedup": fastest,
        "targets": {
            "wall": wall <= limit,
            "pick_not_slower": pick_ab.get("speedup", 1.0) >= 0.97,
            "pick_takes_the_gain": fastest < 1.2 or pick_ab.get("speedup", 1.0) >= 1.15,
        },
    }
    log.info(
        "%s: %.0f s, pick %s (A/B %.2fx; fastest verified %.2fx)",
        name,
        wall,
        best["id"],
        row["pick_ab_speedup"] or 1.0,
        fastest,
    )
    return row


TARGETS = {
    "wall_s": "<= 180 s up to ~10 MB, <= 300 s up to ~100 MB (cold)",
    "pick_ab_speedup": ">= 0.97 on every model (independent A/B)",
    "pick_takes_the_gain": "where a verified variant is >= 1.2x in the A/B, the pick is >= 1.15x",
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--quick", action="store_true", help="short windows (smoke run)")
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline-cpu.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_models(ap, args.models)
    protocol = "quick" if args.quick else "default flags, cold result cache"
    with tempfile.TemporaryDirectory(prefix="lepton-bench-") as tmp:
        run_models(
            args.models,
            lambda name: run_one(name, args.quick, Path(tmp)),
            lambda rows: write_results(
                args.out, "pipeline", argv, rows, protocol=protocol, targets=TARGETS
            ),
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
