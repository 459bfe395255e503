"""A run context for stage tests: a small model, generated inputs, in-process workers."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from lepton_compile import stages
from lepton_compile.executor import LocalExecutor
from lepton_compile.options import CompileOptions


def context(model: Path, **options: Any) -> stages.RunContext:
    defaults: dict[str, Any] = dict(
        quick=True, isolate=False, cache=False, eval_samples=2, calibration_samples=4
    )
    opts = CompileOptions(**{**defaults, **options})
    opts.validate()
    work = Path(tempfile.mkdtemp(prefix="lepton-stage-"))
    return stages.prepare(model, opts, stages.Observer(), work)


def executor(ctx: stages.RunContext) -> LocalExecutor:
    o = ctx.options
    return LocalExecutor(o.isolate, o.variant_timeout_s, ctx.memory_limit)
