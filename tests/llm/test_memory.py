"""Memory: no ``(rows x tokens x vocabulary)`` tensor in sampling or in the log-probs.

A narrow Qwen2 (2 layers, width 64) with a real-sized vocabulary (SmolLM2's
49,152 tokens; built here, no download) makes each ``(positions x vocabulary)``
float32 tensor large next to everything else. The peak live bytes of the
tensors each pass makes (:class:`.memtrack.LiveBytes`: the model's weights,
made before, are not counted) must stay within

    peak <= k * unit + allowance,   unit = (positions at once) x vocabulary x 4 bytes,

where the positions at once are the rows of one sampling step, or the
``logit_chunk`` positions of the log-probs, and the allowance is what does not
scale with the vocabulary times the batch: ``4 x`` the weights' bytes (the
gradients of the tied ``vocabulary x width`` embedding and LM head and their
partial sums in the backward pass) plus ``16 x`` the bytes of one
``(rows x sequence x (width + MLP width))`` float32 activation (the decoder's
saved activations and the KV cache). The batches are chosen so that
materialising ``(rows x tokens x vocabulary)`` float32 (the implementation
this replaced) exceeds the bound several times over.
"""

import pytest
import torch

from pmdlab.llm.policy import LMPolicy, SamplingConfig
from pmdlab.llm.tiny import build_tokenizer

from .memtrack import LiveBytes, mib

VOCAB, WIDTH, MLP = 49152, 64, 128
PROMPTS, N, NEW_TOKENS, CHUNK = 4, 8, 48, 32  # 32 rows x 48 tokens
#: ``peak <= k * unit + allowance`` (see the module docstring): a sampling step holds ``generate``'s
#: own work (the logits, their float32 copy, the temperature's, the probabilities; top-p, left off
#: here as its sort is slow on a CPU, adds its sorted values, int64 order, cumulative sum and mask)
#: and the recorder's log-softmax of the step before; a chunk of the log-probs its logits, their
#: softmax and their gradient
K_SAMPLE, K_CHUNK = 8, 8


def narrow_lm():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=WIDTH,
        intermediate_size=MLP,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    return Qwen2ForCausalLM(config), tokenizer


@pytest.fixture(scope="module")
def sampled():
    """The policy, a rollout of ``PROMPTS x N`` responses of ``NEW_TOKENS`` tokens, and the peak
    live bytes of sampling it."""
    model, tokenizer = narrow_lm()
    sampling = SamplingConfig(temperature=0.8, max_new_tokens=NEW_TOKENS)
    policy = LMPolicy(model, tokenizer, sampling, logit_chunk=CHUNK)
    torch.manual_seed(1)
    with LiveBytes() as tracker:
        rollout = policy.sample([f"{i}+{i + 1}=" for i in range(PROMPTS)], N)
    return policy, rollout, tracker.peak


def _allowance(policy, rows: int, sequence: int) -> int:
    weights = sum(p.numel() * p.element_size() for p in policy.model.parameters())
    return 4 * weights + 16 * rows * sequence * (WIDTH + MLP) * 4


def _check(name, peak, k, unit, allowance, whole):
    bound = k * unit + allowance
    print(f"{name}: peak {mib(peak):.1f} MiB, bound {mib(bound):.1f} MiB, B x T x V {mib(whole):.1f} MiB")
    assert whole > bound, "the batch is too small to tell the implementations apart"
    assert peak <= bound, f"{name}: peak {mib(peak):.1f} MiB over the bound {mib(bound):.1f} MiB"


def test_sampling_holds_one_step_of_scores(sampled):
    policy, rollout, peak = sampled
    rows = PROMPTS * N
    assert rollout.tokens.shape == (rows, NEW_TOKENS)  # the random model runs to the length limit
    sequence = rollout.prompts.shape[1] + NEW_TOKENS
    unit = rows * VOCAB * 4
    _check("sample", peak, K_SAMPLE, unit, _allowance(policy, rows, sequence), NEW_TOKENS * unit)


def test_log_probs_with_backward_hold_a_chunk_of_logits(sampled):
    policy, rollout, _ = sampled
    policy.model.train()
    policy.model.zero_grad(set_to_none=True)
    with LiveBytes() as tracker:
        lp = policy.log_probs(rollout)
        (lp * rollout.mask).sum().backward()
    policy.model.zero_grad(set_to_none=True)
    rows, width = rollout.tokens.shape
    sequence = rollout.prompts.shape[1] + width
    _check(
        "log_probs + backward",
        tracker.peak,
        K_CHUNK,
        CHUNK * VOCAB * 4,
        _allowance(policy, rows, sequence),
        rows * width * VOCAB * 4,
    )


def test_log_probs_and_entropy_hold_a_chunk_of_logits(sampled):
    policy, rollout, _ = sampled
    with LiveBytes() as tracker:
        lp, ent = policy.log_probs_and_entropy(rollout)
    assert bool((ent[rollout.mask > 0] > 0).all())
    rows, width = rollout.tokens.shape
    sequence = rollout.prompts.shape[1] + width
    _check(
        "log_probs_and_entropy",
        tracker.peak,
        K_CHUNK,
        CHUNK * VOCAB * 4,
        _allowance(policy, rows, sequence),
        rows * width * VOCAB * 4,
    )
