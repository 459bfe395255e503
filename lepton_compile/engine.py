"""The main job: intake -> recipes -> build -> verify -> measure -> select -> result."""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from lepton_compile import accuracy, compress, inputs, intake, search
from lepton_compile import recipes as recipe_lib
from lepton_compile.bench.energy import get_meter
from lepton_compile.bench.protocol import Measurement, Protocol, measure
from lepton_compile.bench.stats import Stats
from lepton_compile.cached import VariantCache, inputs_fingerprint
from lepton_compile.errors import InputError
from lepton_compile.runtime import default_backends, get_backend
from lepton_compile.worker import (
    DEFAULT_TIMEOUT_S,
    VariantWorker,
    WorkerError,
    WorkerRunner,
    default_memory_limit,
)

log = logging.getLogger(__name__)

# Models above this size are saved with external data (protobuf's 2 GB message limit).
_EXTERNAL_DATA_BYTES = 1_800_000_000


class Observer:
    """Progress hooks; the CLI draws them with rich, the API logs them."""

    def stage(self, name: str, total: int | None = None) -> None:
        log.info("%s", name)

    def advance(self, detail: str = "") -> None:
        if detail:
            log.debug("  %s", detail)

    def done(self) -> None:
        pass


@dataclass
class VariantResult:
    """One candidate: its recipe on one backend and device, and everything learned about it."""

    id: str
    recipe: recipe_lib.Recipe
    backend: str
    device: str
    status: str = "pending"  # ok | rejected | failed | skipped
    reason: str = ""
    artifact: Path | None = None
    size_bytes: int = 0
    build: dict[str, Any] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)
    fidelity: accuracy.Fidelity | None = None
    measurement: Measurement | None = None
    pareto: bool = False
    cache: dict[str, Any] = field(default_factory=dict)
    roofline: dict[str, Any] = field(default_factory=dict)

    @property
    def precision(self) -> str:
        return self.recipe.precision

    # The search.Candidate protocol.
    @property
    def latency(self) -> Stats | None:
        return self.measurement.latency_ms if self.measurement else None

    @property
    def energy(self) -> Stats | None:
        return self.measurement.energy_j if self.measurement else None

    @property
    def drop(self) -> float:
        return self.fidelity.drop if self.fidelity else 1.0

    @property
    def size(self) -> int:
        return self.size_bytes

    def fail(self, status: str, reason: str) -> None:
        self.status = status
        self.reason = reason
        log.warning("variant %s %s: %s", self.id, status, reason)


def save_model(model: onnx.ModelProto, path: Path) -> None:
    """Write a model atomically (temp name + rename); large ones with external data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if model.ByteSize() > _EXTERNAL_DATA_BYTES:
        onnx.save(model, str(tmp), save_as_external_data=True, location=f"{path.name}.data")
    else:
        onnx.save(model, str(tmp))
    os.replace(tmp, path)


def _copy_original(src: Path, dst: Path, uses_external: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if uses_external:
        save_model(onnx.load(str(src), load_external_data=True), dst)
    else:
        shutil.copyfile(src, dst)


def _uses_external_data(path: Path) -> bool:
    m = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)


def _one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    text = lines[-1] if lines else type(e).__name__
    return f"{type(e).__name__}: {text[:300]}"


@dataclass
class CompileResult:
    """What ``compile`` returns: the variants, the pick, the frontier and the report."""

    model: intake.LoadedModel
    variants: list[VariantResult]
    baseline: VariantResult
    best: VariantResult
    pick_reason: str
    objective: str
    report: dict[str, Any]
    workdir: Path
    _tmp: tempfile.TemporaryDirectory | None = None

    @property
    def pareto(self) -> list[VariantResult]:
        return [v for v in self.variants if v.pareto]

    def save(self, outdir: str | Path) -> Path:
        """Write best.onnx, variants/, report.json/.md/.html into ``outdir``, atomically."""
        from lepton_compile import report as report_mod

        out = Path(outdir)
        parent = out.resolve().parent
        parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=parent))
        try:
            (stage / "variants").mkdir()
            for v in self.variants:
                if v.artifact and v.artifact.exists():
                    dst = stage / "variants" / v.artifact.name
                    if not dst.exists():
                        shutil.copy2(v.artifact, dst)
                        data = v.artifact.with_name(v.artifact.name + ".data")
                        if data.exists():
                            shutil.copy2(data, stage / "variants" / data.name)
            assert self.best.artifact is not None
            shutil.copy2(self.best.artifact, stage / "best.onnx")
            best_data = self.best.artifact.with_name(self.best.artifact.name + ".data")
            if best_data.exists():
                # External data is referenced by file name, so best.onnx keeps the variant's name.
                shutil.copy2(best_data, stage / best_data.name)
            report_mod.write_all(self.report, stage)
            if out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=parent))
                os.replace(out, old / out.name)
                os.replace(stage, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(stage, out)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        return out


def _backend_devices(name: str) -> list[str]:
    try:
        return get_backend(name).devices()
    except ValueError as e:
        raise InputError(f"--backend: {e}") from None


def _pick_device(backend_devices: list[str], device: str) -> list[str]:
    if device == "auto":
        return ["cuda"] if "cuda" in backend_devices else ["cpu"]
    if device not in backend_devices:
        return []
    return [device]


def compile(
    model: str | Path,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    objective: str = "energy",
    recipes: Sequence[str | recipe_lib.Recipe] | None = None,
    backends: Sequence[str] | None = None,
    device: str = "auto",
    inputs_dir: str | Path | None = None,
    max_accuracy_drop: float = 0.01,
    max_latency_ms: float | None = None,
    meter: str = "auto",
    cpu_watts: float | None = None,
    protocol: Protocol | None = None,
    quick: bool = False,
    window_s: float | None = None,
    calibration_samples: int = 32,
    eval_samples: int = 16,
    seed: int = 0,
    isolate: bool = True,
    variant_timeout_s: float = DEFAULT_TIMEOUT_S,
    memory_limit_bytes: int | None = None,
    budget_s: float | None = None,
    cache: bool = True,
    cache_path: str | Path | None = None,
    observer: Observer | None = None,
    metric: compress.Metric | None = None,
    search_budget_s: float = compress.DEFAULT_SEARCH_BUDGET_S,
) -> CompileResult:
    """Build, verify and measure variants of ``model``; pick the best for ``objective``.

    Each variant runs in its own worker process (``isolate=False`` keeps them in this
    process), with ``variant_timeout_s`` per step and ``memory_limit_bytes`` of address space
    (default: 80% of physical memory). ``budget_s`` bounds the whole search: what did not fit
    is reported as skipped. ``cache`` reuses earlier results of the same model, inputs,
    recipes, device and protocol (``lepton_compile.cached``). Raises ``InputError`` on bad
    input (exit code 2 in the CLI) before anything is written.

    ``metric(outputs, labels) -> float`` (higher is better) judges variants on the user's own
    measure instead of output fidelity: ``outputs`` and ``labels`` are lists with one dict per
    eval sample (the labels come from the ``label``/``labels`` arrays of the ``--inputs`` .npz
    files), and a variant passes when ``metric(original) - metric(variant) <= max_accuracy_drop``.
    Accuracy-aware recipes (mixed precision, pruning) spend at most ``search_budget_s`` each
    probing layer sensitivity.
    """
    obs = observer or Observer()
    if objective not in search.OBJECTIVES:
        raise InputError(f"--objective must be one of {', '.join(search.OBJECTIVES)}")
    if not 0.0 <= max_accuracy_drop <= 1.0:
        raise InputError("--max-accuracy-drop must be between 0 and 1 (or 0% and 100%)")
    if window_s is not None and window_s <= 0:
        raise InputError("--window-s must be positive")
    t_start = time.perf_counter()
    if search_budget_s <= 0:
        raise InputError("--search-budget-s must be positive")
    if metric is not None and not callable(metric):
        raise InputError("metric must be a callable metric(outputs, labels) -> float")
    chosen = recipe_lib.resolve(recipes)
    obs.stage("loading model")
    loaded = intake.load_model(model, input_shapes)
    feeds = inputs.prepare(loaded, inputs_dir, calibration_samples, eval_samples, seed)
    skipped_recipes = _check_calibration(chosen, feeds, explicit=recipes is not None)
    if metric is not None and (
        not feeds.labels or len(feeds.labels) != len(feeds.eval) or not all(feeds.labels)
    ):
        raise InputError(
            "a metric needs labels: give --inputs DIR whose .npz files each hold a 'label' "
            "(or 'labels', 'label_*') array beside the model inputs"
        )
    acc_ctx = compress.AccuracyContext(
        max_drop=max_accuracy_drop,
        score_outputs=tuple(sorted(loaded.score_outputs)),
        metric=metric,
        labels=list(feeds.calibration_labels),
        budget_s=search_budget_s,
    )
    targets = _targets(backends or default_backends(), device)
    meter_device = "cuda" if any(d == "cuda" for _, d in targets) else "cpu"
    try:
        meter_obj = get_meter(meter, device=meter_device, cpu_watts=cpu_watts)
    except ValueError as e:
        raise InputError(f"--meter {meter}: {e}") from None
    proto = protocol or (Protocol.quick() if quick else Protocol())
    if window_s is not None:
        proto = dataclasses.replace(proto, window_s_override=window_s)
    mem = memory_limit_bytes if memory_limit_bytes is not None else default_memory_limit()

    tmp = tempfile.TemporaryDirectory(prefix="lepton-")
    work = Path(tmp.name)
    variants = [
        VariantResult(f"{r.name}-{b}-{d}", r, b, d)
        for b, d in targets
        for r in chosen
        if r.backends is None or b in r.backends
    ]
    if not variants or variants[0].recipe.name != "original":
        raise InputError("the original must run on the first backend")
    # A recipe restricted to backends not in this run (fused-lepton without lepton) is left out.
    chosen = [r for r in chosen if any(v.recipe is r for v in variants)]
    baseline = variants[0]
    from lepton_compile.bench.device import device_record

    device_at_start = device_record(None)
    vcache = VariantCache(
        cache,
        cache_path,
        {
            "model_sha256": loaded.sha256,
            "device_record": device_at_start,
            "protocol": proto.to_dict(),
            "input_shapes": {s.name: list(s.shape or ()) for s in loaded.inputs},
            "inputs": inputs_fingerprint([*feeds.calibration, *feeds.eval]),
            "max_accuracy_drop": max_accuracy_drop,
            "meter": meter_obj.name,
            "search_budget_s": search_budget_s,
            "metric": None
            if metric is None
            else f"{getattr(metric, '__module__', '?')}.{getattr(metric, '__qualname__', '?')}",
        },
    )
    try:
        hits = {v.id: vcache.lookup(v) for v in variants}
        if all(hits.values()):
            # Everything of this exact run is cached: reuse it whole (figures of one run only).
            obs.stage("reusing cached results", total=len(variants))
            for v in variants:
                hit = hits[v.id]
                assert hit is not None
                vcache.restore(v, hit, with_measurement=True)
                if hit["artifact_path"] is not None:
                    v.artifact = work / "variants" / f"{v.recipe.name}.onnx"
                    v.artifact.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(hit["artifact_path"], v.artifact)
                obs.advance(v.id)
            results: dict[str, Measurement] = {}
        else:
            results = _run_variants(
                loaded,
                feeds,
                chosen,
                variants,
                hits,
                work,
                proto,
                meter_obj,
                meter,
                cpu_watts,
                max_accuracy_drop,
                isolate,
                variant_timeout_s,
                mem,
                budget_s,
                t_start,
                obs,
                acc_ctx,
                skipped_recipes,
            )
            for v in variants:
                mres = results.get(v.id)
                if mres is not None and mres.error:
                    v.fail("failed", f"measure: {mres.error}")
                elif mres is not None:
                    v.measurement = mres
                vcache.save(v)
    finally:
        vcache.close()

    for v in variants:
        if (
            max_latency_ms is not None
            and v.status == "ok"
            and v.latency is not None
            and v.latency.mean > max_latency_ms
        ):
            v.fail(
                "rejected", f"latency {v.latency.mean:.3f} ms > --max-latency-ms {max_latency_ms:g}"
            )

    _add_roofline(variants, loaded, device_at_start)
    front = set(search.pareto_front(variants))
    for v in variants:
        v.pareto = v.id in front
    if baseline.status == "ok":
        pick = search.select(variants, baseline.id, objective)
        best = next(v for v in variants if v.id == pick.id)
        pick_reason = pick.reason
    else:
        # Only --max-latency-ms can reject the baseline; pick the best that met it, if any.
        ok = [v for v in variants if v.status == "ok"]
        if not ok:
            best, pick_reason = baseline, "nothing met the constraints"
        else:
            best = min(ok, key=lambda v: _objective_value(v, objective))
            pick_reason = "the original did not meet the constraints; best that did"
    obs.done()

    from lepton_compile import report as report_mod

    rep = report_mod.build_report(
        loaded=loaded,
        feeds=feeds,
        variants=variants,
        baseline=baseline,
        best=best,
        pick_reason=pick_reason,
        objective=objective,
        meter=meter_obj,
        protocol=proto,
        max_accuracy_drop=max_accuracy_drop,
        wall_s=time.perf_counter() - t_start,
        constraints_met=best.status == "ok",
        device_at_start=device_at_start,
        isolation={
            "isolated": isolate,
            "variant_timeout_s": variant_timeout_s,
            "memory_limit_bytes": mem,
            "budget_s": budget_s,
        },
    )
    return CompileResult(loaded, variants, baseline, best, pick_reason, objective, rep, work, tmp)


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


def _add_roofline(
    variants: list[VariantResult], loaded: intake.LoadedModel, rec: dict[str, Any]
) -> None:
    """FLOPs and bytes of each built variant, and the spec-sheet reference energy beside the
    measured one where the device is in the peak table (a reference, not a bound)."""
    from lepton_compile.bench import roofline

    costs: dict[Path, Any] = {}
    shapes = {s.name: [int(d) for d in (s.shape or ())] for s in loaded.inputs}
    for v in variants:
        if v.artifact is None or not v.artifact.exists():
            continue
        try:
            if v.artifact not in costs:
                costs[v.artifact] = roofline.count(onnx.load(str(v.artifact)), shapes)
            cost = costs[v.artifact]
        except Exception as e:  # the count is a help for the reader, never a reason to fail
            v.roofline = {"error": f"not counted: {type(e).__name__}: {e}"}
            continue
        rec_v = dict(rec, providers=v.session.get("providers"))
        prec = {"int8": "int8", "fp16": "fp16"}.get(v.precision, "fp32")
        peak, why = roofline.lookup_peak(rec_v, prec)
        entry: dict[str, Any] = {
            "flops": cost.flops,
            "int_ops": cost.int_ops,
            "bytes_unfused": cost.bytes_unfused,
            "bytes_fused": cost.bytes_fused,
            "complete": cost.complete,
        }
        if peak is None:
            entry["reference_energy"] = None
            entry["reference_note"] = why
        else:
            ref = roofline.reference_energy(cost, peak, prec)
            measured = v.energy.mean if v.energy else None
            entry["reference_energy"] = roofline.beside_measured(measured, ref)
        v.roofline = entry


def _objective_value(v: VariantResult, objective: str) -> float:
    if objective == "energy" and v.energy:
        return v.energy.mean
    if objective == "latency" and v.latency:
        return v.latency.mean
    return float(v.size_bytes)


def _targets(backends: Sequence[str], device: str) -> list[tuple[str, str]]:
    out = []
    for bname in backends:
        avail = _backend_devices(bname)
        devs = _pick_device(avail, device)
        if not devs:
            raise InputError(
                f"backend {bname!r} cannot use device {device!r} here "
                f"(available: {', '.join(avail)})"
            )
        out.extend((bname, d) for d in devs)
    return out


def _run_variants(
    loaded: intake.LoadedModel,
    feeds: inputs.InputSet,
    chosen: list[recipe_lib.Recipe],
    variants: list[VariantResult],
    hits: Mapping[str, dict[str, Any] | None],
    work: Path,
    proto: Protocol,
    meter_obj: Any,
    meter: str,
    cpu_watts: float | None,
    max_accuracy_drop: float,
    isolate: bool,
    variant_timeout_s: float,
    mem: int | None,
    budget_s: float | None,
    t_start: float,
    obs: Observer,
    acc_ctx: compress.AccuracyContext,
    skipped_recipes: Mapping[str, str],
) -> dict[str, Measurement]:
    """Reference, build (reusing cached artifacts), verify and measure, in worker processes."""
    baseline = variants[0]

    def over_budget() -> bool:
        return budget_s is not None and time.perf_counter() - t_start > budget_s

    workers = {
        v.id: VariantWorker(v.id, isolate=isolate, timeout_s=variant_timeout_s, memory_limit=mem)
        for v in variants
    }
    try:
        # Reference outputs: the original on onnxruntime's CPU provider with its graph
        # optimizations off, so that no runtime rewrite stands between the model and the truth.
        ref = workers[baseline.id]
        try:
            ref.call(
                "load", str(loaded.path), "ort", "cpu", {"graph_optimization_level": "disable"}
            )
            reference = ref.call("run", feeds.eval)
        except WorkerError as e:
            if e.kind == "unsupported":
                raise InputError(f"{loaded.path.name}: unsupported op: {e.reason}") from None
            raise InputError(
                f"{loaded.path.name}: the original model does not run on the inputs "
                f"({e.reason}); check --input-shape or pass real inputs with --inputs DIR"
            ) from None

        metric_ref: float | None = None
        if acc_ctx.metric is not None:
            metric_ref = compress.metric_value(
                acc_ctx.metric, reference, feeds.labels, "the original model's outputs"
            )
        worker_ctx = acc_ctx.picklable()
        static_path = work / "static.onnx"
        if any(r.name != "original" for r in chosen):
            save_model(loaded.model, static_path)
        obs.stage("building variants", total=len(chosen))
        uses_external = _uses_external_data(loaded.path)
        artifacts: dict[str, tuple[Path | None, dict[str, Any], str, str]] = {}
        for r in chosen:
            t0 = time.perf_counter()
            art = work / "variants" / f"{r.name}.onnx"
            builder = workers[next(v.id for v in variants if v.recipe is r)]
            try:
                cached = next(
                    (hits[v.id] for v in variants if v.recipe is r and hits.get(v.id)), None
                )
                if r.name in skipped_recipes:
                    raise WorkerError(skipped_recipes[r.name], "skip")
                if r.name == "original":
                    _copy_original(loaded.path, art, uses_external)
                    steps: list[dict] = []
                elif cached is not None and cached["artifact_path"] is None:
                    raise WorkerError(cached.get("reason", "skipped"), "skip")
                elif cached is not None:
                    art.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(cached["artifact_path"], art)
                    steps = [{"name": "reused from the result cache", "modified": True}]
                elif over_budget():
                    raise WorkerError(
                        f"not built: the --budget-s of {budget_s:g} s was spent", "budget"
                    )
                else:
                    steps = builder.call(
                        "build",
                        r,
                        str(static_path),
                        feeds.calibration,
                        str(art),
                        worker_ctx if r.accuracy_aware else None,
                    )
                info = {"seconds": round(time.perf_counter() - t0, 3), "steps": steps}
                artifacts[r.name] = (art, info, "", "")
            except WorkerError as e:
                if e.kind == "input":  # the user's data or metric is at fault: stop here
                    raise InputError(f"{r.name}: {e.reason}") from None
                info: dict[str, Any] = {"seconds": round(time.perf_counter() - t0, 3)}
                if e.kind == "skip":  # the same model and inputs give the same answer
                    info["skip"] = "deterministic"
                skip = e.kind in ("budget", "skip", "unsupported")
                reason = e.reason if e.kind in ("budget", "skip") else f"build: {e.reason}"
                status = "skipped" if skip else "rejected" if e.kind == "constraint" else "failed"
                artifacts[r.name] = (None, info, reason, status)
            obs.advance(r.name)
        for v in variants:
            art, info, err, status = artifacts[v.recipe.name]
            v.build = info
            if art is None:
                v.fail(status, err)
                continue
            v.artifact = art
            data = art.with_name(art.name + ".data")
            v.size_bytes = art.stat().st_size + (data.stat().st_size if data.exists() else 0)

        obs.stage("verifying", total=len(variants))
        for v in variants:
            if v.status != "pending":
                obs.advance(v.id)
                continue
            if over_budget() and v is not baseline:
                v.fail("skipped", f"not verified: the --budget-s of {budget_s:g} s was spent")
                obs.advance(v.id)
                continue
            assert v.artifact is not None
            w = workers[v.id]
            try:
                v.session = w.call("load", str(v.artifact), v.backend, v.device, {})
                outs = w.call("run", feeds.eval)
            except WorkerError as e:
                v.fail("skipped" if e.kind == "unsupported" else "failed", f"run: {e.reason}")
                obs.advance(v.id)
                continue
            v.fidelity = accuracy.compare(reference, outs, loaded.score_outputs, max_accuracy_drop)
            if acc_ctx.metric is not None and metric_ref is not None:
                try:
                    value = compress.metric_value(
                        acc_ctx.metric, outs, feeds.labels, f"the outputs of {v.id}"
                    )
                except InputError as e:
                    v.fail("failed", str(e))
                    obs.advance(v.id)
                    continue
                accuracy.apply_metric(v.fidelity, metric_ref, value, max_accuracy_drop)
            if v.fidelity.passed:
                v.status = "ok"
            else:
                v.fail("rejected", v.fidelity.reason)
            obs.advance(v.id)
        if baseline.status != "ok":
            raise InputError(
                f"{loaded.path.name}: the original model fails on the default backend: "
                f"{baseline.reason}"
            )

        measured = [v for v in variants if v.status == "ok"]
        runners: dict[str, WorkerRunner] = {}
        for v in measured:
            try:
                workers[v.id].call(
                    "set_measurement",
                    feeds.eval[0],
                    meter_obj.name if meter_obj.name != "estimated" else "estimate",
                    v.device,
                    cpu_watts,
                )
                runners[v.id] = WorkerRunner(workers[v.id], variant_timeout_s)
            except WorkerError as e:
                v.fail("failed", f"meter: {e.reason}")
        obs.stage("measuring", total=len(runners) * proto.trials)
        deadline = None if budget_s is None else t_start + budget_s
        return measure(
            runners,
            meter_obj,
            proto,
            deadline=deadline,
            progress=lambda vid, i, n: obs.advance(f"{vid} trial {i + 1}/{n}"),
        )
    finally:
        for w in workers.values():
            w.close()
