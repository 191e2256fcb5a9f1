"""The link to theory at language-model scale.

A Qwen2 model whose vocabulary is K tokens answers one prompt token with
a single response token, so its distribution over the K responses is
exactly ``softmax`` of one logit vector. Training it with the trainer's
own path (``LMPolicy.log_probs`` -> ``Algorithm.loss`` -> the optimiser) on
the exact expectation over responses (each response weighted by
``pi_old``) must move that distribution to the exact population update of
:mod:`pmdlab.theory`: PMD-mean's Lambert-W form, PMD-part's Boltzmann
reweighting.
"""

import numpy as np
import pytest
import torch

from pmdlab.llm.policy import LMPolicy
from pmdlab.rl.algorithms import Algorithm
from pmdlab.rl.groups import Groups
from pmdlab.rl.rollout import Rollout
from pmdlab.theory import pmd_mean, pmd_part

from .lm_helpers import single_token_lm


class _NoTokenizer:
    pad_token_id, eos_token_id, padding_side = 0, 0, "left"


def _exact_rollout(k: int) -> Rollout:
    """All K single-token responses to the prompt ``[0]``, one group."""
    tokens = torch.arange(k).view(k, 1)
    return Rollout(
        group_ids=torch.zeros(k, dtype=torch.long),
        tokens=tokens,
        mask=torch.ones(k, 1, dtype=torch.float64),
        prompts=torch.zeros(k, 1, dtype=torch.long),
        extras={"prompt_mask": torch.ones(k, 1, dtype=torch.long)},
    )


@pytest.mark.parametrize("name", ["pmd_mean", "pmd_part"])
@pytest.mark.parametrize(
    "rewards, tau",
    [
        ([1.0, 0.0, 0.0, 1.0, 0.0, 0.0], 0.5),
        ([1.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.2),
        ([0.3, -0.2, 0.9, 0.1, 0.5, -1.0], 1.0),
    ],
)
def test_training_on_exact_expectations_reaches_the_population_update(name, rewards, tau):
    k = len(rewards)
    model = single_token_lm(k)
    policy = LMPolicy(model, _NoTokenizer())
    rollout = _exact_rollout(k)
    rollout.rewards = torch.tensor(rewards, dtype=torch.float64)
    with torch.no_grad():
        old = policy.log_probs(rollout)
    pi_old = old[:, 0].exp()
    algorithm = Algorithm(name=name, tau=tau)
    groups = Groups.from_ids(rollout.group_ids)
    weights = pi_old / pi_old.sum()
    advantages = algorithm.advantages(rollout.rewards, groups, weights)
    optimizer = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        loss = algorithm.loss(policy.log_probs(rollout), old, rollout.mask, advantages, weights=weights).loss
        loss.backward()
        return loss

    for _ in range(4):
        optimizer.step(closure)
    with torch.no_grad():
        got = policy.log_probs(rollout)[:, 0].exp().numpy()
    exact_fn = pmd_mean if name == "pmd_mean" else pmd_part
    exact = exact_fn(pi_old.numpy(), np.asarray(rewards), tau).policy
    tv = 0.5 * np.abs(got - exact).sum()
    moved = 0.5 * np.abs(exact - pi_old.numpy()).sum()
    assert moved > 0.05  # the update is not trivial
    assert tv < 1e-3, (tv, got, exact)
