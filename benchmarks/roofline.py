"""Print a model's roofline count: FLOPs, MACs, int ops and bytes per op type, and a reference.

    python benchmarks/roofline.py MODEL [--shape NAME=1,3,224,224 ...] [--peak h100-sxm]
                                        [--precision fp16]

With ``--peak``, the spec-sheet reference energy (TDP x roofline time) of one run is printed
beside the count: a reference, not a bound (``lepton_compile.bench.roofline``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import onnx

from lepton_compile.bench.roofline import (
    PEAKS,
    PRECISIONS,
    REFERENCE_LABEL,
    count,
    reference_energy,
)


def _human(x: float, unit: str) -> str:
    for p, s in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= p:
            return f"{x / p:.3g} {s}{unit}"
    return f"{x:.3g} {unit}"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/roofline.py")
    ap.add_argument("model")
    ap.add_argument("--shape", action="append", default=[], help="NAME=d0,d1,...")
    ap.add_argument("--peak", choices=sorted(PEAKS), help="spec-sheet device for a reference")
    ap.add_argument("--precision", default="fp32", choices=PRECISIONS)
    args = ap.parse_args(argv)
    shapes = {}
    for s in args.shape:
        name, _, dims = s.rpartition("=")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            print(f"error: bad --shape {s!r}", file=sys.stderr)
            return 2
    try:
        model = onnx.load(args.model)
        cost = count(model, shapes or None)
    except Exception as e:  # noqa: BLE001 - one line for any unreadable model
        print(f"error: {args.model}: {e}", file=sys.stderr)
        return 2
    print(f"{'op':28} {'n':>5} {'FLOPs':>12} {'MACs':>12} {'int ops':>10} {'bytes':>12}")
    for op, c in sorted(cost.by_op.items(), key=lambda kv: -kv[1].flops):
        print(
            f"{op:28} {c.count:5d} {_human(c.flops, ''):>12} {_human(c.macs, ''):>12} "
            f"{_human(c.int_ops, ''):>10} {_human(c.bytes, 'B'):>12}"
        )
    print(
        f"total FLOPs {_human(cost.flops, 'FLOP')}, MACs {_human(cost.macs, 'MAC')}, "
        f"int ops {_human(cost.int_ops, 'op')}"
    )
    print(
        f"bytes: unfused {_human(cost.bytes_unfused, 'B')} (upper), "
        f"fused {_human(cost.bytes_fused, 'B')} (lower)"
    )
    for u in cost.unknown:
        print(f"not counted: {u.op_type} {u.name!r}: {u.reason}")
    if args.peak:
        ref = reference_energy(cost, PEAKS[args.peak], args.precision)
        for est in ("fused", "unfused"):
            r = ref[est]
            print(
                f"{est}: {r['joules']:.4g} J, {r['time_s'] * 1e3:.4g} ms, {r['bound']}-bound "
                f"-- {REFERENCE_LABEL}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
