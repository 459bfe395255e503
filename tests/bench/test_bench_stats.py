"""Stats maths against known values: Student t quantiles, CI of a known sample, percentiles."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from lepton_compile.bench.stats import (
    Stats,
    better_than,
    percentile,
    summarize,
    t_cdf,
    t_quantile,
)

# Two-sided 95% critical values (p = 0.975) from standard t tables.
T975 = {
    1: 12.706204736,
    2: 4.302652730,
    3: 3.182446305,
    4: 2.776445105,
    5: 2.570581836,
    10: 2.228138852,
    30: 2.042272456,
    120: 1.979930405,
}


@pytest.mark.parametrize(("df", "expected"), sorted(T975.items()))
def test_t_quantile_975_matches_tables(df: int, expected: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(expected, rel=1e-8)


def test_t_quantile_other_levels_and_symmetry() -> None:
    assert t_quantile(0.9995, 1) == pytest.approx(636.6192487, rel=1e-8)
    assert t_quantile(0.995, 3) == pytest.approx(5.840909309, rel=1e-8)
    assert t_quantile(0.025, 4) == pytest.approx(-T975[4], rel=1e-8)
    assert t_quantile(0.5, 7) == 0.0


def test_t_quantile_fractional_and_infinite_df() -> None:
    # Fractional df (Welch-type) sits between its integer neighbours.
    assert T975[3] < t_quantile(0.975, 2.5) < T975[2]
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959963985, rel=1e-8)
    assert t_quantile(0.975, 1e7) == pytest.approx(1.959963985, rel=1e-5)


@pytest.mark.parametrize("df", [1, 2.5, 7, 40])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.999])
def test_t_cdf_inverts_quantile(df: float, p: float) -> None:
    assert t_cdf(t_quantile(p, df), df) == pytest.approx(p, abs=1e-10)


def test_t_cdf_df1_is_cauchy() -> None:
    for t in (-3.0, -0.5, 0.0, 1.0, 10.0):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)


def test_t_quantile_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_quantile(0.5, 0)


def test_summarize_known_sample() -> None:
    s = summarize([1, 2, 3, 4, 5])
    assert s.n == 5 and s.ci_n == 5
    assert s.mean == 3.0
    assert s.std == pytest.approx(math.sqrt(2.5))
    assert s.ci95 == pytest.approx(T975[4] * math.sqrt(2.5) / math.sqrt(5), rel=1e-8)
    assert s.ci95 == pytest.approx(1.963243161, rel=1e-8)
    assert (s.min, s.max, s.p50) == (1.0, 5.0, 3.0)
    assert s.low == pytest.approx(3.0 - s.ci95) and s.high == pytest.approx(3.0 + s.ci95)


def test_percentiles_linear_interpolation() -> None:
    s = summarize(range(1, 11))
    assert s.p50 == pytest.approx(5.5)
    assert s.p90 == pytest.approx(9.1)
    assert s.p99 == pytest.approx(9.91)


def test_percentiles_agree_with_numpy() -> None:
    rng = random.Random(3)
    xs = [rng.lognormvariate(0, 0.5) for _ in range(257)]
    s = summarize(xs)
    ref = np.percentile(xs, [50, 90, 99])
    assert [s.p50, s.p90, s.p99] == pytest.approx(list(ref), rel=1e-12)
    assert s.std == pytest.approx(float(np.std(xs, ddof=1)), rel=1e-12)
    assert percentile(sorted(xs), 0) == min(xs) and percentile(sorted(xs), 100) == max(xs)


def test_single_sample_has_unknown_ci_and_valid_json() -> None:
    s = summarize([4.2])
    assert s.ci95 == math.inf and s.std == 0.0
    d = s.to_dict()
    assert d["ci95"] is None and d["mean"] == 4.2 and d["n"] == 1
    json.dumps(d, allow_nan=False)


def test_ci_over_independent_units() -> None:
    runs = [1.0, 1.1, 0.9, 2.0, 2.1, 1.9]
    trial_means = [1.0, 2.0]
    s = summarize(runs, ci_over=trial_means)
    assert s.n == 6 and s.ci_n == 2
    assert s.mean == pytest.approx(1.5)
    assert s.ci95 == pytest.approx(T975[1] * math.sqrt(0.5) / math.sqrt(2), rel=1e-8)


def test_summarize_rejects_empty_and_non_finite() -> None:
    with pytest.raises(ValueError):
        summarize([])
    with pytest.raises(ValueError):
        summarize([1.0, math.nan])
    with pytest.raises(ValueError):
        summarize([1.0, 2.0], ci_over=[])


def _stats(mean: float, ci95: float) -> Stats:
    return Stats(
        n=10,
        mean=mean,
        std=1.0,
        p50=mean,
        p90=mean,
        p99=mean,
        min=mean,
        max=mean,
        ci95=ci95,
        ci_n=10,
    )


def test_better_than_requires_non_overlapping_cis() -> None:
    assert better_than(_stats(10, 1), _stats(13, 1))
    assert not better_than(_stats(13, 1), _stats(10, 1))
    assert not better_than(_stats(10, 1), _stats(11.5, 1))  # means differ, CIs overlap
    assert not better_than(_stats(10, 1), _stats(12, 1))  # touching is not beyond noise


def test_better_than_relative_margin() -> None:
    a, b = _stats(10, 0.1), _stats(11, 0.1)
    assert better_than(a, b)
    assert better_than(a, b, rel_margin=0.05)  # gap 0.8 > 0.55
    assert not better_than(a, b, rel_margin=0.1)  # gap 0.8 < 1.1
    with pytest.raises(ValueError):
        better_than(a, b, rel_margin=-0.1)


def test_better_than_unknown_ci_is_never_better() -> None:
    assert not better_than(_stats(1, math.inf), _stats(100, 1))
    assert not better_than(_stats(1, 0.1), _stats(100, math.inf))


def test_better_than_on_summaries() -> None:
    fast = summarize([1.0, 1.02, 0.98, 1.01, 0.99])
    slow = summarize([2.0, 2.02, 1.98, 2.01, 1.99])
    noisy = summarize([0.5, 3.0, 1.0, 2.5, 1.5])
    assert better_than(fast, slow)
    assert not better_than(slow, fast)
    assert not better_than(noisy, slow) and not better_than(slow, noisy)
