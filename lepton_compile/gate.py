"""CI perf gate: fail on a latency, energy or accuracy regression beyond noise between reports.

Two reports come from two runs, so their trials were not shared: the gate compares the
best variant's per-trial figures of each run as a ratio of geometric means with a Welch t
interval on the log values (``bench.stats.unpaired_ratio``). A regression is claimed only
when the whole interval lies above 1 and the ratio passes the limit. Reports written
before per-trial figures were kept fall back to the two means and their 95% CIs.

Like with like: when the current report has a serving recommendation (a variant at a batch
size), the gate compares that variant at that batch with the same variant at the same batch
in the base report (latency of one batch call, energy per inference). A base without that
point is compared at its own pick, with a warning.

Formats: Markdown (the table, for a PR comment or a job summary), GitHub Actions workflow
commands (an annotation per regression and warning, then the table) and JSON.
"""

from __future__ import annotations

import json
import math
import secrets
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
    _validate_serving(rep, variants, bad)


def _is_batch(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _validate_serving(rep: dict[str, Any], variants: list[dict[str, Any]], bad: Any) -> None:
    """The serving profile's parts the gate reads (absent in reports without one)."""
    for v in variants:
        points = v.get("serving")
        if points is None:
            continue
        if not isinstance(points, dict) or not all(isinstance(p, dict) for p in points.values()):
            raise bad(f"{v.get('id')}.serving is not an object of batch sizes")
        for b, point in points.items():
            for key in ("latency_ms", "energy_j_per_inference"):
                d = point.get(key)
                if d is None:
                    continue
                if not isinstance(d, dict):
                    raise bad(f"{v.get('id')}.serving[{b}].{key} is not an object")
                for k in ("mean", "ci95"):
                    if d.get(k) is not None and not _is_number(d[k]):
                        raise bad(f"{v.get('id')}.serving[{b}].{key}.{k} is not a finite number")
    serving = rep.get("serving")
    if serving is None:
        return
    if not isinstance(serving, dict):
        raise bad("'serving' is not an object")
    rec = serving.get("recommendation")
    if rec is None:
        return
    if not isinstance(rec, dict) or not isinstance(rec.get("variant"), str):
        raise bad("'serving.recommendation' has no variant id")
    if not _is_batch(rec.get("batch")):
        raise bad("'serving.recommendation.batch' is not a batch size")
    if _serving_point(rep, rec["variant"], rec["batch"]) is None:
        raise bad(
            f"the serving pick {rec['variant']!r} at batch {rec['batch']} is not among "
            "its variant's serving points"
        )


def _best(rep: dict[str, Any]) -> dict[str, Any]:
    bid = rep["best"]["id"]
    return next(v for v in rep["variants"] if v["id"] == bid)


def _variant(rep: dict[str, Any], vid: str) -> dict[str, Any] | None:
    return next((v for v in rep["variants"] if v.get("id") == vid), None)


def _serving_point(rep: dict[str, Any], vid: str, batch: int) -> dict[str, Any] | None:
    """variant[vid]["serving"][str(batch)], or None when the report has no such point."""
    points = (_variant(rep, vid) or {}).get("serving")
    point = points.get(str(batch)) if isinstance(points, dict) else None
    return point if isinstance(point, dict) else None


def serving_pick(rep: dict[str, Any]) -> tuple[str, int] | None:
    """The report's serving recommendation as (variant id, batch), or None."""
    rec = (rep.get("serving") or {}).get("recommendation")
    if not isinstance(rec, dict):
        return None
    return rec["variant"], rec["batch"]


@dataclass
class ServingPair:
    """One variant at one batch size in both reports: what the gate compares like with like."""

    variant: str
    batch: int
    base_variant: dict[str, Any]
    cur_variant: dict[str, Any]
    base_point: dict[str, Any]
    cur_point: dict[str, Any]


def serving_pair(base: dict[str, Any], cur: dict[str, Any]) -> tuple[ServingPair | None, list[str]]:
    """The current serving pick and the base's point with the same variant id and batch, or
    None (and why, as warnings) when the gate must compare the two best variants instead."""
    pick = serving_pick(cur)
    if pick is None:
        if base.get("serving") is not None or cur.get("serving") is not None:
            return None, [
                "the current report has no serving recommendation: compared the best variants"
            ]
        return None, []
    vid, batch = pick
    cur_point = _serving_point(cur, vid, batch)
    if cur_point is None or cur_point.get("status", "ok") != "ok":
        return None, [
            f"the current serving pick {vid} at batch {batch} was not measured: compared the "
            "best variants"
        ]
    base_point = _serving_point(base, vid, batch)
    if base_point is None or base_point.get("status", "ok") != "ok":
        why = ""
        if base_point is not None:
            why = f" ({base_point.get('status')}: {base_point.get('reason') or 'no reason given'})"
        return None, [
            f"the base report has no {vid} at batch {batch}: compared at the base's own pick" + why
        ]
    warnings = []
    check = cur_point.get("batch_check")
    if isinstance(check, dict) and check.get("passed") is False:
        warnings.append(
            f"{vid} at batch {batch}: outputs differ from batch 1 in the current report"
            + (f" ({check['reason']})" if check.get("reason") else "")
        )
    pair = ServingPair(
        vid, batch, _variant(base, vid) or {}, _variant(cur, vid) or {}, base_point, cur_point
    )
    return pair, warnings


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
    batch: int | None = None  # the batch size compared, for a serving recommendation


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
    """Checks of cur's best against base's best, and warnings (e.g. different devices).

    With a serving recommendation in cur: that variant at that batch against the same
    variant at the same batch in base (see ``serving_pair``)."""
    pair, warnings = serving_pair(base, cur)
    bb, cb = _best(base), _best(cur)
    if pair is not None:
        bb, cb = pair.base_variant, pair.cur_variant
    if base.get("model", {}).get("sha256") != cur.get("model", {}).get("sha256"):
        warnings.append("the reports are of different models")
    bdev, cdev = base.get("device", {}), cur.get("device", {})
    if bdev.get("key") and cdev.get("key") and bdev["key"] != cdev["key"]:
        warnings.append(
            "the reports come from different device records: figures may not be comparable"
        )
    energy_key = "energy_j" if pair is None else "energy_j_per_inference"
    bsrc = bb if pair is None else pair.base_point
    csrc = cb if pair is None else pair.cur_point
    bm = (bsrc.get(energy_key) or {}).get("method")
    cm = (csrc.get(energy_key) or {}).get("method")
    if bm and cm and bm != cm:
        warnings.append(f"energy was obtained differently ({bm} vs {cm})")
    if pair is None:
        lat_label, en_label, en_key = (
            "latency_ms (mean)",
            "energy_j (per inference)",
            "per_inference",
        )
    else:
        lat_label = f"latency_ms per batch call (mean, batch {pair.batch})"
        en_label, en_key = f"energy_j per inference (mean, batch {pair.batch})", "mean"
    checks = [
        _timed_check(
            lat_label,
            bsrc.get("latency_ms"),
            csrc.get("latency_ms"),
            "mean",
            max_latency_regression,
        ),
        _timed_check(
            en_label, bsrc.get(energy_key), csrc.get(energy_key), en_key, max_energy_regression
        ),
    ]
    for c in checks:
        c.batch = pair.batch if pair is not None else None
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


def _verdict(c: Check) -> str:
    """'regression', 'within noise' (past the limit, not beyond noise), a note, or 'ok'."""
    if c.regressed:
        return "regression"
    if c.note:
        return c.note
    if c.change is not None and c.change > c.limit and not c.beyond_noise:
        return "within noise"
    return "ok"


def _is_absolute(c: Check) -> bool:
    # The accuracy drop is a difference of fractions; latency and energy changes are relative.
    return c.metric.startswith("accuracy")


def _change_text(c: Check) -> str:
    if c.change is None:
        return "—"
    if _is_absolute(c):
        return f"{c.change:+.4f}"
    if c.ratio is not None and math.isfinite(c.ratio.high):
        lo, hi = (c.ratio.low - 1) * 100, (c.ratio.high - 1) * 100
        return f"{c.change * 100:+.1f}% [{lo:+.1f}%, {hi:+.1f}%]"
    return f"{c.change * 100:+.1f}%"


def _limit_text(c: Check) -> str:
    return f"{c.limit:.4f}" if _is_absolute(c) else f"{c.limit * 100:.1f}%"


_MARKDOWN_RESULT = {"regression": "❌ regression", "within noise": "✅ within noise", "ok": "✅"}


def to_markdown(base: dict, cur: dict, checks: list[Check], warnings: list[str]) -> str:
    def fmt(x: float | None) -> str:
        return "—" if x is None else (f"{x:.6g}")

    batch = next((c.batch for c in checks if c.batch is not None), None)
    pick = serving_pick(cur)
    compared = f"base best: `{base['best']['id']}` · current best: `{cur['best']['id']}`"
    if batch is not None and pick is not None:
        compared = (
            f"compared like with like: `{pick[0]}` at batch {batch} in both reports (the "
            f"current serving recommendation) · {compared}"
        )
    lines = [
        MARKDOWN_TITLE,
        "",
        compared,
        "",
        "| metric | base | current | change [95% CI] | limit | result |",
        "|---|---|---|---|---|---|",
    ]
    for c in checks:
        verdict = _verdict(c)
        result = _MARKDOWN_RESULT.get(verdict, verdict)
        lines.append(
            f"| {c.metric} | {fmt(c.base)} | {fmt(c.cur)} | {_change_text(c)} | "
            f"{_limit_text(c)} | {result} |"
        )
    for w in warnings:
        lines.append(f"\n> warning: {w}")
    if any(c.ratio is not None for c in checks):
        whose = "the best variant's" if batch is None else f"the compared variant's (batch {batch})"
        lines.append(
            f"\nchange: current over base of {whose} per-trial figures (window "
            "medians for latency), Welch t 95% interval on the logs; a regression needs the "
            "whole interval above 0% and the change past the limit."
        )
    failed = any(c.regressed for c in checks)
    lines += ["", "**FAILED**" if failed else "**PASSED**", ""]
    return "\n".join(lines)


def _escape_data(text: str) -> str:
    """A workflow command's message, escaped as the GitHub Actions runner reads it back."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    # Properties (title=...) end at ',' and the message starts after '::': both are escaped too.
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _compared_text(base: dict, cur: dict, checks: list[Check]) -> str:
    batch = next((c.batch for c in checks if c.batch is not None), None)
    pick = serving_pick(cur)
    if batch is not None and pick is not None:
        return f"{pick[0]} at batch {batch} in both reports"
    return f"base best {base['best']['id']}, current best {cur['best']['id']}"


def to_github(
    base: dict,
    cur: dict,
    checks: list[Check],
    warnings: list[str],
    stop_token: str | None = None,
) -> str:
    """GitHub Actions workflow commands: ``::error`` per regression, ``::warning`` per
    warning, then the Markdown table for the job log.

    The table repeats text from the reports (variant ids, reasons), so it is printed between
    ``::stop-commands::`` and its token: a line of it that starts with ``::`` stays text and
    cannot become a command of the job.
    """
    lines = []
    compared = _compared_text(base, cur, checks)
    for c in checks:
        if not c.regressed:
            continue
        fmt = "{:.4f}" if _is_absolute(c) else "{:.6g}"
        figures = (
            f"base {fmt.format(c.base)} -> current {fmt.format(c.cur)}; "
            if c.base is not None and c.cur is not None
            else ""
        )
        message = (
            f"{c.metric}: {_change_text(c)} over the base, past the limit of {_limit_text(c)} "
            f"and beyond measurement noise ({figures}{compared})"
        )
        title = f"lepton-compile gate: {c.metric} regressed"
        lines.append(f"::error title={_escape_property(title)}::{_escape_data(message)}")
    for w in warnings:
        lines.append(
            f"::warning title={_escape_property('lepton-compile gate')}::{_escape_data(w)}"
        )
    token = stop_token or secrets.token_hex(16)
    lines += [f"::stop-commands::{token}", to_markdown(base, cur, checks, warnings)]
    lines.append(f"::{token}::")
    return "\n".join(lines)


GATE_SCHEMA = "lepton-compile/gate/v1"


def _metric_key(c: Check) -> str:
    # A stable name for machines: the display label carries the batch and the statistic.
    for key in ("latency", "energy", "accuracy"):
        if c.metric.startswith(key):
            return "accuracy_drop" if key == "accuracy" else key
    return c.metric


def _report_summary(rep: dict[str, Any]) -> dict[str, Any]:
    return {
        "best": rep["best"]["id"],
        "model_sha256": (rep.get("model") or {}).get("sha256"),
        "device": (rep.get("device") or {}).get("key"),
    }


def to_json(base: dict, cur: dict, checks: list[Check], warnings: list[str]) -> dict[str, Any]:
    """The gate's verdict as an object: what ``--format json`` prints."""
    batch = next((c.batch for c in checks if c.batch is not None), None)
    pick = serving_pick(cur)
    compared = None
    if batch is not None and pick is not None:
        compared = {"variant": pick[0], "batch": batch}
    return {
        "schema": GATE_SCHEMA,
        "passed": not any(c.regressed for c in checks),
        "base": _report_summary(base),
        "current": _report_summary(cur),
        "compared": compared,
        "checks": [
            {
                "metric": _metric_key(c),
                "label": c.metric,
                "base": c.base,
                "current": c.cur,
                "change": c.change,
                "change_kind": "absolute" if _is_absolute(c) else "relative",
                "limit": c.limit,
                "regressed": c.regressed,
                "beyond_noise": c.beyond_noise,
                "result": _verdict(c),
                "ratio": c.ratio.to_dict() if c.ratio is not None else None,
                "batch": c.batch,
            }
            for c in checks
        ],
        "warnings": list(warnings),
    }


FORMATS = ("markdown", "github", "json")


def render(fmt: str, base: dict, cur: dict, checks: list[Check], warnings: list[str]) -> str:
    """The gate's output in one of ``FORMATS``."""
    if fmt == "markdown":
        return to_markdown(base, cur, checks, warnings)
    if fmt == "github":
        return to_github(base, cur, checks, warnings)
    if fmt == "json":
        return json.dumps(to_json(base, cur, checks, warnings), indent=2, allow_nan=False)
    raise InputError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")


def evaluate(
    base_path: str | Path,
    cur_path: str | Path,
    max_latency_regression: float = 0.05,
    max_energy_regression: float = 0.05,
    max_accuracy_drop: float = 0.01,
) -> tuple[dict[str, Any], dict[str, Any], list[Check], list[str]]:
    """(base report, current report, checks, warnings): what every format is made from."""
    base = load_report(base_path)
    cur = load_report(cur_path)
    checks, warnings = compare(
        base, cur, max_latency_regression, max_energy_regression, max_accuracy_drop
    )
    return base, cur, checks, warnings
