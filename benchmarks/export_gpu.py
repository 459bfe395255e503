"""Exported packages on a GPU: lepton-run against the Python session, latency and J/inference.

    python benchmarks/export_gpu.py [--models resnet50,bert] [--batch 1] [--quick] [--out PATH]
    python benchmarks/export_gpu.py --smoke    # tiny models on the CPU in fp32: checks this
                                               # script end to end, measures nothing real

For each model (benchmarks/e2e_models.py, random weights: a ResNet-50 at 224x224 and a
BERT-base encoder at seq 128) the fused-lepton recipe's graph is loaded on the lepton
backend in fp16 with per-layer kernel dispatch (kernels=auto: our Triton kernels where they
win, as `torch.library.triton_op`s), exported as `lepton-compile export` does
(torch.export, then AOTInductor into a .pt2 package with the kernels compiled in), checked
against the session on the same inputs (fp16 tolerance), and measured twice in one run:

    python   lepton-compile's LeptonSession.run (numpy in and out, CUDA graphs on), by
             lepton_compile.bench.protocol with the NVML meter (bench/energy.py)
    runner   lepton-run --bench on the package (C++, no Python), by the same window rules
             with NVML read through libnvidia-ml loaded at run time

Both report p50/p90/p99 latency and J/inference (gross, and above idle where measured); the
row has the runner/python ratios. lepton-run is built once with CMake against this torch.
Results: bench/results/export-gpu-<gpu>.json (a --smoke run writes to the temp folder).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from suite import save_device_results

from lepton_compile.bench.device import device_record

log = logging.getLogger("bench.export_gpu")

MODELS = ("resnet50", "bert")
TINY = {  # --smoke: the same architectures at a size a CPU compiles in seconds
    "resnet50": {"width": 4, "hw": 16, "classes": 10},
    "bert": {"seq": 16, "hidden": 32, "heads": 2, "ffn": 64, "layers": 1, "vocab": 64},
}


def _e2e_models() -> Any:
    import e2e_models

    return e2e_models


def measure_python(session: Any, feed: dict[str, np.ndarray], device: str, quick: bool) -> dict:
    """The session's latency and energy by the protocol every lepton-compile measurement uses."""
    from lepton_compile.bench.energy import get_meter
    from lepton_compile.bench.protocol import Protocol, measure_idle, run_warmup, run_window

    p = Protocol.quick() if quick else Protocol()
    meter = get_meter("auto", device)
    try:

        def call() -> None:
            session.run(feed)

        run_warmup(call, p)
        idle_w = measure_idle(meter, p)
        window = p.window_s(meter)
        latencies: list[float] = []
        joules, runs, seconds = 0.0, 0, 0.0
        for _ in range(p.trials):
            lat, elapsed, reading, _err = run_window(call, meter, window, p)
            latencies += lat
            if reading is not None:
                joules += reading.joules
                runs += len(lat)
                seconds += elapsed
        energy = None
        if runs:
            per = joules / runs
            above = per - idle_w * seconds / runs if idle_w is not None else None
            energy = {"per_inference": per, "above_idle": above, "method": meter.name}
        a = np.asarray(latencies)
        return {
            "latency_ms": {q: float(np.percentile(a, int(q[1:]))) for q in ("p50", "p90", "p99")}
            | {"mean": float(a.mean())},
            "runs": len(latencies),
            "trials": p.trials,
            "energy_j": energy,
        }
    finally:
        meter.close()


def run_model(name: str, args: argparse.Namespace, runner: Path, work: Path) -> dict[str, Any]:
    from lepton_compile import rawtensors
    from lepton_compile.export import compare, lower_variant, package, run_runner

    e2e = _e2e_models()
    size = TINY[name] if args.smoke else {}
    model = e2e.MODELS[name](batch=args.batch, **size)
    feed = e2e.example_feeds(model)
    fused = work / f"{name}.fused-lepton.onnx"
    onnx.save(e2e.recipe_variant("fused-lepton", model), fused)
    device = "cpu" if args.smoke else "cuda"
    options = {"kernels": "torch"} if args.smoke else {"dtype": "fp16", "kernels": "auto"}
    lowered = lower_variant(fused, device, options, feed)
    pt2 = work / f"{name}.pt2"
    start = time.perf_counter()
    package(lowered, feed, pt2, f"{name}-fused-lepton-fp16")
    export_s = time.perf_counter() - start
    inputs = rawtensors.write(work / f"{name}.lt", feed)
    saved = work / f"{name}.out.lt"
    run_runner(runner, pt2, inputs, "--save-outputs", str(saved))
    expected = lowered.session.run(feed)
    parity = compare([expected], [rawtensors.read(saved)], None if args.smoke else "float16")
    bench = run_runner(runner, pt2, inputs, "--bench", *(["--quick"] if args.quick else []))
    native = bench["bench"]
    python = measure_python(lowered.session, feed, device, args.quick)

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 4) if a and b and math.isfinite(a) and math.isfinite(b) else None

    n_e, p_e = native.get("energy_j") or {}, python.get("energy_j") or {}
    return {
        "model": name,
        "batch": args.batch,
        "options": options,
        "kernels": lowered.session.kernel_summary(),
        "export_s": round(export_s, 2),
        "package_bytes": pt2.stat().st_size,
        "parity": parity,
        "runner": native,
        "python_session": python,
        "runner_over_python": {
            "p50": ratio(native["latency_ms"]["p50"], python["latency_ms"]["p50"]),
            "energy_per_inference": ratio(n_e.get("per_inference"), p_e.get("per_inference")),
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="short windows (indicative figures)")
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU, fp32")
    ap.add_argument("--build-dir", default=None, help="CMake build tree of lepton-run")
    ap.add_argument("--out", default=None, help="results file (default: bench/results/...)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    names = [m for m in args.models.split(",") if m]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
    import torch

    from lepton_compile.native_build import build_runner

    if not args.smoke and not torch.cuda.is_available():
        ap.error("no CUDA device: run with --smoke to check the script on the CPU")
    args.quick = args.quick or args.smoke
    built = build_runner(args.build_dir)
    log.info("lepton-run: %s (%.1f s)", built.path, built.seconds)
    device_name = "cpu" if args.smoke else torch.cuda.get_device_name(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="export-gpu-") as tmp:
        for name in names:
            try:
                rows.append(run_model(name, args, built.path, Path(tmp)))
            except Exception as e:  # one model's failure is a row of its own
                log.exception("%s failed", name)
                rows.append({"model": name, "error": f"{type(e).__name__}: {e}"})
            log.info("%s: %s", name, rows[-1].get("runner_over_python") or rows[-1].get("error"))
    result: dict[str, Any] = {
        "suite": "export_gpu",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/export_gpu.py " + " ".join(argv or sys.argv[1:]),
        "device": device_record(),
        "smoke": args.smoke,
        "runner_build": built.to_dict(),
        "results": rows,
    }
    path = save_device_results(result, "export-gpu", device_name, args.out, args.smoke)
    log.info("wrote %s", path)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
