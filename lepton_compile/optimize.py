"""``lepton-compile optimize``: ONNX file -> verified pass pipeline -> ONNX file, atomically.

The driver side of `passes.optimize`: refuses an output path it must not replace, reads and
checks the file the way the main command does (same one-line errors), fixes the input
dimensions the user gave while leaving the others dynamic, runs the pipeline with
verification (a result whose outputs cannot be compared is an error, not a silent pass),
holds the result to "never slower" on onnxruntime for the ort target (`SpeedCheck`), and
writes it, marked as ours, through `modelio.save_model`, so that a failed run leaves no
output behind.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from lepton_compile.bench.stats import Ratio, paired_ratio
from lepton_compile.errors import InputError
from lepton_compile.intake import (
    declared_dims,
    fix_input_shapes,
    infer_shapes,
    read_checked,
    user_inputs,
)
from lepton_compile.modelio import file_sha256, save_model
from lepton_compile.modelio import size_bytes as model_size_bytes
from lepton_compile.outdir import OPTIMIZED_MARK, check_output_file
from lepton_compile.passes import ort_session

log = logging.getLogger(__name__)

SCHEMA = "lepton-compile/optimize/v1"


@dataclasses.dataclass
class Loaded:
    """A read and checked model with the user's dims fixed, and its inputs as declared."""

    model: onnx.ModelProto
    notes: list[str]
    fixed: dict[str, list[int | str]]
    declared_inputs: list[dict[str, Any]]


def load(path: str | Path, input_shapes: Mapping[str, Sequence[int]] | None = None) -> Loaded:
    """Read and check through the main command's intake (InputError on bad input), and fix
    the dims the user gave, leaving the others dynamic."""
    path = Path(path)
    model = read_checked(path)
    declared = _io(model)
    notes, fixed = fix_input_shapes(model, input_shapes or {}, path, static=False)
    if fixed:
        # Value infos recorded for the old dims would contradict the new ones.
        model = infer_shapes(model)
    return Loaded(model, notes, fixed, declared)


def op_counts(model: onnx.ModelProto) -> Counter[str]:
    """Nodes per op type in the graph and its subgraphs (as the pass records count them)."""
    from lepton_compile.passes.walk import proto_graphs

    counts: Counter[str] = Counter()
    for graph in proto_graphs(model.graph):
        for node in graph.node:
            default = node.domain in ("", "ai.onnx")
            counts[node.op_type if default else f"{node.domain}::{node.op_type}"] += 1
    return counts


def _io(model: onnx.ModelProto) -> list[dict[str, Any]]:
    out = []
    for vi in user_inputs(model):
        elem = vi.type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name if elem else "?"
        out.append({"name": vi.name, "dtype": dtype, "shape": list(declared_dims(vi) or [])})
    return out


def mark_optimized(model: onnx.ModelProto, source_sha256: str) -> None:
    """Record in ``model`` (in place) that optimize wrote it, from the source of that hash.

    ``outdir.check_output_file`` lets a later run replace a file that carries this entry.
    An entry already there (the input was itself an optimize output) is replaced.
    """
    props = [p for p in model.metadata_props if p.key != OPTIMIZED_MARK]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    entry = model.metadata_props.add()
    entry.key, entry.value = OPTIMIZED_MARK, source_sha256


# --- never slower ------------------------------------------------------------------------

# Per trial, seconds per run of (candidate, input).
PairedTimer = Callable[[onnx.ModelProto], tuple[Sequence[float], Sequence[float]]]

SPEED_METHOD = (
    "onnxruntime CPUExecutionProvider, ORT_ENABLE_ALL, default threads; input and result "
    "timed in the same trials, in shuffled order, on the verification inputs; per trial the "
    "mean of a fixed number of runs; ratio = geometric mean of per-trial time ratios with a "
    "Student-t 95% CI (bench.stats.paired_ratio); slower = the whole CI above 1; a result "
    "under 0.97x whose CI still holds 1 is timed again (up to 3 rounds, judged on all trials)"
)


def _ort_session(model: onnx.ModelProto | str) -> Any:
    # ORT_ENABLE_ALL and default threads: what the user runs the model with.
    return ort_session.session(model, optimization="all")


class OrtPairedTimer:
    """Times candidates against one input model on onnxruntime, trial by trial.

    The input's session is made once; its first runs fix the number of runs per window
    (about `budget_s` for the whole measurement on a small model, at least one run per
    window on a large one, then fewer trials), so that every candidate is timed the same
    way. Each trial runs the input and the candidate one window each, in an order drawn
    from a seeded generator, so that drift on a shared machine falls on both alike.
    """

    def __init__(
        self,
        reference: onnx.ModelProto | str | Path,
        feeds: Mapping[str, np.ndarray] | Callable[[], Mapping[str, np.ndarray]],
        *,
        trials: int = 8,
        budget_s: float = 2.0,
        max_s: float = 12.0,
        warmup: int = 3,
        seed: int = 0,
    ) -> None:
        self.reference = str(reference) if isinstance(reference, Path) else reference
        self._feeds = feeds
        self.trials = trials
        self.budget_s = budget_s
        self.max_s = max_s
        self.warmup = warmup
        self._rng = random.Random(seed)
        self._session: Any = None
        self._fed: dict[str, np.ndarray] = {}
        self.runs = 0
        self.run_s = 0.0

    def _feeds_for(self, session: Any) -> dict[str, np.ndarray]:
        return {i.name: self._fed[i.name] for i in session.get_inputs()}

    def _prepare(self) -> None:
        feeds = self._feeds() if callable(self._feeds) else self._feeds
        self._fed = dict(feeds)
        self._session = _ort_session(self.reference)  # type: ignore[arg-type]
        feeds = self._feeds_for(self._session)
        for _ in range(self.warmup):
            self._session.run(None, feeds)
        # A calibration window rather than a few runs: on a loaded machine single runs
        # vary several-fold, and runs per window set from a lucky one make trials too long.
        count, t0 = 0, time.perf_counter()
        while count < 3 or time.perf_counter() - t0 < self.budget_s / 10:
            self._session.run(None, feeds)
            count += 1
        self.run_s = (time.perf_counter() - t0) / count
        if 2 * self.trials * self.run_s > self.max_s:
            # A slow model: one run per window, and no fewer than 5 trials for the t interval.
            self.trials = max(5, int(self.max_s / (2 * self.run_s)))
        window = self.budget_s / (2 * self.trials)
        self.runs = max(1, round(window / max(self.run_s, 1e-9)))

    def __call__(self, candidate: onnx.ModelProto) -> tuple[list[float], list[float]]:
        if self._session is None:
            self._prepare()
        session = _ort_session(candidate)
        both = [
            (session, self._feeds_for(session)),
            (self._session, self._feeds_for(self._session)),
        ]
        for _ in range(self.warmup):
            session.run(None, both[0][1])
        times: list[list[float]] = [[], []]
        started = time.perf_counter()
        for trial in range(self.trials):
            # Stopping on elapsed time, never on the figures, leaves the interval honest.
            if trial >= 5 and time.perf_counter() - started > self.max_s:
                log.info("speed check: stopped after %d trials (%.1f s)", trial, self.max_s)
                break
            order = [0, 1]
            self._rng.shuffle(order)
            for i in order:
                sess, feeds = both[i]
                t0 = time.perf_counter()
                for _ in range(self.runs):
                    sess.run(None, feeds)
                times[i].append((time.perf_counter() - t0) / self.runs)
        return times[0], times[1]


def _finite(x: float) -> float | None:
    return round(x, 4) if math.isfinite(x) else None


@dataclasses.dataclass
class SpeedMeasurement:
    """One paired timing of a candidate against the input."""

    ratio: Ratio  # candidate time / input time
    candidate_s: float  # mean seconds per run
    input_s: float
    seconds: float  # wall time of the measurement

    @property
    def slower(self) -> bool:
        return self.ratio.above_one

    def speed(self) -> tuple[float, float, float]:
        """Input time / candidate time, and its 95% interval (1.0 = as fast as the input)."""
        r = self.ratio
        low = 1.0 / r.high if math.isfinite(r.high) and r.high > 0 else 0.0
        high = 1.0 / r.low if r.low > 0 else math.inf
        return 1.0 / r.ratio, low, high

    def text(self) -> str:
        speed, low, high = self.speed()
        return (
            f"{speed:.2f}x the input's speed (95% CI {low:.2f}-{high:.2f}, "
            f"{self.ratio.n} paired trials)"
        )

    def to_dict(self) -> dict[str, Any]:
        speed, low, high = self.speed()
        return {
            "speed": _finite(speed),
            "speed_ci95": [_finite(low), _finite(high)],
            "time_ratio": self.ratio.to_dict(),
            "slower": self.slower,
            "result_ms": round(self.candidate_s * 1e3, 4),
            "input_ms": round(self.input_s * 1e3, 4),
            "seconds": round(self.seconds, 3),
        }


class SpeedCheck:
    """A judge for `passes.optimize(extra_checks=...)`: is the candidate slower than the input?

    "Slower" is slower beyond noise: the 95% interval of the paired time ratio lies above 1.
    The verdict names the speed, so that a pass dropped for it says by how much. Every
    measurement is kept (the bisection's too); `final(model)` is the one of the model that
    was handed back. A timing that fails is not a verdict: the candidate passes and the
    failure is recorded.

    A short measurement on a loaded machine cannot tell 0.85x from 1.0x. When the first
    round is inconclusive and its point estimate is under `suspect`, up to `extra_rounds`
    more rounds are timed and the verdict is on all trials together: a second look only
    where the first one leans towards slower, so the cost stays with suspect candidates and
    the chance of a false "slower" stays within twice the 2.5% of one look.
    """

    def __init__(
        self,
        timer: PairedTimer,
        method: str = SPEED_METHOD,
        *,
        suspect: float = 0.97,
        extra_rounds: int = 2,
    ) -> None:
        self.timer = timer
        self.method = method
        self.suspect = suspect
        self.extra_rounds = extra_rounds
        self.measurements: list[SpeedMeasurement] = []
        self.errors: list[str] = []
        self._last: tuple[onnx.ModelProto, SpeedMeasurement] | None = None

    def __call__(self, candidate: onnx.ModelProto) -> str | None:
        started = time.perf_counter()
        cand: list[float] = []
        base: list[float] = []
        try:
            for round_ in range(1 + self.extra_rounds):
                more_cand, more_base = self.timer(candidate)
                cand += more_cand
                base += more_base
                ratio = paired_ratio(cand, base)
                if ratio.above_one or 1.0 / ratio.ratio >= self.suspect:
                    break
                if round_ < self.extra_rounds:
                    log.info("speed check: %.2fx, inconclusive: timing again", 1 / ratio.ratio)
        except Exception as e:  # a timing problem says nothing about the passes
            from lepton_compile.passes.errors import one_line

            self.errors.append(one_line(e))
            log.warning("speed check: timing failed: %s", one_line(e))
            return None
        m = SpeedMeasurement(
            ratio,
            candidate_s=float(np.mean(cand)),
            input_s=float(np.mean(base)),
            seconds=time.perf_counter() - started,
        )
        self.measurements.append(m)
        self._last = (candidate, m)
        log.info("speed check: %s", m.text())
        return f"slower: {m.text()}" if m.slower else None

    def final(self, model: onnx.ModelProto) -> SpeedMeasurement | None:
        """The measurement of `model` if it was the last one judged, else None."""
        if self._last is not None and self._last[0] is model:
            return self._last[1]
        return None

    def to_dict(self, model: onnx.ModelProto) -> dict[str, Any]:
        final = self.final(model)
        timer = self.timer
        out: dict[str, Any] = {
            "status": "passed" if final is not None else "not measured",
            "method": self.method,
            "result": final.to_dict() if final is not None else None,
            "trials": final.ratio.n if final is not None else None,
            "runs_per_trial": getattr(timer, "runs", None),
            "measurements": len(self.measurements),
            "seconds": round(sum(m.seconds for m in self.measurements), 3),
            "errors": list(self.errors),
        }
        if final is None and not self.errors:
            out["reason"] = "the result handed back is the input itself"
        return out


@dataclasses.dataclass
class OptimizeRun:
    """One `optimize_file` run: where from and to, and what the pipeline did."""

    source: Path
    output: Path | None
    target: str
    pipeline: str | None
    requested: list[str]
    result: Any  # passes.OptimizeResult
    ops_before: Counter[str]
    ops_after: Counter[str]
    input_shapes: dict[str, list[int | str]]
    notes: list[str]
    seconds: float
    source_sha256: str = ""
    source_inputs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    # The speed check's record (SpeedCheck.to_dict), or why it did not run.
    speed: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Why the --input-shape dims were not applied (they made the model slower), if so.
    shapes_dropped: str | None = None

    @property
    def verification(self) -> Any:
        return self.result.verification

    def to_dict(self) -> dict[str, Any]:
        model = self.result.model
        output = None
        if self.output is not None:
            written = self.output.exists()
            output = {
                "path": str(self.output),
                "sha256": file_sha256(self.output) if written else None,
                "size_bytes": model_size_bytes(self.output) if written else None,
                "inputs": _io(model),
            }
        verification = self.verification.to_dict() if self.verification else None
        return {
            "schema": SCHEMA,
            "model": {
                "path": str(self.source),
                "sha256": self.source_sha256,
                "size_bytes": self.source.stat().st_size,
                "inputs": self.source_inputs,
            },
            "output": output,
            "target": self.target,
            "pipeline": self.pipeline,
            "requested_passes": self.requested,
            "passes": list(self.result.passes),
            "input_shapes": self.input_shapes,
            "input_shapes_dropped": self.shapes_dropped,
            "notes": self.notes,
            "nodes": {
                "before": sum(self.ops_before.values()),
                "after": sum(self.ops_after.values()),
            },
            "op_counts": {
                "before": dict(sorted(self.ops_before.items())),
                "after": dict(sorted(self.ops_after.items())),
            },
            "records": [r.to_dict() for r in self.result.records],
            "verification": verification,
            "speed_check": self.speed,
            "seconds": round(self.seconds, 4),
        }


def _unverifiable(source: Path, reason: str, loaded: Loaded) -> InputError:
    hint = ""
    dynamic = [vi.name for vi in user_inputs(loaded.model) if not _is_static(vi)]
    if dynamic and ("generated inputs" in reason or "no inputs can be generated" in reason):
        hint = f"; give their shapes with --verify-shape ({', '.join(dynamic[:3])} are dynamic)"
    return InputError(
        f"{source}: the result cannot be verified ({reason}){hint}; nothing written "
        "(--no-verify writes it unverified)"
    )


def _is_static(vi: onnx.ValueInfoProto) -> bool:
    dims = declared_dims(vi)
    return dims is not None and all(isinstance(d, int) and d >= 0 for d in dims)


def optimize_file(
    model_path: str | Path,
    output: str | Path | None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    target: str = "ort",
    pipeline: str | None = "fused",
    passes: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    verify: bool = True,
    verify_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int = 0,
    instruments: Iterable[Any] = (),
    force: bool = False,
    speed_check: bool = True,
    timer: PairedTimer | None = None,
) -> OptimizeRun:
    """Optimize the ONNX file at `model_path` and write it to `output` (None: do not write).

    With `verify`, outputs that cannot be compared (inputs that cannot be generated, an
    original onnxruntime cannot run, a model over 2 GiB) make it an InputError: nothing is
    written. With `speed_check` (target ort, outputs compared), the result is timed against
    the file as given (`timer`, default `OrtPairedTimer`); a pass that makes it slower beyond
    noise is found by the verification's prefix search and dropped, and when the model is
    slower before any pass because of the `input_shapes` fixed, it is optimized again with
    its own dims (verified and timed at those shapes).

    Raises InputError (exit code 2) for a bad file, unknown pass/pipeline/target names,
    bad shapes, a result that cannot be verified, or an output path that must not be
    replaced (`outdir.check_output_file`; `force` allows any file but the input itself).
    The input file is never written.
    """
    from lepton_compile.passes import optimize, resolve_pipeline
    from lepton_compile.passes.verify import UnverifiableError, make_inputs

    started = time.perf_counter()
    source = Path(model_path)
    out = Path(output) if output is not None else None
    passes = list(passes) if passes is not None else None
    skip = list(skip)
    try:
        requested = resolve_pipeline(pipeline, target, passes, skip)
    except ValueError as e:
        raise InputError(str(e)) from None
    if out is not None:
        check_output_file(out, source, force)
    loaded = load(source, input_shapes)
    sha = file_sha256(source)

    speed: SpeedCheck | None = None
    speed_record: dict[str, Any]
    if not speed_check:
        speed_record = {"status": "off", "reason": "--no-speed-check"}
    elif not verify:
        speed_record = {"status": "off", "reason": "--no-verify (outputs not compared)"}
    elif target != "ort":
        speed_record = {
            "status": "off",
            "reason": f"target {target}: runs on its own runtime, not onnxruntime",
        }
    else:
        fixed_model = loaded.model
        if timer is None:
            # Against the file as given, on the verification inputs (made like the
            # verification's own, from the model with the user's dims fixed).
            timer = OrtPairedTimer(
                str(source), lambda: make_inputs(fixed_model, seed, verify_shapes), seed=seed
            )
        speed = SpeedCheck(timer)
        speed_record = {}

    def run(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]] | None) -> Any:
        try:
            return optimize(
                model,
                pipeline=pipeline,
                target=target,
                passes=passes,
                skip=skip,
                verify=verify,
                verify_seed=seed,
                verify_shapes=shapes,
                instruments=instruments,
                require_outputs=verify,
                extra_checks=[speed] if speed is not None else (),
            )
        except UnverifiableError as e:
            raise _unverifiable(source, e.reason, loaded) from None
        except ValueError as e:  # verification shapes naming unknown inputs, bad options
            raise InputError(str(e)) from None

    model = loaded.model
    result = run(model, verify_shapes)
    shapes_dropped = None
    notes = list(loaded.notes)
    fixed = loaded.fixed
    v = result.verification
    if speed is not None and v is not None and v.unchanged and loaded.fixed:
        # Slower before any pass: the fixed dims are to blame (onnxruntime's own rewrites
        # differ on static shapes). Optimize the model with its own dims, verified and timed
        # at the shapes the user fixed.
        shapes_dropped = v.unchanged
        log.warning("--input-shape not applied: %s", v.unchanged)
        loaded = load(source, None)
        model = loaded.model
        at = {**{k: list(d) for k, d in (input_shapes or {}).items()}, **(verify_shapes or {})}
        result = run(model, at)
        why = v.unchanged.removesuffix(" even with no pass applied")
        notes = [
            f"--input-shape not applied: with those dims fixed, before any pass, the model "
            f"was {why}; the output keeps the input's dims",
            *loaded.notes,
        ]
        fixed = {}
    if speed is not None:
        speed_record = speed.to_dict(result.model)
    v = result.verification
    if out is not None and not (v and v.status == "failed"):
        mark_optimized(result.model, sha)
        # Again just before the replace: the path may have changed while the passes ran.
        check_output_file(out, source, force)
        try:
            save_model(result.model, out)
        except OSError as e:
            raise InputError(f"{out}: cannot write: {e.strerror or e}") from None
    return OptimizeRun(
        source=source,
        output=out,
        target=target,
        pipeline=None if passes is not None else pipeline,
        requested=requested,
        result=result,
        ops_before=op_counts(model),
        ops_after=op_counts(result.model),
        input_shapes=fixed,
        notes=notes,
        seconds=time.perf_counter() - started,
        source_sha256=sha,
        source_inputs=loaded.declared_inputs,
        speed=speed_record,
        shapes_dropped=shapes_dropped,
    )
