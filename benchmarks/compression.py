"""Compression benchmark: every compression recipe on real public models, beside ORT's default.

    python benchmarks/compression.py [MODEL ...] [--recipes A,B] [--quick]
                                     [--out bench/results/compression-cpu.json]

For each model (default: a CNN classifier, two detectors, two OCR recognizers and a transformer
from the zoo) one `lepton_compile.compile` run builds, verifies and measures, in the same
interleaved measurement:

  - the FP32 original (the reference for every ratio),
  - `ort-default-int8`: onnxruntime's `quantize_static` with its defaults (QDQ, per-tensor
    weights, MinMax calibration, INT8 activations) on the original graph — what a user of
    onnxruntime's quantization tool gets,
  - `fused`: our graph passes alone, the starting point of every compression recipe (so a
    speed-up that fusion alone gives is not credited to compression),
  - our compression recipes (plain and accuracy-aware INT8, dynamic INT8, FP16, FP8, INT4
    weight-only, unstructured / 2:4 / channel pruning).

Per variant it records fidelity against the original on held-out generated inputs (cosine,
SQNR, top-1 agreement for score outputs), size, latency as a ratio to the FP32 original in the
same run, and for accuracy-aware recipes how many layers the search compressed. The target:
on every model at least one compressed variant passes the default accuracy constraint
(drop <= 1%) where onnxruntime's default does not. Inputs are generated (no labelled data
ships with these models), so fidelity is agreement with the FP32 model, not task accuracy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from suite import RESULTS, check_models, run_models, write_results

from lepton_compile import compile as lc_compile
from lepton_compile.bench.zoo import MODELS, fetch
from lepton_compile.recipes import Recipe

DEFAULT_MODELS = [
    "ppocr-cls",  # CNN classifier
    "picodet-layout",  # detector
    "ppocrv4-det",  # text detector (segmentation head)
    "ppocrv4-rec",  # OCR recognizer
    "ddddocr-ocr-beta",  # OCR recognizer (CRNN with an LSTM), FP32
    "minilm-l6",  # transformer encoder
    "ddddocr-ocr",  # the same CRNN shipped INT8-quantized already: quantizing is skipped
]
DEFAULT_RECIPES = [
    "fused",  # the graph passes alone: what the compression recipes start from
    "fp16",
    "int8-qdq",
    "int8-entropy",
    "int8-percentile",
    "int8-mixed",
    "int8-dynamic",
    "fp8",
    "int4-weight",
    "prune-50",
    "prune-2of4",
    "prune-channels",
]
ORT_DEFAULT = Recipe(
    "ort-default-int8",
    "onnxruntime quantize_static with its defaults: QDQ, per-tensor weights, MinMax, on the "
    "original graph",
    precision="int8",
    precision_pass="int8-static",
    options={"per_channel": False, "calibrate_method": "minmax"},
    needs_calibration=True,
    group="quantize",
)
MAX_DROP = 0.01

log = logging.getLogger("bench.compression")


def _search(v: dict) -> dict | None:
    for step in (v.get("build") or {}).get("steps") or []:
        if "layers_total" in step:
            keep = ("layers_total", "layers_compressed", "drop_all_compressed", "drop_final")
            out = {k: step.get(k) for k in keep}
            out["search_s"] = step.get("seconds")
            return out
    return None


def run_one(name: str, recipes: list[str], quick: bool, budget_s: float) -> dict:
    spec = MODELS[name]
    path = fetch(name)
    t0 = time.perf_counter()
    res = lc_compile(
        path,
        input_shapes=spec.input_shapes,
        recipes=["original", ORT_DEFAULT, *recipes],
        backends=("ort",),
        quick=quick,
        cache=False,
        max_accuracy_drop=MAX_DROP,
        search_budget_s=budget_s,
    )
    wall = time.perf_counter() - t0
    rep = res.report
    base = next(v for v in rep["variants"] if v["id"] == res.baseline.id)
    base_ms = (base.get("latency_ms") or {}).get("mean")
    rows = []
    for v in rep["variants"]:
        acc = v.get("accuracy") or {}
        lat = (v.get("latency_ms") or {}).get("mean")
        outs = acc.get("outputs") or {}
        top1 = [o["top1_agreement"] for o in outs.values() if "top1_agreement" in o]
        rows.append(
            {
                "recipe": v["recipe"]["name"],
                "status": v["status"],
                "reason": v.get("reason"),
                "passes_1pct": v["status"] == "ok",
                "drop": acc.get("drop"),
                "min_cosine": acc.get("min_cosine"),
                "min_sqnr_db": acc.get("min_sqnr_db"),
                "top1_agreement": min(top1) if top1 else None,
                "size_bytes": v.get("size_bytes"),
                "size_ratio": round(v["size_bytes"] / base["size_bytes"], 4)
                if v.get("size_bytes")
                else None,
                "latency_ms": lat,
                "latency_ci95": (v.get("latency_ms") or {}).get("ci95"),
                "speed_vs_fp32": round(base_ms / lat, 3) if lat and base_ms else None,
                "search": _search(v),
                "build_s": (v.get("build") or {}).get("seconds"),
            }
        )
    by = {r["recipe"]: r for r in rows}
    ort_ok = by["ort-default-int8"]["passes_1pct"]
    ours_ok = [
        r["recipe"]
        for r in rows
        if r["recipe"] not in ("original", "fused", "ort-default-int8") and r["passes_1pct"]
    ]
    smaller_ok = [
        r["recipe"] for r in rows if r["recipe"] in ours_ok and (r["size_ratio"] or 1) < 0.95
    ]
    out = {
        "model": name,
        "kind": spec.kind,
        "input_shapes": spec.input_shapes,
        "wall_s": round(wall, 1),
        "ort_default_status": by["ort-default-int8"]["status"],
        "ort_default_passes": ort_ok,
        "ours_passing": ours_ok,
        "ours_passing_and_smaller": smaller_ok,
        "target_met": bool(smaller_ok),
        "variants": rows,
    }
    log.info(
        "%s: %.0f s; ORT default %s; ours passing and smaller: %s",
        name,
        wall,
        "passes"
        if ort_ok
        else f"{by['ort-default-int8']['status']} ({by['ort-default-int8']['reason']})",
        ", ".join(smaller_ok) or "none",
    )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--recipes", default=",".join(DEFAULT_RECIPES))
    ap.add_argument("--quick", action="store_true", help="short measurement windows")
    ap.add_argument("--search-budget-s", type=float, default=60.0)
    ap.add_argument("--out", type=Path, default=RESULTS / "compression-cpu.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    check_models(ap, args.models)
    recipes = [r for r in args.recipes.split(",") if r]
    rows = run_models(
        args.models,
        lambda name: run_one(name, recipes, args.quick, args.search_budget_s),
        lambda rows: _write(args, rows, recipes, argv),
    )
    print(f"wrote {args.out}")
    for r in rows:
        if "error" in r:
            print(f"{r['model']:16s} error: {r['error']}")
            continue
        print(
            f"{r['model']:16s} ORT default {'ok  ' if r['ort_default_passes'] else 'FAIL'}  "
            f"ours ok+smaller: {', '.join(r['ours_passing_and_smaller']) or '-'}"
        )
    return 0


def _write(args: argparse.Namespace, rows: list[dict], recipes: list[str], argv) -> None:
    write_results(
        args.out,
        "compression",
        argv,
        rows,
        protocol="quick" if args.quick else "default",
        max_accuracy_drop=MAX_DROP,
        recipes=["ort-default-int8", *recipes],
        inputs="generated (seeded); fidelity is agreement with the FP32 original",
        targets={
            "per_model": "a compressed variant (size < 95% of FP32) passes drop <= 1% "
            "where onnxruntime's default quantize_static does not",
            "speed": "speed_vs_fp32 is measured, not assumed (interleaved, same run)",
        },
    )


if __name__ == "__main__":
    sys.exit(main())
