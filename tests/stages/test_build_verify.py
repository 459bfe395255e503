"""Stages reference, build and verify: artifacts per recipe, then each judged on the eval set."""

from __future__ import annotations

import onnx
import pytest
from conftest import text_model
from stage_helpers import context, executor

from lepton_compile import stages
from lepton_compile.errors import InputError
from lepton_compile.variant import Status


def test_reference_build_verify(mlp_path):
    ctx = context(mlp_path, recipes=["original", "fused", "int8-dynamic"])
    variants = stages.plan_variants(ctx)
    with executor(ctx) as ex:
        ref = stages.reference(ctx, ex, variants[0])
        assert len(ref.outputs) == 2 and ref.metric is None
        stages.build(ctx, ex, variants, {})
        for v in variants:
            assert v.artifact is not None and v.artifact.is_file(), v.id
            assert v.size_bytes > 0 and "seconds" in v.build
        stages.verify(ctx, ex, variants, ref)
    assert [v.status for v in variants] == [Status.OK] * 3
    assert variants[0].fidelity.drop == 0.0
    assert variants[2].fidelity.drop > 0.0  # INT8 is lossy, within the constraint


def test_verify_rejects_what_breaks_the_constraint(mlp_path):
    ctx = context(mlp_path, recipes=["original", "int8-qdq"], max_accuracy_drop=0.0)
    variants = stages.plan_variants(ctx)
    with executor(ctx) as ex:
        ref = stages.reference(ctx, ex, variants[0])
        stages.build(ctx, ex, variants, {})
        stages.verify(ctx, ex, variants, ref)
    assert variants[1].status == Status.REJECTED and "drop" in variants[1].reason


def test_reference_refuses_non_finite_outputs(tmp_path):
    path = tmp_path / "nan.onnx"
    onnx.save(
        text_model(
            """
            <ir_version: 8, opset_import: ["" : 17]>
            g (float[1, 4] x) => (float[1, 4] y) { y = Log (x) }
            """
        ),
        path,
    )
    ctx = context(path, recipes=["original"])
    variants = stages.plan_variants(ctx)
    with executor(ctx) as ex, pytest.raises(InputError, match="non-finite"):
        stages.reference(ctx, ex, variants[0])


def test_build_reuses_a_cached_artifact(mlp_path, tmp_path):
    ctx = context(mlp_path, recipes=["original", "fused"])
    variants = stages.plan_variants(ctx)
    stored = tmp_path / "stored.onnx"
    stored.write_bytes(mlp_path.read_bytes())
    hits = {variants[1].id: {"artifact_path": stored}}
    with executor(ctx) as ex:
        stages.build(ctx, ex, variants, hits)
    assert variants[1].build["steps"][0]["name"] == "reused from the result cache"
