"""Tier 3: small models end to end on the lepton backend with kernels="triton" forced.

Models (benchmarks/e2e_models.py): a conv net with a residual and a depthwise layer, an MLP
and an attention block, built by lepton-compile's recipes: fused-lepton (ai.lepton fused
ops) in fp32/fp16/bf16, int8-qdq, fp8 and int4-weight. Every fused or quantized layer our
kernels support must run on them; the launches per kernel family are counted.

Tolerances, max |lepton - onnxruntime| over the output's largest magnitude:

    fp32   1e-4   against onnxruntime on the original fp32 model
    fp16   1e-2   compute dtype fp16 (I/O fp32), same reference
    bf16   5e-2   bf16 keeps 8 significand bits (the interpreter's bf16 tiles are upcast)
    int8   2e-2   against onnxruntime on the quantized model, optimizations off: one
                  quantization step where a float rounding crosses a rounding boundary
    fp8    2e-2   likewise
    int4   1e-3   exact dequantized weights, fp32 accumulation in another order
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kernel_test_env import DEVICE, ON_GPU, e2e_models, load

common = load("_common")
load("gemm")
load("conv")
load("gemm_scaled")
load("gemm_int4")

from lepton_compile.passes import ort_session  # noqa: E402
from lepton_compile.runtime.lepton import LeptonSession  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TOL = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 5e-2, "int8": 2e-2, "fp8": 2e-2, "int4": 1e-3}
# Kernel families our layers launch, per op of describe()'s records.
FAMILIES = {
    "FusedConv": ("conv2d", "depthwise"),
    "FusedGemm": ("gemm",),
    "FusedMatMul": ("gemm",),
    "MatMulNBits": ("int4",),
}


E = e2e_models()
_BUILT: dict[tuple[str, str], tuple] = {}


def _variant(model: str, recipe: str):
    if (model, recipe) not in _BUILT:
        m = E.MODELS[model]()
        calibration = [E.example_feeds(m, seed=s) for s in range(1, 4)]
        _BUILT[(model, recipe)] = (m, E.recipe_variant(recipe, m, calibration))
    original, variant = _BUILT[(model, recipe)]
    return original, variant, E.example_feeds(original, seed=0)


def _ort(model, feeds, optimize: bool = True) -> np.ndarray:
    level = "all" if optimize else "disable"
    return ort_session.session(model, optimization=level).run(None, feeds)[0]


# On a GPU the forced kernel also runs once at load (autotuning before any capture).
RUNS_PER_LOAD = 2 if ON_GPU else 1


def _run(model, options: dict, feeds) -> tuple[np.ndarray, dict, dict[str, int]]:
    """Output, describe() and the kernel launches of one load-and-run (forced triton).

    CUDA graphs off: a replay launches nothing the counters could see.
    """
    common.reset_launch_counts()
    opts = {"kernels": "triton", "tf32": True, "cuda_graphs": False, **options}
    sess = LeptonSession(model, DEVICE, opts)
    out = sess.run(feeds)[sess.output_names[0]]
    return out, sess.describe(), common.launch_counts()


def _rel(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape
    return float(np.abs(got.astype(np.float64) - ref).max() / np.abs(ref).max())


def _check_launches(info: dict, launches: dict[str, int], kind: str = "") -> None:
    """Every layer on our kernels, and one launch of its kernel per layer per run."""
    layers = info["kernel_layers"]
    assert layers
    expected: dict[tuple[str, ...], int] = {}
    for rec in layers:
        if "depthwise" in rec.get("unavailable", {}).get("triton", ""):
            assert rec["choice"] == "torch"  # no int8 depthwise kernel: int32 taps in torch
            continue
        assert rec["choice"] == "triton" and rec["source"] == "forced", rec
        fams = FAMILIES.get(rec["op"]) or ((kind,) if kind else ())
        expected[fams] = expected.get(fams, 0) + 1
    for fams, n in expected.items():
        assert sum(launches.get(f, 0) for f in fams) == n * RUNS_PER_LOAD, (fams, launches)
    assert info["kernel_summary"].startswith(f"{sum(expected.values())} of {len(layers)} ")


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("model", ["convnet", "mlp", "attention"])
def test_fused_models_on_our_kernels(model: str, dtype: str) -> None:
    original, fused, feeds = _variant(model, "fused-lepton")
    got, info, launches = _run(fused, {"dtype": dtype}, feeds)
    err = _rel(got, _ort(original, feeds))
    assert err <= TOL[dtype], f"{model} {dtype}: {err:.3g}"
    _check_launches(info, launches)


@pytest.mark.parametrize(
    "model, recipe, kind",
    [
        ("convnet", "int8-qdq", "w8a8"),
        ("mlp", "int8-qdq", "w8a8"),
        ("attention", "int8-gpu", "w8a8"),
        ("convnet", "fp8", "fp8"),
        ("attention", "fp8", "fp8"),
        ("mlp", "int4-weight", "int4"),
        ("attention", "int4-weight", "int4"),
    ],
)
def test_quantized_models_on_our_kernels(model: str, recipe: str, kind: str) -> None:
    _, qmodel, feeds = _variant(model, recipe)
    got, info, launches = _run(qmodel, {}, feeds)
    tol = TOL["int8" if kind == "w8a8" else kind]
    err = _rel(got, _ort(qmodel, feeds, optimize=False))
    assert err <= tol, f"{model} {recipe}: {err:.3g}"
    _check_launches(info, launches, kind)
    assert launches.get(kind, 0) >= 1


def test_fp16_quantized_layers_follow_the_compute_dtype() -> None:
    _, qmodel, feeds = _variant("mlp", "int8-qdq")
    got, info, launches = _run(qmodel, {"dtype": "fp16"}, feeds)
    assert got.dtype == np.float32  # I/O as declared
    assert _rel(got, _ort(qmodel, feeds, optimize=False)) <= 5e-2
    assert launches.get("w8a8") == 3 * RUNS_PER_LOAD
