"""Integration: the default pipeline over the ONNX backend test models, outputs unchanged on ORT.

Sources, all shipped in the onnx wheel:
  node    `onnx.backend.test.loader.load_model_tests(kind="node")`: one model per operator
          case, with its own input data (in memory since onnx 1.23);
  model   the on-disk model tests (`simple`, `pytorch-converted`, `pytorch-operator`):
          model.onnx with test_data_set_*/input_*.pb;
  light   `light_*.onnx`, real architectures with generated weights, on seeded inputs.

Each model runs on onnxruntime (CPU, ORT's optimizations off) before and after
`optimize(model)` with the default pipeline. Verification is off here: it would drop a
broken pass and hide the bug this test is meant to show. A model ORT cannot run as given
is skipped; every other one must hold (same outputs, per-dtype tolerances of
`passes.verify`). The work is spread over worker processes (spawned: ORT's thread pools
do not survive fork); LEPTON_NODE_TEST_WORKERS sets how many.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import glob
import logging
import multiprocessing
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest

LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODEL_KINDS = ("simple", "pytorch-converted", "pytorch-operator")

# A result row: (source, name, status, detail, what verification made of a failure).
HELD, SKIPPED, FAILED = "held", "skipped", "failed"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # onnxscript's folder logs every op it declines to fold; not news here.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def _node_cases() -> dict[str, object]:
    import numpy as np
    from onnx.backend.test import loader

    with np.errstate(all="ignore"):  # the case generators overflow on purpose
        return {c.name: c for c in loader.load_model_tests(kind="node")}


def _case_ids(node_cases: dict) -> list[tuple[str, str]]:
    """Every case, in a fixed order (each worker lists them and takes its share)."""
    from onnx.backend.test import loader

    ids = [("node", name) for name in sorted(node_cases)]
    for kind in MODEL_KINDS:
        for case in sorted(loader.load_model_tests(kind=kind), key=lambda c: c.name):
            ids.append(("model", str(case.model_dir)))
    ids += [("light", p) for p in sorted(glob.glob(str(LIGHT_DIR / "light_*.onnx")))]
    return ids


def _read_tensor(path: str) -> object:
    from onnx import numpy_helper

    tensor = onnx.TensorProto()
    tensor.ParseFromString(Path(path).read_bytes())
    return numpy_helper.to_array(tensor)


def _load(source: str, name: str, node_cases: dict) -> tuple[onnx.ModelProto, list[dict] | None]:
    """The model and its data sets as feeds by input name (None: generate inputs)."""
    if source == "node":
        case = node_cases[name]
        names = [vi.name for vi in case.model.graph.input]
        return case.model, [dict(zip(names, inputs, strict=False)) for inputs, _ in case.data_sets]
    if source == "model":
        model = onnx.load(os.path.join(name, "model.onnx"))
        names = [vi.name for vi in model.graph.input]
        feeds = []
        for data_dir in sorted(glob.glob(os.path.join(name, "test_data_set_*"))):
            files = sorted(
                glob.glob(os.path.join(data_dir, "input_*.pb")),
                key=lambda f: int(Path(f).stem.split("_")[1]),
            )
            feeds.append(dict(zip(names, map(_read_tensor, files), strict=False)))
        return model, feeds
    return onnx.load(name), None


def _run_case(source: str, name: str, node_cases: dict) -> tuple[str, str, str]:
    """(status, detail, what verification makes of a failure: "" when it held)."""
    from lepton_compile.passes import optimize
    from lepton_compile.passes.errors import one_line
    from lepton_compile.passes.verify import Reference

    model, feeds = _load(source, name, node_cases)
    references = [Reference.prepare(model, feeds=f) for f in feeds or [None]]
    skipped = next((r.skipped for r in references if r.skipped), None)
    if skipped:
        return SKIPPED, skipped, ""
    # The references hold the result to onnx.checker when the original passes it.
    try:
        result = optimize(model, verify=False, check=False)
        problem = next(filter(None, (r.check(result.model) for r in references)), None)
    except Exception as e:
        problem = f"optimize raised: {one_line(e)}"
    if problem is None:
        return HELD, "", ""
    # The same model through optimize's own verification (on generated inputs) must
    # come out holding, with the culprit dropped.
    try:
        verified = optimize(model)
        after = next(filter(None, (r.check(verified.model) for r in references)), None)
        dropped = ", ".join(verified.dropped) or "nothing"
        outcome = f"still differs: {after}" if after else "held"
        fixed = f"verification dropped {dropped}: {outcome}"
    except Exception as e:
        fixed = f"verification raised: {one_line(e)}"
    return FAILED, problem, fixed


def _run_shard(shard: int, shards: int) -> list[tuple[str, str, str, str, str]]:
    import numpy as np

    out = []
    with _quiet():
        node_cases = _node_cases()
        ids = _case_ids(node_cases)
        for source, name in ids[shard::shards]:
            with np.errstate(all="ignore"):
                status, detail, fixed = _run_case(source, name, node_cases)
            label = name if source == "node" else os.path.basename(name).removesuffix(".onnx")
            out.append((source, label, status, detail, fixed))
    return out


def _workers() -> int:
    env = os.environ.get("LEPTON_NODE_TEST_WORKERS")
    if env:
        return max(1, int(env))
    return max(1, min(4, os.cpu_count() or 1))


def _skip_kind(reason: str) -> str:
    """The reason without its particulars, to group skips in the summary."""
    return re.split(r": | \(", reason, maxsplit=1)[0]


@pytest.fixture(scope="module")
def results() -> tuple[list[tuple[str, str, str, str, str]], float, int]:
    started = time.perf_counter()
    workers = _workers()
    rows = None
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        try:
            with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
                futures = [pool.submit(_run_shard, k, workers) for k in range(workers)]
                rows = [row for f in futures for row in f.result()]
        except (concurrent.futures.process.BrokenProcessPool, ImportError, AttributeError):
            # A worker could not import this module (another pytest import mode): serial.
            workers = 1
    if rows is None:
        rows = _run_shard(0, 1)
    return rows, time.perf_counter() - started, workers


@pytest.mark.slow
def test_default_pipeline_keeps_backend_test_outputs(results, capsys):
    rows, seconds, workers = results
    by_source: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for source, _, status, _, _ in rows:
        by_source[source][status] += 1
        by_source["all"][status] += 1
    lines = [
        f"default pipeline over the onnx backend test models ({seconds:.0f} s, "
        f"{workers} worker{'s' * (workers > 1)}):"
    ]
    for source in ("node", "model", "light", "all"):
        c = by_source[source]
        lines.append(
            f"  {source:<6} {sum(c.values()):5d} models: {c[HELD]:5d} held, "
            f"{c[SKIPPED]:4d} skipped (ORT cannot run the original), {c[FAILED]:3d} failed"
        )
    skips = collections.Counter(_skip_kind(d) for _, _, s, d, _ in rows if s == SKIPPED)
    for kind, n in skips.most_common():
        lines.append(f"    skipped {n:4d}: {kind}")
    failures = [
        f"{source}/{name}: {detail}\n    ({fixed})"
        for source, name, s, detail, fixed in rows
        if s == FAILED
    ]
    lines += [f"  FAILED {f}" for f in failures]
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert by_source["node"][HELD] >= 1000, "the node tests did not load or run"
    assert by_source["light"][HELD] == len(glob.glob(str(LIGHT_DIR / "light_*.onnx")))
    assert not failures, f"{len(failures)} models changed outputs:\n" + "\n".join(failures)


@pytest.mark.slow
def test_verification_repairs_what_the_pipeline_breaks(results):
    """Where the raw pipeline fails a model, optimize's verification must drop the culprit."""
    rows, _, _ = results
    failed = [(f"{source}/{name}", fixed) for source, name, s, _, fixed in rows if s == FAILED]
    if not failed:
        pytest.skip("the pipeline broke no model: nothing for verification to repair")
    unrepaired = [f"{name}: {fixed}" for name, fixed in failed if not fixed.endswith(": held")]
    assert not unrepaired, "\n".join(unrepaired)
