"""The launchers' host-side caches: memoized configs and device facts, and the fast path.

After triton's autotuner has picked a config for a tuning key, later calls with that key
launch the jit function directly with the pick. These tests make the interpreter autotune
over two configs (a fake do_bench that makes the last config the fastest, so that the pick
differs from the first config), count entries into triton's Autotuner.run, and record what
each launch of the kernel received.
"""

from __future__ import annotations

from typing import Any

import pytest
from kernel_test_env import DEVICE, ON_GPU, load

common = load("_common")
gemm_mod = load("gemm")
scaled = load("gemm_scaled")
conv = load("conv")
import torch  # noqa: E402
import triton  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

# Two configs per kernel in the interpreter (the tables have one there).
GEMM_ROWS = [(32, 32, 32, 2, 1, 4), (16, 32, 16, 1, 1, 2)]
CONV_ROWS = [(32, 32, 16, 2, 1, 4), (16, 16, 16, 1, 1, 2)]
DW_ROWS = [(16, 32, 1, 4), (32, 16, 1, 2)]
META = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "BLOCK_C", "GROUP_M", "num_warps", "num_stages")


class Recorder:
    """Counts Autotuner.run entries and benchmarks; records the meta-parameters of launches."""

    def __init__(self) -> None:
        self.tuner_runs = 0
        self.benches = 0
        self.launches: list[dict[str, Any]] = []

    def meta(self, i: int = -1) -> dict[str, Any]:
        return {k: v for k, v in self.launches[i].items() if k in META or k.startswith("EVEN")}


@pytest.fixture
def rec(monkeypatch: pytest.MonkeyPatch) -> Any:
    r = Recorder()
    common.reset_caches()
    monkeypatch.setattr(common, "_can_autotune", lambda: True)
    if not ON_GPU:
        monkeypatch.setattr(gemm_mod, "_INTERPRETER", GEMM_ROWS)
        monkeypatch.setattr(scaled, "_INTERPRETER", GEMM_ROWS)
        monkeypatch.setattr(conv, "_INTERPRETER", CONV_ROWS)
        monkeypatch.setattr(conv, "_DW_INTERPRETER", DW_ROWS)

    def fake_bench(kernel_call: Any, quantiles: Any) -> list[float]:
        r.benches += 1
        t = 1.0 / r.benches  # each config benchmarked looks faster than the one before
        return [t, t, t]

    monkeypatch.setattr(common, "_quick_bench", fake_bench)

    original_run = Autotuner.run

    def counting_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        r.tuner_runs += 1
        return original_run(self, *args, **kwargs)

    monkeypatch.setattr(Autotuner, "run", counting_run)
    for kernel in (
        gemm_mod.gemm_kernel,
        scaled.scaled_gemm_kernel,
        conv.conv2d_kernel,
        conv.depthwise_conv2d_kernel,
    ):
        original = kernel.run

        def recording_run(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            r.launches.append(kwargs)
            if not ON_GPU and callable(kwargs["grid"]):
                # The autotuner passes the grid function on; the interpreter would call it
                # with its own tensors, a GPU's JITFunction.run with the plain arguments.
                kwargs["grid"] = kwargs["grid"](kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(kernel, "run", recording_run)
    yield r
    common.reset_caches()


def _gemm_operands(m: int, k: int = 40, n: int = 24, dtype: torch.dtype = torch.float16):
    g = torch.Generator().manual_seed(m)
    a = torch.randn(m, k, generator=g).to(dtype).to(DEVICE)
    b = (torch.randn(k, n, generator=g) / k**0.5).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=g).to(dtype).to(DEVICE)
    return a, b, bias


def _gemm(m: int, dtype: torch.dtype = torch.float16, **kw: Any) -> torch.Tensor:
    a, b, bias = _gemm_operands(m, dtype=dtype)
    y = gemm_mod.gemm(a, b, bias, activation="relu", split_k=1, **kw)
    ref = gemm_mod.gemm_reference(a, b, bias, activation="relu")
    tol = 2e-3 if dtype == torch.float16 else 1.6e-2
    torch.testing.assert_close(y.float(), ref.float(), rtol=tol, atol=tol)
    return y


def _key(cfg: triton.Config | None) -> tuple:
    assert cfg is not None
    return common.config_key(cfg)


def test_second_call_launches_the_pick_without_the_autotuner(rec: Recorder) -> None:
    y1 = _gemm(40)
    assert rec.tuner_runs == 1
    assert rec.benches >= 2  # the configs of the bucket were benchmarked
    first = common.last_config("gemm")
    tuned = common._TUNERS[next(iter(common._TUNERS))]
    assert _key(first) == _key(tuned.configs[-1])  # the fake bench's pick, not configs[0]
    assert _key(first) != _key(tuned.configs[0])
    meta1 = rec.meta()

    benches = rec.benches
    y2 = _gemm(40)
    assert rec.tuner_runs == 1, "the autotuner was entered again for a cached key"
    assert rec.benches == benches
    assert common.last_config("gemm") is first
    # The direct launch gets what the autotuner's own launch got: meta-parameters,
    # num_warps/num_stages and the heuristics' EVEN_K.
    assert rec.meta() == meta1
    assert "EVEN_K" in meta1 and meta1["BLOCK_K"] == first.kwargs["BLOCK_K"]
    assert torch.equal(y1, y2)


def test_new_shape_bucket_or_dtype_autotunes_again(rec: Recorder) -> None:
    _gemm(40)
    assert rec.tuner_runs == 1
    _gemm(50)  # same M bucket, another M: a new tuning key
    assert rec.tuner_runs == 2
    _gemm(20)  # another M bucket: another tuner
    assert rec.tuner_runs == 3
    assert len(common._TUNERS) == 2
    _gemm(40, dtype=torch.bfloat16)  # same shape, another dtype
    assert rec.tuner_runs == 4
    for m in (40, 50, 20):
        _gemm(m)
    _gemm(40, dtype=torch.bfloat16)
    assert rec.tuner_runs == 4


def test_pinned_config_bypasses_the_cache(rec: Recorder) -> None:
    _gemm(40)
    picked = common.last_config("gemm")
    pinned = triton.Config(
        {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 1}, num_warps=1, num_stages=1
    )
    assert _key(pinned) != _key(picked)
    _gemm(40, config=pinned)
    assert rec.tuner_runs == 1
    assert common.last_config("gemm") is pinned
    assert rec.meta()["BLOCK_M"] == 16 and rec.meta()["num_warps"] == 1
    _gemm(40)  # unpinned again: the cached pick
    assert rec.tuner_runs == 1
    assert common.last_config("gemm") is picked


def test_scaled_gemm_and_convs_cache_their_picks(rec: Recorder) -> None:
    g = torch.Generator().manual_seed(0)
    a, sa = scaled.quantize_rowwise(torch.randn(24, 64, generator=g), torch.int8)
    w, sb = scaled.quantize_rowwise(torch.randn(16, 64, generator=g), torch.int8)
    a, w, sa, sb = a.to(DEVICE), w.to(DEVICE), sa.to(DEVICE), sb.to(DEVICE)
    cl = torch.channels_last
    x = torch.randn(1, 32, 6, 6, generator=g).to(torch.float16).to(DEVICE)
    x = x.contiguous(memory_format=cl)
    wc = (torch.randn(16, 32, 3, 3, generator=g) / 17).to(torch.float16).to(DEVICE)
    wd = torch.randn(32, 1, 3, 3, generator=g).to(torch.float16).to(DEVICE)
    calls = {
        "w8a8": lambda: scaled.w8a8_gemm(a, w.t(), sa, sb, split_k=1),
        "conv2d": lambda: conv.conv2d(x, wc, padding=1, activation="relu", split_k=1),
        "depthwise": lambda: conv.conv2d(x, wd, padding=1, groups=32),
    }
    refs = {
        "w8a8": lambda: scaled.scaled_gemm_reference(a, w.t(), sa, sb),
        "conv2d": lambda: conv.conv2d_reference(x, wc, padding=1, activation="relu"),
        "depthwise": lambda: conv.conv2d_reference(x, wd, padding=1, groups=32),
    }
    for family, call in calls.items():
        runs = rec.tuner_runs
        y1 = call()
        assert rec.tuner_runs == runs + 1, family
        picked = common.last_config(family)
        meta = rec.meta()
        y2 = call()
        assert rec.tuner_runs == runs + 1, family
        assert common.last_config(family) is picked, family
        assert rec.meta() == meta, family
        assert torch.equal(y1, y2), family
        torch.testing.assert_close(y2.float(), refs[family]().float(), rtol=2e-3, atol=2e-3)


def test_config_lists_are_built_once(monkeypatch: pytest.MonkeyPatch) -> None:
    common.reset_caches()
    built = []
    original = gemm_mod.get_configs

    def counting(*args: Any, **kwargs: Any) -> list[triton.Config]:
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(gemm_mod, "get_configs", counting)
    _gemm(40)
    _gemm(41)
    assert len(built) == 1
    _gemm(20)  # another bucket
    assert len(built) == 2
    common.reset_caches()


def test_device_facts_are_read_once_per_device(monkeypatch: pytest.MonkeyPatch) -> None:
    common.reset_caches()
    reads = []

    def fake_read(index: int) -> Any:
        reads.append(index)
        return common.DeviceFacts(90, 232448, 132)

    monkeypatch.setattr(common, "_read_device_facts", fake_read)
    monkeypatch.setattr(common, "interpreting", lambda: False)
    cuda0 = torch.device("cuda", 0)
    for _ in range(3):
        assert common.device_arch(cuda0) == 90
        assert common.max_shared_memory(cuda0) == 232448
        assert common.num_sms(cuda0) == 132
    assert reads == [0]
    assert common.device_facts(torch.device("cuda", 1)).sms == 132
    assert reads == [0, 1]
    common.reset_caches()


def test_launch_kwargs_are_what_the_autotuner_passes() -> None:
    cfg = triton.Config({"BLOCK_M": 64}, num_warps=8, num_stages=3, maxnreg=128)
    kw = common.launch_kwargs(cfg)
    assert kw == cfg.all_kwargs()
    assert kw["BLOCK_M"] == 64 and kw["num_warps"] == 8 and kw["num_stages"] == 3
    assert kw["maxnreg"] == 128 and kw["num_ctas"] == 1
    assert "maxnreg" not in common.launch_kwargs(triton.Config({"BLOCK_M": 64}))


def test_epilogue_args_memo() -> None:
    common.reset_caches()
    want = {"ACT": 5, "POST_ACT": 4, "p0": -1.0, "p1": 2.0, "q0": 0.2, "q1": 0.0}
    assert common.epilogue_args("clip", [-1, 2], "leaky_relu", (0.2,)) == want
    assert common.epilogue_args("clip", (-1.0, 2.0), "leaky_relu", [0.2]) == want
    assert len(common._EPILOGUES) == 1
    got = common.epilogue_args("clip", (torch.tensor(-1.0), 2.0), "none", ())
    assert got["p0"] == -1.0 and len(common._EPILOGUES) == 1  # tensors are not cached
    got["ACT"] = 0  # the caller's dict is its own
    assert common.epilogue_args("clip", (-1, 2), "leaky_relu", (0.2,))["ACT"] == 5
    with pytest.raises(ValueError, match="takes 2 parameters"):
        common.epilogue_args("clip", (1.0,), "none", ())
