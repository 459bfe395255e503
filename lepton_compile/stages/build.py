"""Stages reference and build: the original's outputs, then one artifact per recipe."""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lepton_compile import compress, modelio
from lepton_compile.errors import InputError
from lepton_compile.executor import Executor, each
from lepton_compile.recipes import Recipe
from lepton_compile.stages.context import RunContext
from lepton_compile.variant import Status, VariantResult
from lepton_compile.worker import WorkerError


@dataclass
class Reference:
    """The original's outputs on the eval inputs, and the user's metric on them (if any)."""

    outputs: list[dict[str, np.ndarray]]
    metric: float | None = None


def reference(ctx: RunContext, executor: Executor, baseline: VariantResult) -> Reference:
    """The original on onnxruntime's CPU provider with its graph optimizations off, so that no
    runtime rewrite stands between the model and the truth. Bad input raises InputError."""
    name = ctx.loaded.path.name
    w = executor.worker(baseline.id)
    try:
        w.call("load", str(ctx.loaded.path), "ort", "cpu", {"graph_optimization_level": "disable"})
        outputs = w.call("run", ctx.feeds.eval)
    except WorkerError as e:
        if e.kind == "unsupported":
            raise InputError(f"{name}: unsupported op: {e.reason}") from None
        raise InputError(
            f"{name}: the original model does not run on the inputs ({e.reason}); check "
            "--input-shape or pass real inputs with --inputs DIR"
        ) from None
    bad = non_finite_outputs(outputs)
    if bad:
        # Nothing can be verified against NaN or inf: stop before building anything.
        where = "generated" if ctx.feeds.source.startswith("generated") else "given"
        raise InputError(
            f"{name}: the original model gives non-finite values (NaN or inf) in output "
            f"{', '.join(map(repr, bad))} on the {where} inputs; pass real inputs with "
            "--inputs DIR"
        )
    ref = Reference(outputs)
    if ctx.accuracy.metric is not None:
        ref.metric = compress.metric_value(
            ctx.accuracy.metric, outputs, ctx.feeds.labels, "the original model's outputs"
        )
    return ref


def non_finite_outputs(outputs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of float outputs that hold NaN or inf in any sample."""
    bad: list[str] = []
    for sample in outputs:
        for name, value in sample.items():
            a = np.asarray(value)
            if a.dtype.kind in "fc" and name not in bad and not np.all(np.isfinite(a)):
                bad.append(name)
    return bad


@dataclass
class _Built:
    artifact: Path | None
    info: dict[str, Any]
    reason: str = ""
    status: Status = Status.PENDING


def build(
    ctx: RunContext,
    executor: Executor,
    variants: Sequence[VariantResult],
    cached: Mapping[str, dict[str, Any] | None],
) -> None:
    """Build each recipe once (in the worker of its first variant), reusing cached artifacts,
    and give every variant its recipe's artifact, or its status and reason. Recipes build
    independently: as many at once as the executor runs (one on this machine's workers)."""
    static_path = ctx.work / "static.onnx"
    if any(r.name != "original" for r in ctx.recipes):
        modelio.save_model(ctx.loaded.model, static_path)
    # Made before any build, so that a worker on another node can tell whether it sees it.
    (ctx.work / "variants").mkdir(parents=True, exist_ok=True)
    ctx.observer.stage("building variants", total=len(ctx.recipes))

    def build_recipe(r: Recipe) -> _Built:
        mine = [v for v in variants if v.recipe is r]
        hit = next((cached[v.id] for v in mine if cached.get(v.id)), None)
        return _build_one(ctx, executor, r, mine[0].id, static_path, hit)

    results = each(executor, ctx.recipes, build_recipe, lambda r, _: ctx.observer.advance(r.name))
    built = {r.name: b for r, b in zip(ctx.recipes, results, strict=True)}
    for v in variants:
        b = built[v.recipe.name]
        v.build = b.info
        if b.artifact is None:
            v.fail(b.status, b.reason)
            continue
        v.artifact = b.artifact
        v.size_bytes = modelio.size_bytes(b.artifact)


def _build_one(
    ctx: RunContext,
    executor: Executor,
    r: Recipe,
    worker_key: str,
    static_path: Path,
    hit: dict[str, Any] | None,
) -> _Built:
    t0 = time.perf_counter()
    art = ctx.work / "variants" / f"{r.name}.onnx"
    try:
        if r.name in ctx.not_buildable:
            raise WorkerError(ctx.not_buildable[r.name], "skip")
        if r.name == "original":
            modelio.copy_model(ctx.loaded.path, art)
            steps: list[dict] = []
        elif hit is not None and hit["artifact_path"] is None:
            raise WorkerError(hit.get("reason", "skipped"), "skip")
        elif hit is not None:
            art.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(hit["artifact_path"], art)
            steps = [{"name": "reused from the result cache", "modified": True}]
        elif ctx.over_budget():
            raise WorkerError(
                f"not built: the --budget-s of {ctx.options.budget_s:g} s was spent", "budget"
            )
        else:
            steps = executor.worker(worker_key).call(
                "build",
                r,
                str(static_path),
                ctx.feeds.calibration,
                str(art),
                ctx.accuracy.picklable() if r.accuracy_aware else None,
            )
        return _Built(art, {"seconds": round(time.perf_counter() - t0, 3), "steps": steps})
    except WorkerError as e:
        if e.kind == "input":  # the user's data or metric is at fault: stop here
            raise InputError(f"{r.name}: {e.reason}") from None
        info: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 3)}
        if e.kind == "skip":  # the same model and inputs give the same answer
            info["skip"] = "deterministic"
        if e.kind in ("budget", "skip", "unsupported"):
            status = Status.SKIPPED
        else:
            status = Status.REJECTED if e.kind == "constraint" else Status.FAILED
        reason = e.reason if e.kind in ("budget", "skip") else f"build: {e.reason}"
        return _Built(None, info, reason, status)
