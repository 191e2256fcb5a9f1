"""Experiments (a) and (b) against theory, brute force and Monte Carlo."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar

from pmdlab.bandit import BanditConfig, TaskConfig, train
from pmdlab.bandit.experiments import (
    one_step_success,
    sample_targets,
    target_error,
    train_many,
    training_dynamics,
)
from pmdlab.rl import Algorithm
from pmdlab.theory import pmd_mean_step, pmd_part_step


@given(st.floats(1e-3, 0.999), st.floats(0.02, 10.0), st.sampled_from(["pmd_mean", "pmd_part"]))
def test_infinite_sample_regression_is_the_population_update(p, tau, method):
    a1, a0 = sample_targets(method, p, 1, tau)
    exact = (pmd_mean_step if method == "pmd_mean" else pmd_part_step)(p, tau).success
    assert one_step_success(p, p, float(a1), float(a0)) == pytest.approx(float(exact), rel=1e-10, abs=1e-12)


@settings(deadline=None)
@given(st.floats(0.02, 0.98), st.floats(0.05, 0.95), st.floats(-5, 5), st.floats(-5, 5))
def test_one_step_success_minimises_the_sampled_regression(p, w1, a1, a0):
    """Brute force: a bounded scalar minimisation of the loss itself in logit space."""

    def loss(x):
        q1 = 1 / (1 + math.exp(-x))
        return w1 * (a1 - math.log(q1 / p)) ** 2 + (1 - w1) * (a0 - math.log((1 - q1) / (1 - p))) ** 2

    got = one_step_success(p, w1, a1, a0)
    x = math.log(got / (1 - got))
    ref = minimize_scalar(loss, bounds=(-40, 40), method="bounded", options={"xatol": 1e-12})
    assert loss(x) <= ref.fun + 1e-9


def test_target_error_matches_monte_carlo():
    """Seed 0, 20,000 binomial draws: the enumerated mean error and no-signal chance agree
    with simulation to within 4 standard errors."""
    p, tau, n = 0.2, 0.5, 8
    rec = {r["method"]: r for r in target_error(ps=(p,), ns=(n,), taus=(tau,))}
    rng = np.random.default_rng(0)
    n1 = rng.binomial(n, p, size=20_000)
    for method in ("pmd_mean", "pmd_part"):
        a1, a0 = sample_targets(method, np.arange(n + 1), n, tau)
        table = np.array([one_step_success(p, k / n, a1[k], a0[k]) for k in range(n + 1)])
        err = np.abs(table[n1] - rec[method]["population"])
        assert rec[method]["mean_abs_error"] == pytest.approx(
            err.mean(), abs=4 * err.std() / math.sqrt(err.size)
        )
    assert rec["pmd_mean"]["no_signal"] == pytest.approx(p**n + (1 - p) ** n, rel=1e-12)


def test_errors_fall_with_more_rollouts():
    recs = target_error(ps=(0.2,), ns=(4, 16, 64, 256), taus=(0.3,))
    for method in ("pmd_mean", "pmd_part"):
        errs = [r["mean_abs_error"] for r in recs if r["method"] == method]
        assert all(b < a for a, b in zip(errs, errs[1:]))
        assert errs[-1] < 0.1 * errs[0]


def test_training_dynamics_shapes_and_overrides():
    base = BanditConfig(task=TaskConfig(prompts=8, responses=6), steps=5, n=2, minibatches=2)
    out = training_dynamics(
        base,
        {"PMD-mean": Algorithm("pmd_mean"), "GRPO": Algorithm("grpo")},
        seeds=(0, 1),
        settings={"n=2": {}, "stale": {"staleness": 2}},
    )
    assert out["steps"].tolist() == list(range(6))
    assert set(out["runs"]) == {"n=2", "stale"}
    s = out["runs"]["stale"]["GRPO"]["success_mean"]
    assert s.shape == (2, 6)
    assert not np.allclose(s[0], s[1])  # the seed changes the task and the draws
    with pytest.raises(ValueError, match="same number of steps"):
        training_dynamics(base, {"a": Algorithm()}, settings={"x": {"steps": 3}, "y": {}})


def test_train_many_in_worker_processes_equals_training_in_this_process():
    """Each run is seeded by its config, so spreading runs over processes changes nothing."""
    base = BanditConfig(task=TaskConfig(prompts=8, responses=6), steps=4, n=2, minibatches=2)
    configs = [
        dataclasses.replace(
            base, algorithm=Algorithm(name), seed=s, task=dataclasses.replace(base.task, seed=s)
        )
        for name in ("pmd_mean", "grpo")
        for s in (0, 1)
    ]
    alone = [train(c).metrics["success_mean"] for c in configs]
    pooled = train_many(configs, workers=2)
    for a, b in zip(alone, pooled):
        np.testing.assert_array_equal(a, b["success_mean"])
    assert not np.array_equal(pooled[0]["success_mean"], pooled[2]["success_mean"])
