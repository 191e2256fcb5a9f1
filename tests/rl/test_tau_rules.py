"""Per-prompt τ (pmdlab.rl.tau_rules): the scale against counted success rates, invariance of the
``std`` rule under affine rescaling of the rewards, the loss against a per-group computation, and
the bandit trainer against the population update at each prompt's own τ."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pmdlab import theory
from pmdlab.bandit import BanditConfig, TaskConfig, train
from pmdlab.rl import Algorithm
from pmdlab.rl.tau_rules import population_tau, tau_scale

_groups = st.lists(st.lists(st.booleans(), min_size=2, max_size=9), min_size=1, max_size=6)


def _flatten(groups):
    rewards = torch.tensor([float(r) for g in groups for r in g], dtype=torch.float64)
    ids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    return rewards, ids


@given(_groups)
def test_std_scale_of_binary_rewards_is_the_bernoulli_std_of_the_success_rate(groups):
    rewards, ids = _flatten(groups)
    expected = []
    for g in groups:
        p = sum(g) / len(g)
        sd = math.sqrt(p * (1 - p))
        expected += [sd if sd > 0 else 1.0] * len(g)
    torch.testing.assert_close(tau_scale(rewards, ids, "std"), torch.tensor(expected, dtype=torch.float64))
    assert torch.equal(tau_scale(rewards, ids, "fixed"), torch.ones_like(rewards))


_graded = st.integers(-30, 30).map(lambda k: k / 10)  # rewards on a grid: spreads of 0 or at least 0.05


@given(
    st.lists(st.lists(_graded, min_size=2, max_size=8), min_size=1, max_size=5),
    st.floats(0.1, 10),
    st.floats(-5, 5),
)
def test_std_rule_targets_do_not_change_under_affine_rewards(groups, a, b):
    rewards = torch.tensor([r for g in groups for r in g], dtype=torch.float64)
    ids = torch.tensor([i for i, g in enumerate(groups) for _ in g])
    alg = Algorithm("pmd_mean", tau=0.3, tau_rule="std")
    torch.testing.assert_close(
        alg.advantages(a * rewards + b, ids), alg.advantages(rewards, ids), atol=1e-9, rtol=1e-7
    )


def test_fixed_rule_advantages_scale_with_the_rewards():
    """The contrast that makes the invariance above non-trivial."""
    rewards, ids = _flatten([[True, False, False], [True, True, False, False]])
    alg = Algorithm("pmd_mean", tau=0.3)
    torch.testing.assert_close(alg.advantages(2 * rewards - 1, ids), 2 * alg.advantages(rewards, ids))


def test_std_rule_loss_is_the_regression_at_each_prompts_own_tau():
    torch.manual_seed(0)
    rewards, ids = _flatten([[True, False, False, False], [True, True, False], [False, False]])
    n, tau = rewards.numel(), 0.2
    logprobs = torch.randn(n, 3, dtype=torch.float64)
    old = torch.randn(n, 3, dtype=torch.float64)
    mask = torch.ones(n, 3)
    alg = Algorithm("pmd_mean", tau=tau, tau_rule="std", aggregation="seq_mean_token_sum")
    loss = alg.loss(logprobs, old, mask, alg.advantages(rewards, ids)).loss
    expected = 0.0
    for g in ids.unique():
        r = rewards[ids == g].numpy()
        sd = r.std()  # population std; 0 for the all-wrong group, whose advantages are 0 anyway
        tau_x = tau * (sd if sd > 0 else 1.0)
        delta = (logprobs - old)[ids == g].sum(1).numpy()
        expected += (0.5 * ((r - r.mean()) / tau_x - delta) ** 2).sum()
    assert loss.item() == pytest.approx(expected / n, rel=1e-12)


def test_a_spread_of_rounding_error_is_no_spread():
    rewards = torch.tensor([1.0, 1.0 + 2e-16, 0.3, 0.7], dtype=torch.float64)
    scale = tau_scale(rewards, torch.tensor([0, 0, 1, 1]), "std")
    torch.testing.assert_close(scale, torch.tensor([1.0, 1.0, 0.2, 0.2], dtype=torch.float64))


def test_population_tau():
    np.testing.assert_allclose(population_tau([0.0, 0.5, 0.9, 1.0], 0.2, "std"), [0.2, 0.1, 0.06, 0.2])
    np.testing.assert_allclose(population_tau([0.3, 0.7], 0.2, "fixed"), [0.2, 0.2])


@pytest.mark.parametrize(
    "kwargs, match",
    [({"tau_rule": "linear"}, "tau_rule"), ({"name": "pmd_part", "tau_rule": "std"}, "pmd_mean")],
)
def test_algorithm_rejects_bad_tau_rules(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Algorithm(**{"name": "pmd_mean", **kwargs})


def test_bandit_trainer_with_the_std_rule_reaches_each_prompts_population_update():
    """n = 20,000 rollouts and 300 full-batch Adam steps: every prompt's tabular policy lands within
    sampling error of the exact PMD-mean update at tau_x = tau sqrt(p_x (1 - p_x))."""
    tau = 1.0
    cfg = BanditConfig(
        task=TaskConfig(prompts=4, responses=5, correct_fraction=0.4, difficulty="uniform:0.2,0.6", seed=1),
        algorithm=Algorithm("pmd_mean", tau=tau, tau_rule="std"),
        steps=1,
        n=20_000,
        minibatches=1,
        epochs=300,
        lr=0.05,
        dtype="float64",
    )
    run = train(cfg)
    pi0 = torch.softmax(run.task.initial_logits, 1).numpy()
    rewards = run.task.rewards.numpy()
    pi1 = torch.softmax(run.policy(torch.arange(4)).detach(), 1).numpy()
    tv_rule, tv_fixed = [], []
    for x in range(4):
        p = float(pi0[x] @ rewards[x])
        exact = theory.pmd_mean(
            pi0[x : x + 1], rewards[x : x + 1], float(population_tau(p, tau, "std"))
        ).policy
        fixed = theory.pmd_mean(pi0[x : x + 1], rewards[x : x + 1], tau).policy
        tv_rule.append(0.5 * np.abs(pi1[x] - exact[0]).sum())
        tv_fixed.append(0.5 * np.abs(pi1[x] - fixed[0]).sum())
    assert max(tv_rule) < 0.02
    assert min(tv_fixed) > 0.05  # the rule's update is far from the fixed-tau one: the match is not vacuous


def test_the_llm_and_bandit_command_lines_take_the_rule():
    from pmdlab.bandit import BanditConfig
    from pmdlab.llm.train import TrainConfig
    from pmdlab.rl.config import parse

    assert parse(TrainConfig, ["algorithm.tau_rule=std"]).algorithm.tau_rule == "std"
    with pytest.raises(ValueError, match="tau_rule"):
        parse(TrainConfig, ["algorithm.name=grpo", "algorithm.tau_rule=std"])
    assert BanditConfig(algorithm=Algorithm("pmd_mean", tau_rule="std")).algorithm.tau_rule == "std"
