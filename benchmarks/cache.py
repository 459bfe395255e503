"""Result-cache benchmark: the search's wall time on a model with a cold and a warm cache.

    python benchmarks/cache.py [MODEL ...] [--quick] [--out bench/results/cache-cpu.json]

Each model is compiled twice into a fresh cache directory: the first run builds, verifies and
measures everything (cold); the second finds the whole run in the cache (warm). Both wall
times are measured around the same `lepton_compile.compile` call a user makes. Target from
the issue: warm < 10% of cold.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

from lepton_compile import compile as lc_compile
from lepton_compile.bench.device import device_record, record_key
from lepton_compile.bench.zoo import MODELS, fetch

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def run_one(name: str, quick: bool) -> dict:
    spec = MODELS[name]
    path = fetch(name)
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "results.sqlite"
        times = []
        reused = []
        for _ in range(2):
            t0 = time.perf_counter()
            res = lc_compile(path, input_shapes=spec.input_shapes, quick=quick, cache_path=db)
            times.append(time.perf_counter() - t0)
            reused.append(sum(1 for v in res.variants if v.cache.get("measurement_reused")))
    return {
        "model": name,
        "size_bytes": path.stat().st_size,
        "cold_s": round(times[0], 2),
        "warm_s": round(times[1], 2),
        "warm_over_cold": round(times[1] / times[0], 4),
        "variants": len(res.variants),
        "reused_on_warm_run": reused[1],
        "best": res.best.id,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["ppocrv4-rec", "ddddocr-det"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "cache-cpu.json")
    args = ap.parse_args(argv)
    rows = [run_one(m, args.quick) for m in args.models]
    dev = device_record(["CPUExecutionProvider"])
    dev["key"] = record_key(dev)
    result = {
        "suite": "cache",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "protocol": "quick" if args.quick else "default",
        "device": dev,
        "target": "warm_over_cold < 0.10",
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in rows:
        print(
            f"{r['model']}: cold {r['cold_s']} s, warm {r['warm_s']} s "
            f"({r['warm_over_cold']:.1%}), {r['reused_on_warm_run']}/{r['variants']} reused"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
