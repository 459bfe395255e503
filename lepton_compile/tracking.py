"""Logging a compile run to MLflow: one MLflow run per compile, its figures, report and model.

MLflow's own API is used directly, with no layer of ours between: it is what MLOps pipelines
already call, it writes to whatever tracking store a URI names (a server, a database, a
folder), and its ONNX flavor stores best.onnx as a model that ``mlflow.onnx.load_model``,
``mlflow.pyfunc`` and MLflow's serving load back. mlflow is an optional dependency
(``pip install "lepton-compile[mlflow]"``), imported only when a run is logged.

What one run holds (names sanitized to MLflow's key charset):

- params: model file and sha256, objective, recipes, backends, devices, constraints
  (max accuracy drop, max latency), batch sizes, inputs, the measurement protocol, and the
  device record flattened (``device.cpu.model``, ``device.gpus.0.name``, ...);
- metrics, per variant: ``<variant>.latency_p50_ms``, ``.latency_p99_ms``,
  ``.latency_mean_ms``, ``.latency_ci95_ms``, ``.energy_j_per_inference``, ``.energy_ci95_j``,
  ``.accuracy_drop``, ``.size_bytes``, the paired ``.latency_ratio`` and ``.energy_ratio`` to
  the original; with a serving profile ``<variant>.serving.*`` with the batch size as the step;
  the pick as ``best.*`` with ``best.latency_ratio``, ``best.energy_ratio``,
  ``best.size_ratio`` and ``best.latency_speedup``; the serving recommendation as
  ``serving.batch``, ``serving.energy_j_per_inference``, ``serving.p99_ms``;
- tags: ``lepton.meter`` (estimated, nvml or rapl), ``lepton.device``, ``lepton.best_variant``,
  ``lepton.version``, ``lepton.constraints_met``, each variant's ``<variant>.status`` and
  ``<variant>.energy_method``, ``serving.variant``, and ``lepton.model_uri`` of the model;
- artifacts: report.json, report.md, report.html, and best.onnx as an MLflow ONNX model
  (``model``) with a signature and an input example made from the report's input specs.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from lepton_compile.errors import InputError, LeptonError
from lepton_compile.options import DEFAULT_EXPERIMENT
from lepton_compile.passes.errors import one_line
from lepton_compile.report import device_line

if TYPE_CHECKING:
    import numpy as np

    from lepton_compile.engine import CompileResult
    from lepton_compile.options import CompileOptions

__all__ = ["DEFAULT_EXPERIMENT", "TrackingError", "input_example", "log_compile", "log_to_mlflow"]

_log = logging.getLogger(__name__)

REPORT_FILES = ("report.json", "report.md", "report.html")
MODEL_NAME = "model"
# MLflow's limits (mlflow.utils.validation): key length, param and tag values, batch sizes.
MAX_KEY_CHARS = 250
MAX_PARAM_CHARS = 6000
MAX_TAG_CHARS = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
# A server that does not answer a TCP connect in this time is reported as unreachable, instead
# of MLflow's HTTP retries (minutes with its defaults) holding up a finished compile.
CONNECT_TIMEOUT_S = 5.0
_KEY_BAD = re.compile(r"[^A-Za-z0-9_.\- ]")


class TrackingError(LeptonError):
    """The run could not be logged (mlflow missing, store unreachable or refusing)."""


def log_to_mlflow(
    source: CompileResult | str | Path,
    tracking_uri: str | None = None,
    experiment: str | None = None,
    *,
    run_name: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> str:
    """Log one compile run to MLflow and return the MLflow run id.

    ``source`` is a ``CompileResult``, an output directory of lepton-compile, or the path of
    its report.json (best.onnx beside it is logged as the model, when it is there).
    ``tracking_uri`` None is MLflow's default (``MLFLOW_TRACKING_URI``, else its local
    store); ``experiment`` None is "lepton-compile". ``params`` are logged beside those the
    report gives (the report's win on a clash). Inside an active MLflow run, the run is logged
    as its child. Raises ``InputError`` when ``source`` is not a report, ``TrackingError``
    when mlflow is not installed or the tracking store cannot be reached or written.
    """
    if tracking_uri is not None and not str(tracking_uri).strip():
        raise InputError("the MLflow tracking URI is empty")
    with _report_files(source) as (report, files, best):
        try:
            import mlflow
        except ImportError:
            raise TrackingError(
                "mlflow is not installed (pip install 'lepton-compile[mlflow]')"
            ) from None
        _check_reachable(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        try:
            with _using_tracking_uri(mlflow, tracking_uri):
                return _log_run(
                    mlflow,
                    report,
                    files,
                    best,
                    experiment or DEFAULT_EXPERIMENT,
                    run_name or Path(str(report["model"].get("path", "model"))).stem,
                    params or {},
                )
        except LeptonError:
            raise
        except Exception as e:  # MlflowException, requests', SQLAlchemy's and OS errors alike
            raise TrackingError(f"{type(e).__name__}: {one_line(e)}") from e


def log_compile(
    source: CompileResult | str | Path,
    options: CompileOptions,
    warn: Callable[[str], None] | None = None,
) -> str | None:
    """``compile(..., mlflow=...)``: log the run as ``options`` say; never raises.

    Tracking is a side job of a finished compile: a failure to log (mlflow missing, server
    unreachable) is one warning line through ``warn`` (default: this module's logger), and
    the compile's result and exit code stand. Returns the run id, or None when not logged.
    """
    uri = None if options.mlflow is True else str(options.mlflow)
    extra = {
        "max_latency_ms": options.max_latency_ms,
        "batch_sizes": ",".join(str(b) for b in options.batch_sizes or ()) or None,
        "quick": options.quick,
    }
    try:
        return log_to_mlflow(source, uri, options.mlflow_experiment, params=extra)
    except Exception as e:  # any failure to log, never the compile's failure
        where = uri or os.environ.get("MLFLOW_TRACKING_URI") or "MLflow's default store"
        (warn or _log.warning)(f"MLflow run not logged to {where}: {one_line(e)}")
        return None


def input_example(inputs: list[dict[str, Any]], seed: int = 0) -> dict[str, np.ndarray]:
    """One feed from report["model"]["inputs"] (name, dtype, shape): a symbolic dim is 1,
    floats are standard normal, integers 0 (a valid index in any table) and booleans False."""
    import numpy as np

    rng = np.random.default_rng(seed)
    feed = {}
    for spec in inputs:
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in spec.get("shape") or ()]
        dtype = np.dtype(str(spec["dtype"]))
        if np.issubdtype(dtype, np.floating):
            feed[spec["name"]] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[spec["name"]] = np.zeros(shape, dtype=dtype)
    return feed


def _check_reachable(uri: str | None) -> None:
    """Raise TrackingError when an http(s) tracking server does not accept a connection."""
    if not uri:
        return
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return
    host = parsed.hostname
    # Through a proxy the server itself may be out of our reach but not of MLflow's.
    if urllib.request.getproxies() and not urllib.request.proxy_bypass(host):
        return
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or one_line(e)
        raise TrackingError(f"the tracking server is not reachable ({reason})") from None


@contextmanager
def _report_files(
    source: CompileResult | str | Path,
) -> Iterator[tuple[dict[str, Any], list[Path], Path | None]]:
    """The report, its files to log, and best.onnx (None when absent)."""
    if not isinstance(source, (str, os.PathLike)):  # a CompileResult (not imported: it logs us)
        from lepton_compile.report_files import write_all

        # Only the report files are written: best.onnx is read where the run left it.
        with tempfile.TemporaryDirectory(prefix="lepton-mlflow-") as tmp:
            write_all(source.report, Path(tmp))
            yield source.report, [Path(tmp) / f for f in REPORT_FILES], source.best.artifact
        return
    path = Path(source)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise InputError(f"{path}: no such report file (give an output directory or report.json)")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a JSON report ({one_line(e, 200)})") from None
    from lepton_compile.report import SCHEMA

    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise InputError(f"{path}: not a lepton-compile report (schema is not {SCHEMA})")
    files = [path.parent / f for f in REPORT_FILES if (path.parent / f).is_file()]
    best = path.parent / str((report.get("best") or {}).get("artifact") or "best.onnx")
    yield report, files, best if best.is_file() else None


@contextmanager
def _using_tracking_uri(mlflow: Any, uri: str | None) -> Iterator[None]:
    """MLflow's global tracking URI set to ``uri`` for the block, then put back as it was.

    ``mlflow.onnx.log_model`` logs to the active run of MLflow's global tracking URI; it has
    no client form. ``set_tracking_uri`` also sets MLFLOW_TRACKING_URI, which the user's own
    value must survive. A URI that merely came from that variable is not set back as the
    global one, which would outrank a later change of the variable.
    """
    if uri is None:
        yield
        return
    env = os.environ.get("MLFLOW_TRACKING_URI")
    current = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    explicit = current if current != env else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(explicit)
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _log_run(
    mlflow: Any,
    report: dict[str, Any],
    files: list[Path],
    best: Path | None,
    experiment: str,
    run_name: str,
    extra: Mapping[str, Any],
) -> str:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp_id = _experiment_id(client, experiment)
    params = {**_clean_params(extra), **_params(report)}
    metrics, steps = _metrics(report)
    tags = _tags(report)
    # Inside the user's own run (a pipeline step), this compile is its child run.
    nested = mlflow.active_run() is not None
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, nested=nested) as run:
        run_id = run.info.run_id
        now = _now_ms()
        plist = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(plist), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=plist[i : i + PARAMS_PER_BATCH])
        tlist = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(tlist), PARAMS_PER_BATCH):
            client.log_batch(run_id, tags=tlist[i : i + PARAMS_PER_BATCH])
        mlist = [Metric(k, v, now, 0) for k, v in metrics.items()]
        mlist += [Metric(k, v, now, step) for k, step, v in steps]
        for i in range(0, len(mlist), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=mlist[i : i + METRICS_PER_BATCH])
        for f in files:
            client.log_artifact(run_id, str(f))
        if best is not None:
            info = _log_model(best, report)
            client.set_tag(run_id, "lepton.model_uri", info.model_uri)
    return run_id


def _experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except Exception:
            # Created meanwhile by another run of ours: use it.
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it or name another")
    return exp.experiment_id


def _log_model(best: Path, report: dict[str, Any]) -> Any:
    """best.onnx as an MLflow ONNX model with an input example and the signature it gives."""
    import mlflow.onnx
    import onnx
    from mlflow.models import infer_signature

    model = onnx.load(str(best))
    try:
        example: dict[str, Any] | None = input_example(report["model"]["inputs"])
    except (KeyError, TypeError, ValueError):
        example = None  # a dtype numpy has no name for: the model goes without an example
    signature, runs = None, False
    if example is not None:
        try:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(best), providers=["CPUExecutionProvider"])
            names = [o.name for o in sess.get_outputs()]
            outputs = dict(zip(names, sess.run(None, example), strict=True))
            signature = infer_signature(example, outputs)
            runs = True
        except Exception:
            # ai.lepton ops (the lepton backend's variants) do not run in onnxruntime: the
            # signature then describes the inputs only.
            signature = infer_signature(example)
    kwargs: dict[str, Any] = {} if runs else {"validate_serving_input": False}
    # Served on the device the pick was measured on: CUDA only where it ran on CUDA.
    best_variant: dict[str, Any] = next(
        (v for v in report.get("variants") or [] if v.get("id") == report["best"].get("id")), {}
    )
    providers = ["CPUExecutionProvider"]
    if best_variant.get("device") == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    return mlflow.onnx.log_model(
        model,
        name=MODEL_NAME,
        signature=signature,
        input_example=example,
        onnx_execution_providers=providers,
        **kwargs,
    )


def _params(report: dict[str, Any]) -> dict[str, str]:
    variants = report.get("variants") or []
    model = report.get("model") or {}
    constraints = report.get("constraints") or {}
    serving = report.get("serving") or {}
    rec = serving.get("recommendation") or {}
    inputs = report.get("inputs") or {}
    measurement = report.get("measurement") or {}
    raw: dict[str, Any] = {
        "model": Path(str(model.get("path", ""))).name or None,
        "model.sha256": model.get("sha256"),
        "objective": report.get("objective"),
        "recipes": _unique((v.get("recipe") or {}).get("name") for v in variants),
        "backends": _unique(v.get("backend") for v in variants),
        "devices": _unique(v.get("device") for v in variants),
        "max_accuracy_drop": constraints.get("max_accuracy_drop"),
        "max_latency_ms": constraints.get("max_latency_ms", rec.get("max_latency_ms")),
        "batch_sizes": ",".join(str(b) for b in serving.get("batch_sizes") or ()) or None,
        "inputs": inputs.get("source"),
        "calibration_samples": inputs.get("calibration_samples"),
        "eval_samples": inputs.get("eval_samples"),
        "meter": (measurement.get("meter") or {}).get("name"),
    }
    raw.update(_flatten(measurement.get("protocol") or {}, "protocol"))
    device = {k: v for k, v in (report.get("device") or {}).items() if k != "at_start"}
    raw.update(_flatten(device, "device"))
    return _clean_params(raw)


def _metrics(report: dict[str, Any]) -> tuple[dict[str, float], list[tuple[str, int, float]]]:
    """Metrics at step 0, and the serving profile's as (key, batch size as step, value)."""
    out: dict[str, float] = {}
    steps: list[tuple[str, int, float]] = []
    by_id = {v.get("id"): v for v in report.get("variants") or []}
    for vid, v in by_id.items():
        prefix = _key(str(vid))
        for name, value in _figures(v).items():
            _put(out, f"{prefix}.{name}", value)
        for batch, point in (v.get("serving") or {}).items():
            if point.get("status") != "ok" or not str(batch).isdigit():
                continue
            per_inf = point.get("energy_j_per_inference") or {}
            for name, figure in (
                ("energy_j_per_inference", per_inf.get("mean")),
                ("latency_p99_ms", (point.get("latency_ms") or {}).get("p99")),
                ("throughput_per_s", point.get("throughput_per_s")),
            ):
                if _finite(figure):
                    steps.append((_key(f"{prefix}.serving.{name}"), int(batch), float(figure)))
    best_rec = report.get("best") or {}
    best = by_id.get(best_rec.get("id"))
    base = by_id.get(report.get("baseline"))
    if best is not None:
        figures = _figures(best)
        for name, value in figures.items():
            _put(out, f"best.{name}", value)
        # The ratio to the original: the paired one where racing measured it, else of the means.
        if "latency_ratio" not in figures and best_rec.get("latency_speedup"):
            _put(out, "best.latency_ratio", 1.0 / best_rec["latency_speedup"])
        if "energy_ratio" not in figures:
            _put(out, "best.energy_ratio", best_rec.get("energy_ratio"))
        _put(out, "best.latency_speedup", best_rec.get("latency_speedup"))
        if base is not None and base.get("size_bytes") and best.get("size_bytes") is not None:
            _put(out, "best.size_ratio", best["size_bytes"] / base["size_bytes"])
        if best is base:
            # The original is its own reference: its ratios are exactly 1.
            for name in ("latency_ratio", "energy_ratio"):
                out.setdefault(f"best.{name}", 1.0)
    rec = (report.get("serving") or {}).get("recommendation") or {}
    _put(out, "serving.batch", rec.get("batch"))
    _put(out, "serving.energy_j_per_inference", rec.get("energy_j_per_inference"))
    _put(out, "serving.p99_ms", rec.get("p99_ms"))
    return out, steps


def _figures(v: dict[str, Any]) -> dict[str, float]:
    lat = v.get("latency_ms") or {}
    en = v.get("energy_j") or {}
    ratios = v.get("ratio_to_original") or {}
    raw: dict[str, Any] = {
        "latency_p50_ms": lat.get("p50"),
        "latency_p99_ms": lat.get("p99"),
        "latency_mean_ms": lat.get("mean"),
        "latency_ci95_ms": lat.get("ci95"),
        "energy_j_per_inference": en.get("per_inference"),
        "energy_ci95_j": en.get("ci95"),
        "accuracy_drop": (v.get("accuracy") or {}).get("drop"),
        "size_bytes": v.get("size_bytes"),
        "latency_ratio": (ratios.get("latency") or {}).get("ratio"),
        "energy_ratio": (ratios.get("energy") or {}).get("ratio"),
    }
    return {k: float(x) for k, x in raw.items() if _finite(x)}


def _tags(report: dict[str, Any]) -> dict[str, str]:
    variants = report.get("variants") or []
    best_id = (report.get("best") or {}).get("id")
    best: dict[str, Any] = next((v for v in variants if v.get("id") == best_id), {})
    meter = ((report.get("measurement") or {}).get("meter") or {}).get("name")
    rec = (report.get("serving") or {}).get("recommendation") or {}
    raw: dict[str, Any] = {
        "lepton.meter": meter or (best.get("energy_j") or {}).get("method"),
        "lepton.device": device_line(report.get("device") or {}),
        "lepton.device_key": (report.get("device") or {}).get("key"),
        "lepton.best_variant": best_id,
        "lepton.best_backend": best.get("backend"),
        "lepton.version": (report.get("tool") or {}).get("version"),
        "lepton.schema": report.get("schema"),
        "lepton.constraints_met": (report.get("constraints") or {}).get("met"),
        "lepton.decided": (report.get("best") or {}).get("decided"),
        "serving.variant": rec.get("variant"),
        "serving.recommendation": rec.get("text"),
    }
    for v in variants:
        prefix = _key(str(v.get("id")))
        raw[f"{prefix}.status"] = v.get("status")
        raw[f"{prefix}.energy_method"] = (v.get("energy_j") or {}).get("method")
    return {_key(k): _text(x, MAX_TAG_CHARS) for k, x in raw.items() if x is not None and x != ""}


def _flatten(d: Any, prefix: str) -> dict[str, Any]:
    """Nested dicts and lists of dicts as dotted keys; lists of plain values comma-joined."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}"))
    elif isinstance(d, list) and any(isinstance(x, (dict, list)) for x in d):
        for i, v in enumerate(d):
            out.update(_flatten(v, f"{prefix}.{i}"))
    elif isinstance(d, list):
        out[prefix] = ",".join(str(x) for x in d) or None
    else:
        out[prefix] = d
    return out


def _clean_params(raw: Mapping[str, Any]) -> dict[str, str]:
    """Keys in MLflow's charset (first of a clash kept), values as bounded text, None dropped."""
    out: dict[str, str] = {}
    for k, v in raw.items():
        if v is None or v == "":
            continue
        out.setdefault(_key(k), _text(v, MAX_PARAM_CHARS))
    return out


def _key(name: str) -> str:
    # MLflow takes alphanumerics, '_', '-', '.', ' ', '/' (and ':' off Windows); '/' makes a key
    # a path MLflow may refuse ('a/../b'), so it is replaced too, as is every other character.
    return _KEY_BAD.sub("_", name)[:MAX_KEY_CHARS] or "_"


def _text(value: Any, limit: int) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _unique(values: Any) -> str | None:
    return ",".join(dict.fromkeys(str(v) for v in values if v)) or None


def _finite(x: Any) -> TypeGuard[float]:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _put(out: dict[str, float], key: str, value: Any) -> None:
    if _finite(value):
        out[_key(key)] = float(value)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
