"""Tier 3: the INT4 weight-only GEMM (MatMulNBits layout) against its torch reference."""

from __future__ import annotations

import pytest
from kernel_test_env import DEVICE, load

int4 = load("gemm_int4")
common = load("_common")
import torch  # noqa: E402

# fp16 dequantized weights and outputs; bf16 keeps 8 bits (the interpreter upcasts its tiles).
TOL = {torch.float16: (4e-3, 4e-3), torch.bfloat16: (2e-2, 2e-2), torch.float32: (1e-5, 1e-5)}


def _operands(m, k, n, dtype, block=32, symmetric=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    a = torch.randn(m, k, generator=g).to(dtype)
    packed, scales, zeros = int4.quantize_int4(w, block, symmetric)
    scales = scales.to(dtype)
    zeros = zeros.to(dtype) if zeros is not None else None
    bias = torch.randn(n, generator=g).to(dtype)
    return a.to(DEVICE), packed.to(DEVICE), scales.to(DEVICE), zeros, bias.to(DEVICE), w


def _check(y, ref, dtype):
    rtol, atol = TOL[dtype]
    scale = ref.float().abs().max().item()
    torch.testing.assert_close(y.float(), ref.float(), rtol=rtol, atol=atol * max(scale, 1.0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_int4_gemm(dtype, symmetric):
    # K = 70: a partial last quantization block and a masked K loop.
    a, packed, scales, zeros, bias, _ = _operands(37, 70, 40, dtype, symmetric=symmetric)
    zeros = zeros.to(DEVICE) if zeros is not None else None
    y = int4.int4_gemm(a, packed, scales, zeros, bias, activation="gelu")
    ref = int4.int4_gemm_reference(a, packed, scales, zeros, bias, activation="gelu")
    assert y.shape == (37, 40) and y.dtype == dtype
    _check(y, ref, dtype)


@pytest.mark.parametrize("block", [16, 64])
def test_int4_gemm_block_sizes_and_split_k(block):
    # M = 1 (batch 1): split-K on the interpreter's small machine; BLOCK_K 32 vs the block.
    a, packed, scales, zeros, bias, _ = _operands(1, 256, 48, torch.float16, block, False)
    zeros = zeros.to(DEVICE)
    res = torch.randn(1, 48).to(torch.float16).to(DEVICE)
    kw = {"block_size": block, "post_activation": "relu"}
    y = int4.int4_gemm(a, packed, scales, zeros, bias, res, **kw)
    ref = int4.int4_gemm_reference(a, packed, scales, zeros, bias, res, **kw)
    _check(y, ref, torch.float16)
    y2 = int4.int4_gemm(a, packed, scales, zeros, bias, res, split_k=1, **kw)
    _check(y2, ref, torch.float16)


def test_int4_quantization_roundtrip():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(8, 100, generator=g)
    for symmetric in (True, False):
        packed, scales, zeros = int4.quantize_int4(w, 32, symmetric)
        assert packed.shape == (8, 64) and scales.shape == (8, 4)
        err = (int4.dequantize_int4(packed, scales, zeros, 100, 32) - w).abs().max()
        assert err <= scales.max() * 0.51 + 1e-6  # within half a step (symmetric clips -8)
    q = torch.randint(0, 16, (3, 10), dtype=torch.uint8)
    assert torch.equal(int4.unpack_int4(int4.pack_int4(q)), q)


def test_int4_batched_a_and_launch_count():
    a, packed, scales, _, _, _ = _operands(6, 64, 16, torch.float16)
    a3 = a.reshape(2, 3, 64)
    common.reset_launch_counts()
    y = int4.int4_gemm(a3, packed, scales)
    assert y.shape == (2, 3, 16)
    assert common.launch_counts().get("int4") == 1
    _check(y, int4.int4_gemm_reference(a3, packed, scales), torch.float16)


def test_int4_input_checks():
    a, packed, scales, _, _, _ = _operands(4, 64, 16, torch.float16)
    with pytest.raises(ValueError, match="must be a uint8"):
        int4.int4_gemm(a, packed[:, :16], scales)
    with pytest.raises(ValueError, match="scales must be"):
        int4.int4_gemm(a, packed, scales[:, :1])
    with pytest.raises(ValueError, match="block_size"):
        int4.int4_gemm(a, packed, scales, block_size=24)
    with pytest.raises(ValueError, match="a has dtype"):
        int4.int4_gemm(a.to(torch.int8), packed, scales)


@pytest.mark.parametrize("arch", [90, 80])
def test_int4_configs(arch):
    for c in int4.get_configs(arch):
        assert c.kwargs["BLOCK_K"] >= 16  # 16-bit tl.dot minimum of the real compiler
        assert common.smem_estimate(c, 2, 1) <= 166912
    assert len(int4.get_configs("interpreter")) == 1
