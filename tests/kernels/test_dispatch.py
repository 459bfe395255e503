"""Tier 3: the per-layer chooser (kernels.dispatch) with injected timings, real candidates.

The candidates are the real routes: our Triton kernels (interpreter) and torch's ops. Only
the clock is injected: a timer that runs the candidate, then reports a given time, so the
choice is decided by known numbers while every candidate still has to compute.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kernel_test_env import DEVICE, e2e_models, load

gemm_mod = load("gemm")
common = load("_common")
import torch  # noqa: E402

from lepton_compile.kernels import dispatch  # noqa: E402
from lepton_compile.kernels.dispatch import Candidate, Chooser  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


class Clock:
    """A timer that runs each candidate once and reports `times[candidate]` (ms)."""

    def __init__(self, times: dict[str, float], fail: tuple[str, ...] = ()) -> None:
        self.times = times
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    def __call__(self, fn, *, candidate: str, layer: str) -> float:
        self.calls.append((layer, candidate))
        if candidate in self.fail:
            raise RuntimeError(f"{candidate} failed on purpose")
        out = fn()
        assert isinstance(out, torch.Tensor)
        return self.times[candidate]


class MemoryCache:
    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, key: str, value: dict, meta=None) -> bool:
        self.rows[key] = value
        return True


def _gemm_candidates():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(16, 32, generator=g).to(DEVICE)
    b = torch.randn(32, 24, generator=g).to(DEVICE)
    bias = torch.randn(24, generator=g).to(DEVICE)
    return [
        Candidate("triton", lambda: gemm_mod.gemm(a, b, bias, activation="relu"), True),
        Candidate("torch", lambda: torch.relu(a @ b + bias), False),
    ]


SIG = {"shapes": [[16, 32], [32, 24]], "dtypes": ["float32", "float32"]}


def test_auto_picks_ours_only_when_clearly_faster() -> None:
    common.reset_launch_counts()
    chooser = Chooser("auto", timer=Clock({"triton": 1.0, "torch": 2.0}))
    c = chooser.choose("fc1", "FusedGemm", SIG, _gemm_candidates())
    assert (c.choice, c.ours, c.source) == ("triton", True, "measured")
    assert c.times_ms == {"triton": 1.0, "torch": 2.0}
    assert c.shapes == [[16, 32], [32, 24]] and c.dtypes == ["float32", "float32"]
    assert common.launch_counts()["gemm"] == 1  # the kernel itself ran while being timed
    # A tie, or ours less than 3% faster: torch's route (a kernel never slows a model).
    for ours in (2.0, 1.95):
        chooser = Chooser("auto", timer=Clock({"triton": ours, "torch": 2.0}))
        assert chooser.choose("fc1", "FusedGemm", SIG, _gemm_candidates()).choice == "torch"


def test_forced_modes_and_unavailable_candidates() -> None:
    clock = Clock({"triton": 5.0, "torch": 1.0})
    assert Chooser("triton", timer=clock).choose("l", "op", SIG, _gemm_candidates()).choice == (
        "triton"
    )
    assert Chooser("torch", timer=clock).choose("l", "op", SIG, _gemm_candidates()).choice == (
        "torch"
    )
    assert not clock.calls  # forced: nothing timed
    cands = _gemm_candidates()
    cands[0] = Candidate("triton", None, True, "our conv kernel is 2-D only")
    c = Chooser("triton", timer=clock).choose("l", "op", SIG, cands)
    assert (c.choice, c.source) == ("torch", "forced")
    assert c.unavailable == {"triton": "our conv kernel is 2-D only"}
    c = Chooser("auto", timer=clock).choose("l", "op", SIG, cands)
    assert (c.choice, c.source) == ("torch", "only") and not clock.calls
    # auto without measuring (the CPU default): torch's route, untimed.
    c = Chooser("auto", measure=False, timer=clock).choose("l", "op", SIG, _gemm_candidates())
    assert (c.choice, c.source) == ("torch", "default") and not clock.calls
    with pytest.raises(ValueError, match="kernels must be one of"):
        Chooser("cuda")


def test_a_failing_candidate_is_never_chosen() -> None:
    c = Chooser("auto", timer=Clock({"torch": 9.0}, fail=("triton",))).choose(
        "l", "op", SIG, _gemm_candidates()
    )
    assert c.choice == "torch" and "failed on purpose" in c.errors["triton"]
    c = Chooser("auto", timer=Clock({}, fail=("triton", "torch"))).choose(
        "l", "op", SIG, _gemm_candidates()
    )
    assert (c.choice, c.source) == ("torch", "default")


def test_measured_choices_are_cached_by_signature() -> None:
    cache = MemoryCache()
    clock = Clock({"triton": 1.0, "torch": 2.0})
    parts = {"device": "H100-record", "versions": {"torch": "2.11"}}
    first = Chooser("auto", timer=clock, cache=cache, cache_parts=parts)
    assert first.choose("a", "FusedGemm", SIG, _gemm_candidates()).source == "measured"
    slow = Clock({"triton": 9.0, "torch": 1.0})
    again = Chooser("auto", timer=slow, cache=cache, cache_parts=parts)
    hit = again.choose("b", "FusedGemm", SIG, _gemm_candidates())
    assert (hit.choice, hit.source) == ("triton", "cache")
    assert hit.times_ms == {"triton": 1.0, "torch": 2.0} and not slow.calls
    elsewhere = {**parts, "device": "A100-record"}
    other_device = Chooser("auto", timer=slow, cache=cache, cache_parts=elsewhere)
    assert other_device.choose("b", "FusedGemm", SIG, _gemm_candidates()).choice == "torch"
    other_shape = {**SIG, "shapes": [[1, 32], [32, 24]]}
    assert again.choose("c", "FusedGemm", other_shape, _gemm_candidates()).source == "measured"
    assert len(cache.rows) == 3


def test_summary_and_counts() -> None:
    clock = Clock({"triton": 1.0, "torch": 2.0})
    chooser = Chooser("auto", timer=clock)
    picks = [chooser.choose(f"l{i}", "FusedConv", SIG, _gemm_candidates()) for i in range(2)]
    picks.append(Chooser("torch").choose("l2", "QMatMul", SIG, _gemm_candidates()))
    assert dispatch.summary(picks) == "2 of 3 layers on our kernels"
    assert dispatch.summary(picks[:1]) == "1 of 1 layer on our kernels"
    assert dispatch.choice_counts(picks) == {"FusedConv": {"triton": 2}, "QMatMul": {"torch": 1}}
    record = picks[0].to_dict()
    assert record["times_ms"] == {"triton": 1.0, "torch": 2.0} and record["choice"] == "triton"


# -- the session: per-layer records from injected timings -----------------------------------


def test_session_chooses_per_layer_from_timings() -> None:
    from lepton_compile.runtime.lepton import LeptonSession

    e2e = e2e_models()
    model = e2e.recipe_variant("fused-lepton", e2e.convnet())
    feeds = e2e.example_feeds(model)
    layers = [n.name for n in model.graph.node if n.op_type == "FusedConv"]
    assert len(layers) == 4
    fast = set(layers[:2])  # ours wins on the first two convs only

    def timer(fn, *, candidate: str, layer: str) -> float:
        fn()
        if candidate == "triton":
            return 1.0 if layer in fast else 3.0
        return 2.0

    common.reset_launch_counts()
    opts = {"kernels": "auto", "tf32": True, "cuda_graphs": False}
    sess = LeptonSession(model, DEVICE, opts, kernel_timer=timer)
    got = sess.run(feeds)["y"]
    info = sess.describe()
    by_layer = {rec["layer"]: rec for rec in info["kernel_layers"]}
    assert set(by_layer) == set(layers)
    for name, rec in by_layer.items():
        assert rec["choice"] == ("triton" if name in fast else "torch"), rec
        assert rec["source"] == "measured" and set(rec["times_ms"]) == {"triton", "torch"}
        assert rec["op"] == "FusedConv" and rec["shapes"][0][0] == 2
    assert info["kernel_summary"] == "2 of 4 layers on our kernels"
    assert sess.kernel_summary() == info["kernel_summary"]
    # The program runs the picked kernels (timing ran all four once each, the run two more).
    launches = common.launch_counts()
    assert launches.get("conv2d", 0) + launches.get("depthwise", 0) == 4 + 2
    import onnxruntime as ort

    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, ref.run(None, feeds)[0], rtol=1e-4, atol=1e-4)


def test_session_picks_the_tma_gemm_where_it_is_fastest() -> None:
    from lepton_compile.runtime.lepton import LeptonSession

    e2e = e2e_models()
    original = e2e.attention_block()
    model = e2e.recipe_variant("fused-lepton", original)
    feeds = e2e.example_feeds(model)
    times = {"triton-tma": 0.5, "triton": 1.0, "torch": 2.0}

    def timer(fn, *, candidate: str, layer: str) -> float:
        fn()
        return times[candidate]

    common.reset_launch_counts()
    opts = {"kernels": "auto", "dtype": "fp16", "cuda_graphs": False}
    sess = LeptonSession(model, DEVICE, opts, kernel_timer=timer)
    got = sess.run(feeds)["hidden"]
    layers = sess.describe()["kernel_layers"]
    assert len(layers) == 6 and all(rec["choice"] == "triton-tma" for rec in layers)
    assert all(set(rec["times_ms"]) == set(times) for rec in layers)
    assert common.launch_counts()["gemm_tma"] == 6 + 6  # timed once each, then the run
    import onnxruntime as ort

    ref = ort.InferenceSession(original.SerializeToString(), providers=["CPUExecutionProvider"])
    want = ref.run(None, feeds)[0]
    assert np.abs(got - want).max() <= 1e-2 * np.abs(want).max()
