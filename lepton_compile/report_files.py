"""The report's three files in an output folder: report.json, report.md (``report``) and
report.html (``report_html``), each written atomically."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lepton_compile.outdir import write_text
from lepton_compile.report import to_markdown
from lepton_compile.report_html import page


def write_all(report: dict[str, Any], outdir: Path) -> None:
    write_text(outdir / "report.json", json.dumps(report, indent=2, allow_nan=False) + "\n")
    write_text(outdir / "report.md", to_markdown(report))
    write_text(outdir / "report.html", page(report))
