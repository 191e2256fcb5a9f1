"""Bad input gets a ValueError that names the argument, never a silent NaN."""

import numpy as np
import pytest

from pmdlab.theory import pmd_mean, pmd_mean_step, pmd_part, pmd_part_step
from pmdlab.theory.divergences import kl_divergence
from pmdlab.theory.iterate import iterate_success, iterate_updates
from pmdlab.theory.mixed import mixed_kl_chi2_argmax

PI = np.array([[0.2, 0.3, 0.5], [0.1, 0.1, 0.8]])
R = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]])


@pytest.mark.parametrize("update", [pmd_mean, pmd_part])
@pytest.mark.parametrize(
    "pi, r, tau, match",
    [
        (PI, R, 0.0, "tau must be > 0"),
        (PI, R, -1.0, "tau must be > 0"),
        (PI, R, np.nan, "tau must be finite"),
        (PI, R, np.array([0.1, np.inf]), "tau must be finite"),
        (PI, R, np.array([0.1, 0.2, 0.3]), r"tau\.shape"),
        (PI * np.array([[1.0], [-1.0]]), R, 0.1, "pi must be"),
        (PI * 1.1, R, 0.1, "pi must sum to 1"),
        (np.where(PI == 0.3, np.nan, PI), R, 0.1, "pi must be finite"),
        (np.where(PI == 0.3, np.inf, PI), R, 0.1, "pi must be finite"),
        (PI, np.where(R == 0.5, np.nan, R), 0.1, "r must be finite"),
        (PI, np.where(R == 0.5, -np.inf, R), 0.1, "r must be finite"),
        (PI, R[:, :2], 0.1, "action axes"),
        (PI, np.ones((3, 3)), 0.1, "do not broadcast"),
        (np.ones((2, 0)), np.ones((2, 0)), 0.1, "empty action axis"),
        (np.float64(1.0), np.float64(1.0), 0.1, "action axis"),
        (PI.astype(complex), R, 0.1, "pi must hold real numbers"),
        (PI, np.array([["a", "b", "c"]] * 2), 0.1, "r must hold real numbers"),
    ],
)
def test_bad_inputs_raise_naming_the_argument(update, pi, r, tau, match):
    with pytest.raises(ValueError, match=match):
        update(pi, r, tau)


def test_the_message_points_at_the_entry():
    pi = np.array([[[0.2, 0.8], [0.5, 0.5]], [[0.4, 0.6], [1.0, -0.0 - 1e-3]]])
    with pytest.raises(ValueError, match=r"pi\[1, 1, 1\]"):
        pmd_mean(pi, np.array([1.0, 0.0]), 0.1)
    with pytest.raises(ValueError, match=r"r\[1, 1\] = "):
        pmd_mean(PI, np.array([[1.0, 0.0, 0.0], [0.0, np.nan, 0.0]]), 0.1)


def test_tolerance_for_policies_that_almost_sum_to_one():
    almost = np.array([0.5, 0.5 + 5e-9])  # within 1e-8: renormalised
    r = np.array([1.0, 0.0])
    res, exact = pmd_mean(almost, r, 0.1), pmd_mean(almost / almost.sum(), r, 0.1)
    np.testing.assert_allclose(res.policy, exact.policy, rtol=1e-14)
    assert res.lam == pytest.approx(float(exact.lam), rel=1e-12)
    with pytest.raises(ValueError, match="sum to 1"):
        pmd_mean(np.array([0.5, 0.5 + 5e-8]), np.array([1.0, 0.0]), 0.1)


@pytest.mark.parametrize("step", [pmd_mean_step, pmd_part_step])
def test_binary_helpers(step):
    for p, tau, match in (
        (1.5, 0.1, "p must lie in"),
        (-0.1, 0.1, "p must lie in"),
        (np.nan, 0.1, "p must be finite"),
        (0.5, 0.0, "tau must be > 0"),
        ([0.1, 0.2], [1.0, 2.0, 3.0], "do not broadcast"),
    ):
        with pytest.raises(ValueError, match=match):
            step(p, tau)


def test_other_entry_points():
    with pytest.raises(ValueError, match="beta must be >= 0"):
        mixed_kl_chi2_argmax(PI, R, 0.1, -0.5)
    with pytest.raises(ValueError, match="q must sum to 1"):
        kl_divergence(PI, PI * 2)
    with pytest.raises(ValueError, match="method"):
        pmd_mean(PI, R, 0.1, method="fast")
    with pytest.raises(ValueError, match="steps"):
        iterate_updates(PI, R, 0.1, steps=-1)
    with pytest.raises(ValueError, match="method"):
        iterate_success(0.5, 0.1, steps=3, method="kl")
    with pytest.raises(ValueError, match="grouped"):  # 20 distinct rewards are too many groups
        pmd_mean(np.full((1, 20), 0.05), np.arange(20.0), 0.1, method="grouped")
