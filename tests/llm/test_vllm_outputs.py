"""vLLM's outputs as tensors (:func:`pmdlab.llm.vllm_backend.completions_to_tensors`), without vLLM.

Fake ``RequestOutput`` objects stand in for the engine's: the conversion only
reads ``.outputs``, ``.token_ids`` and ``.logprobs``.
"""

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pmdlab.llm.vllm_backend import completions_to_tensors

PAD, EOS, IM_END = 0, 2, 7  # pad != eos; IM_END is another stop token (Qwen's <|im_end|>)


def completion(ids, logps):
    steps = [
        {t: SimpleNamespace(logprob=lp), t + 100: SimpleNamespace(logprob=-9.0)} for t, lp in zip(ids, logps)
    ]
    return SimpleNamespace(token_ids=tuple(ids), logprobs=steps)


def request(*completions):
    return SimpleNamespace(outputs=list(completions))


def test_the_mask_is_each_completions_length_whichever_token_stopped_it():
    outputs = [
        request(
            completion([5, 6, IM_END], [-0.1, -0.2, -0.3]),  # stopped by a stop token that is not eos
            completion([4], [-0.4]),
        ),
        request(
            completion([3, 3, 3, 3, 3], [-0.5, -0.6, -0.7, -0.8, -0.9]),  # ran to max_tokens
            completion([9, EOS], [-1.0, -1.1]),  # stopped by eos
        ),
    ]
    tokens, logps, mask = completions_to_tensors(outputs, PAD)
    assert tokens.dtype == torch.long and logps.dtype == torch.float32 and mask.dtype == torch.float32
    assert tokens.tolist() == [
        [5, 6, IM_END, PAD, PAD],
        [4, PAD, PAD, PAD, PAD],
        [3, 3, 3, 3, 3],
        [9, EOS, PAD, PAD, PAD],
    ]
    assert mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 0, 0, 0],
    ]
    expected = torch.tensor(
        [
            [-0.1, -0.2, -0.3, 0, 0],
            [-0.4, 0, 0, 0, 0],
            [-0.5, -0.6, -0.7, -0.8, -0.9],
            [-1.0, -1.1, 0, 0, 0],
        ]
    )
    assert torch.equal(logps, expected)
    assert bool((logps[mask == 0] == 0).all())


def test_empty_completions_give_a_width_of_one():
    tokens, logps, mask = completions_to_tensors([request(completion([], []), completion([], []))], PAD)
    assert (
        tokens.tolist() == [[PAD], [PAD]]
        and logps.tolist() == [[0.0], [0.0]]
        and mask.tolist() == [[0.0], [0.0]]
    )


def test_missing_log_probs_are_an_error():
    with pytest.raises(ValueError, match="log-prob"):
        completions_to_tensors([request(SimpleNamespace(token_ids=(1, 2), logprobs=None))], PAD)


@given(
    st.lists(st.lists(st.integers(0, 6), min_size=1, max_size=3), min_size=1, max_size=3),
    st.integers(0, 2**16),
)
def test_the_mask_sums_to_the_lengths(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    outputs = []
    for group in lengths:
        completions = []
        for n in group:
            ids = torch.randint(0, 10, (n,), generator=gen).tolist()  # pads and eos may appear anywhere
            completions.append(completion(ids, (-torch.rand(n, generator=gen)).tolist()))
        outputs.append(request(*completions))
    tokens, logps, mask = completions_to_tensors(outputs, PAD)
    flat = [n for group in lengths for n in group]
    assert tokens.shape == logps.shape == mask.shape == (len(flat), max(1, *flat))
    assert mask.sum(1).long().tolist() == flat
    for row, n in zip(mask, flat):  # ones, then zeros
        assert row.tolist() == [1.0] * n + [0.0] * (mask.shape[1] - n)
    assert bool((tokens[mask == 0] == PAD).all()) and bool((logps[mask == 0] == 0).all())
