"""The language-model policy: the sampler's and the trainer's log-probs, padding, micro-batching,
mixed precision."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pmdlab.llm import logprobs
from pmdlab.llm.policy import (
    LMPolicy,
    SamplingConfig,
    length_sorted_batches,
    padding_share,
    response_mask,
    token_budget_batches,
)
from pmdlab.llm.tiny import TinyModelConfig
from pmdlab.rl.rollout import Rollout

from .lm_helpers import tiny_lm

PROMPTS = ["1+2+3+4=", "9+9=", "5+0+7="]


def reference(model, rollout: Rollout, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain full-logits formula over the whole padded rollout, in the model's dtype:
    ``log softmax(logits / T)`` gathered at the response tokens, and ``-sum p log p`` (B, T), 0 on
    padding."""
    pmask, mask = rollout.extras["prompt_mask"], rollout.mask
    ids = torch.cat([rollout.prompts, rollout.tokens], 1)
    attn = torch.cat([pmask, mask.to(pmask.dtype)], 1)
    positions = (attn.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False).logits
    logp = torch.log_softmax(logits[:, -rollout.tokens.shape[1] - 1 : -1] / temperature, dim=-1)
    lp = logp.gather(-1, rollout.tokens.unsqueeze(-1)).squeeze(-1) * mask
    return lp, -(logp.exp() * logp).sum(-1) * mask


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
    with torch.no_grad():
        _, ref = reference(model.double(), rollout)
    assert torch.allclose(ent.double(), ref, atol=1e-5)


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


@pytest.mark.parametrize(
    "temperature, top_p, greedy", [(1.0, 1.0, False), (0.7, 0.9, False), (1.3, 1.0, False), (0.7, 0.9, True)]
)
def test_sampler_log_probs_equal_those_of_generates_output_scores(temperature, top_p, greedy):
    """The recorder's log-probs (one step's scores kept at a time) equal the log-softmax of the
    processed scores ``generate`` returns with ``output_scores=True``, at the same tokens: the
    distribution each token was drawn from, after temperature and top-p (greedy: the raw logits)."""
    model, tok = tiny_lm(TinyModelConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, seed=3))
    sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_new_tokens=7)
    policy = LMPolicy(model, tok, sampling)
    ids, mask = policy.encode(PROMPTS)
    torch.manual_seed(5)
    tokens, logps, rmask = policy.backend.generate(ids, mask, 4, sampling, greedy=greedy)
    torch.manual_seed(5)
    model.eval()
    kwargs = (
        dict(do_sample=False)
        if greedy
        else dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    )
    out = model.generate(
        input_ids=ids.repeat_interleave(4, 0),
        attention_mask=mask.repeat_interleave(4, 0),
        max_new_tokens=7,
        output_scores=True,
        return_dict_in_generate=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **kwargs,
    )
    expected_tokens = out.sequences[:, ids.shape[1] :]
    assert torch.equal(tokens, expected_tokens)
    scores = torch.log_softmax(torch.stack(out.scores, dim=1).float(), dim=-1)
    expected = scores.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    on = rmask > 0
    assert greedy or bool((rmask.sum(1) < 7).any())  # rows that finished early (then padded) too
    torch.testing.assert_close(logps[on], expected[on], rtol=0, atol=1e-6)
    assert bool((logps[~on] == 0).all())


def _float64_policy(chunk: int, **kwargs):
    model, tok = tiny_lm(TinyModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, seed=1))
    model = model.double()
    policy = LMPolicy(
        model, tok, SamplingConfig(temperature=0.7, max_new_tokens=6), logit_chunk=chunk, **kwargs
    )
    torch.manual_seed(6)
    return policy, policy.sample(PROMPTS, 3)


@pytest.mark.parametrize("chunk", [1, 4, 1024])
def test_chunked_log_probs_and_their_gradients_equal_the_full_logits_formula(chunk):
    """Float64: the log-probs from hidden states, a chunk of positions at a time with the chunk's
    logits recomputed in the backward pass, and their gradients w.r.t. every parameter, equal the
    plain ``log softmax(logits / T)`` over the whole padded rollout; so do the entropies."""
    policy, rollout = _float64_policy(chunk, token_budget=30)
    model = policy.model
    model.train()
    weights = torch.randn(
        rollout.tokens.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64
    )

    def grads(fn):
        model.zero_grad(set_to_none=True)
        lp = fn()
        (lp * weights).sum().backward()
        return lp.detach(), [p.grad.clone() for p in model.parameters()]

    got, got_grads = grads(lambda: policy.log_probs(rollout))
    want, want_grads = grads(lambda: reference(model, rollout, 0.7)[0])
    assert got.dtype == torch.float64 and got.shape == rollout.tokens.shape
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert len(policy.micro_batches(rollout)) > 1
    lp, ent = policy.log_probs_and_entropy(rollout)
    with torch.no_grad():
        ref_lp, ref_ent = reference(model, rollout, 0.7)
    torch.testing.assert_close(lp, ref_lp, rtol=0, atol=1e-12)
    torch.testing.assert_close(ent, ref_ent, rtol=0, atol=1e-12)


def test_models_with_a_transformed_head_take_the_full_logits_path(monkeypatch):
    """Soft-capped or scaled logits (Gemma, Cohere, Granite) come from the model's own forward pass,
    still reduced a chunk at a time: the same values and gradients."""
    policy, rollout = _float64_policy(3)
    fast = policy.log_probs(rollout)
    monkeypatch.setattr(logprobs, "plain_head", lambda model: False)
    policy.model.zero_grad(set_to_none=True)
    full = policy.log_probs(rollout)
    full.sum().backward()
    torch.testing.assert_close(full, fast, rtol=0, atol=1e-12)
    policy.model.config.final_logit_softcapping = 30.0
    monkeypatch.undo()
    assert not logprobs.plain_head(policy.model)


def test_a_lora_wrapped_model_scores_and_trains_like_the_plain_formula():
    """Through a PEFT wrapper (adapters on the attention and on the LM head): the backbone and head
    are found inside it, and the adapters' gradients equal the plain formula's."""
    peft = pytest.importorskip("peft")
    policy, rollout = _float64_policy(5)
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False
    )
    model = peft.get_peft_model(policy.model, config).double()
    policy = LMPolicy(model, policy.tokenizer, policy.sampling, logit_chunk=5)
    assert logprobs.causal_lm(model) is model.get_base_model()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert any("lm_head" in n for n, p in model.named_parameters() if p.requires_grad)

    def run(fn):
        model.zero_grad(set_to_none=True)
        lp = fn()
        lp.sum().backward()
        return lp.detach(), [p.grad.clone() for p in trained]

    got, got_grads = run(lambda: policy.log_probs(rollout))
    want, want_grads = run(lambda: reference(model, rollout, 0.7)[0])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for a, b in zip(got_grads, want_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_compute_dtype_runs_the_matmuls_in_bfloat16_on_float32_weights():
    """``compute_dtype=bfloat16``: sampling and log-probs run their linear layers in bfloat16 (their
    outputs are bfloat16) while the weights stay float32; the log-probs come back in float32 and
    agree with a pure float32 pass to bfloat16's precision."""
    model, tok = tiny_lm()
    plain = LMPolicy(model, tok, SamplingConfig(temperature=0.8, max_new_tokens=6))
    mixed = LMPolicy(
        model, tok, SamplingConfig(temperature=0.8, max_new_tokens=6), compute_dtype=torch.bfloat16
    )
    seen = []
    layer = model.model.layers[0].mlp.down_proj
    handle = layer.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    try:
        torch.manual_seed(7)
        rollout = mixed.sample(PROMPTS, 3)
        assert seen and set(seen) == {torch.bfloat16}
        assert rollout.sampler_logprobs.dtype == torch.float32
        seen.clear()
        lp = mixed.log_probs(rollout)
        assert set(seen) == {torch.bfloat16}
        seen.clear()
        lp.sum().backward()
        ref = plain.log_probs(rollout)
        assert set(seen) == {torch.float32}
    finally:
        handle.remove()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert lp.dtype == torch.float32 and mixed.log_probs_and_entropy(rollout)[1].dtype == torch.float32
    on = rollout.mask > 0
    assert (lp - ref).abs()[on].max() < 0.1  # bfloat16 keeps 8 bits of mantissa
    assert (lp - ref).abs()[on].max() > 1e-6  # and it did round
    assert (rollout.sampler_logprobs - ref).abs()[on].max() < 0.1


def _rollout_of_lengths(prompt_lengths, response_lengths) -> Rollout:
    """A rollout with left-padded prompts and right-padded responses of the given lengths."""
    plens, rlens = torch.tensor(prompt_lengths), torch.tensor(response_lengths)
    width, total = int(plens.max()), max(int(rlens.max()), 1)
    rows = len(plens)
    return Rollout(
        group_ids=torch.arange(rows),
        tokens=torch.zeros(rows, total, dtype=torch.long),
        mask=(torch.arange(total) < rlens[:, None]).float(),
        prompts=torch.zeros(rows, width, dtype=torch.long),
        extras={"prompt_mask": (torch.arange(width) >= width - plens[:, None]).long()},
    )


@settings(deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 30), st.integers(0, 40)), min_size=1, max_size=40), st.integers(1, 200)
)
def test_length_sorted_micro_batches_cover_every_row_once_within_budget(lengths, budget):
    prompts, responses = zip(*lengths)
    parts = length_sorted_batches(torch.tensor(prompts), torch.tensor(responses), budget)
    assert sorted(torch.cat(parts).tolist()) == list(range(len(lengths)))
    for p in parts:
        rows = p.tolist()
        width = max(prompts[i] for i in rows) + max(max(responses[i] for i in rows), 1)
        assert len(rows) == 1 or len(rows) * width <= budget


def test_length_sorted_micro_batches_pad_far_less_than_consecutive_ones():
    """Lengths uniform in 1..512 (prompts 16..128), and uniform in 32..1024 with a 16,384-token budget:
    sorting by length pads a small share of the slots; consecutive splits pad about half."""
    gen = torch.Generator().manual_seed(0)
    shares = {}
    for low, high, rows in [(1, 512, 256), (32, 1024, 512)]:
        prompts = torch.randint(16, 129, (rows // 16,), generator=gen).repeat_interleave(16)
        responses = torch.randint(low, high + 1, (rows,), generator=gen)
        rollout = _rollout_of_lengths(prompts.tolist(), responses.tolist())
        policy = LMPolicy.__new__(LMPolicy)
        policy.token_budget = 16384
        parts = policy.micro_batches(rollout)
        consecutive = token_budget_batches(rollout.prompts.shape[1] + responses, 16384)
        shares[high] = (padding_share(rollout, parts), padding_share(rollout, consecutive))
    for sorted_share, consecutive_share in shares.values():
        assert sorted_share < consecutive_share / 2, shares
    assert shares[1024][0] < 0.20, shares
    assert shares[1024][1] > 0.35, shares


def test_padding_share_counts_the_slots_of_each_micro_batch():
    rollout = _rollout_of_lengths([2, 3, 1], [4, 1, 0])
    # one micro-batch: 3 rows x (3 + 4) slots, 2+4 + 3+1 + 1+0 = 11 real tokens
    assert padding_share(rollout, [torch.arange(3)]) == pytest.approx(1 - 11 / 21)
    # two: 1 x (2 + 4) and 2 x (3 + 1) (an empty response counts one slot)
    assert padding_share(rollout, [torch.tensor([0]), torch.tensor([1, 2])]) == pytest.approx(1 - 11 / 14)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_log_probs_and_entropies_pass_gradcheck(temperature):
    """The hand-written backward pass (``onehot - p`` for the log-prob, ``p (m - z)`` for the entropy,
    over ``T``) against finite differences, through the head's weight and the hidden states."""
    gen = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(5, 11, bias=True).double()
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    tokens = torch.randint(0, 11, (7,), generator=gen)

    def stats(h, weight, bias):
        def linear(x):
            return torch.nn.functional.linear(x, weight, bias)

        return logprobs.chunked_log_probs(linear, h, tokens, temperature, chunk=3, entropy=True)

    inputs = (
        hidden,
        head.weight.detach().clone().requires_grad_(),
        head.bias.detach().clone().requires_grad_(),
    )
    assert torch.autograd.gradcheck(stats, inputs)
    lp, ent = stats(*inputs)
    logp = torch.log_softmax(head(hidden) / temperature, dim=-1)
    torch.testing.assert_close(lp, logp.gather(-1, tokens[:, None]).squeeze(-1))
    torch.testing.assert_close(ent, -(logp.exp() * logp).sum(-1))
