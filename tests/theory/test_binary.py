"""Binary-reward helpers: quoted values, limits, edges, and agreement with closed forms."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pmdlab.theory import (
    pmd_mean_step,
    pmd_mean_step_small_tau,
    pmd_part_step,
    pmd_part_step_small_tau,
)
from pmdlab.theory.reference import binary_mean_reference

probabilities = st.floats(1e-9, 1 - 1e-9)
taus = st.floats(1e-4, 10)


@pytest.mark.parametrize(
    "p, tau, mean, part, mean_rho0, part_rho0, beta",
    [  # docs/math.md §4
        (0.01, 0.1, 0.25996, 0.99553, -0.291, -5.399, 0.01278),
        (0.1, 0.1, 0.74589, 0.99959, -1.265, -7.698, 0.04686),
        (0.5, 1.0, 0.71376, 0.73106, -0.558, -0.620, 0.05046),
    ],
)
def test_quoted_table(p, tau, mean, part, mean_rho0, part_rho0, beta):
    m, pt = pmd_mean_step(p, tau), pmd_part_step(p, tau)
    assert m.success == pytest.approx(mean, abs=5e-6)
    assert pt.success == pytest.approx(part, abs=5e-6)
    assert m.log_ratio_incorrect == pytest.approx(mean_rho0, abs=5e-4)
    assert pt.log_ratio_incorrect == pytest.approx(part_rho0, abs=5e-4)
    assert m.chi2_weight == pytest.approx(beta, abs=5e-6)


def test_quoted_low_p_contrast():
    # docs/math.md §4: at p = 1e-6, tau = 1e-3, PMD-mean p' ~ 0.031 while PMD-part p' ~ 1.
    assert float(pmd_mean_step(1e-6, 1e-3).success) == pytest.approx(0.031, abs=5e-4)
    assert float(pmd_part_step(1e-6, 1e-3).success) == pytest.approx(1.0, abs=1e-12)


@given(probabilities, taus)
def test_ratios_are_consistent(p, tau):
    m = pmd_mean_step(p, tau)
    assert m.success + m.failure == pytest.approx(1.0, abs=1e-15)
    assert m.success == pytest.approx(p * np.exp(m.log_ratio_correct), rel=1e-12)
    # Stationarity for each response: s + lambda e^s = a.
    for s, a in ((m.log_ratio_correct, (1 - p) / tau), (m.log_ratio_incorrect, -p / tau)):
        assert s + m.lam * np.exp(s) == pytest.approx(a, rel=1e-12, abs=1e-12 / tau)


@given(probabilities, taus)
def test_part_is_the_exact_tilt(p, tau):
    pt = pmd_part_step(p, tau)
    z = np.logaddexp(np.log(p) + 1 / tau, np.log1p(-p))
    assert pt.log_partition == pytest.approx(z, rel=1e-15)
    assert pt.log_ratio_correct - pt.log_ratio_incorrect == pytest.approx(1 / tau, rel=1e-12)


@given(probabilities, taus)
def test_mean_moves_less_than_part(p, tau):
    assert pmd_mean_step(p, tau).success <= pmd_part_step(p, tau).success * (1 + 1e-13)


@given(probabilities, taus)
def test_mean_improves(p, tau):
    m = pmd_mean_step(p, tau)
    assert m.success >= p and m.log_ratio_correct >= 0 >= m.log_ratio_incorrect


@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9])
def test_small_tau_asymptotics_converge(p):
    errors = []
    for tau in (1e-2, 1e-3, 1e-4):
        m, mm = pmd_mean_step(p, tau), pmd_mean_step_small_tau(p, tau)
        pt, pa = pmd_part_step(p, tau), pmd_part_step_small_tau(p, tau)
        errors.append(
            max(
                abs(m.log_ratio_incorrect / mm.log_ratio_incorrect - 1),
                abs(m.chi2_weight / mm.chi2_weight - 1),
                abs(pt.log_ratio_incorrect / pa.log_ratio_incorrect - 1),
            )
        )
    # The corrections are O(e^{-p/tau}): the forms reach rounding level quickly.
    assert errors[2] <= max(0.5 * errors[0], 1e-14) and errors[2] < 1e-3
    limit = [abs(float(pmd_mean_step(p, t).chi2_weight) / (p * (1 - p) / 2) - 1) for t in (1e-2, 1e-3, 1e-4)]
    assert limit[0] > limit[1] > limit[2] and limit[2] < 1e-3  # beta -> p(1-p)/2 like tau log p


def test_edges_do_not_move():
    m = pmd_mean_step(np.array([0.0, 1.0]), 0.1)
    assert m.success.tolist() == [0.0, 1.0] and m.lam.tolist() == [0.0, 0.0]
    assert m.log_ratio_correct[0] == pytest.approx(10.0) and m.log_ratio_incorrect[1] == pytest.approx(-10.0)
    pt = pmd_part_step(np.array([0.0, 1.0]), 0.1)
    assert pt.success.tolist() == [0.0, 1.0]


def test_broadcasting_and_scalars():
    m = pmd_mean_step(np.array([[0.1], [0.2]]), np.array([0.1, 1.0, 10.0]))
    assert m.success.shape == (2, 3)
    assert np.ndim(pmd_mean_step(0.2, 0.5).success) == 0


@pytest.mark.parametrize(
    "p, tau", [(1e-300, 1.0), (1e-200, 1e-3), (0.5, 1e-300), (1e-12, 1e300), (0.25, 1e150)]
)
def test_far_outside_the_usual_range_stays_finite(p, tau):
    m = pmd_mean_step(p, tau)
    for x in (m.success, m.failure, m.log_ratio_correct, m.log_ratio_incorrect, m.lam):
        assert np.isfinite(x)
    assert p <= m.success <= 1


@pytest.mark.parametrize("p, tau", [(1e-12, 1e-2), (1e-30, 1e-3), (0.999999, 0.5), (0.3, 1e-4)])
def test_hard_regimes_against_60_digits(p, tau):
    m, ref = pmd_mean_step(p, tau), binary_mean_reference(p, tau)
    assert float(m.lam) == pytest.approx(float(ref.lam), rel=1e-12)
    assert float(m.success) == pytest.approx(float(ref.policy[0]), rel=1e-12)
    assert float(m.log_ratio_correct) == pytest.approx(float(ref.log_ratio[0]), rel=1e-12)
