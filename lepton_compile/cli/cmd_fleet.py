"""``lepton-compile fleet DIR|LIST -o OUTDIR``: a compile per model, one summary (``fleet``).

Every flag of the main job works here too (the same parent parsers and groups, the same
``build_options``), and reaches each model's compile.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.status import Status

from lepton_compile import fleet, fleet_report
from lepton_compile.cli.cmd_compile import add_run_groups, build_options, load_metric, run_parents
from lepton_compile.cli.common import (
    EXIT_CONSTRAINTS,
    EXIT_OK,
    Subcommands,
    display_flags,
    output_flags,
)
from lepton_compile.cli.terminal import setup_logging, stdout_console
from lepton_compile.errors import InputError
from lepton_compile.stages import Observer

DESCRIPTION = """\
Optimize many models: a compile per model (every flag of the main job applies to each),
each saved to OUTDIR/<model>/ with its own device record and pick, and one summary of them
all (fleet.json, fleet.md, fleet.html): original and best joules per inference, latency,
size, the pick and its status per model, and the energy saved per million inferences.
A model that fails is a row with its reason; the others go on. A re-run resumes.
"""

EPILOG = """\
exit codes: 0 every model ran and met its constraints, 1 a model failed or nothing of a model
            met the constraints, 2 bad input or usage (nothing written), 3 internal error

examples:
  lepton-compile fleet models/ -o out/ --objective energy
  lepton-compile fleet models.txt -o out/ --recipes fused,fp16 --quick
  lepton-compile fleet models/ -o out/ --json > fleet.json
"""


def add_parser(commands: Subcommands) -> None:
    """Register ``fleet`` on the subcommands of the root parser."""
    p = commands.add_parser(
        "fleet",
        parents=[
            output_flags(
                "the fleet's output directory (required): OUTDIR/<model>/ holds each model's "
                "output as the main job writes it, OUTDIR/fleet.json, fleet.md and fleet.html "
                "the summary. An earlier fleet output there is resumed and updated; anything "
                "else is refused unless --force",
                "replace whatever is at the output path, even files lepton-compile did not write",
            ),
            *run_parents(),
            display_flags(
                "print fleet.json to stdout (no table, no progress)",
                quiet_help="no progress display",
            ),
        ],
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "source",
        type=Path,
        metavar="DIR|LIST",
        help="a directory (every *.onnx below it, sorted; best.onnx and variants/ of earlier "
        "lepton-compile outputs and hidden folders skipped) or a text file with one model path "
        "per line, relative to the file (# starts a comment)",
    )
    p.add_argument(
        "--no-resume",
        action="store_true",
        help="compile every model again (default: a model whose output in OUTDIR holds the "
        "report of the same model bytes under the same options is reused as it is)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="models compiled at once, with --executor ray only: their builds spread over the "
        "cluster while measurements still take turns on the measuring node (default: 1)",
    )
    add_run_groups(p)
    p.set_defaults(run=run)


class _ModelStatus(Observer):
    """One model's compile as a status line: "[3/6] resnet50 · measuring · fused-ort-cpu"."""

    def __init__(self, status: Status, head: str):
        self.status, self.head, self.stage_name = status, head, ""

    def stage(self, name: str, total: int | None = None) -> None:
        self.stage_name = name
        self.status.update(escape(f"{self.head} · {name}"))

    def advance(self, detail: str = "") -> None:
        if detail:
            self.status.update(escape(f"{self.head} · {self.stage_name} · {detail}"))


class _Progress(fleet.FleetObserver):
    """A line per model on the console, and a status line while one compiles."""

    def __init__(self, console: Console, status: Status):
        self.console, self.status = console, status

    def started(self, index: int, total: int, name: str) -> Observer:
        head = f"[{index}/{total}] {name}"
        self.status.update(escape(head))
        return _ModelStatus(self.status, head)

    def finished(self, index: int, total: int, row: dict[str, Any]) -> None:
        style = {"failed": "red", "no gain": "yellow"}.get(row["status"], "")
        line = escape(fleet_report.progress_line(index, total, row))
        # One line per model, however narrow the console: a log is read line by line.
        text = f"[{style}]{line}[/]" if style else line
        self.console.print(text, highlight=False, soft_wrap=True)


def run(args: argparse.Namespace) -> int:
    """Find the models, check OUTDIR, compile each with progress, print the table or JSON."""
    err = Console(stderr=True)
    out = stdout_console()
    setup_logging(args.verbose, err)
    if args.output is None:
        raise InputError("fleet: give the output directory, -o OUTDIR")
    options = build_options(args)
    options.validate()
    models = fleet.find_models(args.source)
    # Refused before any work: a fleet of hours must not end in "cannot write there".
    fleet.check_fleet_dir(args.output, args.force, models)
    if args.metric:
        options.metric = load_metric(args.metric)
    run_args: dict[str, Any] = {
        "force": args.force,
        "resume": not args.no_resume,
        "jobs": args.jobs,
    }
    if args.json or args.quiet:
        result = fleet.run_fleet(args.source, args.output, options, **run_args)
    else:
        with err.status("starting") as status:
            progress = _Progress(err, status)
            result = fleet.run_fleet(
                args.source, args.output, options, observer=progress, **run_args
            )
    if args.json:
        out.print_json(json.dumps(result.summary))
    else:
        fleet_report.print_table(result.summary, out)
        out.print(
            f"wrote {result.outdir}/fleet.json, fleet.md, fleet.html and an output per model",
            highlight=False,
        )
    return EXIT_OK if result.all_ok else EXIT_CONSTRAINTS
