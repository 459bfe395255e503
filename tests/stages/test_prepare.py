"""Stages prepare and plan_variants: context from the options, variants from recipes x targets."""

from __future__ import annotations

import pytest
from stage_helpers import context

from lepton_compile import stages
from lepton_compile.errors import InputError
from lepton_compile.variant import Status


def test_prepare_makes_the_context(mlp_path):
    ctx = context(mlp_path, recipes=["original", "fused"])
    assert [r.name for r in ctx.recipes] == ["original", "fused"]
    assert ctx.loaded.inputs[0].shape == (1, 32)  # dynamic batch set to 1
    assert len(ctx.feeds.eval) == 2
    assert ctx.plan.primary == "cpu" and set(ctx.meters) == {"cpu"}
    assert ctx.rules.min_trials == 2  # quick
    assert ctx.accuracy.shared_dir is not None and str(ctx.work) in ctx.accuracy.shared_dir


def test_plan_variants_puts_the_original_first_and_skips_the_hopeless(mlp_path, monkeypatch):
    from lepton_compile import hopeless

    no_fp16 = hopeless.CpuFeatures("x86", frozenset({"avx2"}))
    monkeypatch.setattr(hopeless, "this_cpu", lambda *a: no_fp16)
    ctx = context(mlp_path, recipes=None, backends=["ort", "lepton"])
    variants = stages.plan_variants(ctx)
    assert variants[0].id == "original-ort-cpu"
    fp16_lepton = next(v for v in variants if v.id == "fp16-lepton-cpu")
    assert fp16_lepton.status == Status.SKIPPED and "no native fp16" in fp16_lepton.reason
    others = [v for v in variants if v is not fp16_lepton]
    assert all(v.status == Status.PENDING for v in others)


def test_prepare_refuses_bad_options_before_any_work(mlp_path):
    with pytest.raises(InputError, match="--input-shape names 'nope'"):
        context(mlp_path, input_shapes={"nope": [1, 2]})
    with pytest.raises(InputError, match="int8-qdq: 1 calibration sample"):
        context(mlp_path, recipes=["int8-qdq"], calibration_samples=1)


def test_the_lepton_recipe_also_varies_the_backend_modes(mlp_path):
    import pytest

    pytest.importorskip("torch", reason="the lepton backend needs torch")
    ctx = context(mlp_path, recipes=["original", "fused-lepton"], backends=["ort", "lepton"])
    ids = [v.id for v in stages.plan_variants(ctx)]
    assert "fused-lepton-lepton-cpu" in ids
    assert "fused-lepton-lepton-cpu+cl" in ids  # channels-last, measured like any variant
    cl = next(v for v in stages.plan_variants(ctx) if v.id.endswith("+cl"))
    assert cl.options == {"channels_last": True}
