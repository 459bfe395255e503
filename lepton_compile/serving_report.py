"""The serving profile in report.md and report.html: each variant at several batch sizes.

Renders ``report["serving"]`` and each variant's ``variant["serving"]`` (keys are the batch
sizes as strings) from report.json dicts alone: a batch table for report.md (energy per
inference, p99 latency of one batch call, throughput, per batch size) with the recommendation
and the notes, and for report.html an inline SVG of energy per inference against batch size,
both axes logarithmic, with 95% CI bars. No JavaScript, nothing fetched: the page stays
self-contained. A report without a serving profile renders nothing here.
"""

from __future__ import annotations

import html as _html
import math
from typing import Any

from lepton_compile.markdown import table as markdown_table

# Series colours, cycled (colour-blind friendly first).
PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#9467bd",
    "#ff7f0e",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _obj(d: dict[str, Any], key: str) -> dict[str, Any]:
    x = d.get(key)
    return x if isinstance(x, dict) else {}


def _serving(report: dict[str, Any]) -> dict[str, Any] | None:
    s = report.get("serving")
    return s if isinstance(s, dict) else None


def _points(report: dict[str, Any]) -> list[tuple[str, dict[int, dict[str, Any]]]]:
    """(variant id, {batch: point}) for each variant with serving data, in report order."""
    out = []
    for v in report.get("variants") or []:
        s = v.get("serving") if isinstance(v, dict) else None
        if not isinstance(s, dict):
            continue
        pts: dict[int, dict[str, Any]] = {}
        for key, p in s.items():
            if not isinstance(p, dict):
                continue
            raw: Any = p.get("batch", key)
            try:
                b = int(raw)
            except (TypeError, ValueError):
                continue
            if b > 0:
                pts[b] = p
        if pts:
            out.append((str(v.get("id")), pts))
    return out


def _batches(report: dict[str, Any], points: list[tuple[str, dict[int, Any]]]) -> list[int]:
    sizes = {b for _, pts in points for b in pts}
    for b in (_serving(report) or {}).get("batch_sizes") or []:
        if isinstance(b, int) and not isinstance(b, bool) and b > 0:
            sizes.add(b)
    return sorted(sizes)


def _energy(p: dict[str, Any]) -> tuple[float, float] | None:
    """(mean, ci95) of energy per inference in J, for a point measured ok."""
    if p.get("status") != "ok":
        return None
    e = p.get("energy_j_per_inference")
    if not isinstance(e, dict) or not _finite(e.get("mean")) or e["mean"] <= 0:
        return None
    ci: Any = e.get("ci95")
    return float(e["mean"]), float(ci) if _finite(ci) and ci > 0 else 0.0


def _estimated(p: dict[str, Any]) -> bool:
    e = p.get("energy_j_per_inference")
    if not isinstance(e, dict):
        return False
    return e.get("estimated") is True or str(e.get("method") or "").startswith("estimated")


def _recommended(report: dict[str, Any]) -> tuple[str, int] | None:
    rec = (_serving(report) or {}).get("recommendation")
    if not isinstance(rec, dict) or not isinstance(rec.get("variant"), str):
        return None
    b = rec.get("batch")
    if not isinstance(b, int) or isinstance(b, bool):
        return None
    return rec["variant"], b


def _sig(x: Any) -> str:
    """About three significant figures, never in exponent form for the usual ranges."""
    if not _finite(x):
        return "—"
    a = abs(x)
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _pm(mean: float, ci: float) -> str:
    """ "42.0 ± 1.0": the half-width to the mean's decimals."""
    m = _sig(mean)
    decimals = len(m.split(".")[1]) if "." in m and "e" not in m else 0
    return f"{m} ± {ci:.{decimals}f}"


def _not_ok(p: dict[str, Any]) -> str:
    return str(p.get("status") or "failed")


def _reason(p: dict[str, Any]) -> str:
    return str(p.get("reason") or "no reason given")


# --------------------------------------------------------------------------- Markdown


def markdown(report: dict[str, Any]) -> list[str]:
    """Lines for report.md after the variants table: the batch table, the recommendation and
    the notes; [] when the report has no serving profile."""
    serving = _serving(report)
    if serving is None:
        return []
    points = _points(report)
    batches = _batches(report, points)
    pick = _recommended(report)
    lines = ["", "### Serving profile: " + ", ".join(f"batch {b}" for b in batches), ""]
    if serving.get("pinned") is not None:
        lines += [f"Batch fixed at {serving['pinned']} by the model.", ""]
    requested = serving.get("requested")
    if requested and list(requested) != list(serving.get("batch_sizes") or []):
        lines += [
            "Requested batch sizes "
            + ", ".join(str(b) for b in requested)
            + "; measured "
            + (", ".join(str(b) for b in serving.get("batch_sizes") or []) or "none")
            + ".",
            "",
        ]
    if points and batches:
        head = ["variant"]
        for b in batches:
            head += [f"b={b} mJ/inf", f"b={b} p99 ms", f"b={b} inf/s"]
        body = []
        for vid, pts in points:
            row = [f"`{vid}`"]
            for b in batches:
                row += _markdown_cells(pts.get(b), pick == (vid, b))
            body.append(row)
        lines += markdown_table(head, body)
    rec = serving.get("recommendation")
    if isinstance(rec, dict) and rec.get("text"):
        lines += ["", f"**Serving recommendation:** {rec['text']}"]
    else:
        lines += ["", "No serving recommendation in this run."]
    notes = [str(n) for n in serving.get("notes") or []]
    for vid, pts in points:
        for b in sorted(pts):
            if pts[b].get("status") != "ok":
                notes.append(f"`{vid}` at batch {b}: {_not_ok(pts[b])} — {_reason(pts[b])}")
            check = pts[b].get("batch_check")
            if isinstance(check, dict) and check.get("passed") is False:
                notes.append(
                    f"`{vid}` at batch {b}: outputs differ from batch 1 "
                    f"({check.get('reason') or 'drop ' + _sig(check.get('drop'))})"
                )
    if _finite(serving.get("wall_s")):
        notes.append(f"the serving profile added {serving['wall_s']:.1f} s to the run")
    if notes:
        lines += ["", "Serving notes:", ""] + [f"- {n}" for n in notes]
    lines += [
        "",
        "Serving: per batch size, energy per inference in mJ (one batch call's energy over the "
        "batch, mean ± 95% CI; est.: estimated, not metered), p99 latency of one batch call, "
        "and throughput in inferences per second (batch × 1000 / mean latency). ◆ marks a "
        "point on the (variant, batch) Pareto frontier; bold, the recommendation.",
    ]
    return lines


def _markdown_cells(p: dict[str, Any] | None, picked: bool) -> list[str]:
    if p is None:
        return ["—", "—", "—"]
    if p.get("status") != "ok":
        return [_not_ok(p), "—", "—"]
    en = _energy(p)
    if en is None:
        e_txt = "—"
    else:
        e_txt = _pm(en[0] * 1e3, en[1] * 1e3)
        if _estimated(p):
            e_txt += " est."
    if p.get("pareto"):
        e_txt += " ◆"
    if picked:
        e_txt = f"**{e_txt}**"
    lat = _obj(p, "latency_ms")
    return [e_txt, _sig(lat.get("p99")), _sig(p.get("throughput_per_s"))]


# --------------------------------------------------------------------------- HTML / SVG


def _y_ticks(lo: float, hi: float) -> list[float]:
    """Tick values between lo and hi (J, > 0) on a log10 axis: decades, else 1-2-5 steps."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = [10.0**k for k in range(k0, k1 + 1) if lo <= 10.0**k <= hi]
    if len(decades) >= 2:
        return decades
    steps = [m * 10.0**k for k in range(k0, k1 + 1) for m in (1, 2, 5) if lo <= m * 10.0**k <= hi]
    if len(steps) >= 2:
        return steps
    return [lo, hi]


def _tick_label(v: float) -> str:
    return f"{float(f'{v:.2g}'):g}"  # 0.01, 0.002, 100, 1e-05


def html(report: dict[str, Any]) -> str:
    """A report.html section: J/inference against batch size per variant (log-log, CI bars,
    legend), the recommendation and the notes; "" when the report has no serving profile."""
    serving = _serving(report)
    if serving is None:
        return ""
    points = _points(report)
    pick = _recommended(report)
    parts = ["<h2>Serving profile</h2>"]
    svg = _svg(report, points, pick)
    if svg:
        parts.append(svg)
        parts.append(
            "<p>Energy per inference against batch size, both axes logarithmic. Bars: mean ± "
            "95% CI; filled: on the (variant, batch) Pareto frontier; ringed: the "
            "recommendation; ×: not measured at that batch (see below).</p>"
        )
    rec = serving.get("recommendation")
    if isinstance(rec, dict) and rec.get("text"):
        parts.append(f"<p>Serving recommendation: <b>{_html.escape(str(rec['text']))}</b></p>")
    else:
        parts.append("<p>No serving recommendation in this run.</p>")
    notes = [str(n) for n in serving.get("notes") or []]
    if serving.get("pinned") is not None:
        notes.insert(0, f"batch fixed at {serving['pinned']} by the model")
    for vid, pts in points:
        for b in sorted(pts):
            if pts[b].get("status") != "ok":
                notes.append(f"{vid} at batch {b}: {_not_ok(pts[b])} — {_reason(pts[b])}")
    if notes:
        parts.append("<ul>" + "".join(f"<li>{_html.escape(n)}</li>" for n in notes) + "</ul>")
    return "".join(parts)


def _svg(
    report: dict[str, Any],
    points: list[tuple[str, dict[int, dict[str, Any]]]],
    pick: tuple[str, int] | None,
) -> str:
    ok = [(vid, b, _energy(p)) for vid, pts in points for b, p in pts.items()]
    ok_pts = [(vid, b, e) for vid, b, e in ok if e is not None]
    if not ok_pts:
        return ""
    batches = _batches(report, points)
    estimated = any(_estimated(p) for _, pts in points for p in pts.values() if _energy(p))

    # y range (J, log10): the means and their CI bars; a lower bound at or below zero is
    # clipped to the plot's bottom rather than stretching the axis.
    means = [e[0] for _, _, e in ok_pts]
    lows = [e[0] - e[1] for _, _, e in ok_pts if e[0] - e[1] > 0.2 * e[0]]
    y_lo, y_hi = min(means + lows), max(e[0] + e[1] for _, _, e in ok_pts)
    ly0, ly1 = math.log10(y_lo), math.log10(y_hi)
    span = ly1 - ly0
    if span < 0.3:
        mid = (ly0 + ly1) / 2
        ly0, ly1 = mid - 0.15, mid + 0.15
    else:
        ly0, ly1 = ly0 - 0.05 * span, ly1 + 0.05 * span
    lx0, lx1 = math.log2(batches[0]), math.log2(batches[-1])
    if lx1 - lx0 < 1:
        lx0, lx1 = lx0 - 0.5, lx1 + 0.5
    else:
        lx0, lx1 = lx0 - 0.25, lx1 + 0.25

    left, right, top, bottom = 70, 220, 20, 50
    w = 720
    h = max(340, top + 18 * len(points) + bottom)
    pw, ph = w - left - right, h - top - bottom

    def sx(b: float) -> float:
        return left + (math.log2(b) - lx0) / (lx1 - lx0) * pw

    def sy(y: float) -> float:
        if y <= 0:
            return float(top + ph)
        return min(top + ph, max(top, top + ph - (math.log10(y) - ly0) / (ly1 - ly0) * ph))

    out = [
        f'<svg class="serving" width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg" '
        'role="img" aria-label="energy per inference against batch size">',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#000"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#000"/>',
    ]
    for b in batches:
        x = sx(b)
        out.append(
            f'<line class="xtick" x1="{x:.1f}" y1="{top + ph}" x2="{x:.1f}" y2="{top + ph + 5}" '
            f'stroke="#000"/><text x="{x:.1f}" y="{top + ph + 18}" font-size="11" '
            f'text-anchor="middle">{b}</text>'
        )
    for t in _y_ticks(10.0**ly0, 10.0**ly1):
        y = sy(t)
        out.append(
            f'<line class="ytick" x1="{left - 5}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
            f'stroke="#ddd"/><text x="{left - 8}" y="{y + 4:.1f}" font-size="11" '
            f'text-anchor="end">{_tick_label(t)}</text>'
        )
    y_label = "J / inference" + (" (estimated)" if estimated else "")
    out.append(
        f'<text x="{left + pw / 2:.1f}" y="{h - 10}" font-size="12" '
        'text-anchor="middle">batch size</text>'
        f'<text x="14" y="{top + ph / 2:.1f}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">{_html.escape(y_label)}</text>'
    )

    legend_x = left + pw + 20
    for i, (vid, pts) in enumerate(points):
        color = PALETTE[i % len(PALETTE)]
        esc = _html.escape(vid)
        ly = top + 10 + 18 * i
        series = [(b, pts[b], _energy(pts[b])) for b in sorted(pts)]
        drawn = [(b, p, e) for b, p, e in series if e is not None]
        if drawn:
            g = [f'<g class="series" data-variant="{esc}">']
            line = " ".join(f"{sx(b):.1f},{sy(e[0]):.1f}" for b, _, e in drawn)
            g.append(f'<polyline points="{line}" fill="none" stroke="{color}" stroke-width="1.5"/>')
            for b, p, (m, ci) in drawn:
                x, y = sx(b), sy(m)
                if ci > 0:
                    ya, yb = sy(m - ci), sy(m + ci)
                    g.append(
                        f'<line class="ci" x1="{x:.1f}" y1="{ya:.1f}" x2="{x:.1f}" '
                        f'y2="{yb:.1f}" stroke="{color}"/>'
                        f'<line class="cap" x1="{x - 4:.1f}" y1="{ya:.1f}" x2="{x + 4:.1f}" '
                        f'y2="{ya:.1f}" stroke="{color}"/>'
                        f'<line class="cap" x1="{x - 4:.1f}" y1="{yb:.1f}" x2="{x + 4:.1f}" '
                        f'y2="{yb:.1f}" stroke="{color}"/>'
                    )
                lat = _obj(p, "latency_ms")
                tip = (
                    f"{vid} at batch {b}: {_pm(m * 1e3, ci * 1e3)} mJ/inference"
                    f"{' (estimated)' if _estimated(p) else ''}, p99 {_sig(lat.get('p99'))} ms"
                    f", {_sig(p.get('throughput_per_s'))} inferences/s"
                )
                fill = color if p.get("pareto") else "#fff"
                g.append(
                    f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{fill}" '
                    f'stroke="{color}" stroke-width="1.5"><title>{_html.escape(tip)}</title>'
                    "</circle>"
                )
                if pick == (vid, b):
                    g.append(
                        f'<circle class="pick" cx="{x:.1f}" cy="{y:.1f}" r="9" fill="none" '
                        'stroke="#000" stroke-width="1.5"/>'
                    )
            g.append("</g>")
            out.append("".join(g))
            out.append(
                f'<g class="legend"><line x1="{legend_x}" y1="{ly}" x2="{legend_x + 18}" '
                f'y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{legend_x + 24}" '
                f'y="{ly + 4}" font-size="11">{esc}</text></g>'
            )
        else:
            out.append(
                f'<g class="legend"><text x="{legend_x + 24}" y="{ly + 4}" font-size="11" '
                f'fill="#888">{esc} (no batch measured)</text></g>'
            )
        for b, p, e in series:
            if e is None and p.get("status") != "ok":
                tip = f"{vid} at batch {b}: {_not_ok(p)} — {_reason(p)}"
                out.append(
                    f'<text class="failed" x="{sx(b):.1f}" y="{top + ph - 8}" font-size="12" '
                    f'text-anchor="middle" fill="{color}">×<title>{_html.escape(tip)}'
                    "</title></text>"
                )
    out.append("</svg>")
    return "".join(out)
