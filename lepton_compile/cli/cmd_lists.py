"""``lepton-compile passes`` and ``lepton-compile recipes``: what can be asked for, as tables."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from lepton_compile.cli.common import EXIT_OK, Subcommands
from lepton_compile.cli.terminal import stdout_console


def add_parsers(commands: Subcommands) -> None:
    """Register ``passes`` and ``recipes`` on the subcommands of the root parser."""
    commands.add_parser("passes", description="List graph passes and pipelines.").set_defaults(
        run=run_passes
    )
    commands.add_parser(
        "recipes",
        description="List the recipes (how each variant is built) and the groups that "
        "--recipes accepts.",
    ).set_defaults(run=run_recipes)


def run_passes(args: argparse.Namespace) -> int:
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


def run_recipes(args: argparse.Namespace) -> int:
    from lepton_compile.recipes import ALIASES, DEFAULT_RECIPES, RECIPES

    t = Table(title="recipes")
    t.add_column("name")
    t.add_column("group")
    t.add_column("default")
    t.add_column("what it builds")
    for name, r in RECIPES.items():
        t.add_row(name, r.group, "yes" if name in DEFAULT_RECIPES else "", r.description)
    console = stdout_console()
    console.print(t)
    for alias, names in ALIASES.items():
        console.print(f"[bold]{alias}[/]: {', '.join(names)}")
    return EXIT_OK
