"""Tier 3: W8A8 int8 and FP8 (e4m3) scaled GEMMs with the fused epilogue vs torch references.

The interpreter runs int8 tl.dot exactly and, in triton 3.6 and 3.9, fp8 e4m3 tl.dot too
(products of e4m3 values are exact in fp32), so both are checked numerically here. What the
interpreter cannot show is Hopper's reduced-precision fp8 accumulation: `fast_accum` only
changes the compiled code (the compile gate builds both).
"""

from __future__ import annotations

import pytest
from kernel_test_env import DEVICE, ON_GPU, load

scaled = load("gemm_scaled")
common = load("_common")
import torch  # noqa: E402

FP8 = scaled.FP8_DTYPE
KINDS = {"w8a8": (torch.int8, scaled.w8a8_gemm), "fp8": (FP8, scaled.fp8_gemm)}
TOL = {torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2), torch.float32: (1e-5, 1e-4)}


def _operands(kind, m, k, n, *, per_tensor=False, seed=0):
    dtype = KINDS[kind][0]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k**0.5
    a, sa = scaled.quantize_rowwise(x, dtype)
    wq, sb = scaled.quantize_rowwise(w, dtype)
    if per_tensor:
        sa, sb = sa.max().reshape(1), sb.max().reshape(1)
    # (N, K) weight -> K-major (K, N) operand, the layout the 8-bit tensor cores want.
    return a.to(DEVICE), wq.to(DEVICE).t(), sa.to(DEVICE), sb.to(DEVICE), g


def _run(
    kind, m, k, n, *, out_dtype=torch.float16, bias=False, residual=False, per_tensor=False, **kw
):
    a, b, sa, sb, g = _operands(kind, m, k, n, per_tensor=per_tensor)
    bias_t = torch.randn(n, generator=g).to(out_dtype).to(DEVICE) if bias else None
    res_t = torch.randn(m, n, generator=g).to(out_dtype).to(DEVICE) if residual else None
    y = KINDS[kind][1](a, b, sa, sb, bias_t, res_t, out_dtype=out_dtype, **kw)
    kw.pop("split_k", None)
    kw.pop("fast_accum", None)
    ref = scaled.scaled_gemm_reference(a, b, sa, sb, bias_t, res_t, out_dtype=out_dtype, **kw)
    assert y.shape == ref.shape and y.dtype == out_dtype
    rtol, atol = TOL[out_dtype]
    torch.testing.assert_close(y.float(), ref.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(
    "epi",
    [
        dict(),
        dict(bias=True, activation="relu"),
        dict(bias=True, residual=True, activation="gelu", post_activation="sigmoid"),
        dict(
            residual=True,
            activation="silu",
            post_activation="clip",
            post_activation_params=(-1.0, 2.0),
        ),
    ],
    ids=["plain", "bias-relu", "bias-gelu-res-sigmoid", "silu-res-clip"],
)
def test_scaled_epilogues(kind, epi):
    _run(kind, 37, 70, 50, **epi)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("out_dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_scaled_out_dtypes_per_tensor_scales(kind, out_dtype):
    _run(
        kind,
        21,
        64,
        40,
        out_dtype=out_dtype,
        bias=True,
        residual=True,
        per_tensor=True,
        activation="relu",
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_scaled_split_k_and_tiny_shapes(kind):
    _run(kind, 12, 160, 36, bias=True, residual=True, activation="gelu", split_k=3)
    _run(kind, 1, 33, 5, bias=True, activation="tanh")


def test_fp8_fast_accum_runs():
    _run("fp8", 16, 64, 32, bias=True, fast_accum=True)


def test_w8a8_large_k_is_exact():
    # int32 accumulation: no rounding at all before the scales, even over a long K.
    a = torch.full((4, 1024), 127, dtype=torch.int8, device=DEVICE)
    b = torch.full((1024, 8), -127, dtype=torch.int8, device=DEVICE)
    one = torch.ones(1, device=DEVICE)
    y = scaled.w8a8_gemm(a, b, one, one, out_dtype=torch.float32)
    assert torch.all(y == -127 * 127 * 1024)


@pytest.mark.parametrize("dtype", [torch.int8, FP8], ids=str)
def test_quantize_rowwise_roundtrip(dtype):
    x = torch.randn(16, 64)
    q, s = scaled.quantize_rowwise(x, dtype)
    assert q.dtype == dtype and s.shape == (16,) and s.dtype == torch.float32
    err = (q.float() * s[:, None] - x).abs().max() / x.abs().max()
    assert err < (0.01 if dtype == torch.int8 else 0.07)


def test_scaled_input_checks(monkeypatch):
    a, b, sa, sb, _ = _operands("w8a8", 8, 32, 16)
    with pytest.raises(ValueError, match="expected torch.int8 for w8a8"):
        scaled.w8a8_gemm(a.float(), b, sa, sb)
    with pytest.raises(ValueError, match="a_scale has 3 elements, expected 8 or 1"):
        scaled.w8a8_gemm(a, b, sa[:3], sb)
    with pytest.raises(ValueError, match="b_scale must be float32"):
        scaled.w8a8_gemm(a, b, sa, sb.half())
    with pytest.raises(ValueError, match="inner dims differ"):
        scaled.w8a8_gemm(a, b[:16], sa, sb)
    with pytest.raises(ValueError, match="expected .*float8_e4m3fn for fp8"):
        scaled.fp8_gemm(a, b, sa, sb)
    f8 = _operands("fp8", 8, 32, 16)
    if not ON_GPU:  # the capability check, as on an Ampere GPU
        ampere = common.DeviceFacts(arch=80, smem=166912, sms=108)
        monkeypatch.setattr(scaled, "device_facts", lambda device: ampere)
        with pytest.raises(ValueError, match="compute capability 8.9"):
            scaled.fp8_gemm(*f8[:4])


def test_scaled_configs():
    for arch in (90, 80):
        for c in scaled.get_configs(arch):
            assert c.kwargs["BLOCK_K"] >= 32, c  # 8-bit mma K
            assert common.smem_estimate(c, 1, 1) <= (232448 if arch == 90 else 166912), c
    assert len(scaled.get_configs("interpreter")) == 1
