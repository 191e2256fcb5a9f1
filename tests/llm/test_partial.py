"""Partial rollouts (:mod:`pmdlab.llm.rollout.partial`): each token keeps the log-prob of the version
that made it."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pmdlab.llm.policy import SamplingConfig
from pmdlab.llm.rollout.partial import Group, PartialRollouts, Response, sampling_lead
from pmdlab.llm.tasks import make_reward
from pmdlab.llm.train import Trainer
from pmdlab.rl.rollout import Rollout

from .lm_helpers import small_config


def _forward_log_probs(policy, responses: list[Response]) -> list[list[float]]:
    """Each response's token log-probs under the policy's current weights, computed independently:
    one forward pass over prompt and whole response (left-padded prompts, right-padded responses)."""
    pad = policy.tokenizer.pad_token_id
    plen = max(len(r.prompt_ids) for r in responses)
    width = max(len(r.tokens) for r in responses)
    rollout = Rollout(
        group_ids=torch.arange(len(responses)),
        tokens=torch.tensor([r.tokens + [pad] * (width - len(r.tokens)) for r in responses]),
        mask=torch.tensor([[1.0] * len(r.tokens) + [0.0] * (width - len(r.tokens)) for r in responses]),
        prompts=torch.tensor([[pad] * (plen - len(r.prompt_ids)) + r.prompt_ids for r in responses]),
        extras={
            "prompt_mask": torch.tensor(
                [[0] * (plen - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in responses]
            )
        },
    )
    with torch.no_grad():
        lp = policy.log_probs(rollout)
    return [lp[i, : len(r.tokens)].tolist() for i, r in enumerate(responses)]


@pytest.mark.parametrize("old_source", ["trainer", "sampler"])
def test_each_token_keeps_the_log_prob_of_the_version_that_made_it(tmp_path, old_source):
    trainer = Trainer(small_config(tmp_path, sampling=SamplingConfig(max_new_tokens=3, temperature=1.5)))
    policy = trainer.policy
    reward = make_reward("binary")
    state = PartialRollouts(
        policy, trainer.task, reward, n=4, budget=1, behaviour_pass=old_source == "trainer"
    )
    state.start(trainer.task.train_batch(4))
    snapshots = []
    for version in range(3):  # one token per iteration, new weights each time
        snapshots.append({k: v.clone() for k, v in policy.model.state_dict().items()})
        torch.manual_seed(version)
        assert state.extend(version) > 0
        with torch.no_grad():
            for p in policy.model.parameters():
                p.add_(0.3 * torch.randn_like(p))
    responses = [r for g in state.groups for r in g.responses]
    assert all(r.done for r in responses)
    assert any(len(set(r.versions)) == 3 for r in responses)  # made by three different policies
    checked = 0
    for version, weights in enumerate(snapshots):
        policy.model.load_state_dict(weights)
        reference = _forward_log_probs(policy, responses)
        for r, ref in zip(responses, reference):
            for t, v in enumerate(r.versions):
                if v == version:
                    tol = 1e-5 if old_source == "trainer" else 1e-4  # the sampler's own arithmetic
                    assert r.old[t] == pytest.approx(ref[t], abs=tol)
                    checked += 1
    assert checked == sum(len(r.tokens) for r in responses)
    # the version that made a token matters: under the last weights the early tokens differ
    last = _forward_log_probs(policy, responses)
    gaps = [
        abs(r.old[t] - last[i][t])
        for i, r in enumerate(responses)
        for t, v in enumerate(r.versions)
        if v == 0
    ]
    assert max(gaps) > 1e-2


def _group(versions: list[int], done: bool = True) -> Group:
    return Group(problem=None, responses=[Response([1], [5] * len(versions), versions=versions, done=done)])


def test_take_hands_out_the_oldest_finished_groups_and_drops_stale_ones():
    state = PartialRollouts.__new__(PartialRollouts)
    state.groups = [_group([4, 5]), _group([1, 5]), _group([4], done=False), _group([5]), _group([6])]
    state.dropped = 0
    assert state.take(4, floor=4) == []  # 3 finished groups are fresh enough, not 4
    assert state.dropped == 1  # the one with a token of version 1
    taken = state.take(2, floor=4)
    assert [g.responses[0].versions for g in taken] == [[4, 5], [5]]  # the oldest first
    assert [g.responses[0].versions for g in state.groups] == [[4], [6]]
    assert [g.responses[0].versions for g in state.take(1, floor=5)] == [[6]]
    assert state.dropped == 2 and state.groups == []  # the unfinished group became too old


def test_groups_in_progress_stay_bounded_by_the_iterations_a_response_can_take(tmp_path):
    """A response finishes within K = ceil(max_new_tokens / partial_tokens) iterations, so once K
    iterations have run each further one finishes the ``prompts`` groups started K before: at most
    (K + 1) * prompts groups are ever in progress, however many batches are drawn."""
    from pmdlab.llm.rollout.partial import next_partial_batch

    trainer = Trainer(small_config(tmp_path, sampling=SamplingConfig(max_new_tokens=5, temperature=1.5)))
    prompts, budget = 3, 2
    bound = (-(-5 // budget) + 1) * prompts
    state = PartialRollouts(
        trainer.policy, trainer.task, make_reward("binary"), n=2, budget=budget, behaviour_pass=True
    )
    sizes = []
    for step in range(12):
        batch = next_partial_batch(
            state, lambda: trainer.task.train_batch(prompts), prompts, step, 0, seed=step
        )
        assert batch.rollout.group_ids.unique().numel() == prompts
        sizes.append(len(state.groups))
    assert max(sizes) <= bound and max(sizes) > 0  # some groups were carried over, never more than the bound


def _schedule(lead: int, k: int, max_new_tokens: int, budget: int, prompts=2, batches=24):
    """A worker's schedule, brute force: batch ``b`` sampled from version ``max(0, b - lead)``, every
    response running to ``max_new_tokens`` (the longest a response can take), ``budget`` tokens per
    iteration; the real :meth:`PartialRollouts.take` hands out and drops groups. Returns the largest
    token lag among trained groups and the number dropped (a batch that never fills, every group
    dropped before it finishes, ends the schedule)."""
    state = PartialRollouts.__new__(PartialRollouts)
    state.groups, state.dropped = [], 0
    worst = 0
    for b in range(batches):
        version = max(0, b - lead)
        for _ in range(max_new_tokens + 2):  # a response finishes within max_new_tokens iterations
            if taken := state.take(prompts, floor=b - k):
                break
            state.groups += [Group(None, [Response([1])]) for _ in range(prompts)]
            for g in state.groups:
                r = g.responses[0]
                if not r.done:
                    count = min(budget, max_new_tokens - len(r.tokens))
                    r.tokens += [5] * count
                    r.versions += [version] * count
                    r.done = len(r.tokens) == max_new_tokens
        else:
            return worst, state.dropped
        worst = max(worst, max(b - g.oldest for g in taken))
    return worst, state.dropped


@given(k=st.integers(0, 6), max_new_tokens=st.integers(1, 9), budget=st.integers(1, 9))
def test_sampling_lead_is_the_largest_lead_whose_carried_responses_stay_within_the_lag(
    k, max_new_tokens, budget
):
    """Without partial rollouts the lead is k. With them, sampled ``lead`` ahead, the longest responses
    are all trained within k versions when they can be (K - 1 <= k, K the iterations one takes), and
    one version more of lead would drop some."""
    assert sampling_lead(k, max_new_tokens, 0) == k
    budget = min(budget, max_new_tokens)
    lead = sampling_lead(k, max_new_tokens, budget)
    iterations = -(-max_new_tokens // budget)
    worst, dropped = _schedule(lead, k, max_new_tokens, budget)
    assert worst <= k
    assert (dropped == 0) == (iterations - 1 <= k)
    if lead < k:
        assert _schedule(lead + 1, k, max_new_tokens, budget)[1] > 0
