"""CI perf gate: fail on a latency, energy or accuracy regression beyond noise between reports.

Two reports come from two runs, so their trials were not shared: the gate compares the
best variant's per-trial figures of each run as a ratio of geometric means with a Welch t
interval on the log values (``bench.stats.unpaired_ratio``). A regression is claimed only
when the whole interval lies above 1 and the ratio passes the limit. Reports written
before per-trial figures were kept fall back to the two means and their 95% CIs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_compile.bench.stats import Ratio, unpaired_ratio
from lepton_compile.errors import InputError
from lepton_compile.passes.errors import one_line
from lepton_compile.report import SCHEMA

MARKDOWN_TITLE = "## lepton-compile gate"


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
    """Read and validate a report; anything the gate cannot compare is an InputError."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such report file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{p}: not a JSON report ({one_line(e, 200)})") from None
    except RecursionError:
        # Python's parser recurses once per nesting level; a report is a few levels deep.
        raise InputError(f"{p}: not a JSON report (nested too deeply)") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read: {e.strerror or e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise InputError(f"{p}: not a lepton-compile report (schema is not {SCHEMA})")
    _validate(data, p)
    return data


def _no_constant(name: str) -> float:
    # Reports are written with allow_nan=False: NaN or Infinity means someone else wrote it.
    raise ValueError(f"{name} is not a number a report holds")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _validate(rep: dict[str, Any], p: Path) -> None:
    """The parts the gate reads, checked up front so that a damaged report is bad input."""

    def bad(what: str) -> InputError:
        return InputError(f"{p}: not a valid lepton-compile report: {what}")

    best = rep.get("best")
    if not isinstance(best, dict) or not isinstance(best.get("id"), str):
        raise bad("'best' has no variant id")
    variants = rep.get("variants")
    if not isinstance(variants, list) or not all(isinstance(v, dict) for v in variants):
        raise bad("'variants' is not a list of variants")
    chosen = [v for v in variants if v.get("id") == best["id"]]
    if not chosen:
        raise bad(f"the best variant {best['id']!r} is not among 'variants'")
    for key in ("model", "device"):
        if not isinstance(rep.get(key, {}), dict):
            raise bad(f"'{key}' is not an object")
    v = chosen[0]
    for key, value_key in (("latency_ms", "mean"), ("energy_j", "per_inference")):
        d = v.get(key)
        if d is None:
            continue  # not measured: the gate says so
        if not isinstance(d, dict):
            raise bad(f"{v['id']}.{key} is not an object")
        for k in (value_key, "ci95"):
            if d.get(k) is not None and not _is_number(d[k]):
                raise bad(f"{v['id']}.{key}.{k} is not a finite number")
    acc = v.get("accuracy")
    if acc is not None:
        if not isinstance(acc, dict):
            raise bad(f"{v['id']}.accuracy is not an object")
        if acc.get("drop") is not None and not _is_number(acc["drop"]):
            raise bad(f"{v['id']}.accuracy.drop is not a finite number")


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
    ratio: Ratio | None = None  # current over base, when per-trial figures allow it


def _interval(d: dict[str, Any] | None, key: str) -> tuple[float, float] | None:
    if not d or d.get(key) is None:
        return None
    ci = d.get("ci95")
    return float(d[key]), float(ci) if ci is not None else math.inf


def _series(d: dict[str, Any] | None) -> list[float] | None:
    xs = (d or {}).get("per_trial")
    if not isinstance(xs, list) or len(xs) < 2:
        return None
    if not all(_is_number(x) and x > 0 for x in xs):
        return None
    return [float(x) for x in xs]


def _timed_check(metric: str, base: dict | None, cur: dict | None, key: str, limit: float) -> Check:
    b = _interval(base, key)
    c = _interval(cur, key)
    if b is None or c is None:
        return Check(metric, b and b[0], c and c[0], None, limit, False, False, "not measured")
    bs, cs = _series(base), _series(cur)
    if bs is not None and cs is not None:
        r = unpaired_ratio(cs, bs)
        rel = r.ratio - 1.0
        return Check(
            metric, b[0], c[0], rel, limit, rel > limit and r.above_one, r.above_one, ratio=r
        )
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
    if base.get("model", {}).get("sha256") != cur.get("model", {}).get("sha256"):
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
        MARKDOWN_TITLE,
        "",
        f"base best: `{base['best']['id']}` · current best: `{cur['best']['id']}`",
        "",
        "| metric | base | current | change [95% CI] | limit | result |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:
        if c.change is None:
            change = "—"
        elif c.metric.startswith("accuracy"):
            change = f"{c.change:+.4f}"
        elif c.ratio is not None and math.isfinite(c.ratio.high):
            lo, hi = (c.ratio.low - 1) * 100, (c.ratio.high - 1) * 100
            change = f"{c.change * 100:+.1f}% [{lo:+.1f}%, {hi:+.1f}%]"
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
    if any(c.ratio is not None for c in checks):
        lines.append(
            "\nchange: current over base of the best variant's per-trial figures (window "
            "medians for latency), Welch t 95% interval on the logs; a regression needs the "
            "whole interval above 0% and the change past the limit."
        )
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
