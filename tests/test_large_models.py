"""Models past the protobuf limit run end to end: the limit is lowered so small models take
the external-data path (written, copied, hashed and checked from files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from lepton_compile import intake, modelio
from lepton_compile.passes.model_size import ENV_LIMIT, over_limit


@pytest.fixture
def low_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_LIMIT, "4096")


@pytest.fixture
def external_model(tinycnn_path: Path, tmp_path: Path) -> Path:
    path = tmp_path / "big.onnx"
    m = onnx.load(str(tinycnn_path))
    onnx.save(m, str(path), save_as_external_data=True, location="big.onnx.data", size_threshold=0)
    return path


def test_the_limit_is_one_lowerable_constant(low_limit, tinycnn_path: Path):
    assert over_limit(onnx.load(str(tinycnn_path)))


def test_model_hash_covers_external_data(external_model: Path):
    before = intake.load_model(external_model).sha256
    data = external_model.with_name("big.onnx.data")
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x01  # same graph, one weight changed
    data.write_bytes(bytes(raw))
    assert intake.load_model(external_model).sha256 != before


def test_save_and_copy_keep_data_beside_each_file(low_limit, tinycnn_path: Path, tmp_path: Path):
    m = onnx.load(str(tinycnn_path))
    a = modelio.save_model(m, tmp_path / "a" / "m.onnx")
    assert (tmp_path / "a" / "m.onnx.data").is_file()
    assert m.graph.initializer[0].data_location == onnx.TensorProto.DEFAULT  # caller's untouched
    b = modelio.copy_model(a, tmp_path / "b" / "n.onnx")
    assert (tmp_path / "b" / "n.onnx.data").is_file()
    modelio.check_model(onnx.load(str(b)), b)
    x = np.random.default_rng(0).random((1, 3, 96, 96), dtype=np.float32)
    name = m.graph.input[0].name
    want = ort.InferenceSession(str(tinycnn_path), providers=["CPUExecutionProvider"])
    got = ort.InferenceSession(str(b), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got.run(None, {name: x})[0], want.run(None, {name: x})[0])


def test_compile_end_to_end_over_the_limit(low_limit, external_model: Path, tmp_path: Path):
    """Every recipe builds, checks (from files), verifies and measures; the outputs load."""
    import lepton_compile

    result = lepton_compile.compile(
        external_model,
        recipes=["original", "fused", "fp16", "int8-dynamic", "int8-qdq"],
        quick=True,
        cache=False,
    )
    status = {v.recipe.name: (v.status, v.reason) for v in result.variants}
    for name in ("original", "fused", "fp16", "int8-qdq"):
        assert status[name][0] in ("ok", "dropped"), status
    out = result.save(tmp_path / "out")
    best = out / "best.onnx"
    data = sorted(p.name for p in out.iterdir() if p.name.endswith(".data"))
    assert len(data) == 1, data  # best.onnx's own data file
    ort.InferenceSession(str(best), providers=["CPUExecutionProvider"])
    for v in result.variants:
        if v.status in ("ok", "dropped") and v.recipe.name != "original":
            assert (out / "variants" / f"{v.recipe.name}.onnx.data").is_file(), v.id


def test_optimize_verifies_over_the_limit(low_limit, external_model: Path, tmp_path: Path, capsys):
    """Verification runs from files instead of being skipped; the output has its data file."""
    import json

    from lepton_compile.cli import main

    out = tmp_path / "opt.onnx"
    code = main(["optimize", str(external_model), "-o", str(out), "--json", "--no-speed-check"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads(capsys.readouterr().out)
    assert summary["verification"]["status"] == "passed"
    assert (tmp_path / "opt.onnx.data").is_file()
    ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
