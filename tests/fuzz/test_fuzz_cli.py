"""Fuzz the command line: damaged models, flags, --inputs data and reports keep the contracts.

For every case (``fuzz_mutators.make_case``), whatever the input:
  - the exit code is 0, 1 or 2 (3 is an internal error: a bug), with no traceback printed;
  - exit code 2 ends in one ``lepton-compile...: error: ...`` line;
  - nothing outside the output path changes: the input model, the --inputs data and the
    reports are byte-identical, and no temporary file or directory is left beside the output;
  - on an error nothing is written at the output path (exit code 1 of the main command and of
    the gate still writes its report: that outcome is a result, documented as such);
  - what the user owns at the output path is refused with exit code 2 and left as it was.

Seeded and bounded by a case count, not by time: LEPTON_FUZZ_CASES (default below) sets the
count, LEPTON_FUZZ_START the first index, so a larger local run covers new cases and a
failing id reproduces alone (``-k 0123-``).
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
import pytest
from fuzz_mutators import BASES, FAST_COMPILE, Case, e2e_cases, make_cases, mutate_report

from lepton_compile.cli import main
from lepton_compile.report import SCHEMA

pytestmark = pytest.mark.fuzz

DEFAULT_CASES = 1200
_START = int(os.environ.get("LEPTON_FUZZ_START", "0"))
_COUNT = int(os.environ.get("LEPTON_FUZZ_CASES", str(DEFAULT_CASES)))

# Cases that fail until a fix outside this suite lands, by index. Strict: when the fix is in,
# the case passes, pytest reports it, and its entry goes.
KNOWN_FAILURES: dict[int, str] = {}


def _param(case: Case) -> object:
    reason = KNOWN_FAILURES.get(int(case.id.split("-")[0]))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(case, id=case.id, marks=marks)


CASES = [_param(c) for c in make_cases(_START + _COUNT)[_START:]]
E2E_CASES = e2e_cases()

# Occupants of the output path that belong to the user: always refused, always left intact.
USER_OWNED = {"user-dir", "user-file", "user-symlink", "ours+user", "input"}

_ERROR_LINE = re.compile(r"^lepton-compile( \w+)?: error: \S")


@pytest.fixture(scope="session")
def earlier_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real output directory of the main command (its report.json feeds the gate cases)."""
    root = tmp_path_factory.mktemp("fuzz-earlier")
    model = root / "mlp.onnx"
    onnx.save(BASES["mlp"].model, model)
    out = root / "mlp.lepton"
    assert main([str(model), "-o", str(out), *FAST_COMPILE]) == 0
    return out


def _snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too) -> what it is: a file's hash, a link's
    target, or 'dir'."""
    snap: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                snap[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                snap[rel] = "dir"
            else:
                snap[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def _lay_out(case: Case, work: Path, earlier: Path) -> dict[str, str]:
    """Write the case's files into ``work``; return the placeholder values of its argv."""
    paths = {"out": str(work / (case.out_name() or "out")), "gate_md": str(work / "gate.md")}
    if case.command == "gate":
        report = json.loads((earlier / "report.json").read_text())
        rng = random.Random(case.report_seed)
        for key, kind in zip(("base", "cur"), case.reports, strict=True):
            p = work / f"{key}.json"
            p.write_bytes(mutate_report(rng, report, kind) if kind else json.dumps(report).encode())
            paths[key] = str(p)
        if case.occupant == "user-dir":
            Path(paths["gate_md"]).mkdir()
            (Path(paths["gate_md"]) / "thesis.txt").write_text("a user's file that must survive\n")
        return paths
    model = work / case.model_name
    for name, data in case.side_files:
        if name.endswith("/"):
            (work / name).mkdir()
        else:
            (work / name).write_bytes(data)
    if case.model is not None and not model.is_dir():
        model.write_bytes(case.model)
    paths["model"] = str(model)
    if case.inputs is not None:
        inputs = work / "inputs"
        paths["inputs"] = str(inputs)
        if case.inputs.kind == "file":
            inputs.write_bytes(b"not a directory")
        elif case.inputs.kind == "dir":
            inputs.mkdir()
            for name, data in case.inputs.files:
                if name.endswith("/"):
                    (inputs / name).mkdir()
                else:
                    (inputs / name).write_bytes(data)
        if case.inputs.metric is not None:
            # The CLI imports a metric file by its name: one name per case, or a module
            # imported by an earlier case would be used again.
            metric = work / f"fuzz_metric_{case.id.split('-')[0]}.py"
            metric.write_text(case.inputs.metric)
            paths["metric"] = str(metric)
    out = Path(paths["out"])
    occupant = case.occupant
    if occupant == "input":
        paths["out"] = str(model)
    elif occupant == "user-dir":
        out.mkdir()
        (out / "thesis.txt").write_text("a user's file that must survive\n")
    elif occupant == "user-file":
        # For optimize, the user's own model (valid ONNX, but not written by the tool).
        own = case.model if case.command == "optimize" and case.model else b"a user's file"
        out.write_bytes(own)
    elif occupant == "user-symlink":
        target = work / "elsewhere"
        target.mkdir()
        (target / "thesis.txt").write_text("a user's file behind a link\n")
        out.symlink_to(target, target_is_directory=True)
    elif occupant == "empty-dir":
        out.mkdir()
    elif occupant in ("ours", "ours+user"):
        shutil.copytree(earlier, out)
        if occupant == "ours+user":
            (out / "notes.txt").write_text("added by the user\n")
    return paths


def _describe(case: Case, argv: list[str], rc: int, out: str, err: str) -> str:
    tail = "\n".join((out + err).strip().splitlines()[-12:])
    return f"case {case.id}\nargv: {argv}\nexit code {rc}\n--- output tail ---\n{tail}"


@pytest.mark.parametrize("case", CASES)
def test_cli_keeps_its_contracts(
    case: Case, tmp_path: Path, capfd: pytest.CaptureFixture, monkeypatch, earlier_output: Path
) -> None:
    work = tmp_path / "case"
    work.mkdir()
    monkeypatch.chdir(work)  # a default output path lands here, where it is checked
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # the run's own temporary files
    monkeypatch.setattr(sys, "path", sys.path[:])  # a --metric file's directory goes on it
    paths = _lay_out(case, work, earlier_output)
    argv = [_fill(a, paths) for a in case.argv]
    before = _snapshot(work)

    rc = main(argv)

    out, err = capfd.readouterr()
    _check_contracts(case, work, paths, argv, rc, out, err, before)
    if any(scratch.iterdir()):
        gc.collect()  # a temporary directory held by a dead reference cycle goes with it
    left = sorted(p.name for p in scratch.iterdir())
    assert not left, f"{_describe(case, argv, rc, out, err)}\ntemporary files left: {left}"


def _check_contracts(
    case: Case,
    work: Path,
    paths: dict[str, str],
    argv: list[str],
    rc: int,
    out: str,
    err: str,
    before: dict[str, str],
) -> None:
    after = _snapshot(work)
    what = _describe(case, argv, rc, out, err)
    assert rc in (0, 1, 2), what
    assert "Traceback" not in out and "Traceback" not in err, what
    if rc == 2:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert lines and _ERROR_LINE.match(lines[-1]), what

    out_rel = Path(paths["out"]).relative_to(work).as_posix() if case.command != "gate" else None
    if case.command == "gate" and "{gate_md}" in case.argv:
        out_rel = "gate.md"

    def at_output(rel: str) -> bool:
        # A symlink at -o is the output path itself; what it points to lies outside it.
        return out_rel is not None and (rel == out_rel or rel.startswith(out_rel + "/"))

    # Outside the output path nothing changes: no temp files, the inputs byte-identical.
    changed = sorted(
        k
        for k in before.keys() | after.keys()
        if not at_output(k) and before.get(k) != after.get(k)
    )
    assert not changed, f"{what}\nchanged outside the output path: {changed}"

    forced = "--force" in argv  # the user asked for whatever is at -o to be replaced
    out_before = {k: v for k, v in before.items() if at_output(k)}
    out_after = {k: v for k, v in after.items() if at_output(k)}
    if case.occupant in USER_OWNED and not (forced and case.occupant != "input"):
        assert rc == 2, f"{what}\nthe user's {case.occupant} at -o was not refused"
        assert out_after == out_before, f"{what}\nthe user's {case.occupant} at -o was changed"
        return
    wrote = rc == 0 or (rc == 1 and case.command in ("compile", "gate"))
    if not wrote:
        assert out_after == out_before, f"{what}\nan error left something at the output path"
        return
    if case.command == "compile":
        report = json.loads((work / out_rel / "report.json").read_text())  # type: ignore[operator]
        assert report["schema"] == SCHEMA and report["constraints"]["met"] is (rc == 0), what
        assert (work / out_rel / "best.onnx").is_file(), what  # type: ignore[operator]
    elif case.command == "optimize":
        if rc == 0:
            onnx.checker.check_model(onnx.load(str(work / out_rel)))  # type: ignore[operator]
            if "--json" in argv:
                assert json.loads(out)["schema"] == "lepton-compile/optimize/v1", what
    else:
        assert "## lepton-compile gate" in out, what


def _fill(arg: str, paths: dict[str, str]) -> str:
    for key, value in paths.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


@pytest.mark.parametrize("case", E2E_CASES, ids=[c.id for c in E2E_CASES])
def test_entry_point_keeps_its_contracts(case: Case, tmp_path: Path, earlier_output: Path) -> None:
    """A few cases through ``python -m lepton_compile``, variants in worker processes: the
    exit code as the shell sees it, and tracebacks from any process."""
    work = tmp_path / "case"
    work.mkdir()
    paths = _lay_out(case, work, earlier_output)
    argv = [_fill(a, paths) for a in case.argv]
    before = _snapshot(work)
    env = {**os.environ, "COLUMNS": "140"}
    r = subprocess.run(
        [sys.executable, "-m", "lepton_compile", *argv],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    _check_contracts(case, work, paths, argv, r.returncode, r.stdout, r.stderr, before)
