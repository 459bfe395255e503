"""Tier 3: implicit-GEMM conv2d and depthwise conv on NHWC with the fused epilogue vs torch."""

from __future__ import annotations

import pytest
from kernel_test_env import DEVICE, ON_GPU, load

conv = load("conv")
common = load("_common")
import torch  # noqa: E402

CL = torch.channels_last
TOL = {
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
    torch.float32: ((5e-3, 5e-3) if ON_GPU else (1e-5, 1e-5)),
}

# name: (N, C, H, W, C_out, R, stride, padding, dilation, groups)
CASES = {
    "stem-flatK-s2": (2, 3, 11, 9, 20, 3, 2, 1, 1, 1),
    "blocked-oddC-asympad-dil2": (1, 40, 7, 6, 33, 3, 1, (1, 0, 2, 1), 2, 1),
    "pointwise-evenC": (2, 32, 5, 5, 24, 1, 1, 0, 1, 1),
    "5x5-rect-stride": (1, 32, 9, 7, 16, 5, (2, 1), 2, 1, 1),
    "grouped-flatK": (1, 16, 6, 7, 8, 3, 1, 1, 1, 2),
    "grouped-blocked": (1, 64, 6, 7, 64, 3, 1, 1, 1, 2),
    "depthwise-s2": (2, 12, 9, 8, 12, 3, 2, 1, 1, 12),
    "depthwise-mult2-5x5": (1, 6, 9, 8, 12, 5, 1, 2, 1, 6),
    "depthwise-dil2": (1, 40, 8, 8, 40, 3, 1, 2, 2, 40),
}
EPI = dict(activation="relu", post_activation="sigmoid")


def _make(case, dtype, *, seed=0, bias=True, residual=True, weight_cl=True, **epi):
    n, c, h, w, cout, r, stride, padding, dilation, groups = CASES[case]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype).to(DEVICE).contiguous(memory_format=CL)
    wt = (torch.randn(cout, c // groups, r, r, generator=g) / (r * (c // groups) ** 0.5)).to(dtype)
    wt = wt.to(DEVICE)
    if weight_cl:
        wt = wt.contiguous(memory_format=CL)
    b = torch.randn(cout, generator=g).to(dtype).to(DEVICE) if bias else None
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, **epi)
    res = None
    if residual:
        shape = conv.conv2d_reference(x, wt, None, **kw).shape
        res = torch.randn(shape, generator=g).to(dtype).to(DEVICE).contiguous(memory_format=CL)
    return x, wt, b, res, kw


def _check(y, ref, dtype):
    rtol, atol = TOL[dtype]
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y.float(), ref.float(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("case", list(CASES))
def test_conv2d(case, dtype):
    # No post-activation here: a sigmoid would hide errors; plain bias+relu+residual.
    x, wt, b, res, kw = _make(case, dtype, activation="relu")
    y = conv.conv2d(x, wt, b, res, **kw)
    _check(y, conv.conv2d_reference(x, wt, b, res, **kw), dtype)


@pytest.mark.parametrize(
    "epi",
    [
        dict(),
        dict(activation="gelu", post_activation="silu"),
        dict(activation="clip", activation_params=(0.0, 6.0), post_activation="hardswish"),
        dict(activation="leaky_relu", activation_params=(0.1,), post_activation="tanh"),
    ],
    ids=["plain", "gelu-silu", "relu6-hardswish", "leaky-tanh"],
)
@pytest.mark.parametrize("case", ["blocked-oddC-asympad-dil2", "depthwise-s2"])
def test_conv2d_epilogues(case, epi):
    x, wt, b, res, kw = _make(case, torch.float16, **epi)
    _check(
        conv.conv2d(x, wt, b, res, **kw), conv.conv2d_reference(x, wt, b, res, **kw), torch.float16
    )


@pytest.mark.parametrize("case", ["stem-flatK-s2", "blocked-oddC-asympad-dil2", "pointwise-evenC"])
def test_conv2d_split_k(case):
    x, wt, b, res, kw = _make(case, torch.float16, **EPI)
    y = conv.conv2d(x, wt, b, res, split_k=3, **kw)
    _check(y, conv.conv2d_reference(x, wt, b, res, **kw), torch.float16)


def test_conv2d_without_bias_or_residual_and_nchw_weight():
    x, wt, _, _, kw = _make(
        "5x5-rect-stride", torch.float16, bias=False, residual=False, weight_cl=False
    )
    _check(conv.conv2d(x, wt, **kw), conv.conv2d_reference(x, wt, **kw), torch.float16)


def test_depthwise_packed_weight_and_out_dtype():
    x, wt, b, res, kw = _make("depthwise-mult2-5x5", torch.float16, residual=False)
    packed = conv.pack_depthwise_weight(wt)
    assert packed.shape == wt.shape and packed.stride(0) == 1
    y = conv.depthwise_conv2d(
        x, packed, b, out_dtype=torch.float32, **{k: v for k, v in kw.items() if k != "groups"}
    )
    _check(y, conv.conv2d_reference(x, wt, b, out_dtype=torch.float32, **kw), torch.float32)


def test_conv2d_input_checks():
    x, wt, b, res, kw = _make("pointwise-evenC", torch.float16)
    with pytest.raises(ValueError, match="channels-last"):
        conv.conv2d(x.contiguous(), wt, **kw)
    with pytest.raises(ValueError, match="weight has dtype"):
        conv.conv2d(x, wt.float(), **kw)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        conv.conv2d(x, wt, groups=3)
    with pytest.raises(ValueError, match="input channels per group"):
        conv.conv2d(x, wt[:, :16])
    with pytest.raises(ValueError, match="residual must be channels-last"):
        conv.conv2d(x, wt, b, res.contiguous(), **kw)
    with pytest.raises(ValueError, match="residual has shape"):
        conv.conv2d(x, wt, b, res[:, :, :4], **kw)
    with pytest.raises(ValueError, match="kernel larger than the padded input"):
        big = torch.zeros(24, 32, 7, 7, dtype=torch.float16, device=DEVICE)
        conv.conv2d(x, big)
    with pytest.raises(ValueError, match="padding must be"):
        conv.conv2d(x, wt, padding=(1, 2, 3))
    with pytest.raises(ValueError, match="bias must be a contiguous"):
        conv.conv2d(x, wt, b[:5], **kw)
    with pytest.raises(ValueError, match="1 for grouped convs"):
        xg, wg, _, _, kwg = _make("grouped-blocked", torch.float16)
        conv.conv2d(xg, wg, split_k=2, **kwg)


def test_conv_configs():
    for arch in (90, 80):
        for c in conv.get_configs(arch, 4096, pointwise=False) + conv.get_configs(arch, 64, False):
            assert c.num_warps <= 4, c  # non-1x1 templates miscompile at 8 warps (Inductor)
            assert c.kwargs["BLOCK_K"] >= 16
        pointwise = conv.get_configs(arch, 4096, pointwise=True)
        assert any(c.num_warps == 8 for c in pointwise)
        assert all(c.kwargs["BLOCK_K"] >= 8 for c in conv.get_configs(arch, None, True, 4))
    assert len(conv.get_configs("interpreter")) == 1
    assert len(conv.get_depthwise_configs("interpreter")) == 1


def test_when_no_config_fits_the_smallest_is_taken():
    """A GPU with less shared memory than any table config: the smallest tile, never the
    largest (which could not launch)."""
    from lepton_compile.kernels import conv
    from lepton_compile.kernels._common import smem_estimate

    configs = conv.get_configs(90, 4096, pointwise=True, elem_bytes=2)
    chosen = conv._fitted_configs(90, 4096, True, 2, smem=1)
    assert len(chosen) == 1
    assert smem_estimate(chosen[0], 2, 2) == min(smem_estimate(c, 2, 2) for c in configs)
