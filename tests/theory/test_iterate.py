"""Repeated exact updates."""

import numpy as np
import pytest

from pmdlab.theory import pmd_mean, pmd_mean_step
from pmdlab.theory.iterate import iterate_success, iterate_updates


def test_trajectory_matches_repeated_single_steps():
    rng = np.random.default_rng(0)
    pi, r = rng.dirichlet(np.ones(5), size=2), rng.normal(size=(2, 5))
    traj = iterate_updates(pi, r, 0.5, steps=4)
    assert traj.policies.shape == (5, 2, 5) and traj.kl.shape == (4, 2)
    step = pi
    for t in range(4):
        res = pmd_mean(step, r, 0.5)
        assert traj.kl[t] == pytest.approx(res.lam, rel=1e-10)
        step = res.policy
    assert np.allclose(traj.policies[-1], step, rtol=1e-14)
    assert np.all(np.diff(traj.expected_reward, axis=0) >= -1e-15)


@pytest.mark.parametrize("method", ["mean", "part"])
def test_binary_success_rises_to_one(method):
    path = iterate_success(np.array([1e-3, 0.2, 0.7]), 0.1, steps=300, method=method)
    assert path.shape == (301, 3)
    assert np.all(np.diff(path, axis=0) >= 0) and np.all(path[-1] > 1 - 1e-9)


def test_binary_path_agrees_with_general_updates():
    p0, tau = 0.05, 0.3
    pi = np.array([p0, 1 - p0])
    traj = iterate_updates(pi, np.array([1.0, 0.0]), tau, steps=10)
    path = iterate_success(p0, tau, steps=10)
    assert np.allclose(traj.policies[:, 0], path, rtol=1e-11)
    assert path[1] == pytest.approx(float(pmd_mean_step(p0, tau).success), rel=1e-15)
