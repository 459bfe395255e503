"""fleet.json's rendering: fleet.md, fleet.html and the terminal table of ``lepton-compile
fleet`` (one row per model, the energy saved per million inferences, a bar chart of joules per
inference before and after), in the house style of report.html: hand SVG, nothing fetched."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

from lepton_compile.markdown import table as markdown_table
from lepton_compile.outdir import write_text
from lepton_compile.report_html import STYLE, _bytes, _energy_unit, _linear_ticks, _ratio_txt
from lepton_compile.serving_report import PALETTE, _finite, _sig, _tick_label, _y_ticks

J_PER_KWH = 3.6e6


def _d(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def _num(x: Any) -> float | None:
    """A finite number from report.json, else None (a report may hold null for a figure)."""
    return float(x) if _finite(x) else None


# --------------------------------------------------------------------------- text


def progress_line(index: int, total: int, row: dict[str, Any]) -> str:
    """ "[3/6] resnet50: fp16-ort-cpu 1.34x faster, -26% J/inf (est.) · 42 s"."""
    head = f"[{index}/{total}] {row['name']}: "
    tail = " · resumed" if row.get("resumed") else f" · {row.get('seconds') or 0:.0f} s"
    if row["status"] == "failed":
        return f"{head}FAILED: {row['reason']}{tail}"
    if row["status"] == "no gain":
        return f"{head}no gain, {row['pick']} kept ({row['reason']}){tail}"
    lat, en = _d(row.get("latency_ms")), _d(row.get("energy_j"))
    bits = []
    speedup = _num(lat.get("speedup"))
    if speedup is not None and speedup > 0:
        bits.append(f"{speedup:.2f}x faster" if speedup >= 1 else f"{1 / speedup:.2f}x slower")
    j0, j1 = _num(en.get("original")), _num(en.get("best"))
    if j0 is not None and j1 is not None and j0 > 0:
        bits.append(f"{(j1 / j0 - 1) * 100:+.0f}% J/inf" + (" (est.)" if en["estimated"] else ""))
    return f"{head}{row['pick']} " + ", ".join(bits) + tail


def _joules(x: Any) -> str:
    """Joules with the unit that keeps about three significant figures readable."""
    if not _finite(x):
        return "—"
    if x == 0:
        return "0 J"
    a = abs(x)
    for unit, scale in (("MJ", 1e-6), ("kJ", 1e-3), ("J", 1.0), ("mJ", 1e3), ("µJ", 1e6)):
        if a * scale >= 1:
            return f"{_sig(x * scale)} {unit}"
    return f"{_sig(x * 1e9)} nJ"


def _ms(x: Any) -> str:
    return f"{_sig(x)} ms" if _finite(x) else "—"


def _energy_cell(row: dict[str, Any], which: str) -> str:
    en = _d(row.get("energy_j"))
    text = _joules(en.get(which))
    if text != "—" and _d(en.get("method")).get(which) == "estimated":
        text += " (est.)"
    return text


def saved_text(summary: dict[str, Any]) -> str:
    """ "0.0123 kWh (44.3 kJ) per million inferences, estimated"."""
    s = _d(_d(summary.get("totals")).get("energy_saved_per_million"))
    if not s.get("models"):
        return "no model has both energy figures"
    kwh = s.get("kwh", 0.0)
    return (
        f"{kwh:.3g} kWh ({_joules(s.get('joules'))}) per million inferences over "
        f"{s['models']} model{'s' if s['models'] != 1 else ''}"
        + (", estimated (not measured)" if s.get("estimated") else "")
    )


HEADERS = [
    "model",
    "status",
    "pick",
    "J/inf original",
    "J/inf best",
    "energy method",
    "latency original",
    "latency best",
    "latency best/original [95% CI]",
    "size original",
    "size best",
    "resumed",
    "reason",
]

TERMINAL_HEADERS = [
    "model",
    "status",
    "pick",
    "J/inf original",
    "J/inf best",
    "latency best/original [95% CI]",
    "size best",
    "resumed",
]


def rows(summary: dict[str, Any]) -> list[list[str]]:
    """Table rows shared by the Markdown, HTML and terminal renderings."""
    out = []
    for r in summary.get("models") or []:
        lat, size = _d(r.get("latency_ms")), _d(r.get("size_bytes"))
        methods = sorted({str(m) for m in _d(_d(r.get("energy_j")).get("method")).values() if m})
        name, shown = str(r.get("name")), str(r.get("model"))
        out.append(
            [
                # The file beside the folder name where the name alone does not say it.
                name if shown in (f"{name}.onnx", name) else f"{name} ({shown})",
                str(r.get("status")),
                str(r.get("pick") or "—"),
                _energy_cell(r, "original"),
                _energy_cell(r, "best"),
                ", ".join(methods) or "—",
                _ms(lat.get("original")),
                _ms(lat.get("best")),
                _ratio_txt(lat.get("ratio")) if lat.get("ratio") else "—",
                _bytes(size.get("original")),
                _bytes(size.get("best")),
                "yes" if r.get("resumed") else "",
                str(r.get("reason") or ""),
            ]
        )
    return out


def _counts(summary: dict[str, Any]) -> str:
    t = _d(summary.get("totals"))
    return (
        f"{t.get('models', 0)} models: {t.get('ok', 0)} ok, {t.get('no_gain', 0)} no gain, "
        f"{t.get('failed', 0)} failed; {t.get('resumed', 0)} resumed from an earlier run"
    )


def _title(summary: dict[str, Any]) -> str:
    src = summary.get("source")
    return (Path(src).name or str(src)) if src else "models"


METHOD_NOTE = (
    "Each model is its own compile (OUTDIR/<model>/report.json): J/inf and latency are the "
    "means of the original and of the pick in that run's interleaved trials, on that run's "
    "device and meter. 'latency best/original' is the pick's paired ratio to the original "
    "(report.json ratio_to_original, 95% interval), below 1 is faster. Energy saved per "
    "million inferences = sum over models of (original - best J/inference) x 1e6; "
    "est. marks a figure that was estimated, not measured. Resumed rows reuse the earlier "
    "output of the same model bytes and options."
)


def to_markdown(summary: dict[str, Any]) -> str:
    lines = [
        f"## lepton-compile fleet: {_title(summary)}",
        "",
        f"- {_counts(summary)}",
        f"- objective: **{summary.get('objective', '?')}**; executor: {summary.get('executor')}",
        f"- energy saved: **{saved_text(summary)}**",
        "",
        *markdown_table(HEADERS, rows(summary)),
        "",
        METHOD_NOTE,
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- fleet.html

ORIGINAL, BEST = PALETTE[8], PALETTE[0]
# The bar chart's axis turns logarithmic when the energies span more than this factor: on a
# linear one the small models' bars would be invisible beside the large ones.
BAR_LOG_SPAN = 30.0


def _e(x: Any) -> str:
    return html.escape(str(x))


def energy_bars_svg(summary: dict[str, Any]) -> str:
    """J/inference of the original and of the pick per model, as paired horizontal bars; a
    failed model is a row that says so. "" when no model has an energy figure."""
    models = [r for r in summary.get("models") or [] if isinstance(r, dict)]
    figures = [_num(_d(r.get("energy_j")).get(k)) for r in models for k in ("original", "best")]
    values = [v for v in figures if v is not None and v > 0]
    if not values:
        return ""
    unit, scale = _energy_unit(max(values))
    lo, hi = min(values) * scale, max(values) * scale
    log_axis = hi / lo > BAR_LOG_SPAN
    estimated = any(_d(r.get("energy_j")).get("estimated") for r in models)
    name_w = min(260, max(90, max(len(str(r.get("name"))) for r in models) * 7 + 12))
    left, right, top, bottom = name_w, 170, 34, 46
    pw, group = 480, 30
    w = left + pw + right
    h = top + group * len(models) + bottom
    if log_axis:
        a0, a1 = math.log10(lo) - 0.1, math.log10(hi) + 0.05
        ticks = [(t, _tick_label(t)) for t in _y_ticks(10**a0, 10**a1)]

        def x_of(v: float) -> float:
            f = (math.log10(v) - a0) / (a1 - a0) if v > 0 else 0.0
            return left + min(1.0, max(0.0, f)) * pw
    else:
        top_v = hi * 1.05
        ticks = [(t, f"{t:g}") for t in _linear_ticks(0.0, top_v)]

        def x_of(v: float) -> float:
            return left + min(1.0, max(0.0, v / top_v)) * pw

    out = [
        f'<svg class="fleet-energy" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'xmlns="http://www.w3.org/2000/svg" role="img" '
        'aria-label="energy per inference, original and best, per model" '
        'font-family="sans-serif">'
    ]
    for t, lab in ticks:
        x = x_of(t)
        out.append(
            f'<line class="xtick" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{h - bottom + 5}" '
            f'stroke="#e3e3e3"/><text x="{x:.1f}" y="{h - bottom + 18}" font-size="11" '
            f'text-anchor="middle">{_e(lab)}</text>'
        )
    out.append(
        f'<line class="axis" x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" '
        f'stroke="#000"/><line class="axis" x1="{left}" y1="{h - bottom}" x2="{left + pw}" '
        f'y2="{h - bottom}" stroke="#000"/>'
    )
    label = (
        f"energy per inference ({unit}"
        + (", estimated" if estimated else "")
        + (", log scale)" if log_axis else ")")
    )
    out.append(
        f'<text class="axis-label" x="{left + pw / 2:.1f}" y="{h - 8}" font-size="12" '
        f'text-anchor="middle">{_e(label)}</text>'
    )
    for k, (name, color) in enumerate((("original", ORIGINAL), ("best (the pick)", BEST))):
        lx = left + 150 * k
        out.append(
            f'<g class="legend"><rect x="{lx}" y="8" width="14" height="10" fill="{color}"/>'
            f'<text x="{lx + 20}" y="17" font-size="11">{_e(name)}</text></g>'
        )
    for i, r in enumerate(models):
        y = top + group * i + 4
        en = _d(r.get("energy_j"))
        g = [
            f'<g class="model" data-model="{_e(r.get("name"))}" '
            f'data-status="{_e(r.get("status"))}"><title>{_e(_bar_title(r))}</title>',
            f'<text x="{left - 8}" y="{y + 15}" font-size="11" text-anchor="end">'
            f"{_e(r.get('name'))}</text>",
        ]
        if r.get("status") == "failed":
            g.append(
                f'<text x="{left + 8}" y="{y + 15}" font-size="11" fill="#a33">failed: '
                f"{_e(_short(r.get('reason'), 70))}</text>"
            )
        for k, (which, color) in enumerate((("original", ORIGINAL), ("best", BEST))):
            v = _num(en.get(which))
            if v is None or v <= 0:
                continue
            by, x1 = y + 11 * k, x_of(v * scale)
            g.append(
                f'<rect class="bar {which}" x="{left}" y="{by}" width="{max(1.0, x1 - left):.1f}"'
                f' height="10" fill="{color}"/>'
                f'<text x="{x1 + 4:.1f}" y="{by + 9}" font-size="10" fill="#444">'
                f"{_e(_energy_cell(r, which))}</text>"
            )
        g.append("</g>")
        out.append("".join(g))
    out.append("</svg>")
    return "".join(out)


def _short(x: Any, n: int) -> str:
    s = str(x or "")
    return s if len(s) <= n else s[: n - 1] + "…"


def _bar_title(r: dict[str, Any]) -> str:
    lines = [f"{r.get('name')} ({r.get('model')}): {r.get('status')}"]
    if r.get("status") == "failed":
        return "\n".join([*lines, str(r.get("reason"))])
    lat = _d(r.get("latency_ms"))
    lines += [
        f"pick: {r.get('pick')}",
        f"J/inference: {_energy_cell(r, 'original')} -> {_energy_cell(r, 'best')}",
        f"latency: {_ms(lat.get('original'))} -> {_ms(lat.get('best'))}"
        + (f", ratio {_ratio_txt(lat['ratio'])}" if lat.get("ratio") else ""),
    ]
    if r.get("reason"):
        lines.append(str(r["reason"]))
    return "\n".join(lines)


def _html_table(summary: dict[str, Any]) -> str:
    left = {0, 1, 2, len(HEADERS) - 1}  # the words; the figures align right
    head = "".join(
        f"<th class='l'>{_e(h)}</th>" if i in left else f"<th>{_e(h)}</th>"
        for i, h in enumerate(HEADERS)
    )
    body = []
    for r, cells in zip(summary.get("models") or [], rows(summary), strict=True):
        status = str(r.get("status"))
        cls = {"ok": "ok", "no gain": "skipped", "failed": "failed"}.get(status, "")
        tds = [f"<td class='l'>{_e(c)}</td>" for c in cells[:3]]
        if r.get("output") and status != "failed":
            # The model's own report, beside this page in OUTDIR: a relative link, no fetch.
            link = f"{_e(r['output'])}/report.html"
            tds[0] = f"<td class='l'><a href='{link}'>{_e(cells[0])}</a></td>"
        tds += [f"<td>{_e(c)}</td>" for c in cells[3:-1]]
        tds.append(f"<td class='l'>{_e(cells[-1])}</td>")
        body.append(
            f'<tr class="model {cls}" data-model="{_e(r.get("name"))}" '
            f'data-status="{_e(status)}" title="{_e(r.get("reason") or r.get("model"))}">'
            + "".join(tds)
            + "</tr>"
        )
    return (
        "<div style='overflow-x:auto'>"
        f"<table class='fleet'><tr>{head}</tr>{''.join(body)}</table></div>"
    )


def to_html(summary: dict[str, Any]) -> str:
    """fleet.html: one file, nothing loaded from anywhere else (hand-written SVG)."""
    saved = _d(_d(summary.get("totals")).get("energy_saved_per_million"))
    svg = energy_bars_svg(summary)
    figure = (
        f"<figure>{svg}<figcaption>Energy per inference of each model's original (grey) and of "
        "its pick (blue), each from that model's own run; a model with no gain shows the same "
        "figure twice. Hover a model for its figures.</figcaption></figure>"
        if svg
        else "<p>No model was measured: nothing to plot.</p>"
    )
    estimated = (
        "<p class='estimated'><b>Energy figures are estimated, not measured</b> (marked "
        "“est.”) for at least one model: under an estimate energy follows CPU time; measure on "
        "a machine with RAPL or NVML for figures to report.</p>"
        if saved.get("estimated")
        or any(_d(r.get("energy_j")).get("estimated") for r in summary.get("models") or [])
        else ""
    )
    tool = _d(summary.get("tool"))
    body = "".join(
        [
            f"<h1>lepton-compile fleet: {_e(_title(summary))}</h1>",
            f"<p class='meta'>{_e(_counts(summary))}; objective {_e(summary.get('objective'))}; "
            f"executor {_e(summary.get('executor'))}; lepton-compile {_e(tool.get('version'))}; "
            f"{_e(summary.get('created', ''))}</p>",
            f"<div class='verdict'><p><b>Energy saved: {_e(saved_text(summary))}</b></p>"
            "<p class='meta'>the sum over models of (original − best joules per inference) × "
            "10⁶</p></div>",
            estimated,
            "<h2>Energy per inference, original and best</h2>",
            figure,
            "<h2>Models</h2>",
            _html_table(summary),
            f"<p class='meta'>{_e(METHOD_NOTE)}</p>",
        ]
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>lepton-compile fleet: {_e(_title(summary))}</title><style>{STYLE}"
        "body{margin:1.5em 2em}</style></head>"
        f"<body><div class='lepton-report'>{body}</div></body></html>\n"
    )


def write_all(summary: dict[str, Any], outdir: Path) -> None:
    """fleet.json, fleet.md and fleet.html, each written atomically."""
    write_text(outdir / "fleet.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
    write_text(outdir / "fleet.md", to_markdown(summary))
    write_text(outdir / "fleet.html", to_html(summary))


def print_table(summary: dict[str, Any], console: Any) -> None:
    """The summary in the terminal (rich)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(
        title=f"lepton-compile fleet — objective: {summary.get('objective')}",
        title_justify="left",
    )
    # The columns a terminal has room for; fleet.md and fleet.html have them all.
    shown = [HEADERS.index(h) for h in TERMINAL_HEADERS]
    for h in TERMINAL_HEADERS:
        left = h in ("model", "status", "pick")
        t.add_column(h, justify="left" if left else "right", no_wrap=h == "pick")
    styles = {"ok": "", "no gain": "yellow", "failed": "red"}
    for cells in rows(summary):
        t.add_row(*(escape(cells[i]) for i in shown), style=styles.get(cells[1], ""))
    console.print(t)
    for r in summary.get("models") or []:
        if r.get("reason"):
            console.print(f"[dim]{escape(str(r['name']))} {r['status']}: {escape(r['reason'])}[/]")
    console.print(f"energy saved: [bold]{escape(saved_text(summary))}[/]")
