"""Stages intake -> inputs -> recipes: the run context, and the variants it will judge."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lepton_compile import batching, compress, hopeless, inputs, intake
from lepton_compile import recipes as recipe_lib
from lepton_compile.bench.energy import get_meter
from lepton_compile.errors import InputError
from lepton_compile.options import CompileOptions
from lepton_compile.runtime import default_backends, get_backend
from lepton_compile.stages.context import Observer, RunContext
from lepton_compile.targets import plan_targets
from lepton_compile.variant import Status, VariantResult


def prepare(model: str | Path, opts: CompileOptions, obs: Observer, work: Path) -> RunContext:
    """Load and check the model, make its inputs, resolve recipes, targets and meters.

    Raises InputError on bad input, before anything is built or written.
    """
    chosen = recipe_lib.resolve(opts.recipes)
    obs.stage("loading model")
    sizes = opts.profiled_batches()
    loaded = intake.load_model(model, opts.input_shapes, keep_batch=sizes is not None)
    batches = batching.plan_batches(loaded, sizes) if sizes is not None else None
    feeds = inputs.prepare(
        loaded, opts.inputs_dir, opts.calibration_samples, opts.eval_samples, opts.seed
    )
    not_buildable = _check_calibration(chosen, feeds, explicit=opts.recipes is not None)
    if opts.metric is not None and (
        not feeds.labels or len(feeds.labels) != len(feeds.eval) or not all(feeds.labels)
    ):
        raise InputError(
            "a metric needs labels: give --inputs DIR whose .npz files each hold a 'label' "
            "(or 'labels', 'label_*') array beside the model inputs"
        )
    requested = tuple(opts.backends or default_backends())
    plan = plan_targets(
        {b: _backend_devices(b) for b in requested}, requested, opts.device, opts.meter
    )
    meters: dict[str, Any] = {}
    for dev, kind in plan.meters.items():
        try:
            meters[dev] = get_meter(kind, device=dev, cpu_watts=opts.cpu_watts)
        except ValueError as e:
            raise InputError(f"--meter {opts.meter}: {e}") from None
    loaded.notes.extend(plan.notes)
    accuracy = compress.AccuracyContext(
        max_drop=opts.max_accuracy_drop,
        score_outputs=tuple(sorted(loaded.score_outputs)),
        metric=opts.metric,
        labels=list(feeds.calibration_labels),
        budget_s=opts.search_budget_s,
        # Calibration, reference outputs and pass pipelines that recipes share: once a run.
        shared_dir=str(work / "shared"),
    )
    from lepton_compile.bench.device import device_record

    return RunContext(
        options=opts,
        loaded=loaded,
        feeds=feeds,
        recipes=chosen,
        plan=plan,
        meters=meters,
        protocol=opts.measurement_protocol(),
        rules=opts.race_rules(),
        accuracy=accuracy,
        work=work,
        observer=obs,
        device_at_start=device_record(None),
        not_buildable=not_buildable,
        batches=batches,
    )


def plan_variants(ctx: RunContext) -> list[VariantResult]:
    """One variant per recipe and target, the original on the primary device first.

    Known-hopeless variants (16-bit floats on a CPU without them) come out skipped with the
    reason unless their recipe was named; recipes restricted to backends not in the run
    (fused-lepton without lepton) are left out of ``ctx.recipes``.
    """
    variants = [
        v
        for b, d in ctx.plan.targets
        for r in ctx.recipes
        if r.backends is None or b in r.backends
        for v in _with_backend_modes(VariantResult(f"{r.name}-{b}-{d}", r, b, d))
    ]
    if not variants or variants[0].recipe.name != "original":
        raise InputError("the original must run on the first backend")
    skipped = hopeless.skips(variants, recipe_lib.named(ctx.options.recipes))
    for v in variants:
        if v.id in skipped:
            v.fail(Status.SKIPPED, skipped[v.id])
    live = {id(v.recipe) for v in variants if v.status == Status.PENDING}
    ctx.recipes = [r for r in ctx.recipes if id(r) in live]
    return variants


# The recipe whose variants also vary the lepton backend's own modes (one mode at a time from
# the defaults): the graph built for that backend, where the modes matter most.
_MODES_RECIPE = "fused-lepton"


def _with_backend_modes(v: VariantResult) -> list[VariantResult]:
    """``v``, and for the lepton recipe one more variant per non-default backend mode
    (channels-last; on CUDA also kernels, CUDA graphs, TF32), so that the search measures
    the backend's modes instead of fixing them at load."""
    if v.recipe.name != _MODES_RECIPE or not v.backend.startswith("lepton"):
        return [v]
    from lepton_compile.runtime.lepton import option_label, option_space

    out = [v]
    for name, values in option_space(v.device).items():
        for value in values[1:]:
            options = {name: value}
            out.append(
                VariantResult(
                    f"{v.id}+{option_label(options)}",
                    v.recipe,
                    v.backend,
                    v.device,
                    options=options,
                )
            )
    return out


def _backend_devices(name: str) -> list[str]:
    try:
        return get_backend(name).devices()
    except ValueError as e:
        raise InputError(f"--backend: {e}") from None


def _check_calibration(
    chosen: list[recipe_lib.Recipe], feeds: inputs.InputSet, explicit: bool
) -> dict[str, str]:
    """Recipes that calibrate need enough samples: an error if the user named them, else the
    reason each is skipped, by recipe name."""
    from lepton_compile.passes.quantize import MIN_CALIBRATION_SAMPLES as need

    n = len(feeds.calibration)
    short = [r for r in chosen if r.needs_calibration and n < need]
    if not short:
        return {}
    msg = (
        f"{n} calibration sample(s); calibrated recipes need at least {need} "
        "(add .npz files to --inputs or raise --calibration-samples)"
    )
    if explicit:
        raise InputError(f"{', '.join(r.name for r in short)}: {msg}")
    return {r.name: f"not built: {msg}" for r in short}
