"""Work that recipes of one run share is computed once; cheap layer reverts match rebuilds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from lepton_compile import compress, intake, passes, recipes, shared


@pytest.fixture
def mlp(mlp_path: Path) -> onnx.ModelProto:
    return intake.load_model(mlp_path, {"x": [1, 32]}).model


def _feeds(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 32)).astype(np.float32)} for _ in range(n)]


class Counter:
    def __init__(self, fn, when=lambda *a, **k: True):
        self.fn, self.when, self.calls = fn, when, 0

    def __call__(self, *args, **kwargs):
        if self.when(*args, **kwargs):
            self.calls += 1
        return self.fn(*args, **kwargs)


def test_int8_recipes_share_calibration_reference_and_pipeline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mlp: onnx.ModelProto
):
    from onnxruntime.quantization import calibrate

    calib = Counter(calibrate.MinMaxCalibrater.collect_data)
    monkeypatch.setattr(
        calibrate.MinMaxCalibrater, "collect_data", lambda self, reader: calib(self, reader)
    )
    reference = Counter(compress.run_ort, when=lambda model, feeds: model is mlp)
    monkeypatch.setattr(compress, "run_ort", reference)
    pipeline = Counter(passes.optimize)
    monkeypatch.setattr(passes, "optimize", pipeline)

    ctx = compress.AccuracyContext(max_drop=0.05, shared_dir=str(tmp_path / "shared"))
    feeds = _feeds(8)
    built = {}
    for name in ("int8-mixed", "int8-gpu", "int8-mixed"):
        model, steps = recipes.build(recipes.RECIPES[name], mlp, feeds, accuracy=ctx)
        built.setdefault(name, (model, steps))
    # Three builds, each of the shared parts computed once.
    assert calib.calls == 1
    assert reference.calls == 1
    assert pipeline.calls == 1
    reused = built["int8-gpu"][1][-1]
    assert reused["name"] == "shared with other recipes"
    assert set(reused["reused"]) == {"calibration", "pipeline-fused", "reference"}

    # The result is the one an unshared build gives.
    alone, _ = recipes.build(
        recipes.RECIPES["int8-gpu"], mlp, feeds, accuracy=compress.AccuracyContext(max_drop=0.05)
    )
    a = compress.run_ort(built["int8-gpu"][0], feeds)
    b = compress.run_ort(alone, feeds)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["y"], y["y"])


def test_nothing_is_shared_without_a_directory(mlp: onnx.ModelProto):
    store = shared.SharedStore(None)
    calls = []
    assert store.value("x", "k", lambda: calls.append(1) or 5) == 5
    assert store.value("x", "k", lambda: calls.append(1) or 5) == 5
    assert len(calls) == 2 and not store.enabled


def test_store_survives_a_damaged_file(tmp_path: Path):
    store = shared.SharedStore(tmp_path)
    assert store.value("v", "k", lambda: [1, 2]) == [1, 2]
    p = store.path("v", "k", ".pkl")
    assert p is not None
    p.write_bytes(b"not a pickle")
    assert store.value("v", "k", lambda: [3]) == [3]


def test_fingerprints_tell_models_and_feeds_apart(mlp: onnx.ModelProto):
    other = onnx.ModelProto()
    other.CopyFrom(mlp)
    other.graph.initializer[0].raw_data = bytes(len(other.graph.initializer[0].raw_data))
    assert shared.model_fingerprint(mlp) != shared.model_fingerprint(other)
    assert shared.model_fingerprint(mlp) == shared.model_fingerprint(mlp)
    assert shared.feeds_fingerprint(_feeds(2)) != shared.feeds_fingerprint(_feeds(2, seed=1))
    assert shared.feeds_fingerprint(_feeds(2)) == shared.feeds_fingerprint(_feeds(2))


@pytest.mark.parametrize("cls", ["QuantizeDynamicInt8Pass", "QuantizeInt4WeightOnlyPass"])
def test_splice_revert_matches_a_rebuild(cls: str, mlp: onnx.ModelProto):
    import onnx_ir as ir

    from lepton_compile.passes import quantize

    named = quantize.ensure_node_names(mlp)
    klass = getattr(quantize, cls)
    opts = {"block_size": 16} if "Int4" in cls else {}
    layers = klass(**opts).candidates(named)
    assert len(layers) == 2
    full = ir.serde.serialize_model(klass(**opts)(ir.serde.deserialize_model(named)).model)
    feeds = _feeds(3)
    for kept in ([layers[0]], [layers[1]], layers):
        spliced = compress.revert_nodes(full, named, kept)
        assert spliced is not None
        onnx.checker.check_model(spliced, full_check=True)
        rebuilt = ir.serde.serialize_model(
            klass(**opts, nodes_to_exclude=tuple(kept))(ir.serde.deserialize_model(named)).model
        )
        assert sorted(n.op_type for n in spliced.graph.node) == sorted(
            n.op_type for n in rebuilt.graph.node
        )
        for x, y in zip(
            compress.run_ort(spliced, feeds), compress.run_ort(rebuilt, feeds), strict=True
        ):
            np.testing.assert_allclose(x["y"], y["y"], rtol=0, atol=1e-6)
    assert compress.revert_nodes(full, named, ["no-such-node"]) is None
