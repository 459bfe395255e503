"""CI perf gate: fail on a latency, energy or accuracy regression beyond noise between reports."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_compile.errors import InputError
from lepton_compile.report import SCHEMA


def parse_fraction(text: str | float, what: str) -> float:
    """'5%' -> 0.05, '0.05' -> 0.05."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).strip()
    try:
        val = float(s[:-1]) / 100.0 if s.endswith("%") else float(s)
    except ValueError:
        raise InputError(f"{what}: {text!r} is not a number or a percentage") from None
    if val < 0 or not math.isfinite(val):
        raise InputError(f"{what}: must be a non-negative number")
    return val


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such report file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a JSON report ({e})") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"{p}: not a lepton-compile report (schema is not {SCHEMA})")
    return data


def _best(rep: dict[str, Any]) -> dict[str, Any]:
    bid = rep["best"]["id"]
    return next(v for v in rep["variants"] if v["id"] == bid)


@dataclass
class Check:
    metric: str
    base: float | None
    cur: float | None
    change: float | None  # relative for latency/energy, absolute for accuracy drop
    limit: float
    regressed: bool
    beyond_noise: bool
    note: str = ""


def _interval(d: dict[str, Any] | None, key: str) -> tuple[float, float] | None:
    if not d or d.get(key) is None:
        return None
    ci = d.get("ci95")
    return float(d[key]), float(ci) if ci is not None else math.inf


def _timed_check(metric: str, base: dict | None, cur: dict | None, key: str, limit: float) -> Check:
    b = _interval(base, key)
    c = _interval(cur, key)
    if b is None or c is None:
        return Check(metric, b and b[0], c and c[0], None, limit, False, False, "not measured")
    rel = c[0] / b[0] - 1.0 if b[0] else 0.0
    # Noise: the two 95% CIs overlap; then no regression is claimed, however large the ratio.
    beyond = (c[0] - c[1]) > (b[0] + b[1])
    return Check(metric, b[0], c[0], rel, limit, rel > limit and beyond, beyond)


def compare(
    base: dict[str, Any],
    cur: dict[str, Any],
    max_latency_regression: float = 0.05,
    max_energy_regression: float = 0.05,
    max_accuracy_drop: float = 0.01,
) -> tuple[list[Check], list[str]]:
    """Checks of cur's best against base's best, and warnings (e.g. different devices)."""
    warnings = []
    bb, cb = _best(base), _best(cur)
    if base["model"].get("sha256") != cur["model"].get("sha256"):
        warnings.append("the reports are of different models")
    bdev, cdev = base.get("device", {}), cur.get("device", {})
    if bdev.get("key") and cdev.get("key") and bdev["key"] != cdev["key"]:
        warnings.append(
            "the reports come from different device records: figures may not be comparable"
        )
    bm = (bb.get("energy_j") or {}).get("method")
    cm = (cb.get("energy_j") or {}).get("method")
    if bm and cm and bm != cm:
        warnings.append(f"energy was obtained differently ({bm} vs {cm})")
    checks = [
        _timed_check(
            "latency_ms (mean)",
            bb.get("latency_ms"),
            cb.get("latency_ms"),
            "mean",
            max_latency_regression,
        ),
        _timed_check(
            "energy_j (per inference)",
            bb.get("energy_j"),
            cb.get("energy_j"),
            "per_inference",
            max_energy_regression,
        ),
    ]
    bd = (bb.get("accuracy") or {}).get("drop")
    cd = (cb.get("accuracy") or {}).get("drop")
    if bd is None or cd is None:
        checks.append(
            Check("accuracy drop", bd, cd, None, max_accuracy_drop, False, False, "not verified")
        )
    else:
        delta = float(cd) - float(bd)
        checks.append(
            Check(
                "accuracy drop",
                float(bd),
                float(cd),
                delta,
                max_accuracy_drop,
                delta > max_accuracy_drop,
                True,
            )
        )
    return checks, warnings


def to_markdown(base: dict, cur: dict, checks: list[Check], warnings: list[str]) -> str:
    def fmt(x: float | None) -> str:
        return "—" if x is None else (f"{x:.6g}")

    lines = [
        "## lepton-compile gate",
        "",
        f"base best: `{base['best']['id']}` · current best: `{cur['best']['id']}`",
        "",
        "| metric | base | current | change | limit | result |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:
        if c.change is None:
            change = "—"
        elif c.metric.startswith("accuracy"):
            change = f"{c.change:+.4f}"
        else:
            change = f"{c.change * 100:+.1f}%"
        limit = f"{c.limit:.4f}" if c.metric.startswith("accuracy") else f"{c.limit * 100:.1f}%"
        if c.regressed:
            result = "❌ regression"
        elif c.note:
            result = c.note
        elif c.change is not None and c.change > c.limit and not c.beyond_noise:
            result = "✅ within noise"
        else:
            result = "✅"
        lines.append(
            f"| {c.metric} | {fmt(c.base)} | {fmt(c.cur)} | {change} | {limit} | {result} |"
        )
    for w in warnings:
        lines.append(f"\n> warning: {w}")
    failed = any(c.regressed for c in checks)
    lines += ["", "**FAILED**" if failed else "**PASSED**", ""]
    return "\n".join(lines)


def run_gate(
    base_path: str | Path,
    cur_path: str | Path,
    max_latency_regression: float = 0.05,
    max_energy_regression: float = 0.05,
    max_accuracy_drop: float = 0.01,
) -> tuple[bool, str]:
    """(passed, markdown)."""
    base = load_report(base_path)
    cur = load_report(cur_path)
    checks, warnings = compare(
        base, cur, max_latency_regression, max_energy_regression, max_accuracy_drop
    )
    return not any(c.regressed for c in checks), to_markdown(base, cur, checks, warnings)
