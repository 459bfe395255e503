"""optimize(): model + pipeline name -> optimized, verified copy of the model + per-pass records.

Verification (on by default) compares the result with the original on onnxruntime; when
they differ, a search over pipeline prefixes finds the first pass whose output differs,
that pass is dropped, and the pipeline runs again without it, until the result holds.
Extra checks (the driver's speed check) go through the same search once the outputs hold.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir

from lepton_compile.passes.errors import one_line
from lepton_compile.passes.instruments import (
    InstrumentedPipeline,
    PassInstrument,
    PassRecord,
    TimingInstrument,
)
from lepton_compile.passes.registry import get_pass, resolve_pipeline
from lepton_compile.passes.verify import (
    DroppedPass,
    Reference,
    Tolerance,
    UnverifiableError,
    VerificationReport,
    check_model,
)

logger = logging.getLogger(__name__)

# Says why a candidate model is not acceptable, or None when it is.
Judge = Callable[[onnx.ModelProto], "str | None"]


@dataclasses.dataclass
class OptimizeResult:
    """The optimized model (a new ModelProto), one record per pass run, in order, the
    passes that ran (the requested ones less any that verification dropped) and what
    verification found."""

    model: onnx.ModelProto
    records: list[PassRecord]
    passes: list[str]
    # None when optimize ran with verify=False.
    verification: VerificationReport | None = None

    @property
    def dropped(self) -> list[str]:
        """Passes that verification removed because they changed the model's outputs."""
        return [d.name for d in self.verification.dropped] if self.verification else []

    @property
    def nodes_before(self) -> int | None:
        return self.records[0].nodes_before if self.records else None

    @property
    def nodes_after(self) -> int | None:
        return self.records[-1].nodes_after if self.records else None


def build_pipeline(
    names: Iterable[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    instruments: Iterable[PassInstrument] = (),
) -> InstrumentedPipeline:
    """Fresh pass instances for `names` (with per-pass constructor `options`)."""
    names = list(names)
    options = dict(options or {})
    for name in options:
        get_pass(name)
    built = [(name, get_pass(name).build(**options.get(name, {}))) for name in names]
    return InstrumentedPipeline(built, list(instruments))


def _copy_proto(model: onnx.ModelProto | ir.Model) -> onnx.ModelProto:
    # The IR wraps tensors and attributes without copying them, and passes rename
    # tensors in place: every run works on a real copy so the caller's model stays as it was.
    if isinstance(model, ir.Model):
        return ir.serde.serialize_model(model.clone(deep_copy=True))
    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    raise TypeError(f"expected onnx.ModelProto or onnx_ir.Model, got {type(model).__name__}")


@dataclasses.dataclass
class _Attempt:
    model: onnx.ModelProto | None
    records: list[PassRecord]
    problem: str | None = None
    # Index (in the names run) of the pass that raised, if one did.
    raised: int | None = None


def _attempt(
    base: onnx.ModelProto,
    names: list[str],
    options: Mapping[str, Mapping[str, Any]] | None,
    instruments: Iterable[PassInstrument] = (),
    log_level: int = logging.DEBUG,
) -> _Attempt:
    """Run `names` on a copy of `base`; a pass that raises is reported, not propagated."""
    timing = TimingInstrument(log_level=log_level)
    runner = build_pipeline(names, options, [timing, *instruments])
    work = ir.serde.deserialize_model(_copy_proto(base))
    try:
        runner(work)
    except ir.passes.PassError as e:
        index = len(timing.records)
        return _Attempt(None, timing.records, f"raised {one_line(e.__cause__ or e)}", index)
    try:
        proto = ir.serde.serialize_model(work)
    except Exception as e:
        return _Attempt(None, timing.records, f"the result cannot be serialized: {one_line(e)}")
    return _Attempt(proto, timing.records)


def _find_culprit(
    original: onnx.ModelProto,
    names: list[str],
    options: Mapping[str, Mapping[str, Any]] | None,
    judge: Judge,
    problem: str,
) -> tuple[int | None, str]:
    """Index of the first pass whose prefix fails `judge`, and the failure; None if no pass
    is to blame.

    Binary search for k with prefix[:k-1] accepted and prefix[:k] not: the model after
    the last accepted prefix is kept, so the passes run about once in all, plus one
    judgement per halving. Prefix 0 (the model through the IR and back) is judged first,
    so that a pass is never blamed for what the round trip does.
    """
    if not names:
        return None, problem
    start = _attempt(original, [], options)
    failure = start.problem or judge(start.model)  # type: ignore[arg-type]
    if failure:
        return None, failure
    good, lo, hi, reason = start.model, 0, len(names), problem
    while hi - lo > 1:
        mid = (lo + hi) // 2
        attempt = _attempt(good, names[lo:mid], options)  # type: ignore[arg-type]
        if attempt.raised is not None:
            hi, reason = lo + attempt.raised + 1, attempt.problem or "raised"
            continue
        failure = attempt.problem or judge(attempt.model)  # type: ignore[arg-type]
        if failure:
            hi, reason = mid, failure
        else:
            lo, good = mid, attempt.model
    return hi - 1, reason


def optimize(
    model: onnx.ModelProto | ir.Model,
    pipeline: str | None = "fused",
    target: str = "ort",
    passes: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    *,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    instruments: Iterable[PassInstrument] = (),
    check: bool = True,
    verify: bool = True,
    verify_seed: int = 0,
    verify_shapes: Mapping[str, Sequence[int]] | None = None,
    tolerances: Mapping[str, Tolerance] | None = None,
    require_outputs: bool = False,
    extra_checks: Sequence[Judge] = (),
) -> OptimizeResult:
    """Run a pipeline (or an explicit pass list) on a copy of `model`, and verify the result.

    Args:
        model: an onnx.ModelProto or onnx_ir.Model; it is not modified.
        pipeline: name of a pipeline in PIPELINES; ignored when `passes` is given.
        target: "ort" (standard ONNX ops) or "lepton".
        passes: explicit ordered pass names, overriding the pipeline.
        skip: pass names to leave out.
        options: constructor options per pass name, e.g. {"fold-constants": {...}}.
        instruments: extra before/after hooks; the timing records are always taken. With
            verification they see every full pipeline attempt (not the bisection runs).
        check: hold the result to onnx.checker (skipped past 2 GiB).
        verify: run the original and the result on onnxruntime (CPU, ORT optimizations
            off) on seeded inputs and compare every output (per-dtype tolerances, see
            `verify.DEFAULT_TOLERANCES`). A pass that raises, or whose output fails
            onnx.checker, ORT or the comparison, is found by a prefix search, dropped with
            a warning, and the rest runs again; `result.verification` says what happened.
            When the original cannot run on ORT, only onnx.checker is applied and the
            verification status is "skipped" with the reason.
        verify_seed: seed of the generated inputs.
        verify_shapes: concrete input shapes for verification; symbolic dimensions are 1
            otherwise (the optimized model keeps them symbolic).
        tolerances: per-dtype overrides of `verify.DEFAULT_TOLERANCES`.
        require_outputs: outputs must be compared: raise UnverifiableError (before any
            pass runs) when the original cannot be run on generated inputs, and treat a
            result that ORT cannot run as a failure of the pass that made it so.
        extra_checks: judges applied once the outputs hold (`judge(candidate)` says why
            the candidate is not acceptable, or None). A failure is traced to a pass by
            the same prefix search and that pass is dropped; when the model fails a judge
            even before any pass, the original is returned unchanged and
            `verification.unchanged` says why. Not applied when outputs were not compared.

    Raises:
        ValueError: an unknown pass, pipeline or target name.
        UnverifiableError: `require_outputs` and the outputs cannot be compared.
        onnx_ir.passes.PassError: a pass failed (only with verify=False).
        onnx.checker.ValidationError: the result is invalid (only with verify=False).
    """
    names = resolve_pipeline(pipeline, target, passes, skip)
    instruments = list(instruments)
    build_pipeline(names, options)  # unknown names or options fail before any work
    original = _copy_proto(model)
    logger.info("optimize: target=%s passes=%s", target, ", ".join(names))

    if not verify:
        timing = TimingInstrument()
        runner = build_pipeline(names, options, [timing, *instruments])
        work = ir.serde.deserialize_model(original)
        runner(work)
        proto = ir.serde.serialize_model(work)
        if check:
            check_model(proto)
        return OptimizeResult(model=proto, records=timing.records, passes=names)

    started = time.perf_counter()
    reference = Reference.prepare(
        original, seed=verify_seed, shapes=verify_shapes, tolerances=tolerances, checker=check
    )
    report = VerificationReport(
        status="passed",
        seed=verify_seed,
        input_shapes=reference.shapes,
        tolerances=reference.tolerances,
        checker=reference.checker,
        notes=reference.notes,
    )
    outputs = reference.skipped is None
    if not outputs:
        if require_outputs:
            raise UnverifiableError(reference.skipped)  # type: ignore[arg-type]
        report.status, report.reason = "skipped", reference.skipped
        logger.info("verification: outputs not compared: %s", reference.skipped)

    def numerics(candidate: onnx.ModelProto) -> str | None:
        if outputs and require_outputs:
            why = reference.unrunnable(candidate)
            if why:
                return why
        return reference.check(candidate, outputs)

    # Time spent in the extra checks is theirs to report, not the verification's.
    extra_seconds = [0.0]

    def timed(extra: Judge) -> Judge:
        def judge(candidate: onnx.ModelProto) -> str | None:
            t0 = time.perf_counter()
            try:
                return extra(candidate)
            finally:
                extra_seconds[0] += time.perf_counter() - t0

        return judge

    extras = [timed(extra) for extra in extra_checks]
    active = list(names)
    verify_seconds = time.perf_counter() - started
    while True:
        attempt = _attempt(original, active, options, instruments, logging.INFO)
        started = time.perf_counter()
        culprit: int | None
        if attempt.raised is not None:
            culprit, reason = attempt.raised, attempt.problem or "raised"
        else:
            problem = attempt.problem
            if problem is None and outputs and not require_outputs:
                why = reference.unrunnable(attempt.model)  # type: ignore[arg-type]
                if why:
                    outputs = False
                    report.status, report.reason = "skipped", why
            if problem is None:
                problem = numerics(attempt.model)  # type: ignore[arg-type]
            judge: Judge = numerics
            if problem is None and outputs and active:
                for extra in extras:
                    problem = extra(attempt.model)  # type: ignore[arg-type]
                    if problem is not None:
                        judge = extra
                        break
            if problem is None:
                verify_seconds += time.perf_counter() - started
                break
            culprit, reason = _find_culprit(original, active, options, judge, problem)
            if culprit is None and judge is not numerics:
                report.unchanged = f"{reason} even with no pass applied"
                report.seconds = verify_seconds + time.perf_counter() - started - extra_seconds[0]
                logger.warning("verification: %s; returning the model unchanged", report.unchanged)
                return OptimizeResult(model=original, records=[], passes=[], verification=report)
            if culprit is None:
                report.status = "failed"
                report.reason = f"the model differs even with no pass applied ({reason})"
                report.seconds = verify_seconds + time.perf_counter() - started - extra_seconds[0]
                logger.warning("verification: %s; returning the model unchanged", report.reason)
                return OptimizeResult(model=original, records=[], passes=[], verification=report)
        verify_seconds += time.perf_counter() - started
        name = active.pop(culprit)
        report.dropped.append(DroppedPass(name, reason))
        logger.warning("verification: pass %r dropped: %s", name, reason)
    report.seconds = verify_seconds - extra_seconds[0]
    logger.info("verification: %s (%.2f s)", report.summary(), report.seconds)
    assert attempt.model is not None
    return OptimizeResult(
        model=attempt.model, records=attempt.records, passes=active, verification=report
    )
