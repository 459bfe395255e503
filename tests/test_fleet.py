"""``lepton-compile fleet``: many models, a compile and output each, one summary; real runs."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import mlp_text, text_model

from lepton_compile import fleet
from lepton_compile.cli import main
from lepton_compile.errors import InputError
from lepton_compile.outdir import REPORT_SCHEMA

# Short runs: the original and one pass pipeline, onnxruntime only, in this process.
FAST = ["--quick", "--recipes", "original,fused", "--backend", "ort", "--no-isolate"]


def _mlp(path: Path, inputs: int, hidden: int, outputs: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    m = text_model(
        mlp_text(inputs, hidden, outputs),
        {
            "w1": rng.standard_normal((inputs, hidden)).astype(np.float32) * 0.2,
            "b1": rng.standard_normal(hidden).astype(np.float32) * 0.1,
            "w2": rng.standard_normal((hidden, outputs)).astype(np.float32) * 0.2,
            "b2": rng.standard_normal(outputs).astype(np.float32) * 0.1,
        },
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(m, path)
    return path


def _models(root: Path, tinycnn_path: Path) -> Path:
    """Three models (two share the stem "mlp") and one truncated file."""
    root.mkdir(parents=True)
    shutil.copy(tinycnn_path, root / "tinycnn.onnx")
    _mlp(root / "mlp.onnx", 32, 64, 8, seed=0)
    _mlp(root / "sub" / "mlp.onnx", 16, 32, 4, seed=1)
    data = tinycnn_path.read_bytes()
    (root / "broken.onnx").write_bytes(data[: len(data) // 3])
    return root


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["fleet", *args])
    return code, out.getvalue(), err.getvalue()


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def fleet_runs(tmp_path_factory: pytest.TempPathFactory, tinycnn_path: Path) -> dict[str, Any]:
    """One fleet over a directory, then the same fleet again (it resumes). The output sits
    inside the models' directory, so the second run also shows that earlier outputs of
    lepton-compile are not taken for models."""
    root = _models(tmp_path_factory.mktemp("fleet") / "models", tinycnn_path)
    out = root / "out"
    first = _run(str(root), "-o", str(out), *FAST)
    summary = json.loads((out / "fleet.json").read_text())
    files = {d: _snapshot(out / d) for d in ("mlp", "mlp-2", "tinycnn")}
    second = _run(str(root), "-o", str(out), *FAST)
    return {
        "root": root,
        "out": out,
        "first": first,
        "summary": summary,
        "files": files,
        "second": second,
        "resumed": json.loads((out / "fleet.json").read_text()),
    }


def test_three_models_and_a_broken_one(fleet_runs: dict[str, Any]):
    code, _, err = fleet_runs["first"]
    summary, out = fleet_runs["summary"], fleet_runs["out"]
    assert code == 1  # a model failed, the others finished
    assert summary["schema"] == fleet.FLEET_SCHEMA
    rows = summary["models"]
    # Sorted by path; the second "mlp" gets its own folder.
    assert [(r["model"], r["name"]) for r in rows] == [
        ("broken.onnx", "broken"),
        ("mlp.onnx", "mlp"),
        ("sub/mlp.onnx", "mlp-2"),
        ("tinycnn.onnx", "tinycnn"),
    ]
    broken, *good = rows
    assert broken["status"] == "failed" and "broken.onnx" in broken["reason"]
    assert "\n" not in broken["reason"] and not (out / "broken").exists()
    for r in good:
        assert r["status"] in ("ok", "no gain") and r["constraints_met"] is True
        assert r["resumed"] is False
        rep = json.loads((out / r["name"] / "report.json").read_text())
        assert (out / r["name"] / "best.onnx").is_file()
        # The row's figures are those of the model's own report: original against the pick.
        by_id = {v["id"]: v for v in rep["variants"]}
        base, pick = by_id[rep["baseline"]], by_id[rep["best"]["id"]]
        assert r["pick"] == rep["best"]["id"] and r["sha256"] == rep["model"]["sha256"]
        assert r["energy_j"]["original"] == base["energy_j"]["per_inference"]
        assert r["energy_j"]["best"] == pick["energy_j"]["per_inference"]
        assert r["energy_j"]["method"]["best"] == pick["energy_j"]["method"]
        assert r["latency_ms"]["original"] == base["latency_ms"]["mean"]
        assert r["size_bytes"] == {"original": base["size_bytes"], "best": pick["size_bytes"]}
        if r["status"] == "ok":
            assert r["latency_ms"]["ratio"] == rep["best"]["ratio_to_original"]["latency"]
        else:
            assert r["pick"] == rep["baseline"] and r["reason"]
    t = summary["totals"]
    assert (t["models"], t["failed"], t["ok"] + t["no_gain"], t["resumed"]) == (4, 1, 3, 0)
    saved = t["energy_saved_per_million"]
    expect = sum((r["energy_j"]["original"] - r["energy_j"]["best"]) * 1e6 for r in good)
    assert math.isclose(saved["joules"], expect, rel_tol=1e-9, abs_tol=1e-12)
    assert math.isclose(saved["kwh"], expect / 3.6e6, rel_tol=1e-9, abs_tol=1e-18)
    assert saved["models"] == 3
    assert saved["estimated"] == any(r["energy_j"]["estimated"] for r in good)
    md = (out / "fleet.md").read_text()
    assert len([ln for ln in md.splitlines() if ln.startswith("| ")]) == 1 + 4
    assert ("estimated (not measured)" in md) == saved["estimated"]
    # One progress line per model, in order, the failed one saying why.
    lines = [ln for ln in err.splitlines() if re.match(r"\[\d/4\] [\w-]+: ", ln)]
    assert [ln.split("]")[0] for ln in lines] == ["[1/4", "[2/4", "[3/4", "[4/4"]
    assert "FAILED" in lines[0] and "broken.onnx" in lines[0]


def test_a_rerun_resumes_and_leaves_the_outputs_alone(fleet_runs: dict[str, Any]):
    code, _, err = fleet_runs["second"]
    out, rows = fleet_runs["out"], fleet_runs["resumed"]["models"]
    assert code == 1
    # The outputs inside the models' directory were not taken for models.
    assert [r["name"] for r in rows] == ["broken", "mlp", "mlp-2", "tinycnn"]
    assert [r["resumed"] for r in rows] == [False, True, True, True]
    assert rows[0]["status"] == "failed"
    assert fleet_runs["resumed"]["totals"]["resumed"] == 3
    for name, files in fleet_runs["files"].items():
        assert _snapshot(out / name) == files, name
    first = {r["name"]: r for r in fleet_runs["summary"]["models"]}
    for r in rows[1:]:
        assert (
            r["energy_j"] == first[r["name"]]["energy_j"] and r["pick"] == first[r["name"]]["pick"]
        )
    assert "resumed" in err


def test_other_options_do_not_resume(fleet_runs: dict[str, Any]):
    out, summary = fleet_runs["out"], fleet_runs["resumed"]
    held = summary["outputs"]["mlp"]
    entry = fleet.ModelEntry(fleet_runs["root"] / "mlp.onnx", "mlp.onnx")
    assert fleet._resumable(held, entry, out / "mlp", held["options_sha256"]) is not None
    assert fleet._resumable(held, entry, out / "mlp", "0" * 64) is None
    # Other bytes under the same name: compiled again.
    other = fleet.ModelEntry(fleet_runs["root"] / "sub" / "mlp.onnx", "sub/mlp.onnx")
    assert fleet._resumable(held, other, out / "mlp", held["options_sha256"]) is None


class _Rows(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[str] = []
        self.bars: list[str] = []
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "tr" and "model" in classes:
            self.rows.append(str(a.get("data-model")))
        if tag == "g" and "model" in classes:
            self.bars.append(str(a.get("data-model")))
        if "href" in a:
            self.hrefs.append(str(a["href"]))


def test_fleet_html_is_self_contained_with_a_row_per_model(fleet_runs: dict[str, Any]):
    page = (fleet_runs["out"] / "fleet.html").read_text()
    rest = page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert not re.search(r"https?://|//[a-z]", rest, re.I)
    assert not re.search(r"<(script|link|img|iframe|object|embed|audio|video)\b", page, re.I)
    assert not re.search(r"url\(|@import|src\s*=", page, re.I)
    parsed = _Rows()
    parsed.feed(page)
    names = ["broken", "mlp", "mlp-2", "tinycnn"]
    assert parsed.rows == names and parsed.bars == names
    # Links only to each model's own report beside the page.
    assert parsed.hrefs == [f"{n}/report.html" for n in names[1:]]
    for h in parsed.hrefs:
        assert (fleet_runs["out"] / h).is_file()


def test_list_file_with_comments_and_relative_paths(fleet_runs: dict[str, Any], tmp_path: Path):
    root = fleet_runs["root"]
    lists = tmp_path / "lists"
    lists.mkdir()
    listing = lists / "models.txt"
    listing.write_text(
        "# the fleet\n"
        "\n"
        f"../{_rel(root, tmp_path)}/sub/mlp.onnx   # relative to this file\n"
        f"  {root / 'tinycnn.onnx'}\n"
        f"../{_rel(root, tmp_path)}/sub/../sub/mlp.onnx\n"  # the same file again: once
    )
    out = tmp_path / "out"
    code, stdout, _ = _run(str(listing), "-o", str(out), *FAST, "--json")
    assert code == 0  # every model ran and met its constraints
    summary = json.loads((out / "fleet.json").read_text())
    assert json.loads(stdout) == summary
    assert [(r["name"], r["status"] != "failed") for r in summary["models"]] == [
        ("mlp", True),
        ("tinycnn", True),
    ]
    assert summary["models"][0]["model"] == f"../{_rel(root, tmp_path)}/sub/mlp.onnx"
    assert (out / "mlp" / "report.json").is_file() and (out / "tinycnn" / "best.onnx").is_file()


def _rel(root: Path, tmp_path: Path) -> str:
    """``root`` relative to ``tmp_path``, for paths written relative to a list beside it."""
    return Path(os.path.relpath(root, tmp_path)).as_posix()


def test_outdir_with_the_users_files_is_refused(fleet_runs: dict[str, Any], tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    code, _, err = _run(str(fleet_runs["root"]), "-o", str(out), *FAST)
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("lepton-compile: error:") and "fleet.json" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "mine"
    # An earlier fleet output with a file of the user's added is theirs too.
    earlier = fleet_runs["out"]
    (earlier / "mine.txt").write_text("x")
    try:
        before = _snapshot(earlier)
        assert _run(str(fleet_runs["root"]), "-o", str(earlier), *FAST)[0] == 2
        assert _snapshot(earlier) == before
    finally:
        (earlier / "mine.txt").unlink()


def test_bad_usage_writes_nothing(tmp_path: Path, fleet_runs: dict[str, Any]):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "out"
    assert _run(str(empty), "-o", str(out))[0] == 2  # no models
    assert _run(str(tmp_path / "nothing"), "-o", str(out))[0] == 2
    assert _run(str(fleet_runs["root"]))[0] == 2  # no -o
    # The output may not be the models' own folder, not even with --force.
    sub = fleet_runs["root"] / "sub"
    before = _snapshot(sub)
    code, _, err = _run(str(sub), "-o", str(sub), "--force", *FAST)
    assert code == 2 and "holds the model" in err
    assert _snapshot(sub) == before
    assert not out.exists()


def test_force_replaces_what_was_there(fleet_runs: dict[str, Any], tmp_path: Path):
    out = tmp_path / "out"
    out.write_text("a file where the output goes")
    code, _, _ = _run(str(fleet_runs["root"] / "sub"), "-o", str(out), *FAST, "--force")
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["fleet.html", "fleet.json", "fleet.md", "mlp"]


# --------------------------------------------------------------------------- the parts


def test_find_models_skips_earlier_outputs_and_hidden_folders(tmp_path: Path):
    for p in ("a.onnx", "b/c.onnx", ".venv/x.onnx", "run/best.onnx", "run/variants/v.onnx"):
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_bytes(b"")
    (tmp_path / "run" / "report.json").write_text(json.dumps({"schema": REPORT_SCHEMA}))
    (tmp_path / "run" / "own.onnx").write_bytes(b"")
    assert [m.shown for m in fleet.find_models(tmp_path)] == ["a.onnx", "b/c.onnx", "run/own.onnx"]
    # Without our report the folder is the user's: its best.onnx is a model like any other.
    (tmp_path / "run" / "report.json").unlink()
    assert "run/best.onnx" in [m.shown for m in fleet.find_models(tmp_path)]


def test_list_parsing(tmp_path: Path):
    (tmp_path / "l.txt").write_text("# c\n\na.onnx  # note\nsub/b.onnx\n#x.onnx\na.onnx\n")
    found = fleet.find_models(tmp_path / "l.txt")
    assert [(m.shown, m.path) for m in found] == [
        ("a.onnx", tmp_path / "a.onnx"),
        ("sub/b.onnx", tmp_path / "sub" / "b.onnx"),
    ]
    (tmp_path / "none.txt").write_text("# only a comment\n\n")
    with pytest.raises(InputError, match="lists no model"):
        fleet.find_models(tmp_path / "none.txt")


def test_output_names_are_unique():
    models = [fleet.ModelEntry(Path(p), p) for p in ("a/m.onnx", "b/m.onnx", "M.onnx", "x.onnx")]
    assert fleet.output_names(models) == ["m", "m-2", "M-3", "x"]
    assert fleet.output_names([fleet.ModelEntry(Path("fleet.json.onnx"), "")]) == ["fleet.json-2"]


def test_check_fleet_dir(tmp_path: Path):
    fleet.check_fleet_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    fleet.check_fleet_dir(tmp_path / "empty")
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "fleet.json").write_text(json.dumps({"schema": fleet.FLEET_SCHEMA}))
    (ours / "m").mkdir()  # a model folder its compile has not filled yet
    fleet.check_fleet_dir(ours)
    (ours / "m" / "x.txt").write_text("")
    with pytest.raises(InputError, match="did not write"):
        fleet.check_fleet_dir(ours)
    fleet.check_fleet_dir(ours, force=True)
    model = fleet.ModelEntry(ours / "m" / "x.onnx", "x.onnx")
    with pytest.raises(InputError, match="holds the model"):
        fleet.check_fleet_dir(ours, force=True, models=[model])


def test_every_compile_flag_is_a_fleet_flag():
    from lepton_compile.cli import build_parser
    from lepton_compile.cli.cmd_compile import build_options

    root = build_parser()
    commands = next(a for a in root._actions if a.dest == "command").choices
    flags = {name: set(p._option_string_actions) for name, p in commands.items()}
    assert flags["compile"] - {"--version"} <= flags["fleet"]
    extra = ["--recipes", "fused", "--quick", "--max-latency-ms", "5", "--input-shape", "x=1x3"]
    one = root.parse_args(["compile", "m.onnx", *extra])
    many = root.parse_args(["fleet", "models/", "-o", "out", *extra])
    assert build_options(many) == build_options(one)


def _dynamic_width(path: Path) -> Path:
    """Relu over x[1, W]: W must be fixed, per model, for the run to measure anything."""
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "width",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "W"])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


def test_list_lines_fix_each_models_own_input_shapes(tmp_path: Path):
    _dynamic_width(tmp_path / "wide.onnx")
    _dynamic_width(tmp_path / "free.onnx")
    listing = tmp_path / "models.txt"
    listing.write_text("wide.onnx --input-shape x=1x8   # its own width\nfree.onnx\n")
    out = tmp_path / "out"
    code, _, _ = _run(str(listing), "-o", str(out), *FAST)
    rows = {r["name"]: r for r in json.loads((out / "fleet.json").read_text())["models"]}
    assert code == 1  # free.onnx has no width: its row fails, naming the flag
    assert rows["wide"]["status"] != "failed"
    assert rows["free"]["status"] == "failed" and "--input-shape x=" in rows["free"]["reason"]
    report = json.loads((out / "wide" / "report.json").read_text())
    assert report["model"]["inputs"][0]["shape"] == [1, 8]
    # A line's new shape is a new compile, not a resumed one; the same shape resumes.
    listing.write_text("wide.onnx --input-shape x=1x4\n")
    _run(str(listing), "-o", str(out), *FAST)
    rows = {r["name"]: r for r in json.loads((out / "fleet.json").read_text())["models"]}
    assert rows["wide"]["resumed"] is False
    report = json.loads((out / "wide" / "report.json").read_text())
    assert report["model"]["inputs"][0]["shape"] == [1, 4]
    _run(str(listing), "-o", str(out), *FAST)
    rows = {r["name"]: r for r in json.loads((out / "fleet.json").read_text())["models"]}
    assert rows["wide"]["resumed"] is True
    listing.write_text("wide.onnx --batch 4\n")
    code, _, err = _run(str(listing), "-o", str(tmp_path / "out2"), *FAST)
    assert code == 2 and "only --input-shape NAME=DIMS may follow" in err
    assert not (tmp_path / "out2").exists()


def test_jobs_above_one_need_the_ray_executor(tmp_path: Path):
    from lepton_compile.errors import InputError
    from lepton_compile.fleet import run_fleet

    (tmp_path / "m.onnx").write_bytes(b"")
    with pytest.raises(InputError, match="--jobs above 1 needs --executor ray"):
        run_fleet(tmp_path, tmp_path / "out", jobs=2)
    with pytest.raises(InputError, match="--jobs must be"):
        run_fleet(tmp_path, tmp_path / "out", jobs=0)
    assert not (tmp_path / "out").exists()
