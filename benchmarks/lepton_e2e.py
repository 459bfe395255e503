"""End-to-end GPU benchmark: the lepton backend with our kernels and real INT8/FP8, vs torch.

    python benchmarks/lepton_e2e.py [--models resnet50,detector,bert] [--batches 1,32]
                                    [--variants ...] [--trials 5] [--window-s 2]
                                    [--budget-s 2400] [--no-micro] [--out PATH]
    python benchmarks/lepton_e2e.py --dry-run   # list the cases (no GPU needed)
    python benchmarks/lepton_e2e.py --smoke     # tiny models on the CPU, Triton interpreter:
                                                # checks this script, times nothing real

Models (benchmarks/e2e_models.py, random weights): a ResNet-50 (224x224), a YOLO-class
detector (YOLOv8n-like backbone, FPN neck with depthwise-separable convs, 640x640) and a
BERT-base encoder (12 layers, seq 128), each at batch 1 and 32. Variants, all on the lepton
backend (the same ONNX graph lowered to torch), CUDA graphs on unless said:

    eager-fp32        the original graph as eager torch ops, fp32, no CUDA graphs (reference)
    compile-fp16      the original graph through torch.compile (Inductor), fp16 (reference)
    lepton-fp32       fused-lepton recipe, fp32, torch's kernels
    lepton-fp16       fused-lepton recipe, fp16, torch's kernels (kernels=torch)
    lepton-fp16-auto  fused-lepton recipe, fp16, per-layer dispatch (kernels=auto)
    int8-torch        int8-gpu recipe (every layer, symmetric activations), torch._int_mm
    int8-auto         the same, per-layer dispatch (our W8A8 kernel or torch._int_mm)
    fp8-torch         fp8 recipe (every layer, per-channel weights), torch._scaled_mm
    fp8-auto          the same, per-layer dispatch (our FP8 kernel or torch._scaled_mm)

Measurement: variants of one (model, batch) are loaded once (kernel choice and autotuning
happen at load), warmed up, then measured in interleaved trials (every variant once per
trial, order shuffled): each window runs `session.run` (host copies included, as a user
calls it) back to back for at least --window-s and at least 32 calls, and reads NVML's
energy counter over the window. Reported: p50/p90 of per-call latency over all windows,
mean J/inference with its spread over trials, fidelity to eager-fp32 (cosine, max relative
error), and for dispatched variants the per-layer choices (counts per op and candidate, the
layers' timings). Quantized variants calibrate on 4 random batch-1 samples with onnxruntime
(CPU) and are re-batched.

Micro-benchmarks (--no-micro skips): W8A8, FP8 (ours, and torch._int_mm / _scaled_mm),
INT4 weight-only, our fp16 GEMM and its Hopper TMA variant against fp16 cuBLAS (torch.matmul
without epilogue) at 4096^3 and at the four linear layers of BERT-base (batch 1 and 32),
with `triton.testing.do_bench` medians (L2 flushed between repetitions).

Results: bench/results/lepton-e2e-<gpu>.json (device record, driver, torch/triton versions,
settings, rows, summary). Needs torch with CUDA, triton, onnxruntime, nvidia-ml-py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.lepton_e2e")

MODELS = ("resnet50", "detector", "bert")
BATCHES = (1, 32)
VARIANTS = (
    "eager-fp32",
    "compile-fp16",
    "lepton-fp32",
    "lepton-fp16",
    "lepton-fp16-auto",
    "int8-torch",
    "int8-auto",
    "fp8-torch",
    "fp8-auto",
)
# variant -> (recipe, backend options); "original" is the unmodified graph.
SPECS: dict[str, tuple[str, dict[str, Any]]] = {
    "eager-fp32": ("original", {"dtype": "fp32", "kernels": "torch", "cuda_graphs": False}),
    "compile-fp16": ("original", {"dtype": "fp16", "kernels": "torch", "compile": "inductor"}),
    "lepton-fp32": ("fused-lepton", {"dtype": "fp32", "kernels": "torch"}),
    "lepton-fp16": ("fused-lepton", {"dtype": "fp16", "kernels": "torch"}),
    "lepton-fp16-auto": ("fused-lepton", {"dtype": "fp16", "kernels": "auto"}),
    "int8-torch": ("int8-gpu", {"dtype": "fp16", "kernels": "torch"}),
    "int8-auto": ("int8-gpu", {"dtype": "fp16", "kernels": "auto"}),
    "fp8-torch": ("fp8", {"dtype": "fp16", "kernels": "torch"}),
    "fp8-auto": ("fp8", {"dtype": "fp16", "kernels": "auto"}),
}
FULL = {
    "resnet50": {},
    "detector": {},
    "bert": {},
}
TINY = {  # --smoke: the same architectures, small enough for the interpreter
    "resnet50": {"width": 4, "hw": 16, "classes": 10},
    "detector": {"width": 2, "hw": 32, "classes": 4},
    "bert": {"seq": 16, "hidden": 32, "heads": 2, "ffn": 64, "layers": 1, "vocab": 64},
}
BERT_LINEARS = (
    ("qkv", 768, 2304),
    ("attn_out", 768, 768),
    ("ffn1", 768, 3072),
    ("ffn2", 3072, 768),
)


def _e2e_models() -> Any:
    path = Path(__file__).with_name("e2e_models.py")
    spec = importlib.util.spec_from_file_location("e2e_models", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


# ---------------------------------------------------------------------------------------
# Cases (pure data: --dry-run lists them without torch).


def cases(models: list[str], batches: list[int], variants: list[str]) -> list[dict[str, Any]]:
    return [
        {"id": f"{m}/b{b}/{v}", "model": m, "batch": b, "variant": v}
        for m in models
        for b in batches
        for v in variants
    ]


def micro_cases(smoke: bool) -> list[dict[str, Any]]:
    shapes = [("4096^3", 4096, 4096, 4096)]
    for batch in (1, 32):
        shapes += [(f"bert-base b{batch} {name}", 128 * batch, k, n) for name, k, n in BERT_LINEARS]
    if smoke:
        shapes = [(label, 32, 64, 48) for label, *_ in shapes[:2]]
    return [
        {"id": f"micro/{label}", "label": label, "M": m, "K": k, "N": n}
        for label, m, k, n in shapes
    ]


# ---------------------------------------------------------------------------------------
# Building and loading variants.


class Workbench:
    """Builds each recipe's model once per model (at batch 1) and re-batches it."""

    def __init__(self, smoke: bool, workdir: Path) -> None:
        self.smoke = smoke
        self.e2e = _e2e_models()
        self.workdir = workdir
        self._base: dict[tuple[str, str], Any] = {}

    def model(self, name: str, recipe: str, batch: int) -> Path:
        import onnx

        key = (name, recipe)
        if key not in self._base:
            size = TINY[name] if self.smoke else FULL[name]
            original = self.e2e.MODELS[name](batch=1, **size)
            calibration = [self.e2e.example_feeds(original, seed=s) for s in range(1, 5)]
            if recipe == "original":
                built = original
            else:
                built = self.e2e.recipe_variant(recipe, original, calibration)
            self._base[key] = built
        path = self.workdir / f"{name}-{recipe}-b{batch}.onnx"
        if not path.exists():
            onnx.save(self.e2e.rebatch(self._base[key], batch), str(path))
        return path

    def feeds(self, name: str, batch: int, seed: int = 0) -> dict[str, Any]:
        import onnx

        return self.e2e.example_feeds(onnx.load(str(self.model(name, "original", batch))), seed)


def load_variant(bench: Workbench, case: dict[str, Any], device: str) -> Any:
    from lepton_compile.runtime.lepton import LeptonSession

    recipe, options = SPECS[case["variant"]]
    options = dict(options)
    if bench.smoke and options.get("kernels") == "auto":
        options["kernels"] = "triton"  # the CPU's "auto" is torch's: run ours, interpreted
    path = bench.model(case["model"], recipe, case["batch"])
    return LeptonSession(path, device, options)


# ---------------------------------------------------------------------------------------
# Measuring.


def _fidelity(got: Any, ref: Any) -> dict[str, float]:
    import numpy as np

    g, r = np.asarray(got, np.float64).ravel(), np.asarray(ref, np.float64).ravel()
    denom = float(np.linalg.norm(g) * np.linalg.norm(r)) or 1.0
    return {
        "cosine": float(g @ r / denom),
        "max_rel_err": float(np.abs(g - r).max() / (np.abs(r).max() or 1.0)),
    }


def _window(sess: Any, feeds: dict, meter: Any, window_s: float, min_calls: int) -> dict:
    """Back-to-back session.run calls for at least window_s and min_calls; energy over it."""
    lat: list[float] = []
    token = meter.begin()
    t_end = time.perf_counter() + window_s
    while len(lat) < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        sess.run(feeds)  # returns numpy: the device work is done
        lat.append(time.perf_counter() - t0)
    reading = meter.end(token)
    return {
        "latencies_s": lat,
        "joules": reading.joules,
        "seconds": reading.seconds,
        "method": reading.method,
    }


def measure_group(
    bench: Workbench,
    group: list[dict[str, Any]],
    device: str,
    meter: Any,
    trials: int,
    window_s: float,
    deadline: float,
) -> list[dict[str, Any]]:
    """Load every variant of one (model, batch), then interleave their windows."""
    name, batch = group[0]["model"], group[0]["batch"]
    feeds = bench.feeds(name, batch)
    rows: dict[str, dict[str, Any]] = {}
    sessions: dict[str, Any] = {}
    for case in group:
        row = dict(case)
        rows[case["id"]] = row
        if time.monotonic() > deadline:
            row.update(status="skipped", error="past the time budget")
            continue
        if bench.smoke and SPECS[case["variant"]][1].get("compile"):
            row.update(status="skipped", error="smoke: torch.compile on the CPU takes minutes")
            continue
        t0 = time.monotonic()
        try:
            sess = load_variant(bench, case, device)
            out = sess.run(feeds)[sess.output_names[0]]
            for _ in range(1 if bench.smoke else 10):  # warm-up: allocator, graphs, clocks
                sess.run(feeds)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"[:2000]
            row.update(status="error", error=error, traceback=traceback.format_exc()[-3000:])
            continue
        info = sess.describe()
        row.update(
            status="ok",
            load_s=round(time.monotonic() - t0, 2),
            output=out,
            kernels=info.get("kernels"),
            kernel_summary=info.get("kernel_summary"),
            kernel_choice_counts=info.get("kernel_choice_counts"),
            kernel_layers=info.get("kernel_layers"),
            cuda_graphs=info.get("cuda_graphs"),
            backend={k: v for k, v in info.items() if not k.startswith("kernel_")},
        )
        sessions[case["id"]] = sess
    ref = rows.get(f"{name}/b{batch}/eager-fp32", {}).get("output")
    windows: dict[str, list[dict]] = {cid: [] for cid in sessions}
    order = list(sessions)
    rng = random.Random(0)
    min_calls = 1 if bench.smoke else 32
    for trial in range(trials):
        if time.monotonic() > deadline:
            log.info("%s b%d: budget reached after %d trials", name, batch, trial)
            break
        rng.shuffle(order)
        for cid in order:
            windows[cid].append(_window(sessions[cid], feeds, meter, window_s, min_calls))
    for cid, row in rows.items():
        out = row.pop("output", None)
        if row.get("status") != "ok":
            continue
        if ref is not None and out is not None:
            row["fidelity_vs_eager_fp32"] = _fidelity(out, ref)
        ws = windows.get(cid, [])
        lat = [x for w in ws for x in w["latencies_s"]]
        if not lat:
            row.update(status="error", error="no timing window ran")
            continue
        per_trial = [w["joules"] / len(w["latencies_s"]) for w in ws]
        lat_ms = sorted(x * 1e3 for x in lat)
        row["latency_ms"] = {
            "p50": statistics.median(lat_ms),
            "p90": lat_ms[min(len(lat_ms) - 1, int(0.9 * len(lat_ms)))],
            "mean": statistics.fmean(lat_ms),
            "calls": len(lat_ms),
            "windows": len(ws),
        }
        row["energy_j"] = {
            "per_inference": statistics.fmean(per_trial),
            "per_trial": per_trial,
            "method": ws[0]["method"],
        }
    return list(rows.values())


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per (model, batch): each variant's latency and J/inference against the references."""
    out: dict[str, Any] = {}
    for r in rows:
        if r.get("status") != "ok" or "latency_ms" not in r:
            continue
        key = f"{r['model']}/b{r['batch']}"
        out.setdefault(key, {})[r["variant"]] = {
            "ms_p50": r["latency_ms"]["p50"],
            "j_per_inf": r["energy_j"]["per_inference"],
            "kernel_summary": r.get("kernel_summary"),
        }
    for _key, variants in out.items():
        for ref in ("eager-fp32", "compile-fp16", "lepton-fp16"):
            base = variants.get(ref)
            if not base:
                continue
            for v in variants.values():
                if base["j_per_inf"] and v["j_per_inf"]:
                    v[f"energy_x_vs_{ref}"] = base["j_per_inf"] / v["j_per_inf"]
                if base["ms_p50"] and v["ms_p50"]:
                    v[f"speed_x_vs_{ref}"] = base["ms_p50"] / v["ms_p50"]
    return out


# ---------------------------------------------------------------------------------------
# Micro-benchmarks.


def run_micro(case: dict[str, Any], device: str, smoke: bool) -> dict[str, Any]:
    import torch

    from lepton_compile.kernels import gemm, gemm_int4, gemm_scaled

    m, k, n = case["M"], case["K"], case["N"]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).half().to(device)
    w = (torch.randn(n, k, generator=g) / math.sqrt(k)).half().to(device)
    aq, sa = gemm_scaled.quantize_rowwise(a.float().cpu(), torch.int8)
    wq, sw = gemm_scaled.quantize_rowwise(w.float().cpu(), torch.int8)
    af, saf = gemm_scaled.quantize_rowwise(a.float().cpu(), gemm_scaled.FP8_DTYPE)
    wf, swf = gemm_scaled.quantize_rowwise(w.float().cpu(), gemm_scaled.FP8_DTYPE)
    aq, sa, wq, sw = (t.to(device) for t in (aq, sa, wq, sw))
    af, saf, wf, swf = (t.to(device) for t in (af, saf, wf, swf))
    p4, s4, z4 = gemm_int4.quantize_int4(w.float().cpu(), 32, symmetric=True)
    p4, s4 = p4.to(device), s4.half().to(device)
    one = torch.ones((), device=device)
    calls = {
        "fp16-cublas": lambda: a @ w.t(),
        "fp16-ours": lambda: gemm.gemm(a, w.t()),
        "w8a8": lambda: gemm_scaled.w8a8_gemm(aq, wq.t(), sa, sw),
        "int_mm": lambda: torch._int_mm(aq, wq.t()),
        "fp8": lambda: gemm_scaled.fp8_gemm(af, wf.t(), saf, swf),
        "scaled_mm": lambda: torch._scaled_mm(
            af, wf.t(), scale_a=one, scale_b=one, out_dtype=torch.float16
        ),
        "int4": lambda: gemm_int4.int4_gemm(a, p4, s4),
    }
    if device == "cuda" and torch.cuda.get_device_capability() >= (9, 0):
        from lepton_compile.kernels import gemm_tma

        calls["fp16-tma"] = lambda: gemm_tma.gemm_tma(a, w.t())
    times: dict[str, Any] = {}
    for kind, fn in calls.items():
        try:
            fn()  # compile and autotune outside the timing
            if smoke:
                t0 = time.perf_counter()
                fn()
                ms = (time.perf_counter() - t0) * 1e3
            else:
                import triton.testing

                torch.cuda.synchronize()
                ms = float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
            times[kind] = {"ms_p50": ms, "tflops": 2 * m * n * k / ms / 1e9}
        except Exception as e:
            times[kind] = {"error": f"{type(e).__name__}: {e}"[:500]}
    base = times.get("fp16-cublas", {}).get("ms_p50")
    ratios = {k: base / t["ms_p50"] for k, t in times.items() if base and t.get("ms_p50")}
    return {**case, "status": "ok", "times": times, "speedup_vs_fp16_cublas": ratios}


# ---------------------------------------------------------------------------------------
# Device record, output.


def _git_commit() -> str | None:
    try:
        cmd = ["git", "rev-parse", "--short", "HEAD"]
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(smoke: bool) -> dict[str, Any]:
    import torch
    import triton

    info: dict[str, Any] = {"torch": torch.__version__, "triton": triton.__version__}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if smoke:
        info.update(name="cpu (Triton interpreter smoke run)", smoke=True)
        return info
    props = torch.cuda.get_device_properties(0)
    info.update(
        name=torch.cuda.get_device_name(0),
        capability=".".join(map(str, torch.cuda.get_device_capability(0))),
        sm_count=props.multi_processor_count,
        memory_bytes=props.total_memory,
        cuda_runtime=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
    )
    try:
        from lepton_compile.bench.device import device_record

        info["record"] = device_record()
        gpus = info["record"].get("gpus") or []
        info["driver"] = gpus[0].get("driver") if gpus else None
    except Exception as e:  # the record is context; its absence must not stop the suite
        info["record_error"] = f"{type(e).__name__}: {e}"
    return info


def print_summary(summary: dict[str, Any], micro: list[dict[str, Any]]) -> None:
    for key, variants in summary.items():
        print(f"{key}:")
        for v, s in variants.items():
            extra = f"  [{s['kernel_summary']}]" if s.get("kernel_summary") else ""
            vs_eager = s.get("energy_x_vs_eager-fp32", float("nan"))
            print(
                f"  {v:18s} {s['ms_p50']:9.3f} ms  {s['j_per_inf'] * 1e3:9.3f} mJ/inf"
                f"  {vs_eager:.2f}x less energy than eager-fp32{extra}"
            )
    for r in micro:
        ratios = " ".join(f"{k}={v:.2f}" for k, v in r.get("speedup_vs_fp16_cublas", {}).items())
        print(f"{r['id']:40s} vs fp16 cuBLAS: {ratios}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=2.0, help="per window (NVML: >= 1 s)")
    parser.add_argument("--budget-s", type=float, default=2400.0)
    parser.add_argument("--no-micro", action="store_true", help="skip the GEMM micro-benchmarks")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/...)")
    parser.add_argument("--dry-run", action="store_true", help="list the cases and exit")
    parser.add_argument("--smoke", action="store_true", help="tiny models on CPU (interpreter)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    models = [m for m in args.models.split(",") if m]
    variants = [v for v in args.variants.split(",") if v]
    bad = sorted(set(models) - set(MODELS)) + sorted(set(variants) - set(VARIANTS))
    if bad:
        parser.error(f"unknown models or variants {bad}")
    try:
        batches = [int(b) for b in args.batches.split(",") if b]
    except ValueError:
        parser.error(f"--batches takes integers, got {args.batches!r}")
    all_cases = cases(models, batches, variants)
    micro = [] if args.no_micro else micro_cases(args.smoke)
    if args.dry_run:
        for c in all_cases + micro:
            print(c["id"])
        print(f"{len(all_cases)} model cases, {len(micro)} micro cases")
        return 0

    start = time.monotonic()
    deadline = start + args.budget_s
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before lepton_compile.kernels is imported
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import torch

    device = "cpu" if args.smoke else "cuda"
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA device: this suite runs on a GPU (or --smoke / --dry-run)", file=sys.stderr)
        return 2
    from lepton_compile.bench.energy import get_meter

    info = device_info(args.smoke)
    meter = get_meter("auto", device)
    log.info("device: %s, torch %s, triton %s", info["name"], info["torch"], info["triton"])
    log.info("energy meter: %s", meter.name)
    window_s = 0.0 if args.smoke else args.window_s
    trials = 1 if args.smoke else args.trials
    if args.smoke:  # the interpreter: batch 32 of even tiny models takes minutes
        batches = sorted({min(b, 2) for b in batches})
        all_cases = cases(models, batches, variants)

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="lepton-e2e-") as tmp:
        bench = Workbench(args.smoke, Path(tmp))
        for name in models:
            for batch in batches:
                group = [c for c in all_cases if c["model"] == name and c["batch"] == batch]
                log.info("%s batch %d: %d variants", name, batch, len(group))
                try:
                    got = measure_group(bench, group, device, meter, trials, window_s, deadline)
                except Exception as e:
                    error = f"{type(e).__name__}: {e}"[:2000]
                    trace = traceback.format_exc()[-3000:]
                    got = [
                        {**c, "status": "error", "error": error, "traceback": trace} for c in group
                    ]
                rows += got
                for r in got:
                    lat = r.get("latency_ms", {}).get("p50")
                    what = f"{lat:.3f} ms" if lat else r.get("error", "")[:120]
                    log.info("  %-18s %s %s", r["variant"], r["status"], what)
                if not args.smoke:
                    torch.cuda.empty_cache()
    micro_rows = []
    for case in micro:
        if time.monotonic() > deadline:
            micro_rows.append({**case, "status": "skipped", "error": "past the time budget"})
            continue
        try:
            micro_rows.append(run_micro(case, device, args.smoke))
        except Exception as e:
            micro_rows.append({**case, "status": "error", "error": f"{type(e).__name__}: {e}"})
    summary = summarize(rows)
    result = {
        "suite": "lepton-e2e",
        "schema": "lepton-compile/bench-lepton-e2e/v1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "benchmarks/lepton_e2e.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "git_commit": _git_commit(),
        "device": info,
        "meter": meter.describe(),
        "settings": {
            "trials": trials,
            "window_s": window_s,
            "min_calls_per_window": 1 if args.smoke else 32,
            "latency": "wall clock of session.run (host copies included), per call",
            "energy": "meter over each window / calls; mean over trials",
            "interleaving": "every variant once per trial, order shuffled (seeded)",
            "variants": {v: {"recipe": SPECS[v][0], "options": SPECS[v][1]} for v in variants},
            "smoke": args.smoke,
            "micro_timer": "wall clock, one call" if args.smoke else "triton.testing.do_bench",
        },
        "rows": rows,
        "summary": summary,
        "micro": micro_rows,
        "wall_s": round(time.monotonic() - start, 1),
    }
    from suite import save_device_results  # beside this script

    out = save_device_results(result, "lepton-e2e", info["name"], args.out, args.smoke)
    print_summary(summary, micro_rows)
    print(f"wrote {out} ({result['wall_s']} s)")
    ok = all(r["status"] in ("ok", "skipped") for r in rows + micro_rows)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
