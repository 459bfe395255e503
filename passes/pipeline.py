"""optimize(): model + pipeline name -> optimized, verified copy of the model + per-pass records.

Verification (on by default) compares the result with the original on onnxruntime; when
they differ, a search over pipeline prefixes finds the first pass whose output differs,
that pass is dropped, and the pipeline runs again without it, until the result holds.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import onnx
import onnx_ir as ir

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
    VerificationReport,
    one_line,
)

logger = logging.getLogger(__name__)

# onnx.checker cannot take an in-memory model past protobuf's 2 GiB limit.
_PROTO_LIMIT = 2**31 - 1


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
    reference: Reference,
    outputs: bool,
    problem: str,
) -> tuple[int | None, str]:
    """Index of the first pass whose prefix fails, and the failure; None if no pass is to blame.

    Binary search for k with prefix[:k-1] verified and prefix[:k] not: the model after
    the last verified prefix is kept, so the passes run about once in all, plus one
    verification per halving. Prefix 0 (the model through the IR and back) is checked
    first, so that a pass is never blamed for what the round trip does.
    """
    start = _attempt(original, [], options)
    failure = start.problem or reference.check(start.model, outputs)  # type: ignore[arg-type]
    if failure:
        return None, failure
    good, lo, hi, reason = start.model, 0, len(names), problem
    while hi - lo > 1:
        mid = (lo + hi) // 2
        attempt = _attempt(good, names[lo:mid], options)  # type: ignore[arg-type]
        if attempt.raised is not None:
            hi, reason = lo + attempt.raised + 1, attempt.problem or "raised"
            continue
        failure = attempt.problem or reference.check(attempt.model, outputs)  # type: ignore[arg-type]
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

    Raises:
        ValueError: an unknown pass, pipeline or target name.
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
            if proto.ByteSize() < _PROTO_LIMIT:
                onnx.checker.check_model(proto)
            else:
                logger.warning("model over 2 GiB: onnx.checker skipped")
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
        report.status, report.reason = "skipped", reference.skipped
        logger.info("verification: outputs not compared: %s", reference.skipped)
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
            if problem is None and outputs:
                why = reference.unrunnable(attempt.model)  # type: ignore[arg-type]
                if why:
                    outputs = False
                    report.status, report.reason = "skipped", why
            if problem is None:
                problem = reference.check(attempt.model, outputs)  # type: ignore[arg-type]
            if problem is None:
                verify_seconds += time.perf_counter() - started
                break
            culprit, reason = _find_culprit(original, active, options, reference, outputs, problem)
            if culprit is None:
                report.status = "failed"
                report.reason = f"the model differs even with no pass applied ({reason})"
                report.seconds = verify_seconds + time.perf_counter() - started
                logger.warning("verification: %s; returning the model unchanged", report.reason)
                return OptimizeResult(model=original, records=[], passes=[], verification=report)
        verify_seconds += time.perf_counter() - started
        name = active.pop(culprit)
        report.dropped.append(DroppedPass(name, reason))
        logger.warning("verification: pass %r dropped: %s", name, reason)
    report.seconds = verify_seconds
    logger.info("verification: %s (%.2f s)", report.summary(), report.seconds)
    assert attempt.model is not None
    return OptimizeResult(
        model=attempt.model, records=attempt.records, passes=active, verification=report
    )
