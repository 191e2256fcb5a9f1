"""The shared off-policy update: minibatching, accumulation, guards, and the algorithm table."""

import contextlib
import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pmdlab.rl import losses
from pmdlab.rl.algorithms import ALGORITHMS, Algorithm
from pmdlab.rl.groups import Groups, advantages, grpo_advantages
from pmdlab.rl.rollout import Rollout
from pmdlab.rl.update import DataParallel, minibatches, policy_update


@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=12),
    st.integers(1, 12),
    st.integers(0, 1000),
    st.booleans(),
)
def test_group_minibatches_partition_the_batch_and_keep_groups_whole(sizes, count, seed, shuffled):
    count = min(count, len(sizes))
    g = Groups.from_sizes(sizes)
    if shuffled:  # the same groups, responses interleaved (the sorting path)
        g = Groups.from_ids(
            g.index[torch.randperm(g.index.numel(), generator=torch.Generator().manual_seed(seed))]
        )
    parts = minibatches(g, count, torch.Generator().manual_seed(seed))
    assert len(parts) == count
    flat = torch.cat(parts)
    assert sorted(flat.tolist()) == list(range(sum(sizes)))
    owner = {}
    for k, part in enumerate(parts):
        for grp in g.index[part].tolist():
            assert owner.setdefault(grp, k) == k  # a group never spans two minibatches


def test_response_minibatches_and_bad_counts():
    g = Groups.from_sizes([3, 3])
    parts = minibatches(g, 4, torch.Generator().manual_seed(0), by="response")
    assert sorted(torch.cat(parts).tolist()) == list(range(6))
    with pytest.raises(ValueError, match="only 2 groups"):
        minibatches(g, 3)
    with pytest.raises(ValueError, match="at least 1"):
        minibatches(g, 0)
    with pytest.raises(ValueError, match="by must be"):
        minibatches(g, 1, by="token")


def _setup(seed=0, b=12, t=4, v=5, d=3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=gen, dtype=torch.float64)
    tokens = torch.randint(0, v, (b, t), generator=gen)
    mask = (torch.arange(t)[None, :] < torch.randint(1, t + 1, (b,), generator=gen)[:, None]).double()
    rollout = Rollout(
        group_ids=torch.arange(b) // 4,
        tokens=tokens,
        mask=mask,
        rewards=(torch.rand(b, generator=gen) < 0.5).double(),
        prompts=torch.arange(b),
        extras={"x": x},
    )
    w = torch.nn.Parameter(torch.randn(d, v, generator=gen, dtype=torch.float64))

    def log_probs(r):
        return torch.log_softmax(r.extras["x"] @ w, dim=-1).gather(-1, r.tokens[..., None]).squeeze(-1)

    return rollout, w, log_probs


@pytest.mark.parametrize("name", ["pmd_mean", "grpo", "gspo"])
def test_gradient_accumulation_count_does_not_change_the_update(name):
    alg = Algorithm(name=name, tau=0.5)
    results = []
    for split in (None, 2, 3):
        rollout, w, log_probs = _setup()
        opt = torch.optim.SGD([w], lr=0.5)
        micro = (
            None
            if split is None
            else (lambda sub, k=split: list(torch.tensor_split(torch.arange(len(sub)), k)))
        )
        policy_update(
            log_probs,
            opt,
            rollout,
            alg,
            num_minibatches=2,
            generator=torch.Generator().manual_seed(1),
            micro_batches=micro,
        )
        results.append(w.detach().clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(results[2], results[0], rtol=1e-12, atol=1e-14)
    assert (results[0] - _setup()[1].detach()).abs().max() > 1e-4  # it did move


def test_epochs_and_minibatches_count_optimizer_steps():
    rollout, w, log_probs = _setup()
    opt = torch.optim.SGD([w], lr=0.1)
    out = policy_update(log_probs, opt, rollout, Algorithm(), num_minibatches=3, epochs=2)
    assert out["optimizer_steps"] == 6 and out["skipped_steps"] == 0


def test_non_finite_loss_skips_the_step_and_counts_it():
    rollout, w, log_probs = _setup()
    before = w.detach().clone()
    opt = torch.optim.SGD([w], lr=0.1)
    calls = {"n": 0}

    def poisoned(r):
        calls["n"] += 1
        out = log_probs(r)
        return out * float("nan") if calls["n"] > 1 else out  # the old log-probs are fine

    out = policy_update(
        poisoned, opt, rollout, Algorithm(), num_minibatches=3, parameters=[w], max_grad_norm=1.0
    )
    assert out["skipped_steps"] == 3 and out["optimizer_steps"] == 0
    assert torch.equal(w.detach(), before)


def test_update_needs_rewards_and_parameters_for_clipping():
    rollout, w, log_probs = _setup()
    opt = torch.optim.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match="max_grad_norm needs the parameters"):
        policy_update(log_probs, opt, rollout, Algorithm(), max_grad_norm=1.0)
    rollout.rewards = None
    with pytest.raises(ValueError, match="no rewards"):
        policy_update(log_probs, opt, rollout, Algorithm())


def test_rollout_select_indexes_every_field():
    rollout, _, _ = _setup()
    sub = rollout.select(torch.tensor([5, 0]))
    assert sub.tokens.shape[0] == 2 and sub.extras["x"].shape[0] == 2
    assert torch.equal(sub.rewards, rollout.rewards[[5, 0]])
    assert torch.equal(sub.prompts, torch.tensor([5, 0]))


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithm_loss_is_the_named_loss_with_its_defaults(name):
    """The table's loss with the defaults written out here, on advantages from the baselines."""
    rollout, w, log_probs = _setup()
    alg = Algorithm(name=name, tau=0.7)
    groups = Groups.from_ids(rollout.group_ids)
    adv = alg.advantages(rollout.rewards, groups)
    lp = log_probs(rollout)
    old = lp.detach() + 0.05
    got = alg.loss(lp, old, rollout.mask, adv).loss
    r, ids = rollout.rewards, rollout.group_ids
    direct = {
        "pmd_mean": lambda: losses.pmd(lp, old, rollout.mask, advantages(r, ids, "mean"), tau=0.7),
        "pmd_part": lambda: losses.pmd(
            lp, old, rollout.mask, advantages(r, ids, "partition", tau=0.7), tau=0.7
        ),
        "grpo": lambda: losses.grpo(lp, old, rollout.mask, grpo_advantages(r, ids)),
        "gspo": lambda: losses.gspo(lp, old, rollout.mask, grpo_advantages(r, ids)),
        "rloo": lambda: losses.rloo(lp, old, rollout.mask, advantages(r, ids, "leave_one_out")),
    }[name]().loss
    torch.testing.assert_close(got, direct)


def test_algorithm_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="algorithm must be one of"):
        Algorithm(name="ppo")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        Algorithm(aggregation="sum")
    with pytest.raises(ValueError, match="tau must be positive"):
        Algorithm(name="pmd_part", tau=0.0)


def test_old_source_sampler_trains_against_the_sampler_log_probs_without_recomputing():
    """With ``old_source="sampler"`` the update's pi_old is the sampler's (the policy is asked only for
    the trained log-probs), and the trainer's, when given, are compared with it."""
    rollout, w, log_probs = _setup()
    with torch.no_grad():
        exact = log_probs(rollout)
    rollout.sampler_logprobs = (exact - 0.1) * rollout.mask
    calls = []

    def counting(r):
        calls.append(torch.is_grad_enabled())
        return log_probs(r)

    def run(algorithm, old=None):
        w.data = _setup()[1].data.clone()
        opt = torch.optim.SGD([w], lr=0.1)
        calls.clear()
        metrics = policy_update(counting, opt, rollout, algorithm, behaviour_logprobs=old)
        return w.detach().clone(), metrics

    sampler_w, metrics = run(Algorithm("pmd_mean", tau=0.5, old_source="sampler"))
    assert calls == [True]  # one forward, with grad: pi_old was not recomputed
    assert "sampler_abs_diff" not in metrics
    shifted = dataclasses.replace(rollout, sampler_logprobs=None)
    same_w, _ = run_with(shifted, exact - 0.1, log_probs, w)
    torch.testing.assert_close(sampler_w, same_w)
    _, compared = run(Algorithm("pmd_mean", tau=0.5, old_source="sampler"), old=exact)
    assert compared["sampler_abs_diff"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="old_source='sampler' needs a rollout with sampler_logprobs"):
        policy_update(log_probs, torch.optim.SGD([w], lr=0.1), shifted, Algorithm(old_source="sampler"))


def run_with(rollout, old, log_probs, w):
    """The trainer-source update with ``old`` as pi_old, from the same starting weights."""
    w.data = _setup()[1].data.clone()
    policy_update(
        log_probs,
        torch.optim.SGD([w], lr=0.1),
        rollout,
        Algorithm("pmd_mean", tau=0.5),
        behaviour_logprobs=old,
    )
    return w.detach().clone(), None


def test_a_rollout_serialises_every_field_and_rejects_unknown_ones():
    rollout, _, _ = _setup()
    rollout.sampler_logprobs = torch.zeros_like(rollout.mask)
    data = rollout.to_dict()
    assert set(data) == {f.name for f in dataclasses.fields(Rollout)}
    back = Rollout.from_dict(data, device="cpu")
    for f in dataclasses.fields(Rollout):
        a, b = getattr(rollout, f.name), getattr(back, f.name)
        if f.name == "extras":
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        else:
            assert torch.equal(a, b), f.name
    with pytest.raises(ValueError, match=r"unknown fields \['version'\]"):
        Rollout.from_dict({**data, "version": 3})
    rollout.extras["prompt_mask"] = torch.ones(len(rollout), 2)
    moved = rollout.to("meta")  # every tensor, extras included, on the new device
    tensors = [getattr(moved, f.name) for f in dataclasses.fields(Rollout) if f.name != "extras"]
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)] + list(moved.extras.values())
    assert len(tensors) >= 5 and all(t.device.type == "meta" for t in tensors)


@pytest.mark.parametrize("name", ["pmd_mean", "grpo"])
def test_data_parallel_with_one_rank_is_the_single_process_update_bit_for_bit(name):
    """``DataParallel`` whose all-reduce is the identity, at loss scale 1: the same metrics and
    weights to the last bit; its ``no_sync`` wraps every micro-batch's backward but the last."""
    runs, synced = [], []

    @contextlib.contextmanager
    def no_sync():
        synced.append(True)
        yield

    for parallel in (None, DataParallel(lambda x: x), DataParallel(lambda x: x, no_sync=no_sync)):
        rollout, w, log_probs = _setup()
        rollout.sampler_logprobs = log_probs(rollout).detach() * 0.9  # so the mismatch keys appear too
        metrics = policy_update(
            log_probs,
            torch.optim.Adam([w], lr=0.1),
            rollout,
            Algorithm(name, tau=0.5),
            num_minibatches=2,
            epochs=2,
            generator=torch.Generator().manual_seed(3),
            micro_batches=lambda sub: list(torch.tensor_split(torch.arange(len(sub)), 3)),
            parameters=[w],
            max_grad_norm=0.5,
            parallel=parallel,
        )
        runs.append((metrics, w.detach().clone()))
    for metrics, weights in runs[1:]:
        assert list(metrics.items()) == list(runs[0][0].items())
        assert torch.equal(weights, runs[0][1])
    assert "sampler_abs_diff" in runs[0][0] and runs[0][0]["optimizer_steps"] == 4
    assert len(synced) == 4 * 2  # 4 minibatch steps, 3 micro-batches each


def test_data_parallel_loss_scale_multiplies_each_backward_pass():
    grads = []
    for scale in (1.0, 3.0):
        rollout, w, log_probs = _setup()
        opt = torch.optim.SGD([w], lr=0.0)
        policy_update(
            log_probs, opt, rollout, Algorithm(), parallel=DataParallel(lambda x: x, loss_scale=scale)
        )
        grads.append(w.grad.clone())
    torch.testing.assert_close(grads[1], 3.0 * grads[0], rtol=1e-12, atol=0.0)
    assert grads[0].abs().max() > 1e-3
