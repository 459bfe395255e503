"""report.html and the notebook view: report.json dicts -> one self-contained HTML page.

The page holds the verdict, the Pareto plot (energy per inference against mean latency, 95% CI
bars both ways, the frontier as a step line, every point labelled, a hover title with the
variant's figures), the variants table, the serving profile (``serving_report``), a per-layer
sensitivity chart for each accuracy-aware recipe, how every figure was obtained, and the
device record. ``fragment`` is the part a notebook shows (``CompileResult._repr_html_``): the
verdict, the table and the plot, without a page around them.

The charts are hand-written SVG, in the style and with the axis helpers of
``serving_report``. A charting library would have to be inlined into every report (hundreds of
kilobytes of JavaScript, a second style to keep consistent, a dependency to audit); SVG draws
what these charts need with none, prints, survives being e-mailed or attached to a CI run, and
renders the same in a notebook, where scripts in output cells may be blocked. Nothing is
fetched: no script, stylesheet, font or image from the network; the hover text is SVG
``<title>``. Every renderer reads report.json dicts with ``.get``, so a report from an older
version or a partial one still renders.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_compile import serving_report
from lepton_compile.report import HEADERS, compression_records, device_line, rows
from lepton_compile.serving_report import PALETTE, _finite, _pm, _sig, _tick_label, _y_ticks

FRONTIER = PALETTE[1]  # red: on the Pareto frontier (as in earlier reports)
OTHER = PALETTE[8]  # grey: measured, not on the frontier
KEPT = PALETTE[1]  # a layer left in higher precision, or dense
COMPRESSED = "#9ecae1"  # a layer compressed as the recipe intends
# An axis turns logarithmic when its data span more than this factor.
LOG_SPAN = 5.0
# Layers drawn per sensitivity chart; the rest are counted, and listed in report.json.
MAX_LAYERS = 30

STYLE = """
.lepton-report{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",
 Arial,sans-serif;color:#222;line-height:1.4;max-width:1150px}
.lepton-report h1{font-size:1.5em;margin:.2em 0}
.lepton-report h2{font-size:1.2em;margin:1.4em 0 .4em;border-bottom:1px solid #ddd}
.lepton-report h3{font-size:1em;margin:1em 0 .3em}
.lepton-report table{border-collapse:collapse;font-size:.85em;margin:.4em 0}
.lepton-report td,.lepton-report th{padding:3px 6px;border-bottom:1px solid #e4e4e4;
 text-align:right;white-space:nowrap}
.lepton-report td:first-child,.lepton-report th:first-child,.lepton-report td.l,
.lepton-report th.l{text-align:left}
.lepton-report tr.best td{background:#fff6d5;font-weight:600}
.lepton-report tr.failed td,.lepton-report tr.rejected td{color:#a33}
.lepton-report tr.skipped td,.lepton-report tr.dropped td{color:#777}
.lepton-report .verdict{background:#f5f7fa;border-left:4px solid #1f77b4;padding:.5em .9em}
.lepton-report .estimated{background:#fff3e0;border-left:4px solid #ff7f0e;padding:.5em .9em}
.lepton-report .warn{color:#a33;font-weight:600}
.lepton-report .meta{color:#555;font-size:.9em}
.lepton-report dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;
 font-size:.9em;margin:.4em 0}
.lepton-report dt{color:#555}.lepton-report dd{margin:0}
.lepton-report code{font-size:.92em}
.lepton-report figcaption{font-size:.85em;color:#444;max-width:900px}
.lepton-report figure{margin:.6em 0}
"""


# --------------------------------------------------------------------------- small helpers


def _e(x: Any) -> str:
    return html.escape(str(x))


def _d(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _estimated_energy(report: dict[str, Any]) -> bool:
    """True when any energy figure in the report was not measured by a meter."""
    meter = _d(_d(report.get("measurement")).get("meter"))
    if meter.get("name") == "estimated":
        return True
    return any(
        _d(v.get("energy_j")).get("method") == "estimated"
        for v in report.get("variants") or []
        if isinstance(v, dict)
    )


def _energy_unit(max_j: float) -> tuple[str, float]:
    """The unit that keeps the plotted energies between about 1 and 1000."""
    if max_j >= 1:
        return "J", 1.0
    if max_j >= 1e-3:
        return "mJ", 1e3
    return "µJ", 1e6


def _ratio_txt(r: Any) -> str:
    """ "0.66x [0.54, 0.82]" from a ratio_to_original entry."""
    r = _d(r)
    if not _finite(r.get("ratio")):
        return "—"
    ci = r.get("ci95") or [None, None]
    lo, hi = (ci + [None, None])[:2] if isinstance(ci, list) else (None, None)
    span = f" [{lo:.2f}, {hi:.2f}]" if _finite(lo) and _finite(hi) else ""
    return f"{r['ratio']:.2f}x{span}"


def _bytes(n: Any) -> str:
    if not _finite(n):
        return "—"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def _text_width(s: str, size: float = 11.0) -> float:
    """Rough rendered width of sans-serif text (no font metrics without a browser)."""
    return 0.6 * size * len(s)


# --------------------------------------------------------------------------- axes


def _linear_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps), about ``n`` of them, within [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return [lo]
    mag = 10.0 ** math.floor(math.log10(span / n))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if span / (m * mag) <= n)
    first = math.ceil(lo / step - 1e-9)
    ticks = []
    k = first
    while k * step <= hi + 1e-9 * step:
        ticks.append(round(k * step, 12))
        k += 1
    return ticks


def _linear_label(t: float, ticks: list[float]) -> str:
    step = (ticks[1] - ticks[0]) if len(ticks) > 1 else abs(t) or 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    if not math.isclose(round(step, decimals), step, rel_tol=1e-6):
        decimals += 1  # 2.5-steps need one more
    return f"{t:.{decimals}f}"


@dataclass
class _Axis:
    """One plot axis: data range, scale (log10 or linear) and the pixel span it maps onto."""

    lo: float
    hi: float
    log: bool
    p0: float  # pixel of lo
    p1: float  # pixel of hi

    @classmethod
    def fit(cls, values: list[float], p0: float, p1: float, centres: list[float]) -> _Axis:
        """An axis over ``values`` (the means and their CI ends), with a margin; logarithmic
        when the ``centres`` (the means) span more than LOG_SPAN, where a linear axis would
        crowd the small ones into a corner."""
        pos = [v for v in values if v > 0]
        lo, hi = min(values), max(values)
        log = bool(pos) and min(centres) > 0 and max(centres) / min(centres) > LOG_SPAN
        if log:
            a, b = math.log10(min(pos)), math.log10(max(pos))
            pad = 0.05 * (b - a)
            return cls(10 ** (a - pad), 10 ** (b + pad), True, p0, p1)
        if hi - lo <= 1e-12 * max(abs(hi), 1e-30):
            half = 0.1 * abs(hi) or 1.0
            return cls(lo - half, hi + half, False, p0, p1)
        pad = 0.08 * (hi - lo)
        lo2 = lo - pad
        # A positive quantity's axis does not dip below zero for the margin's sake.
        if lo >= 0 > lo2:
            lo2 = 0.0
        return cls(lo2, hi + pad, False, p0, p1)

    def pos(self, v: float) -> float:
        """Pixel of ``v``, clamped to the axis (a CI end at or below 0 on a log axis sits on
        the axis' low end rather than stretching it)."""
        if self.log:
            if v <= 0:
                return self.p0
            f = (math.log10(v) - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        else:
            f = (v - self.lo) / (self.hi - self.lo)
        f = min(1.0, max(0.0, f))
        return self.p0 + f * (self.p1 - self.p0)

    def ticks(self) -> list[tuple[float, str]]:
        if self.log:
            ts = _y_ticks(self.lo, self.hi)
            if len(ts) >= 3:
                return [(t, _tick_label(t)) for t in ts]
            # Under a decade or two: round values, placed on the log scale.
        ts = [t for t in _linear_ticks(self.lo, self.hi) if t > 0 or not self.log]
        return [(t, _linear_label(t, ts)) for t in ts]


# --------------------------------------------------------------------------- Pareto plot


@dataclass
class _Point:
    v: dict[str, Any]
    lat: float
    lat_ci: float
    en: float  # in the plot's energy unit
    en_ci: float


def _plot_points(report: dict[str, Any]) -> tuple[list[_Point], str, float]:
    """The variants measured for both latency and energy, in the plot's energy unit."""
    raw = []
    for v in report.get("variants") or []:
        lat, en = _d(v.get("latency_ms")), _d(v.get("energy_j"))
        if _finite(lat.get("mean")) and _finite(en.get("per_inference")):
            raw.append(v)
    if not raw:
        return [], "J", 1.0
    unit, scale = _energy_unit(max(v["energy_j"]["per_inference"] for v in raw))
    pts = []
    for v in raw:
        lat, en = v["latency_ms"], v["energy_j"]
        lat_ci = lat.get("ci95") if _finite(lat.get("ci95")) else 0.0
        en_ci = en.get("ci95") if _finite(en.get("ci95")) else 0.0
        pts.append(_Point(v, lat["mean"], lat_ci, en["per_inference"] * scale, en_ci * scale))
    return pts, unit, scale


def _tooltip(report: dict[str, Any], p: _Point, unit: str) -> str:
    """The figures behind one point, as a hover title (one line per quantity)."""
    v = p.v
    lat, en, acc = _d(v.get("latency_ms")), _d(v.get("energy_j")), _d(v.get("accuracy"))
    state = [str(v.get("status", "?"))]
    if v.get("pareto"):
        state.append("on the Pareto frontier")
    if v.get("id") == _d(report.get("best")).get("id"):
        state.append("the pick")
    if v.get("id") == report.get("baseline"):
        state.append("the original")
    trials = lat.get("ci95_over") or (f"{en['n']} trials" if _finite(en.get("n")) else "")
    method = str(en.get("method") or "?")
    lines = [
        f"{v.get('id')} ({', '.join(state)})",
        f"latency: p50 {_sig(lat.get('p50'))} ms, mean {_pm(p.lat, p.lat_ci)} ms (95% CI"
        + (f", over {trials})" if trials else ")"),
        f"energy: {_pm(p.en, p.en_ci)} {unit}/inference (95% CI), "
        + ("ESTIMATED, not measured" if method == "estimated" else f"measured by {method}"),
        f"accuracy drop: {_num4(acc.get('drop'))}"
        + (f" (limit {_num4(acc.get('max_drop'))})" if _finite(acc.get("max_drop")) else ""),
        f"size: {_bytes(v.get('size_bytes'))}",
    ]
    ratios = _d(v.get("ratio_to_original"))
    if ratios:
        n = next((_d(r).get("n") for r in ratios.values() if _d(r).get("n")), None)
        parts = [f"{q} {_ratio_txt(r)}" for q, r in ratios.items()]
        lines.append(
            "vs original (paired, 95% CI): "
            + ", ".join(parts)
            + (f", {n} paired trials" if n else "")
        )
    if v.get("reason"):
        lines.append(str(v["reason"]))
    return "\n".join(lines)


def _num4(x: Any) -> str:
    """An accuracy drop: four decimals, or two significant digits below 0.001."""
    if not _finite(x):
        return "—"
    return f"{x:.2g}" if 0 < abs(x) < 1e-3 else f"{x:.4f}"


def pareto_svg(report: dict[str, Any]) -> str:
    """Energy per inference against mean latency for every measured variant: 95% CI bars both
    ways, the frontier as a step line, labels, the pick ringed, the original's figures as
    dashed guides; "" when nothing was measured."""
    pts, unit, _ = _plot_points(report)
    if not pts:
        return ""
    estimated = _estimated_energy(report)
    best_id = _d(report.get("best")).get("id")
    base_id = report.get("baseline")

    left, right, top, bottom = 78, 190, 22, 56
    w, h = 920, 470
    pw, ph = w - left - right, h - top - bottom
    xs = [q for p in pts for q in (p.lat, p.lat - p.lat_ci, p.lat + p.lat_ci)]
    ys = [q for p in pts for q in (p.en, p.en - p.en_ci, p.en + p.en_ci)]
    # A CI that reaches below a fifth of its mean (noise near the floor) would stretch a log
    # axis by decades; such ends are clipped to the axis instead.
    xs = [x for x in xs if x > 0.2 * min(p.lat for p in pts)] or xs
    ys = [y for y in ys if y > 0.2 * min(p.en for p in pts)] or ys
    ax = _Axis.fit(xs, left, left + pw, [p.lat for p in pts])
    ay = _Axis.fit(ys, top + ph, top, [p.en for p in pts])

    out = [
        f'<svg class="pareto" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'xmlns="http://www.w3.org/2000/svg" role="img" '
        'aria-label="energy per inference against latency" font-family="sans-serif">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fcfcfc" stroke="none"/>',
    ]
    for t, lab in ax.ticks():
        x = ax.pos(t)
        out.append(
            f'<line class="xtick" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph + 5}" '
            f'stroke="#e3e3e3"/><text class="xtick-label" x="{x:.1f}" y="{top + ph + 18}" '
            f'font-size="11" text-anchor="middle">{_e(lab)}</text>'
        )
    for t, lab in ay.ticks():
        y = ay.pos(t)
        out.append(
            f'<line class="ytick" x1="{left - 5}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" '
            f'stroke="#e3e3e3"/><text class="ytick-label" x="{left - 8}" y="{y + 4:.1f}" '
            f'font-size="11" text-anchor="end">{_e(lab)}</text>'
        )
    out.append(
        f'<line class="axis x" x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" '
        f'stroke="#000"/><line class="axis y" x1="{left}" y1="{top}" x2="{left}" '
        f'y2="{top + ph}" stroke="#000"/>'
    )
    x_label = "mean latency per inference (ms" + (", log scale)" if ax.log else ")")
    y_label = (
        f"energy per inference ({unit}"
        + (", estimated" if estimated else "")
        + (", log scale)" if ay.log else ")")
    )
    out.append(
        f'<text class="axis-label x" x="{left + pw / 2:.1f}" y="{h - 14}" font-size="12" '
        f'text-anchor="middle">{_e(x_label)}</text>'
        f'<text class="axis-label y" x="16" y="{top + ph / 2:.1f}" font-size="12" '
        f'text-anchor="middle" transform="rotate(-90 16 {top + ph / 2:.1f})">{_e(y_label)}</text>'
    )

    # The original's figures as guides: below and left of both lines is better on both.
    base = next((p for p in pts if p.v.get("id") == base_id), None)
    if base is not None:
        bx, by = ax.pos(base.lat), ay.pos(base.en)
        out.append(
            f'<g class="original-guides" stroke="#999" stroke-dasharray="3 3">'
            f'<line x1="{bx:.1f}" y1="{top}" x2="{bx:.1f}" y2="{top + ph}"/>'
            f'<line x1="{left}" y1="{by:.1f}" x2="{left + pw}" y2="{by:.1f}"/></g>'
        )

    # The frontier as a step line through the Pareto points by latency, from the top edge to
    # the right one. It is judged on latency, energy, accuracy drop and size, beyond noise, so
    # on these two axes it need not fall at every step.
    front = sorted((p for p in pts if p.v.get("pareto")), key=lambda p: p.lat)
    if front:
        d = [f"M{ax.pos(front[0].lat):.1f},{top}", f"V{ay.pos(front[0].en):.1f}"]
        for p in front[1:]:
            d += [f"H{ax.pos(p.lat):.1f}", f"V{ay.pos(p.en):.1f}"]
        d.append(f"H{left + pw}")
        out.append(
            f'<path class="frontier" d="{" ".join(d)}" fill="none" stroke="{FRONTIER}" '
            'stroke-width="1.5" stroke-dasharray="6 3" opacity="0.8"/>'
        )

    # Markers and CI bars first, labels after, so that no bar is drawn over a label.
    placed: list[tuple[float, float, float, float]] = []
    for p in pts:
        x, y = ax.pos(p.lat), ay.pos(p.en)
        placed.append((x - 6, y - 6, x + 6, y + 6))
    order = sorted(
        range(len(pts)),
        key=lambda i: (
            pts[i].v.get("id") != best_id,
            not pts[i].v.get("pareto"),
            pts[i].v.get("id") != base_id,
        ),
    )
    labels: dict[int, str] = {}
    for i in order:
        labels[i] = _label(pts[i], ax, ay, placed, (left, top, left + pw, top + ph), best_id)
    for p in pts:
        out.append(_point_svg(report, p, ax, ay, unit, best_id))
    # Labels last, over every bar and marker.
    out.append('<g class="labels">' + "".join(labels[i] for i in range(len(pts))) + "</g>")

    lx = left + pw + 18
    legend = [
        ("frontier", f'<circle cx="{lx + 6}" cy="{{y}}" r="5" fill="{FRONTIER}"/>'),
        ("measured", f'<circle cx="{lx + 6}" cy="{{y}}" r="5" fill="{OTHER}"/>'),
        (
            "dropped early",
            f'<circle cx="{lx + 6}" cy="{{y}}" r="5" fill="#fff" stroke="{OTHER}" '
            'stroke-width="1.5"/>',
        ),
        (
            "the pick",
            f'<circle cx="{lx + 6}" cy="{{y}}" r="9" fill="none" stroke="#000" stroke-width="2"/>',
        ),
        (
            "Pareto step line",
            f'<line x1="{lx - 2}" y1="{{y}}" x2="{lx + 14}" y2="{{y}}" stroke="{FRONTIER}" '
            'stroke-dasharray="6 3" stroke-width="1.5"/>',
        ),
        (
            "the original",
            f'<line x1="{lx - 2}" y1="{{y}}" x2="{lx + 14}" y2="{{y}}" stroke="#999" '
            'stroke-dasharray="3 3"/>',
        ),
        (
            "mean ± 95% CI",
            f'<line x1="{lx - 2}" y1="{{y}}" x2="{lx + 14}" y2="{{y}}" stroke="#444"/>',
        ),
    ]
    g = ['<g class="legend">']
    for k, (name, shape) in enumerate(legend):
        y = top + 10 + 22 * k
        g.append(shape.format(y=y))
        g.append(f'<text x="{lx + 22}" y="{y + 4}" font-size="11">{_e(name)}</text>')
    if estimated:
        y = top + 10 + 22 * len(legend) + 8
        g.append(
            f'<text class="estimated-mark" x="{lx - 2}" y="{y}" font-size="11" '
            f'fill="#b35900">energy: estimated,</text><text x="{lx - 2}" y="{y + 14}" '
            'font-size="11" fill="#b35900">not measured</text>'
        )
    g.append("</g>")
    out.append("".join(g))
    out.append("</svg>")
    return "".join(out)


def _label(
    p: _Point,
    ax: _Axis,
    ay: _Axis,
    placed: list[tuple[float, float, float, float]],
    box: tuple[float, float, float, float],
    best_id: Any,
) -> str:
    """The point's label at the first spot near it that overlaps no marker or label so far
    (right, left, above, below, then further out); a displaced label gets a leader line."""
    x, y = ax.pos(p.lat), ay.pos(p.en)
    vid = str(p.v.get("id"))
    best = vid == best_id
    text = ("★ " if best else "") + vid
    tw, th = _text_width(text, 11) + (6 if best else 0), 12.0
    spots = [(9, 4, "start"), (-9, 4, "end"), (0, -10, "middle"), (0, 18, "middle")]
    for k in range(1, 8):
        for sign in (1, -1):
            spots += [(9, 4 + sign * 14 * k, "start"), (-9, 4 + sign * 14 * k, "end")]
    chosen = None
    for dx, dy, anchor in spots:
        tx, ty = x + dx, y + dy
        x0 = tx if anchor == "start" else tx - tw if anchor == "end" else tx - tw / 2
        rect = (x0, ty - th + 2, x0 + tw, ty + 2)
        inside = rect[0] >= box[0] and rect[2] <= box[2] and box[1] - 8 <= rect[1] <= box[3]
        if inside and not any(_overlap(rect, r) for r in placed):
            chosen = (tx, ty, anchor, rect, dx, dy)
            break
    if chosen is None:  # crowded beyond the spots tried: right of the point, overlapping
        tx, ty = x + 9, y + 4
        chosen = (tx, ty, "start", (tx, ty - 10, tx + tw, ty + 2), 9, 4)
    tx, ty, anchor, rect, dx, dy = chosen
    placed.append(rect)
    leader = ""
    if abs(dy) > 14:
        ly = rect[1] + (th if dy < 0 else 0)
        leader = (
            f'<line class="leader" x1="{x:.1f}" y1="{y:.1f}" x2="{tx:.1f}" y2="{ly:.1f}" '
            'stroke="#bbb" stroke-width="0.8"/>'
        )
    weight = ' font-weight="bold"' if best else ""
    return (
        f'{leader}<text class="label" data-variant="{_e(vid)}" x="{tx:.1f}" y="{ty:.1f}" '
        'font-size="11" '
        f'text-anchor="{anchor}"{weight} stroke="#fff" stroke-width="3" paint-order="stroke" '
        f'stroke-linejoin="round">{_e(text)}</text>'
    )


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _ci_bar(axis: str, a: tuple[float, float], b: tuple[float, float], color: str) -> str:
    """A 95% interval from ``a`` to ``b`` along one axis, with a cap across it at each end."""
    line = '<line class="{}" x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}"/>'
    across = (0.0, 3.0) if axis == "ci-x" else (3.0, 0.0)  # the caps are perpendicular
    out = [line.format(f"ci {axis}", *a, *b, color)]
    for px, py in (a, b):
        dx, dy = across
        out.append(line.format("cap", px - dx, py - dy, px + dx, py + dy, color))
    return "".join(out)


def _point_svg(
    report: dict[str, Any], p: _Point, ax: _Axis, ay: _Axis, unit: str, best_id: Any
) -> str:
    v = p.v
    x, y = ax.pos(p.lat), ay.pos(p.en)
    color = FRONTIER if v.get("pareto") else OTHER
    hollow = v.get("status") != "ok"  # dropped by racing: figures over fewer trials
    parts = [
        f'<g class="point" data-variant="{_e(v.get("id"))}" data-status="{_e(v.get("status"))}"'
        f' data-pareto="{"true" if v.get("pareto") else "false"}">'
        f"<title>{_e(_tooltip(report, p, unit))}</title>"
    ]
    if p.lat_ci > 0:
        xa, xb = ax.pos(p.lat - p.lat_ci), ax.pos(p.lat + p.lat_ci)
        parts.append(_ci_bar("ci-x", (xa, y), (xb, y), color))
    if p.en_ci > 0:
        ya, yb = ay.pos(p.en - p.en_ci), ay.pos(p.en + p.en_ci)
        parts.append(_ci_bar("ci-y", (x, ya), (x, yb), color))
    fill = "#fff" if hollow else color
    parts.append(
        f'<circle class="marker" cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}" '
        f'stroke="{color}" stroke-width="1.5"/>'
    )
    if v.get("id") == best_id:
        parts.append(
            f'<circle class="best" cx="{x:.1f}" cy="{y:.1f}" r="9.5" fill="none" '
            'stroke="#000" stroke-width="2"/>'
        )
    parts.append("</g>")
    return "".join(parts)


# --------------------------------------------------------------------------- sensitivity


def _precisions(kind: str, rec: dict[str, Any]) -> tuple[str, str]:
    """(what a kept layer stays as, what a compressed layer becomes) for a search record."""
    if kind.startswith("prune") or rec.get("sensitivity_meaning"):
        return "kept dense", "pruned"
    for key, name in (
        ("int8", "INT8"),
        ("int4", "INT4"),
        ("fp16", "FP16"),
        ("bf16", "BF16"),
        ("fp8", "FP8"),
    ):
        if kind.startswith(key):
            return "kept in FP32", name
    return "kept uncompressed", "compressed"


def sensitivity_svg(recipe: str, rec: dict[str, Any]) -> str:
    """Horizontal bars of each probed layer's sensitivity, most sensitive first, coloured by
    whether the layer was kept (higher precision, or dense) or compressed; layers kept without
    being probed are listed too. "" when no layer was probed."""
    layers = [x for x in rec.get("layers") or [] if isinstance(x, dict)]
    probed = [x for x in layers if _finite(x.get("sensitivity"))]
    if not probed:
        return ""
    # The search's own ranking: the layers it keeps first. A negative sensitivity (keeping the
    # layer uncompressed made the drop worse, noise or interaction) sorts last.
    probed.sort(key=lambda x: -x["sensitivity"])
    shown = probed[:MAX_LAYERS]
    # Every kept layer is part of the answer, also one past the cut or one the ranking placed
    # by its group's mean without probing it: draw those too, after the ranked ones.
    shown += [x for x in layers if not x.get("compressed", True) and x not in shown]
    kept_txt, comp_txt = _precisions(str(rec.get("kind") or recipe), rec)
    meaning = rec.get("sensitivity_meaning") or (
        "accuracy drop removed by keeping this layer alone uncompressed"
    )

    names = [f"{x.get('name')} ({x.get('op_type', '?')})" for x in shown]
    label_w = min(340.0, max(_text_width(n, 11) for n in names) + 12)
    row = 17
    left, right, top = label_w + 8, 80, 34
    w = 900
    pw = w - left - right
    h = top + row * len(shown) + 46
    vals = [float(x["sensitivity"]) for x in probed]
    lo, hi = min(0.0, min(vals)), max(0.0, max(vals))
    if hi - lo <= 0:
        hi = lo + 1e-6
    ax = _Axis(lo, hi + 0.04 * (hi - lo), False, left, left + pw)
    zero = ax.pos(0.0)
    esc = _e(recipe)
    out = [
        f'<svg class="sensitivity" data-recipe="{esc}" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" xmlns="http://www.w3.org/2000/svg" role="img" '
        f'aria-label="per-layer sensitivity, {esc}" font-family="sans-serif">',
        f'<rect x="{left}" y="8" width="12" height="12" fill="{KEPT}"/>'
        f'<text x="{left + 17}" y="18" font-size="11">{_e(kept_txt)}</text>'
        f'<rect x="{left + 130}" y="8" width="12" height="12" fill="{COMPRESSED}"/>'
        f'<text x="{left + 147}" y="18" font-size="11">{_e(comp_txt)}</text>',
    ]
    base_y = top + row * len(shown)
    for t, lab in ax.ticks():
        x = ax.pos(t)
        out.append(
            f'<line class="xtick" x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{base_y + 4}" '
            f'stroke="#e3e3e3"/><text x="{x:.1f}" y="{base_y + 17}" font-size="11" '
            f'text-anchor="middle">{_e(lab)}</text>'
        )
    for i, (lay, name) in enumerate(zip(shown, names, strict=True)):
        y = top + row * i
        kept = not lay.get("compressed", True)
        s = lay.get("sensitivity")
        tip = (
            f"{name}: "
            + (f"sensitivity {s:.6f}" if _finite(s) else "not probed (ranked with its group)")
            + _if_kept(lay)
            + f"; {kept_txt if kept else comp_txt}"
        )
        if _text_width(name, 11) > label_w - 12:
            name = name[: int((label_w - 24) / 6.6)] + "…"  # the full name is in the title
        weight = ' font-weight="bold"' if kept else ""
        g = [
            f'<g class="layer" data-layer="{_e(lay.get("name"))}" '
            f'data-kept="{"true" if kept else "false"}"><title>{_e(tip)}</title>'
            f'<text class="layer-name" x="{left - 8}" y="{y + 12}" font-size="11" '
            f'text-anchor="end"{weight}>{_e(name)}</text>'
        ]
        if s is not None and _finite(s):
            xa, xb = sorted((zero, ax.pos(float(s))))
            g.append(
                f'<rect class="bar" x="{xa:.1f}" y="{y + 2}" width="{max(1.0, xb - xa):.1f}" '
                f'height="{row - 4}" fill="{KEPT if kept else COMPRESSED}"/>'
                f'<text x="{xb + 4:.1f}" y="{y + 12}" font-size="10" fill="#444">{s:.4g}</text>'
            )
        else:
            g.append(
                f'<text x="{zero + 4:.1f}" y="{y + 12}" font-size="10" fill="#777">'
                "not probed</text>"
            )
        g.append("</g>")
        out.append("".join(g))
    out.append(
        f'<line class="axis x" x1="{left}" y1="{base_y + 4}" x2="{left + pw}" y2="{base_y + 4}" '
        f'stroke="#000"/><line x1="{zero:.1f}" y1="{top - 4}" x2="{zero:.1f}" '
        f'y2="{base_y + 4}" stroke="#000"/>'
        f'<text class="axis-label x" x="{left + pw / 2:.1f}" y="{h - 8}" font-size="12" '
        f'text-anchor="middle">sensitivity: {_e(meaning)}</text>'
    )
    out.append("</svg>")
    return "".join(out)


def _if_kept(layer: dict[str, Any]) -> str:
    d = layer.get("drop_if_kept")
    return f"; drop if kept {d:.6f}" if _finite(d) else ""


def compression_html(report: dict[str, Any]) -> str:
    """A section per accuracy-search record: what was compressed and kept, and the chart."""

    recs = compression_records(report)
    if not recs:
        return ""
    parts = ["<h2>Compression, layer by layer</h2>"]
    for recipe, rec in recs.items():
        kind = str(rec.get("kind") or recipe)
        kept_txt, comp_txt = _precisions(kind, rec)
        total, done = rec.get("layers_total"), rec.get("layers_compressed")
        parts.append(
            f'<h3 class="compression" data-recipe="{_e(recipe)}">{_e(recipe)}: {_e(done)} of '
            f"{_e(total)} layers {_e(comp_txt)}</h3>"
        )
        facts = [
            f"drop with every layer {comp_txt}: {_num4(rec.get('drop_all_compressed'))}",
            f"final: {_num4(rec.get('drop_final'))} (search target "
            f"{_num4(rec.get('target_drop'))}, below the limit to leave room for the held-out "
            "check)",
        ]
        if _finite(rec.get("evaluations")):
            n = rec["evaluations"]
            facts.append(f"{n} evaluation{'s' * (n != 1)} in {_sig(rec.get('seconds'))} s")
        if rec.get("criterion"):
            facts.append(f"judged by {rec['criterion']}")
        parts.append("<p>" + "; ".join(_e(f) for f in facts) + ".</p>")
        if rec.get("stopped"):
            parts.append(f"<p class='meta'>Search: {_e(rec['stopped'])}.</p>")
        if rec.get("note"):
            parts.append(f"<p class='meta'>{_e(rec['note'])}.</p>")
        svg = sensitivity_svg(recipe, rec)
        if svg:
            kept = rec.get("layers_kept") or []
            parts.append(
                f"<figure>{svg}<figcaption>Each probed layer's sensitivity, most sensitive "
                f"first (at most {MAX_LAYERS}; all in report.json). Red: {_e(kept_txt)} "
                f"({len(kept)} layer{'s' if len(kept) != 1 else ''}"
                + (": " + _e(", ".join(map(str, kept[:12]))) + ("…" if len(kept) > 12 else ""))
                * bool(kept)
                + f"); blue: {_e(comp_txt)}.</figcaption></figure>"
            )
        else:
            parts.append(
                "<p class='meta'>No layer was probed: the drop with every layer "
                f"{_e(comp_txt)} already met the target, so none had to stay back.</p>"
            )
    return "".join(parts)


# --------------------------------------------------------------------------- page sections


def _verdict(report: dict[str, Any]) -> str:
    best = _d(report.get("best"))
    cons = _d(report.get("constraints"))
    parts = [
        f"<p><b>Best: {_e(best.get('id', '?'))}</b> ★ — {_e(best.get('reason', ''))}</p>",
        f"<p class='meta'>Objective: <b>{_e(report.get('objective', '?'))}</b>",
    ]
    if _finite(cons.get("max_accuracy_drop")):
        met = cons.get("met")
        parts.append(
            f"; accuracy drop at most {cons['max_accuracy_drop']:g}"
            + ("" if met is None else " (met)" if met else " — <span class='warn'>NOT met</span>")
        )
    ratios = _d(best.get("ratio_to_original"))
    if ratios and best.get("id") != report.get("baseline"):
        parts.append(
            "; vs the original (paired ratios, 95% CI): "
            + ", ".join(f"{_e(q)} {_e(_ratio_txt(r))}" for q, r in ratios.items())
        )
    if best.get("decided") is False:
        parts.append(
            "; <span class='warn'>undecided</span>: the trials allowed could not separate the "
            "leading candidates (see below)"
        )
    if best.get("batch") is not None:
        parts.append(f"; serve at batch {_e(best['batch'])}")
    parts.append(".</p>")
    return "<div class='verdict'>" + "".join(parts) + "</div>"


def _estimated_note(report: dict[str, Any]) -> str:
    if not _estimated_energy(report):
        return ""
    meter = _d(_d(report.get("measurement")).get("meter"))
    how = meter.get("summary") or meter.get("formula") or "a model of this machine's power"
    extra = f" It excludes {meter['excludes']}." if meter.get("excludes") else ""
    return (
        "<p class='estimated'><b>Energy figures are estimated, not measured</b> (marked "
        f"“est.” and “estimated”): {_e(how)}.{_e(extra)} Under such a model energy follows CPU "
        "time, so it ranks variants as latency does; measure on a machine with RAPL or NVML "
        "for figures to report.</p>"
    )


def _table(report: dict[str, Any]) -> str:

    best = _d(report.get("best")).get("id")
    head = "".join(f"<th>{_e(h)}</th>" for h in HEADERS)
    body = []
    for v, r in zip(report.get("variants") or [], rows(report), strict=True):
        cls = " ".join(c for c in (str(v.get("status")), "best" if v["id"] == best else "") if c)
        title = f' title="{_e(v["reason"])}"' if v.get("reason") else ""
        body.append(
            f'<tr class="{_e(cls)}"{title}>' + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>"
        )
    return (
        "<div style='overflow-x:auto'>"
        f"<table class='variants'><tr>{head}</tr>{''.join(body)}</table></div>"
    )


def _pareto_figure(report: dict[str, Any]) -> str:
    svg = pareto_svg(report)
    if not svg:
        return "<p>No variant was measured: nothing to plot.</p>"
    est = " Energy is estimated (see the note above)." if _estimated_energy(report) else ""
    return (
        f"<figure>{svg}<figcaption>Each point is a variant: mean latency per inference and "
        "energy per inference, with bars of the 95% confidence interval of each mean over its "
        "trials. Red points are on the Pareto frontier, judged by paired ratios beyond noise on "
        "latency, energy, accuracy drop and size, so a red point may sit above the step line "
        "when it wins on size or accuracy; hollow points were dropped early by racing (fewer "
        "trials). The ringed ★ is the pick; dashed grey lines cross at the original's figures. "
        f"Hover a point for its figures.{est}</figcaption></figure>"
    )


def _how(report: dict[str, Any]) -> str:
    """How every figure was obtained: meter, protocol, trials, selection, accuracy."""
    meas = _d(report.get("measurement"))
    meter = _d(meas.get("meter"))
    proto = _d(meas.get("protocol"))
    racing = _d(meas.get("racing"))
    cons = _d(report.get("constraints"))
    items: list[tuple[str, str]] = []
    if meter:
        name = str(meter.get("name", "?"))
        txt = str(meter.get("summary") or name)
        if name == "estimated":
            txt = "ESTIMATED, not measured: " + txt
        for k in ("measures", "excludes", "note"):
            if meter.get(k):
                txt += f"; {k}: {meter[k]}"
        items.append(("energy meter", txt))
    if proto:
        bits = []
        if proto.get("warmup_runs") is not None:
            bits.append(f"{proto['warmup_runs']} warm-up runs ({_sig(proto.get('warmup_s'))} s)")
        if proto.get("min_trial_s") is not None:
            bits.append(
                f"trials of at least {_sig(proto['min_trial_s'])} s and "
                f"{proto.get('min_runs_per_trial', '?')} runs"
            )
        if racing:
            bits.append(
                f"{racing.get('min_trials', '?')} to {racing.get('max_trials', '?')} interleaved "
                f"trials within {_sig(racing.get('budget_s'))} s, order shuffled per trial "
                f"(seed {proto.get('seed', '?')})"
            )
        items.append(("protocol", "; ".join(bits) or json.dumps(proto, default=str)))
    items.append(
        (
            "latency",
            "wall time per inference; ± is the 95% confidence half-width of the mean over the "
            "per-trial means",
        )
    )
    items.append(
        (
            "energy",
            "joules per inference from the meter over each trial's window; ± as for latency",
        )
    )
    for d in report.get("decision") or []:
        d = _d(d)
        items.append(
            (
                f"trials on {d.get('race', '?')}",
                f"{d.get('trials', '?')} interleaved trials in {_sig(d.get('seconds'))} s; "
                + ("decided" if d.get("decided") else "UNDECIDED")
                + f": {d.get('reason', '')}",
            )
        )
    if meas.get("selection"):
        items.append(("selection rule", str(meas["selection"])))
    if racing:
        items.append(
            (
                "racing",
                f"a variant more than {racing.get('screen_factor', '?')}x slower than the "
                f"original in a {_sig(racing.get('screen_window_s'))} s screen is dropped; "
                "one clearly worse than another by paired ratio is dropped from later trials",
            )
        )
    if cons.get("accuracy_drop_definition"):
        items.append(
            (
                "accuracy",
                f"drop = {cons['accuracy_drop_definition']}; limit "
                f"{cons.get('max_accuracy_drop', '?')}",
            )
        )
    for key, label in (("feed", "feed"), ("reference", "accuracy reference")):
        if meas.get(key):
            items.append((label, str(meas[key])))
    iso = _d(meas.get("isolation"))
    if iso:
        items.append(
            (
                "isolation",
                ("a worker process per variant" if iso.get("isolated") else "in process")
                + (
                    f", {_sig(iso['variant_timeout_s'])} s per step"
                    if _finite(iso.get("variant_timeout_s"))
                    else ""
                )
                + (
                    f", {_bytes(iso['memory_limit_bytes'])} memory limit"
                    if _finite(iso.get("memory_limit_bytes"))
                    else ""
                ),
            )
        )
    if _finite(report.get("wall_s")):
        items.append(("run time", f"{report['wall_s']:.1f} s"))
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f"<h2>How each figure was obtained</h2><dl class='method'>{dl}</dl>"


def _device(report: dict[str, Any]) -> str:

    dev = _d(report.get("device"))
    if not dev:
        return ""
    cpu, osr, py = _d(dev.get("cpu")), _d(dev.get("os")), _d(dev.get("python"))
    items: list[tuple[str, str]] = [("device", device_line(dev))]
    if dev.get("key"):
        items.append(("record key", f"{dev['key']} (figures compare only under one key)"))
    if cpu:
        items.append(
            (
                "CPU",
                f"{cpu.get('model', '?')}; {cpu.get('sockets', '?')} socket(s), "
                f"{cpu.get('logical_cores', '?')} logical cores, "
                f"{cpu.get('threads_available', '?')} threads available"
                + (
                    f", cgroup limit {cpu['cgroup_cpu_limit']}"
                    if cpu.get("cgroup_cpu_limit")
                    else ""
                )
                + (f", governor {cpu['governor']}" if cpu.get("governor") else ""),
            )
        )
    for i, g in enumerate(dev.get("gpus") or []):
        g = _d(g)
        txt = ", ".join(
            f"{k} {_bytes(val) if k.endswith('_bytes') else val}"
            for k, val in g.items()
            if val is not None and k != "name" and not isinstance(val, (dict, list))
        )
        items.append((f"GPU {i}", f"{g.get('name', '?')}" + (f": {txt}" if txt else "")))
    if osr:
        items.append(
            ("OS", " ".join(str(osr.get(k, "")) for k in ("system", "release", "machine")))
        )
    if py:
        items.append(("Python", f"{py.get('implementation', '')} {py.get('version', '')}"))
    if dev.get("providers"):
        items.append(("providers", ", ".join(map(str, dev["providers"]))))
    pk = _d(dev.get("packages"))
    if pk:
        items.append(("packages", ", ".join(f"{k} {v}" for k, v in pk.items() if v)))
    if dev.get("key_changed_during_run"):
        items.append(
            (
                "warning",
                "the device record changed during the run (clocks, power limit or the like): "
                "figures from before and after may not compare",
            )
        )
    dl = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in items)
    return f"<h2>Device</h2><dl class='device'>{dl}</dl>"


def _model_line(report: dict[str, Any]) -> str:
    m = _d(report.get("model"))
    bits = []
    if m.get("sha256"):
        bits.append(f"sha256 <code>{_e(str(m['sha256'])[:16])}…</code>")
    if m.get("opset") is not None:
        bits.append(f"opset {_e(m['opset'])}")
    for i in m.get("inputs") or []:
        i = _d(i)
        shape = i.get("shape")
        dims = ", ".join(map(str, shape)) if isinstance(shape, list) else str(shape)
        bits.append(f"<code>{_e(i.get('name'))}</code> {_e(i.get('dtype'))}[{_e(dims)}]")
    tool = _d(report.get("tool"))
    if tool.get("version"):
        bits.append(f"lepton-compile {_e(tool['version'])}")
    if report.get("created"):
        bits.append(_e(report["created"]))
    return "<p class='meta'>" + "; ".join(bits) + "</p>"


def _lists(report: dict[str, Any]) -> str:
    parts = []
    kernels = [
        (v["id"], v["session"]["kernel_summary"])
        for v in report.get("variants") or []
        if _d(v.get("session")).get("kernel_summary")
    ]
    if kernels:
        parts.append("<h2>Layers on our kernels</h2><ul>")
        parts += [f"<li><code>{_e(i)}</code>: {_e(k)}</li>" for i, k in kernels]
        parts.append("</ul>")
    failed = [v for v in report.get("variants") or [] if v.get("reason")]
    if failed:
        parts.append("<h2>Not picked because</h2><ul class='reasons'>")
        parts += [
            f"<li><code>{_e(v['id'])}</code> ({_e(v.get('status'))}): {_e(v['reason'])}</li>"
            for v in failed
        ]
        parts.append("</ul>")
    notes = report.get("notes") or []
    if notes:
        parts.append("<h2>Notes</h2><ul class='notes'>")
        parts += [f"<li>{_e(n)}</li>" for n in notes]
        parts.append("</ul>")
    return "".join(parts)


def _title(report: dict[str, Any]) -> str:
    return Path(str(_d(report.get("model")).get("path", "model"))).name


# --------------------------------------------------------------------------- entry points


def page(report: dict[str, Any]) -> str:
    """The whole report.html: one file, nothing loaded from anywhere else."""
    body = "".join(
        [
            f"<h1>lepton-compile: {_e(_title(report))}</h1>",
            _model_line(report),
            _verdict(report),
            _estimated_note(report),
            "<h2>Energy against latency</h2>",
            _pareto_figure(report),
            "<h2>Variants</h2>",
            _table(report),
            "<p class='meta'>vs original: the ratio to the original on the objective (energy, "
            "else latency), paired trial by trial, with its 95% interval and trial count; below "
            "1 is better."
            + (" est.: estimated, not measured." if _estimated_energy(report) else "")
            + " ★ marks the pick.</p>",
            serving_report.html(report),
            compression_html(report),
            _how(report),
            _device(report),
            _lists(report),
        ]
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>lepton-compile: {_e(_title(report))}</title><style>{STYLE}"
        "body{margin:1.5em 2em}</style></head>"
        f"<body><div class='lepton-report'>{body}</div></body></html>\n"
    )


def fragment(report: dict[str, Any]) -> str:
    """The notebook view: verdict, estimated-energy note, table and Pareto plot, in one
    ``<div>`` with its own scoped style (no page around it)."""
    return (
        f"<div class='lepton-report'><style>{STYLE}</style>"
        f"<h3>lepton-compile: {_e(_title(report))}</h3>"
        + _verdict(report)
        + _estimated_note(report)
        + _table(report)
        + _pareto_figure(report)
        + "</div>"
    )
