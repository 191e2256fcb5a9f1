"""Intervals over seeds against the exact bootstrap distribution, enumerated by brute force."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmdlab.rl.stats import bootstrap_difference, bootstrap_mean

values = st.lists(st.floats(-10, 10, allow_nan=False, allow_subnormal=False), min_size=2, max_size=6)


def exact_quantile(atoms: np.ndarray, q: float) -> float:
    """The q-quantile of a distribution putting equal mass on each entry of ``atoms``."""
    return float(np.sort(atoms)[min(int(np.floor(q * atoms.size)), atoms.size - 1)])


def enumerated_means(x: np.ndarray) -> np.ndarray:
    """Every ordered resample of ``x`` with replacement (n^n of them, equally likely): their means."""
    return np.array([np.mean(c) for c in itertools.product(x, repeat=x.size)])


@pytest.mark.parametrize("x", [[0.2, 0.5, 0.9], [0.1, 0.1, 0.4, 0.7], [0.0, 0.25, 0.3, 0.6, 1.0]])
def test_the_mean_interval_is_the_exact_bootstrap_distributions_quantiles(x):
    atoms = enumerated_means(np.array(x))
    got = bootstrap_mean(x, resamples=20_000)
    # A Monte Carlo quantile lies between the exact quantiles a little inside and outside it.
    assert exact_quantile(atoms, 0.015) <= got.low <= exact_quantile(atoms, 0.035)
    assert exact_quantile(atoms, 0.965) <= got.high <= exact_quantile(atoms, 0.985)
    assert got.estimate == pytest.approx(np.mean(x)) and got.n == len(x)


def test_the_difference_interval_is_the_exact_bootstrap_distributions_quantiles():
    a, b = np.array([0.4, 0.5, 0.8]), np.array([0.1, 0.3, 0.35])
    atoms = (enumerated_means(a)[:, None] - enumerated_means(b)[None, :]).ravel()
    got = bootstrap_difference(a, b, resamples=20_000)
    assert exact_quantile(atoms, 0.015) <= got.low <= exact_quantile(atoms, 0.035)
    assert exact_quantile(atoms, 0.965) <= got.high <= exact_quantile(atoms, 0.985)
    assert got.estimate == pytest.approx(a.mean() - b.mean()) and got.excludes_zero()


@given(values)
def test_the_interval_lies_within_the_values_and_holds_the_mean(x):
    got = bootstrap_mean(x, resamples=2_000)
    assert min(x) - 1e-12 <= got.low <= got.estimate + 1e-12
    assert got.estimate - 1e-12 <= got.high <= max(x) + 1e-12


@given(values, values, st.floats(-5, 5, allow_nan=False))
def test_shifting_one_method_shifts_the_difference(a, b, c):
    base = bootstrap_difference(a, b, resamples=2_000, seed=3)
    shifted = bootstrap_difference(np.add(a, c), b, resamples=2_000, seed=3)
    for u, v in ((base.estimate, shifted.estimate), (base.low, shifted.low), (base.high, shifted.high)):
        assert v == pytest.approx(u + c, abs=1e-9)


def test_overlapping_methods_are_not_called_different():
    # Seeds that overlap: the interval of the difference must contain 0, so a claim "a > b" fails.
    got = bootstrap_difference([0.30, 0.45, 0.52], [0.28, 0.41, 0.55])
    assert got.low < 0 < got.high and not got.excludes_zero()


def test_no_spread_gives_a_point_interval():
    got = bootstrap_mean([0.25, 0.25, 0.25])
    assert (got.low, got.estimate, got.high) == (0.25, 0.25, 0.25)


@pytest.mark.parametrize("bad", [[], [0.7], [0.1, float("nan")], [[0.1, 0.2]]])
def test_bad_values_name_the_argument(bad):
    with pytest.raises(ValueError, match="values must"):
        bootstrap_mean(bad)
