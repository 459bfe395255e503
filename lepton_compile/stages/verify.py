"""Stage verify: each built variant's outputs against the original's, on the eval inputs."""

from __future__ import annotations

from collections.abc import Sequence

from lepton_compile import accuracy, compress
from lepton_compile.errors import InputError
from lepton_compile.executor import Executor, each
from lepton_compile.stages.build import Reference
from lepton_compile.stages.context import RunContext
from lepton_compile.variant import Status, VariantResult


def verify(
    ctx: RunContext, executor: Executor, variants: Sequence[VariantResult], ref: Reference
) -> None:
    """Load and run every pending variant; it becomes ok, rejected, failed or skipped.

    The first variant is the original on the primary device: when it fails on its own backend
    the input is at fault, and that is one InputError (said once, not also as a warning).
    """
    baseline = variants[0]
    opts, obs = ctx.options, ctx.observer
    obs.stage("verifying", total=len(variants))

    def check(v: VariantResult) -> tuple[Status, str] | None:
        if v.status != Status.PENDING:
            return None
        if ctx.over_budget() and v is not baseline:
            why = f"not verified: the --budget-s of {opts.budget_s:g} s was spent"
            return (Status.SKIPPED, why)
        return _judge(ctx, executor, v, ref)

    def conclude(v: VariantResult, why: tuple[Status, str] | None) -> None:
        obs.advance(v.id)
        if v.status != Status.PENDING:
            return
        if why is None:
            v.status = Status.OK
        elif v is baseline:
            raise InputError(
                f"{ctx.loaded.path.name}: the original model fails on the default backend: {why[1]}"
            )
        else:
            v.fail(*why)

    # The baseline first: when it fails, the input is at fault and nothing else need run.
    conclude(baseline, check(baseline))
    each(executor, list(variants[1:]), check, conclude)


def _judge(
    ctx: RunContext, executor: Executor, v: VariantResult, ref: Reference
) -> tuple[Status, str] | None:
    """None when ``v`` passes, else its status and the reason."""
    from lepton_compile.worker import WorkerError

    assert v.artifact is not None
    w = executor.worker(v.id)
    try:
        options = {**ctx.options.backend_options(v.backend), **v.options}
        v.session = w.call("load", str(v.artifact), v.backend, v.device, options)
        outs = w.call("run", ctx.feeds.eval)
    except WorkerError as e:
        return (Status.SKIPPED if e.kind == "unsupported" else Status.FAILED, f"run: {e.reason}")
    drop = ctx.options.max_accuracy_drop
    v.fidelity = accuracy.compare(ref.outputs, outs, ctx.loaded.score_outputs, drop)
    metric = ctx.accuracy.metric
    if metric is not None and ref.metric is not None:
        try:
            value = compress.metric_value(metric, outs, ctx.feeds.labels, f"the outputs of {v.id}")
        except InputError as e:
            return (Status.FAILED, str(e))
        accuracy.apply_metric(v.fidelity, ref.metric, value, drop)
    return None if v.fidelity.passed else (Status.REJECTED, v.fidelity.reason)
