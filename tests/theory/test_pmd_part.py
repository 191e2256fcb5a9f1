"""PMD-part: the exact KL-regularised step."""

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given
from scipy.optimize import minimize
from scipy.special import softmax

from pmdlab.theory import pmd_part
from pmdlab.theory.divergences import kl_objective
from pmdlab.theory.reference import pmd_part_reference

from .strategies import problems


@given(problems(tau_min=1e-4))
def test_is_the_softmax_tilt(problem):
    pi, r, tau = problem
    res = pmd_part(pi, r, tau)
    with np.errstate(divide="ignore"):
        tilt = softmax(np.log(pi) + r / tau)
    assert np.allclose(res.policy, tilt, rtol=0, atol=1e-13 * max(1.0, np.abs(r).max() / tau))
    assert np.all(res.policy[pi == 0] == 0)


@given(problems(tau_min=1e-3))
def test_target_is_feasible_so_the_regression_recovers_it(problem):
    pi, r, tau = problem
    res = pmd_part(pi, r, tau)
    support = pi > 0
    total = np.sum(pi[support] * np.exp(res.log_ratio[support]))
    assert total == pytest.approx(1.0, abs=1e-12 * max(1.0, np.abs(r).max() / tau))
    assert np.allclose(
        res.log_ratio, r / tau - res.log_partition, rtol=0, atol=8e-16 * max(1, np.abs(r).max() / tau)
    )


@given(problems(max_k=5, tau_min=0.1, allow_zeros=False))
def test_maximises_the_kl_objective(problem):
    pi, r, tau = problem
    res = pmd_part(pi, r, tau)
    found = minimize(lambda z: -kl_objective(softmax(z), pi, r, tau), np.log(pi), method="BFGS")
    assert kl_objective(res.policy, pi, r, tau) >= -found.fun - 1e-10


def test_against_60_digits_at_small_tau():
    rng = np.random.default_rng(0)
    pi, r = rng.dirichlet(np.ones(6)), rng.uniform(size=6)
    for tau in (1e-4, 1e-2, 1.0):
        policy, s = pmd_part_reference(pi, r, tau)
        res = pmd_part(pi, r, tau)
        assert np.allclose(res.policy, [float(x) for x in policy], rtol=1e-10, atol=1e-300)
        assert np.allclose(res.log_ratio, [float(x) for x in s], rtol=1e-13 / tau)


def test_no_overflow_at_tiny_tau():
    res = pmd_part(np.array([0.3, 0.7]), np.array([1.0, 0.0]), 1e-4)
    assert res.policy[0] == 1.0 and np.isfinite(res.log_ratio).all()
    with mp.workdps(30):
        assert res.log_partition == pytest.approx(float(mp.log(0.3 * mp.exp(10000) + 0.7)), rel=1e-15)
