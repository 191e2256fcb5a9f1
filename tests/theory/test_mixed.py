"""The independent mixed KL-chi^2 solver, checked on its own."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import softmax

from pmdlab.theory import pmd_part
from pmdlab.theory.divergences import mixed_objective
from pmdlab.theory.mixed import mixed_kl_chi2_argmax

from .strategies import problems


@given(problems(max_k=5, tau_min=0.05, allow_zeros=False), st.floats(0.0, 2.0))
def test_maximises_the_mixed_objective(problem, beta):
    pi, r, tau = problem
    res = mixed_kl_chi2_argmax(pi, r, tau, beta)
    ours = mixed_objective(res.policy, pi, r, tau, beta)
    found = minimize(lambda z: -mixed_objective(softmax(z), pi, r, tau, beta), np.log(pi), method="BFGS")
    assert ours >= -found.fun - 1e-10
    assert abs(res.policy.sum() - 1) < 1e-13


@given(problems(tau_min=1e-3), st.floats(1e-6, 5.0))
def test_satisfies_its_stationarity_condition(problem, beta):
    pi, r, tau = problem
    res = mixed_kl_chi2_argmax(pi, r, tau, beta)
    x = res.log_ratio
    lhs = tau * x + 2 * beta * np.exp(x) - (r - tau - res.multiplier)
    assert np.abs(lhs[pi > 0]).max() <= 1e-12 * max(1.0, np.abs(r).max(), 2 * beta * np.exp(x).max())


@given(problems(tau_min=1e-3))
def test_beta_zero_is_pmd_part(problem):
    pi, r, tau = problem
    assert np.allclose(mixed_kl_chi2_argmax(pi, r, tau, 0.0).policy, pmd_part(pi, r, tau).policy, atol=1e-12)


def test_large_beta_stays_near_pi():
    pi, r = np.array([0.2, 0.3, 0.5]), np.array([1.0, 0.0, 0.5])
    steps = [np.abs(mixed_kl_chi2_argmax(pi, r, 0.1, b).policy - pi).max() for b in (0.1, 10.0, 1000.0)]
    assert steps[0] > steps[1] > steps[2] and steps[2] < 1e-3


def test_batched_with_per_prompt_parameters():
    rng = np.random.default_rng(0)
    pi, r = rng.dirichlet(np.ones(4), size=3), rng.normal(size=(3, 4))
    res = mixed_kl_chi2_argmax(pi, r, np.array([0.1, 1.0, 3.0]), np.array([0.0, 0.5, 2.0]))
    for i, (tau, beta) in enumerate(((0.1, 0.0), (1.0, 0.5), (3.0, 2.0))):
        assert np.allclose(res.policy[i], mixed_kl_chi2_argmax(pi[i], r[i], tau, beta).policy, rtol=1e-14)
    with pytest.raises(ValueError, match="beta"):
        mixed_kl_chi2_argmax(pi, r, 0.1, -1.0)
