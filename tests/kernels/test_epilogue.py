"""Tier 3: the fused epilogue's activations (Triton, interpreter) against torch and the contract."""

from __future__ import annotations

import math

import numpy as np
import pytest
from kernel_test_env import DEVICE, load

common = load("_common")
import torch  # noqa: E402  (after load: torch is optional, load skips without it)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from lepton_compile.contract import ACTIVATIONS, activation_value  # noqa: E402

apply_activation = common.apply_activation

PARAMS = {
    "leaky_relu": [(), (0.2,)],
    "clip": [(), (-0.5, 0.75), (0.0, math.inf)],
    "hard_sigmoid": [(), (0.3, 0.4)],
}


@triton.jit
def _activation_kernel(x_ptr, y_ptr, n, p0, p1, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(y_ptr + offs, apply_activation(x, ACT, p0, p1), mask=offs < n)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_torch_reference_matches_the_contract(name: str) -> None:
    lepton_ops = pytest.importorskip("lepton_compile.passes.lepton_ops")
    x = np.linspace(-9, 9, 181)
    for params in PARAMS.get(name, [()]):
        # The contract's scalar definition is the ground truth; numpy and torch follow it.
        want = np.array([activation_value(name, v, params) for v in x])
        got = common.activation_reference(name, torch.from_numpy(x), params).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, err_msg=f"{name}{params}")
        ref = lepton_ops.activation_ref(name, x, params)
        np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-12, err_msg=f"{name}{params}")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_triton_activation(name: str) -> None:
    # Wide range (tanh/sigmoid saturation, exp overflow) plus the fine grid near zero.
    x = torch.cat([torch.linspace(-30, 30, 97), torch.linspace(-1e-3, 1e-3, 11)]).to(DEVICE)
    for params in PARAMS.get(name, [()]):
        code, p0, p1 = common.activation_args(name, params)
        y = torch.empty_like(x)
        _activation_kernel[(triton.cdiv(x.numel(), 64),)](x, y, x.numel(), p0, p1, code, 64)
        want = common.activation_reference(name, x.double(), params).float()
        torch.testing.assert_close(y, want, rtol=2e-6, atol=2e-6, msg=f"{name}{params}")


def test_activation_args_errors() -> None:
    clip, leaky = ACTIVATIONS["clip"].code, ACTIVATIONS["leaky_relu"].code
    assert common.activation_args("clip", ()) == (clip, -math.inf, math.inf)
    assert common.activation_args("leaky_relu", [0.3]) == (leaky, 0.3, 0.0)
    with pytest.raises(ValueError, match="is not one of"):
        common.activation_args("swish", ())
    with pytest.raises(ValueError, match="takes 2 parameters"):
        common.activation_args("clip", [1.0])
    with pytest.raises(ValueError, match="post_activation 'relu' takes 0"):
        common.activation_args("relu", [1.0], "post_activation")


def test_pick_split_k() -> None:
    assert common.pick_split_k(tiles=200, k_iters=64, sms=132) == 1  # machine already full
    assert common.pick_split_k(tiles=8, k_iters=4, sms=132) == 1  # K too short to share
    split = common.pick_split_k(tiles=12, k_iters=48, sms=132)
    assert split > 1 and 12 * split <= 132 and 48 // split >= 4
