"""`lepton-compile export`: a compile's pick (or any variant) as files that deploy without us.

    lepton variant  -> its lowered fx program -> torch.export -> AOTInductor package model.pt2
    ort variant     -> its ONNX file, model.onnx

A lepton variant runs as a torch fx program (runtime/lepton/lower.py); torch already has
the engine that makes such a program deployable: `torch.export` then
`torch._inductor.aoti_compile_and_package` compile it into a `.pt2` package, which
`torch._inductor.aoti_load_package` (Python, no lepton_compile needed) and
`torch::inductor::AOTIModelPackageLoader` (C++, our `lepton-run`) both load. Our Triton
kernels are `torch.library.triton_op`s (kernel_ops.py), so Inductor compiles them into the
package for a GPU; on the CPU the program runs torch's routes, and a layer routed to a
kernel in Triton's interpreter is refused naming the op.

The export reads a compile's output directory (report.json, variants/), never the model
again. Beside the model it writes the held-out inputs of the compile (regenerated from the
same seed, or read from the user's --inputs) as `inputs/NNNN.lt` (rawtensors.py), and
export.json: what was exported, its inputs and outputs, and the parity of the package
with the variant as lepton-compile runs it, checked on those inputs within the tolerance of
the variant's precision (passes.verify.DEFAULT_TOLERANCES). With `build_runner` it also
builds lepton-run (native_build.py), checks its outputs too, and measures its latency
beside the Python session's as a ratio.

The lowering folds shapes into the program, so a program runs at the shapes it was
exported with. After a serving profile the package holds one model per profiled batch
size (AOTInductor packages hold several, by name): "model", what loaders take by default,
at the recommended batch, and "batch_<N>" for the others; each is checked for parity.
"""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lepton_compile import rawtensors
from lepton_compile.errors import InputError, LeptonError
from lepton_compile.outdir import EXPORT_SCHEMA, REPORT_SCHEMA, check_export_dir, replace_dir

log = logging.getLogger(__name__)

FORMATS = ("pt2", "onnx")
PACKAGE_NAME = "model.pt2"
ONNX_NAME = "model.onnx"
# Op namespaces whose kernels libtorch itself carries (a package calls them from C++).
_BUILTIN_NAMESPACES = frozenset({"aten", "prims"})


class ExportError(LeptonError):
    """A variant or op that cannot be exported, or no compiler to export with: exit code 2."""

    exit_code = 2


class ParityError(LeptonError):
    """The package computes something else than the variant: nothing is written, exit 1."""

    exit_code = 1


@dataclass
class ExportResult:
    """What `export` wrote and checked (export.json holds the same as `manifest`)."""

    outdir: Path
    manifest: dict[str, Any]
    runner: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def artifact(self) -> Path:
        return self.outdir / self.manifest["artifact"]

    def to_dict(self) -> dict[str, Any]:
        return {"outdir": str(self.outdir), **self.manifest}


# ---------------------------------------------------------------------------------------
# What to export: the compile's report, one of its variants, its held-out inputs.


def read_report(compile_dir: Path) -> dict[str, Any]:
    """report.json of a compile output directory (InputError naming what is wrong)."""
    path = compile_dir / "report.json"
    if not compile_dir.is_dir():
        raise InputError(f"{compile_dir}: is not a directory (give a compile's output directory)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{compile_dir}: no report.json: not an output directory of lepton-compile"
        ) from None
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot be read as a report: {e}") from None
    if not isinstance(report, dict) or report.get("schema") != REPORT_SCHEMA:
        raise InputError(f"{path}: not a lepton-compile report (schema {REPORT_SCHEMA} expected)")
    return report


def find_variant(report: Mapping[str, Any], variant: str | None) -> dict[str, Any]:
    """The variant with id `variant`, or the pick (InputError listing the ids otherwise)."""
    variants = [v for v in report.get("variants") or [] if isinstance(v, dict)]
    wanted = variant or (report.get("best") or {}).get("id")
    for v in variants:
        if v.get("id") == wanted:
            return v
    ids = ", ".join(str(v.get("id")) for v in variants if v.get("artifact")) or "none"
    raise InputError(f"no variant {wanted!r} in the report; variants with a model: {ids}")


def choose_format(v: Mapping[str, Any], fmt: str | None) -> str:
    """pt2 for a lepton variant, onnx for an onnxruntime one (ExportError for pt2 of ort)."""
    if fmt is not None and fmt not in FORMATS:
        raise InputError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    backend = str(v.get("backend") or "")
    if fmt is None:
        return "pt2" if backend.startswith("lepton") else "onnx"
    if fmt == "pt2" and not backend.startswith("lepton"):
        raise ExportError(
            f"variant {v.get('id')} runs on {backend or 'an unknown backend'}, not the lepton "
            "backend: export it as its ONNX file (--format onnx)"
        )
    return fmt


def _eval_seed(source: str) -> int | None:
    m = re.fullmatch(r"generated \(seed (\d+)\)", source.strip())
    return int(m.group(1)) if m else None


def held_out_feeds(
    compile_dir: Path, report: Mapping[str, Any], inputs_dir: Path | None = None
) -> tuple[list[dict[str, np.ndarray]], str]:
    """The compile's held-out eval feeds, at its input shapes, and where they came from.

    Generated inputs are made again from the report's seed and counts (inputs.prepare);
    the user's own are read from `inputs_dir` (InputError if the compile used some and no
    directory is given).
    """
    from lepton_compile.inputs import prepare
    from lepton_compile.intake import load_model

    info = report.get("inputs") or {}
    model = compile_dir / "variants" / "original.onnx"
    if not model.is_file():
        raise InputError(
            f"{compile_dir}: variants/original.onnx is missing (inputs are made "
            "from the original model's input specs)"
        )
    # A serving profile keeps the batch symbolic ("B"); its feeds were made at batch 1.
    shapes = {
        i["name"]: [d if isinstance(d, int) else 1 for d in i["shape"]]
        for i in (report.get("model") or {}).get("inputs") or []
    }
    loaded = load_model(model, input_shapes=shapes)
    source = str(info.get("source") or "")
    seed = _eval_seed(source)
    if inputs_dir is None and seed is None:
        raise InputError(
            f"the compile used the user's inputs ({source}); give the same directory with "
            "--inputs DIR"
        )
    feeds = prepare(
        loaded,
        inputs_dir,
        calibration_samples=int(info.get("calibration_samples") or 0),
        eval_samples=int(info.get("eval_samples") or 1),
        seed=seed or 0,
    )
    return feeds.eval, feeds.source


def serving_batches(report: Mapping[str, Any]) -> tuple[list[int], int | None, list[str]]:
    """(batch sizes, default batch, batch inputs) of the compile's serving profile: the
    sizes it measured, the one it recommends (else the smallest); ([], None, []) without
    a profile or without a batch dimension to vary."""
    serving = report.get("serving") or {}
    sizes = sorted({b for b in serving.get("batch_sizes") or [] if isinstance(b, int) and b > 0})
    inputs = [str(n) for n in serving.get("batch_inputs") or []]
    if not sizes or not inputs:
        return [], None, []
    recommended = (serving.get("recommendation") or {}).get("batch")
    return sizes, recommended if recommended in sizes else sizes[0], inputs


def feeds_at_batches(
    feeds: Sequence[dict[str, np.ndarray]], sizes: Sequence[int], batch_inputs: Sequence[str]
) -> dict[int, list[dict[str, np.ndarray]]]:
    """The held-out feeds stacked to each batch size (each feed starts the stack once)."""
    from lepton_compile.batching import stack

    rotations = [list(feeds[i:]) + list(feeds[:i]) for i in range(len(feeds))]
    return {b: [stack(r, batch_inputs, b) for r in rotations] for b in sizes}


# ---------------------------------------------------------------------------------------
# The package: torch.export of the lowered program, AOTInductor, parity.


def check_compiler() -> str:
    """The C++ compiler AOTInductor will use (ExportError naming what to do if none)."""
    from torch._inductor import cpp_builder

    try:
        return cpp_builder.get_cpp_compiler()
    except Exception:
        raise ExportError(
            "no C++ compiler found: AOTInductor compiles the package with one; install g++ "
            "(or clang++) or set CXX to a compiler"
        ) from None


def unexportable_ops(module: Any, device: str) -> list[str]:
    """Ops of the lowered program that a package could not run, each with why."""
    import torch

    from lepton_compile.runtime.lepton.kernel_ops import TRITON_OPS

    problems: dict[str, str] = {}
    for node in module.graph.nodes:
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload):
            continue
        if target.namespace in _BUILTIN_NAMESPACES:
            continue
        name = target._schema.name  # "lepton::gemm"
        if name in TRITON_OPS:
            if device.startswith("cpu"):
                problems[name] = (
                    "our Triton kernel runs on the CPU only in Triton's interpreter, which "
                    "AOTInductor cannot compile; export a variant with kernels=torch or auto"
                )
            continue
        problems[name] = (
            "a custom op with only a Python implementation: a package could not run it "
            "without Python"
        )
    return [f"{op} ({why})" for op, why in sorted(problems.items())]


@dataclass
class Lowered:
    """A variant as lepton-compile runs it: the session, and the program for one feed."""

    session: Any
    module: Any
    input_names: list[str]
    output_names: list[str]
    device: str


def lower_variant(
    artifact: Path, device: str, options: Mapping[str, Any], feed: Mapping[str, np.ndarray]
) -> Lowered:
    """Load `artifact` on the lepton backend with the variant's options; its program for `feed`."""
    from lepton_compile.runtime.lepton.backend import LeptonBackend

    session = LeptonBackend().load(artifact, device, options)
    program = session.program_for(feed)
    if program.pinned:
        raise ExportError(
            f"the program depends on the values of input(s) {', '.join(sorted(program.pinned))}"
            " (pinned at lowering time), so a package could not take them as inputs"
        )
    return Lowered(
        session,
        program.module,
        [s.name for s in program.inputs],
        [s.name for s in program.outputs],
        device,
    )


def program_at(lowered: Lowered, feed: Mapping[str, np.ndarray]) -> Lowered:
    """The same session's program for other input shapes (another batch size)."""
    program = lowered.session.program_for(feed)
    return Lowered(
        lowered.session,
        program.module,
        [s.name for s in program.inputs],
        [s.name for s in program.outputs],
        lowered.device,
    )


def _tensors(lowered: Lowered, feed: Mapping[str, np.ndarray]) -> list[Any]:
    from lepton_compile.runtime.lepton import dtypes

    return [
        dtypes.from_numpy(np.require(feed[name], requirements="C")).to(lowered.device)
        for name in lowered.input_names
    ]


DEFAULT_MODEL = "model"  # the model a loader takes when it is given no name


def model_name(batch: int | None, default_batch: int | None) -> str:
    """A package's model for `batch`: "model" for the default batch, else "batch_<N>"."""
    return DEFAULT_MODEL if batch == default_batch else f"batch_{batch}"


def _export_program(lowered: Lowered, feed: Mapping[str, np.ndarray], variant: str) -> Any:
    """torch.export of the lowered program at `feed`'s shapes (ExportError naming the op or
    the failure)."""
    import torch

    bad = unexportable_ops(lowered.module, lowered.device)
    if bad:
        raise ExportError(f"variant {variant} cannot be exported: op {bad[0]}")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # torch 2.13's own pytree deprecation, raised from inside export: not ours to fix.
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
            return torch.export.export(lowered.module, tuple(_tensors(lowered, feed)), strict=False)
    except Exception as e:
        raise ExportError(f"variant {variant}: torch.export failed: {_first_line(e)}") from e


def package(
    lowered: Lowered,
    feed: Mapping[str, np.ndarray],
    path: Path,
    variant: str,
    others: Mapping[str, tuple[Lowered, Mapping[str, np.ndarray]]] | None = None,
) -> Path:
    """torch.export the program at `feed`'s shapes and compile it into a package at `path`.

    `others` adds models under their own names (one per batch size of a serving profile:
    the lowering folds shapes, so each batch is a program of its own); the first is the
    package's default model. The input and output names travel in each model's metadata,
    where lepton-run reads them.
    """
    import torch
    from torch._inductor.package import package_aoti

    models = {DEFAULT_MODEL: (lowered, feed), **(others or {})}
    exported = {name: _export_program(lo, fd, variant) for name, (lo, fd) in models.items()}
    if lowered.device.startswith("cpu"):
        check_compiler()
    # Inductor's pattern matcher can rewrite a graph into one that does not trace (torch
    # 2.13: its attention rewrite broadcasts a 4-D mask against 3-D batched matmuls, as in
    # BERT-like encoders); as the lepton backend's torch.compile does, retry once without it.
    errors = []
    for configs in ({}, {"pattern_matcher": False}):
        try:
            files: dict[str, list[Any]] = {}
            for name, ep in exported.items():
                lo = models[name][0]
                metadata = {
                    "lepton.variant": variant,
                    "lepton.input_names": "\n".join(lo.input_names),
                    "lepton.output_names": "\n".join(lo.output_names),
                }
                options = {
                    "aot_inductor.package": True,
                    "aot_inductor.metadata": metadata,
                    **configs,
                }
                args, kwargs = ep.example_inputs
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
                    gm = ep.module(check_guards=False)
                    compiled = torch._inductor.aot_compile(gm, args, kwargs, options=options)
                assert isinstance(compiled, list)  # aot_inductor.package: the package's files
                files[name] = compiled
            package_aoti(str(path), files)
            return path
        except Exception as e:
            errors.append(e)
            log.debug("AOTInductor failed with %s", configs, exc_info=True)
    raise ExportError(
        f"variant {variant}: AOTInductor could not compile the program: {_first_line(errors[0])}"
    ) from errors[-1]


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]


def _tolerance(dtype: np.dtype) -> Any:
    from lepton_compile.passes.verify import DEFAULT_TOLERANCES

    return DEFAULT_TOLERANCES.get(np.dtype(dtype).name, DEFAULT_TOLERANCES["float32"])


def compare(
    expected: Sequence[Mapping[str, np.ndarray]],
    actual: Sequence[Mapping[str, np.ndarray]],
    compute_dtype: str | None = None,
) -> dict[str, Any]:
    """Parity of two runs over the same feeds: per output the worst |difference|, the
    tolerance (passes.verify.Tolerance of the compute precision), and whether it holds."""
    from lepton_compile.passes.verify import DEFAULT_TOLERANCES

    outputs: dict[str, Any] = {}
    for name in expected[0]:
        exp = [np.asarray(e[name]) for e in expected]
        act = [np.asarray(a[name]) for a in actual]
        if any(e.shape != a.shape for e, a in zip(exp, act, strict=True)):
            outputs[name] = {"passed": False, "reason": "shapes differ"}
            continue
        if not exp[0].dtype.kind == "f":
            same = all(np.array_equal(e, a) for e, a in zip(exp, act, strict=True))
            outputs[name] = {"passed": same, "exact": True}
            continue
        tol = DEFAULT_TOLERANCES.get(compute_dtype or "", _tolerance(exp[0].dtype))
        e64 = np.concatenate([e.astype(np.float64).ravel() for e in exp])
        a64 = np.concatenate([a.astype(np.float64).ravel() for a in act])
        finite = e64[np.isfinite(e64)]
        scale = max(float(np.max(np.abs(finite))) if finite.size else 0.0, tol.min_scale)
        diff = np.abs(a64 - e64)
        allowed = tol.atol * scale + tol.rtol * np.abs(e64)
        ok = bool(np.all((diff <= allowed) | (a64 == e64)))
        outputs[name] = {
            "passed": ok,
            "max_abs": float(np.max(diff)) if diff.size else 0.0,
            "tolerance": tol.to_dict(),
        }
    return {
        "samples": len(expected),
        "passed": all(o["passed"] for o in outputs.values()),
        "outputs": outputs,
    }


def _compute_dtype(v: Mapping[str, Any]) -> str | None:
    """The float type the variant computes in (session's dtype option, or its precision)."""
    dtype = ((v.get("session") or {}).get("dtype")) or ""
    names = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
    if dtype in names:
        return names[dtype]
    return names.get(str(v.get("precision") or ""))


def package_outputs(
    path: Path,
    lowered: Lowered,
    feeds: Sequence[Mapping[str, np.ndarray]],
    model: str = DEFAULT_MODEL,
) -> list[dict[str, np.ndarray]]:
    """The outputs of the package's `model` on `feeds`, loaded with torch's own loader."""
    import torch
    from torch._inductor.package import load_package

    from lepton_compile.runtime.lepton import dtypes

    runner = load_package(str(path), model)
    results = []
    with torch.inference_mode():
        for feed in feeds:
            outs = runner(*_tensors(lowered, feed))
            results.append(
                {n: dtypes.to_numpy(t) for n, t in zip(lowered.output_names, outs, strict=True)}
            )
    return results


# ---------------------------------------------------------------------------------------
# Timing: the Python session and the runner, by the same protocol.


def _percentiles(latencies_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(latencies_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
    }


def time_python(fn: Callable[[], object], quick: bool) -> dict[str, Any]:
    """Latency of `fn` by lepton_compile.bench.protocol's warmup and window rules (no meter:
    lepton-run's CPU timing has none either)."""
    from lepton_compile.bench.protocol import Protocol, run_warmup

    p = Protocol.quick() if quick else Protocol()
    run_warmup(fn, p)
    lat: list[float] = []
    for _ in range(p.trials):
        start = time.perf_counter()
        n = 0
        while True:
            t0 = time.perf_counter()
            fn()
            t1 = time.perf_counter()
            lat.append((t1 - t0) * 1e3)
            n += 1
            if n >= p.max_runs_per_trial or (
                n >= p.min_runs_per_trial and t1 - start >= p.min_trial_s
            ):
                break
    return {"latency_ms": _percentiles(lat), "runs": len(lat), "trials": p.trials}


def run_runner(
    runner: Path, package_path: Path, inputs: Path, *extra: str, timeout: float = 600
) -> dict[str, Any]:
    """lepton-run's --json result (ExportError with its one error line if it fails)."""
    cmd = [str(runner), str(package_path), str(inputs), "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["no message"])[-1]
        raise ExportError(f"lepton-run failed (exit {proc.returncode}): {err[:300]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------
# The whole job.


def export(
    compile_dir: str | Path,
    out: str | Path | None = None,
    *,
    variant: str | None = None,
    fmt: str | None = None,
    force: bool = False,
    build_runner: bool = False,
    build_dir: str | Path | None = None,
    inputs_dir: str | Path | None = None,
    quick: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a variant of the compile in `compile_dir` (default: its pick) into `out`.

    `out` defaults to `compile_dir/export`; a directory of the user's own files is refused
    (InputError) unless `force`. Nothing is written unless the package matches the variant
    on the held-out inputs (ParityError otherwise). `build_runner` builds lepton-run
    (native_build.build_runner; `build_dir` is its CMake build tree), puts it in `out/bin/`,
    checks its outputs, and times it beside the Python session (`quick`: short windows).
    """
    say = progress or (lambda _msg: None)
    compile_dir = Path(compile_dir)
    report = read_report(compile_dir)
    v = find_variant(report, variant)
    vid = str(v["id"])
    fmt = choose_format(v, fmt)
    outdir = Path(out) if out is not None else compile_dir / "export"
    check_export_dir(outdir, force)
    if not v.get("artifact"):
        why = v.get("reason") or "not built"
        raise ExportError(f"variant {vid} has no model file ({v.get('status')}: {why})")
    artifact = compile_dir / str(v["artifact"])
    if not artifact.is_file():
        raise InputError(f"{artifact}: the variant's model file is missing")
    if build_runner and fmt != "pt2":
        raise InputError("--build-runner needs a pt2 export (lepton-run runs .pt2 packages)")
    say("reading the held-out inputs")
    feeds, source = held_out_feeds(compile_dir, report, Path(inputs_dir) if inputs_dir else None)
    notes: list[str] = []
    sizes, default_batch, batched = serving_batches(report)
    by_batch: dict[int | None, list[dict[str, np.ndarray]]] = {None: feeds}
    if sizes:
        by_batch = {b: fs for b, fs in feeds_at_batches(feeds, sizes, batched).items()}
        feeds = by_batch[default_batch]
        if fmt == "pt2":
            notes.append(
                f"one model per batch size of the serving profile ({', '.join(map(str, sizes))})"
                f": '{DEFAULT_MODEL}' at the recommended batch {default_batch}, 'batch_N' for "
                "the others; inputs/ hold the recommended batch"
            )
    device = str(v.get("device") or "cpu")
    manifest: dict[str, Any] = {
        "schema": EXPORT_SCHEMA,
        "source": {"compile_dir": str(compile_dir.resolve()), "model": report.get("model", {})},
        "variant": vid,
        "backend": v.get("backend"),
        "device": device,
        "precision": v.get("precision"),
        "backend_options": v.get("backend_options") or {},
        "format": fmt,
        "inputs_source": source,
        "batch": default_batch,
        "notes": notes,
    }
    timings: dict[str, float] = {}
    state: dict[str, Any] = {}

    def fill(stage: Path) -> None:
        (stage / "inputs").mkdir()
        for i, feed in enumerate(feeds):
            rawtensors.write(stage / "inputs" / f"{i:04d}{rawtensors.SUFFIX}", feed)
        manifest["inputs"] = [
            {"name": n, "dtype": a.dtype.name, "shape": list(a.shape)} for n, a in feeds[0].items()
        ]
        manifest["input_files"] = [f"inputs/{i:04d}{rawtensors.SUFFIX}" for i in range(len(feeds))]
        if fmt == "onnx":
            from lepton_compile.modelio import copy_model

            copy_model(artifact, stage / ONNX_NAME)
            manifest["artifact"] = ONNX_NAME
        else:
            _fill_package(
                stage, artifact, v, by_batch, default_batch, manifest, timings, state, say
            )
            if build_runner:
                _fill_runner(stage, build_dir, feeds, manifest, timings, state, quick, say)
        manifest["seconds"] = {k: round(s, 2) for k, s in timings.items()}
        (stage / "export.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    replace_dir(outdir, fill, force, check=check_export_dir)
    runner = outdir / "bin" / "lepton-run" if build_runner else None
    return ExportResult(outdir, manifest, runner, notes)


def _fill_package(
    stage: Path,
    artifact: Path,
    v: Mapping[str, Any],
    by_batch: Mapping[int | None, Sequence[Mapping[str, np.ndarray]]],
    default_batch: int | None,
    manifest: dict[str, Any],
    timings: dict[str, float],
    state: dict[str, Any],
    say: Callable[[str], None],
) -> None:
    """model.pt2: a model per batch size (one without a serving profile), each checked."""
    vid = str(v["id"])
    device = manifest["device"]
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ExportError(f"variant {vid} runs on {device}, and there is no GPU here")
    say(f"lowering {vid}")
    feeds = by_batch[default_batch]
    lowered = lower_variant(artifact, device, v.get("backend_options") or {}, feeds[0])
    programs = {
        model_name(b, default_batch): (program_at(lowered, fs[0]), b, fs)
        for b, fs in by_batch.items()
        if b != default_batch
    }
    say("exporting with torch.export and compiling with AOTInductor")
    start = time.perf_counter()
    others = {name: (lo, fs[0]) for name, (lo, _b, fs) in programs.items()}
    package(lowered, feeds[0], stage / PACKAGE_NAME, vid, others)
    timings["export_and_compile"] = time.perf_counter() - start
    manifest["artifact"] = PACKAGE_NAME
    manifest["outputs"] = lowered.output_names
    say("checking the package against the variant on the held-out inputs")
    checks = {DEFAULT_MODEL: (lowered, default_batch, feeds), **programs}
    manifest["models"] = {}
    manifest["parity"] = {}
    for name, (lo, b, fs) in checks.items():
        expected = [lo.session.run(feed) for feed in fs]
        got = package_outputs(stage / PACKAGE_NAME, lo, fs, name)
        parity = compare(expected, got, _compute_dtype(v))
        manifest["models"][name] = {
            "batch": b,
            "inputs": [{"name": n, "shape": list(a.shape)} for n, a in fs[0].items()],
        }
        key = "package" if name == DEFAULT_MODEL else f"package:{name}"
        manifest["parity"][key] = parity
        if not parity["passed"]:
            worst = next(n for n, o in parity["outputs"].items() if not o["passed"])
            raise ParityError(
                f"variant {vid}: the package's output {worst!r} ({name}) differs from the "
                f"variant's beyond tolerance (max |diff| "
                f"{parity['outputs'][worst].get('max_abs')}); nothing written"
            )
        if name == DEFAULT_MODEL:
            state.update(lowered=lo, expected=expected)


def _fill_runner(
    stage: Path,
    build_dir: str | Path | None,
    feeds: Sequence[Mapping[str, np.ndarray]],
    manifest: dict[str, Any],
    timings: dict[str, float],
    state: dict[str, Any],
    quick: bool,
    say: Callable[[str], None],
) -> None:
    import shutil

    from lepton_compile.native_build import build_runner as build

    say("building lepton-run with CMake")
    built = build(build_dir)
    timings["runner_build"] = built.seconds
    (stage / "bin").mkdir()
    runner = stage / "bin" / "lepton-run"
    shutil.copy2(built.path, runner)
    manifest["runner"] = {"file": "bin/lepton-run", **built.to_dict()}
    package_path = stage / PACKAGE_NAME
    first = stage / manifest["input_files"][0]
    saved = stage / ".runner-outputs.lt"
    say("running lepton-run")
    run_runner(runner, package_path, first, "--save-outputs", str(saved))
    outs = rawtensors.read(saved)
    saved.unlink()
    parity = compare(state["expected"][:1], [outs], None)
    manifest["parity"]["runner"] = parity
    if not parity["passed"]:
        raise ParityError("lepton-run's outputs differ from the variant's beyond tolerance")
    say("timing lepton-run and the Python session")
    bench = run_runner(runner, package_path, first, "--bench", *(["--quick"] if quick else []))
    session = state["lowered"].session
    feed = feeds[0]
    python = time_python(lambda: session.run(feed), quick)
    runner_p50 = bench["bench"]["latency_ms"]["p50"]
    python_p50 = python["latency_ms"]["p50"]
    manifest["latency"] = {
        "runner": bench["bench"],
        "python_session": python,
        "runner_over_python_p50": round(runner_p50 / python_p50, 4) if python_p50 else None,
        "note": "one run, same warmup and window rules; python_session is lepton-compile's "
        "LeptonSession.run (numpy in and out), runner is lepton-run (AOTInductor package)",
    }
    if not math.isfinite(runner_p50):
        raise ExportError("lepton-run --bench reported no latency")
