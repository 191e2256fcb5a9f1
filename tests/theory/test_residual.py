"""The normalisation residual and its root-finder, against mpmath and finite differences."""

import mpmath as mp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pmdlab.theory._residual import LOG_LAMBDA_SWITCH, evaluate, log_expm1_minus_x
from pmdlab.theory._rootfind import solve_rows
from pmdlab.theory.omega import wright_omega

from .strategies import problems


def _targets(pi, r, tau):
    """``a = (r - E r)/tau`` on the support (``E a = 0`` to rounding)."""
    return ((r - np.dot(pi, r)) / tau)[None, :], np.log(pi)[None, :]


@pytest.mark.parametrize(
    "x", [-800.0, -30.0, -2.0, -0.3, -1e-3, -1e-9, 1e-300, 1e-8, 0.2, 0.26, 0.9, 1.1, 5.0, 700.0]
)
def test_log_expm1_minus_x_matches_mpmath(x):
    with mp.workdps(60):
        xm = mp.mpf(x)
        ref = mp.log(mp.expm1(xm) - xm) if abs(x) > 1e-20 else mp.log(xm * xm / 2)
    assert abs(log_expm1_minus_x(np.array([x]))[0] - float(ref)) <= 4e-16 * max(1.0, abs(float(ref)))


def test_log_expm1_minus_x_is_minus_inf_at_zero():
    assert np.isneginf(log_expm1_minus_x(np.array([0.0]))[0])


@settings(deadline=None)
@given(problems(allow_zeros=False), st.floats(-12.0, 3.0))
def test_residual_has_the_sign_of_the_constraint_and_its_derivatives(problem, u):
    """``sign f = sign(E e^s - 1)`` with ``s = a - omega(a + u)``; ``f'`` (and ``f''``
    where reported) match central differences; ``s`` and ``omega`` are the inputs'."""
    pi, r, tau = problem
    a, log_pi = _targets(pi, r, tau)
    f, df, d2f, s, w = evaluate(a, log_pi, np.array([u]))
    w_ref = wright_omega(a + u)
    np.testing.assert_allclose(w, w_ref, rtol=1e-14)
    np.testing.assert_allclose(s, a - w_ref, rtol=1e-12, atol=1e-12 * (1 + np.abs(a)).max())
    with mp.workdps(50):
        excess = float(sum(mp.mpf(p) * mp.exp(mp.mpf(float(x))) for p, x in zip(pi, s[0])) - 1)
    if abs(excess) > 1e-12:
        assert np.sign(f[0]) == np.sign(excess)
    h = 1e-5
    f_plus = evaluate(a, log_pi, np.array([u + h]))[0][0]
    f_minus = evaluate(a, log_pi, np.array([u - h]))[0][0]
    if (u - h >= LOG_LAMBDA_SWITCH) == (u + h >= LOG_LAMBDA_SWITCH):  # same branch both sides
        assert df[0] == pytest.approx((f_plus - f_minus) / (2 * h), rel=1e-5, abs=1e-8)
        if np.isfinite(d2f[0]):
            curvature = (f_plus - 2 * f[0] + f_minus) / h**2
            assert d2f[0] == pytest.approx(curvature, rel=1e-3, abs=1e-4)
    if u >= LOG_LAMBDA_SWITCH:
        assert df[0] < 0  # F = log E e^s is decreasing, since every s is


def test_second_derivative_is_reported_only_on_the_large_lambda_branch():
    a, log_pi = _targets(np.array([0.25, 0.75]), np.array([1.0, 0.0]), 0.1)
    below = evaluate(a, log_pi, np.array([LOG_LAMBDA_SWITCH - 0.5]))[2][0]
    above = evaluate(a, log_pi, np.array([LOG_LAMBDA_SWITCH + 0.5]))[2][0]
    assert np.isnan(below) and np.isfinite(above)


def test_warm_start_is_as_accurate_as_a_cold_evaluation():
    """Carrying omega over from a nearby ``u`` gives omega to a few ulps of its
    conditioning ``1 + |z|/(1 + omega)``, like an evaluation from scratch."""
    rng = np.random.default_rng(0)
    a = rng.normal(scale=5.0, size=(2, 40))
    log_pi = np.log(np.full((2, 40), 1 / 40))
    u0, u1 = np.full(2, 0.3), np.full(2, 0.37)
    w0 = evaluate(a, log_pi, u0)[4]
    warm = evaluate(a, log_pi, u1, previous=(u0, w0))[4]
    z = a + u1[:, None]
    with mp.workdps(40):
        ref = np.array([[float(mp.lambertw(mp.exp(mp.mpf(x))).real) for x in row] for row in z])
    scale = np.finfo(float).eps * ref * (1 + np.abs(z) / (1 + ref))
    assert np.all(np.abs(warm - ref) <= 4 * scale)


@settings(deadline=None)
@given(problems(allow_zeros=False, tau_min=1e-4, tau_max=1e3))
def test_root_finder_satisfies_the_constraint_from_a_poor_start(problem):
    """From the top of the bracket (or far below the root) the solve reaches ``E e^s = 1``."""
    pi, r, tau = problem
    a, log_pi = _targets(pi, r, tau)
    assume(np.dot(pi, a[0] ** 2) > 1e-200)  # lambda ~ Var(a)/2 stays a normal number
    hi = np.log(a.max(axis=1))
    for start in (hi, hi - 60.0):
        u, s, w = solve_rows(a, log_pi, start, np.full(1, -np.inf), hi)
        z = a + u[:, None]
        w_ref = wright_omega(z)  # to a few ulps of its conditioning 1 + |z|/(1 + omega)
        tol_w = 8 * np.finfo(float).eps * w_ref * (1 + np.abs(z) / (1 + w_ref)) + 1e-310  # + subnormals
        assert np.all(np.abs(w - w_ref) <= tol_w)
        with mp.workdps(50):
            total = sum(mp.mpf(p) * mp.exp(mp.mpf(float(x))) for p, x in zip(pi, s[0]))
            mean_a = abs(float(sum(mp.mpf(p) * mp.mpf(float(x)) for p, x in zip(pi, a[0]))))
        # For small lambda the residual solves E e^s = 1 + E a, and E a is zero only up
        # to the rounding of the targets.
        assert abs(float(total) - 1) < 1e-13 + 2 * mean_a
