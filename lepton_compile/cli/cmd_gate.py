"""``lepton-compile gate BASE CUR``: two reports -> pass/fail and a Markdown table, GitHub
Actions annotations or JSON (CI)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lepton_compile.cli.common import EXIT_CONSTRAINTS, EXIT_OK, Subcommands, output_flags
from lepton_compile.errors import InputError


def add_parser(commands: Subcommands) -> None:
    """Register ``gate`` on the subcommands of the root parser."""
    p = commands.add_parser(
        "gate",
        parents=[
            output_flags(
                "also write the Markdown table here, whatever --format prints (an earlier "
                "gate output is replaced; any other file only with --force)",
                "replace whatever file is at --output",
                short=False,
            )
        ],
        description="Compare the best variant of two reports. Exits 1 when the current one "
        "regresses beyond the limits AND beyond measurement noise (the 95% interval of the "
        "ratio wholly above 1; without per-trial figures, 95% CIs not overlapping), "
        "0 otherwise (2 for a report it cannot read); prints a Markdown table for the CI log "
        "or a PR comment, GitHub Actions annotations, or JSON.",
    )
    p.add_argument("base", type=Path, help="report.json of the reference run")
    p.add_argument("current", type=Path, help="report.json of the run under test")
    p.add_argument(
        "--format",
        choices=["markdown", "github", "json"],
        default="markdown",
        help="markdown: the table (default); github: an ::error annotation per regression and "
        "a ::warning per warning (GitHub Actions workflow commands), then the table; json: "
        "the checks, warnings and verdict as one object",
    )
    g = p.add_argument_group("limits")
    g.add_argument(
        "--max-latency-regression",
        default="5%",
        metavar="X",
        help="allowed relative increase of mean latency (default: 5%%)",
    )
    g.add_argument(
        "--max-energy-regression",
        default="5%",
        metavar="X",
        help="allowed relative increase of energy per inference (default: 5%%)",
    )
    g.add_argument(
        "--max-accuracy-drop",
        default="1%",
        metavar="X",
        help="allowed increase of the accuracy drop, absolute (default: 1%%)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lepton_compile.gate import MARKDOWN_TITLE, evaluate, parse_fraction, render, to_markdown
    from lepton_compile.outdir import check_output_text, write_text

    if args.output:
        check_output_text(args.output, MARKDOWN_TITLE, args.force)
    base, cur, checks, warnings = evaluate(
        args.base,
        args.current,
        parse_fraction(args.max_latency_regression, "--max-latency-regression"),
        parse_fraction(args.max_energy_regression, "--max-energy-regression"),
        parse_fraction(args.max_accuracy_drop, "--max-accuracy-drop"),
    )
    text = render(args.format, base, cur, checks, warnings)
    print(text)
    if args.output:
        try:
            write_text(args.output, to_markdown(base, cur, checks, warnings))
        except OSError as e:
            raise InputError(f"{args.output}: cannot write: {e.strerror or e}") from None
    passed = not any(c.regressed for c in checks)
    return EXIT_OK if passed else EXIT_CONSTRAINTS
