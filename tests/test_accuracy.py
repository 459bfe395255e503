"""Fidelity metrics: cosine, SQNR, max abs error, top-1 agreement, and the pass/fail rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lepton_compile.accuracy import compare, compare_output


def test_identical_outputs():
    r = [np.arange(10, dtype=np.float32)]
    f = compare_output("y", r, r, score=False)
    assert f.cosine == pytest.approx(1.0)
    assert math.isinf(f.sqnr_db) and f.max_abs == 0.0 and f.drop == 0.0


def test_known_sqnr_and_max_abs():
    ref = np.ones(100, np.float64)
    out = ref + 0.1  # noise power 0.01 vs signal 1 -> 20 dB
    f = compare_output("y", [ref], [out], score=False)
    assert f.sqnr_db == pytest.approx(20.0, abs=1e-6)
    assert f.max_abs == pytest.approx(0.1)


def test_top1_agreement_counts_rows():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], np.float32)
    out = ref.copy()
    out[0] = [0.9, 0.1]  # one of four flips
    f = compare_output("p", [ref], [out], score=True)
    assert f.top1_agreement == pytest.approx(0.75)
    assert f.drop == pytest.approx(0.25)


def test_compare_rejects_beyond_max_drop():
    rng = np.random.default_rng(0)
    ref = [{"y": rng.standard_normal((4, 16)).astype(np.float32)}]
    good = [{"y": ref[0]["y"] + 1e-4}]
    bad = [{"y": -ref[0]["y"]}]
    assert compare(ref, good, set(), 0.01).passed
    res = compare(ref, bad, set(), 0.01)
    assert not res.passed and "drop" in res.reason


def test_nan_and_shape_mismatch_fail():
    ref = [{"y": np.ones((2, 2), np.float32)}]
    assert not compare(ref, [{"y": np.full((2, 2), np.nan, np.float32)}], set(), 0.5).passed
    assert not compare(ref, [{"y": np.ones((4,), np.float32)}], set(), 0.5).passed
    assert not compare(ref, [{"z": np.ones((2, 2), np.float32)}], set(), 0.5).passed


def test_report_dict_is_json_safe():
    import json

    r = [np.ones(4, np.float32)]
    d = compare([{"y": r[0]}], [{"y": r[0]}], set(), 0.01).to_dict()
    json.dumps(d, allow_nan=False)
    assert d["passed"] is True and d["outputs"]["y"]["sqnr_db"] == "inf"


def test_string_outputs_compare_exactly():
    # np.asarray(["cat"], float64) raises: a string output used to end the run.
    r = [np.array(["cat", "dog"])]
    assert compare_output("label", r, [np.array(["cat", "dog"])], score=False).drop == 0.0
    f = compare([{"label": r[0]}], [{"label": np.array(["cat", "emu"])}], set(), 0.01)
    assert not f.passed and f.drop == 1.0


def test_complex_outputs_keep_their_imaginary_part():
    r = [np.array([1 + 1j, 2 - 1j], dtype=np.complex64)]
    assert compare_output("z", r, r, score=False).drop == 0.0
    f = compare_output("z", r, [np.array([1 - 1j, 2 + 1j], dtype=np.complex64)], score=False)
    assert f.drop > 0.5
