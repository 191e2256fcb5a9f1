"""The language-model policy: the sampler's and the trainer's log-probs, padding, micro-batching."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from pmdlab.llm.policy import LMPolicy, SamplingConfig, response_mask, token_budget_batches

from .lm_helpers import tiny_lm

PROMPTS = ["1+2+3+4=", "9+9=", "5+0+7="]


def test_response_mask_stops_after_the_first_eos():
    eos = 7
    tokens = torch.tensor([[1, 2, 7, 0, 0], [7, 3, 7, 0, 0], [1, 2, 3, 4, 5]])
    for row, m in zip(tokens.tolist(), response_mask(tokens, eos).tolist()):
        cut = row.index(eos) + 1 if eos in row else len(row)  # brute force
        assert m == [1.0] * cut + [0.0] * (len(row) - cut)


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30), st.integers(1, 120))
def test_token_budget_batches_cover_in_order_within_budget(lengths, budget):
    parts = token_budget_batches(torch.tensor(lengths), budget)
    assert torch.cat(parts).tolist() == list(range(len(lengths)))
    for p in parts:
        rows = [lengths[i] for i in p.tolist()]
        assert len(rows) == 1 or max(rows) * len(rows) <= budget


def test_invalid_sampling_settings_are_named():
    for kwargs, name in [
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ]:
        try:
            SamplingConfig(**kwargs)
        except ValueError as e:
            assert name in str(e)
        else:
            raise AssertionError(f"{kwargs} accepted")


def test_sampler_and_trainer_log_probs_agree_at_any_temperature():
    model, tok = tiny_lm()
    for temperature in (1.0, 0.6):
        policy = LMPolicy(model, tok, SamplingConfig(temperature=temperature, max_new_tokens=6))
        torch.manual_seed(0)
        rollout = policy.sample(PROMPTS, 4)
        assert rollout.tokens.shape[0] == 12 and rollout.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
        trainer = policy.log_probs(rollout)
        assert torch.allclose(trainer, rollout.sampler_logprobs, atol=2e-5)
        assert bool((trainer[rollout.mask == 0] == 0).all())


def test_top_p_sampler_log_probs_are_renormalised_nucleus_probabilities():
    """Under top-p the sampler draws from the renormalised nucleus: log q >= log p, strictly for some."""
    model, tok = tiny_lm()
    policy = LMPolicy(model, tok, SamplingConfig(top_p=0.8, max_new_tokens=6))
    torch.manual_seed(1)
    rollout = policy.sample(PROMPTS, 4)
    trainer = policy.log_probs(rollout)
    on = rollout.mask > 0
    assert bool((rollout.sampler_logprobs[on] >= trainer[on] - 1e-5).all())
    assert bool((rollout.sampler_logprobs[on] > trainer[on] + 1e-3).any())


def test_log_probs_do_not_depend_on_padding_or_batch_company():
    """A response scored alone equals the same response scored beside longer prompts and responses."""
    model, tok = tiny_lm()
    policy = LMPolicy(model, tok, SamplingConfig(max_new_tokens=6))
    torch.manual_seed(2)
    together = policy.sample(PROMPTS, 2)
    joint = policy.log_probs(together)
    for i, prompt in enumerate(PROMPTS):
        alone = policy.sample([prompt], 1)  # its own padding
        alone.tokens = together.tokens[2 * i : 2 * i + 1]
        alone.mask = together.mask[2 * i : 2 * i + 1]
        assert torch.allclose(policy.log_probs(alone), joint[2 * i : 2 * i + 1], atol=2e-5)


def test_entropy_matches_the_definition_and_micro_batching_changes_nothing():
    model, tok = tiny_lm()
    policy = LMPolicy(model, tok, SamplingConfig(max_new_tokens=5), token_budget=10)
    torch.manual_seed(3)
    rollout = policy.sample(PROMPTS, 3)
    assert len(policy.micro_batches(rollout)) > 1
    lp, ent = policy.log_probs_and_entropy(rollout)
    assert torch.allclose(lp, policy.log_probs(rollout).detach(), atol=1e-6)
    logits, _ = policy._forward(rollout)
    p = torch.softmax(logits.double(), -1)
    ref = -(p * p.log()).sum(-1) * rollout.mask[:, : logits.shape[1]]
    assert torch.allclose(ent[:, : logits.shape[1]].double(), ref, atol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients():
    model, tok = tiny_lm()
    policy = LMPolicy(model, tok, SamplingConfig(max_new_tokens=5))
    torch.manual_seed(4)
    rollout = policy.sample(PROMPTS, 2)
    model.train()

    def grads():
        model.zero_grad()
        (policy.log_probs(rollout) * rollout.mask).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    from pmdlab.llm.build import enable_activation_checkpointing

    enable_activation_checkpointing(model)
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    checkpointed = grads()
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_rollouts_mask_is_the_backends_account_of_where_each_response_stopped():
    """A backend that stops on an end token other than the tokenizer's eos (Qwen's ``<|im_end|>``
    against ``<|endoftext|>``), with pad != eos: the rollout trains on the tokens the backend says
    each response has, not on the padding an eos search would run into."""
    model, tokenizer = tiny_lm()
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    stop = next(t for t in range(3, 20) if t not in (pad, eos))  # another end token

    class StopsOnAnotherToken:
        def generate(self, prompt_ids, prompt_mask, n, sampling, greedy=False):
            rows = prompt_ids.shape[0] * n
            tokens = torch.full((rows, 4), pad)
            tokens[:, 0], tokens[:, 1] = 5, stop  # two tokens, then padding
            mask = torch.zeros(rows, 4)
            mask[:, :2] = 1.0
            return tokens, -mask, mask

    assert pad != eos
    policy = LMPolicy(model, tokenizer, SamplingConfig(max_new_tokens=4), backend=StopsOnAnotherToken())
    rollout = policy.sample(PROMPTS, 2)
    assert rollout.mask.sum(1).tolist() == [2.0] * 6
    assert rollout.mask[:, 2:].abs().sum() == 0
