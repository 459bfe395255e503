"""Output paths: never replace what the user owns; replace an earlier output of ours whole.

``-o PATH`` may name something that already exists. Replacing an earlier lepton-compile
output is what a re-run is for; anything else (the user's own file, a directory of their
files, an earlier output they have added files to) is refused with a one-line error and exit
code 2, unless they say ``--force``. The check runs before any work, so a refused path costs
nothing, and again just before the replace.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from lepton_compile.errors import InputError

REPORT_SCHEMA = "lepton-compile/report/v1"
EXPORT_SCHEMA = "lepton-compile/export/v1"

# What a run writes into its output directory (and nothing else may be there to replace it);
# `export` is where `lepton-compile export` puts a compile's deployable files by default.
_OUR_FILES = frozenset(
    {"best.onnx", "report.json", "report.md", "report.html", "variants", "export"}
)
# What `lepton-compile export` writes into its output directory; export.json marks it ours.
_EXPORT_FILES = frozenset({"export.json", "model.pt2", "model.onnx", "inputs", "bin"})

# metadata_props key that marks a model file written by `lepton-compile optimize`.
OPTIMIZED_MARK = "lepton_compile.optimized_from"


def _is_our_report(path: Path, schema: str = REPORT_SCHEMA) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("schema") == schema
    except (OSError, ValueError, AttributeError):
        return False


def _foreign_entries(directory: Path, ours: frozenset[str] = _OUR_FILES) -> list[str]:
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name not in ours and not p.name.endswith(".onnx.data")
    )


def check_output_dir(path: Path, force: bool = False) -> None:
    """Raise InputError unless ``path`` may become (or be replaced by) an output directory."""
    try:
        _check_output_dir(path, force)
    except OSError as e:  # a name too long, a folder we may not read: the path is bad input
        raise InputError(f"{path}: cannot be used as the output: {e.strerror or e}") from None


def check_export_dir(path: Path, force: bool = False) -> None:
    """``check_output_dir`` for the output of `lepton-compile export` (marked by export.json)."""
    try:
        _check_output_dir(path, force, ("export.json", EXPORT_SCHEMA), _EXPORT_FILES)
    except OSError as e:
        raise InputError(f"{path}: cannot be used as the output: {e.strerror or e}") from None


def _check_output_dir(
    path: Path,
    force: bool,
    mark: tuple[str, str] = ("report.json", REPORT_SCHEMA),
    ours: frozenset[str] = _OUR_FILES,
) -> None:
    if force or not (path.exists() or path.is_symlink()):
        return
    if not path.is_dir() or path.is_symlink():
        raise InputError(
            f"{path}: exists and is not an output directory of lepton-compile; choose another "
            "-o path or add --force to replace it"
        )
    entries = list(path.iterdir())
    if not entries:
        return  # an empty directory holds nothing to lose
    if not _is_our_report(path / mark[0], mark[1]):
        raise InputError(
            f"{path}: is a directory that lepton-compile did not write (no {mark[0]} of "
            "ours); choose another -o path or add --force to replace it"
        )
    foreign = _foreign_entries(path, ours)
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(
            f"{path}: an earlier output that now holds files lepton-compile did not write "
            f"({shown}); move them or add --force to replace the directory"
        )


def replace_dir(
    out: Path,
    fill: Callable[[Path], None],
    force: bool = False,
    check: Callable[[Path, bool], None] = check_output_dir,
) -> Path:
    """Fill a fresh directory with ``fill(stage)``, then put it at ``out`` in one rename.

    ``out`` is checked again right before (``check``: ``check_output_dir`` or
    ``check_export_dir``); on any error the staged directory is removed and ``out`` is left
    as it was.
    """
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(stage, 0o777 & ~umask)  # mkdtemp's 0700 is for the stage, not the result
        fill(stage)
        check(out, force)
        if out.exists() or out.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
            os.replace(out, old / out.name)
            os.replace(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return out


def write_text(path: Path, text: str) -> None:
    """Write a text file through a temporary file in the same folder and a rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_output_text(path: Path, mark: str, force: bool = False) -> None:
    """Raise InputError unless a text output may go to ``path``: a new file in an existing
    folder, or an earlier output of ours (its text starts with ``mark``), or ``force``."""
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file path")
    if not path.parent.is_dir():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    if force or not path.exists():
        return
    try:
        with open(path, encoding="utf-8") as f:
            ours = f.read(len(mark)) == mark
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise InputError(
            f"{path}: exists and was not written by lepton-compile; choose another path or "
            "add --force to replace it"
        )


def is_our_model_file(path: Path) -> bool:
    """True for a model file that `lepton-compile optimize` wrote (it carries our mark)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return any(p.key == OPTIMIZED_MARK for p in model.metadata_props)


def check_output_file(path: Path, source: Path | None = None, force: bool = False) -> None:
    """Raise InputError unless ``path`` may be written as a model file.

    Never the input itself (not even with --force), never a directory; an existing file only
    when ``optimize`` wrote it, or with ``force``.
    """
    try:
        _check_output_file(path, source, force)
    except OSError as e:
        raise InputError(f"{path}: cannot be used as the output: {e.strerror or e}") from None


def _check_output_file(path: Path, source: Path | None, force: bool) -> None:
    if source is not None and path.exists() and source.exists() and path.samefile(source):
        raise InputError(f"{path}: is the input model; choose another output path")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected an .onnx file path")
    if force or not path.exists():
        return
    if not is_our_model_file(path):
        raise InputError(
            f"{path}: exists and was not written by lepton-compile optimize; choose another "
            "-o path or add --force to replace it"
        )
