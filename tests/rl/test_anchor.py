"""Which log-probs are pi_old (pmdlab.rl.anchor), on batches whose sampler lags the trained policy."""

import importlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pmdlab.bandit import BanditConfig, TaskConfig
from pmdlab.rl.algorithms import Algorithm
from pmdlab.rl.anchor import anchor_logprobs, behaviour_pass_needed
from pmdlab.rl.groups import Groups
from pmdlab.rl.rollout import Rollout
from pmdlab.rl.update import policy_update

bandit_train = importlib.import_module("pmdlab.bandit.train")  # the package's `train` is the function


def _lagging_batch(seed: int, lag: float = 0.5, prompts: int = 4, responses: int = 5, n: int = 3):
    """A softmax policy over a table of logits whose weights moved by ``lag`` (times a random
    direction) since it sampled the batch. Returns the rollout (with the sampler's log-probs:
    the behaviour ones up to the sampler's own arithmetic), the behaviour log-probs, the
    trained policy's ``log_probs`` and its weights."""
    gen = torch.Generator().manual_seed(seed)
    behaviour_logits = torch.randn(prompts, responses, generator=gen, dtype=torch.float64)
    theta = torch.nn.Parameter(
        behaviour_logits + lag * torch.randn(prompts, responses, generator=gen).double()
    )
    picks = torch.multinomial(torch.softmax(behaviour_logits, 1), n, replacement=True, generator=gen)
    rollout = Rollout(
        group_ids=torch.arange(prompts).repeat_interleave(n),
        tokens=picks.reshape(-1, 1),
        mask=torch.ones(prompts * n, 1, dtype=torch.float64),
        rewards=torch.rand(prompts * n, generator=gen, dtype=torch.float64),
    )

    def table(logits, r):
        return torch.log_softmax(logits, dim=1)[r.group_ids, r.tokens[:, 0]][:, None]

    behaviour = table(behaviour_logits, rollout)
    rollout.sampler_logprobs = behaviour + 1e-3 * torch.randn(behaviour.shape, generator=gen).double()
    return rollout, behaviour, (lambda r: table(theta, r)), theta


def _counting(log_probs):
    calls = []

    def wrapped(r):
        calls.append(torch.is_grad_enabled())
        return log_probs(r)

    return wrapped, calls


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 2.0))
def test_current_gives_the_trained_policys_log_probs_not_the_behaviour_ones(seed, lag):
    rollout, behaviour, log_probs, _ = _lagging_batch(seed, lag)
    counted, calls = _counting(log_probs)
    old, reference = anchor_logprobs("current", rollout, behaviour, counted)
    assert calls == [False]  # recomputed once, without a graph
    assert torch.equal(old, log_probs(rollout).detach())
    assert (old - behaviour).abs().max() > 1e-3  # the weights did move
    assert reference is behaviour  # the sampler is compared with the weights that sampled
    old, reference = anchor_logprobs("current", rollout, None, log_probs)
    assert torch.equal(old, log_probs(rollout).detach()) and reference is old


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.1, 2.0))
def test_trainer_gives_the_behaviour_log_probs_computed_when_the_batch_was_sampled(seed, lag):
    rollout, behaviour, log_probs, _ = _lagging_batch(seed, lag)
    counted, calls = _counting(log_probs)
    old, reference = anchor_logprobs("trainer", rollout, behaviour, counted)
    assert old is behaviour and reference is behaviour and calls == []
    # without them, the trained weights are taken to be those that sampled (no lag): recomputed now
    old, reference = anchor_logprobs("trainer", rollout, None, counted)
    assert calls == [False] and reference is old
    assert torch.equal(old, log_probs(rollout).detach())


def test_sampler_gives_the_samplers_own_log_probs_and_needs_them():
    rollout, behaviour, log_probs, _ = _lagging_batch(0)
    counted, calls = _counting(log_probs)
    old, reference = anchor_logprobs("sampler", rollout, behaviour, counted)
    assert old is rollout.sampler_logprobs and reference is behaviour and calls == []
    old, reference = anchor_logprobs("sampler", rollout, None, counted)
    assert old is rollout.sampler_logprobs and reference is None and calls == []
    rollout.sampler_logprobs = None
    with pytest.raises(ValueError, match="old_source='sampler' needs a rollout with sampler_logprobs"):
        anchor_logprobs("sampler", rollout, behaviour, log_probs)
    with pytest.raises(ValueError, match="old_source must be one of"):
        anchor_logprobs("engine", rollout, behaviour, log_probs)


def test_only_the_sampler_source_spares_the_behaviour_forward_pass():
    assert [behaviour_pass_needed(s) for s in ("trainer", "sampler", "current")] == [True, False, True]


@pytest.mark.parametrize("source, recomputed", [("current", True), ("trainer", False), ("sampler", False)])
def test_policy_update_recomputes_pi_old_with_anchor_log_probs_when_given(source, recomputed):
    """The anchor's forward pass uses ``anchor_log_probs`` (e.g. the LLM trainer's micro-batched one),
    the loss's uses ``log_probs``; the drift metric shows which pi_old was used."""
    rollout, behaviour, log_probs, theta = _lagging_batch(5)
    anchor, anchor_calls = _counting(lambda r: log_probs(r) + 0.25)  # a recognisable shift
    loss_side, loss_calls = _counting(log_probs)
    metrics = policy_update(
        loss_side,
        torch.optim.SGD([theta], lr=0.1),
        rollout,
        Algorithm(old_source=source),
        behaviour_logprobs=behaviour,
        anchor_log_probs=anchor,
    )
    assert anchor_calls == ([False] if recomputed else []) and loss_calls == [True]
    if recomputed:  # pi_theta against pi_old = pi_theta + 0.25 on every token
        assert metrics["behaviour_abs_diff"] == pytest.approx(0.25, rel=1e-12)


# The sampler's log-probs are compared (sampler_abs_diff, sampler_kl_k3) exactly when there is a
# reference other than themselves; for trainer and sampler this is the rule policy_update had before
# pmdlab.rl.anchor: compare the given (or recomputed) trainer log-probs unless they are the sampler's.
@pytest.mark.parametrize(
    "source, sampler, behaviour, compared",
    [
        ("trainer", True, "none", True),  # recomputed
        ("trainer", True, "own", True),
        ("trainer", True, "sampler", False),  # the bandit: the sampler's are the behaviour ones
        ("trainer", False, "own", False),
        ("sampler", True, "none", False),
        ("sampler", True, "own", True),
        ("sampler", True, "sampler", False),
        ("current", True, "none", True),
        ("current", True, "own", True),
        ("current", True, "sampler", False),
        ("current", False, "none", False),
    ],
)
def test_policy_update_compares_the_sampler_with_the_anchors_reference(source, sampler, behaviour, compared):
    rollout, own, log_probs, theta = _lagging_batch(3)
    if not sampler:
        rollout.sampler_logprobs = None
    given = {"none": None, "own": own, "sampler": rollout.sampler_logprobs}[behaviour]
    opt = torch.optim.SGD([theta], lr=0.1)
    metrics = policy_update(log_probs, opt, rollout, Algorithm(old_source=source), behaviour_logprobs=given)
    assert ("sampler_abs_diff" in metrics) == compared
    assert ("sampler_kl_k3" in metrics) == compared
    if compared and behaviour == "own":
        assert metrics["sampler_abs_diff"] == pytest.approx(
            float((own - rollout.sampler_logprobs).abs().mean())
        )


@pytest.mark.parametrize(
    "old_source, anchor", [("current", "current"), ("trainer", "sampler"), ("sampler", "sampler")]
)
def test_bandit_trainer_anchors_stale_batches_where_its_old_source_says(monkeypatch, old_source, anchor):
    """Rollouts 2 versions stale, one minibatch a step (its loss is taken before the step): with
    ``current`` the update's loss is the loss with pi_old = the trained policy's log-probs, else
    with pi_old = the sampler's; the two differ on every lagging step."""
    seen = []

    def spy(log_probs, optimizer, rollout, algorithm, **kwargs):
        with torch.no_grad():
            current = log_probs(rollout)
        out = policy_update(log_probs, optimizer, rollout, algorithm, **kwargs)
        seen.append((rollout, current, kwargs["behaviour_logprobs"], algorithm, out))
        return out

    monkeypatch.setattr(bandit_train, "policy_update", spy)
    cfg = BanditConfig(
        task=TaskConfig(prompts=8, responses=6),
        algorithm=Algorithm("pmd_mean", tau=0.5, old_source=old_source),
        steps=6,
        n=4,
        minibatches=1,
        staleness=2,
        lr=0.1,
        dtype="float64",
    )
    bandit_train.train(cfg)
    lagging = seen[2:]  # steps 3.. sample from the policy two versions back
    assert len(lagging) == 4
    for rollout, current, behaviour, algorithm, out in lagging:
        assert behaviour is rollout.sampler_logprobs  # the bandit passes them always; the anchor decides
        adv = algorithm.advantages(rollout.rewards, Groups.from_ids(rollout.group_ids))
        losses = {
            name: float(algorithm.loss(current, old, rollout.mask, adv).loss)
            for name, old in (("current", current), ("sampler", rollout.sampler_logprobs))
        }
        assert abs(losses["current"] - losses["sampler"]) > 1e-3
        assert out["loss"] == pytest.approx(losses[anchor], rel=1e-12, abs=1e-12)
