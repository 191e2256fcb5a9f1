"""The Wright omega kernel against mpmath, finite differences and its own equation."""

import math

import mpmath as mp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmdlab.theory.omega import log_ratio_from_omega, omega_derivatives, wright_omega

EPS = np.finfo(float).eps


def _mp_omega(z):
    with mp.workdps(50):
        return mp.lambertw(mp.exp(mp.mpf(z))).real


def _ulps(w, z, ref):
    """Error in units of eps, relative to the conditioning ``1 + |z|/(1 + omega)``."""
    return abs(float((mp.mpf(w) - ref) / ref)) / (EPS * (1 + abs(z) / (1 + float(ref))))


@pytest.mark.parametrize(
    "z", [-700.0, -80.0, -40.5, -39.5, -20.0, -1.0, 0.0, 1e-12, 0.5, 1.0, 3.0, 40.0, 1e4, 1e14, 2e15, 1e100]
)
def test_matches_mpmath_on_a_grid_of_regimes(z):
    assert _ulps(wright_omega(np.array([z]))[0], z, _mp_omega(z)) < 4


@given(st.floats(-700, 1e12))
def test_matches_mpmath(z):
    ref = _mp_omega(z)
    assert _ulps(wright_omega(np.array([z]))[0], z, ref) < 8


@given(st.floats(-700, 700))
def test_solves_its_equation(z):
    w = wright_omega(np.array([z]))[0]
    with mp.workdps(40):
        residual = mp.mpf(w) + mp.log(mp.mpf(w)) - z
    assert abs(float(residual)) <= 8 * EPS * max(1.0, abs(z))


def test_special_values_and_shape():
    out = wright_omega(np.array([[-np.inf, np.inf], [np.nan, 0.0]]))
    assert out.shape == (2, 2)
    assert out[0, 0] == 0.0 and out[0, 1] == np.inf and np.isnan(out[1, 0])
    assert out[1, 1] == pytest.approx(0.5671432904097838, rel=1e-15)  # the omega constant W(1)


def test_large_batches_equal_small_ones():
    z = np.random.default_rng(0).normal(scale=30, size=100_003)
    whole = wright_omega(z)
    pieces = np.concatenate([wright_omega(z[i : i + 997]) for i in range(0, z.size, 997)])
    assert np.array_equal(whole, pieces)


@given(st.floats(-30, 30))
def test_derivatives_match_finite_differences(z):
    h = 1e-4
    grid = z + h * np.arange(-3, 4)
    w = wright_omega(grid)
    derivs = omega_derivatives(w[3:4], order=4)
    # Central differences of order h^4 (first) and h^2 (higher, from the derivative below).
    fd1 = (w[1] - 8 * w[2] + 8 * w[4] - w[5]) / (12 * h)
    assert derivs[1][0] == pytest.approx(fd1, rel=1e-8, abs=1e-12)
    for k in (2, 3, 4):
        lower = omega_derivatives(wright_omega(np.array([z - h, z + h])), order=k - 1)[k - 1]
        fd = (lower[1] - lower[0]) / (2 * h)
        assert derivs[k][0] == pytest.approx(fd, rel=1e-5, abs=1e-9)


def test_log_ratio_forms_agree_with_mpmath():
    # a - omega(a + u) cancels when a is large: the kernel uses log(omega) - u there.
    a, u = np.array([[7000.0, -3000.0, 0.3]]), np.array([[7.65]])
    s = log_ratio_from_omega(a, u, wright_omega(a + u))
    for ai, si in zip(a[0], s[0]):
        with mp.workdps(50):
            z = mp.mpf(ai) + mp.mpf(7.65)  # exactly, not rounded to float64
            ref = mp.mpf(ai) - mp.lambertw(mp.exp(z)).real
        assert abs(si - float(ref)) <= 4 * EPS * max(1.0, abs(float(ref)))


@given(st.floats(-30, 30), st.floats(-0.05, 0.05), st.sampled_from([2, 3, 4]))
def test_taylor_transport_of_omega(z, d, order):
    # The solver carries omega from z to z + d by its Taylor series of the given order.
    from pmdlab.theory._kernels import _transport

    w = wright_omega(np.array([z]))[0]
    exact = wright_omega(np.array([z + d]))[0]
    # Remainder |omega^{(order+1)}(xi)| |d|^{order+1}/(order+1)!; the derivatives are
    # bounded by a few times omega near xi.
    bound = 2 * abs(d) ** (order + 1) / math.factorial(order + 1) * max(w, exact) + 8 * EPS * max(exact, 1.0)
    assert abs(_transport(w, d, order) - exact) <= bound
