"""Fidelity of a variant against the original: cosine, SQNR, max abs error, top-1 agreement."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Outputs = Mapping[str, np.ndarray]


@dataclass
class OutputFidelity:
    name: str
    cosine: float
    sqnr_db: float
    max_abs: float
    top1_agreement: float | None = None

    @property
    def drop(self) -> float:
        """Fidelity loss in [0, 1]: 1 - cosine, or top-1 disagreement for scores if larger."""
        if not math.isfinite(self.cosine):
            return 1.0
        drop = 1.0 - self.cosine
        if self.top1_agreement is not None:
            drop = max(drop, 1.0 - self.top1_agreement)
        return max(0.0, drop)

    def to_dict(self) -> dict:
        d = {
            "cosine": _finite(self.cosine),
            "sqnr_db": _finite(self.sqnr_db),
            "max_abs": _finite(self.max_abs),
        }
        if self.top1_agreement is not None:
            d["top1_agreement"] = self.top1_agreement
        return d


@dataclass
class Fidelity:
    outputs: list[OutputFidelity]
    max_drop: float
    passed: bool = False
    reason: str = ""
    samples: int = 0
    extra: dict = field(default_factory=dict)
    metric_drop: float | None = None  # set when a user metric judges the variant

    @property
    def drop(self) -> float:
        if self.metric_drop is not None:
            return self.metric_drop
        return max((o.drop for o in self.outputs), default=0.0)

    def to_dict(self) -> dict:
        return {
            "metric": "user metric on held-out eval labels"
            if self.metric_drop is not None
            else "fidelity vs original on held-out eval inputs",
            "samples": self.samples,
            "drop": round(self.drop, 6),
            "max_drop": self.max_drop,
            "min_cosine": _finite(min((o.cosine for o in self.outputs), default=1.0)),
            "min_sqnr_db": _finite(min((o.sqnr_db for o in self.outputs), default=math.inf)),
            "outputs": {o.name: o.to_dict() for o in self.outputs},
            "passed": self.passed,
            **({"reason": self.reason} if self.reason else {}),
            **self.extra,
        }


def _finite(x: float) -> float | str:
    # JSON has no inf/nan: say it in words rather than write invalid JSON.
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return float(round(x, 6))


def compare_output(
    name: str, refs: Sequence[np.ndarray], outs: Sequence[np.ndarray], score: bool
) -> OutputFidelity:
    """Compare one output over all eval samples (concatenated, so one bad sample shows)."""
    ref_parts, out_parts = [], []
    agree = total = 0
    for r, o in zip(refs, outs, strict=True):
        if r.shape != o.shape:
            return OutputFidelity(
                name,
                cosine=float("nan"),
                sqnr_db=-math.inf,
                max_abs=math.inf,
                top1_agreement=0.0 if score else None,
            )
        if not (_numeric(r) and _numeric(o)):
            # Strings (a Cast to string, a label lookup) have no distance: equal or not.
            return _exact(name, refs, outs)
        rf, of = _as_real(r), _as_real(o)
        ref_parts.append(rf.ravel())
        out_parts.append(of.ravel())
        if score and rf.ndim >= 2:
            a = rf.reshape(-1, rf.shape[-1]).argmax(-1)
            b = of.reshape(-1, of.shape[-1]).argmax(-1)
            agree += int((a == b).sum())
            total += a.size
    ref = np.concatenate(ref_parts) if ref_parts else np.zeros(0)
    out = np.concatenate(out_parts) if out_parts else np.zeros(0)
    if not np.all(np.isfinite(out)) and np.all(np.isfinite(ref)):
        return OutputFidelity(name, float("nan"), -math.inf, math.inf, 0.0 if score else None)
    diff = out - ref
    max_abs = float(np.max(np.abs(diff))) if diff.size else 0.0
    nr = float(np.dot(ref, ref))
    no = float(np.dot(out, out))
    nd = float(np.dot(diff, diff))
    if nr == 0.0 and no == 0.0:
        cosine = 1.0
    elif nr == 0.0 or no == 0.0:
        cosine = 0.0
    else:
        cosine = float(np.dot(ref, out) / math.sqrt(nr * no))
    if nd == 0.0:
        sqnr = math.inf
    elif nr == 0.0:
        sqnr = -math.inf
    else:
        sqnr = 10.0 * math.log10(nr / nd)
    top1 = (agree / total) if score and total else None
    return OutputFidelity(name, cosine, sqnr, max_abs, top1)


def _numeric(a: np.ndarray) -> bool:
    return np.asarray(a).dtype.kind in "biufc"


def _as_real(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "c":
        # Real and imaginary parts side by side: a cast to float64 would drop the imaginary.
        return np.ascontiguousarray(a, dtype=np.complex128).view(np.float64)
    return np.asarray(a, dtype=np.float64)


def _exact(name: str, refs: Sequence[np.ndarray], outs: Sequence[np.ndarray]) -> OutputFidelity:
    same = all(
        np.asarray(r).shape == np.asarray(o).shape and np.array_equal(r, o)
        for r, o in zip(refs, outs, strict=True)
    )
    if same:
        return OutputFidelity(name, cosine=1.0, sqnr_db=math.inf, max_abs=0.0)
    return OutputFidelity(name, cosine=0.0, sqnr_db=-math.inf, max_abs=math.inf)


def compare(
    refs: Sequence[Outputs],
    outs: Sequence[Outputs],
    score_outputs: set[str],
    max_drop: float,
) -> Fidelity:
    """Fidelity of ``outs`` vs ``refs`` (one dict per eval sample); passes if drop <= max_drop."""
    names = list(refs[0].keys()) if refs else []
    results = []
    for n in names:
        if any(n not in o for o in outs):
            fid = Fidelity(
                [], max_drop, passed=False, reason=f"output {n!r} missing", samples=len(refs)
            )
            return fid
        results.append(
            compare_output(n, [r[n] for r in refs], [o[n] for o in outs], n in score_outputs)
        )
    fid = Fidelity(results, max_drop, samples=len(refs))
    bad = [o for o in results if not math.isfinite(o.cosine) and o.max_abs != 0.0]
    if bad:
        fid.reason = f"output {bad[0].name!r}: non-finite values or wrong shape"
    elif fid.drop > max_drop:
        worst = max(results, key=lambda o: o.drop)
        fid.reason = f"output {worst.name!r}: drop {worst.drop:.4f} > {max_drop:g}"
    fid.passed = not fid.reason
    return fid


def apply_metric(fid: Fidelity, original: float, value: float, max_drop: float) -> None:
    """Judge ``fid`` by the user's metric (higher is better) instead of output fidelity."""
    drop = max(0.0, original - value)
    fid.metric_drop = drop
    fid.extra["user_metric"] = {
        "original": original,
        "variant": value,
        "drop": round(original - value, 6),
    }
    fid.reason = "" if drop <= max_drop else f"metric drop {drop:.4f} > {max_drop:g}"
    fid.passed = not fid.reason
