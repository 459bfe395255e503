"""The serving profile in report.md and report.html, rendered from report.json dicts alone."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from typing import Any

from lepton_compile import serving_report
from lepton_compile.report import SCHEMA, to_markdown
from lepton_compile.report_html import page as to_html

SVG_NS = "{http://www.w3.org/2000/svg}"
EST = "estimated: cpu time x tdp"


def point(
    batch: int,
    mj: float,
    ci_mj: float,
    p99: float,
    lat_mean: float,
    *,
    pareto: bool = False,
    method: str = EST,
) -> dict[str, Any]:
    return {
        "batch": batch,
        "status": "ok",
        "latency_ms": {
            "p50": lat_mean,
            "p90": p99 * 0.9,
            "p99": p99,
            "mean": lat_mean,
            "ci95": 0.1,
            "n": 5,
            "per_trial": [lat_mean] * 5,
        },
        "energy_j": {"per_inference": mj * batch / 1e3, "ci95": ci_mj * batch / 1e3},
        "throughput_per_s": batch * 1000.0 / lat_mean,
        "energy_j_per_inference": {
            "mean": mj / 1e3,
            "ci95": ci_mj / 1e3,
            "per_trial": [mj / 1e3] * 5,
            "method": method,
            "estimated": method.startswith("estimated"),
        },
        "ratio_to_original": None,
        "pareto": pareto,
        "batch_check": {"passed": True, "drop": 0.0001, "reason": ""},
        "roofline": None,
    }


def failed(batch: int, reason: str) -> dict[str, Any]:
    return {"batch": batch, "status": "failed", "reason": reason}


def variant(vid: str, serving: dict[int, dict] | None) -> dict[str, Any]:
    v: dict[str, Any] = {
        "id": vid,
        "recipe": {"name": vid.split("-")[0]},
        "status": "ok",
        "latency_ms": {"p50": 1.0, "mean": 1.0, "ci95": 0.01},
        "energy_j": {"per_inference": 0.3, "ci95": 0.01, "method": "estimated"},
        "accuracy": {"drop": 0.001},
        "size_bytes": 1_000_000,
        "pareto": True,
    }
    if serving is not None:
        v["serving"] = {str(b): p for b, p in serving.items()}
    return v


def report(with_serving: bool = True) -> dict[str, Any]:
    fused = {
        1: point(1, 310.0, 5.0, 1.2, 1.0),
        4: point(4, 120.0, 3.0, 3.0, 2.5),
        16: point(16, 42.0, 1.0, 8.1, 7.0, pareto=True),
    }
    int8 = {
        1: point(1, 250.0, 4.0, 1.1, 0.9, pareto=True),
        4: point(4, 90.0, 2.0, 2.8, 2.2, pareto=True),
        16: failed(16, "out of memory at batch 16"),
    }
    rep: dict[str, Any] = {
        "schema": SCHEMA,
        "model": {
            "path": "/models/bert.onnx",
            "sha256": "0123456789abcdef0123",
            "opset": 17,
            "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", 128]}],
        },
        "device": {"key": "dev1", "cpu": {"model": "cpu", "threads_available": 2}},
        "measurement": {"meter": {"name": "estimated", "summary": "estimated"}},
        "objective": "energy",
        "best": {"id": "fused-ort-cpu", "reason": "lowest energy"},
        "variants": [
            variant("original-ort-cpu", None),
            variant("fused-ort-cpu", fused if with_serving else None),
            variant("int8-ort-cpu", int8 if with_serving else None),
        ],
        "notes": ["a run note"],
    }
    if with_serving:
        rep["schema_minor"] = 1
        rep["serving"] = {
            "batch_sizes": [1, 4, 16],
            "requested": [1, 4, 16],
            "batch_inputs": ["input_ids"],
            "pinned": None,
            "notes": ["batch 64 not tried: above --max-batch"],
            "recommendation": {
                "variant": "fused-ort-cpu",
                "batch": 16,
                "energy_j_per_inference": 0.042,
                "p99_ms": 8.1,
                "max_latency_ms": 10.0,
                "text": "best: fused-ort-cpu at batch 16, 42 mJ/inference, p99 8.1 ms "
                "(limit 10 ms); at batch 1 the same variant takes 310 mJ",
            },
            "wall_s": 37.2,
        }
    return rep


def table(lines: list[str]) -> tuple[list[str], dict[str, list[str]]]:
    """The serving table's header cells and its rows by variant id."""
    rows = [ln for ln in lines if ln.startswith("| ")]
    head = [c.strip() for c in rows[0].strip("|").split("|")]
    body = {}
    for ln in rows[1:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        body[cells[0].strip("`")] = cells
    return head, body


# --------------------------------------------------------------------------- Markdown


def test_markdown_batch_table():
    lines = serving_report.markdown(report())
    head, body = table(lines)
    assert head[0] == "variant"
    assert head[1:4] == ["b=1 mJ/inf", "b=1 p99 ms", "b=1 inf/s"]
    assert head[-3:] == ["b=16 mJ/inf", "b=16 p99 ms", "b=16 inf/s"]
    assert len(head) == 1 + 3 * 3
    # Only variants with serving data get a row.
    assert set(body) == {"fused-ort-cpu", "int8-ort-cpu"}
    fused = body["fused-ort-cpu"]
    assert fused[1] == "310 ± 5 est."
    assert fused[2] == "1.20" and fused[3] == "1000"
    # The recommended cell is bold and marked on the frontier; throughput 16 * 1000 / 7.
    assert fused[7] == "**42.0 ± 1.0 est. ◆**"
    assert fused[8] == "8.10" and fused[9] == "2286"
    int8 = body["int8-ort-cpu"]
    assert int8[4] == "90.0 ± 2.0 est. ◆"
    assert int8[7:10] == ["failed", "—", "—"]


def test_markdown_recommendation_notes_and_failures():
    lines = serving_report.markdown(report())
    text = "\n".join(lines)
    assert "### Serving profile: batch 1, batch 4, batch 16" in text
    assert "**Serving recommendation:** best: fused-ort-cpu at batch 16, 42 mJ/inference" in text
    assert "- batch 64 not tried: above --max-batch" in text
    assert "- `int8-ort-cpu` at batch 16: failed — out of memory at batch 16" in text
    assert "37.2 s" in text


def test_markdown_measured_energy_is_not_marked_estimated():
    rep = report()
    rep["variants"][1]["serving"]["4"] = point(4, 120.0, 3.0, 3.0, 2.5, method="rapl")
    _, body = table(serving_report.markdown(rep))
    assert body["fused-ort-cpu"][4] == "120 ± 3"
    assert body["fused-ort-cpu"][1].endswith("est.")


def test_markdown_pinned_batch_and_no_recommendation():
    rep = report()
    rep["serving"].update(
        batch_sizes=[8], requested=[1, 8, 32], pinned=8, recommendation=None, notes=[]
    )
    for v in rep["variants"][1:]:
        v["serving"] = {"8": point(8, 60.0, 2.0, 5.0, 4.0)}
    text = "\n".join(serving_report.markdown(rep))
    assert "Batch fixed at 8 by the model." in text
    assert "Requested batch sizes 1, 8, 32; measured 8." in text
    assert "No serving recommendation" in text
    head, _ = table(serving_report.markdown(rep))
    assert head == ["variant", "b=8 mJ/inf", "b=8 p99 ms", "b=8 inf/s"]


def test_report_md_has_the_table_after_the_variants_table():
    md = to_markdown(report())
    main_table = md.index("| variant | status |")
    serving = md.index("### Serving profile")
    assert main_table < serving < md.index("Notes:")
    assert "| `fused-ort-cpu` | 310 ± 5 est." in md


def test_no_serving_adds_nothing():
    rep = report(with_serving=False)
    assert serving_report.markdown(rep) == []
    assert serving_report.html(rep) == ""
    md, page = to_markdown(rep), to_html(rep)
    assert "Serving" not in md and "serving" not in md
    assert "Serving" not in page and page.count("<svg") == 1  # the Pareto plot only


# --------------------------------------------------------------------------- HTML


def serving_svg(page: str) -> ET.Element:
    m = re.search(r'<svg class="serving".*?</svg>', page, re.S)
    assert m, "no serving plot"
    return ET.fromstring(m.group(0))  # well-formed XML, or this raises


def test_html_plot_has_a_series_per_variant_with_ci_bars():
    svg = serving_svg(serving_report.html(report()))
    series = svg.findall(f"{SVG_NS}g[@class='series']")
    assert [g.get("data-variant") for g in series] == ["fused-ort-cpu", "int8-ort-cpu"]
    for g, n_ok in zip(series, (3, 2), strict=True):
        lines = g.findall(f"{SVG_NS}polyline")
        assert len(lines) == 1
        assert len(lines[0].get("points", "").split()) == n_ok
        assert len(g.findall(f"{SVG_NS}circle[@class='point']")) == n_ok
        # One error bar per point (every point here has a CI), with two caps.
        bars = g.findall(f"{SVG_NS}line[@class='ci']")
        assert len(bars) == n_ok
        assert len(g.findall(f"{SVG_NS}line[@class='cap']")) == 2 * n_ok
        for bar in bars:
            assert float(bar.get("y1")) > float(bar.get("y2"))  # low end below the high end
    # The recommendation is ringed, the failed point marked with its reason.
    assert len(svg.findall(f".//{SVG_NS}circle[@class='pick']")) == 1
    failed = svg.findall(f"{SVG_NS}text[@class='failed']")
    assert len(failed) == 1
    assert "out of memory at batch 16" in failed[0].find(f"{SVG_NS}title").text
    legend = " ".join(t.text or "" for t in svg.iter(f"{SVG_NS}text"))
    assert "fused-ort-cpu" in legend and "int8-ort-cpu" in legend


def test_html_plot_axes_are_logarithmic_with_labels():
    svg = serving_svg(serving_report.html(report()))
    texts = [t.text for t in svg.iter(f"{SVG_NS}text")]
    assert "batch size" in texts
    assert "J / inference (estimated)" in texts
    # y ticks are decades (the data span 41 mJ to 315 mJ): 0.1 J lies within, in 1-2-5 steps.
    assert "0.1" in texts and "0.05" in texts and "0.2" in texts
    assert {"1", "4", "16"} <= set(texts)
    # Log2 on x: 1 -> 4 and 4 -> 16 are the same distance.
    fused = svg.find(f"{SVG_NS}g[@data-variant='fused-ort-cpu']")
    pts = [
        tuple(map(float, p.split(",")))
        for p in fused.find(f"{SVG_NS}polyline").get("points").split()
    ]
    (x1, y1), (x4, y4), (x16, y16) = pts
    assert math.isclose(x4 - x1, x16 - x4, abs_tol=0.2)
    # Log10 on y: 310 -> 120 -> 42 mJ; pixel distances follow the log ratios, not the
    # differences (linear would give 190:78, log gives 0.41:0.46).
    assert math.isclose(
        (y4 - y1) / (y16 - y4), math.log10(310 / 120) / math.log10(120 / 42), rel_tol=0.02
    )


def test_html_measured_energy_axis_label_is_plain():
    rep = report()
    for v in rep["variants"][1:]:
        for p in v["serving"].values():
            if "energy_j_per_inference" in p:
                p["energy_j_per_inference"].update(method="nvml", estimated=False)
    texts = [t.text for t in serving_svg(serving_report.html(rep)).iter(f"{SVG_NS}text")]
    assert "J / inference" in texts and "J / inference (estimated)" not in texts


def test_html_escapes_and_handles_a_variant_with_nothing_measured():
    rep = report()
    rep["variants"][2]["id"] = "int8<&>-ort"
    rep["variants"][2]["serving"] = {"1": failed(1, "load <failed> & died")}
    section = serving_report.html(rep)
    assert "int8&lt;&amp;&gt;-ort" in section and "int8<&>" not in section
    assert "load &lt;failed&gt; &amp; died" in section
    svg = serving_svg(section)
    assert len(svg.findall(f"{SVG_NS}g[@class='series']")) == 1
    assert any("(no batch measured)" in (t.text or "") for t in svg.iter(f"{SVG_NS}text"))


def test_report_html_has_the_plot_after_the_pareto_plot():
    page = to_html(report())
    assert page.count("<svg") == 2
    pareto = page.index("<svg")
    serving = page.index('<svg class="serving"')
    assert pareto < page.index("<h2>Serving profile</h2>") < serving
    assert "Serving recommendation: <b>best: fused-ort-cpu at batch 16" in page
