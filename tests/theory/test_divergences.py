"""Divergences and objectives against direct formulas and their conventions."""

import numpy as np
import pytest

from pmdlab.theory.divergences import (
    chi2_divergence,
    kl_divergence,
    kl_objective,
    mixed_objective,
    pmd_mean_regression_loss,
)


def test_values_against_hand_computation():
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.5, 0.25])
    assert kl_divergence(p, q) == pytest.approx(0.5 * np.log(2))
    assert chi2_divergence(p, q) == pytest.approx(0.25 / 0.25 + 0.25 / 0.5 - 1)
    assert kl_divergence(q, p) == np.inf  # q puts mass where p has none
    assert chi2_divergence(q, p) == np.inf
    assert kl_divergence(p, p) == 0 and chi2_divergence(p, p) == pytest.approx(0, abs=1e-15)


def test_objectives():
    pi, r = np.array([0.25, 0.75]), np.array([1.0, 0.0])
    q = np.array([0.5, 0.5])
    kl = 0.5 * np.log(2) + 0.5 * np.log(0.5 / 0.75)
    assert kl_objective(q, pi, r, 0.2) == pytest.approx(0.5 - 0.2 * kl)
    chi2 = 0.25 / 0.25 + 0.25 / 0.75 - 1
    assert mixed_objective(q, pi, r, 0.2, 0.3) == pytest.approx(0.5 - 0.2 * kl - 0.3 * chi2)
    a = (r - 0.25) / 0.2
    s = np.log(q / pi)
    assert pmd_mean_regression_loss(q, pi, r, 0.2) == pytest.approx(np.sum(pi * (s - a) ** 2) / 2)


def test_batched_reduction():
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(5), size=(2, 3)), rng.dirichlet(np.ones(5), size=(2, 3))
    out = kl_divergence(p, q)
    assert out.shape == (2, 3)
    assert out[1, 2] == pytest.approx(np.sum(p[1, 2] * np.log(p[1, 2] / q[1, 2])))
