"""Parser parts: the error contract, number types, and the parent parsers of shared flags.

A flag that several commands take is declared once here, as a parent parser that a command
lists in ``parents=``. Where a flag means something different per command (``-o`` is a
directory for the main job and bench, a file for optimize), the command passes its help
text in, so each command's ``--help`` stays accurate.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeAlias

EXIT_OK, EXIT_CONSTRAINTS, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

# What --input-shape means for the commands that measure a fully static model.
STATIC_SHAPE_HELP = (
    "fix a dynamic input shape, e.g. images=1x3x640x640 (repeatable); a dynamic batch "
    "dimension defaults to 1"
)


class ArgParser(argparse.ArgumentParser):
    """Bad usage is bad input: the usage, one ``PROG: error: ...`` line, exit code 2.

    Strict in ``parse_known_args`` too: argparse hands a subcommand's unknown arguments up
    to the root parser, whose usage (``lepton-compile {compile,bench,...}``) would then be
    printed; the subcommand reports them with its own usage instead, as ``parse_args`` would.
    """

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[Any, list[str]]:
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


# argparse keeps these classes private; the aliases keep the command modules' signatures typed.
Subcommands: TypeAlias = "argparse._SubParsersAction[ArgParser]"
ArgGroup: TypeAlias = "argparse._ArgumentGroup"


def _finite_number(text: str, allowed: Callable[[float], bool], requirement: str) -> float:
    """``text`` as a float that is finite and ``allowed``; else an argparse error that ends
    with ``requirement`` (inf and nan are not sizes or durations)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or not allowed(value):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number{requirement}")
    return value


def positive(text: str) -> float:
    """argparse type: a finite number above zero."""
    return _finite_number(text, lambda value: value > 0, " above 0")


def non_negative(text: str) -> float:
    """argparse type: a finite number, zero or more."""
    return _finite_number(text, lambda value: value >= 0, ", 0 or more")


def count(text: str) -> int:
    """argparse type: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def batch_sizes(text: str) -> list[int]:
    """argparse type: ``1,8,32`` -> [1, 8, 32] (whole numbers of 1 or more, sorted, unique)."""
    sizes = []
    for part in text.replace("x", ",").split(","):
        if not part.strip():
            continue
        try:
            sizes.append(int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not a whole number") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give batch sizes of 1 or more, like 1,8,32")
    return sorted(set(sizes))


def names(text: str | None) -> list[str] | None:
    """``"a, b,"`` -> ``["a", "b"]``; None stays None (the flag was not given)."""
    if text is None:
        return None
    return [n.strip() for n in text.split(",") if n.strip()]


def _parent() -> ArgParser:
    # Parents only carry flags: -h belongs to the command that lists them.
    return ArgParser(add_help=False)


def output_flags(output_help: str, force_help: str, *, short: bool = True) -> ArgParser:
    """``-o/--output PATH`` (``--output`` alone when not ``short``) and ``--force``."""
    p = _parent()
    g = p.add_argument_group("output")
    g.add_argument(
        *(["-o"] if short else []), "--output", type=Path, default=None, help=output_help
    )
    g.add_argument("--force", action="store_true", help=force_help)
    return p


def input_shape_flag(help_text: str = STATIC_SHAPE_HELP) -> ArgParser:
    """``--input-shape NAME=DIMS``, repeatable."""
    p = _parent()
    g = p.add_argument_group("inputs")
    g.add_argument(
        "--input-shape", action="append", default=[], metavar="NAME=DIMS", help=help_text
    )
    return p


def inputs_flag(help_text: str) -> ArgParser:
    """``--inputs DIR``: the user's own feeds."""
    p = _parent()
    g = p.add_argument_group("inputs")
    g.add_argument("--inputs", type=Path, default=None, metavar="DIR", help=help_text)
    return p


def _backend_choices() -> list[str]:
    from lepton_compile.runtime import BACKENDS

    return sorted(BACKENDS)


def measurement_flags(isolate_help: str) -> ArgParser:
    """Where and how latency and energy are measured: the same protocol for every command."""
    p = _parent()
    g = p.add_argument_group("measurement")
    g.add_argument(
        "--backend",
        action="append",
        default=None,
        choices=_backend_choices(),
        help="runtime backend(s), repeatable: ort (onnxruntime), lepton (ONNX lowered to "
        "torch), lepton+inductor (the same through torch.compile); default: ort, plus lepton "
        "when torch is installed, or $LEPTON_BACKENDS",
    )
    g.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="device to run on (default: cuda if available, else cpu)",
    )
    g.add_argument(
        "--kernels",
        choices=["auto", "triton", "torch"],
        default="auto",
        help="lepton backend: run fused and quantized layers on our Triton kernels or on "
        "torch's route, per layer (auto: time both on each layer's shapes on a GPU and keep "
        "the faster; torch on a CPU; default: auto)",
    )
    g.add_argument(
        "--meter",
        choices=["auto", "nvml", "rapl", "estimate"],
        default="auto",
        help="energy meter (default: auto: NVML on a GPU, RAPL where readable, "
        "else an estimate that is labelled as such)",
    )
    g.add_argument(
        "--cpu-watts",
        type=positive,
        default=None,
        help="CPU package power for the estimate meter (default: from a TDP table)",
    )
    g.add_argument(
        "--quick",
        action="store_true",
        help="short measurement windows (CI smoke runs; wider confidence intervals)",
    )
    g.add_argument(
        "--window-s",
        type=positive,
        default=None,
        metavar="S",
        help="seconds per variant per trial (default: 0.25 s with the estimate, "
        "max(5 s, 50 meter update periods) with NVML or RAPL)",
    )
    g.add_argument("--no-isolate", action="store_true", help=isolate_help)
    return p


def measurement_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``CompileOptions`` keywords that the flags of ``measurement_flags`` set."""
    return {
        "backends": tuple(args.backend) if args.backend else None,
        "device": args.device,
        "kernels": args.kernels,
        "meter": args.meter,
        "cpu_watts": args.cpu_watts,
        "quick": args.quick,
        "window_s": args.window_s,
        "isolate": not args.no_isolate,
    }


def display_flags(json_help: str, quiet_help: str | None = None) -> ArgParser:
    """``--json``, ``-v`` and, where there is a progress display to turn off, ``-q``."""
    p = _parent()
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-vv: debug messages)"
    )
    if quiet_help is not None:
        p.add_argument("-q", "--quiet", action="store_true", help=quiet_help)
    return p
