"""The benchmark model zoo from the command line: list, fetch and verify the cached models.

    python benchmarks/zoo.py list                    # models, sizes, whether cached, sources
    python benchmarks/zoo.py fetch [NAMES...]        # into the cache (default: all)
    python benchmarks/zoo.py verify [NAMES...]       # cached files against their sha256

The cache is $LEPTON_MODELS or ~/.cache/lepton-compile/models (``--cache-dir`` overrides).
Exit codes: 0 ok, 1 a fetch failed or a cached file does not verify, 2 unknown model names.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lepton_compile.bench.zoo import (
    ENV_CACHE,
    MODELS,
    HashMismatchError,
    ZooError,
    default_cache_dir,
    fetch_all,
    verify,
)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _list(root: Path) -> int:
    rows = [("name", "kind", "size", "cached", "inputs", "source")]
    for spec in MODELS.values():
        cached = "yes" if (root / spec.filename).is_file() else "no"
        inputs = " ".join(f"{k}{v}".replace(" ", "") for k, v in spec.input_shapes.items())
        rows.append((spec.name, spec.kind, _human(spec.size_bytes), cached, inputs, spec.source))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)]
        sys.stdout.write("  ".join([*cells, r[-1]]) + "\n")
    return 0


def _verify(root: Path, names: list[str]) -> int:
    """Each named model (default: every cached one): ok, missing or mismatch."""
    bad = 0
    for name in names or [n for n, s in MODELS.items() if (root / s.filename).is_file()]:
        path = root / MODELS[name].filename
        if not path.is_file():
            sys.stdout.write(f"{name}\tmissing\t{path}\n")
            bad += 1
            continue
        try:
            verify(name, path)
        except HashMismatchError as e:
            sys.stdout.write(f"{name}\tmismatch\t{e}\n")
            bad += 1
            continue
        sys.stdout.write(f"{name}\tok\t{path}\n")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/zoo.py", description="Benchmark model zoo."
    )
    parser.add_argument(
        "--cache-dir", help=f"cache directory (default ${ENV_CACHE} or {default_cache_dir()})"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the models and whether they are cached")
    p_fetch = sub.add_parser("fetch", help="fetch models into the cache (default: all)")
    p_fetch.add_argument("names", nargs="*", metavar="NAME")
    p_fetch.add_argument("--force", action="store_true", help="fetch even if cached")
    p_verify = sub.add_parser(
        "verify", help="check cached models against their sha256 (default: every cached one)"
    )
    p_verify.add_argument("names", nargs="*", metavar="NAME")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()

    if args.cmd == "list":
        return _list(root)
    unknown = [n for n in args.names if n not in MODELS]
    if unknown:
        sys.stderr.write(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(MODELS)}\n")
        return 2
    if args.cmd == "verify":
        return _verify(root, args.names)
    try:
        paths = fetch_all(args.names or None, root, force=args.force)
    except ZooError as e:
        sys.stderr.write(f"error: {e}\n")
        return 1
    for name, path in paths.items():
        sys.stdout.write(f"{name}\t{path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
