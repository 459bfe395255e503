"""The main job: ``lepton-compile MODEL`` -> CompileOptions -> compile -> OUTDIR and a table.

Also reachable as ``lepton-compile compile MODEL``; ``lepton-compile --help`` and
``--version`` are this command's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from lepton_compile import __version__
from lepton_compile.cli.common import (
    EXIT_CONSTRAINTS,
    EXIT_OK,
    ArgGroup,
    ArgParser,
    Subcommands,
    batch_sizes,
    count,
    display_flags,
    input_shape_flag,
    inputs_flag,
    measurement_flags,
    measurement_options,
    names,
    non_negative,
    output_flags,
    positive,
)
from lepton_compile.cli.terminal import setup_logging, stage_progress, stdout_console
from lepton_compile.compress import DEFAULT_SEARCH_BUDGET_S
from lepton_compile.errors import InputError
from lepton_compile.options import DEFAULT_EXPERIMENT, CompileOptions

DESCRIPTION = (
    "Build verified variants of an ONNX model (fused, FP16, INT8, ...), measure each one's "
    "latency and energy per inference on this machine, and hand back the best with a report."
)

EPILOG = """\
other commands:
  lepton-compile optimize MODEL -o OUT     run the graph passes only (verified)
  lepton-compile gate BASE.json CUR.json   compare two reports (CI perf gate)
  lepton-compile passes                    list the graph passes and pipelines
  lepton-compile recipes                   list the recipes (variants) and recipe groups
  lepton-compile bench MODEL               measure one model as it is (no search)
  lepton-compile fleet DIR|LIST -o OUT     many models: a compile and output each, one summary
  lepton-compile cache list|clear          the result cache of earlier runs
  lepton-compile compile MODEL             this main job, named (a MODEL file that exists is
                                           always the model, even if named like a command)

exit codes: 0 success, 1 nothing met the constraints / gate failed,
            2 bad input or usage, 3 internal error

examples:
  lepton-compile model.onnx --input-shape images=1x3x320x320
  lepton-compile model.onnx --objective latency --recipes fused,int8-qdq --json
  lepton-compile model.onnx --recipes quantize,prune --inputs calib/ --metric m.py:accuracy
  lepton-compile model.onnx --mlflow http://mlflow:5000 --mlflow-experiment detector
"""


def _parents() -> list[ArgParser]:
    return [
        output_flags(
            "output directory (default: ./MODEL.lepton), written atomically. An earlier output "
            "of lepton-compile there is replaced; anything else is refused unless --force",
            "replace whatever is at the output path, even files lepton-compile did not write",
        ),
        *run_parents(),
        display_flags(
            "print report.json to stdout (no table, no progress)", quiet_help="no progress display"
        ),
    ]


def run_parents() -> list[ArgParser]:
    """The parent parsers of one compile's inputs and measurement (``fleet`` lists them too)."""
    return [
        input_shape_flag(),
        inputs_flag(
            "directory of .npz files, one feed per file, keys = input names; the first files "
            "calibrate, the last ones are held out for verification (default: generated inputs)"
        ),
        measurement_flags(
            "build and measure variants in this process instead of one worker process each "
            "(faster start; a crashing variant then ends the run)"
        ),
    ]


def add_run_groups(p: argparse.ArgumentParser) -> None:
    """The flag groups of one compile after its parents (``fleet`` adds them too, so that
    every compile flag works there)."""
    _add_search_flags(p.add_argument_group("search"))
    _add_accuracy_flags(p.add_argument_group("accuracy"))
    _add_racing_flags(p.add_argument_group("racing (how long to measure)"))
    _add_run_flags(p.add_argument_group("run"))
    _add_cluster_flags(p.add_argument_group("cluster"))
    _add_mlflow_flags(p.add_argument_group("MLflow"))


def add_parser(commands: Subcommands) -> None:
    """Register ``compile`` on the subcommands of the root parser."""
    p = commands.add_parser(
        "compile",
        prog="lepton-compile",
        parents=_parents(),
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", type=Path, help="the ONNX model (never modified)")
    p.add_argument("--version", action="version", version=f"lepton-compile {__version__}")
    add_run_groups(p)
    p.set_defaults(run=run)


def _default_recipes() -> tuple[str, ...]:
    from lepton_compile.recipes import DEFAULT_RECIPES

    return DEFAULT_RECIPES


def _add_search_flags(g: ArgGroup) -> None:
    """What is tried, and what the pick minimizes and must meet."""
    g.add_argument(
        "--objective",
        choices=["energy", "latency", "size"],
        default="energy",
        help="what the pick minimizes (default: energy)",
    )
    g.add_argument(
        "--recipes",
        default=None,
        metavar="A,B",
        help="recipes to try, comma-separated; 'original' is always included. Also the "
        "groups 'default', 'quantize', 'prune' and 'all'. See `lepton-compile recipes` "
        "(default: " + ",".join(_default_recipes()) + ")",
    )
    g.add_argument(
        "--max-latency-ms",
        type=positive,
        default=None,
        help="reject variants whose mean latency exceeds this; with --batch-sizes, the "
        "(variant, batch) points whose p99 latency per batch exceeds it",
    )
    g.add_argument(
        "--batch-sizes",
        type=batch_sizes,
        default=None,
        metavar="1,8,32",
        help="serving profile: measure every verified variant at each batch size (latency per "
        "batch, throughput, joules per inference) and recommend the variant and batch with the "
        "fewest joules per inference whose p99 meets --max-latency-ms (objective energy). "
        "best.onnx keeps the model's own batch dimension; a model that pins its batch is "
        "measured at that size alone. Adds about one measurement race per size",
    )
    g.add_argument(
        "--search-budget-s",
        type=positive,
        default=None,
        metavar="S",
        help="most time each accuracy-aware recipe (mixed precision, pruning) may spend "
        "probing layer sensitivity; within it the budget scales to the model (the first "
        "probe's cost x 64 probes x 1.5), and a search that cannot meet the target stops "
        f"early (default: {DEFAULT_SEARCH_BUDGET_S:g})",
    )


def _add_accuracy_flags(g: ArgGroup) -> None:
    """How a variant is judged against the original, and on which samples."""
    g.add_argument(
        "--max-accuracy-drop",
        default="1%",
        metavar="X",
        help="largest fidelity loss a variant may have vs the original: max over "
        "outputs of 1-cosine and of 1-top-1 agreement for score outputs "
        "(default: 1%%)",
    )
    g.add_argument(
        "--metric",
        default=None,
        metavar="MODULE:FUNCTION",
        help="judge variants with your metric instead of output fidelity: "
        "FUNCTION(outputs, labels) -> float, higher is better, where outputs and labels are "
        "lists with one dict per sample; labels come from 'label' arrays in the --inputs "
        ".npz files. A variant passes when metric(original) - metric(variant) <= "
        "--max-accuracy-drop",
    )
    g.add_argument(
        "--calibration-samples",
        type=int,
        default=32,
        metavar="N",
        help="generated calibration samples when --inputs is not given (default: 32); "
        "calibrated recipes fit ranges on half and judge layer sensitivity on the other half",
    )
    g.add_argument("--eval-samples", type=int, default=16, metavar="N")
    g.add_argument("--seed", type=int, default=0)


def _add_racing_flags(g: ArgGroup) -> None:
    """When the interleaved trials stop: decided, out of trials, or out of time."""
    g.add_argument(
        "--min-trials",
        type=count,
        default=None,
        metavar="N",
        help="interleaved trials before racing may drop a variant or stop (default: 4; "
        "2 with --quick)",
    )
    g.add_argument(
        "--max-trials",
        type=count,
        default=None,
        metavar="N",
        help="most trials per race; the pick is then reported as undecided if it still is "
        "(default: 20; 4 with --quick)",
    )
    g.add_argument(
        "--measure-budget-s",
        type=positive,
        default=None,
        metavar="S",
        help="seconds the measurement of one device may take; trials stop when it is spent "
        "and the report says whether the pick was decided (default: 60; 10 with --quick)",
    )
    g.add_argument(
        "--screen-factor",
        type=non_negative,
        default=2.0,
        metavar="X",
        help="a first single-window screen drops variants more than X times slower than the "
        "original before the trials (default: 2; 0 turns the screen off)",
    )


def _add_run_flags(g: ArgGroup) -> None:
    """Bounds on the whole run and on each variant's worker; the result cache."""
    g.add_argument(
        "--budget-s",
        type=positive,
        default=None,
        metavar="S",
        help="bound the whole search; what does not fit is reported as skipped",
    )
    g.add_argument(
        "--variant-timeout-s",
        type=positive,
        default=900.0,
        metavar="S",
        help="time limit for each step of a variant (build, verify, measure); a variant past "
        "it is marked failed and the run goes on (default: 900)",
    )
    g.add_argument(
        "--memory-limit-gb",
        type=positive,
        default=None,
        metavar="GB",
        help="address-space limit of each variant's worker process "
        "(default: 80%% of physical memory)",
    )
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="neither reuse nor store results in the result cache "
        "(default: reuse a whole earlier run of the same model, inputs, recipes, device and "
        "protocol; see `lepton-compile cache list`)",
    )


def _add_cluster_flags(g: ArgGroup) -> None:
    """Where the variants' work runs: worker processes here, or actors on a Ray cluster."""
    g.add_argument(
        "--executor",
        choices=["local", "ray"],
        default="local",
        help="local: a worker process per variant on this machine, one at a time; ray: on a "
        "Ray cluster, builds, verification runs and sensitivity probes as Ray tasks and actors "
        "(as many at once as it has CPUs), and measurement in one actor pinned to a node with "
        "--target-resource. Needs pip install 'lepton-compile[ray]' (default: local)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="ADDR",
        help="the Ray cluster to join, HOST:PORT or ray://HOST:PORT (default: the one "
        "`ray start` left running for this machine)",
    )
    g.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="where the run's temporary files go (default: the system's temporary directory). "
        "With --executor ray, a directory every node mounts at the same path: artifacts then "
        "move between nodes as files; without it, models up to 512 MiB travel through Ray's "
        "object store, bigger ones need it",
    )
    g.add_argument(
        "--target-resource",
        default=None,
        metavar="NAME",
        help="measure on a node that has this Ray resource, e.g. one started with "
        "`ray start --resources '{\"bench\": 1}'` (default: GPU for CUDA variants, else "
        "any one node; every variant is measured on the same node)",
    )


def _add_mlflow_flags(g: ArgGroup) -> None:
    """Logging the run to MLflow once the output directory is written."""
    g.add_argument(
        "--mlflow",
        nargs="?",
        const=True,
        default=None,
        metavar="TRACKING_URI",
        help="after writing the output, log this run to MLflow: params (recipes, objective, "
        "constraints, backends, device), metrics per variant and of the best (latency, J per "
        "inference, accuracy drop, size, ratios to the original), tags (meter, device, best "
        "variant), report.json/.md/.html, and best.onnx as an MLflow ONNX model. "
        "TRACKING_URI: a server (http://host:5000), a database (sqlite:///mlflow.db) or a "
        "folder (file:///path); without it, $MLFLOW_TRACKING_URI or MLflow's default (put "
        "MODEL first, or write --mlflow=URI, so that MODEL is not read as the URI). A store "
        "that cannot be reached is one warning: the output and exit code stand. Needs "
        "pip install 'lepton-compile[mlflow]'",
    )
    g.add_argument(
        "--mlflow-experiment",
        default=None,
        metavar="NAME",
        help=f"MLflow experiment to log to, created if new; implies --mlflow "
        f"(default: {DEFAULT_EXPERIMENT})",
    )


def load_metric(spec: str) -> Any:
    """``module:function`` (or ``path/to/file.py:function``) -> the callable."""
    import importlib

    mod_name, _, attr = spec.rpartition(":")
    if not mod_name or not attr:
        raise InputError(f"--metric {spec}: expected MODULE:FUNCTION or FILE.py:FUNCTION")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).resolve()
            if not path.is_file():
                raise InputError(f"--metric {spec}: {path} not found")
            # Importable by name (worker processes get this sys.path too), so it can be pickled.
            sys.path.insert(0, str(path.parent))
            module = importlib.import_module(path.stem)
        else:
            module = importlib.import_module(mod_name)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"--metric {spec}: cannot import {mod_name}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise InputError(f"--metric {spec}: {attr} is not a function of {mod_name}")
    return fn


def build_options(args: argparse.Namespace) -> CompileOptions:
    """The parsed flags as the options the Python API takes, all but the metric (loading it
    runs the user's code: ``run`` does that once the output path is known to be writable).
    A shape or fraction that does not parse raises InputError; ``compile`` validates the rest.
    """
    from lepton_compile.gate import parse_fraction
    from lepton_compile.intake import parse_shape_arg

    shapes = dict(parse_shape_arg(s) for s in args.input_shape)
    max_drop = parse_fraction(args.max_accuracy_drop, "--max-accuracy-drop")
    return CompileOptions(
        input_shapes=shapes,
        objective=args.objective,
        # An empty --recipes is the defaults, as if it were not given.
        recipes=names(args.recipes or None),
        inputs_dir=args.inputs,
        max_accuracy_drop=max_drop,
        max_latency_ms=args.max_latency_ms,
        batch_sizes=args.batch_sizes,
        budget_s=args.budget_s,
        variant_timeout_s=args.variant_timeout_s,
        memory_limit_bytes=int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else None,
        cache=not args.no_cache,
        calibration_samples=args.calibration_samples,
        eval_samples=args.eval_samples,
        seed=args.seed,
        search_budget_s=args.search_budget_s or DEFAULT_SEARCH_BUDGET_S,
        min_trials=args.min_trials,
        max_trials=args.max_trials,
        measure_budget_s=args.measure_budget_s,
        # 0 turns the screen off, which the options spell None.
        screen_factor=args.screen_factor or None,
        # Naming an experiment asks for the run to be logged (to the default store).
        mlflow=args.mlflow if args.mlflow is not None else bool(args.mlflow_experiment) or None,
        mlflow_experiment=args.mlflow_experiment or DEFAULT_EXPERIMENT,
        executor=args.executor,
        ray_address=args.ray_address,
        target_resource=args.target_resource,
        work_dir=args.work_dir,
        **measurement_options(args),
    )


def run(args: argparse.Namespace) -> int:
    """Check the output path, compile with progress, save, print the table or JSON."""
    from lepton_compile import engine
    from lepton_compile.outdir import check_output_dir

    err = Console(stderr=True)
    out = stdout_console()
    setup_logging(args.verbose, err)
    options = build_options(args)
    # Checked here too: compile sees these options without the MLflow ones (below).
    options.validate()
    outdir = args.output or Path.cwd() / f"{args.model.stem}.lepton"
    # Refused before any work: a run of minutes must not end in "cannot write there".
    check_output_dir(outdir, args.force)
    if args.metric:
        options.metric = load_metric(args.metric)
    # MLflow gets the run from the saved output below, not from compile's own temporary save.
    run_options = dataclasses.replace(options, mlflow=None)
    if args.json or args.quiet:
        result = engine.compile(args.model, run_options, observer=engine.Observer())
    else:
        with stage_progress(err) as observer:
            result = engine.compile(args.model, run_options, observer=observer)
    saved = result.save(outdir, force=args.force)
    if args.json:
        out.print_json(json.dumps(result.report))
    else:
        from lepton_compile.report import print_table

        print_table(result.report, out)
        out.print(f"wrote {saved}/best.onnx, report.json, report.md, report.html, variants/")
    if options.mlflow:
        _log_mlflow(saved, options, err if args.json else out)
    return EXIT_OK if result.report["constraints"]["met"] else EXIT_CONSTRAINTS


def _log_mlflow(saved: Path, options: CompileOptions, console: Console) -> None:
    """Log the saved run to MLflow; a failure is one warning line and changes no exit code."""
    from lepton_compile import tracking

    def warn(message: str) -> None:
        print(f"lepton-compile: warning: {message}", file=sys.stderr)

    run_id = tracking.log_compile(saved, options, warn)
    if run_id is not None:
        console.print(
            f"logged MLflow run {run_id} (experiment {options.mlflow_experiment})",
            highlight=False,
        )
