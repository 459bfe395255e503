"""What the benchmark scripts share: the results folder, the loop over models (one model's
failure is a row of its own; the file is written after each model, so a run cut short keeps
what it measured) and the results file's header (suite, time, command, device record).

The scripts run as ``python benchmarks/NAME.py``, which puts this folder on the import path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_compile.bench.device import device_record, record_key
from lepton_compile.bench.zoo import MODELS, fetch

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"

log = logging.getLogger("bench")


def check_models(ap: argparse.ArgumentParser, names: Sequence[str]) -> None:
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; known: {sorted(MODELS)}")


def run_models(
    names: Sequence[str],
    run_one: Callable[[str], dict[str, Any]],
    write: Callable[[list[dict[str, Any]]], None],
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in names:
        try:
            rows.append(run_one(name))
        except Exception as e:  # one model's failure is a result too
            log.exception("%s failed", name)
            rows.append({"model": name, "error": f"{type(e).__name__}: {e}"})
        write(rows)
    return rows


def write_results(
    out: Path, suite: str, argv: Sequence[str] | None, rows: list[dict], **fields: Any
) -> None:
    """``out`` as JSON: the header, then ``fields``, then the rows."""
    dev = device_record(["CPUExecutionProvider"])
    dev["key"] = record_key(dev)
    result = {
        "suite": suite,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": f"python benchmarks/{suite}.py " + " ".join(argv or sys.argv[1:]),
        "device": dev,
        **fields,
        "results": rows,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


@dataclass
class ColdRun:
    """One cold `lepton-compile` run of a zoo model: its command line, wall time, report."""

    path: Path
    out: Path
    cmd: list[str]
    exit_code: int
    wall_s: float
    report: dict[str, Any]

    @property
    def shown_command(self) -> str:
        """The command with the model's name instead of its cache path."""
        return " ".join([self.cmd[0], self.path.stem, *self.cmd[2:]])


def cold_run(name: str, flags: Sequence[str], work: Path) -> ColdRun:
    """Run the CLI on zoo model ``name`` with its input shapes, ``flags`` and an empty result
    cache; raise on exit codes other than 0 and 1 (1: constraints not met, still a report)."""
    spec = MODELS[name]
    path = fetch(name)
    out = work / f"{name}.lepton"
    cmd = ["lepton-compile", str(path), "-o", str(out), "--json", *flags]
    for k, v in spec.input_shapes.items():
        cmd += ["--input-shape", f"{k}={'x'.join(map(str, v))}"]
    env = dict(os.environ, LEPTON_CACHE=str(work / f"{name}-cache.sqlite"))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-500:]}")
    report = json.loads((out / "report.json").read_text())
    return ColdRun(path, out, cmd, proc.returncode, wall, report)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def save_device_results(
    result: dict[str, Any], stem: str, device_name: str, out: str | None, smoke: bool
) -> Path:
    """Write a device benchmark's ``result`` atomically: to ``out`` when given, to the temp
    folder for a smoke run (its numbers are not results: they stay out of bench/results), else
    to ``bench/results/<stem>-<device>.json``."""
    if out:
        path = Path(out)
    elif smoke:
        path = Path(tempfile.gettempdir()) / f"{stem}-smoke.json"
    else:
        path = RESULTS / f"{stem}-{_slug(device_name)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)
    return path
