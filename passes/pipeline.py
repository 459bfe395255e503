"""optimize(): model + pipeline name -> optimized copy of the model + per-pass records."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping
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

logger = logging.getLogger(__name__)

# onnx.checker cannot take an in-memory model past protobuf's 2 GiB limit.
_PROTO_LIMIT = 2**31 - 1


@dataclasses.dataclass
class OptimizeResult:
    """The optimized model (a new ModelProto) and one record per pass run, in order."""

    model: onnx.ModelProto
    records: list[PassRecord]
    passes: list[str]

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
) -> OptimizeResult:
    """Run a pipeline (or an explicit pass list) on a copy of `model`.

    Args:
        model: an onnx.ModelProto or onnx_ir.Model; it is not modified.
        pipeline: name of a pipeline in PIPELINES; ignored when `passes` is given.
        target: "ort" (standard ONNX ops) or "lepton".
        passes: explicit ordered pass names, overriding the pipeline.
        skip: pass names to leave out.
        options: constructor options per pass name, e.g. {"fold-constants": {...}}.
        instruments: extra before/after hooks; the timing records are always taken.
        check: run onnx.checker on the result (skipped past 2 GiB).

    Raises:
        ValueError: an unknown pass, pipeline or target name.
    """
    names = resolve_pipeline(pipeline, target, passes, skip)
    timing = TimingInstrument()
    runner = build_pipeline(names, options, [timing, *instruments])

    # The IR wraps tensors and attributes without copying them, and passes rename
    # tensors in place: work on a real copy so the caller's model stays as it was.
    if isinstance(model, ir.Model):
        work = model.clone(deep_copy=True)
    elif isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        work = ir.serde.deserialize_model(copy)
    else:
        raise TypeError(f"expected onnx.ModelProto or onnx_ir.Model, got {type(model).__name__}")

    logger.info("optimize: target=%s passes=%s", target, ", ".join(names))
    runner(work)
    proto = ir.serde.serialize_model(work)
    if check:
        if proto.ByteSize() < _PROTO_LIMIT:
            onnx.checker.check_model(proto)
        else:
            logger.warning("model over 2 GiB: onnx.checker skipped")
    return OptimizeResult(model=proto, records=timing.records, passes=names)
