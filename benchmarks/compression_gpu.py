"""Compression on an NVIDIA GPU: 2:4 sparsity on the sparse tensor cores, and FP8 GEMMs.

    python benchmarks/compression_gpu.py [--out bench/results/compression-gpu-<gpu>.json]

Needs torch with CUDA (cuSPARSELt for the 2:4 part). Two checks, on the linear layers of a
BERT-base encoder layer (K x N = 768x2304, 768x768, 768x3072, 3072x768) at 128 and 4096
tokens, with random fp16 weights:

  sparse24  weights pruned by `lepton_compile.passes.prune.prune_24` along the reduction
            axis, exactly as the `prune-2of4` recipe prunes a MatMul weight [K, N]; then
            `torch.sparse.to_sparse_semi_structured` on W^T [N, K] (the layout the sparse
            tensor cores take: 2 of every 4 consecutive K elements). The conversion only
            accepts a 2:4 layout, and the sparse product must equal the dense product of
            the same pruned weights; timed against that dense product (cuBLAS).
  fp8       the same shapes through `torch._scaled_mm` with e4m3 operands and per-tensor
            scales (what an FP8 QDQ model's MatMul becomes on Hopper), against fp16 cuBLAS.

Timings: `triton.testing.do_bench` medians (L2 flushed between repetitions); ratios are
dense time / compressed time (> 1: compressed is faster), in the same process.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
SHAPES = (("qkv", 768, 2304), ("attn_out", 768, 768), ("ffn1", 768, 3072), ("ffn2", 3072, 768))
TOKENS = (128, 4096)


def _bench(fn) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def sparse24(rows: list, rng: np.random.Generator) -> None:
    import torch
    import torch.nn.functional as F

    from lepton_compile.passes.prune import check_24, prune_24

    for name, k, n in SHAPES:
        w = rng.standard_normal((k, n)).astype(np.float32)
        w24 = prune_24(w, axis=0)  # MatMul B [K, N]: groups of 4 along K
        assert check_24(w24, 0, exact=True)
        wt = torch.from_numpy(np.ascontiguousarray(w24.T)).half().cuda()  # [N, K]
        for m in TOKENS:
            row: dict = {"family": "sparse24", "layer": name, "M": m, "K": k, "N": n}
            x = torch.randn(m, k, device="cuda", dtype=torch.float16)
            try:
                sp = torch.sparse.to_sparse_semi_structured(wt)
                y_sp = F.linear(x, sp)
                y_dn = F.linear(x, wt)
                torch.cuda.synchronize()
                err = (y_sp.float() - y_dn.float()).norm() / y_dn.float().norm()
                row["rel_err_vs_dense"] = float(err)
                row["dense_ms"] = _bench(lambda: F.linear(x, wt))  # noqa: B023
                row["sparse_ms"] = _bench(lambda: F.linear(x, sp))  # noqa: B023
                row["speedup"] = row["dense_ms"] / row["sparse_ms"]
                row["status"] = "ok" if float(err) < 1e-2 else "wrong result"
            except Exception as e:  # the layout or the shape was refused: a result too
                row["status"] = f"error: {type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            print(row)


def fp8(rows: list) -> None:
    import torch

    for name, k, n in SHAPES:
        for m in TOKENS:
            row: dict = {"family": "fp8", "layer": name, "M": m, "K": k, "N": n}
            try:
                x = torch.randn(m, k, device="cuda", dtype=torch.float16)
                w = torch.randn(n, k, device="cuda", dtype=torch.float16)
                sx = (x.abs().max().float() / 448.0).reshape(())
                sw = (w.abs().max().float() / 448.0).reshape(())
                xq = (x.float() / sx).to(torch.float8_e4m3fn)
                wq = (w.float() / sw).to(torch.float8_e4m3fn)

                def run_fp8(xq=xq, wq=wq, sx=sx, sw=sw):
                    return torch._scaled_mm(
                        xq, wq.t(), scale_a=sx, scale_b=sw, out_dtype=torch.float16
                    )

                y8 = run_fp8()
                y16 = x @ w.t()
                torch.cuda.synchronize()
                err = (y8.float() - y16.float()).norm() / y16.float().norm()
                row["rel_err_vs_fp16"] = float(err)
                row["fp16_ms"] = _bench(lambda: x @ w.t())  # noqa: B023
                row["fp8_ms"] = _bench(run_fp8)
                row["speedup"] = row["fp16_ms"] / row["fp8_ms"]
                row["status"] = "ok" if float(err) < 0.1 else "wrong result"
            except Exception as e:
                row["status"] = f"error: {type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
            print(row)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch
    import triton

    from lepton_compile.bench.device import device_record, record_key

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    rng = np.random.default_rng(0)
    rows: list = []
    sparse24(rows, rng)
    fp8(rows)
    rec = device_record(None)
    rec["key"] = record_key(rec)
    summary = {}
    for fam in ("sparse24", "fp8"):
        ok = [r for r in rows if r["family"] == fam and r.get("status") == "ok"]
        for m in TOKENS:
            sel = [r for r in ok if r["M"] == m]
            if sel:
                dense = sum(r.get("dense_ms", r.get("fp16_ms", 0.0)) for r in sel)
                comp = sum(r.get("sparse_ms", r.get("fp8_ms", 0.0)) for r in sel)
                summary[f"{fam} bert-layer M={m}"] = {
                    "dense_ms": dense,
                    "compressed_ms": comp,
                    "speedup": dense / comp if comp else None,
                    "cases": len(sel),
                }
    result = {
        "suite": "compression_gpu",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": rec,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0),
        "timer": "triton.testing.do_bench median, warmup 25 ms, rep 100 ms",
        "rows": rows,
        "summary": summary,
    }
    gpu = torch.cuda.get_device_name(0).replace(" ", "-")
    out = args.out or RESULTS / f"compression-gpu-{gpu}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for k, v in summary.items():
        print(
            f"{k}: dense {v['dense_ms']:.4f} ms, compressed {v['compressed_ms']:.4f} ms, "
            f"speedup {v['speedup']:.2f}x"
        )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
