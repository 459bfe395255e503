"""Kernel benchmark: lepton_compile.kernels against cuBLAS / cuDNN through torch, on one GPU.

    python benchmarks/kernels.py [--only launch,gemm,int8,fp8,conv,depthwise] [--quick]
                                 [--budget-s 420] [--compile-jobs N] [--out PATH]
    python benchmarks/kernels.py --dry-run     # list the cases (no GPU needed)
    python benchmarks/kernels.py --smoke       # tiny shapes in the Triton interpreter (CPU):
                                               # checks this script, times nothing real

Comparisons (fp16 unless said otherwise; every timing but `launch`'s is
`triton.testing.do_bench` with the same warmup/rep and quantiles on both sides, which flushes
L2 before each repetition):

    launch     host overhead per call: wall clock of 1000 back-to-back calls and one
               torch.cuda.synchronize, divided by 1000, for a 64x64x64 GEMM, a tiny conv and
               a tiny depthwise conv (ours vs torch); the GPU work is a few microseconds, so
               this is the time the host needs to launch a call (quick: run first)
    gemm       our GEMM + fused epilogue  vs  torch.matmul + the same epilogue as separate
               torch ops, at 4096^3 (plain and bias+GELU+residual) and at the four linear
               layers of a BERT-base encoder layer (seq 128, batch 1 and 32) with the
               epilogue each has in a fused graph (QKV: bias; attention out and FFN2: bias +
               residual; FFN1: bias + GELU); also cuBLAS without the epilogue
    int8       W8A8 GEMM (per-token x per-channel scales, same epilogue) vs the fp16 cuBLAS
               row above; torch._int_mm (int8 cuBLAS, int32 out, no epilogue) for reference
    fp8        FP8 e4m3 GEMM (fp32 accumulation promoted every K-block, same epilogue) vs
               the fp16 cuBLAS row; torch._scaled_mm (cuBLASLt fp8) for reference
    conv       our implicit-GEMM conv + bias + ReLU vs cuDNN conv(+bias) then ReLU, both
               channels-last, cudnn.benchmark on, on every distinct conv of ResNet-50
               (224x224 input) at batch 1 and 32; network totals weight each shape by how
               often it occurs
    depthwise  our depthwise kernel vs cuDNN on MobileNetV2-like depthwise convs (extra)

Activations are quantized before timing (static inputs): a per-token dynamic quantization
kernel in front of W8A8/FP8 is not in these numbers. Ratios are torch time / our time
(> 1: ours is faster). Autotuning (first call of each shape) happens before timing; a
warm-up phase compiles every case's kernels in parallel processes first (Triton's disk
cache), so that the run fits the time budget; cases past the budget are listed as skipped.
Results: bench/results/kernels-<gpu>.json with the device, driver, torch/triton versions.
Runs with torch 2.11 + triton 3.6 (the GPU image) and newer.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("bench.kernels")

WARMUP_MS = 25
REP_MS = 100
QUANTILES = (0.5, 0.2, 0.8)
FAMILIES = ("launch", "gemm", "conv", "int8", "fp8", "depthwise")  # run order: most wanted first
LAUNCH_CALLS = 1000  # back-to-back calls per launch-overhead timing
LAUNCH_REPEATS = 5

BERT_SEQ = 128
BERT_HIDDEN = 768
BERT_FFN = 3072
# (name, K, N, epilogue): the linear layers of one BERT-base encoder layer
BERT_LINEARS = (
    ("qkv", BERT_HIDDEN, 3 * BERT_HIDDEN, "bias"),
    ("attn_out", BERT_HIDDEN, BERT_HIDDEN, "bias+res"),
    ("ffn1", BERT_HIDDEN, BERT_FFN, "bias+gelu"),
    ("ffn2", BERT_FFN, BERT_HIDDEN, "bias+res"),
)
EPILOGUES: dict[str, dict[str, Any]] = {
    "none": {},
    "bias": {"bias": True},
    "bias+res": {"bias": True, "residual": True},
    "bias+gelu": {"bias": True, "activation": "gelu"},
    "bias+gelu+res": {"bias": True, "residual": True, "activation": "gelu"},
}


@dataclasses.dataclass
class Case:
    family: str  # launch, gemm, int8, fp8, conv, depthwise
    name: str
    params: dict[str, Any]
    flops: float
    group: str = ""  # rows that add up to a total (a BERT layer, ResNet-50 at a batch)
    weight: int = 1  # how often the shape occurs in its group

    @property
    def id(self) -> str:
        return f"{self.family}/{self.name}"


# ---------------------------------------------------------------------------------------
# Cases (pure data: --dry-run lists them without torch).


def gemm_cases(family: str, quick: bool) -> list[Case]:
    cases = []
    big = [("4096^3 plain", "none"), ("4096^3 bias+gelu+res", "bias+gelu+res")]
    if family != "gemm":
        big = big[1:]
    for label, epi in big:
        cases.append(
            Case(
                family,
                label,
                {"M": 4096, "K": 4096, "N": 4096, "epilogue": epi, "b_layout": "KN"},
                2 * 4096**3,
            )
        )
    for batch in (1, 32) if not quick else (32,):
        m = batch * BERT_SEQ
        for name, k, n, epi in BERT_LINEARS:
            cases.append(
                Case(
                    family,
                    f"bert-base b{batch} {name} {m}x{k}x{n}",
                    {"M": m, "K": k, "N": n, "epilogue": epi, "b_layout": "NK"},
                    2.0 * m * k * n,
                    group=f"bert-base layer b{batch}",
                )
            )
    return cases


def resnet50_convs() -> list[tuple[tuple[int, int, int, int, int, int], int]]:
    """Distinct convs of torchvision's ResNet-50 (v1.5) at 224x224.

    Each as ((C, H, C_out, k, stride, pad), how often it occurs in the network).
    """
    convs: list[tuple[int, int, int, int, int, int]] = [(3, 224, 64, 7, 2, 3)]
    cin, hw = 64, 56  # after the stem and the max-pool
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            s = stride if i == 0 else 1
            convs.append((cin, hw, width, 1, 1, 0))
            convs.append((width, hw, width, 3, s, 1))
            convs.append((width, hw // s, width * 4, 1, 1, 0))
            if i == 0:
                convs.append((cin, hw, width * 4, 1, s, 0))  # downsample
            cin, hw = width * 4, hw // s
    counts: dict[tuple, int] = {}
    for c in convs:
        counts[c] = counts.get(c, 0) + 1
    return list(counts.items())


def conv_cases(quick: bool) -> list[Case]:
    cases = []
    for batch in (1, 32) if not quick else (32,):
        for (c, hw, cout, k, s, pad), count in resnet50_convs():
            p = (hw + 2 * pad - k) // s + 1
            flops = 2.0 * batch * p * p * cout * c * k * k
            cases.append(
                Case(
                    "conv",
                    f"resnet50 b{batch} {c}x{hw}x{hw} -> {cout} k{k} s{s}",
                    {
                        "N": batch,
                        "C": c,
                        "H": hw,
                        "W": hw,
                        "COUT": cout,
                        "k": k,
                        "stride": s,
                        "pad": pad,
                        "groups": 1,
                    },
                    flops,
                    group=f"resnet50 convs b{batch}",
                    weight=count,
                )
            )
    return cases


def depthwise_cases(quick: bool) -> list[Case]:
    shapes = [(144, 56, 1), (192, 28, 2), (576, 14, 1), (960, 7, 1)]  # (C, H, stride), 3x3
    cases = []
    for batch in (1, 32) if not quick else (32,):
        for c, hw, s in shapes:
            p = (hw + 2 - 3) // s + 1
            cases.append(
                Case(
                    "depthwise",
                    f"mobilenetv2 b{batch} dw3x3 {c}x{hw}x{hw} s{s}",
                    {
                        "N": batch,
                        "C": c,
                        "H": hw,
                        "W": hw,
                        "COUT": c,
                        "k": 3,
                        "stride": s,
                        "pad": 1,
                        "groups": c,
                    },
                    2.0 * batch * p * p * c * 9,
                )
            )
    return cases


def launch_cases() -> list[Case]:
    """Tiny shapes whose GPU time is a few microseconds: the host's launch path dominates."""
    conv = {"N": 1, "H": 8, "W": 8, "stride": 1, "pad": 1, "k": 3}
    return [
        Case(
            "launch",
            "gemm 64x64x64",
            {"kind": "gemm", "M": 64, "K": 64, "N": 64, "epilogue": "none", "b_layout": "KN"},
            2.0 * 64**3,
        ),
        Case(
            "launch",
            "conv 16x8x8 -> 16 k3 +bias+relu",
            {**conv, "kind": "conv", "C": 16, "COUT": 16, "groups": 1},
            2.0 * 64 * 16 * 16 * 9,
        ),
        Case(
            "launch",
            "depthwise 32x8x8 k3 +bias+relu",
            {**conv, "kind": "depthwise", "C": 32, "COUT": 32, "groups": 32},
            2.0 * 64 * 32 * 9,
        ),
    ]


def all_cases(families: list[str], quick: bool) -> list[Case]:
    cases: list[Case] = []
    for fam in families:
        if fam == "launch":
            cases += launch_cases()
        elif fam in ("gemm", "int8", "fp8"):
            cases += gemm_cases(fam, quick)
        elif fam == "conv":
            cases += conv_cases(quick)
        elif fam == "depthwise":
            cases += depthwise_cases(quick)
    return cases


def shrink(case: Case) -> Case:
    """--smoke: the same case at interpreter size (the logic runs, the numbers mean nothing)."""
    p = dict(case.params)
    if case.family == "launch":
        return case  # already tiny
    if case.family in ("gemm", "int8", "fp8"):
        p.update(M=min(p["M"], 48), K=max(32, min(p["K"], 64)), N=min(p["N"], 40))
    else:
        p.update(
            N=1, H=min(p["H"], 9), W=min(p["W"], 9), C=min(p["C"], 24), COUT=min(p["COUT"], 24)
        )
        if case.family == "depthwise":
            p.update(COUT=p["C"], groups=p["C"])
    return dataclasses.replace(case, params=p)


# ---------------------------------------------------------------------------------------
# Running a case: build inputs, our callable and torch's, check, time.


def _timer(smoke: bool) -> Callable[[Callable[[], Any]], list[float]]:
    if smoke:

        def wall(fn: Callable[[], Any]) -> list[float]:
            t0 = time.perf_counter()
            fn()
            ms = (time.perf_counter() - t0) * 1e3
            return [ms, ms, ms]

        return wall
    import triton

    def bench(fn: Callable[[], Any]) -> list[float]:
        return list(
            triton.testing.do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, quantiles=list(QUANTILES))
        )

    return bench


def _launch_timer(smoke: bool) -> Callable[[Callable[[], Any]], list[float]]:
    """ms per call from the wall clock of back-to-back calls and one synchronize at the end.

    Quantiles (p50, p20, p80) over LAUNCH_REPEATS runs of LAUNCH_CALLS calls; the smoke run
    makes 2 calls once (the interpreter is slow; the number means nothing).
    """
    import torch

    calls, repeats = (2, 1) if smoke else (LAUNCH_CALLS, LAUNCH_REPEATS)
    sync = (lambda: None) if smoke else torch.cuda.synchronize

    def wall(fn: Callable[[], Any]) -> list[float]:
        for _ in range(min(calls, 50)):  # warm: caches, allocator, clocks
            fn()
        sync()
        per_call = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            per_call.append((time.perf_counter() - t0) * 1e3 / calls)
        per_call.sort()

        def q(f: float) -> float:
            return per_call[min(len(per_call) - 1, int(f * len(per_call)))]

        return [q(0.5), q(0.2), q(0.8)]

    return wall


def _rel_err(ours: Any, ref: Any) -> float:
    ref = ref.float()
    return float((ours.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-12))


def _torch_epilogue(y: Any, epi: dict, bias: Any, res: Any) -> Any:
    import torch.nn.functional as F

    if epi.get("bias"):
        y = y + bias
    if epi.get("activation") == "gelu":
        y = F.gelu(y)
    elif epi.get("activation") == "relu":
        y = F.relu(y)
    if epi.get("residual"):
        y = y + res
    return y


def build_gemm(case: Case, device: str) -> dict[str, Callable[[], Any]]:
    import torch

    from lepton_compile.kernels import gemm as G
    from lepton_compile.kernels import gemm_scaled as S

    p = case.params
    m, k, n = p["M"], p["K"], p["N"]
    epi = EPILOGUES[p["epilogue"]]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=g).to(device, torch.float16)
    w = (torch.randn(n, k, generator=g) / math.sqrt(k)).to(device, torch.float16)  # (N, K)
    # B (K, N): row-major for the square case, K-major (nn.Linear weight .t()) for BERT.
    b = w.t().contiguous() if p["b_layout"] == "KN" else w.t()
    bias = torch.randn(n, generator=g).to(device, torch.float16) if epi.get("bias") else None
    res = torch.randn(m, n, generator=g).to(device, torch.float16) if epi.get("residual") else None
    kw = {"activation": epi.get("activation", "none")}

    def torch_fp16() -> Any:
        return _torch_epilogue(torch.matmul(a, b), epi, bias, res)

    sides: dict[str, Callable[[], Any]] = {
        "torch": torch_fp16,
        "cublas_only": lambda: torch.matmul(a, b),
    }
    if case.family == "gemm":
        sides["ours"] = lambda: G.gemm(a, b, bias, res, **kw)
    elif case.family == "int8":
        aq, sa = S.quantize_rowwise(a, torch.int8)
        wq, sb = S.quantize_rowwise(w, torch.int8)
        bq = wq.t()  # K-major
        sides["ours"] = lambda: S.w8a8_gemm(aq, bq, sa, sb, bias, res, **kw)
        sides["ref:torch._int_mm"] = lambda: torch._int_mm(aq, bq)
    else:
        aq, sa = S.quantize_rowwise(a, S.FP8_DTYPE)
        wq, sb = S.quantize_rowwise(w, S.FP8_DTYPE)
        bq = wq.t()
        sides["ours"] = lambda: S.fp8_gemm(aq, bq, sa, sb, bias, res, **kw)
        sides["ref:torch._scaled_mm"] = _scaled_mm_call(aq, bq, sa, sb)
    return sides


def _scaled_mm_call(aq: Any, bq: Any, sa: Any, sb: Any) -> Callable[[], Any]:
    """torch._scaled_mm with row-wise scales where this torch/GPU takes them, else per-tensor."""
    import torch

    attempts = [
        (
            "rowwise fp16",
            lambda: torch._scaled_mm(
                aq, bq, scale_a=sa[:, None], scale_b=sb[None, :], out_dtype=torch.float16
            ),
        ),
        (
            "rowwise bf16",
            lambda: torch._scaled_mm(
                aq, bq, scale_a=sa[:, None], scale_b=sb[None, :], out_dtype=torch.bfloat16
            ),
        ),
        (
            "per-tensor fp16",
            lambda: torch._scaled_mm(
                aq,
                bq,
                scale_a=sa.max().reshape(()),
                scale_b=sb.max().reshape(()),
                out_dtype=torch.float16,
            ),
        ),
    ]
    errors = []
    for label, fn in attempts:
        try:
            fn()
            fn.__doc__ = label
            return fn
        except Exception as e:  # unsupported scale layout on this torch/GPU: try the next
            errors.append(f"{label}: {type(e).__name__}: {str(e)[:120]}")

    def unavailable() -> Any:
        raise RuntimeError("torch._scaled_mm unavailable: " + " | ".join(errors))

    return unavailable


def build_conv(case: Case, device: str) -> dict[str, Callable[[], Any]]:
    import torch
    import torch.nn.functional as F

    from lepton_compile.kernels import conv as C

    p = case.params
    cl = torch.channels_last
    g = torch.Generator().manual_seed(0)
    x = torch.randn(p["N"], p["C"], p["H"], p["W"], generator=g)
    x = x.to(device, torch.float16).contiguous(memory_format=cl)
    cin_g = p["C"] // p["groups"]
    w = torch.randn(p["COUT"], cin_g, p["k"], p["k"], generator=g) / math.sqrt(cin_g * p["k"] ** 2)
    w = w.to(device, torch.float16).contiguous(memory_format=cl)
    b = torch.randn(p["COUT"], generator=g).to(device, torch.float16)
    conv_kw = {"stride": p["stride"], "padding": p["pad"], "groups": p["groups"]}
    w_ours = C.pack_depthwise_weight(w) if case.family == "depthwise" else w
    return {
        "ours": lambda: C.conv2d(x, w_ours, b, activation="relu", **conv_kw),
        "torch": lambda: F.relu(F.conv2d(x, w, b, **conv_kw)),
        "cudnn_only": lambda: F.conv2d(x, w, b, **conv_kw),
    }


def _kernel_case(case: Case) -> Case:
    """A launch case as the gemm/conv/depthwise case it times (what the builders take)."""
    if case.family != "launch":
        return case
    return dataclasses.replace(case, family=case.params["kind"])


def run_case(case: Case, device: str, smoke: bool) -> dict[str, Any]:
    from lepton_compile.kernels import _common

    kcase = _kernel_case(case)
    build = build_conv if kcase.family in ("conv", "depthwise") else build_gemm
    sides = build(kcase, device)
    if case.family == "launch":  # ours vs the torch equivalent, nothing else
        sides = {"ours": sides["ours"], "torch": sides["torch"]}
    timer = _launch_timer(smoke) if case.family == "launch" else _timer(smoke)
    row: dict[str, Any] = {
        "id": case.id,
        "family": case.family,
        "name": case.name,
        "params": case.params,
        "flops": case.flops,
        "group": case.group,
        "weight": case.weight,
    }
    t0 = time.perf_counter()
    ours_out = sides["ours"]()  # autotunes on the first call
    row["first_call_s"] = round(time.perf_counter() - t0, 3)
    kernel_family = {"gemm": "gemm", "int8": "w8a8", "fp8": "fp8"}.get(kcase.family, None)
    if kcase.family in ("conv", "depthwise"):
        kernel_family = "depthwise" if kcase.family == "depthwise" else "conv2d"
    cfg = _common.last_config(kernel_family)
    row["config"] = str(cfg) if cfg is not None else None
    ref_out = sides["torch"]()
    label = (
        "vs fp16 torch (includes quantization)" if case.family in ("int8", "fp8") else "vs torch"
    )
    row["max_rel_err"] = {label: _rel_err(ours_out, ref_out)}
    times: dict[str, Any] = {}
    for name, fn in sides.items():
        try:
            q = timer(fn)
        except Exception as e:  # a reference that this torch/GPU lacks
            times[name] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            continue
        times[name] = {
            "ms_p50": q[0],
            "ms_p20": q[1],
            "ms_p80": q[2],
            "tflops": case.flops / (q[0] * 1e-3) / 1e12 if q[0] > 0 else None,
        }
        if case.family == "launch":
            times[name]["us_per_call"] = q[0] * 1e3
            times[name]["tflops"] = None  # host-bound: not a throughput
        if fn.__doc__ and name.startswith("ref:"):
            times[name]["variant"] = fn.__doc__
    row["times"] = times
    ours = times.get("ours", {}).get("ms_p50")
    for name in ("torch", "cublas_only", "cudnn_only"):
        theirs = times.get(name, {}).get("ms_p50")
        if ours and theirs:
            row[f"speedup_vs_{name}"] = theirs / ours
    return row


def _warm_worker(cases: list[dict[str, Any]], device: str) -> list[str]:
    """Compile (and autotune) cases in a child process: fills Triton's disk cache."""
    errors = []
    for c in cases:
        case = _kernel_case(Case(**c))
        try:
            build = build_conv if case.family in ("conv", "depthwise") else build_gemm
            build(case, device)["ours"]()
        except Exception as e:
            errors.append(f"{case.id}: {type(e).__name__}: {str(e)[:200]}")
    return errors


def warm_compile(cases: list[Case], device: str, jobs: int, deadline: float) -> list[str]:
    """Compile every case's kernels in `jobs` processes at once before the timed runs."""
    if jobs <= 1 or not cases:
        return []
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait

    chunks = [cases[i::jobs] for i in range(jobs)]
    ctx = multiprocessing.get_context("spawn")
    errors: list[str] = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [
            pool.submit(_warm_worker, [dataclasses.asdict(c) for c in chunk], device)
            for chunk in chunks
            if chunk
        ]
        done, not_done = wait(futures, timeout=max(1.0, deadline - time.monotonic()))
        for f in done:
            try:
                errors += f.result()
            except Exception as e:
                errors.append(f"warm-up worker: {type(e).__name__}: {e}")
        if not_done:
            errors.append(f"warm-up: {len(not_done)} workers past the deadline")
            for f in not_done:
                f.cancel()
    return errors


# ---------------------------------------------------------------------------------------
# Device record, summary, output.


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    except Exception:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(smoke: bool) -> dict[str, Any]:
    import torch
    import triton

    info: dict[str, Any] = {"torch": torch.__version__, "triton": triton.__version__}
    if smoke:
        info.update(name="cpu (Triton interpreter smoke run)", smoke=True)
        return info
    props = torch.cuda.get_device_properties(0)
    info.update(
        name=torch.cuda.get_device_name(0),
        capability=".".join(map(str, torch.cuda.get_device_capability(0))),
        sm_count=props.multi_processor_count,
        memory_bytes=props.total_memory,
        driver=_driver_version(),
        cuda_runtime=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
    )
    try:
        from lepton_compile.bench.device import device_record

        info["record"] = device_record()
    except Exception as e:  # the record is context; its absence must not stop the suite
        info["record_error"] = f"{type(e).__name__}: {e}"
    return info


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per group (a BERT layer, ResNet-50 convs at a batch): weighted total times and ratio."""
    groups: dict[str, dict[str, Any]] = {}
    for r in rows:
        if not r.get("group"):
            continue
        times = r.get("times", {})
        ours = times.get("ours", {}).get("ms_p50")
        theirs = times.get("torch", {}).get("ms_p50")
        key = f"{r['family']}: {r['group']}"
        g = groups.setdefault(key, {"ours_ms": 0.0, "torch_ms": 0.0, "cases": 0, "complete": True})
        if ours is None or theirs is None:
            g["complete"] = False
            continue
        g["ours_ms"] += r["weight"] * ours
        g["torch_ms"] += r["weight"] * theirs
        g["cases"] += 1
    for g in groups.values():
        g["speedup"] = g["torch_ms"] / g["ours_ms"] if g["ours_ms"] else None
    return groups


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("case", "ours ms", "torch ms", "ratio", "TFLOP/s", "rel err")
    print(f"{head[0]:58s} {head[1]:>9s} {head[2]:>9s} {head[3]:>6s} {head[4]:>8s} {head[5]:>8s}")
    for r in rows:
        if "times" not in r:
            print(f"{r['id']:58s} {r.get('status', '')}: {r.get('error', '')[:60]}")
            continue
        t = r["times"]
        ours, theirs = t.get("ours", {}), t.get("torch", {})
        err = next(iter(r.get("max_rel_err", {}).values()), float("nan"))
        nan = float("nan")
        print(
            f"{r['id'][:58]:58s} {ours.get('ms_p50', nan):9.4f} {theirs.get('ms_p50', nan):9.4f} "
            f"{r.get('speedup_vs_torch', nan):6.2f} {(ours.get('tflops') or nan):8.1f} {err:8.1e}"
        )


def _progress(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return row["status"] + " " + row.get("error", "")[:100]
    text = f"{row.get('speedup_vs_torch', float('nan')):.2f}x"
    if row["family"] == "launch":
        us = {k: v.get("us_per_call", float("nan")) for k, v in row["times"].items()}
        text += f" (per call: ours {us.get('ours'):.1f} us, torch {us.get('torch'):.1f} us)"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(FAMILIES), help=f"comma-separated subset of {','.join(FAMILIES)}"
    )
    parser.add_argument("--quick", action="store_true", help="batch 32 only")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=420.0,
        help="stop starting cases after this many seconds (default 420)",
    )
    parser.add_argument(
        "--compile-jobs",
        type=int,
        default=None,
        help="processes for the parallel compile warm-up (default: cores/2, max 8; 1: none)",
    )
    parser.add_argument(
        "--out", default=None, help="JSON path (default bench/results/kernels-<gpu>.json)"
    )
    parser.add_argument("--dry-run", action="store_true", help="list the cases and exit")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes on CPU in the Triton interpreter (tests this script)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    families = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    cases = all_cases(families, args.quick)
    if args.dry_run:
        for c in cases:
            print(f"{c.id:64s} {c.flops / 1e9:10.2f} GFLOP  x{c.weight}")
        print(f"{len(cases)} cases")
        return 0

    start = time.monotonic()
    deadline = start + args.budget_s
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before lepton_compile.kernels is imported
        cases = [shrink(c) for c in cases]
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import torch

    device = "cpu" if args.smoke else "cuda"
    if not args.smoke:
        if not torch.cuda.is_available():
            print(
                "no CUDA device: this suite runs on a GPU (or --smoke / --dry-run)", file=sys.stderr
            )
            return 2
        torch.backends.cudnn.benchmark = True
        # Same matmul settings for both sides: fp16 in, fp32 accumulate (no reduced-precision
        # reductions in cuBLAS either).
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    info = device_info(args.smoke)
    log.info("device: %s, torch %s, triton %s", info["name"], info["torch"], info["triton"])

    jobs = args.compile_jobs
    if jobs is None:
        jobs = 1 if args.smoke else max(1, min(8, (os.cpu_count() or 2) // 2))
    warm_errors = []
    if jobs > 1:
        t0 = time.monotonic()
        warm_errors = warm_compile(cases, device, jobs, start + 0.6 * args.budget_s)
        log.info(
            "parallel compile warm-up: %.0f s, %d errors", time.monotonic() - t0, len(warm_errors)
        )

    rows: list[dict[str, Any]] = []
    for i, case in enumerate(cases):
        if time.monotonic() > deadline:
            rows.append(
                {
                    "id": case.id,
                    "family": case.family,
                    "name": case.name,
                    "group": case.group,
                    "status": "skipped",
                    "error": f"past the {args.budget_s:.0f} s budget",
                }
            )
            continue
        try:
            row = run_case(case, device, args.smoke)
            row["status"] = "ok"
        except Exception as e:
            row = {
                "id": case.id,
                "family": case.family,
                "name": case.name,
                "group": case.group,
                "status": "error",
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc()[-3000:],
            }
        rows.append(row)
        log.info(
            "[%d/%d] %s: %s",
            i + 1,
            len(cases),
            case.id,
            _progress(row),
        )
        if not args.smoke:
            torch.cuda.empty_cache()

    summary = summarize(rows)
    result: dict[str, Any] = {
        "suite": "kernels",
        "schema": "lepton-compile/bench-kernels/v1",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "benchmarks/kernels.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "git_commit": _git_commit(),
        "device": info,
        "settings": {
            "timer": "wall clock, one call (smoke run)"
            if args.smoke
            else "triton.testing.do_bench",
            "launch_timer": f"wall clock of {LAUNCH_CALLS} back-to-back calls + one "
            f"torch.cuda.synchronize, / {LAUNCH_CALLS}; p50/p20/p80 of {LAUNCH_REPEATS} runs",
            "warmup_ms": WARMUP_MS,
            "rep_ms": REP_MS,
            "quantiles": list(QUANTILES),
            "l2_flush": "do_bench clears L2 before every repetition (both sides)",
            "dtype": "float16 activations/weights (int8, fp8 e4m3 for those families)",
            "cudnn_benchmark": not args.smoke,
            "memory_format": "channels_last for convs (inputs and weights)",
            "autotune": "our kernels autotune on the first call of a shape, before timing",
            "ratio": "torch ms / ours ms (> 1: ours faster)",
            "quantization": "activations quantized before timing (not in our time)",
            "cublas_fp16_reduced_precision_reduction": False if not args.smoke else None,
        },
        "rows": rows,
        "summary": summary,
        "warmup_errors": warm_errors,
        "wall_s": round(time.monotonic() - start, 1),
    }
    from suite import save_device_results  # beside this script

    out = save_device_results(result, "kernels", info["name"], args.out, args.smoke)
    print_table(rows)
    for k, g in summary.items():
        print(
            f"{k}: ours {g['ours_ms']:.3f} ms, torch {g['torch_ms']:.3f} ms, "
            f"ratio {g['speedup'] or float('nan'):.2f}{'' if g['complete'] else ' (incomplete)'}"
        )
    print(f"wrote {out} ({result['wall_s']} s)")
    return 0 if all(r["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
