"""``lepton-compile export OUTDIR``: a compile's pick as a deployable file (``export``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from lepton_compile.cli.common import (
    EXIT_OK,
    Subcommands,
    display_flags,
    inputs_flag,
    output_flags,
)
from lepton_compile.cli.terminal import setup_logging, stdout_console

DESCRIPTION = """\
Export a variant of a finished compile (default: its pick) so that it deploys without
lepton-compile. OUTDIR is the compile's output directory (the -o of `lepton-compile MODEL`,
holding report.json and variants/); the export goes to OUTDIR/export unless -o says
otherwise.

A lepton-backend variant is exported with torch.export at the compile's input shapes and
compiled by AOTInductor into model.pt2 for the variant's device: Python loads it with
torch._inductor.aoti_load_package, C++ with lepton-run (--build-runner). After a serving
profile the package holds a model per profiled batch size: "model" at the recommended
batch, "batch_N" for the others. An onnxruntime variant is exported as its ONNX file,
model.onnx.

Beside it: inputs/NNNN.lt, the compile's held-out inputs in lepton-run's raw tensor format,
and export.json: what was exported, and the package's parity with the variant on those
inputs. A package that does not match the variant within the tolerance of its precision is
not written.
"""

EPILOG = """\
examples:
  lepton-compile model.onnx -o model.lepton          # compile first
  lepton-compile export model.lepton                 # the pick -> model.lepton/export/
  lepton-compile export model.lepton --variant fp16-lepton-cuda -o deploy/
  lepton-compile export model.lepton --build-runner  # also build and time lepton-run
  model.lepton/export/bin/lepton-run model.lepton/export/model.pt2 \\
      model.lepton/export/inputs/0000.lt --bench

exit codes: 0 exported, 1 the package's outputs differ from the variant's,
            2 bad input or usage, a variant or op that cannot be exported, no compiler
"""


def add_parser(commands: Subcommands) -> None:
    """Register ``export`` on the subcommands of the root parser."""
    p = commands.add_parser(
        "export",
        parents=[
            output_flags(
                "directory to write (default: OUTDIR/export); replaced whole if an earlier "
                "export wrote it, refused if it holds other files (see --force)",
                "replace the output directory even if lepton-compile did not write it",
            ),
            inputs_flag(
                "the .npz directory the compile read its inputs from, when it was given one "
                "(generated inputs are made again from the report's seed)"
            ),
            display_flags("print export.json's content to stdout instead of a summary"),
        ],
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("outdir", type=Path, metavar="OUTDIR", help="a compile's output directory")
    p.add_argument(
        "--variant",
        default=None,
        metavar="ID",
        help="the variant to export, by its id in report.json (default: the pick)",
    )
    p.add_argument(
        "--format",
        choices=["pt2", "onnx"],
        default=None,
        help="pt2: AOTInductor package (lepton variants only); onnx: the variant's ONNX file "
        "(default: pt2 for a lepton variant, onnx for an onnxruntime one)",
    )
    p.add_argument(
        "--build-runner",
        action="store_true",
        help="build lepton-run with CMake (libtorch from this torch), copy it to bin/, check "
        "its outputs and time it beside the Python session (export.json: latency)",
    )
    p.add_argument(
        "--build-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="CMake build tree for --build-runner (default: one per sources and torch "
        "version under ~/.cache/lepton-compile/native, or $LEPTON_NATIVE_BUILD)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short timing windows for --build-runner (indicative figures)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from lepton_compile.export import export

    err = Console(stderr=True)
    setup_logging(args.verbose, err)
    out = stdout_console()
    with err.status("exporting") as status:
        result = export(
            args.outdir,
            args.output,
            variant=args.variant,
            fmt=args.format,
            force=args.force,
            build_runner=args.build_runner,
            build_dir=args.build_dir,
            inputs_dir=args.inputs,
            quick=args.quick,
            progress=lambda msg: status.update(msg),
        )
    m = result.manifest
    if args.json:
        out.print_json(json.dumps(result.to_dict()))
        return EXIT_OK
    out.print(
        f"exported [bold]{m['variant']}[/] ({m['backend']}, {m['device']}) -> "
        f"[bold]{result.artifact}[/]"
    )
    for note in m.get("notes") or []:
        out.print(f"[dim]{note}[/]")
    parity = m.get("parity") or {}
    for who, p in parity.items():
        worst = max((o.get("max_abs") or 0.0 for o in p["outputs"].values()), default=0.0)
        out.print(
            f"[green]parity ({who}): passed[/] on {p['samples']} held-out input(s), "
            f"max |diff| {worst:.3g}"
        )
    latency = m.get("latency")
    if latency:
        r, py = latency["runner"]["latency_ms"], latency["python_session"]["latency_ms"]
        out.print(
            f"latency p50: lepton-run {r['p50']:.3f} ms, Python session {py['p50']:.3f} ms "
            f"(ratio {latency['runner_over_python_p50']:.2f})"
        )
        energy = latency["runner"].get("energy_j")
        if energy:
            out.print(f"energy: {energy['per_inference']:.4g} J per inference (NVML)")
    if result.runner is not None:
        out.print(f"runner: {result.runner} {result.artifact} {result.outdir / 'inputs/0000.lt'}")
    out.print(f"wrote {result.outdir} (export.json, inputs/)")
    return EXIT_OK
