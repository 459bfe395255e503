"""Command line: ``lepton-compile MODEL`` (the main job), ``gate``, ``passes``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lepton_compile import __version__
from lepton_compile.errors import LeptonError

EXIT_OK, EXIT_CONSTRAINTS, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

SUBCOMMANDS = ("gate", "passes")

_EPILOG = """\
other commands:
  lepton-compile gate BASE.json CUR.json   compare two reports (CI perf gate)
  lepton-compile passes                    list the graph passes and pipelines

exit codes: 0 success, 1 nothing met the constraints / gate failed,
            2 bad input or usage, 3 internal error

examples:
  lepton-compile model.onnx --input-shape images=1x3x320x320
  lepton-compile model.onnx --objective latency --recipes fused,int8-qdq --json
"""


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
        help="output directory (default: ./MODEL.lepton); replaced atomically",
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
        help="recipes to try (default: all; 'original' is always included); "
        "see the list in the report or lepton_compile.recipes.RECIPES",
    )
    p.add_argument(
        "--backend",
        action="append",
        default=None,
        choices=["ort"],
        help="runtime backend(s) (default: ort)",
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
        type=float,
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
        type=float,
        default=None,
        help="CPU package power for the estimate meter (default: from a TDP table)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short measurement windows (CI smoke runs; wider confidence intervals)",
    )
    p.add_argument("--calibration-samples", type=int, default=16, metavar="N")
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
    p.add_argument("--output", type=Path, default=None, help="also write the Markdown here")
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


def _cmd_compile(argv: Sequence[str]) -> int:
    args = _compile_parser().parse_args(argv)
    err = Console(stderr=True)
    # Logs and CI consoles are not terminals: give the table room instead of 80 columns.
    out = Console() if Console().is_terminal else Console(width=140)
    _setup_logging(args.verbose, err)
    from lepton_compile.engine import Observer, compile
    from lepton_compile.gate import parse_fraction
    from lepton_compile.intake import parse_shape_arg

    shapes = dict(parse_shape_arg(s) for s in args.input_shape)
    max_drop = parse_fraction(args.max_accuracy_drop, "--max-accuracy-drop")
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()] if args.recipes else None
    outdir = args.output or Path.cwd() / f"{args.model.stem}.lepton"
    kwargs = dict(
        input_shapes=shapes,
        objective=args.objective,
        recipes=recipes,
        backends=tuple(args.backend or ["ort"]),
        device=args.device,
        inputs_dir=args.inputs,
        max_accuracy_drop=max_drop,
        max_latency_ms=args.max_latency_ms,
        meter=args.meter,
        cpu_watts=args.cpu_watts,
        quick=args.quick,
        calibration_samples=args.calibration_samples,
        eval_samples=args.eval_samples,
        seed=args.seed,
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
    saved = result.save(outdir)
    if args.json:
        out.print_json(json.dumps(result.report))
    else:
        from lepton_compile.report import print_table

        print_table(result.report, out)
        out.print(f"wrote {saved}/best.onnx, report.json, report.md, report.html, variants/")
    return EXIT_OK if result.report["constraints"]["met"] else EXIT_CONSTRAINTS


def _cmd_gate(argv: Sequence[str]) -> int:
    args = _gate_parser().parse_args(argv)
    from lepton_compile.gate import parse_fraction, run_gate

    passed, md = run_gate(
        args.base,
        args.current,
        parse_fraction(args.max_latency_regression, "--max-latency-regression"),
        parse_fraction(args.max_energy_regression, "--max-energy-regression"),
        parse_fraction(args.max_accuracy_drop, "--max-accuracy-drop"),
    )
    print(md)
    if args.output:
        args.output.write_text(md, encoding="utf-8")
    return EXIT_OK if passed else EXIT_CONSTRAINTS


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


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"gate": _cmd_gate, "passes": _cmd_passes}
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


if __name__ == "__main__":
    sys.exit(main())
