"""PMD-mean's exact update: properties, independent references and the batched paths."""

import mpmath as mp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize
from scipy.special import softmax

from pmdlab.theory import binary, pmd_mean, pmd_mean_step
from pmdlab.theory.divergences import mixed_objective, pmd_mean_regression_loss
from pmdlab.theory.mixed import mixed_kl_chi2_argmax
from pmdlab.theory.reference import binary_mean_reference, pmd_mean_reference

from .strategies import problems

EPS = np.finfo(float).eps


def _scale(r, tau):
    """The size to which the targets a = (r - r̄)/tau are known: eps times this."""
    return max(1.0, np.abs(r).max() / tau)


@given(problems(tau_min=1e-4))
def test_output_is_a_distribution_with_zeros_kept(problem):
    """``pi_{t+1} = pi_t e^s`` with the returned log-ratios, and it sums to 1: the constraint
    ``E_t e^s = 1`` was solved, not imposed afterwards by renormalising."""
    pi, r, tau = problem
    res = pmd_mean(pi, r, tau)
    assert np.all(np.isfinite(res.policy)) and np.all(np.isfinite(res.log_ratio))
    support = pi > 0  # off it the log-ratio is the target, which may overflow e^s
    np.testing.assert_allclose(
        res.policy[support], pi[support] * np.exp(res.log_ratio[support]), rtol=1e-12, atol=1e-300
    )
    assert abs(res.policy.sum() - 1) < 1e-13
    assert np.all(res.policy[pi == 0] == 0)


@given(problems(tau_min=1e-4))
def test_stationarity_s_plus_lambda_exp_s_equals_target(problem):
    pi, r, tau = problem
    res = pmd_mean(pi, r, tau)
    support = pi > 0
    s, a = res.log_ratio[support], res.target[support]
    residual = np.abs(s + res.lam * np.exp(s) - a)
    assert residual.max() <= 64 * EPS * _scale(r, tau)


@given(problems(tau_min=1e-3))
def test_lambda_is_kl_old_to_new(problem):
    pi, r, tau = problem
    res = pmd_mean(pi, r, tau)
    with mp.workdps(40):
        kl = -mp.fsum(mp.mpf(p) * mp.mpf(s) for p, s in zip(pi, res.log_ratio) if p > 0)
    # KL = -E s cancels: the float64 log-ratios carry it to eps E|s| only.
    cancellation = 4 * EPS * np.sum(pi * np.abs(res.log_ratio))
    assert float(kl) == pytest.approx(res.lam, rel=1e-11, abs=cancellation)
    assert res.kl == res.lam and res.chi2_weight == pytest.approx(tau * res.lam / 2, rel=1e-15)


@given(problems(tau_min=1e-4))
def test_log_ratio_never_exceeds_its_target(problem):
    pi, r, tau = problem
    res = pmd_mean(pi, r, tau)
    assert np.all(res.log_ratio - res.target <= 4 * EPS * _scale(r, tau))


@settings(max_examples=25)
@given(problems(max_k=5, tau_min=0.05, allow_zeros=False))
def test_minimises_the_regression_loss(problem):
    pi, r, tau = problem
    res = pmd_mean(pi, r, tau)
    ours = pmd_mean_regression_loss(res.policy, pi, r, tau)

    def loss(z):
        return pmd_mean_regression_loss(softmax(z), pi, r, tau)

    found = minimize(loss, np.log(pi), method="BFGS", options={"gtol": 1e-12})
    assert ours <= found.fun + 1e-10 * max(1.0, abs(found.fun))
    # The loss is strictly convex in log q, so the minimiser is unique: the optimiser's point (it
    # rarely reports success at gtol = 1e-12, but stops within about 1e-7 of it) is ours.
    assert np.abs(softmax(found.x) - res.policy).max() < 1e-5


@given(problems(tau_min=1e-3))
def test_equals_the_independent_mixed_kl_chi2_maximiser(problem):
    pi, r, tau = problem
    res = pmd_mean(pi, r, tau)
    other = mixed_kl_chi2_argmax(pi, r, tau, res.chi2_weight)
    support = pi > 0
    assert np.abs(other.policy - res.policy).max() < 1e-12
    err = np.abs(other.log_ratio - res.log_ratio)[support] / np.maximum(1, np.abs(res.log_ratio[support]))
    assert err.max() < 1e-10


@given(problems(tau_min=1e-2, allow_zeros=False), st.integers(0, 2**31))
def test_no_feasible_direction_improves_the_mixed_objective(problem, seed):
    pi, r, tau = problem
    res = pmd_mean(pi, r, tau)
    base = mixed_objective(res.policy, pi, r, tau, res.chi2_weight)
    d = np.random.default_rng(seed).normal(size=(16, pi.size))
    d -= d.mean(axis=1, keepdims=True)
    q = res.policy + 0.5 * res.policy.min() * d / np.abs(d).max(axis=1, keepdims=True)
    gains = mixed_objective(q, pi, r, tau, res.chi2_weight) - base
    assert gains.max() <= 1e-13 * max(1.0, abs(base))


@given(problems(), st.randoms(use_true_random=False))
def test_permutation_equivariance(problem, rnd):
    pi, r, tau = problem
    perm = np.array(rnd.sample(range(pi.size), pi.size))
    res, permuted = pmd_mean(pi, r, tau), pmd_mean(pi[perm], r[perm], tau)
    assert np.allclose(permuted.policy, res.policy[perm], rtol=1e-12, atol=1e-15)
    assert np.allclose(permuted.log_ratio, res.log_ratio[perm], rtol=1e-12, atol=1e-12)


@given(problems(), st.integers(-100, 100))
def test_invariance_to_a_reward_shift(problem, shift):
    pi, r, tau = problem
    r = np.round(r * 2**16) / 2**16  # on a grid where r + shift is exact
    assume(np.ptp(r[pi > 0]) > 0)  # rounding can make the rewards flat on the support
    res, shifted = pmd_mean(pi, r, tau), pmd_mean(pi, r + shift, tau)
    tol = 64 * EPS * max(1.0, (np.abs(r).max() + abs(shift)) / tau)
    assert np.abs(shifted.log_ratio - res.log_ratio).max() <= tol * max(1.0, np.abs(res.log_ratio).max())
    assert shifted.lam == pytest.approx(res.lam, rel=1e-9)


@given(problems(binary=True, tau_min=1e-4))
def test_binary_helper_matches_the_general_update(problem):
    pi, r, tau = problem
    general = pmd_mean(pi, r, tau, method="general")
    p = pi[r == 1].sum()
    step = pmd_mean_step(p, tau)
    assert general.policy[r == 1].sum() == pytest.approx(step.success, rel=1e-11, abs=1e-300)
    assert general.lam == pytest.approx(step.lam, rel=1e-9)
    for mask, s in ((r == 1, step.log_ratio_correct), (r == 0, step.log_ratio_incorrect)):
        assert np.allclose(general.log_ratio[mask], s, rtol=1e-11, atol=64 * EPS * _scale(r, tau))


@given(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.5, -1.0]), min_size=3, max_size=12), st.floats(0.01, 5))
def test_grouped_and_two_valued_shortcuts_equal_the_general_solver(values, tau):
    rng = np.random.default_rng(len(values))
    pi = rng.dirichlet(np.ones(len(values)), size=4)
    r = np.array(values)
    if np.ptp(r) == 0:
        r[0] += 1
    general = pmd_mean(pi, r, tau, method="general")
    auto = pmd_mean(pi, r, tau)
    assert np.allclose(auto.policy, general.policy, rtol=1e-12, atol=1e-15)
    assert np.allclose(auto.log_ratio, general.log_ratio, rtol=1e-11, atol=1e-12)
    assert np.allclose(auto.lam, general.lam, rtol=1e-10)


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_a_60_digit_reference(seed):
    rng = np.random.default_rng(seed)
    k = 2 + seed
    pi = rng.dirichlet(np.ones(k))
    r = rng.normal(size=k)
    tau = float(10 ** rng.uniform(-2, 1))
    res, ref = pmd_mean(pi, r, tau), pmd_mean_reference(pi, r, tau)
    for ours, exact in zip([*res.policy, *res.log_ratio, res.lam], [*ref.policy, *ref.log_ratio, ref.lam]):
        assert ours == pytest.approx(float(exact), rel=1e-10)


@pytest.mark.parametrize("p, tau", [(0.3, 1e-4), (1e-9, 1e-4), (1e-9, 1.0), (0.5, 100.0), (1 - 1e-7, 0.01)])
def test_binary_agrees_with_a_60_digit_reference_in_hard_regimes(p, tau):
    step, ref = pmd_mean_step(p, tau), binary_mean_reference(p, tau)
    assert step.success == pytest.approx(float(ref.policy[0]), rel=1e-12)
    assert step.failure == pytest.approx(float(ref.policy[1]), rel=1e-12, abs=1e-300)
    assert step.lam == pytest.approx(float(ref.lam), rel=1e-12)
    assert step.log_ratio_correct == pytest.approx(float(ref.log_ratio[0]), rel=1e-12)
    assert step.log_ratio_incorrect == pytest.approx(float(ref.log_ratio[1]), rel=1e-12)


def test_extreme_inputs_stay_finite_and_normalised():
    rng = np.random.default_rng(0)
    k = 100_000
    pi = rng.dirichlet(np.full(k, 0.3), size=2)
    r = rng.uniform(size=(2, k))
    rare = np.full((1, k), (1 - 1e-9) / (k - 1))
    rare[0, 0] = 1e-9
    hit = np.zeros((1, k))
    hit[0, 0] = 1.0
    for args in ((pi, r, 1e-4), (rare, hit, 1e-4), (rare, hit + 0.5 * (np.arange(k) % 3 == 0), 1e-4)):
        res = pmd_mean(*args)
        assert np.isfinite(res.policy).all() and np.isfinite(res.log_ratio).all()
        assert np.abs(res.policy.sum(axis=-1) - 1).max() < 1e-12


def test_quoted_extreme_log_ratio_stays_finite():
    # docs/math.md §3: at p = 0.3, tau = 1e-4 the incorrect log-ratio is about -3000, not -inf.
    step = pmd_mean_step(0.3, 1e-4)
    assert step.log_ratio_incorrect == pytest.approx(-3000.0, rel=1e-12)
    assert step.success == 1.0 and step.failure == 0.0


def test_batching_does_not_change_a_row():
    rng = np.random.default_rng(1)
    pi = rng.dirichlet(np.ones(300), size=700)
    r = rng.normal(size=(700, 300))
    tau = np.exp(rng.uniform(np.log(1e-3), np.log(10), size=700))
    whole = pmd_mean(pi, r, tau)
    for i in (0, 137, 699):
        alone = pmd_mean(pi[i], r[i], tau[i])
        assert np.allclose(alone.policy, whole.policy[i], rtol=1e-13, atol=1e-17)
        assert alone.lam == pytest.approx(whole.lam[i], rel=1e-12)


def test_leading_axes_and_broadcasting():
    rng = np.random.default_rng(2)
    pi = rng.dirichlet(np.ones(6), size=(3, 4))
    r = rng.normal(size=6)  # one reward vector for every prompt
    tau = np.array([0.1, 1.0, 10.0, 0.5])  # broadcast along the last batch axis
    res = pmd_mean(pi, r, tau)
    assert res.policy.shape == (3, 4, 6) and res.lam.shape == (3, 4)
    single = pmd_mean(pi[2, 1], r, 1.0)
    assert np.allclose(res.policy[2, 1], single.policy, rtol=1e-14)


def test_constant_reward_leaves_the_policy_unchanged():
    pi = np.array([[0.2, 0.3, 0.5, 0.0], [0.5, 0.5, 0.0, 0.0]])
    r = np.array([[1.0, 1.0, 1.0, 7.0], [2.0, 2.0, -1.0, 3.0]])  # constant where pi > 0
    res = pmd_mean(pi, r, 0.1)
    assert np.all(res.lam == 0) and np.allclose(res.policy, pi, atol=1e-16)
    # With lambda = 0, s = a - omega(a + log 0) = a: zero on the support, (r - r̄)/tau off it.
    rbar = np.array([[1.0], [2.0]])
    np.testing.assert_allclose(res.log_ratio, (r - rbar) / 0.1, rtol=1e-15, atol=0)
    assert np.all(res.log_ratio[pi > 0] == 0)


def test_single_action():
    res = pmd_mean(np.array([1.0]), np.array([0.3]), 0.5)
    assert res.policy.tolist() == [1.0] and res.lam == 0.0


@given(st.floats(1e-6, 1 - 1e-6), st.floats(1e-3, 10))
def test_binary_update_is_exact_at_any_policy_with_that_success(p, tau):
    rng = np.random.default_rng(3)
    k = 9
    w = rng.dirichlet(np.ones(k))
    pi = np.concatenate([w[:4] / w[:4].sum() * p, w[4:] / w[4:].sum() * (1 - p)])
    r = np.array([1.0] * 4 + [0.0] * 5)
    res = pmd_mean(pi, r, tau)
    step = binary.pmd_mean_step(p, tau)
    assert res.policy[:4].sum() == pytest.approx(step.success, rel=1e-12)
    assert np.allclose(res.policy[:4] / pi[:4], np.exp(step.log_ratio_correct), rtol=1e-12)


def test_a_batch_mixing_binary_and_general_rows():
    rng = np.random.default_rng(4)
    pi = rng.dirichlet(np.ones(7), size=6)
    r = rng.normal(size=(6, 7))
    r[::2] = (r[::2] > 0).astype(float)  # every other prompt has binary rewards
    res = pmd_mean(pi, r, 0.2)
    for i in range(6):
        alone = pmd_mean(pi[i], r[i], 0.2, method="general")
        assert np.allclose(res.policy[i], alone.policy, rtol=1e-12, atol=1e-16)
        assert res.lam[i] == pytest.approx(alone.lam, rel=1e-11)
