"""``lepton-compile cache list|clear``: the result cache of earlier runs, and its stored models."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from lepton_compile.bench.cache import ENV_CACHE, ResultCache, default_cache_path, parse_age
from lepton_compile.cli.common import EXIT_OK, ArgParser, Subcommands


def _age(text: str) -> float:
    """argparse type: an age such as 90s, 15m, 12h, 7d -> seconds."""
    try:
        return parse_age(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _path_flag(default: Any) -> ArgParser:
    p = ArgParser(add_help=False)
    p.add_argument(
        "--path",
        default=default,
        help=f"cache file (default ${ENV_CACHE} or {default_cache_path()})",
    )
    return p


def add_parser(commands: Subcommands) -> None:
    """Register ``cache`` and its actions on the subcommands of the root parser."""
    p = commands.add_parser(
        "cache",
        parents=[_path_flag(None)],
        description="The result cache: measured figures of earlier runs, reused by a re-run of "
        "the same job, and the models stored with them.",
    )
    actions = p.add_subparsers(dest="action", metavar="{list,clear}", required=True)
    # --path may also follow the action; SUPPRESS keeps a --path given before it.
    after = _path_flag(argparse.SUPPRESS)
    ls = actions.add_parser("list", parents=[after], help="list stored results, newest first")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(run=run_list)
    clear = actions.add_parser("clear", parents=[after], help="delete stored results")
    clear.add_argument(
        "--older-than",
        type=_age,
        default=None,
        metavar="AGE",
        help="only those older than this (90s, 15m, 12h, 7d)",
    )
    clear.set_defaults(run=run_clear)


def _human_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def run_list(args: argparse.Namespace) -> int:
    """The stored results, newest first: a table, or JSON lines with ``--json``."""
    with ResultCache(args.path) as cache:
        rows = cache.list()
        if args.json:
            for r in rows:
                print(json.dumps(r.to_dict()))
            return EXIT_OK
        print(f"{cache.path}: {len(rows)} result(s)")
    if rows:
        print(f"{'key':12}  {'created':19}  {'size':>9}  {'backend':10}  {'recipe':16}  model")
    for r in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.created))
        print(
            f"{r.key_prefix:12}  {when:19}  {_human_size(r.size):>9}  {r.backend or '-':10}  "
            f"{(r.recipe or '-')[:16]:16}  {r.model or '-'}"
        )
    return EXIT_OK


def run_clear(args: argparse.Namespace) -> int:
    """Delete results (all, or those older than ``--older-than``), then the stored models
    that no remaining result refers to."""
    from lepton_compile.cached import prune_artifacts

    with ResultCache(args.path) as cache:
        n = cache.clear(args.older_than)
        print(f"removed {n} result(s) from {cache.path}")
    print(f"removed {prune_artifacts(args.path)} stored model file(s)")
    return EXIT_OK
