"""The main job as a sequence of stages over one run context (``lepton_compile.stages``):

    prepare -> plan_variants -> reference -> build -> verify -> measure -> serve -> select
        -> emit

A whole run that is in the result cache is reused instead of the four middle stages; the
serving profile (``batch_sizes``) reuses each batch size whose figures are all cached.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lepton_compile import stages
from lepton_compile.cached import VariantCache, inputs_fingerprint
from lepton_compile.executor import connect, executor_for
from lepton_compile.intake import LoadedModel
from lepton_compile.modelio import copy_model, uses_external_data
from lepton_compile.options import CompileOptions
from lepton_compile.outdir import check_output_dir, replace_dir
from lepton_compile.serving import Recommendation
from lepton_compile.stages import Observer, RunContext
from lepton_compile.variant import Status, VariantResult

__all__ = ["CompileResult", "Observer", "compile"]


@dataclass
class CompileResult:
    """What ``compile`` returns: the variants, the pick, the frontier and the report."""

    model: LoadedModel
    variants: list[VariantResult]
    baseline: VariantResult
    best: VariantResult
    pick_reason: str
    objective: str
    report: dict[str, Any]
    workdir: Path
    _tmp: tempfile.TemporaryDirectory | None = None
    # With batch_sizes: the variant and batch to serve with (best is that variant; best.onnx
    # keeps the model's own batch dimension, the batch is this recommendation).
    recommendation: Recommendation | None = None
    # With mlflow: the MLflow run this compile was logged as (None when it could not be).
    mlflow_run_id: str | None = None
    # Where ``save`` last wrote this result (``export`` reads it from there).
    saved_to: Path | None = None

    @property
    def pareto(self) -> list[VariantResult]:
        return [v for v in self.variants if v.pareto]

    def _repr_html_(self) -> str:
        """Jupyter's view of a result: the verdict, the variants table and the Pareto plot."""
        from lepton_compile import report_html

        return report_html.fragment(self.report)

    def export(self, out: str | Path, **kwargs: Any) -> Any:
        """Export a variant (default: the pick) into ``out``, as `lepton-compile export` does.

        It reads what ``save`` wrote: the directory of the last ``save``, else a temporary
        save. Keywords as ``lepton_compile.export.export``: variant, fmt, force,
        build_runner, build_dir, inputs_dir, quick. Returns its ``ExportResult``.
        """
        from lepton_compile.export import export

        if self.saved_to is not None:
            return export(self.saved_to, out, **kwargs)
        with tempfile.TemporaryDirectory(prefix="lepton-export-") as tmp:
            try:
                return export(self.save(Path(tmp) / "compile"), out, **kwargs)
            finally:
                self.saved_to = None  # the temporary save is gone with ``tmp``

    def save(self, outdir: str | Path, force: bool = False) -> Path:
        """Write best.onnx, variants/, report.json/.md/.html into ``outdir``, atomically.

        ``outdir`` may be new, empty, or an earlier output of this tool; anything else (the
        user's own file or directory) raises InputError unless ``force`` is given.
        """
        from lepton_compile.report_files import write_all

        out = Path(outdir)
        check_output_dir(out, force)

        def fill(stage: Path) -> None:
            (stage / "variants").mkdir()
            for v in self.variants:
                if v.artifact and v.artifact.exists():
                    dst = stage / "variants" / v.artifact.name
                    if not dst.exists():
                        copy_model(v.artifact, dst)
            assert self.best.artifact is not None
            best = stage / "best.onnx"
            if uses_external_data(self.best.artifact):
                # External data is referenced by file name: best.onnx gets its own data file.
                copy_model(self.best.artifact, best)
            else:
                shutil.copy2(self.best.artifact, best)
            write_all(self.report, stage)

        replace_dir(out, fill, force)
        self.saved_to = out
        return out


def compile(
    model: str | Path,
    options: CompileOptions | None = None,
    *,
    observer: Observer | None = None,
    **kwargs: Any,
) -> CompileResult:
    """Build, verify and measure variants of ``model``; pick the best for the objective.

    Options come as a ``CompileOptions`` or as its fields by keyword (``recipes=[...]``,
    ``quick=True``, ...). Each variant runs in its own worker process (``isolate=False``
    keeps them in this process), with ``variant_timeout_s`` per step and
    ``memory_limit_bytes`` of address space (default: 80% of physical memory), which also
    bounds the workers alive at once (``total_memory_bytes`` sets that bound alone): past it,
    variants are measured in groups. ``budget_s`` bounds the whole search: what did not fit is
    reported as skipped. ``cache`` reuses an earlier run of the same model, inputs, recipes,
    device, protocol and code. Raises ``InputError`` on bad input (exit code 2 in the CLI)
    before anything is written.

    ``metric(outputs, labels) -> float`` (higher is better) judges variants on the user's own
    measure instead of output fidelity: ``outputs`` and ``labels`` are lists with one dict per
    eval sample (the labels come from the ``label``/``labels`` arrays of the ``--inputs`` .npz
    files), and a variant passes when ``metric(original) - metric(variant) <= max_accuracy_drop``.
    Accuracy-aware recipes (mixed precision, pruning) spend at most ``search_budget_s`` each
    probing layer sensitivity.

    ``batch_sizes=[1, 8, 32]`` adds a serving profile: the model keeps its batch dimension
    symbolic, every verified variant is measured at each size (latency per batch, throughput,
    joules per inference), and with the energy objective the pick is the (variant, batch)
    with the fewest joules per inference whose p99 batch latency meets ``max_latency_ms``
    (``result.recommendation``; the report's ``serving`` section).

    ``mlflow=True`` (MLflow's default tracking store) or ``mlflow="http://host:5000"`` logs
    the run to MLflow, in experiment ``mlflow_experiment`` (``lepton_compile.tracking``;
    ``result.mlflow_run_id``); a store that cannot be reached is one warning, not a failure.
    """
    opts = options if options is not None else CompileOptions(**kwargs)
    opts.validate()
    connect(opts)  # a cluster that cannot be reached is bad input, said before any work
    tmp = tempfile.TemporaryDirectory(prefix="lepton-", dir=opts.work_dir)
    ctx = stages.prepare(model, opts, observer or Observer(), Path(tmp.name))
    variants = stages.plan_variants(ctx)
    active = [v for v in variants if v.status == Status.PENDING]
    _build_and_measure(ctx, active)
    sel = stages.select(ctx, variants)
    ctx.observer.done()
    rep = stages.emit(ctx, variants, sel)
    result = CompileResult(
        *(ctx.loaded, variants, sel.baseline, sel.best, sel.reason, opts.objective, rep),
        ctx.work,
        _tmp=tmp,
        recommendation=sel.recommendation,
    )
    if opts.mlflow:
        from lepton_compile import tracking

        result.mlflow_run_id = tracking.log_compile(result, opts)
    return result


def _build_and_measure(ctx: RunContext, active: list[VariantResult]) -> None:
    """The middle stages, or the whole run from the result cache when all of it is there."""
    vcache = _open_cache(ctx)
    try:
        hits = {v.id: vcache.lookup(v) for v in active}
        if all(hits.values()):
            _reuse(ctx, active, hits, vcache)
        else:
            _run(ctx, active, hits, vcache)
            for v in active:
                vcache.save(v)
    finally:
        vcache.close()


def _run(
    ctx: RunContext, active: list[VariantResult], hits: dict[str, Any], vcache: VariantCache
) -> None:
    with executor_for(ctx.options, ctx.memory_limit, ctx.plan.devices) as executor:
        try:
            ref = stages.reference(ctx, executor, active[0])
            stages.build(ctx, executor, active, hits)
            stages.verify(ctx, executor, active, ref)
            stages.measure(ctx, executor, active)
            stages.serve(ctx, executor, active, vcache)
        finally:
            _record_executor(ctx, executor)


def _reuse(
    ctx: RunContext, active: Sequence[VariantResult], hits: dict[str, Any], vcache: VariantCache
) -> None:
    """Everything of this exact run is cached: reuse it whole (figures of one run only)."""
    ctx.observer.stage("reusing cached results", total=len(active))
    for v in active:
        hit = hits[v.id]
        vcache.restore(v, hit, with_measurement=True)
        if hit["artifact_path"] is not None:
            v.artifact = ctx.work / "variants" / f"{v.recipe.name}.onnx"
            v.artifact.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hit["artifact_path"], v.artifact)
        ctx.observer.advance(v.id)
    if ctx.batches is not None:  # the serving profile reuses each size it holds, measures the rest
        with executor_for(ctx.options, ctx.memory_limit, ctx.plan.devices) as executor:
            try:
                stages.serve(ctx, executor, active, vcache, load=True)
            finally:
                _record_executor(ctx, executor)


def _record_executor(ctx: RunContext, executor: Any) -> None:
    """Where the work ran, for the report (an executor that can say: Ray's nodes)."""
    describe = getattr(executor, "describe", None)
    if describe is not None:
        ctx.executor = describe()


def _open_cache(ctx: RunContext) -> VariantCache:
    """The result cache, keyed on everything that makes this run's figures comparable."""
    opts, loaded, feeds = ctx.options, ctx.loaded, ctx.feeds
    return VariantCache(
        opts.cache,
        opts.cache_path,
        {
            "model_sha256": loaded.sha256,
            "device_record": ctx.device_at_start,
            "protocol": ctx.protocol.to_dict(),
            "race": ctx.rules.to_dict(),
            "input_shapes": {s.name: list(s.shape or ()) for s in loaded.inputs},
            "inputs": inputs_fingerprint([*feeds.calibration, *feeds.eval]),
            "max_accuracy_drop": opts.max_accuracy_drop,
            "meter": {d: m.name for d, m in sorted(ctx.meters.items())},
            "search_budget_s": opts.search_budget_s,
            "metric": opts.metric_name(),
            "kernels": opts.kernels,
        },
    )
