"""Summary statistics of repeated measurements: percentiles, mean, Student-t 95% CI, comparison."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

__all__ = [
    "Stats",
    "better_than",
    "percentile",
    "summarize",
    "t_cdf",
    "t_quantile",
]


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of one series of samples.

    ``ci95`` is the half-width of the 95% confidence interval of the mean (Student t), computed
    from ``ci_n`` samples. Usually ``ci_n == n``; when the raw samples are not independent (runs
    inside one timing window) the caller passes the independent units (per-window means) and
    ``ci_n`` says how many there were. ``ci95`` is ``inf`` when fewer than two independent
    samples exist: the mean is then known with no stated precision.
    """

    n: int
    mean: float
    std: float
    p50: float
    p90: float
    p99: float
    min: float
    max: float
    ci95: float
    ci_n: int

    @property
    def low(self) -> float:
        """Lower bound of the 95% CI of the mean."""
        return self.mean - self.ci95

    @property
    def high(self) -> float:
        """Upper bound of the 95% CI of the mean."""
        return self.mean + self.ci95

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; non-finite values (an unknown CI) become None, which JSON can hold."""
        return {
            k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in asdict(self).items()
        }


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def percentile(sorted_samples: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) of already sorted samples, linear interpolation between ranks.

    Same definition as numpy's default (Hyndman & Fan type 7), so figures agree with numpy and
    triton.testing.do_bench quantiles.
    """
    n = len(sorted_samples)
    if n == 0:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} outside [0, 100]")
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * frac


def summarize(samples: Sequence[float], ci_over: Sequence[float] | None = None) -> Stats:
    """Summarize samples: n, mean, sample std (ddof=1), p50/p90/p99, min, max and ci95.

    ``ci_over``: independent units to compute ci95 from instead of ``samples`` (e.g. per-trial
    means when the samples are individual runs that share a trial's machine state).
    """
    xs = [float(x) for x in samples]
    if not xs:
        raise ValueError("summarize() needs at least one sample")
    if not all(math.isfinite(x) for x in xs):
        raise ValueError("summarize() got a non-finite sample (nan or inf)")
    n = len(xs)
    mean = math.fsum(xs) / n
    std = _sample_std(xs, mean)
    s = sorted(xs)
    if ci_over is None:
        ci95, ci_n = _ci95(std, n), n
    else:
        units = [float(x) for x in ci_over]
        if not units or not all(math.isfinite(x) for x in units):
            raise ValueError("ci_over must hold at least one finite value")
        ci_n = len(units)
        ci95 = _ci95(_sample_std(units, math.fsum(units) / ci_n), ci_n)
    return Stats(
        n=n,
        mean=mean,
        std=std,
        p50=percentile(s, 50),
        p90=percentile(s, 90),
        p99=percentile(s, 99),
        min=s[0],
        max=s[-1],
        ci95=ci95,
        ci_n=ci_n,
    )


def _sample_std(xs: Sequence[float], mean: float) -> float:
    if len(xs) < 2:
        return 0.0
    return math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def _ci95(std: float, n: int) -> float:
    if n < 2:
        return math.inf
    return t_quantile(0.975, n - 1) * std / math.sqrt(n)


def better_than(a: Stats, b: Stats, rel_margin: float = 0.0) -> bool:
    """True when a's mean is lower than b's beyond noise (and by more than ``rel_margin``).

    Test used: the 95% CIs do not overlap, with a gap of at least ``rel_margin * |b.mean|``:
    ``a.mean + a.ci95 < b.mean - b.ci95 - rel_margin * |b.mean|``.

    Chosen over a Welch t-test because it needs only (mean, ci95), so it stays right when ci95
    was computed over per-trial means rather than over the raw samples (a Welch test on the raw
    runs' std and n would treat correlated runs as independent and call noise a win). Non-
    overlap of two 95% CIs is conservative (about p < 0.006 for equal errors): the selection
    would rather keep the baseline than claim a win that is noise. Unknown CIs (``inf``, fewer
    than two trials) never show a difference.
    """
    if rel_margin < 0:
        raise ValueError("rel_margin must be >= 0")
    gap = rel_margin * abs(b.mean)
    a_hi = a.mean + a.ci95
    b_lo = b.mean - b.ci95
    if not (math.isfinite(a_hi) and math.isfinite(b_lo)):
        return False
    return a_hi < b_lo - gap


# --- Student t distribution, without scipy -------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz, Numerical Recipes 6.4)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betai(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(ln_front)
    # The continued fraction converges fast only on this side of the mean; use symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` (> 0, may be fractional) degrees of freedom."""
    if df <= 0:
        raise ValueError("df must be > 0")
    if math.isinf(df):
        return NormalDist().cdf(t)
    tail = 0.5 * _betai(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t: the t with t_cdf(t, df) == p (bisection on the exact CDF)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} outside (0, 1)")
    if df <= 0:
        raise ValueError("df must be > 0")
    if math.isinf(df):
        return NormalDist().inv_cdf(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0
    lo, hi = 0.0, max(1.0, NormalDist().inv_cdf(p))
    while t_cdf(hi, df) < p:  # t has heavier tails than the normal: widen until bracketed
        lo, hi = hi, hi * 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * hi:
            break
    return 0.5 * (lo + hi)
