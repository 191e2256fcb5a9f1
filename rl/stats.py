"""Intervals over seeds, for every comparison the project reports.

A run's outcome (final held-out accuracy, final success) is one number per
seed; a method is summarised by the mean over its seeds and a 95% percentile
bootstrap interval of that mean, and two methods by the interval of the
difference of their means, resampling each method's seeds independently
(``scipy.stats.bootstrap``). With few seeds the percentile interval is
narrower than the truth (with 3 seeds it cannot be wider than the range of
the three values); the number of seeds is therefore always reported beside
it.

A comparison *holds* only when its interval excludes zero: ``A > B`` needs
the lower end of the interval of ``mean(A) - mean(B)`` above 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Interval", "bootstrap_mean", "bootstrap_difference"]

#: Resamples drawn by default (the interval's ends move by about 1e-3 between seeds of the bootstrap).
RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """A point estimate with a confidence interval, from ``n`` values per method."""

    estimate: float
    low: float
    high: float
    n: int | tuple[int, int]
    confidence: float = 0.95

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _values(values: Sequence[float], name: str) -> np.ndarray:
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size < 2:
        raise ValueError(
            f"{name} must be a 1-D sequence of at least 2 numbers (one per seed) for an interval, "
            f"got shape {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite, got {x.tolist()}")
    return x


def _bootstrap(samples, statistic, confidence, resamples, seed) -> tuple[float, float]:
    from scipy.stats import bootstrap

    if all(np.ptp(s) == 0 for s in samples):  # no spread: every resample gives the same statistic
        value = float(statistic(*samples))
        return value, value
    res = bootstrap(
        samples,
        statistic,
        n_resamples=resamples,
        confidence_level=confidence,
        method="percentile",
        paired=False,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _difference(a, b, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def bootstrap_mean(
    values: Sequence[float], confidence: float = 0.95, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Mean of ``values`` and its percentile bootstrap interval: the ``(1 ± confidence)/2``
    quantiles of ``mean(x*)`` over resamples ``x*`` drawn with replacement from ``values``."""
    x = _values(values, "values")
    low, high = _bootstrap((x,), _mean, confidence, resamples, seed)
    return Interval(float(x.mean()), low, high, int(x.size), confidence)


def bootstrap_difference(
    a: Sequence[float],
    b: Sequence[float],
    confidence: float = 0.95,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """``mean(a) - mean(b)`` and its percentile bootstrap interval, ``a`` and ``b`` resampled
    independently (different methods' seeds are different runs)."""
    x, y = _values(a, "a"), _values(b, "b")
    low, high = _bootstrap((x, y), _difference, confidence, resamples, seed)
    return Interval(float(x.mean() - y.mean()), low, high, (int(x.size), int(y.size)), confidence)
