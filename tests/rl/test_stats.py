"""Intervals over seeds against the exact bootstrap distribution, enumerated by brute force."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmdlab.rl.stats import (
    bootstrap_difference,
    bootstrap_mean,
    coverage,
    difference_interval,
    mean_interval,
    t_difference,
    t_mean,
    t_paired_difference,
)

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


# --------------------------------------------------------------------- Student t, against scipy's tests


@given(values)
def test_the_t_interval_is_scipys_interval_of_the_mean(x):
    from scipy import stats

    got = t_mean(x)
    if np.std(x) == 0:
        assert got.low == got.high == pytest.approx(np.mean(x))
        return
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (got.low, got.high) == pytest.approx((low, high), rel=1e-9, abs=1e-9)
    assert got.method == "t" and "(t, " in str(got)


@given(
    values.flatmap(
        lambda a: st.tuples(st.just(a), st.lists(st.floats(-10, 10), min_size=len(a), max_size=len(a)))
    )
)
def test_the_paired_interval_is_scipys_paired_t_test_interval(pair):
    from scipy import stats

    a, b = map(np.asarray, pair)
    got = t_paired_difference(a, b)
    assert got.estimate == pytest.approx(np.mean(a - b), abs=1e-9)
    if np.std(a - b) < 1e-9:
        return
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-7, abs=1e-7)
    assert str(got).endswith(f"(paired t, n = {len(a)})")


@given(values, values)
@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_the_unpaired_interval_is_welchs(a, b):
    from scipy import stats

    got = t_difference(a, b)
    if np.std(a) == 0 and np.std(b) == 0:
        return
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (got.low, got.high) == pytest.approx((ci.low, ci.high), rel=1e-7, abs=1e-7)


def test_pairing_cancels_what_the_seeds_share():
    """Each seed's draw moves both methods alike: the paired interval sees b - a = 0.05 every time,
    the unpaired one drowns it in the seeds' spread."""
    seed_effect = np.array([0.1, 0.4, 0.25])
    a, b = seed_effect, seed_effect + 0.05 + np.array([0.001, -0.002, 0.001])
    assert difference_interval(b, a, paired=True).excludes_zero()
    assert not difference_interval(b, a, paired=False).excludes_zero()


def test_few_seeds_get_t_intervals_and_many_the_bootstrap():
    assert mean_interval([0.1, 0.2, 0.4]).method == "t"
    assert mean_interval(np.linspace(0, 1, 10), resamples=500).method == "percentile bootstrap"
    assert difference_interval([1, 2, 3], [0, 1, 1], paired=True).method == "paired t"
    assert difference_interval([1, 2, 3], [0, 1, 1]).method == "Welch t"
    many = np.linspace(0, 1, 12)
    assert (
        difference_interval(many, many - 0.1, paired=True, resamples=500).method
        == "paired percentile bootstrap"
    )


@pytest.mark.parametrize("n", [3, 5])
def test_on_normal_values_the_t_interval_covers_95_percent_and_the_bootstrap_does_not_at_3(n):
    """Coverage over 4000 simulated draws (standard error 0.35 points): the t-interval's is within 2
    points of 95%; the percentile bootstrap's falls short at 3 seeds (and still at 5)."""

    def normal(rng, shape):
        return rng.normal(0.3, 0.1, shape)

    assert abs(coverage(t_mean, normal, n, 4000, 0.3) - 0.95) <= 0.02

    def boot(x, c):
        return bootstrap_mean(x, c, resamples=1000)

    boot_coverage = coverage(boot, normal, n, 1000, 0.3)
    assert boot_coverage < (0.85 if n == 3 else 0.90)
