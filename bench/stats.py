"""Summary statistics of repeated measurements: percentiles, mean, 95% CIs, paired ratios."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = [
    "Ratio",
    "Stats",
    "better_than",
    "paired_ratio",
    "percentile",
    "summarize",
    "t_cdf",
    "t_quantile",
    "unpaired_ratio",
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


def percentile(samples: Sequence[float], q: float) -> float:
    """q-th percentile (0..100) of samples, linear interpolation between ranks.

    numpy's default definition (Hyndman & Fan type 7), so figures agree with numpy and
    triton.testing.do_bench quantiles.
    """
    if len(samples) == 0:
        raise ValueError("percentile of no samples")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q={q} outside [0, 100]")
    return float(np.percentile(samples, q, method="linear"))


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
    # fsum, not numpy's pairwise sum: exactly rounded, so a mean (and the decisions made on
    # it) does not depend on the order in which trials ran.
    mean = math.fsum(xs) / n
    std = _sample_std(xs, mean)
    p50, p90, p99 = (float(p) for p in np.percentile(xs, [50, 90, 99], method="linear"))
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
        p50=p50,
        p90=p90,
        p99=p99,
        min=min(xs),
        max=max(xs),
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


# --- Paired ratios ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ratio:
    """Geometric-mean ratio of paired series a/b, with its 95% confidence interval.

    Built by ``paired_ratio`` from one value of each series per trial. ``ratio < 1`` means a
    is lower (faster, or less energy) than b. ``low``/``high`` bound the ratio; ``n`` is the
    number of trials (pairs) and ``method`` says how the interval was made.
    """

    n: int
    ratio: float
    low: float
    high: float
    method: str = "t on per-trial log-ratios"

    @property
    def below_one(self) -> bool:
        """a is lower than b beyond noise: the whole interval lies under 1."""
        return math.isfinite(self.high) and self.high < 1.0

    @property
    def above_one(self) -> bool:
        """a is higher than b beyond noise: the whole interval lies over 1."""
        return math.isfinite(self.low) and self.low > 1.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "ratio": _finite_or_none(self.ratio),
            "ci95": [_finite_or_none(self.low), _finite_or_none(self.high)],
            "method": self.method,
        }


def paired_ratio(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Ratio:
    """The ratio a/b judged trial by trial: mean of log(a_i / b_i), t interval, exponentiated.

    Each trial runs every variant under the same machine state, so the drift that moves a
    trial's figures together cancels in its ratio; what is left is the variant's own noise.
    The interval is Student's t on the log-ratios rather than a bootstrap: with the 5 to 20
    trials a search can afford, a percentile bootstrap covers less than its nominal 95%, while
    the t interval is exact for log-normal noise (the usual shape of timing noise) and close
    for other shapes at these n. Fewer than two pairs give an unbounded interval.
    """
    if len(a) != len(b):
        raise ValueError(f"paired_ratio needs one value of each per trial ({len(a)} vs {len(b)})")
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    logs = []
    for x, y in zip(a, b, strict=True):
        if not (x > 0 and y > 0 and math.isfinite(x) and math.isfinite(y)):
            raise ValueError("paired_ratio needs positive, finite values")
        logs.append(math.log(x) - math.log(y))
    n = len(logs)
    if n == 0:
        raise ValueError("paired_ratio needs at least one pair")
    mean = math.fsum(logs) / n
    if n < 2:
        return Ratio(n, math.exp(mean), 0.0, math.inf)
    half = t_quantile(0.5 + confidence / 2.0, n - 1) * _sample_std(logs, mean) / math.sqrt(n)
    return Ratio(n, math.exp(mean), math.exp(mean - half), math.exp(mean + half))


def unpaired_ratio(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Ratio:
    """The ratio of geometric means a/b from independent series, with a Welch t interval on
    the difference of mean logs. For figures that did not share their trials (two runs, or
    two measurement groups); paired_ratio is much tighter where trials were shared."""
    if not 0.0 < confidence < 1.0:
        raise ValueError("confidence must be in (0, 1)")
    la, lb = _logs(a), _logs(b)
    ma, mb = math.fsum(la) / len(la), math.fsum(lb) / len(lb)
    point = math.exp(ma - mb)
    if len(la) < 2 or len(lb) < 2:
        return Ratio(min(len(la), len(lb)), point, 0.0, math.inf, "Welch t on log values")
    va = _sample_std(la, ma) ** 2 / len(la)
    vb = _sample_std(lb, mb) ** 2 / len(lb)
    se = math.sqrt(va + vb)
    if se == 0.0:
        return Ratio(min(len(la), len(lb)), point, point, point, "Welch t on log values")
    df = (va + vb) ** 2 / (va**2 / (len(la) - 1) + vb**2 / (len(lb) - 1))
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    return Ratio(
        min(len(la), len(lb)),
        point,
        math.exp(ma - mb - half),
        math.exp(ma - mb + half),
        "Welch t on log values",
    )


def _logs(xs: Sequence[float]) -> list[float]:
    if not xs:
        raise ValueError("a ratio needs at least one value on each side")
    out = []
    for x in xs:
        if not (x > 0 and math.isfinite(x)):
            raise ValueError("ratios need positive, finite values")
        out.append(math.log(x))
    return out


# --- Student t distribution (scipy) -------------------------------------------------------


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t with ``df`` (> 0, may be fractional) degrees of freedom."""
    if df <= 0:
        raise ValueError("df must be > 0")
    if math.isinf(df):
        return NormalDist().cdf(t)
    from scipy.stats import t as student_t

    return float(student_t.cdf(t, df))


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t: the t with t_cdf(t, df) == p."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p={p} outside (0, 1)")
    if df <= 0:
        raise ValueError("df must be > 0")
    if math.isinf(df):
        return NormalDist().inv_cdf(p)
    from scipy.stats import t as student_t

    return float(student_t.ppf(p, df))
