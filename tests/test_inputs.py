"""Eval/calibration inputs: generated ones respect dtypes and names; .npz data is checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import text_model

from lepton_compile.errors import InputError
from lepton_compile.inputs import generate, prepare
from lepton_compile.intake import load_model


@pytest.fixture
def bert_like(tmp_path: Path) -> Path:
    m = text_model(
        """
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[1, 16] input_ids, int64[1, 16] attention_mask, int64[1, 16] token_type_ids)
          => (float[1, 16, 4] y) {
            e = Gather (emb, input_ids)
            t = Gather (temb, token_type_ids)
            s = Add (e, t)
            mf = Cast <to = 1> (attention_mask)
            mu = Unsqueeze (mf, axes)
            y = Mul (s, mu)
        }
        """,
        {
            "emb": np.zeros((30, 4), np.float32),
            "temb": np.zeros((2, 4), np.float32),
            "axes": np.array([-1], np.int64),
        },
    )
    p = tmp_path / "bert.onnx"
    onnx.save(m, p)
    return p


def test_generated_ids_stay_inside_the_embedding_table(bert_like: Path):
    loaded = load_model(bert_like)
    feeds = generate(loaded, 4, seed=0)
    for f in feeds:
        assert f["input_ids"].dtype == np.int64
        assert f["input_ids"].min() >= 0 and f["input_ids"].max() < 30
        assert np.all(f["attention_mask"] == 1)
        assert np.all(f["token_type_ids"] == 0)


def test_generated_is_deterministic(tinycnn_path: Path):
    loaded = load_model(tinycnn_path)
    a = generate(loaded, 2, seed=3)
    b = generate(loaded, 2, seed=3)
    assert np.array_equal(a[1]["images"], b[1]["images"])
    assert a[0]["images"].shape == (1, 3, 96, 96)


def test_prepare_splits_held_out_eval(tmp_path: Path, tinycnn_path: Path):
    loaded = load_model(tinycnn_path)
    d = tmp_path / "data"
    d.mkdir()
    for i in range(6):
        np.savez(d / f"{i:02d}.npz", images=np.full((1, 3, 96, 96), i, np.float32))
    s = prepare(loaded, d, eval_samples=2)
    assert len(s.calibration) == 4 and len(s.eval) == 2
    assert float(s.eval[0]["images"][0, 0, 0, 0]) == 4.0  # the last files are held out


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"image": np.zeros((1, 3, 96, 96), np.float32)}, "missing input"),
        (
            {"images": np.zeros((1, 3, 96, 96), np.float32), "extra": np.zeros(1)},
            "not an input",
        ),
        ({"images": np.zeros((1, 3, 64, 64), np.float32)}, "shape"),
        ({"images": np.zeros((1, 3, 96, 96), np.float64)}, "dtype"),
    ],
)
def test_npz_mismatches_are_clear_errors(tmp_path: Path, tinycnn_path: Path, arrays, match):
    loaded = load_model(tinycnn_path)
    d = tmp_path / "data"
    d.mkdir()
    np.savez(d / "a.npz", **arrays)
    with pytest.raises(InputError, match=match):
        prepare(loaded, d)


def test_empty_or_missing_dir(tmp_path: Path, tinycnn_path: Path):
    loaded = load_model(tinycnn_path)
    with pytest.raises(InputError, match="not a directory"):
        prepare(loaded, tmp_path / "nope")
    with pytest.raises(InputError, match="no .npz"):
        prepare(loaded, tmp_path)


def test_labels_are_kept_apart(tmp_path: Path, tinycnn_path: Path):
    loaded = load_model(tinycnn_path)
    d = tmp_path / "data"
    d.mkdir()
    for i in range(2):
        np.savez(d / f"{i}.npz", images=np.zeros((1, 3, 96, 96), np.float32), label=np.array([i]))
    s = prepare(loaded, d)
    assert "label" not in s.eval[0]
    assert s.labels[0]["label"][0] == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"eval_samples": 0}, "--eval-samples must be at least 1"),
        ({"eval_samples": -99}, "--eval-samples must be at least 1"),
        ({"calibration_samples": -1}, "--calibration-samples must not be negative"),
        ({"seed": -1}, "--seed must not be negative"),
    ],
)
def test_sample_counts_and_seed_are_checked(tinycnn_path: Path, kwargs, match):
    # Before: no eval feed ended in an IndexError later on; numpy refused the seed itself.
    with pytest.raises(InputError, match=match):
        prepare(load_model(tinycnn_path), **kwargs)


def test_inputs_too_large_to_generate_are_bad_input(tinycnn_path: Path):
    # 2.9 TiB of float32: numpy raised MemoryError (or ValueError past its own limit).
    for n in (99_999_999_999, 2**62):
        loaded = load_model(tinycnn_path, {"images": [n, 3, 96, 96]})
        with pytest.raises(InputError, match=r"generated input sample\(s\) of images=.*GiB"):
            prepare(loaded, calibration_samples=0, eval_samples=1)


@pytest.mark.parametrize("axis, table", [(5, (30, 4)), (-3, (30, 4)), (0, (0, 4))])
def test_gather_into_odd_tables_still_generates(tmp_path: Path, axis: int, table):
    # An axis past the table's rank raised IndexError; an empty table, numpy's ValueError.
    m = text_model(
        f"""
        <ir_version: 8, opset_import: ["" : 17]>
        g (int64[1, 6] ids) => (float[1, 6, 4] y) {{ y = Gather <axis = {axis}> (emb, ids) }}
        """,
        {"emb": np.zeros(table, np.float32)},
    )
    p = tmp_path / "m.onnx"
    onnx.save(m, p)
    feeds = generate(load_model(p), 2, seed=0)
    assert feeds[0]["ids"].shape == (1, 6) and feeds[0]["ids"].dtype == np.int64
