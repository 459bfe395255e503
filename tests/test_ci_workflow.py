"""CI use: the gate's GitHub and JSON formats, and the example CI files run step by step.

The example workflow (examples/ci/github-actions.yml) is read as GitHub Actions reads it and
its shell steps run with bash in order, with the runner's files (GITHUB_OUTPUT,
GITHUB_STEP_SUMMARY) and the step's environment, on prepared base/current report pairs. Two
steps are not run: the one that installs the tool (it would fetch it from the package index;
the tool of this checkout is already installed) and the one that posts the PR comment (it
calls the GitHub API); both need the network. The GitLab job's script runs the same way.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from lepton_compile.bench.stats import unpaired_ratio
from lepton_compile.cli import main
from lepton_compile.gate import GATE_SCHEMA, compare, load_report
from lepton_compile.report import SCHEMA

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / "examples" / "ci" / "github-actions.yml"
GITLAB = ROOT / "examples" / "ci" / "gitlab-ci.yml"

# Steps the test does not run, and why (both need the network).
NOT_RUN = {
    "install": "installs the tool from the package index; this checkout's tool is installed",
    "comment": "posts the comment through the GitHub API",
}


# --------------------------------------------------------------------------- gate formats


def report(
    latency: list[float], energy: list[float], sha: str = "abc", drop: float = 0.0
) -> dict[str, Any]:
    mean = sum(latency) / len(latency)
    e_mean = sum(energy) / len(energy)
    return {
        "schema": SCHEMA,
        "model": {"sha256": sha, "path": "m.onnx"},
        "device": {"key": "dev1"},
        "best": {"id": "fused-ort-cpu", "reason": "r"},
        "variants": [
            {
                "id": "fused-ort-cpu",
                "status": "ok",
                "latency_ms": {"mean": mean, "ci95": 0.01 * mean, "per_trial": latency},
                "energy_j": {
                    "per_inference": e_mean,
                    "ci95": 0.01 * e_mean,
                    "per_trial": energy,
                    "method": "estimated",
                },
                "accuracy": {"drop": drop, "passed": True},
            }
        ],
    }


STEADY = [10.0, 10.2, 9.9, 10.1, 9.8]
SLOWER = [x * 1.12 for x in STEADY]  # a steady 12% slowdown
ENERGY = [1.0, 1.01, 0.99, 1.0, 1.0]


def with_serving(rep: dict, by_batch: dict[int, dict], pick: int) -> dict:
    """fused-ort-cpu's serving points and the recommendation (that variant at ``pick``)."""
    rep["variants"][0]["serving"] = {str(b): p for b, p in by_batch.items()}
    rep["serving"] = {
        "batch_sizes": sorted(by_batch),
        "recommendation": {"variant": "fused-ort-cpu", "batch": pick, "text": "t"},
    }
    return rep


def point(batch: int, latency: list[float], energy: list[float]) -> dict:
    mean = sum(latency) / len(latency)
    e_mean = sum(energy) / len(energy)
    return {
        "batch": batch,
        "status": "ok",
        "latency_ms": {"mean": mean, "ci95": 0.01 * mean, "per_trial": latency},
        "energy_j_per_inference": {
            "mean": e_mean,
            "ci95": 0.01 * e_mean,
            "per_trial": energy,
            "method": "estimated",
        },
    }


def gate_cli(tmp_path: Path, base: dict, cur: dict, *extra: str) -> tuple[int, Path, Path]:
    b, c = tmp_path / "base.json", tmp_path / "cur.json"
    b.write_text(json.dumps(base))
    c.write_text(json.dumps(cur))
    return main(["gate", str(b), str(c), *extra]), b, c


def unescape(text: str) -> str:
    """What the GitHub Actions runner makes of an escaped command value."""
    for enc, raw in (("%0D", "\r"), ("%0A", "\n"), ("%3A", ":"), ("%2C", ","), ("%25", "%")):
        text = text.replace(enc, raw)
    return text


COMMAND = re.compile(r"^::(?P<name>[a-z-]+)(?: (?P<props>[^:]*))?::(?P<message>.*)$")


def github_parts(out: str) -> tuple[list[re.Match], str, str]:
    """(commands before the table, the table, the stop-commands token)."""
    lines = out.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("::stop-commands::"))
    token = lines[start].removeprefix("::stop-commands::")
    end = lines.index(f"::{token}::")
    assert len(token) >= 16 and end > start
    # Nothing after the block but the newline print adds: every command is before it.
    assert [ln for ln in lines[end + 1 :] if ln] == []
    commands = [COMMAND.match(ln) for ln in lines[:start]]
    assert all(commands), lines[:start]
    return commands, "\n".join(lines[start + 1 : end]), token  # type: ignore[return-value]


def test_github_format_annotates_each_regression_and_warning(tmp_path: Path, capsys):
    base = report(STEADY, ENERGY)
    cur = report(SLOWER, ENERGY, sha="def")  # another model: a warning
    code, b, c = gate_cli(tmp_path, base, cur, "--format", "github")
    out = capsys.readouterr().out
    assert code == 1
    commands, table, _ = github_parts(out)
    errors = [m for m in commands if m["name"] == "error"]
    warnings = [m for m in commands if m["name"] == "warning"]
    assert len(errors) == 1 and len(warnings) == 1 and len(commands) == 2
    assert unescape(errors[0]["props"]) == "title=lepton-compile gate: latency_ms (mean) regressed"
    message = unescape(errors[0]["message"])
    assert message.startswith("latency_ms (mean): +12.0% [+")
    assert "past the limit of 5.0% and beyond measurement noise" in message
    assert "base best fused-ort-cpu, current best fused-ort-cpu" in message
    assert unescape(warnings[0]["message"]) == "the reports are of different models"
    # After the annotations, the very table that --format markdown prints.
    assert main(["gate", str(b), str(c)]) == 1
    assert table.rstrip("\n") == capsys.readouterr().out.rstrip("\n")
    assert "❌ regression" in table and "**FAILED**" in table


def test_github_format_passes_quietly(tmp_path: Path, capsys):
    code, _, _ = gate_cli(
        tmp_path, report(STEADY, ENERGY), report(STEADY, ENERGY), "--format", "github"
    )
    commands, table, _ = github_parts(capsys.readouterr().out)
    assert code == 0 and commands == [] and "**PASSED**" in table


def test_github_format_escapes_what_the_reports_say(tmp_path: Path, capsys):
    # Like with like at batch 16: the metric label has a comma, which ends a property.
    base = with_serving(report(STEADY, ENERGY), {16: point(16, STEADY, ENERGY)}, 16)
    cur = with_serving(report(STEADY, ENERGY), {16: point(16, SLOWER, ENERGY)}, 16)
    code, _, _ = gate_cli(tmp_path, base, cur, "--format", "github")
    commands, _, _ = github_parts(capsys.readouterr().out)
    assert code == 1 and len(commands) == 1
    props = commands[0]["props"]
    assert props == (
        "title=lepton-compile gate%3A latency_ms per batch call (mean%2C batch 16) regressed"
    )
    assert "fused-ort-cpu at batch 16 in both reports" in unescape(commands[0]["message"])

    # A reason in the base report with %, CR/LF and a line that looks like a command.
    reason = "out of memory: 100% used\r\n::error::injected"
    base["variants"][0]["serving"]["16"] = {"batch": 16, "status": "failed", "reason": reason}
    code, b, c = gate_cli(tmp_path, base, cur, "--format", "github")
    out = capsys.readouterr().out
    commands, table, _ = github_parts(out)
    assert code == 0  # compared at the base's own pick, where nothing regressed
    (warning,) = commands
    assert warning["name"] == "warning" and "\r" not in warning.group(0)
    assert "100%25 used%0D%0A::error::injected" in warning["message"]
    _, expected = compare(load_report(b), load_report(c))
    assert unescape(warning["message"]) == expected[0] and reason in expected[0]
    # The injected line is printed, but only inside the stop-commands block.
    assert "\n::error::injected" in "\n" + table
    assert [ln for ln in out.split("\n") if ln.startswith("::error")] == ["::error::injected)"]


def test_json_format(tmp_path: Path, capsys):
    base = report(STEADY, ENERGY, drop=0.001)
    cur = report(SLOWER, ENERGY, sha="def", drop=0.002)
    code, _, _ = gate_cli(tmp_path, base, cur, "--format", "json")
    out = json.loads(capsys.readouterr().out)
    assert code == 1
    assert out["schema"] == GATE_SCHEMA and out["passed"] is False and out["compared"] is None
    assert out["base"] == {"best": "fused-ort-cpu", "model_sha256": "abc", "device": "dev1"}
    assert out["warnings"] == ["the reports are of different models"]
    checks = {c["metric"]: c for c in out["checks"]}
    assert list(checks) == ["latency", "energy", "accuracy_drop"]
    lat = checks["latency"]
    assert lat["regressed"] is True and lat["beyond_noise"] is True
    assert lat["result"] == "regression" and lat["label"] == "latency_ms (mean)"
    assert lat["base"] == pytest.approx(10.0) and lat["current"] == pytest.approx(11.2)
    assert lat["change"] == pytest.approx(0.12) and lat["limit"] == 0.05
    assert lat["change_kind"] == "relative" and lat["batch"] is None
    low, high = lat["ratio"]["ci95"]
    assert 1.0 < low < lat["ratio"]["ratio"] < high and lat["ratio"]["n"] == 5
    assert checks["energy"]["regressed"] is False and checks["energy"]["result"] == "ok"
    acc = checks["accuracy_drop"]
    assert acc["change_kind"] == "absolute" and acc["change"] == pytest.approx(0.001)
    assert acc["ratio"] is None and acc["regressed"] is False

    code, _, _ = gate_cli(tmp_path, base, base, "--format", "json")
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["passed"] is True and out["warnings"] == []
    assert all(not c["regressed"] for c in out["checks"])


def test_json_format_names_the_serving_point(tmp_path: Path, capsys):
    base = with_serving(report(STEADY, ENERGY), {16: point(16, STEADY, ENERGY)}, 16)
    cur = with_serving(report(STEADY, ENERGY), {16: point(16, SLOWER, ENERGY)}, 16)
    code, _, _ = gate_cli(tmp_path, base, cur, "--format", "json")
    out = json.loads(capsys.readouterr().out)
    assert code == 1 and out["compared"] == {"variant": "fused-ort-cpu", "batch": 16}
    lat, energy, acc = out["checks"]
    assert lat["batch"] == 16 and lat["regressed"] and energy["batch"] == 16
    assert acc["batch"] is None


def test_json_format_bad_input_prints_no_json(tmp_path: Path, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(report(STEADY, ENERGY)))
    assert main(["gate", str(good), str(tmp_path / "missing.json"), "--format", "json"]) == 2
    cap = capsys.readouterr()
    assert cap.out == "" and cap.err.startswith("lepton-compile: error:")
    assert len(cap.err.strip().splitlines()) == 1
    assert main(["gate", str(good), str(good), "--format", "yaml"]) == 2


def test_output_file_is_markdown_whatever_the_format(tmp_path: Path, capsys):
    base, cur = report(STEADY, ENERGY), report(SLOWER, ENERGY)
    md_file = tmp_path / "gate.md"
    code, b, c = gate_cli(tmp_path, base, cur, "--format", "json", "--output", str(md_file))
    assert code == 1 and json.loads(capsys.readouterr().out)["passed"] is False
    assert main(["gate", str(b), str(c)]) == 1  # the default format: markdown
    assert md_file.read_text() + "\n" == capsys.readouterr().out
    assert md_file.read_text().startswith("## lepton-compile gate")


# --------------------------------------------------------------------------- the workflow


def load_workflow() -> dict[str, Any]:
    wf = yaml.safe_load(WORKFLOW.read_text())
    # YAML 1.1 reads the key `on` as the boolean true.
    wf["on"] = wf.pop(True, wf.get("on"))
    return wf


def the_job(wf: dict[str, Any]) -> dict[str, Any]:
    (job,) = wf["jobs"].values()
    return job


_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}", re.S)


def substitute(value: Any, context: dict[str, str]) -> str:
    """``${{ expr }}`` in an env value or a ``with`` input; an unknown one fails the test."""
    return _EXPR.sub(lambda m: context[m.group(1)], str(value))


def condition(expr: Any, event: str, steps: dict[str, SimpleNamespace], failed: bool) -> bool:
    """A step's ``if:`` over the few expressions the workflow uses."""
    if expr is None:
        return not failed
    text = str(expr).strip()
    m = _EXPR.fullmatch(text)
    text = m.group(1) if m else text
    if not re.search(r"\b(success|failure|always|cancelled)\(\)", text):
        text = f"success() && ({text})"  # GitHub's implicit status check
    py = text.replace("&&", " and ").replace("||", " or ")
    py = re.sub(r"!(?!=)", " not ", py)
    names = {
        "github": SimpleNamespace(event_name=event),
        "steps": SimpleNamespace(**steps),
        "success": lambda: not failed,
        "failure": lambda: failed,
        "always": lambda: True,
        "cancelled": lambda: False,
    }
    # eval: the expressions come from the repository's own workflow file.
    return bool(eval(py, {"__builtins__": {}}, names))


def read_outputs(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        assert "<<" not in line.partition("=")[0], "multiline outputs are not read here"
        key, _, value = line.partition("=")
        out[key] = value
    return out


def runner_env(workspace: Path) -> dict[str, str]:
    """This process's environment, less anything GitHub or gh would read, plus the tool."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GITHUB_", "GH_", "RUNNER_")) and k != "CI"
    }
    # The tool of this checkout stands in for the installed one.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    # gh (where installed) finds no credentials, so it fails without the network.
    (workspace.parent / "gh-config").mkdir(exist_ok=True)
    env["GH_CONFIG_DIR"] = str(workspace.parent / "gh-config")
    env["GH_PROMPT_DISABLED"] = "1"
    env["CI"] = "true"
    return env


@dataclass
class StepRun:
    id: str
    ran: bool  # run by this test
    outcome: str  # success, failure or skipped, as GitHub reports it
    would_run: bool  # its condition held
    code: int | None = None
    stdout: str = ""
    stderr: str = ""
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class WorkflowRun:
    workspace: Path
    steps: dict[str, StepRun]
    summary: str
    context: dict[str, str]


def run_script(
    script: Path, text: str, workspace: Path, env: dict[str, str]
) -> subprocess.CompletedProcess:
    """Run ``text`` as a CI runner runs a step's script: bash, fail on the first error."""
    script.write_text(text)
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def run_workflow(
    workspace: Path, event: str, overrides: dict[str, str], base_ref: str = "main"
) -> WorkflowRun:
    """The job's steps in order, as the runner would run them for ``event``."""
    wf = load_workflow()
    job = the_job(wf)
    workspace.mkdir(parents=True, exist_ok=True)
    wf_env = {k: "" if v is None else str(v) for k, v in (wf.get("env") or {}).items()}
    assert set(overrides) <= set(wf_env), "override only what the workflow lets a user set"
    wf_env.update(overrides)
    context = {
        "github.token": "",
        "github.repository": "octo/models",
        "github.base_ref": base_ref if event == "pull_request" else "",
        "github.workflow": wf["name"],
        "github.ref": "refs/pull/7/merge" if event == "pull_request" else "refs/heads/main",
        "github.event.pull_request.number": "7" if event == "pull_request" else "",
        **{f"env.{k}": v for k, v in wf_env.items()},
    }
    shell = (wf.get("defaults") or {}).get("run", {}).get("shell")
    assert shell == "bash"
    base_env = runner_env(workspace)
    base_env.update(
        GITHUB_EVENT_NAME=event,
        GITHUB_WORKSPACE=str(workspace),
        RUNNER_TEMP=str(workspace.parent),
    )
    base_env.update({k: substitute(v, context) for k, v in wf_env.items()})
    base_env.update({k: substitute(v, context) for k, v in (job.get("env") or {}).items()})
    steps: dict[str, StepRun] = {}
    failed = False
    summary = []
    for i, step in enumerate(job["steps"]):
        sid = step.get("id", f"step{i}")
        ns = {
            k: SimpleNamespace(outcome=s.outcome, outputs=SimpleNamespace(**s.outputs))
            for k, s in steps.items()
        }
        would_run = condition(step.get("if"), event, ns, failed)
        if not would_run or "run" not in step or sid in NOT_RUN:
            # Not run here: a `uses:` step or one of NOT_RUN counts as done (the tool is
            # installed), as it would be on a runner; a false condition skips it.
            outcome = "success" if would_run else "skipped"
            steps[sid] = StepRun(sid, False, outcome, would_run)
            continue
        files = workspace.parent / f"runner-{sid}"
        files.mkdir(exist_ok=True)
        env = dict(base_env)
        env.update({k: substitute(v, context) for k, v in (step.get("env") or {}).items()})
        env["GITHUB_OUTPUT"] = str(files / "output")
        env["GITHUB_STEP_SUMMARY"] = str(files / "summary")
        (files / "output").write_text("")
        (files / "summary").write_text("")
        proc = run_script(files / "script.sh", step["run"], workspace, env)
        outcome = "success" if proc.returncode == 0 else "failure"
        if outcome == "failure" and not step.get("continue-on-error"):
            failed = True
        summary.append((files / "summary").read_text())
        steps[sid] = StepRun(
            sid,
            True,
            outcome,
            True,
            proc.returncode,
            proc.stdout,
            proc.stderr,
            read_outputs(files / "output"),
        )
    return WorkflowRun(workspace, steps, "".join(summary), context)


def test_workflow_steps_are_self_contained():
    wf = load_workflow()
    assert "pull_request" in wf["on"] and wf["on"]["push"]["branches"] == ["main"]
    job = the_job(wf)
    ids = [s.get("id") for s in job["steps"]]
    assert set(NOT_RUN) <= set(ids)
    # gate, then the comment: it posts what the gate step wrote, after a regression too.
    assert ids.index("compile") < ids.index("base") < ids.index("gate") < ids.index("comment")
    for step in job["steps"]:
        if "run" in step:
            # Inputs come through env: nothing from the event is pasted into a script.
            assert "${{" not in step["run"], step.get("name")
    install = next(s for s in job["steps"] if s.get("id") == "install")
    assert "pip install" in install["run"]
    comment = next(s for s in job["steps"] if s.get("id") == "comment")
    assert "gh pr comment" in comment["run"] and "$COMMENT_FILE" in comment["run"]
    assert comment.get("continue-on-error") is True


def scaled(rep: dict[str, Any], factor: float) -> dict[str, Any]:
    """The report with its best variant's latency and energy figures times ``factor``."""
    rep = copy.deepcopy(rep)
    best = next(v for v in rep["variants"] if v["id"] == rep["best"]["id"])
    for key in ("latency_ms", "energy_j"):
        d = best[key]
        for k, value in d.items():
            if k in ("p50", "p90", "p99", "mean", "ci95", "per_inference"):
                d[k] = value * factor if isinstance(value, (int, float)) else value
        if isinstance(d.get("per_trial"), list):
            d["per_trial"] = [x * factor for x in d["per_trial"]]
    return rep


def regression_factor(rep: dict[str, Any]) -> float:
    """The smallest of 2, 4, 8, ... that makes the gate see a latency regression in this
    report's own figures: the prepared pair must regress whatever noise the run had."""
    best = next(v for v in rep["variants"] if v["id"] == rep["best"]["id"])
    lat = best["latency_ms"]
    factor = 2.0
    while factor < 1e6:
        trials = lat.get("per_trial") or []
        if len(trials) >= 2:
            r = unpaired_ratio([x * factor for x in trials], trials)
            if r.above_one and r.ratio > 1.05:
                return factor
        elif lat["mean"] * factor - lat["ci95"] * factor > lat["mean"] + lat["ci95"]:
            return factor
        factor *= 2
    raise AssertionError("no factor makes this report regress")


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory, tinycnn_path: Path) -> WorkflowRun:
    """The workflow on a push to main: the real compile of the example model."""
    return run_workflow(
        tmp_path_factory.mktemp("push") / "checkout",
        "push",
        {"LEPTON_MODEL": str(tinycnn_path), "LEPTON_ARGS": "--recipes original --backend ort"},
    )


@pytest.fixture(scope="module")
def reports(pushed: WorkflowRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The pushed run's report, and a copy of it whose best variant regressed."""
    out = pushed.workspace / "lepton-out"
    assert pushed.steps["compile"].outcome == "success", pushed.steps["compile"].stderr
    root = tmp_path_factory.mktemp("reports")
    real, slow = root / "real", root / "regressed"
    for d in (real, slow):
        d.mkdir()
        for name in ("report.json", "report.md", "report.html"):
            shutil.copy(out / name, d / name)
    rep = json.loads((out / "report.json").read_text())
    (slow / "report.json").write_text(json.dumps(scaled(rep, regression_factor(rep))))
    return {"real": real / "report.json", "regressed": slow / "report.json"}


@pytest.mark.slow
def test_workflow_on_push_compiles_and_uploads(pushed: WorkflowRun):
    steps = pushed.steps
    assert steps["compile"].ran and steps["compile"].code == 0
    for sid in ("base", "gate", "comment"):
        assert steps[sid].outcome == "skipped" and not steps[sid].would_run
    out = pushed.workspace / "lepton-out"
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema"] == SCHEMA and rep["best"]["id"] == "original-ort-cpu"
    # The job summary is the report; the upload step finds the files it names.
    assert pushed.summary == (out / "report.md").read_text() and "| variant |" in pushed.summary
    upload = next(
        s for s in the_job(load_workflow())["steps"] if "upload-artifact" in s.get("uses", "")
    )
    paths = substitute(upload["with"]["path"], pushed.context).split()
    assert paths and all((pushed.workspace / p).is_file() for p in paths)
    assert substitute(upload["with"]["name"], pushed.context) == "lepton-report"


def pull_request(tmp_path: Path, current: Path, base: Path | None) -> WorkflowRun:
    overrides = {"LEPTON_REPORT": str(current)}
    if base is not None:
        overrides["LEPTON_BASE_REPORT"] = str(base)
    return run_workflow(tmp_path / "checkout", "pull_request", overrides)


def check_posted(run: WorkflowRun, current: Path) -> str:
    """The comment body and the summary: the marker, the gate table and the report."""
    body = (run.workspace / run.context["env.COMMENT_FILE"]).read_text()
    assert body.startswith(run.context["env.COMMENT_MARKER"] + "\n## lepton-compile gate\n")
    report_md = (current.parent / "report.md").read_text()
    assert report_md.strip() and report_md in body
    assert "<details><summary>report.md of this pull request</summary>" in body
    assert run.summary == body  # the summary has just what the comment says
    # The comment step runs after the gate whatever it decided (it is not run here).
    assert run.steps["comment"].would_run and not run.steps["comment"].ran
    return body


@pytest.mark.slow
def test_workflow_pull_request_without_regression_passes(tmp_path: Path, reports):
    run = pull_request(tmp_path, reports["real"], reports["real"])
    assert run.steps["base"].outputs == {"found": "true"}
    gate = run.steps["gate"]
    assert gate.code == 0 and gate.outcome == "success" and gate.outputs == {"exit_code": "0"}
    assert "::error" not in gate.stdout and "::stop-commands::" in gate.stdout
    body = check_posted(run, reports["real"])
    table = (run.workspace / run.context["env.GATE_FILE"]).read_text()
    assert table in body and "**PASSED**" in body and "❌" not in body
    assert "| latency_ms (mean) |" in body


@pytest.mark.slow
def test_workflow_pull_request_with_regression_fails(tmp_path: Path, reports):
    run = pull_request(tmp_path, reports["regressed"], reports["real"])
    gate = run.steps["gate"]
    assert gate.code == 1 and gate.outcome == "failure" and gate.outputs == {"exit_code": "1"}
    errors = [ln for ln in gate.stdout.splitlines() if ln.startswith("::error ")]
    assert errors and errors[0].startswith(
        "::error title=lepton-compile gate%3A latency_ms (mean) regressed::"
    )
    body = check_posted(run, reports["regressed"])
    lat = next(ln for ln in body.splitlines() if ln.startswith("| latency_ms (mean) |"))
    assert "❌ regression" in lat and "**FAILED**" in body


@pytest.mark.slow
def test_workflow_pull_request_without_a_base_report_passes(tmp_path: Path, reports):
    # No base named and no credentials for gh: nothing to download, and no network used.
    run = pull_request(tmp_path, reports["real"], None)
    assert run.steps["base"].outcome == "success"
    assert run.steps["base"].outputs == {"found": "false"}
    assert "::notice title=lepton-compile gate::No report of main" in run.steps["base"].stdout
    gate = run.steps["gate"]
    assert gate.code == 0 and gate.outputs == {"exit_code": "0"}
    body = check_posted(run, reports["real"])
    assert "No report of `main` to compare with: the gate was skipped." in body
    assert not (run.workspace / run.context["env.GATE_FILE"]).exists()


# --------------------------------------------------------------------------- GitLab


def run_gitlab(
    workspace: Path, event: str, overrides: dict[str, str]
) -> subprocess.CompletedProcess:
    """The job's script (not before_script: it installs the tool) as the runner runs it."""
    ci = yaml.safe_load(GITLAB.read_text())
    job = ci["lepton-compile"]
    assert any("pip install" in line for line in job["before_script"])
    assert set(overrides) <= set(ci["variables"])
    workspace.mkdir(parents=True)
    env = runner_env(workspace)
    env.update({k: str(v) for k, v in ci["variables"].items()})
    env.update(overrides)
    env.update(
        CI_PIPELINE_SOURCE=event,
        CI_MERGE_REQUEST_TARGET_BRANCH_NAME="main",
        # Nothing listens there: the artifacts API call fails at once, offline.
        CI_API_V4_URL="http://127.0.0.1:9/api/v4",
        CI_PROJECT_ID="1",
        CI_JOB_NAME="lepton-compile",
        CI_JOB_TOKEN="token",
        CI_MERGE_REQUEST_IID="7",
    )
    env.pop("LEPTON_API_TOKEN", None)
    script = workspace.parent / "gitlab-script.sh"
    return run_script(script, "\n".join(job["script"]), workspace, env)


@pytest.mark.slow
@pytest.mark.parametrize(
    "event, current, base, code",
    [
        ("merge_request_event", "real", "real", 0),
        ("merge_request_event", "regressed", "real", 1),
        ("merge_request_event", "real", None, 0),
        ("push", "real", None, 0),
    ],
)
def test_gitlab_job(tmp_path: Path, reports, event: str, current: str, base: str | None, code):
    overrides = {"LEPTON_REPORT": str(reports[current])}
    if base is not None:
        overrides["LEPTON_BASE_REPORT"] = str(reports[base])
    ws = tmp_path / "checkout"
    proc = run_gitlab(ws, event, overrides)
    assert proc.returncode == code, proc.stderr
    paths = yaml.safe_load(GITLAB.read_text())["lepton-compile"]["artifacts"]["paths"]
    gate_md = ws / "lepton-gate.md"
    assert all((ws / p).is_file() for p in paths if p != "lepton-gate.md")
    if event == "merge_request_event" and base is not None:
        table = gate_md.read_text()
        assert table.startswith("## lepton-compile gate")
        assert ("**FAILED**" if code else "**PASSED**") in table and table in proc.stdout
    else:
        assert not gate_md.exists()
    if event == "merge_request_event" and base is None:
        assert "No report of main to compare with: the gate is skipped." in proc.stdout
