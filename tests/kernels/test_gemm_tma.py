"""Tier 3: the Hopper TMA + persistent GEMM (host tensor descriptors) against its reference.

The interpreter runs the descriptor loads (zero-filled boundary tiles) and the persistent
tile loop (it pretends to have 4 SMs); the compile gate checks that the real compiler
lowers the loads to TMA and the dots to wgmma for sm90.
"""

from __future__ import annotations

import pytest
from kernel_test_env import DEVICE, load

tma = load("gemm_tma")
common = load("_common")
import torch  # noqa: E402

TOL = {torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


def _operands(m, k, n, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=g).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=g) / k**0.5).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=g).to(dtype).to(DEVICE)
    res = torch.randn(m, n, generator=g).to(dtype).to(DEVICE)
    return a, w, bias, res


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["k-major", "row-major"])
def test_gemm_tma(dtype, layout):
    # 70 x 72 x 88: partial tiles in M, N and K (the descriptors zero-fill them), more
    # output tiles than the interpreter's 4 programs (the persistent loop).
    a, w, bias, res = _operands(70, 72, 88, dtype)
    b = w.t() if layout == "k-major" else w.t().contiguous()
    common.reset_launch_counts()
    epi = dict(activation="gelu", post_activation="relu")
    y = tma.gemm_tma(a, b, bias, res, **epi)
    ref = tma.gemm_tma_reference(a, b, bias, res, **epi)
    rtol, atol = TOL[dtype]
    torch.testing.assert_close(y.float(), ref.float(), rtol=rtol, atol=atol)
    assert common.launch_counts() == {"gemm_tma": 1}


def test_gemm_tma_batched_a():
    a, w, bias, _ = _operands(12, 64, 32, torch.float16)
    y = tma.gemm_tma(a.reshape(3, 4, 64), w.t(), bias)
    ref = tma.gemm_tma_reference(a, w.t(), bias).reshape(3, 4, 32)
    torch.testing.assert_close(y.float(), ref.float(), rtol=2e-3, atol=2e-3)


def test_supported_says_why_not():
    a, w, _, _ = _operands(8, 64, 16, torch.float16)
    assert tma.supported(a, w.t()) is None
    assert "fp16/bf16" in tma.supported(a.float(), w.t().float())
    a2, w2, _, _ = _operands(8, 60, 16, torch.float16)  # 120-byte rows
    assert "16 bytes" in tma.supported(a2, w2.t())
    with pytest.raises(ValueError, match="gemm_tma"):
        tma.gemm_tma(a2, w2.t())


def test_tma_configs():
    for c in tma.get_configs(90):
        assert common.smem_estimate(c, 2, 2) <= 232448
        assert c.pre_hook is tma.set_tma_blocks
    with pytest.raises(ValueError, match="sm90"):
        tma.get_configs(80)
