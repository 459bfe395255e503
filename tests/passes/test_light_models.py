"""Integration: the "fused" pipeline over the onnx wheel's light models, checked on ORT."""

from __future__ import annotations

import glob
import logging
import os

import numpy as np
import onnx
import onnx.helper
import onnx.numpy_helper
import pytest
from pass_harness import with_random_weights

from lepton_compile.passes import optimize
from lepton_compile.passes.testing import assert_same_outputs, random_inputs, run_ort

logger = logging.getLogger(__name__)

LIGHT_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
LIGHT_MODELS = sorted(glob.glob(os.path.join(LIGHT_DIR, "light_*.onnx")))

# Published counts for comparison (FIELD-NOTES): onnxsim / ORT extended (contrib ops).
PEERS = {
    "light_resnet50": (123, 90),
    "light_densenet121": (550, 432),
    "light_inception_v2": (226, 110),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: os.path.basename(p)[:-5])
def test_fused_pipeline_on_light_model(path):
    name = os.path.basename(path)[:-5]
    model = onnx.load(path)
    result = optimize(model, pipeline="fused", target="ort")
    before, after = len(model.graph.node), len(result.model.graph.node)
    peers = PEERS.get(name)
    message = f"{name}: {before} -> {after} nodes" + (
        f" (onnxsim {peers[0]}, ORT extended {peers[1]})" if peers else ""
    )
    logger.info(message)
    print(message)
    assert after < before
    # Only the data input remains; the weights are no longer graph inputs.
    assert len(result.model.graph.input) == 1
    assert_same_outputs(model, result.model, rtol=1e-4, atol=1e-5)
    again = optimize(result.model, pipeline="fused")
    assert [r.name for r in again.records if r.modified] == [], "pipeline is not idempotent"
    if name == "light_resnet50":
        assert after <= 123


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["light_resnet50", "light_densenet121", "light_inception_v2", "light_shufflenet"]
)
def test_fused_pipeline_on_light_model_random_weights(name):
    model = with_random_weights(onnx.load(os.path.join(LIGHT_DIR, f"{name}.onnx")))
    onnx.checker.check_model(model)
    result = optimize(model, pipeline="fused")
    assert len(result.model.graph.node) < len(model.graph.node)
    feeds = random_inputs(model, seed=0)
    (expected,) = run_ort(model, feeds)
    (actual,) = run_ort(result.model, feeds)
    assert expected.std() > 0.1  # logits that actually vary
    # fp32 tolerance relative to the logits' scale: folding reorders the arithmetic.
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * scale)
