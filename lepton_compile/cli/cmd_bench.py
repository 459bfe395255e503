"""``lepton-compile bench MODEL``: the model as it is, measured with the search's protocol."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from lepton_compile.cli.common import (
    EXIT_OK,
    Subcommands,
    display_flags,
    input_shape_flag,
    inputs_flag,
    measurement_flags,
    measurement_options,
    output_flags,
)
from lepton_compile.cli.terminal import setup_logging, stdout_console
from lepton_compile.options import CompileOptions


def add_parser(commands: Subcommands) -> None:
    """Register ``bench`` on the subcommands of the root parser."""
    p = commands.add_parser(
        "bench",
        parents=[
            output_flags(
                "also write the report (report.json/.md/.html) to this directory; an earlier "
                "output of lepton-compile there is replaced, anything else refused unless --force",
                "replace whatever is at the -o path",
            ),
            input_shape_flag(),
            inputs_flag(
                "directory of .npz files, one feed per file, keys = input names "
                "(default: generated inputs)"
            ),
            measurement_flags(
                "measure in this process instead of a worker process (faster start; a crash "
                "then ends the run)"
            ),
            display_flags("print the report JSON"),
        ],
        description="Measure a model as it is, on one or more backends, with the same protocol "
        "as the search (warm-up, interleaved trials, 95% CIs, energy meter): no variants, "
        "no selection, nothing written unless -o is given.",
    )
    p.add_argument("model", type=Path, help="the ONNX model (never modified)")
    p.set_defaults(run=run)


def build_options(args: argparse.Namespace) -> CompileOptions:
    """A compile run of the original alone: no recipes, no calibration, no cache."""
    from lepton_compile.intake import parse_shape_arg

    return CompileOptions(
        input_shapes=dict(parse_shape_arg(s) for s in args.input_shape),
        recipes=["original"],
        inputs_dir=args.inputs,
        **measurement_options(args),
        # A measurement asked for now is measured now, not read back from an earlier run.
        cache=False,
        calibration_samples=0,
        eval_samples=1,
    )


def run(args: argparse.Namespace) -> int:
    from lepton_compile import engine
    from lepton_compile.outdir import check_output_dir
    from lepton_compile.report import print_table

    out = stdout_console()
    setup_logging(args.verbose, Console(stderr=True))
    if args.output:
        check_output_dir(args.output, args.force)
    result = engine.compile(args.model, build_options(args))
    if args.output:
        result.save(args.output, force=args.force)
    if args.json:
        out.print_json(json.dumps(result.report))
    else:
        print_table(result.report, out)
    return EXIT_OK
