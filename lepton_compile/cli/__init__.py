"""Command line: one argparse parser, a subcommand per job, ``main`` as the console script.

    lepton-compile MODEL ...          cmd_compile   the main job: variants, measured, the best
    lepton-compile bench MODEL        cmd_bench     the model as it is, measured
    lepton-compile export OUTDIR      cmd_export    a compile's pick as a .pt2 package or ONNX
    lepton-compile fleet DIR|LIST     cmd_fleet     many models: a compile each, one summary
    lepton-compile optimize MODEL     cmd_optimize  graph passes only, verified
    lepton-compile gate BASE CUR      cmd_gate      CI perf gate on two reports
    lepton-compile passes | recipes   cmd_lists     what the passes and recipes are
    lepton-compile cache list|clear   cmd_cache     the result cache of earlier runs

Each ``cmd_*`` module registers its subparser, built from the parent parsers of shared flags
in ``common``, with a ``run(args) -> exit code``. ``main`` routes argv (``route``), parses,
runs, and turns every error into the exit-code contract: 0 success, 1 gate failed or nothing
met the constraints, 2 bad input or usage (one ``lepton-compile...: error:`` line), 3 a bug.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from lepton_compile.cli import (
    cmd_bench,
    cmd_cache,
    cmd_compile,
    cmd_export,
    cmd_fleet,
    cmd_gate,
    cmd_lists,
    cmd_optimize,
)
from lepton_compile.cli.common import EXIT_BAD_INPUT, EXIT_INTERNAL, ArgParser
from lepton_compile.errors import LeptonError

__all__ = ["SUBCOMMANDS", "build_parser", "main", "route"]

# The main job first: argv that names no other subcommand is its.
SUBCOMMANDS = (
    "compile",
    "bench",
    "cache",
    "export",
    "fleet",
    "gate",
    "optimize",
    "passes",
    "recipes",
)
_MAIN_JOB = SUBCOMMANDS[0]


def build_parser() -> argparse.ArgumentParser:
    """The root parser; it reads argv as ``route`` gives it, the subcommand name first."""
    root = ArgParser(prog="lepton-compile", add_help=False)
    commands = root.add_subparsers(dest="command", required=True)
    cmd_compile.add_parser(commands)
    cmd_bench.add_parser(commands)
    cmd_cache.add_parser(commands)
    cmd_export.add_parser(commands)
    cmd_fleet.add_parser(commands)
    cmd_gate.add_parser(commands)
    cmd_optimize.add_parser(commands)
    cmd_lists.add_parsers(commands)
    return root


def route(argv: Sequence[str]) -> list[str]:
    """argv with the subcommand named first.

    A first argument that is an existing file is the model of the main job, even if it is
    named like a subcommand; otherwise a subcommand name selects it; anything else (a model,
    an option, ``--help``, nothing) belongs to the main job.
    """
    # A model is a file: a directory called bench/ or passes/ (as in this project's own
    # checkout) must not hide the subcommand. os.path.isfile, not Path.is_file: a name with a
    # NUL byte or one too long is simply not a file.
    if argv and argv[0] in SUBCOMMANDS and not os.path.isfile(argv[0]):
        return list(argv)
    return [_MAIN_JOB, *argv]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(route(argv))
        return int(args.run(args))
    except LeptonError as e:
        print(f"lepton-compile: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lepton-compile: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # argparse: --help, --version, bad usage
        return int(e.code) if isinstance(e.code, int) else EXIT_BAD_INPUT
    except Exception as e:  # a bug: keep the traceback, say so, and use our own exit code
        import traceback

        traceback.print_exc()
        print(f"lepton-compile: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_INTERNAL
