"""NVML energy-counter check: a known GEMM load, the counter vs integrated instant power.

    python benchmarks/nvml_check.py [--window-s 10] [--trials 3] [--out bench/results/...]

Needs an NVIDIA GPU (Volta or newer), torch with CUDA and nvidia-ml-py. It drives fp16
8192x8192 matmuls for each window and reads, over the same window, (a) the board's energy
counter (nvmlDeviceGetTotalEnergyConsumption, mJ) and (b) instant power
(NVML_FI_DEV_POWER_INSTANT, falling back to nvmlDeviceGetPowerUsage) polled every few ms and
integrated with trapezoids. It also probes both sources' update periods and idle power. The
two energy figures should agree within a few percent when windows span many update periods;
the JSON keeps both, so the meter the search uses (the counter) is checked against a second
reading of the same board.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


class Sampler(threading.Thread):
    """Polls a power source (watts) and keeps (t, W) samples until stopped."""

    def __init__(self, read_w: Any, interval_s: float):
        super().__init__(daemon=True)
        self.read_w = read_w
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.samples.append((time.perf_counter(), self.read_w()))
            time.sleep(self.interval_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def joules(self, t0: float, t1: float) -> float:
        pts = [(t, w) for t, w in self.samples if t0 <= t <= t1]
        return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:], strict=False))

    def update_period_s(self) -> float | None:
        """Median time between changes of the polled value."""
        changes = [
            t for (t, w), (_, w0) in zip(self.samples[1:], self.samples, strict=False) if w != w0
        ]
        gaps = sorted(b - a for a, b in zip(changes, changes[1:], strict=False))
        return gaps[len(gaps) // 2] if gaps else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window-s", type=float, default=10.0)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--size", type=int, default=8192)
    ap.add_argument("--poll-s", type=float, default=0.002)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import pynvml
    import torch

    from lepton_compile.bench.device import device_record, record_key
    from lepton_compile.bench.energy import _probe_update_period

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    pynvml.nvmlInit()
    h = pynvml.nvmlDeviceGetHandleByIndex(0)
    fi = getattr(pynvml, "NVML_FI_DEV_POWER_INSTANT", 186)

    def instant_w() -> float:
        v = pynvml.nvmlDeviceGetFieldValues(h, [fi])[0]
        if v.nvmlReturn != 0:
            raise RuntimeError(f"field {fi} not supported")
        return v.value.uiVal / 1000.0

    try:
        instant_w()
        power_source = "NVML_FI_DEV_POWER_INSTANT"
        read_w = instant_w
    except Exception:
        power_source = "nvmlDeviceGetPowerUsage (1 s average on recent boards)"

        def read_w() -> float:
            return pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0

    def counter_mj() -> int:
        return int(pynvml.nvmlDeviceGetTotalEnergyConsumption(h))

    counter_period = _probe_update_period(counter_mj, 2.0)
    a = torch.randn(args.size, args.size, device="cuda", dtype=torch.float16)
    b = torch.randn(args.size, args.size, device="cuda", dtype=torch.float16)
    torch.cuda.synchronize()

    def window(load: bool) -> dict:
        sampler = Sampler(read_w, args.poll_s)
        sampler.start()
        time.sleep(0.2)
        # Start on a counter update, so the window holds whole update periods.
        c = counter_mj()
        while counter_mj() == c:
            time.sleep(0.0005)
        t0, e0 = time.perf_counter(), counter_mj()
        n = 0
        while time.perf_counter() - t0 < args.window_s:
            if load:
                for _ in range(8):
                    torch.matmul(a, b)
                    n += 1
                torch.cuda.synchronize()
            else:
                time.sleep(0.01)
        c = counter_mj()
        while counter_mj() == c:
            time.sleep(0.0005)
        t1, e1 = time.perf_counter(), counter_mj()
        time.sleep(0.2)
        sampler.stop()
        counter_j = (e1 - e0) / 1000.0
        integ_j = sampler.joules(t0, t1)
        flops = 2 * args.size**3 * n
        return {
            "seconds": t1 - t0,
            "counter_j": counter_j,
            "integrated_j": integ_j,
            "rel_diff": (counter_j - integ_j) / integ_j if integ_j else None,
            "mean_w_counter": counter_j / (t1 - t0),
            "matmuls": n,
            "tflops": flops / (t1 - t0) / 1e12 if load else 0.0,
            "samples": len(sampler.samples),
            "power_update_period_s": sampler.update_period_s(),
        }

    torch.matmul(a, b)
    torch.cuda.synchronize()
    idle = window(load=False)
    trials = []
    for _ in range(args.trials):
        time.sleep(random.uniform(1.0, 3.0))  # random gaps between trials (Yang et al.)
        trials.append(window(load=True))
    rec = device_record(None)
    rec["key"] = record_key(rec)
    result = {
        "suite": "nvml_check",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": rec,
        "torch": torch.__version__,
        "gemm": {"m": args.size, "n": args.size, "k": args.size, "dtype": "float16"},
        "window_s": args.window_s,
        "counter": "nvmlDeviceGetTotalEnergyConsumption",
        "counter_update_period_s": counter_period,
        "power_source": power_source,
        "poll_s": args.poll_s,
        "idle": idle,
        "trials": trials,
        "mean_abs_rel_diff": sum(abs(t["rel_diff"] or 0) for t in trials) / len(trials),
    }
    gpu = (rec.get("gpus") or [{}])[0].get("name", "gpu").replace(" ", "-")
    out = args.out or RESULTS / f"nvml-check-{gpu}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("counter_update_period_s", "mean_abs_rel_diff")}))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
