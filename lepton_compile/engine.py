"""The main job: intake -> recipes -> build -> verify -> measure -> select -> result."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from lepton_compile import accuracy, compress, hopeless, inputs, intake, modelio, search
from lepton_compile import recipes as recipe_lib
from lepton_compile.bench.energy import get_meter
from lepton_compile.bench.protocol import Measurement, Protocol
from lepton_compile.bench.race import RaceRules, race
from lepton_compile.bench.stats import Ratio, Stats
from lepton_compile.cached import VariantCache, inputs_fingerprint
from lepton_compile.errors import InputError
from lepton_compile.modelio import copy_model, save_model, uses_external_data
from lepton_compile.outdir import check_output_dir, replace_dir
from lepton_compile.runtime import default_backends, get_backend
from lepton_compile.targets import TargetPlan, plan_targets
from lepton_compile.worker import (
    DEFAULT_TIMEOUT_S,
    VariantWorker,
    WorkerError,
    WorkerRunner,
    default_memory_limit,
)

log = logging.getLogger(__name__)

# A variant this many times slower than the original in the screen is not measured further.
DEFAULT_SCREEN_FACTOR = 2.0


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
    # Racing: the screen's figure when screened out, the race's decision record, and the
    # paired ratios to the original measured in the same trials, by quantity.
    screen: dict[str, Any] | None = None
    race: dict[str, Any] = field(default_factory=dict)
    ratios: dict[str, Ratio] = field(default_factory=dict)

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

    def save(self, outdir: str | Path, force: bool = False) -> Path:
        """Write best.onnx, variants/, report.json/.md/.html into ``outdir``, atomically.

        ``outdir`` may be new, empty, or an earlier output of this tool; anything else (the
        user's own file or directory) raises InputError unless ``force`` is given.
        """
        from lepton_compile import report as report_mod

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
            report_mod.write_all(self.report, stage)

        return replace_dir(out, fill, force)


def _backend_devices(name: str) -> list[str]:
    try:
        return get_backend(name).devices()
    except ValueError as e:
        raise InputError(f"--backend: {e}") from None


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
    total_memory_bytes: int | None = None,
    budget_s: float | None = None,
    cache: bool = True,
    cache_path: str | Path | None = None,
    observer: Observer | None = None,
    metric: compress.Metric | None = None,
    search_budget_s: float = compress.DEFAULT_SEARCH_BUDGET_S,
    min_trials: int | None = None,
    max_trials: int | None = None,
    measure_budget_s: float | None = None,
    screen_factor: float | None = DEFAULT_SCREEN_FACTOR,
) -> CompileResult:
    """Build, verify and measure variants of ``model``; pick the best for ``objective``.

    Each variant runs in its own worker process (``isolate=False`` keeps them in this
    process), with ``variant_timeout_s`` per step and ``memory_limit_bytes`` of address space
    (default: 80% of physical memory). ``total_memory_bytes`` (default: the same) bounds the
    resident memory of the workers alive at once: past it, variants are measured in groups.
    ``budget_s`` bounds the whole search: what did not fit
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
    requested = tuple(backends or default_backends())
    plan = plan_targets({b: _backend_devices(b) for b in requested}, requested, device, meter)
    meters: dict[str, Any] = {}
    for dev, kind in plan.meters.items():
        try:
            meters[dev] = get_meter(kind, device=dev, cpu_watts=cpu_watts)
        except ValueError as e:
            raise InputError(f"--meter {meter}: {e}") from None
    meter_obj = meters[plan.primary]
    loaded.notes.extend(plan.notes)
    proto = protocol or (Protocol.quick() if quick else Protocol())
    if window_s is not None:
        proto = dataclasses.replace(proto, window_s_override=window_s)
    rules = race_rules(objective, quick, min_trials, max_trials, measure_budget_s, screen_factor)
    mem = memory_limit_bytes if memory_limit_bytes is not None else default_memory_limit()

    tmp = tempfile.TemporaryDirectory(prefix="lepton-")
    work = Path(tmp.name)
    variants = [
        VariantResult(f"{r.name}-{b}-{d}", r, b, d)
        for b, d in plan.targets
        for r in chosen
        if r.backends is None or b in r.backends
    ]
    if not variants or variants[0].recipe.name != "original":
        raise InputError("the original must run on the first backend")
    # Known-hopeless variants (16-bit floats on a CPU without them) are not built unless their
    # recipe was named; they are reported as skipped, with the reason.
    hopeless_ids = hopeless.skips(variants, recipe_lib.named(recipes))
    everything, variants = variants, [v for v in variants if v.id not in hopeless_ids]
    for v in everything:
        if v.id in hopeless_ids:
            v.fail("skipped", hopeless_ids[v.id])
    # Calibration, reference outputs and pass pipelines that recipes share are computed once.
    acc_ctx.shared_dir = str(work / "shared")
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
            "race": rules.to_dict(),
            "input_shapes": {s.name: list(s.shape or ()) for s in loaded.inputs},
            "inputs": inputs_fingerprint([*feeds.calibration, *feeds.eval]),
            "max_accuracy_drop": max_accuracy_drop,
            "meter": {d: m.name for d, m in sorted(meters.items())},
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
                rules,
                plan,
                meters,
                cpu_watts,
                max_accuracy_drop,
                isolate,
                variant_timeout_s,
                mem,
                total_memory_bytes if total_memory_bytes is not None else mem,
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
    variants = everything  # the hopeless ones too, in their place

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
    # Figures compare only within one device and meter: a frontier per device, and the pick
    # among the primary device's variants.
    for dev in plan.devices:
        on_dev = [v for v in variants if v.device == dev]
        front = set(search.pareto_front(on_dev))
        for v in on_dev:
            v.pareto = v.id in front
    primary = [v for v in variants if v.device == plan.primary]
    if baseline.status == "ok":
        pick = search.select(primary, baseline.id, objective)
        best = next(v for v in variants if v.id == pick.id)
        pick_reason = pick.reason
    else:
        # Only --max-latency-ms can reject the baseline; pick the best that met it, if any.
        ok = [v for v in primary if v.status == "ok"]
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
        rules=rules,
    )
    return CompileResult(loaded, variants, baseline, best, pick_reason, objective, rep, work, tmp)


def _non_finite_outputs(outputs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Names of float outputs that hold NaN or inf in any sample."""
    import numpy as np

    bad: list[str] = []
    for sample in outputs:
        for name, value in sample.items():
            a = np.asarray(value)
            if a.dtype.kind in "fc" and name not in bad and not np.all(np.isfinite(a)):
                bad.append(name)
    return bad


def _baseline_error(loaded: intake.LoadedModel, reason: str) -> InputError:
    """The original fails on its own backend: bad input, said once (not also as a warning)."""
    return InputError(
        f"{loaded.path.name}: the original model fails on the default backend: {reason}"
    )


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


def race_rules(
    objective: str,
    quick: bool,
    min_trials: int | None,
    max_trials: int | None,
    measure_budget_s: float | None,
    screen_factor: float | None,
) -> RaceRules:
    """The racing rules of a run: the defaults (shorter with ``quick``) and the user's flags."""
    lo, hi, budget = (2, 4, 10.0) if quick else (4, 20, 60.0)
    lo = min_trials if min_trials is not None else lo
    hi = max_trials if max_trials is not None else max(hi, lo)
    try:
        return RaceRules(
            objective=objective,
            min_trials=lo,
            max_trials=hi,
            budget_s=measure_budget_s if measure_budget_s is not None else budget,
            screen_factor=screen_factor,
        )
    except ValueError as e:
        raise InputError(
            f"--min-trials/--max-trials/--measure-budget-s/--screen-factor: {e}"
        ) from None


def _original_of(group: Sequence[VariantResult]) -> VariantResult:
    return next(v for v in group if v.recipe.name == "original")


def memory_groups(
    variants: Sequence[VariantResult], rss: Mapping[str, int], limit: int | None
) -> list[list[VariantResult]]:
    """Split one device's variants into groups whose workers fit in ``limit`` bytes together.

    Every group holds that device's original (first), so that each variant is measured in the
    same trials as the original it is judged against. Greedy in the given order; a variant too
    big to share the limit with the original gets a group of its own with it.
    """
    original = _original_of(variants)
    rest = [v for v in variants if v is not original]
    if limit is None or sum(rss.get(v.id, 0) for v in variants) <= limit:
        return [[original, *rest]]
    groups: list[list[VariantResult]] = []
    current: list[VariantResult] = [original]
    used = rss.get(original.id, 0)
    for v in rest:
        need = rss.get(v.id, 0)
        if len(current) > 1 and used + need > limit:
            groups.append(current)
            current, used = [original], rss.get(original.id, 0)
        current.append(v)
        used += need
    groups.append(current)
    return groups


def _measure_groups(
    measured: list[VariantResult],
    workers: Mapping[str, VariantWorker],
    plan: TargetPlan,
    meters: Mapping[str, Any],
    feed: Mapping[str, Any],
    proto: Protocol,
    rules: RaceRules,
    cpu_watts: float | None,
    timeout_s: float,
    total_mem: int | None,
    deadline: float | None,
    obs: Observer,
    notes: list[str],
) -> dict[str, Measurement]:
    """Measure the verified variants by racing, one device at a time with that device's meter.

    Within a device, variants race against that device's original (``bench.race``): screened,
    then interleaved trials until the pick is decided. When their workers together would
    hold more memory than ``total_mem``, they race in groups (each with the original), and
    the workers of a finished group are closed first. Each variant's ratios to the original
    come from the trials it shared with it.
    """
    results: dict[str, Measurement] = {}
    obs.stage("measuring", total=None)
    for dev in plan.devices:
        on_dev = [v for v in measured if v.device == dev]
        if not on_dev:
            continue
        meter = meters[dev]
        rss = {v.id: workers[v.id].rss_bytes() for v in on_dev}
        groups = memory_groups(on_dev, rss, total_mem)
        if len(groups) > 1:
            assert total_mem is not None
            notes.append(
                f"{dev}: variants measured in {len(groups)} groups, each with the original, so "
                f"that the workers alive at once stay under {total_mem / 2**30:.1f} GiB "
                f"(together they hold {sum(rss.values()) / 2**30:.1f} GiB)"
            )
            original = _original_of(on_dev)
            for v in on_dev:
                if v is not original:
                    workers[v.id].suspend()
        for i, group in enumerate(groups):
            runners: dict[str, WorkerRunner] = {}
            for v in group:
                try:
                    workers[v.id].resume()
                    workers[v.id].call(
                        "set_measurement",
                        feed,
                        "estimate" if meter.name == "estimated" else meter.name,
                        v.device,
                        cpu_watts,
                    )
                    runners[v.id] = WorkerRunner(workers[v.id], timeout_s)
                except WorkerError as e:
                    v.fail("failed", f"meter: {e.reason}")
            original = _original_of(group)
            if original.id not in runners:
                continue
            label = dev if len(groups) == 1 else f"{dev}#{i + 1}"

            def estimate(low: float, high: float, label: str = label) -> None:
                obs.stage(f"measuring {label} (about {low:.0f}-{high:.0f} s)", total=None)
                log.info("measuring on %s: about %.0f-%.0f s", label, low, high)

            outcome = race(
                runners,
                original.id,
                meter,
                proto,
                rules,
                label=label,
                progress=lambda vid, t, n: obs.advance(f"trial {t + 1}: {vid}"),
                on_estimate=estimate,
                deadline=deadline,
            )
            decision = {"race": label, **outcome.to_dict()}
            base_m = outcome.measurements[original.id]
            for v in group:
                m = outcome.measurements.get(v.id)
                if m is None:
                    continue
                results.setdefault(v.id, m)  # the original keeps its first group's figures
                v.race = decision
                if v.id in outcome.screened:
                    v.screen = outcome.screened[v.id]
                    v.status, v.reason = "dropped", v.screen["reason"]
                elif v.id in outcome.dropped:
                    v.status, v.reason = "dropped", f"dropped by racing: {outcome.dropped[v.id]}"
                if m.trials and base_m.trials:
                    v.ratios = {
                        q: r
                        for q in ("latency", "energy")
                        if (r := m.ratio_to(base_m, q)) is not None
                    }
            if len(groups) > 1:
                for v in group[1:]:
                    workers[v.id].suspend()
    return results


def _objective_value(v: VariantResult, objective: str) -> float:
    if objective == "energy" and v.energy:
        return v.energy.mean
    if objective == "latency" and v.latency:
        return v.latency.mean
    return float(v.size_bytes)


def _run_variants(
    loaded: intake.LoadedModel,
    feeds: inputs.InputSet,
    chosen: list[recipe_lib.Recipe],
    variants: list[VariantResult],
    hits: Mapping[str, dict[str, Any] | None],
    work: Path,
    proto: Protocol,
    rules: RaceRules,
    plan: TargetPlan,
    meters: Mapping[str, Any],
    cpu_watts: float | None,
    max_accuracy_drop: float,
    isolate: bool,
    variant_timeout_s: float,
    mem: int | None,
    total_mem: int | None,
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
        bad = _non_finite_outputs(reference)
        if bad:
            # Nothing can be verified against NaN or inf: stop before building anything.
            raise InputError(
                f"{loaded.path.name}: the original model gives non-finite values (NaN or inf) "
                f"in output {', '.join(map(repr, bad))} on the "
                f"{'generated' if feeds.source.startswith('generated') else 'given'} inputs; "
                "pass real inputs with --inputs DIR"
            )

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
                    copy_model(loaded.path, art)
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
            v.size_bytes = modelio.size_bytes(art)

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
                if v is baseline:
                    raise _baseline_error(loaded, f"run: {e.reason}") from None
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
            elif v is baseline:
                raise _baseline_error(loaded, v.fidelity.reason)
            else:
                v.fail("rejected", v.fidelity.reason)
            obs.advance(v.id)

        deadline = None if budget_s is None else t_start + budget_s
        return _measure_groups(
            [v for v in variants if v.status == "ok"],
            workers,
            plan,
            meters,
            feeds.eval[0],
            proto,
            rules,
            cpu_watts,
            variant_timeout_s,
            total_mem,
            deadline,
            obs,
            loaded.notes,
        )
    finally:
        for w in workers.values():
            w.close()
