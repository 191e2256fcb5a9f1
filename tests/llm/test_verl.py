"""The verl policy losses and advantage estimators against pmdlab's losses and brute force.

The functions follow verl's signatures and need no verl; the last tests
register them in verl itself where verl is installed.
"""

import math
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pmdlab.llm.integrations import verl as pv
from pmdlab.rl import losses

MODES = tuple(pv.AGGREGATION)


@pytest.fixture(autouse=True)
def _tau(monkeypatch):
    monkeypatch.setenv("PMDLAB_TAU", "0.5")


def batch(b=12, t=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).bool()
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 2
    new = (old + 0.3 * torch.randn(b, t, generator=g, dtype=torch.float64)).requires_grad_(True)
    seq_adv = torch.randn(b, generator=g, dtype=torch.float64)
    return old, new, seq_adv, mask


@pytest.mark.parametrize("name", ["pmd_mean", "pmd_part"])
@pytest.mark.parametrize("mode", MODES)
def test_one_process_loss_is_pmdlabs(name, mode):
    old, new, seq_adv, mask = batch()
    token_adv = seq_adv[:, None] * mask  # verl broadcasts the outcome advantage over the response
    got, metrics = pv.policy_loss(name)(old, new, token_adv, mask, mode, config=None)
    ref = losses.pmd(
        new, old, mask.double(), seq_adv, tau=0.5, aggregation=pv.AGGREGATION[mode], max_length=mask.shape[1]
    ).loss
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    assert "actor/pmd_target_mean" in metrics and "actor/pmd_frac_above_target" in metrics


@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_and_ranks_sum_to_the_whole_minibatch(mode):
    """verl's semantics: each rank's micro-batch losses are summed, gradients are averaged over
    ``dp`` ranks, and ``global_batch_info`` holds the minibatch totals over all ranks."""
    old, new, seq_adv, mask = batch(b=12)
    token_adv = seq_adv[:, None] * mask
    fn = pv.policy_loss("pmd_mean")
    whole, _ = fn(old, new, token_adv, mask, mode, config=None)
    (grad_whole,) = torch.autograd.grad(whole, new)
    dp = 2
    info = {
        "dp_size": dp,
        "global_batch_size": 12,
        "batch_num_tokens": int(mask.sum()),
        "loss_scale_factor": None,
    }
    config = SimpleNamespace(global_batch_info=info)
    total, grad = 0.0, torch.zeros_like(new)
    for rank_rows in (torch.arange(0, 6), torch.arange(6, 12)):
        for micro in torch.tensor_split(rank_rows, 3):  # uneven lengths across micro-batches
            loss, _ = fn(old[micro], new[micro], token_adv[micro], mask[micro], mode, config=config)
            total += float(loss.detach()) / dp
            grad += torch.autograd.grad(loss, new)[0] / dp
    assert total == pytest.approx(float(whole.detach()), rel=1e-12)
    torch.testing.assert_close(grad, grad_whole, rtol=1e-12, atol=1e-14)


def test_missing_global_information_with_several_ranks_is_an_error():
    old, new, seq_adv, mask = batch()
    config = SimpleNamespace(global_batch_info={"dp_size": 2})
    with pytest.raises(ValueError, match="no global batch size"):
        pv.policy_loss("pmd_mean")(
            old, new, seq_adv[:, None] * mask, mask, "seq-mean-token-mean", config=config
        )


def test_unsupported_options_are_named(monkeypatch):
    old, new, seq_adv, mask = batch()
    fn = pv.policy_loss("pmd_mean")
    with pytest.raises(ValueError, match="token-sum"):
        fn(old, new, seq_adv[:, None] * mask, mask, "token-sum")
    with pytest.raises(ValueError, match="rollout correction"):
        fn(old, new, seq_adv[:, None] * mask, mask, "token-mean", rollout_is_weights=torch.ones_like(old))
    monkeypatch.setenv("PMDLAB_TAU", "-1")
    with pytest.raises(ValueError, match="PMDLAB_TAU must be positive"):
        fn(old, new, seq_adv[:, None] * mask, mask, "token-mean")


def test_advantage_estimators_match_brute_force():
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.3, 0.0, 0.9])
    uid = np.array(["b", "a", "b", "a", "b", "c", "c", "a"], dtype=object)
    t = 5
    mask = torch.ones(len(rewards), t)
    mask[2, 3:] = 0
    token_rewards = torch.zeros(len(rewards), t, dtype=torch.float64)
    token_rewards[:, 0] = torch.as_tensor(rewards)
    out = {name: pv.advantage_estimator(name)(token_rewards, mask, index=uid)[0] for name in pv.BASELINES}
    tau = 0.5
    for i in range(len(rewards)):
        same = [j for j in range(len(rewards)) if uid[j] == uid[i]]
        others = [j for j in same if j != i]
        expect = {
            "pmd_mean": rewards[i] - np.mean(rewards[same]),
            "pmd_partition": rewards[i] - tau * math.log(np.mean(np.exp(rewards[same] / tau))),
            "pmd_loo_partition": rewards[i] - tau * math.log(np.mean(np.exp(rewards[others] / tau))),
        }
        for name, value in expect.items():
            np.testing.assert_allclose(out[name][i].numpy(), value * mask[i].numpy(), atol=1e-12)


def test_estimators_need_the_prompt_ids():
    with pytest.raises(ValueError, match="uid"):
        pv.advantage_estimator("pmd_mean")(torch.zeros(2, 3), torch.ones(2, 3))


# ------------------------------------------------------------------ inside verl, where it is installed


def _verl_or_skip(reason="verl is not installed"):
    if os.environ.get("PMDLAB_REQUIRE_VERL"):  # CI's verl environment: a missing verl is a failure
        import verl.trainer.ppo.core_algos as core_algos

        return core_algos
    return pytest.importorskip("verl.trainer.ppo.core_algos", reason=reason)


def test_verl_finds_the_registered_losses_by_name():
    core_algos = _verl_or_skip("verl is not installed (it pins transformers<5.11; see README, TRL and verl)")
    pv.register()
    old, new, seq_adv, mask = batch()
    fn = core_algos.get_policy_loss_fn("pmd_mean")
    got, _ = fn(
        old_log_prob=old,
        log_prob=new,
        advantages=seq_adv[:, None] * mask,
        response_mask=mask,
        loss_agg_mode="seq-mean-token-mean",
        config=None,
        rollout_is_weights=None,
    )
    ref = losses.pmd(new, old, mask.double(), seq_adv, tau=0.5).loss
    assert float(got.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    rewards = torch.zeros(mask.shape, dtype=torch.float64)
    rewards[:, -1] = torch.arange(mask.shape[0], dtype=rewards.dtype) % 3
    index = [str(i // 2) for i in range(mask.shape[0])]
    found, _ = core_algos.get_adv_estimator_fn("pmd_loo_partition")(rewards, mask, index=index)
    want, _ = pv.advantage_estimator("pmd_loo_partition")(rewards, mask, index=index)
    torch.testing.assert_close(found, want)


def test_import_verl_alone_registers_the_losses_through_the_plugin_entry_point():
    _verl_or_skip()
    import subprocess
    import sys

    code = (
        "import verl\nfrom verl.trainer.ppo import core_algos as c\n"
        "print('pmd_mean' in c.POLICY_LOSS_REGISTRY, 'pmd_loo_partition' in c.ADV_ESTIMATOR_REGISTRY)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.split() == ["True", "True"], done.stderr[-2000:]


@pytest.mark.parametrize("mode", MODES)
def test_normalisation_agrees_with_verls_own_agg_loss(mode):
    """verl's ``agg_loss`` of the per-sequence PMD loss spread over its tokens, with the same global info."""
    core_algos = _verl_or_skip()
    old, new, seq_adv, mask = batch()
    info = {"dp_size": 2, "global_batch_size": 30, "batch_num_tokens": 90, "loss_scale_factor": None}
    got, _ = pv.policy_loss("pmd_mean")(
        old, new, seq_adv[:, None] * mask, mask, mode, config=SimpleNamespace(global_batch_info=info)
    )
    delta = ((new - old) * mask).sum(1)
    per_seq = 0.5 * (seq_adv / 0.5 - delta) ** 2
    # The sequence's loss spread evenly over its tokens: token sums give it back, token means give it
    # over L_i.
    loss_mat = (per_seq / mask.sum(1))[:, None].expand_as(new)
    ref = core_algos.agg_loss(loss_mat=loss_mat, loss_mask=mask, loss_agg_mode=mode, **info)
    assert float(got) == pytest.approx(float(ref), rel=1e-10)
