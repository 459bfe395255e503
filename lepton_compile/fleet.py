"""Many models, one summary: a compile and save per model, then fleet.json, fleet.md, fleet.html.

    lepton-compile fleet models/ -o out/        every *.onnx below models/
    lepton-compile fleet models.txt -o out/     one model path per line

Each model is an ordinary compile, saved to ``OUTDIR/<model-stem>/`` with its own device
record and pick; the summary has one row per model (original and best joules per inference,
latency with the paired ratio, size, the pick and its status) and the energy saved per million
inferences over the fleet. A model that fails is a row with its reason; the others go on. A
re-run resumes: a model whose output already holds the report of the same model bytes under
the same options is not compiled again.

Locally, models run one after another: every compile measures on this machine, and two
measurements at once would each slow the other down and their figures would not compare.
On Ray (``executor="ray"``), ``jobs`` models may run at once: their builds and probes spread
over the cluster, while each model's measurement takes the whole measuring node
(``executor_ray``), so measurements still never overlap. Where each compile's variants run
is the compile's own option (``CompileOptions.executor``), passed through to every model.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_compile import __version__
from lepton_compile.errors import ClusterLost, InputError
from lepton_compile.fleet_report import J_PER_KWH, _d, _num, progress_line, write_all
from lepton_compile.options import CompileOptions
from lepton_compile.outdir import REPORT_SCHEMA, check_output_dir
from lepton_compile.passes.errors import one_line
from lepton_compile.serving_report import _finite
from lepton_compile.stages import Observer

__all__ = [
    "FLEET_SCHEMA",
    "FleetObserver",
    "FleetResult",
    "ModelEntry",
    "check_fleet_dir",
    "find_models",
    "output_names",
    "run_fleet",
]

log = logging.getLogger(__name__)

FLEET_SCHEMA = "lepton-compile/fleet/v1"
SUMMARY_FILES = ("fleet.json", "fleet.md", "fleet.html")
STATUSES = ("ok", "no gain", "failed")
# Options that change where results are kept or logged, not the results: a re-run that
# differs only in these resumes.
_NOT_RESULT_OPTIONS = frozenset(
    {"cache", "cache_path", "mlflow", "mlflow_experiment", "ray_address", "work_dir"}
)
# A line comment in a list file: `#` at the start, or after a blank.
_COMMENT = re.compile(r"(^|\s)#.*$")


# --------------------------------------------------------------------------- which models


@dataclass(frozen=True)
class ModelEntry:
    """One model of the fleet: its file, and its path as the user wrote or sees it."""

    path: Path
    shown: str
    # From a list line's own ``--input-shape NAME=DIMS`` flags: models differ in their inputs.
    input_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()


def find_models(source: str | os.PathLike[str]) -> list[ModelEntry]:
    """The models ``source`` names: a directory (every *.onnx below it, sorted), a list file
    (one path per line, relative to the list's folder; ``#`` comments), or one .onnx file.

    Raises InputError when ``source`` is missing, unreadable, or names no model.
    """
    src = Path(source)
    if not src.exists():
        raise InputError(f"{src}: no such file or directory")
    if src.is_dir():
        found = _scan(src)
        if not found:
            raise InputError(f"{src}: holds no *.onnx model (outputs of lepton-compile skipped)")
        return found
    if src.suffix.lower() == ".onnx":
        return [ModelEntry(src, src.name)]
    try:
        text = src.read_text(encoding="utf-8-sig")  # a BOM is not part of the first path
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{src}: cannot read the model list: {one_line(e)}") from None
    found = _parse_list(text, src.parent)
    if not found:
        raise InputError(f"{src}: lists no model (one path per line; # starts a comment)")
    return found


def _scan(root: Path) -> list[ModelEntry]:
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        # Hidden folders (.git, .venv, our own staging folders) hold no models of the fleet;
        # a virtual environment alone would add the onnx wheel's test models.
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        ours = _is_compile_output(here)
        if ours:
            # An earlier output of lepton-compile: its variants and pick are not inputs.
            dirs[:] = [d for d in dirs if d != "variants"]
        for f in files:
            if f.endswith(".onnx") and not (ours and f == "best.onnx") and (here / f).is_file():
                found.append(ModelEntry(here / f, (here / f).relative_to(root).as_posix()))
    return sorted(found, key=lambda m: m.shown)


def _is_compile_output(folder: Path) -> bool:
    return _read_json(folder / "report.json", REPORT_SCHEMA) is not None


def _parse_list(text: str, base: Path) -> list[ModelEntry]:
    found: list[ModelEntry] = []
    seen: set[Path] = set()
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        words = shlex.split(line)
        path = Path(words[0]).expanduser()
        path = path if path.is_absolute() else base / path
        shapes = _line_shapes(words[1:], raw.strip())
        # The same file listed twice is one model: compiling it twice measures nothing new.
        key = Path(os.path.abspath(path))
        if key in seen:
            continue
        seen.add(key)
        found.append(ModelEntry(path, words[0], shapes))
    return found


def _line_shapes(words: Sequence[str], line: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``--input-shape NAME=DIMS`` pairs after a list line's path (nothing else is allowed)."""
    from lepton_compile.intake import parse_shape_arg

    shapes = []
    rest = list(words)
    while rest:
        flag = rest.pop(0)
        if flag.startswith("--input-shape="):
            value = flag.split("=", 1)[1]
        elif flag == "--input-shape" and rest:
            value = rest.pop(0)
        else:
            raise InputError(
                f"list line {line!r}: after the model path only --input-shape NAME=DIMS may follow"
            )
        name, dims = parse_shape_arg(value)
        shapes.append((name, tuple(dims)))
    return tuple(shapes)


def output_names(models: Sequence[ModelEntry]) -> list[str]:
    """Each model's output folder name: its stem, with -2, -3, ... when stems repeat (compared
    without case, for file systems that ignore it), never a summary file's name."""
    taken = {n.lower() for n in SUMMARY_FILES}
    names = []
    for m in models:
        stem = m.path.stem or "model"
        name, k = stem, 1
        while name.lower() in taken:
            k += 1
            name = f"{stem}-{k}"
        taken.add(name.lower())
        names.append(name)
    return names


# --------------------------------------------------------------------------- the output folder


def check_fleet_dir(out: Path, force: bool = False, models: Sequence[ModelEntry] = ()) -> None:
    """Raise InputError unless ``out`` may hold this fleet's output.

    It may be new, empty, or an earlier fleet output (its fleet.json, the summary files and
    one earlier compile output per model, nothing else); anything else only with ``force``.
    Never a folder that holds one of the models, and with ``force`` never one that holds the
    current directory: replacing it would delete them.
    """
    try:
        _check_fleet_dir(out, force, models)
    except OSError as e:
        raise InputError(f"{out}: cannot be used as the output: {e.strerror or e}") from None


def _check_fleet_dir(out: Path, force: bool, models: Sequence[ModelEntry]) -> None:
    where = Path(os.path.abspath(out))
    for m in models:
        if Path(os.path.abspath(m.path)).is_relative_to(where):
            raise InputError(
                f"{out}: holds the model {m.shown}; choose an output directory outside the models"
            )
    problem = _contents_problem(out)
    if problem is None:
        return
    if not force:
        raise InputError(problem)
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise InputError(f"{out}: is or holds the current directory; choose another -o path")


def _contents_problem(out: Path) -> str | None:
    """Why ``out`` may not hold a fleet output without --force; None when it may."""
    if not (out.exists() or out.is_symlink()):
        return None
    if not out.is_dir() or out.is_symlink():
        return (
            f"{out}: exists and is not an output directory of lepton-compile fleet; choose "
            "another -o path or add --force to replace it"
        )
    entries = sorted(out.iterdir())
    if not entries:
        return None
    if _read_json(out / "fleet.json", FLEET_SCHEMA) is None:
        return (
            f"{out}: is a directory that lepton-compile fleet did not write (no fleet.json of "
            "ours); choose another -o path or add --force to replace it"
        )
    foreign = [p.name for p in entries if not _ours(p)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        return (
            f"{out}: an earlier fleet output that now holds files lepton-compile did not write "
            f"({shown}); move them or add --force to replace the directory"
        )
    return None


def _ours(entry: Path) -> bool:
    """A summary file, or a per-model folder that a compile may replace."""
    if entry.name in SUMMARY_FILES:
        return entry.is_file() and not entry.is_symlink()
    if not entry.is_dir() or entry.is_symlink():
        return False
    try:
        check_output_dir(entry)
    except InputError:
        return False
    return True


def _clear(out: Path) -> None:
    """``--force``: what is at ``out`` goes, so that the fleet starts from nothing there."""
    if out.is_dir() and not out.is_symlink():
        shutil.rmtree(out)
    elif out.exists() or out.is_symlink():
        out.unlink()


def _read_json(path: Path, schema: str) -> dict[str, Any] | None:
    """The JSON object at ``path`` when it carries ``schema``, else None."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("schema") == schema else None


# --------------------------------------------------------------------------- options


def options_record(options: CompileOptions) -> dict[str, Any]:
    """The options that shape a compile's results, as plain JSON (the metric by its name)."""
    rec: dict[str, Any] = {"tool_version": __version__}
    for f in dataclasses.fields(options):
        if f.name in _NOT_RESULT_OPTIONS:
            continue
        value = getattr(options, f.name)
        rec[f.name] = options.metric_name() if f.name == "metric" else _plain(value)
    return rec


def _plain(x: Any) -> Any:
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    if hasattr(x, "to_dict"):
        return _plain(x.to_dict())
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [_plain(v) for v in x]
    return repr(x)


def options_sha256(record: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------- rows


def row_from_report(
    report: dict[str, Any], entry: ModelEntry, name: str, **extra: Any
) -> dict[str, Any]:
    """One fleet row from a model's report.json: original against the pick."""
    variants = {v.get("id"): v for v in report.get("variants") or [] if isinstance(v, dict)}
    base_id = report.get("baseline")
    best = _d(report.get("best"))
    base, pick = _d(variants.get(base_id)), _d(variants.get(best.get("id")))
    met = bool(_d(report.get("constraints")).get("met"))
    gain = met and best.get("id") != base_id
    e_base, e_pick = _d(base.get("energy_j")), _d(pick.get("energy_j"))
    j0, j1 = _num(e_base.get("per_inference")), _num(e_pick.get("per_inference"))
    methods = {"original": e_base.get("method"), "best": e_pick.get("method")}
    saved = (j0 - j1) * 1e6 if j0 is not None and j1 is not None else None
    ratios = _d(best.get("ratio_to_original"))
    reason = None
    if not met:
        reason = f"nothing met the constraints: {best.get('reason') or 'no reason given'}"
    elif not gain:
        reason = str(best.get("reason") or "no variant beat the original")
    return {
        "name": name,
        "model": entry.shown,
        "path": str(entry.path),
        "sha256": _d(report.get("model")).get("sha256"),
        "status": "ok" if gain else "no gain",
        "reason": reason,
        "pick": best.get("id"),
        "pick_reason": best.get("reason"),
        "decided": best.get("decided"),
        # With --batch-sizes: the batch to serve the pick at (the figures here are at the
        # model's own batch; the model's report has them per batch size).
        "serve_batch": best.get("batch"),
        "constraints_met": met,
        "output": name,
        "energy_j": {
            "original": j0,
            "best": j1,
            "method": methods,
            "estimated": "estimated" in methods.values(),
            "ratio": ratios.get("energy") if gain else None,
        },
        "latency_ms": {
            "original": _d(base.get("latency_ms")).get("mean"),
            "best": _d(pick.get("latency_ms")).get("mean"),
            "speedup": best.get("latency_speedup"),
            "ratio": ratios.get("latency") if gain else None,
        },
        "size_bytes": {"original": base.get("size_bytes"), "best": pick.get("size_bytes")},
        "saved_j_per_million": saved,
        "wall_s": report.get("wall_s"),
        **extra,
    }


def failed_row(entry: ModelEntry, name: str, reason: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "model": entry.shown,
        "path": str(entry.path),
        "sha256": None,
        "status": "failed",
        "reason": reason,
        "pick": None,
        "constraints_met": False,
        "output": None,
        "energy_j": None,
        "latency_ms": None,
        "size_bytes": None,
        "saved_j_per_million": None,
        **extra,
    }


def totals(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status, and the energy saved per million inferences over the fleet."""
    measured = [r for r in rows if _finite(r.get("saved_j_per_million"))]
    joules = math.fsum(r["saved_j_per_million"] for r in measured)
    return {
        "models": len(rows),
        **{s.replace(" ", "_"): sum(r["status"] == s for r in rows) for s in STATUSES},
        "resumed": sum(bool(r.get("resumed")) for r in rows),
        "constraints_met": all(r.get("constraints_met") for r in rows),
        "energy_saved_per_million": {
            "joules": joules,
            "kwh": joules / J_PER_KWH,
            "estimated": any(_d(r.get("energy_j")).get("estimated") for r in measured),
            "models": len(measured),
            "definition": "sum over models of (original - best joules per inference) x 1e6",
        },
    }


# --------------------------------------------------------------------------- running


class FleetObserver:
    """Progress hooks of a fleet run; the CLI draws them with rich, the API logs them."""

    def started(self, index: int, total: int, name: str) -> Observer:
        """Model ``index`` (from 1) of ``total`` begins; returns the hooks for its compile."""
        return Observer()

    def finished(self, index: int, total: int, row: dict[str, Any]) -> None:
        log.info("%s", progress_line(index, total, row))


@dataclass
class FleetResult:
    """What ``run_fleet`` returns: the summary (fleet.json's content) and where it went."""

    summary: dict[str, Any]
    outdir: Path

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.summary["models"]

    @property
    def all_ok(self) -> bool:
        """Every model ran and met its constraints (the CLI's exit code 0)."""
        return all(r["status"] != "failed" and r.get("constraints_met") for r in self.rows)


def run_fleet(
    source: str | os.PathLike[str] | Sequence[ModelEntry | str | os.PathLike[str]],
    outdir: str | os.PathLike[str],
    options: CompileOptions | None = None,
    *,
    force: bool = False,
    resume: bool = True,
    observer: FleetObserver | None = None,
    jobs: int = 1,
    **kwargs: Any,
) -> FleetResult:
    """Compile and save every model of ``source`` into ``outdir/<stem>/``; write the summary.

    ``source`` is a directory, a list file or a model (``find_models``), or a sequence of
    model paths. Options come as for ``lepton_compile.compile``, and reach every model's
    compile. Bad usage (no models, an ``outdir`` holding someone else's files without
    ``force``, a bad option) raises InputError before anything is written; a model that
    fails is a failed row. With ``resume``, a model whose output holds the report of the same
    model bytes and options is not compiled again. The summary is rewritten after each model,
    so that an interrupted fleet resumes from where it stopped. ``jobs``: models compiled at
    once, with the Ray executor only (see the module docstring).
    """
    opts = options if options is not None else CompileOptions(**kwargs)
    opts.validate()
    if not (isinstance(jobs, int) and jobs >= 1):
        raise InputError("--jobs must be a whole number of 1 or more")
    if jobs > 1 and opts.executor != "ray":
        raise InputError(
            "--jobs above 1 needs --executor ray: on this machine two models measured at once "
            "would slow each other down"
        )
    models = _entries(source)
    out = Path(outdir)
    check_fleet_dir(out, force, models)
    if force and _contents_problem(out) is not None:
        _clear(out)
    # What each model folder in OUTDIR holds (model bytes, options): kept across runs, so
    # that a fleet interrupted before some model still resumes it next time.
    previous = _read_json(out / "fleet.json", FLEET_SCHEMA) or {}
    held = {k: v for k, v in _d(previous.get("outputs")).items() if _d(v)}
    record = options_record(opts)
    opts_sha = options_sha256(record)
    out.mkdir(parents=True, exist_ok=True)
    obs = observer or FleetObserver()
    names = output_names(models)
    t0 = time.perf_counter()
    done: list[dict[str, Any]] = []
    summary = _summary(source, models, done, held, record, opts_sha, t0)
    write_all(summary, out)
    order = {name: i for i, name in enumerate(names)}

    def one(i: int, entry: ModelEntry, name: str) -> dict[str, Any]:
        hooks = obs.started(i, len(models), name)
        t = time.perf_counter()
        report = _resumable(held.get(name), entry, out / name, opts_sha) if resume else None
        if report is not None:
            row = row_from_report(report, entry, name, resumed=True)
        else:
            row = _compile_one(entry, name, out, opts, force, hooks)
        row.update(options_sha256=opts_sha, seconds=round(time.perf_counter() - t, 2))
        return row

    def finished(i: int, entry: ModelEntry, row: dict[str, Any]) -> None:
        nonlocal summary
        if not row.get("resumed") and row["status"] != "failed":
            held[row["name"]] = {
                "model": entry.shown,
                "sha256": row["sha256"],
                "options_sha256": opts_sha,
                "input_shapes": _shapes(entry),
            }
        done.append(row)
        done.sort(key=lambda r: order[r["name"]])  # models in their order, however they end
        summary = _summary(source, models, done, held, record, opts_sha, t0)
        write_all(summary, out)
        obs.finished(i, len(models), row)

    work = list(enumerate(zip(models, names, strict=True), start=1))
    if jobs == 1:
        for i, (entry, name) in work:
            finished(i, entry, one(i, entry, name))
    else:
        # Threads only wait: each model's work runs on the cluster.
        with ThreadPoolExecutor(min(jobs, len(work))) as pool:
            futures = {pool.submit(one, i, e, n): (i, e) for i, (e, n) in work}
            for f in as_completed(futures):
                finished(*futures[f], f.result())
    return FleetResult(summary, out)


def _entries(
    source: str | os.PathLike[str] | Sequence[ModelEntry | str | os.PathLike[str]],
) -> list[ModelEntry]:
    if isinstance(source, (str, os.PathLike)):
        return find_models(source)
    models = [m if isinstance(m, ModelEntry) else ModelEntry(Path(m), str(m)) for m in source]
    if not models:
        raise InputError("no models given")
    return models


def _resumable(
    earlier: dict[str, Any] | None, entry: ModelEntry, folder: Path, opts_sha: str
) -> dict[str, Any] | None:
    """The earlier report in ``folder`` when it is of these model bytes and options
    (``earlier``: what fleet.json says the folder holds), and of the list line's own input
    shapes."""
    if earlier is None or earlier.get("options_sha256") != opts_sha:
        return None
    if earlier.get("input_shapes", []) != _shapes(entry):
        return None
    report = _read_json(folder / "report.json", REPORT_SCHEMA)
    if report is None or not (folder / "best.onnx").is_file():
        return None
    from lepton_compile.modelio import model_sha256

    try:
        sha = model_sha256(entry.path)
    except OSError:
        return None  # the compile says what is wrong with the file
    return report if _d(report.get("model")).get("sha256") == sha == earlier.get("sha256") else None


def _shapes(entry: ModelEntry) -> list[list[Any]]:
    """A list line's input shapes, as fleet.json keeps them."""
    return [[k, list(v)] for k, v in entry.input_shapes]


def _compile_one(
    entry: ModelEntry,
    name: str,
    out: Path,
    opts: CompileOptions,
    force: bool,
    hooks: Observer,
) -> dict[str, Any]:
    """Compile one model and save it to ``out/name``: its row, or a failed row with why."""
    from lepton_compile import engine

    try:
        # MLflow gets each run from its saved output, as the compile command does.
        own = dict(opts.input_shapes or {}) | {k: list(v) for k, v in entry.input_shapes}
        run_opts = dataclasses.replace(opts, mlflow=None, input_shapes=own)
        result = engine.compile(entry.path, run_opts, observer=hooks)
        saved = result.save(out / name, force=force)
        report = result.report
        del result  # its work folder goes now, not after the next model
    except ClusterLost:
        raise  # every model after this one would fail alike: the fleet stops, resumable
    except InputError as e:
        return failed_row(entry, name, one_line(e), resumed=False)
    except Exception as e:  # a bug in one model's run: the fleet goes on, -v shows where
        log.info("%s: internal error", entry.shown, exc_info=True)
        return failed_row(
            entry, name, f"internal error: {type(e).__name__}: {one_line(e)}", resumed=False
        )
    if opts.mlflow:
        from lepton_compile import tracking

        tracking.log_compile(saved, opts)
    return row_from_report(report, entry, name, resumed=False)


def _summary(
    source: Any,
    models: Sequence[ModelEntry],
    rows: list[dict[str, Any]],
    held: dict[str, Any],
    record: dict[str, Any],
    opts_sha: str,
    t0: float,
) -> dict[str, Any]:
    shown = os.fspath(source) if isinstance(source, (str, os.PathLike)) else None
    return {
        "schema": FLEET_SCHEMA,
        "tool": {"name": "lepton-compile", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": shown,
        "executor": record.get("executor", "local"),
        "objective": record.get("objective"),
        "options": record,
        "options_sha256": opts_sha,
        "planned": len(models),
        "models": list(rows),
        "totals": totals(rows),
        "wall_s": round(time.perf_counter() - t0, 2),
        # Model folder -> the model bytes and options its output is of (what resuming reads).
        "outputs": dict(sorted(held.items())),
    }
