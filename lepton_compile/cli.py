"""Command line: ``lepton-compile MODEL`` (the main job), ``optimize``, ``gate``, ``passes``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lepton_compile import __version__
from lepton_compile.errors import InputError, LeptonError

EXIT_OK, EXIT_CONSTRAINTS, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

SUBCOMMANDS = ("bench", "cache", "gate", "optimize", "passes", "recipes")

_EPILOG = """\
other commands:
  lepton-compile optimize MODEL -o OUT     run the graph passes only (verified)
  lepton-compile gate BASE.json CUR.json   compare two reports (CI perf gate)
  lepton-compile passes                    list the graph passes and pipelines
  lepton-compile recipes                   list the recipes (variants) and recipe groups
  lepton-compile bench MODEL               measure one model as it is (no search)
  lepton-compile cache list|clear          the result cache of earlier runs

exit codes: 0 success, 1 nothing met the constraints / gate failed,
            2 bad input or usage, 3 internal error

examples:
  lepton-compile model.onnx --input-shape images=1x3x320x320
  lepton-compile model.onnx --objective latency --recipes fused,int8-qdq --json
  lepton-compile model.onnx --recipes quantize,prune --inputs calib/ --metric m.py:accuracy
"""


def _default_recipes() -> tuple[str, ...]:
    from lepton_compile.recipes import DEFAULT_RECIPES

    return DEFAULT_RECIPES


def _default_search_budget() -> float:
    from lepton_compile.compress import DEFAULT_SEARCH_BUDGET_S

    return DEFAULT_SEARCH_BUDGET_S


def _backend_choices() -> list[str]:
    from lepton_compile.runtime import BACKENDS

    return sorted(BACKENDS)


def _positive(text: str) -> float:
    """argparse type: a finite number above zero (inf and nan are not sizes or durations)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def _non_negative(text: str) -> float:
    """argparse type: a finite number, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number, 0 or more")
    return value


def _count(text: str) -> int:
    """argparse type: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


class _ArgParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _compile_parser() -> argparse.ArgumentParser:
    p = _ArgParser(
        prog="lepton-compile",
        description="Build verified variants of an ONNX model (fused, FP16, INT8, ...), measure "
        "each one's latency and energy per inference on this machine, and hand back the best "
        "with a report.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="the ONNX model (never modified)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="output directory (default: ./MODEL.lepton), written atomically. An earlier "
        "output of lepton-compile there is replaced; anything else is refused unless --force",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace whatever is at the output path, even files lepton-compile did not write",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="fix a dynamic input shape, e.g. images=1x3x640x640 (repeatable); a "
        "dynamic batch dimension defaults to 1",
    )
    p.add_argument(
        "--inputs",
        type=Path,
        default=None,
        metavar="DIR",
        help="directory of .npz files, one feed per file, keys = input names; "
        "the first files calibrate, the last ones are held out for verification "
        "(default: generated inputs)",
    )
    p.add_argument(
        "--objective",
        choices=["energy", "latency", "size"],
        default="energy",
        help="what the pick minimizes (default: energy)",
    )
    p.add_argument(
        "--recipes",
        default=None,
        metavar="A,B",
        help="recipes to try, comma-separated; 'original' is always included. Also the "
        "groups 'default', 'quantize', 'prune' and 'all'. See `lepton-compile recipes` "
        "(default: " + ",".join(_default_recipes()) + ")",
    )
    p.add_argument(
        "--metric",
        default=None,
        metavar="MODULE:FUNCTION",
        help="judge variants with your metric instead of output fidelity: "
        "FUNCTION(outputs, labels) -> float, higher is better, where outputs and labels are "
        "lists with one dict per sample; labels come from 'label' arrays in the --inputs "
        ".npz files. A variant passes when metric(original) - metric(variant) <= "
        "--max-accuracy-drop",
    )
    p.add_argument(
        "--search-budget-s",
        type=_positive,
        default=None,
        metavar="S",
        help="most time each accuracy-aware recipe (mixed precision, pruning) may spend "
        "probing layer sensitivity; within it the budget scales to the model (the first "
        "probe's cost x 64 probes x 1.5), and a search that cannot meet the target stops "
        "early (default: 60)",
    )
    p.add_argument(
        "--backend",
        action="append",
        default=None,
        choices=_backend_choices(),
        help="runtime backend(s), repeatable: ort (onnxruntime), lepton (ONNX lowered to "
        "torch), lepton+inductor (the same through torch.compile); default: ort, plus lepton "
        "when torch is installed, or $LEPTON_BACKENDS",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="device to run on (default: cuda if available, else cpu)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        default="1%",
        metavar="X",
        help="largest fidelity loss a variant may have vs the original: max over "
        "outputs of 1-cosine and of 1-top-1 agreement for score outputs "
        "(default: 1%%)",
    )
    p.add_argument(
        "--max-latency-ms",
        type=_positive,
        default=None,
        help="reject variants whose mean latency exceeds this",
    )
    p.add_argument(
        "--meter",
        choices=["auto", "nvml", "rapl", "estimate"],
        default="auto",
        help="energy meter (default: auto: NVML on a GPU, RAPL where readable, "
        "else an estimate that is labelled as such)",
    )
    p.add_argument(
        "--cpu-watts",
        type=_positive,
        default=None,
        help="CPU package power for the estimate meter (default: from a TDP table)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short measurement windows (CI smoke runs; wider confidence intervals)",
    )
    p.add_argument(
        "--window-s",
        type=_positive,
        default=None,
        metavar="S",
        help="seconds per variant per trial (default: 0.25 s with the estimate, "
        "max(5 s, 50 meter update periods) with NVML or RAPL)",
    )
    p.add_argument(
        "--budget-s",
        type=_positive,
        default=None,
        metavar="S",
        help="bound the whole search; what does not fit is reported as skipped",
    )
    p.add_argument(
        "--min-trials",
        type=_count,
        default=None,
        metavar="N",
        help="interleaved trials before racing may drop a variant or stop (default: 4; "
        "2 with --quick)",
    )
    p.add_argument(
        "--max-trials",
        type=_count,
        default=None,
        metavar="N",
        help="most trials per race; the pick is then reported as undecided if it still is "
        "(default: 20; 4 with --quick)",
    )
    p.add_argument(
        "--measure-budget-s",
        type=_positive,
        default=None,
        metavar="S",
        help="seconds the measurement of one device may take; trials stop when it is spent "
        "and the report says whether the pick was decided (default: 60; 10 with --quick)",
    )
    p.add_argument(
        "--screen-factor",
        type=_non_negative,
        default=2.0,
        metavar="X",
        help="a first single-window screen drops variants more than X times slower than the "
        "original before the trials (default: 2; 0 turns the screen off)",
    )
    p.add_argument(
        "--variant-timeout-s",
        type=_positive,
        default=900.0,
        metavar="S",
        help="time limit for each step of a variant (build, verify, measure); a variant past "
        "it is marked failed and the run goes on (default: 900)",
    )
    p.add_argument(
        "--memory-limit-gb",
        type=_positive,
        default=None,
        metavar="GB",
        help="address-space limit of each variant's worker process "
        "(default: 80%% of physical memory)",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="neither reuse nor store results in the result cache "
        "(default: reuse a whole earlier run of the same model, inputs, recipes, device and "
        "protocol; see `lepton-compile cache list`)",
    )
    p.add_argument(
        "--no-isolate",
        action="store_true",
        help="build and measure variants in this process instead of one worker process each "
        "(faster start; a crashing variant then ends the run)",
    )
    p.add_argument(
        "--calibration-samples",
        type=int,
        default=32,
        metavar="N",
        help="generated calibration samples when --inputs is not given (default: 32); "
        "calibrated recipes fit ranges on half and judge layer sensitivity on the other half",
    )
    p.add_argument("--eval-samples", type=int, default=16, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--json", action="store_true", help="print report.json to stdout (no table, no progress)"
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    p.add_argument("--version", action="version", version=f"lepton-compile {__version__}")
    return p


def _gate_parser() -> argparse.ArgumentParser:
    p = _ArgParser(
        prog="lepton-compile gate",
        description="Compare the best variant of two reports. Exits 1 when the current one "
        "regresses beyond the limits AND beyond measurement noise (95%% CIs not overlapping), "
        "0 otherwise; prints a Markdown table for the CI log or a PR comment.",
    )
    p.add_argument("base", type=Path, help="report.json of the reference run")
    p.add_argument("current", type=Path, help="report.json of the run under test")
    p.add_argument(
        "--max-latency-regression",
        default="5%",
        metavar="X",
        help="allowed relative increase of mean latency (default: 5%%)",
    )
    p.add_argument(
        "--max-energy-regression",
        default="5%",
        metavar="X",
        help="allowed relative increase of energy per inference (default: 5%%)",
    )
    p.add_argument(
        "--max-accuracy-drop",
        default="1%",
        metavar="X",
        help="allowed increase of the accuracy drop, absolute (default: 1%%)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="also write the Markdown here (an earlier gate output is replaced; any other "
        "file only with --force)",
    )
    p.add_argument("--force", action="store_true", help="replace whatever file is at --output")
    return p


def _setup_logging(verbose: int, console: Console) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
        force=True,
    )
    # onnxruntime's quantizer logs at INFO through the root logger; keep it out of the way.
    logging.getLogger("onnxruntime").setLevel(max(level, logging.WARNING))


class _RichObserver:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.task: int | None = None

    def stage(self, name: str, total: int | None = None) -> None:
        if self.task is not None:
            t = self.progress.tasks[-1]
            self.progress.update(self.task, completed=t.total or 1, total=t.total or 1)
        self.task = self.progress.add_task(name, total=total)

    def advance(self, detail: str = "") -> None:
        if self.task is not None:
            self.progress.update(
                self.task,
                advance=1,
                description=self.progress.tasks[-1].description.split(" · ")[0]
                + (f" · {detail}" if detail else ""),
            )

    def done(self) -> None:
        self.stage("done", total=1)
        self.advance()


def _load_metric(spec: str) -> Any:
    """``module:function`` (or ``path/to/file.py:function``) -> the callable."""
    import importlib

    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise InputError(f"--metric {spec}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).resolve()
            if not path.is_file():
                raise InputError(f"--metric {spec}: {path} not found")
            # Importable by name (worker processes get this sys.path too), so it can be pickled.
            sys.path.insert(0, str(path.parent))
            module = importlib.import_module(path.stem)
        else:
            module = importlib.import_module(mod_name)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"--metric {spec}: cannot import {mod_name}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(f"--metric {spec}: {attr} is not a function of {mod_name}")
    return fn


def _cmd_compile(argv: Sequence[str]) -> int:
    args = _compile_parser().parse_args(argv)
    err = Console(stderr=True)
    # Logs and CI consoles are not terminals: give the table room instead of 80 columns.
    out = Console() if Console().is_terminal else Console(width=140)
    _setup_logging(args.verbose, err)
    from lepton_compile.engine import Observer, compile
    from lepton_compile.gate import parse_fraction
    from lepton_compile.intake import parse_shape_arg
    from lepton_compile.outdir import check_output_dir

    shapes = dict(parse_shape_arg(s) for s in args.input_shape)
    max_drop = parse_fraction(args.max_accuracy_drop, "--max-accuracy-drop")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()] if args.recipes else None
    outdir = args.output or Path.cwd() / f"{args.model.stem}.lepton"
    # Refused before any work: a run of minutes must not end in "cannot write there".
    check_output_dir(outdir, args.force)
    kwargs = dict(
        input_shapes=shapes,
        objective=args.objective,
        recipes=recipes,
        backends=tuple(args.backend) if args.backend else None,
        device=args.device,
        inputs_dir=args.inputs,
        max_accuracy_drop=max_drop,
        max_latency_ms=args.max_latency_ms,
        meter=args.meter,
        cpu_watts=args.cpu_watts,
        quick=args.quick,
        window_s=args.window_s,
        budget_s=args.budget_s,
        variant_timeout_s=args.variant_timeout_s,
        memory_limit_bytes=int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else None,
        isolate=not args.no_isolate,
        cache=not args.no_cache,
        calibration_samples=args.calibration_samples,
        eval_samples=args.eval_samples,
        seed=args.seed,
        metric=_load_metric(args.metric) if args.metric else None,
        search_budget_s=args.search_budget_s or _default_search_budget(),
        min_trials=args.min_trials,
        max_trials=args.max_trials,
        measure_budget_s=args.measure_budget_s,
        screen_factor=args.screen_factor or None,
    )
    if args.json or args.quiet:
        result = compile(args.model, observer=Observer(), **kwargs)
    else:
        cols = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        with Progress(*cols, console=err, transient=False) as progress:
            result = compile(args.model, observer=_RichObserver(progress), **kwargs)
    saved = result.save(outdir, force=args.force)
    if args.json:
        out.print_json(json.dumps(result.report))
    else:
        from lepton_compile.report import print_table

        print_table(result.report, out)
        out.print(f"wrote {saved}/best.onnx, report.json, report.md, report.html, variants/")
    return EXIT_OK if result.report["constraints"]["met"] else EXIT_CONSTRAINTS


def _cmd_gate(argv: Sequence[str]) -> int:
    args = _gate_parser().parse_args(argv)
    from lepton_compile.gate import MARKDOWN_TITLE, parse_fraction, run_gate
    from lepton_compile.outdir import check_output_text, write_text

    if args.output:
        check_output_text(args.output, MARKDOWN_TITLE, args.force)
    passed, md = run_gate(
        args.base,
        args.current,
        parse_fraction(args.max_latency_regression, "--max-latency-regression"),
        parse_fraction(args.max_energy_regression, "--max-energy-regression"),
        parse_fraction(args.max_accuracy_drop, "--max-accuracy-drop"),
    )
    print(md)
    if args.output:
        try:
            write_text(args.output, md)
        except OSError as e:
            raise InputError(f"{args.output}: cannot write: {e.strerror or e}") from None
    return EXIT_OK if passed else EXIT_CONSTRAINTS


def _optimize_parser() -> argparse.ArgumentParser:
    p = _ArgParser(
        prog="lepton-compile optimize",
        description="Run a graph-pass pipeline on an ONNX model and write the result. The "
        "result is checked against the input (onnx.checker, then both models on onnxruntime "
        "on seeded inputs); a pass that changes the outputs is found, dropped and reported. "
        "A result that cannot be checked (inputs that cannot be generated, a model "
        "onnxruntime cannot run) is an error: nothing is written, exit code 2. For the ort "
        "target the result must also not be slower than the input: both are timed on "
        "onnxruntime (a few seconds of paired trials), and a pass that makes the model "
        "slower beyond noise is found, dropped and reported the same way.",
        epilog="examples:\n"
        "  lepton-compile optimize model.onnx -o model.opt.onnx\n"
        "  lepton-compile optimize model.onnx -o out.onnx --input-shape images=1x3x640x640\n"
        "  lepton-compile optimize model.onnx -o out.onnx --skip fuse-hardswish --json\n"
        "\n"
        "exit codes: 0 written, 1 verification failed (even the unchanged model differs),\n"
        "            2 bad input or usage, a result that cannot be verified, an output path\n"
        "            that must not be replaced\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="the ONNX model (never modified)")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="output .onnx file (default: ./MODEL.opt.onnx); written atomically. An existing "
        "file is replaced only if an earlier optimize run wrote it (see --force)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace the output file even if lepton-compile did not write it (never the "
        "input model itself)",
    )
    p.add_argument(
        "--input-shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="fix an input's shape, e.g. images=1x3x640x640 (repeatable); dimensions not "
        "fixed stay dynamic and only what is static is folded. If the fixed shapes alone make "
        "the model slower on onnxruntime (target ort), they are not applied and the output "
        "keeps the input's dims (said in the output)",
    )
    p.add_argument(
        "--target",
        choices=["ort", "lepton"],
        default="ort",
        help="ort: standard ONNX ops only; lepton: also lepton runtime ops (default: ort)",
    )
    p.add_argument(
        "--pipeline", default="fused", metavar="NAME", help="named pipeline (default: fused)"
    )
    p.add_argument(
        "--passes",
        default=None,
        metavar="A,B,C",
        help="explicit ordered pass list instead of a pipeline (see: lepton-compile passes)",
    )
    p.add_argument("--skip", default=None, metavar="X,Y", help="passes to leave out")
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="do not compare the result with the input on onnxruntime (onnx.checker still "
        "runs; no speed check either); a pass that breaks the model then goes unnoticed, "
        "and a model whose outputs cannot be compared is written all the same",
    )
    p.add_argument(
        "--no-speed-check",
        action="store_true",
        help="target ort: do not time the result against the input (by default a pass that "
        "makes the model slower beyond noise on onnxruntime is dropped)",
    )
    p.add_argument(
        "--verify-shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="input shape for verification and the speed check of a still-dynamic model "
        "(default: 1 for every dynamic dimension)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the verification inputs")
    p.add_argument("--json", action="store_true", help="print a JSON summary to stdout (no tables)")
    p.add_argument("-v", "--verbose", action="count", default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
    return p


class _PassStatus:
    """Instrument that shows the running pass in a rich status line."""

    def __init__(self, status) -> None:  # type: ignore[no-untyped-def]
        self.status = status

    def before_pass(self, name: str, model: object) -> None:
        self.status.update(f"optimizing · {name}")

    def after_pass(self, name: str, model: object, result: object) -> None:
        self.status.update("optimizing · verifying")


def _names(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _print_optimize(run, out: Console) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    out.print(
        f"[bold]{run.source}[/] -> [bold]{run.output}[/] · target {run.target} · "
        + (f"pipeline {run.pipeline}" if run.pipeline else "explicit pass list")
    )
    for note in run.notes:
        style = "yellow" if note.startswith("--input-shape not") else "dim"
        out.print(f"[{style}]{note}[/]")
    ops = Table(title="nodes by op type")
    ops.add_column("op")
    for col in ("before", "after", "change"):
        ops.add_column(col, justify="right")
    keys = sorted(
        set(run.ops_before) | set(run.ops_after),
        key=lambda k: (-max(run.ops_before[k], run.ops_after[k]), k),
    )
    for k in keys:
        b, a = run.ops_before[k], run.ops_after[k]
        ops.add_row(k, str(b), str(a), f"{a - b:+d}" if a != b else "")
    b, a = sum(run.ops_before.values()), sum(run.ops_after.values())
    ops.add_section()
    ops.add_row("[bold]total[/]", f"[bold]{b}[/]", f"[bold]{a}[/]", f"[bold]{a - b:+d}[/]")
    out.print(ops)
    table = Table(title="passes")
    table.add_column("#", justify="right")
    table.add_column("pass")
    for col in ("ms", "nodes", "change"):
        table.add_column(col, justify="right")
    for i, r in enumerate(run.result.records, 1):
        delta = r.nodes_after - r.nodes_before
        table.add_row(
            str(i),
            r.name if r.modified else f"[dim]{r.name}[/]",
            f"{r.seconds * 1e3:.1f}",
            f"{r.nodes_before} -> {r.nodes_after}",
            f"{delta:+d}" if delta else ("changed" if r.modified else ""),
        )
    total_s = sum(r.seconds for r in run.result.records)
    table.add_section()
    table.add_row("", "[bold]all[/]", f"[bold]{total_s * 1e3:.1f}[/]", f"{b} -> {a}", f"{a - b:+d}")
    out.print(table)
    v = run.verification
    if v is None:
        out.print("[yellow]verification: off (--no-verify); onnx.checker only[/]")
    else:
        shapes = ", ".join(f"{k}={'x'.join(map(str, s))}" for k, s in v.input_shapes.items())
        f32 = v.tolerances.get("float32")
        tol = f"fp32 rtol {f32.rtol:g}, atol {f32.atol:g} x output scale" if f32 else ""
        if v.status == "passed":
            out.print(
                f"[green]verification: passed[/] (onnxruntime CPU, seed {v.seed}"
                + (f", {shapes}" if shapes else "")
                + (f"; {tol}; ints exact" if tol else "")
                + f"; {v.seconds:.2f} s)"
            )
        elif v.status == "skipped":
            out.print(f"[yellow]verification: outputs not compared: {v.reason}[/]")
        else:
            out.print(f"[red]verification: failed: {v.reason}[/]")
        for d in v.dropped:
            out.print(f"[yellow]dropped pass {d.name}:[/] {d.reason}")
        if v.unchanged:
            out.print(f"[yellow]returned unchanged:[/] {v.unchanged}")
        for note in v.notes:
            out.print(f"[dim]{note}[/]")
    speed = run.speed or {}
    final = speed.get("result")
    if final:
        lo, hi = final["speed_ci95"]
        span = f"{lo:.2f}-{hi:.2f}" if lo is not None and hi is not None else "unbounded"
        out.print(
            f"[green]speed check: {final['speed']:.2f}x the input's speed[/] (95% CI {span}; "
            f"{speed['trials']} paired trials x {speed['runs_per_trial']} runs, onnxruntime "
            f"ENABLE_ALL CPU; {speed['seconds']:.1f} s)"
        )
    elif speed.get("status") == "off":
        out.print(f"[dim]speed check: off ({speed['reason']})[/]")
    elif speed:
        out.print(f"[yellow]speed check: {speed.get('reason') or 'not measured'}[/]")
    for error in speed.get("errors", []):
        out.print(f"[yellow]speed check: timing failed: {error}[/]")
    if run.output is not None and run.output.exists() and not (v and v.status == "failed"):
        out.print(f"wrote {run.output} ({run.output.stat().st_size:,} bytes)")


def _cmd_optimize(argv: Sequence[str]) -> int:
    args = _optimize_parser().parse_args(argv)
    err = Console(stderr=True)
    out = Console() if Console().is_terminal else Console(width=140)
    _setup_logging(args.verbose, err)
    from lepton_compile.intake import parse_shape_arg
    from lepton_compile.optimize import optimize_file

    shapes = dict(parse_shape_arg(s) for s in args.input_shape)
    verify_shapes = dict(parse_shape_arg(s) for s in args.verify_shape) or None
    output = args.output or Path.cwd() / f"{args.model.stem}.opt.onnx"
    kwargs = dict(
        input_shapes=shapes,
        target=args.target,
        pipeline=args.pipeline,
        passes=_names(args.passes),
        skip=_names(args.skip) or (),
        verify=not args.no_verify,
        verify_shapes=verify_shapes,
        seed=args.seed,
        force=args.force,
        speed_check=not args.no_speed_check,
    )
    if args.json or args.quiet:
        run = optimize_file(args.model, output, **kwargs)
    else:
        with err.status("optimizing") as status:
            run = optimize_file(args.model, output, instruments=[_PassStatus(status)], **kwargs)
    v = run.verification
    if args.json:
        out.print_json(json.dumps(run.to_dict()))
    else:
        _print_optimize(run, out)
    if v is not None and v.status == "failed":
        print(
            f"lepton-compile: error: verification failed, nothing written: {v.reason}",
            file=sys.stderr,
        )
        return EXIT_CONSTRAINTS
    return EXIT_OK


def _cmd_passes(argv: Sequence[str]) -> int:
    p = _ArgParser(prog="lepton-compile passes", description="List graph passes and pipelines.")
    p.parse_args(argv)
    from rich.table import Table

    from lepton_compile import passes

    t = Table(title="passes")
    t.add_column("name")
    t.add_column("what it does")
    for name, desc in passes.list_passes():
        t.add_row(name, desc)
    Console().print(t)
    for name, seq in getattr(passes, "PIPELINES", {}).items():
        shown = seq if isinstance(seq, (list, tuple)) else getattr(seq, "passes", seq)
        Console().print(f"[bold]{name}[/]: {', '.join(map(str, shown))}")
    return EXIT_OK


def _cmd_recipes(argv: Sequence[str]) -> int:
    p = _ArgParser(
        prog="lepton-compile recipes",
        description="List the recipes (how each variant is built) and the groups that "
        "--recipes accepts.",
    )
    p.parse_args(argv)
    from rich.table import Table

    from lepton_compile.recipes import ALIASES, DEFAULT_RECIPES, RECIPES

    t = Table(title="recipes")
    t.add_column("name")
    t.add_column("group")
    t.add_column("default")
    t.add_column("what it builds")
    for name, r in RECIPES.items():
        t.add_row(name, r.group, "yes" if name in DEFAULT_RECIPES else "", r.description)
    console = Console() if Console().is_terminal else Console(width=140)
    console.print(t)
    for alias, names in ALIASES.items():
        console.print(f"[bold]{alias}[/]: {', '.join(names)}")
    return EXIT_OK


def _cmd_cache(argv: Sequence[str]) -> int:
    from lepton_compile.bench.cache import main as cache_main
    from lepton_compile.cached import prune_artifacts

    code = cache_main(list(argv), prog="lepton-compile cache")
    if code == 0 and "clear" in argv:
        path = argv[argv.index("--path") + 1] if "--path" in argv else None
        n = prune_artifacts(path)
        print(f"removed {n} stored model file(s)")
    return code


def _bench_parser() -> argparse.ArgumentParser:
    p = _ArgParser(
        prog="lepton-compile bench",
        description="Measure a model as it is, on one or more backends, with the same protocol "
        "as the search (warm-up, interleaved trials, 95%% CIs, energy meter): no variants, "
        "no selection, nothing written unless -o is given.",
    )
    p.add_argument("model", type=Path)
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS")
    p.add_argument("--inputs", type=Path, default=None, metavar="DIR")
    p.add_argument("--backend", action="append", default=None, choices=_backend_choices())
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--meter", choices=["auto", "nvml", "rapl", "estimate"], default="auto")
    p.add_argument("--cpu-watts", type=_positive, default=None)
    p.add_argument("--window-s", type=_positive, default=None, metavar="S")
    p.add_argument("--quick", action="store_true", help="short windows (smoke runs)")
    p.add_argument("--no-isolate", action="store_true")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        default=None,
        help="also write the report (report.json/.md/.html) to this directory; an earlier "
        "output of lepton-compile there is replaced, anything else refused unless --force",
    )
    p.add_argument(
        "--force", action="store_true", help="replace whatever is at the -o path"
    )
    p.add_argument("--json", action="store_true", help="print the report JSON")
    p.add_argument("-v", "--verbose", action="count", default=0)
    return p


def _cmd_bench(argv: Sequence[str]) -> int:
    args = _bench_parser().parse_args(argv)
    err = Console(stderr=True)
    out = Console() if Console().is_terminal else Console(width=140)
    _setup_logging(args.verbose, err)
    from lepton_compile.engine import compile
    from lepton_compile.intake import parse_shape_arg
    from lepton_compile.outdir import check_output_dir
    from lepton_compile.report import print_table

    if args.output:
        check_output_dir(args.output, args.force)
    result = compile(
        args.model,
        input_shapes=dict(parse_shape_arg(s) for s in args.input_shape),
        recipes=["original"],
        backends=tuple(args.backend) if args.backend else None,
        device=args.device,
        inputs_dir=args.inputs,
        meter=args.meter,
        cpu_watts=args.cpu_watts,
        window_s=args.window_s,
        quick=args.quick,
        isolate=not args.no_isolate,
        cache=False,
        calibration_samples=0,
        eval_samples=1,
    )
    if args.output:
        result.save(args.output, force=args.force)
    if args.json:
        out.print_json(json.dumps(result.report))
    else:
        print_table(result.report, out)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        "bench": _cmd_bench,
        "cache": _cmd_cache,
        "gate": _cmd_gate,
        "optimize": _cmd_optimize,
        "passes": _cmd_passes,
        "recipes": _cmd_recipes,
    }
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return _cmd_compile(argv)
    except LeptonError as e:
        print(f"lepton-compile: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lepton-compile: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) else EXIT_BAD_INPUT
    except Exception as e:  # a bug: keep the traceback, say so, and use our own exit code
        import traceback

        traceback.print_exc()
        print(f"lepton-compile: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
