"""Tier 3: fp16/bf16/fp32 GEMM with the fused epilogue against the torch reference."""

from __future__ import annotations

import pytest
from kernel_test_env import DEVICE, ON_GPU, load

gemm_mod = load("gemm")
common = load("_common")
import torch  # noqa: E402

gemm, gemm_reference = gemm_mod.gemm, gemm_mod.gemm_reference

DTYPES = [torch.float16, torch.bfloat16, torch.float32]
# Output tolerance: fp16 rounding; bf16 keeps 8 bits (and the interpreter truncates where a
# GPU rounds to nearest); fp32 inputs run TF32 on a GPU.
TOL = {
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
    torch.float32: ((5e-3, 5e-3) if ON_GPU else (1e-5, 1e-5)),
}
EPILOGUES = {
    "plain": dict(),
    "bias-relu": dict(bias=True, activation="relu"),
    "bias-gelu-res-sigmoid": dict(
        bias=True, residual=True, activation="gelu", post_activation="sigmoid"
    ),
    "silu-res": dict(residual=True, activation="silu"),
    "clip-res-leaky": dict(
        bias=True,
        residual=True,
        activation="clip",
        activation_params=(-0.5, 1.5),
        post_activation="leaky_relu",
        post_activation_params=(0.2,),
    ),
    "tanh-hardswish": dict(
        bias=True, residual=True, activation="tanh", post_activation="hardswish"
    ),
    "hard_sigmoid": dict(activation="hard_sigmoid", activation_params=(0.3, 0.4)),
}


def _operands(m, k, n, dtype, *, bias=False, residual=False, seed=0, lead=()):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(*lead, m, k, generator=g).to(dtype).to(DEVICE)
    b = (torch.randn(k, n, generator=g) / k**0.5).to(dtype).to(DEVICE)
    bias_t = torch.randn(n, generator=g).to(dtype).to(DEVICE) if bias else None
    res_t = torch.randn(*lead, m, n, generator=g).to(dtype).to(DEVICE) if residual else None
    return a, b, bias_t, res_t


def _check(y, ref, dtype):
    rtol, atol = TOL[dtype]
    assert y.shape == ref.shape and y.dtype == ref.dtype
    torch.testing.assert_close(y.float(), ref.float(), rtol=rtol, atol=atol)


def _run(m, k, n, dtype, epi, **kw):
    epi = dict(epi)
    a, b, bias, res = _operands(
        m,
        k,
        n,
        dtype,
        bias=epi.pop("bias", False),
        residual=epi.pop("residual", False),
        lead=kw.pop("lead", ()),
    )
    if kw.pop("b_col_major", False):
        b = b.t().contiguous().t()
    y = gemm(a, b, bias, res, **epi, **kw)
    ref = gemm_reference(a, b, bias, res, **epi, out_dtype=kw.get("out_dtype"))
    _check(y, ref, kw.get("out_dtype") or dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("epi", list(EPILOGUES), ids=str)
def test_gemm_epilogues(dtype, epi):
    # 37x70x50: partial tiles in M and N, K not a multiple of BLOCK_K (masked K loop).
    _run(37, 70, 50, dtype, EPILOGUES[epi])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m,k,n", [(1, 33, 17), (64, 64, 96), (5, 8, 3)])
def test_gemm_shapes(dtype, m, k, n):
    _run(m, k, n, dtype, EPILOGUES["bias-gelu-res-sigmoid"])


@pytest.mark.parametrize("split_k", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_gemm_split_k(split_k, dtype):
    # 7 K-blocks over 3 splits: uneven shares, the last one partial.
    _run(20, 200, 45, dtype, EPILOGUES["clip-res-leaky"], split_k=split_k)


def test_gemm_auto_split_k_small_m():
    # Few output tiles, long K: the launcher splits K on its own (interpreter: 4 "SMs").
    a, b, bias, res = _operands(16, 256, 16, torch.float16, bias=True, residual=True)
    tiles = 1
    assert common.pick_split_k(tiles, 256 // 32, common.num_sms(a.device)) > 1 or ON_GPU
    y = gemm(a, b, bias, res, activation="relu")
    _check(y, gemm_reference(a, b, bias, res, activation="relu"), torch.float16)


def test_gemm_b_column_major_and_batched_a():
    _run(9, 40, 24, torch.float16, EPILOGUES["bias-relu"], b_col_major=True)
    _run(6, 40, 24, torch.float16, EPILOGUES["bias-gelu-res-sigmoid"], lead=(2,))


@pytest.mark.parametrize(
    "dtype,out_dtype",
    [
        (torch.float16, torch.float32),
        (torch.bfloat16, torch.float16),
        (torch.float32, torch.bfloat16),
    ],
    ids=str,
)
def test_gemm_out_dtype(dtype, out_dtype):
    _run(19, 48, 33, dtype, EPILOGUES["bias-relu"], out_dtype=out_dtype)


def test_gemm_mixed_epilogue_dtypes():
    a, b, _, _ = _operands(8, 32, 16, torch.float16)
    bias = torch.randn(16, device=DEVICE)  # fp32 bias with fp16 operands
    res = torch.randn(8, 16, device=DEVICE, dtype=torch.bfloat16).t().contiguous().t()
    y = gemm(a, b, bias, res, activation="relu")
    _check(y, gemm_reference(a, b, bias, res, activation="relu"), torch.float16)


def test_gemm_empty():
    a, b, _, _ = _operands(0, 16, 8, torch.float16)
    assert gemm(a, b).shape == (0, 8)


def test_gemm_input_checks():
    a, b, _, _ = _operands(8, 16, 12, torch.float16)
    with pytest.raises(ValueError, match="b has dtype"):
        gemm(a, b.float())
    with pytest.raises(ValueError, match="a has dtype int8"):
        gemm(a.to(torch.int8), b.to(torch.int8))
    with pytest.raises(ValueError, match="inner dims differ"):
        gemm(a, b[:8])
    with pytest.raises(ValueError, match=r"bias has shape \(11,\)"):
        gemm(a, b, torch.zeros(11, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="residual has shape"):
        gemm(a, b, None, torch.zeros(8, 11, dtype=torch.float16, device=DEVICE))
    with pytest.raises(ValueError, match="one dimension must have stride 1"):
        gemm(a, torch.zeros(16, 24, dtype=torch.float16, device=DEVICE)[::2, ::2])
    with pytest.raises(ValueError, match="b must be 2-D"):
        gemm(a, b[None])
    with pytest.raises(ValueError, match="is not one of"):
        gemm(a, b, activation="swish")
    with pytest.raises(ValueError, match="takes 2 parameters"):
        gemm(a, b, activation="clip", activation_params=(0.0,))
    with pytest.raises(ValueError, match="out_dtype"):
        gemm(a, b, out_dtype=torch.int32)
    with pytest.raises(ValueError, match="split_k must be >= 1"):
        gemm(a, b, split_k=0)


def test_gemm_needs_cuda_outside_the_interpreter(monkeypatch):
    if ON_GPU:
        pytest.skip("on a GPU the inputs are CUDA tensors")
    monkeypatch.setattr(common, "interpreting", lambda: False)
    a, b, _, _ = _operands(8, 16, 12, torch.float16)
    with pytest.raises(ValueError, match="need a CUDA device"):
        gemm(a, b)


@pytest.mark.parametrize("arch,limit", [(90, 232448), (80, 166912)])
def test_gemm_configs(arch, limit):
    for elem in (2, 4):
        configs = gemm_mod.get_configs(arch, None, elem)
        assert len(configs) == len({common.config_key(c) for c in configs})
        for c in configs:
            k = c.kwargs
            assert k["BLOCK_K"] >= (16 if elem == 2 else 8), c  # the real compiler's minimum
            assert common.smem_estimate(c, elem, elem) <= limit, c
    # Small M gets its own (smaller-tile) configs.
    small = {common.config_key(c) for c in gemm_mod.get_configs(arch, 16)}
    large = {common.config_key(c) for c in gemm_mod.get_configs(arch, 4096)}
    assert small != large
    assert max(c.kwargs["BLOCK_M"] for c in gemm_mod.get_configs(arch, 16)) <= 64
    assert len(gemm_mod.get_configs("interpreter")) == 1
