"""report.html and the notebook view, from a real run of the tool on the example model.

One run (API, ``--quick``, estimated meter, fp16 and int8-mixed under a drop limit tight enough
that the mixed-precision search has to probe layers) feeds every test. The page is rendered in
headless Chromium where it is installed: it must load without a console error, and the plot's
axes, points and CI bars must be in the DOM the browser built.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from lepton_compile import report_html
from lepton_compile.report import compression_records
from lepton_compile.report_html import page as to_html

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (apt-get install -y chromium): "
    "report.html is not rendered in a browser here",
)
# What Chromium logs to stderr for a page's console messages and uncaught exceptions.
# ("[...:INFO:CONSOLE:1] "message", source: ..." now; "CONSOLE(1)" in older releases).
CONSOLE = re.compile(r"CONSOLE[:(]\d+|Uncaught")
# Drop limit under int8's drop on the example model (about 6e-5 with every layer in INT8),
# so the search measures layer sensitivities and keeps some layers in FP32.
TIGHT_DROP = 4e-5


@pytest.fixture(scope="module")
def run(tinycnn_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import lepton_compile

    result = lepton_compile.compile(
        tinycnn_path,
        recipes=["fp16", "int8-mixed"],
        quick=True,
        meter="estimate",
        max_accuracy_drop=TIGHT_DROP,
        screen_factor=None,  # every variant measured, however slow on this machine
        cache=False,
    )
    out = result.save(tmp_path_factory.mktemp("report") / "tinycnn.lepton")
    return {
        "result": result,
        "out": out,
        "report": json.loads((out / "report.json").read_text(encoding="utf-8")),
        "html": (out / "report.html").read_text(encoding="utf-8"),
    }


# --------------------------------------------------------------------------- the DOM


class Element:
    def __init__(self, tag: str, attrs: dict[str, str], parent: Element | None):
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[Element] = []
        self.text = ""

    @property
    def classes(self) -> set[str]:
        return set((self.attrs.get("class") or "").split())

    def iter(self, tag: str | None = None, cls: str | None = None) -> list[Element]:
        out = []
        for c in self.children:
            if (tag is None or c.tag == tag) and (cls is None or cls in c.classes):
                out.append(c)
            out += c.iter(tag, cls)
        return out

    def all_text(self) -> str:
        return self.text + "".join(c.all_text() for c in self.children)


class Tree(HTMLParser):
    """The element tree of an HTML document (stdlib parser; SVG elements keep their tags)."""

    VOID = {"meta", "br", "img", "link", "input", "hr", "source", "wbr", "col", "area", "base"}

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.root = Element("#root", {}, None)
        self.cur = self.root
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        el = Element(tag, {k: v or "" for k, v in attrs}, self.cur)
        self.cur.children.append(el)
        if tag not in self.VOID:
            self.cur = el

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.cur.children.append(Element(tag, {k: v or "" for k, v in attrs}, self.cur))

    def handle_endtag(self, tag: str) -> None:
        el: Element | None = self.cur
        while el is not None and el.tag != tag:
            el = el.parent
        if el is not None and el.parent is not None:
            self.cur = el.parent

    def handle_data(self, data: str) -> None:
        self.cur.text += data


def render(page: Path, profile: Path) -> tuple[str, list[str]]:
    """The DOM Chromium built from ``page``, and the console lines it logged."""
    assert CHROMIUM is not None
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless=new",
            "--disable-gpu",
            "--no-sandbox",
            "--no-first-run",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--log-level=0",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [ln for ln in done.stderr.splitlines() if CONSOLE.search(ln)]


@pytest.fixture(scope="module")
def dom(run: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if CHROMIUM is None:
        pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")
    text, console = render(run["out"] / "report.html", tmp_path_factory.mktemp("chromium"))
    return {"tree": Tree(text).root, "console": console, "text": text}


def measured(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The variants the Pareto plot must show: measured for latency and energy."""
    return [
        v
        for v in report["variants"]
        if (v.get("latency_ms") or {}).get("mean") is not None
        and (v.get("energy_j") or {}).get("per_inference") is not None
    ]


def pareto_svg(root: Element) -> Element:
    svgs = root.iter("svg", "pareto")
    assert len(svgs) == 1, "one Pareto plot"
    return svgs[0]


# --------------------------------------------------------------------------- in the browser


@needs_chromium
def test_chromium_console_errors_are_detected(tmp_path: Path):
    """The console check below can fail: a page with a script error trips it."""
    bad = tmp_path / "bad.html"
    bad.write_text(
        "<!doctype html><title>x</title><script>console.error('boom'); nosuch();</script>",
        encoding="utf-8",
    )
    _, console = render(bad, tmp_path / "profile")
    assert any("boom" in ln for ln in console), console  # console.error
    assert any("nosuch" in ln for ln in console), console  # an uncaught exception


@needs_chromium
def test_report_renders_without_console_errors(dom: dict[str, Any]):
    assert dom["console"] == []
    assert dom["tree"].iter("h1"), "the page has a heading"


@needs_chromium
def test_pareto_plot_axes_points_and_ci_bars_in_the_dom(run: dict[str, Any], dom: dict[str, Any]):
    svg = pareto_svg(dom["tree"])
    rep = run["report"]
    assert len(svg.iter("line", "axis")) == 2
    labels = [t.all_text() for t in svg.iter("text", "axis-label")]
    assert any("latency" in t and "ms" in t for t in labels), labels
    assert any("energy per inference" in t and "J" in t for t in labels), labels
    assert len(svg.iter("text", "xtick-label")) >= 2
    assert len(svg.iter("text", "ytick-label")) >= 2

    want = measured(rep)
    points = svg.iter("g", "point")
    assert [p.attrs["data-variant"] for p in points] == [v["id"] for v in want]
    labels = {t.attrs["data-variant"]: t.all_text() for t in svg.iter("text", "label")}
    for p, v in zip(points, want, strict=True):
        # Every point is labelled and carries its figures in a hover title.
        assert labels[v["id"]].endswith(v["id"])
        title = p.iter("title")[0].all_text()
        assert f"p50 {report_html._sig(v['latency_ms']['p50'])} ms" in title
        assert "95% CI" in title and "accuracy drop" in title and "size" in title
        # A CI bar in each direction where the report has a CI.
        has_lat_ci = (v["latency_ms"].get("ci95") or 0) > 0
        has_en_ci = (v["energy_j"].get("ci95") or 0) > 0
        assert len(p.iter("line", "ci-x")) == int(has_lat_ci), v["id"]
        assert len(p.iter("line", "ci-y")) == int(has_en_ci), v["id"]
    assert any((v["energy_j"].get("ci95") or 0) > 0 for v in want), "no CI in the run"
    assert svg.iter("line", "ci-x") and svg.iter("line", "ci-y")

    best = [p for p in points if p.iter("circle", "best")]
    assert [p.attrs["data-variant"] for p in best] == [rep["best"]["id"]]
    if any(v["pareto"] for v in want):
        assert len(svg.iter("path", "frontier")) == 1


@needs_chromium
def test_sensitivity_chart_in_the_dom(run: dict[str, Any], dom: dict[str, Any]):
    charts = dom["tree"].iter("svg", "sensitivity")
    assert [c.attrs["data-recipe"] for c in charts] == ["int8-mixed"]
    names = [g.attrs["data-layer"] for g in charts[0].iter("g", "layer")]
    rec = compression_records(run["report"])["int8-mixed"]
    assert set(names) <= {x["name"] for x in rec["layers"]} and names


# --------------------------------------------------------------------------- the file


def test_nothing_is_loaded_from_the_network(run: dict[str, Any]):
    page = run["html"]
    # The SVG namespace is a name, not a resource; nothing else may point off the page.
    rest = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"https?://", rest), re.search(r".{60}https?://.{60}", rest)
    assert not re.search(r"<(script|link|img|iframe|object|embed|audio|video)\b", page, re.I)
    assert not re.search(r"url\(|@import|src\s*=", page, re.I)
    root = Tree(page).root
    assert not [el for el in root.iter() if "href" in el.attrs or "src" in el.attrs]


def test_the_run_gave_the_data_the_page_shows(run: dict[str, Any]):
    """The fixture run measured more than the original and searched int8 layer by layer."""
    rep = run["report"]
    assert len(measured(rep)) >= 2
    rec = compression_records(rep)["int8-mixed"]
    assert rec["drop_all_compressed"] > rec["target_drop"], "the search had nothing to do"
    assert any("sensitivity" in x for x in rec["layers"])


def test_sensitivity_chart_lists_layers_and_what_was_kept(run: dict[str, Any]):
    rec = compression_records(run["report"])["int8-mixed"]
    root = Tree(run["html"]).root
    charts = {c.attrs["data-recipe"]: c for c in root.iter("svg", "sensitivity")}
    # fp16 met the limit with every layer compressed: a sentence, no chart.
    assert set(charts) == {"int8-mixed"}
    rows = charts["int8-mixed"].iter("g", "layer")
    probed = sorted(
        (x for x in rec["layers"] if "sensitivity" in x), key=lambda x: -x["sensitivity"]
    )
    shown = [g.attrs["data-layer"] for g in rows]
    assert shown[: len(probed)] == [x["name"] for x in probed][: report_html.MAX_LAYERS]
    by_name = {x["name"]: x for x in rec["layers"]}
    for g in rows:
        kept = not by_name[g.attrs["data-layer"]]["compressed"]
        assert g.attrs["data-kept"] == ("true" if kept else "false")
        assert ("kept in FP32" if kept else "INT8") in g.iter("title")[0].all_text()
    # Every layer the search kept in FP32 is drawn, and named in the caption.
    assert {g.attrs["data-layer"] for g in rows if g.attrs["data-kept"] == "true"} == set(
        rec["layers_kept"]
    )
    assert "Compression, layer by layer" in run["html"]


def test_estimated_figures_are_labelled(run: dict[str, Any]):
    page = run["html"]
    root = Tree(page).root
    assert root.iter("p", "estimated"), "a visible note"
    assert "Energy figures are estimated, not measured" in page
    y_label = [t.all_text() for t in pareto_svg(root).iter("text", "axis-label")][1]
    assert "estimated" in y_label
    cells = [td.all_text() for td in root.iter("td")]
    assert any(c.endswith("(est.)") for c in cells)
    for p in pareto_svg(root).iter("g", "point"):
        assert "ESTIMATED, not measured" in p.iter("title")[0].all_text()


def test_measured_figures_are_not_labelled_estimated(run: dict[str, Any]):
    rep = copy.deepcopy(run["report"])
    rep["measurement"]["meter"] = {"name": "rapl", "summary": "RAPL package energy"}
    rep["notes"] = []
    for v in rep["variants"]:
        if v.get("energy_j"):
            v["energy_j"]["method"] = "rapl"
    page = to_html(rep).split("</style>", 1)[1]  # the content, not the style sheet
    assert "estimated" not in page.lower()
    assert "(est.)" not in page
    assert "measured by rapl" in page


def test_axes_turn_logarithmic_when_the_spread_is_large(run: dict[str, Any]):
    rep = copy.deepcopy(run["report"])
    pts = measured(rep)
    assert "log scale" not in report_html.pareto_svg(rep)  # the example's variants are close
    pts[-1]["latency_ms"]["mean"] *= 200
    pts[-1]["energy_j"]["per_inference"] *= 200
    svg = Tree(report_html.pareto_svg(rep)).root
    labels = [t.all_text() for t in svg.iter("text", "axis-label")]
    assert all("log scale" in t for t in labels), labels


def test_frontier_steps_through_the_pareto_points(run: dict[str, Any]):
    svg = Tree(report_html.pareto_svg(run["report"])).root
    front = [p for p in svg.iter("g", "point") if p.attrs["data-pareto"] == "true"]
    assert front, "the run has a frontier"
    path = svg.iter("path", "frontier")[0].attrs["d"]
    xs = {float(m) for m in re.findall(r"[MH]([\d.]+)", path)}
    ys = {float(m) for m in re.findall(r"V([\d.]+)", path)}
    for p in front:
        marker = p.iter("circle", "marker")[0]
        assert float(marker.attrs["cx"]) in xs and float(marker.attrs["cy"]) in ys


def test_page_keeps_the_method_and_device_record(run: dict[str, Any]):
    page, rep = run["html"], run["report"]
    assert "How each figure was obtained" in page
    assert rep["measurement"]["selection"] in page.replace("&#x27;", "'")
    assert "trials" in page and "energy meter" in page
    assert rep["device"]["key"] in page
    assert rep["device"]["cpu"]["model"] in page


def test_repr_html_is_a_fragment_with_the_table_and_the_plot(run: dict[str, Any]):
    frag = run["result"]._repr_html_()
    assert not re.search(r"<!doctype|<html|<body", frag, re.I)
    root = Tree(frag).root
    table = root.iter("table")
    assert len(table) == 1
    ids = [tr.iter("td")[0].all_text() for tr in table[0].iter("tr") if tr.iter("td")]
    assert [i.rstrip(" ★") for i in ids] == [v["id"] for v in run["report"]["variants"]]
    assert len(root.iter("svg", "pareto")) == 1
    assert len(pareto_svg(root).iter("g", "point")) == len(measured(run["report"]))
