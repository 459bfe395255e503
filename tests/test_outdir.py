"""`-o PATH` never destroys what the user had: only an earlier output of ours is replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lepton_compile.cli import main
from lepton_compile.errors import InputError
from lepton_compile.outdir import REPORT_SCHEMA, check_output_dir


def _tree(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def _compile(model: Path, out: Path, *extra: str) -> int:
    return main([str(model), "-o", str(out), "--quick", "-q", "--recipes", "original", *extra])


def test_user_file_at_output_path_is_refused_and_kept(tinycnn_path: Path, tmp_path: Path, capsys):
    target = tmp_path / "thesis.txt"
    target.write_text("four years of work")
    assert _compile(tinycnn_path, target) == 2
    assert target.read_text() == "four years of work"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0] and str(target) in err[0]


def test_user_directory_at_output_path_is_refused_and_kept(
    tinycnn_path: Path, tmp_path: Path, capsys
):
    target = tmp_path / "photos"
    (target / "2019").mkdir(parents=True)
    (target / "2019" / "a.jpg").write_bytes(b"\xff\xd8 jpeg")
    (target / "notes.md").write_text("mine")
    before = _tree(target)
    assert _compile(tinycnn_path, target) == 2
    assert _tree(target) == before
    assert "did not write" in capsys.readouterr().err
    # Nothing staged is left beside it either.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_earlier_output_is_replaced(tinycnn_path: Path, tmp_path: Path):
    out = tmp_path / "run.lepton"
    assert _compile(tinycnn_path, out) == 0
    first = json.loads((out / "report.json").read_text())
    assert first["schema"] == REPORT_SCHEMA
    assert _compile(tinycnn_path, out, "--seed", "1") == 0
    assert (out / "best.onnx").is_file()


def test_earlier_output_with_user_files_added_is_refused(tinycnn_path: Path, tmp_path: Path):
    out = tmp_path / "run.lepton"
    assert _compile(tinycnn_path, out) == 0
    (out / "my-analysis.ipynb").write_text("{}")
    assert _compile(tinycnn_path, out) == 2
    assert (out / "my-analysis.ipynb").read_text() == "{}"


def test_force_replaces_a_user_directory(tinycnn_path: Path, tmp_path: Path):
    target = tmp_path / "scratch"
    target.mkdir()
    (target / "old.txt").write_text("x")
    assert _compile(tinycnn_path, target, "--force") == 0
    assert not (target / "old.txt").exists()
    assert (target / "report.json").is_file()


def test_empty_directory_is_used(tinycnn_path: Path, tmp_path: Path):
    target = tmp_path / "empty"
    target.mkdir()
    assert _compile(tinycnn_path, target) == 0
    assert (target / "best.onnx").is_file()


def test_foreign_report_json_is_not_ours(tmp_path: Path):
    target = tmp_path / "other-tool"
    target.mkdir()
    (target / "report.json").write_text(json.dumps({"schema": "someone-else/v3"}))
    with pytest.raises(InputError, match="did not write"):
        check_output_dir(target)
    (target / "report.json").write_text("not json")
    with pytest.raises(InputError, match="did not write"):
        check_output_dir(target)


def test_api_save_refuses_user_directory(tinycnn_path: Path, tmp_path: Path):
    import lepton_compile

    result = lepton_compile.compile(tinycnn_path, recipes=["original"], quick=True, cache=False)
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.csv").write_text("1,2,3")
    with pytest.raises(InputError):
        result.save(target)
    assert (target / "keep.csv").read_text() == "1,2,3"
    result.save(target, force=True)
    assert (target / "best.onnx").is_file()


def test_bench_output_is_guarded(tinycnn_path: Path, tmp_path: Path):
    target = tmp_path / "mine.json"
    target.write_text("{}")
    assert main(["bench", str(tinycnn_path), "--quick", "-o", str(target)]) == 2
    assert target.read_text() == "{}"


def test_a_name_too_long_is_bad_input(tinycnn_path: Path, tmp_path: Path, capsys):
    target = tmp_path / ("x" * 300)
    assert _compile(tinycnn_path, target) == 2
    assert "cannot be used as the output" in capsys.readouterr().err
