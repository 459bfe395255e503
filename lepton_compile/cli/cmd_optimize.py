"""``lepton-compile optimize MODEL -o OUT``: graph passes only, verified, and what they did."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from lepton_compile.cli.common import (
    EXIT_CONSTRAINTS,
    EXIT_OK,
    ArgGroup,
    ArgParser,
    Subcommands,
    display_flags,
    input_shape_flag,
    names,
    output_flags,
)
from lepton_compile.cli.terminal import PassStatus, setup_logging, stdout_console

if TYPE_CHECKING:
    from lepton_compile.optimize import OptimizeRun

DESCRIPTION = (
    "Run a graph-pass pipeline on an ONNX model and write the result. The result is checked "
    "against the input (onnx.checker, then both models on onnxruntime on seeded inputs); a "
    "pass that changes the outputs is found, dropped and reported. A result that cannot be "
    "checked (inputs that cannot be generated, a model onnxruntime cannot run) is an error: "
    "nothing is written, exit code 2. For the ort target the result must also not be slower "
    "than the input: both are timed on onnxruntime (a few seconds of paired trials), and a "
    "pass that makes the model slower beyond noise is found, dropped and reported the same way."
)

EPILOG = """\
examples:
  lepton-compile optimize model.onnx -o model.opt.onnx
  lepton-compile optimize model.onnx -o out.onnx --input-shape images=1x3x640x640
  lepton-compile optimize model.onnx -o out.onnx --skip fuse-hardswish --json

exit codes: 0 written, 1 verification failed (even the unchanged model differs),
            2 bad input or usage, a result that cannot be verified, an output path
            that must not be replaced
"""


def _parents() -> list[ArgParser]:
    return [
        output_flags(
            "output .onnx file (default: ./MODEL.opt.onnx); written atomically. An existing "
            "file is replaced only if an earlier optimize run wrote it (see --force)",
            "replace the output file even if lepton-compile did not write it (never the "
            "input model itself)",
        ),
        input_shape_flag(
            "fix an input's shape, e.g. images=1x3x640x640 (repeatable); dimensions not "
            "fixed stay dynamic and only what is static is folded. If the fixed shapes alone "
            "make the model slower on onnxruntime (target ort), they are not applied and the "
            "output keeps the input's dims (said in the output)"
        ),
        display_flags(
            "print a JSON summary to stdout (no tables)", quiet_help="no progress display"
        ),
    ]


def add_parser(commands: Subcommands) -> None:
    """Register ``optimize`` on the subcommands of the root parser."""
    p = commands.add_parser(
        "optimize",
        parents=_parents(),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="the ONNX model (never modified)")
    g = p.add_argument_group("passes")
    g.add_argument(
        "--target",
        choices=["ort", "lepton"],
        default="ort",
        help="ort: standard ONNX ops only; lepton: also lepton runtime ops (default: ort)",
    )
    g.add_argument(
        "--pipeline", default="fused", metavar="NAME", help="named pipeline (default: fused)"
    )
    g.add_argument(
        "--passes",
        default=None,
        metavar="A,B,C",
        help="explicit ordered pass list instead of a pipeline (see: lepton-compile passes)",
    )
    g.add_argument("--skip", default=None, metavar="X,Y", help="passes to leave out")
    _add_verification_flags(p.add_argument_group("verification"))
    p.set_defaults(run=run)


def _add_verification_flags(g: ArgGroup) -> None:
    """How the result is checked against the input: outputs, then speed (target ort)."""
    g.add_argument(
        "--no-verify",
        action="store_true",
        help="do not compare the result with the input on onnxruntime (onnx.checker still "
        "runs; no speed check either); a pass that breaks the model then goes unnoticed, "
        "and a model whose outputs cannot be compared is written all the same",
    )
    g.add_argument(
        "--no-speed-check",
        action="store_true",
        help="target ort: do not time the result against the input (by default a pass that "
        "makes the model slower beyond noise on onnxruntime is dropped)",
    )
    g.add_argument(
        "--verify-shape",
        action="append",
        default=[],
        metavar="NAME=DIMS",
        help="input shape for verification and the speed check of a still-dynamic model "
        "(default: 1 for every dynamic dimension)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of the verification inputs")


def run(args: argparse.Namespace) -> int:
    """Optimize and write; print the tables or JSON; exit 1 if verification failed."""
    err = Console(stderr=True)
    out = stdout_console()
    setup_logging(args.verbose, err)
    optimize = _bind(args)
    if args.json or args.quiet:
        result = optimize()
    else:
        with err.status("optimizing") as status:
            result = optimize(instruments=[PassStatus(status)])
    v = result.verification
    if args.json:
        out.print_json(json.dumps(result.to_dict()))
    else:
        print_run(result, out)
    if v is not None and v.status == "failed":
        print(
            f"lepton-compile: error: verification failed, nothing written: {v.reason}",
            file=sys.stderr,
        )
        return EXIT_CONSTRAINTS
    return EXIT_OK


def _bind(args: argparse.Namespace) -> Callable[..., OptimizeRun]:
    """``optimize_file`` with the flags bound; shapes that do not parse raise InputError now,
    before the status line starts."""
    from lepton_compile.intake import parse_shape_arg
    from lepton_compile.optimize import optimize_file

    return functools.partial(
        optimize_file,
        args.model,
        args.output or Path.cwd() / f"{args.model.stem}.opt.onnx",
        input_shapes=dict(parse_shape_arg(s) for s in args.input_shape),
        target=args.target,
        pipeline=args.pipeline,
        passes=names(args.passes),
        skip=names(args.skip) or (),
        verify=not args.no_verify,
        verify_shapes=dict(parse_shape_arg(s) for s in args.verify_shape) or None,
        seed=args.seed,
        force=args.force,
        speed_check=not args.no_speed_check,
    )


def print_run(run: OptimizeRun, out: Console) -> None:
    """The human summary of an OptimizeRun: header, op counts, passes, checks, what was written."""
    out.print(
        f"[bold]{run.source}[/] -> [bold]{run.output}[/] · target {run.target} · "
        + (f"pipeline {run.pipeline}" if run.pipeline else "explicit pass list")
    )
    for note in run.notes:
        style = "yellow" if note.startswith("--input-shape not") else "dim"
        out.print(f"[{style}]{note}[/]")
    out.print(_ops_table(run))
    out.print(_passes_table(run))
    _print_verification(run.verification, out)
    _print_speed(run.speed or {}, out)
    v = run.verification
    if run.output is not None and run.output.exists() and not (v and v.status == "failed"):
        out.print(f"wrote {run.output} ({run.output.stat().st_size:,} bytes)")


def _ops_table(run: OptimizeRun) -> Table:
    """Nodes by op type before and after, most frequent first."""
    ops = Table(title="nodes by op type")
    ops.add_column("op")
    for col in ("before", "after", "change"):
        ops.add_column(col, justify="right")
    keys = sorted(
        set(run.ops_before) | set(run.ops_after),
        key=lambda k: (-max(run.ops_before[k], run.ops_after[k]), k),
    )
    for k in keys:
        before, after = run.ops_before[k], run.ops_after[k]
        ops.add_row(k, str(before), str(after), f"{after - before:+d}" if after != before else "")
    before, after = sum(run.ops_before.values()), sum(run.ops_after.values())
    ops.add_section()
    ops.add_row(
        "[bold]total[/]", f"[bold]{before}[/]", f"[bold]{after}[/]", f"[bold]{after - before:+d}[/]"
    )
    return ops


def _passes_table(run: OptimizeRun) -> Table:
    """Each pass in order: time, node counts, whether it changed anything (dim: it did not)."""
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
    before, after = sum(run.ops_before.values()), sum(run.ops_after.values())
    total_s = sum(r.seconds for r in run.result.records)
    table.add_section()
    table.add_row(
        "",
        "[bold]all[/]",
        f"[bold]{total_s * 1e3:.1f}[/]",
        f"{before} -> {after}",
        f"{after - before:+d}",
    )
    return table


def _print_verification(v: Any, out: Console) -> None:
    if v is None:
        out.print("[yellow]verification: off (--no-verify); onnx.checker only[/]")
        return
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


def _print_speed(speed: dict[str, Any], out: Console) -> None:
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
