"""A causal language model as a policy: prompts in, sampled responses and their log-probs out.

:class:`LMPolicy` implements the policy interface of :mod:`.rollout` for any
``transformers`` causal LM:

* ``sample(prompts, n)``: ``n`` responses per prompt text through a
  :class:`RolloutBackend` (``transformers.generate`` here; vLLM behind the
  same interface), as a :class:`~pmdlab.rl.rollout.Rollout` with the
  prompt token ids, right-padded response tokens up to and including the
  end-of-sequence token, and the sampler's own log-probs;
* ``log_probs(rollout)``: the trainer's ``log pi_theta(y_t | x, y_<t)`` of
  the response tokens at the sampling temperature,
  ``log softmax(logits / T)``, with gradient.

Sequences are laid out ``[left-padded prompt | right-padded response]``;
position ids count real tokens only (``cumsum(attention_mask) - 1``), as
``generate`` does, so the trainer's and the sampler's log-probs agree.
No ``(rows x tokens x vocabulary)`` tensor is made: the sampler keeps one
step's scores at a time, the trainer's log-probs and entropies are reduced
``logit_chunk`` positions at a time (:mod:`.logprobs`), and micro-batches
group responses of similar lengths (:func:`length_sorted_batches`,
:func:`padding_share`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from pmdlab.rl.rollout import Rollout

from .logprobs import response_log_probs

__all__ = [
    "GenerateBackend",
    "LMPolicy",
    "RolloutBackend",
    "SamplingConfig",
    "autocast",
    "length_sorted_batches",
    "padding_share",
    "response_mask",
    "token_budget_batches",
]


@dataclass(frozen=True)
class SamplingConfig:
    """How responses are sampled.

    Attributes:
        temperature: softmax temperature (the trainer's log-probs use the same).
        top_p: nucleus sampling mass (1: off).
        max_new_tokens: longest response, in tokens.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 8

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


def response_mask(tokens: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 on each response token up to and including its first ``eos`` (0 after it)."""
    is_eos = (tokens == eos_token_id).long()
    before = torch.cumsum(is_eos, dim=1) - is_eos  # eos tokens strictly before t
    return (before == 0).to(torch.float32)


def token_budget_batches(lengths: torch.Tensor, budget: int) -> list[torch.Tensor]:
    """Split rows into consecutive micro-batches whose padded size ``rows x longest`` stays within ``budget``.

    A single row longer than the budget is a micro-batch of its own.
    """
    if budget < 1:
        raise ValueError(f"the token budget must be at least 1, got {budget}")
    out, start, longest = [], 0, 0
    values = lengths.tolist()
    for i, length in enumerate(values):
        widest = max(longest, int(length))
        if i > start and widest * (i - start + 1) > budget:
            out.append(torch.arange(start, i))
            start, widest = i, int(length)
        longest = widest
    out.append(torch.arange(start, len(values)))
    return out


class RolloutBackend(Protocol):
    """Samples responses: ``generate(prompt_ids, prompt_mask, n, sampling, greedy)`` returns
    ``(tokens (B, T), sampler_logprobs (B, T), mask (B, T))`` for ``B = n x prompts`` (each
    prompt's ``n`` responses adjacent), response tokens right-padded with the pad token; ``mask``
    is 1 on the tokens each response really has, by the backend's own account of where it
    stopped (the end token it stopped on may be any of the model's, not the tokenizer's eos)."""

    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        n: int,
        sampling: SamplingConfig,
        greedy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class _ChosenLogProbs:
    """A ``transformers`` logits processor, the last of ``generate``'s list: it leaves the scores
    alone and records ``log q(y_t)`` of each chosen token under the distribution ``q = softmax(s_t)``
    of the processed scores ``s_t`` it was drawn from.

    The token chosen at step ``t`` is only known at step ``t + 1`` (the last of ``input_ids``), or
    from the returned sequences for the last step (:meth:`finish`), so it keeps step ``t``'s
    ``log_softmax(s_t)`` (rows, vocabulary) until then: one step's worth of memory.
    """

    def __init__(self, prompt_width: int):
        self.prompt_width, self.held, self.values = prompt_width, None, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.held is not None:
            self.values.append(self.held.gather(1, input_ids[:, -1:]).squeeze(1))
            self.held = None  # freed before the next one is made
        self.held = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, sequences: torch.Tensor) -> torch.Tensor:
        """``log q`` (rows, steps) of the generated tokens ``sequences[:, prompt_width:]`` (steps that
        ``generate`` undid are dropped)."""
        steps = sequences.shape[1] - self.prompt_width
        values = self.values[:steps]
        if len(values) < steps:
            values.append(self.held.gather(1, sequences[:, -1:]).squeeze(1))
        self.held, self.values = None, []
        return torch.stack(values, 1) if values else sequences.new_zeros(sequences.shape[0], 0).float()


class GenerateBackend:
    """``transformers``' ``model.generate``: batched sampling with temperature and top-p.

    The sampler's log-probs are those of the processed scores (after the temperature and
    top-p warpers): of the distribution each token was drawn from, gathered step by step by
    a logits processor after the warpers (:class:`_ChosenLogProbs`). ``generate`` puts custom
    processors before its own warpers, so the warpers are passed here, ahead of the recorder,
    and ``generate``'s own are off (temperature 1, top-p 1, no top-k, min-p, typical, epsilon
    or eta cut-off from the model's generation config: the distribution is the
    :class:`SamplingConfig`'s). Sampling uses torch's global random generator. Ranks generate
    independently (``synced_gpus=False``): under FSDP2 the trainer holds the full parameters
    while it samples (:func:`pmdlab.llm.distributed.gathered`). ``compute_dtype`` (e.g.
    ``torch.bfloat16``): the forward passes run under ``torch.autocast`` in that dtype.
    """

    def __init__(
        self, model, tokenizer, max_batch: int | None = None, compute_dtype: torch.dtype | None = None
    ):
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch
        self.compute_dtype = compute_dtype

    @torch.no_grad()
    def generate(self, prompt_ids, prompt_mask, n, sampling, greedy=False):
        ids = prompt_ids.repeat_interleave(n, dim=0)
        mask = prompt_mask.repeat_interleave(n, dim=0)
        step = self.max_batch or ids.shape[0]
        chunks = [
            self._generate(ids[i : i + step], mask[i : i + step], sampling, greedy)
            for i in range(0, ids.shape[0], step)
        ]
        width = max(c[0].shape[1] for c in chunks)
        pad = self.tokenizer.pad_token_id
        tokens = torch.cat(
            [torch.nn.functional.pad(t, (0, width - t.shape[1]), value=pad) for t, _ in chunks]
        )
        logps = torch.cat([torch.nn.functional.pad(lp, (0, width - lp.shape[1])) for _, lp in chunks])
        # generate stops each row at the tokenizer's eos (the only end token it is given)
        mask = response_mask(tokens, self.tokenizer.eos_token_id)
        return tokens, torch.where(mask > 0, logps, 0.0), mask

    def _generate(self, ids, mask, sampling, greedy):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        recorder = _ChosenLogProbs(ids.shape[1])
        warpers = []
        if not greedy and sampling.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if not greedy and sampling.top_p < 1.0:
            warpers.append(TopPLogitsWarper(sampling.top_p))
        off = {}  # generate's own warpers (sampling only)
        if not greedy:
            off = dict(temperature=1.0, top_p=1.0, top_k=0, min_p=None, typical_p=1.0)
            off.update(epsilon_cutoff=0.0, eta_cutoff=0.0)
        was_training = self.model.training
        self.model.eval()
        try:
            with autocast(self.model, self.compute_dtype):
                sequences = self.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=sampling.max_new_tokens,
                    logits_processor=LogitsProcessorList([*warpers, recorder]),
                    do_sample=not greedy,
                    synced_gpus=False,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    **off,
                )
        finally:
            self.model.train(was_training)
        sequences = getattr(sequences, "sequences", sequences)  # a generation config may ask for a dict
        return sequences[:, ids.shape[1] :], recorder.finish(sequences)


def autocast(model, dtype: torch.dtype | None):
    """``torch.autocast`` in ``dtype`` on the model's device type (nothing when ``dtype`` is None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=next(model.parameters()).device.type, dtype=dtype)


class LMPolicy:
    """A causal LM with its tokenizer as a policy (see the module docstring).

    ``token_budget`` bounds the padded tokens of one forward pass (the
    micro-batcher of :meth:`micro_batches`); ``logit_chunk`` is how many response
    positions reach the LM head at once (the peak memory of the log-probs is two or three
    ``logit_chunk x vocabulary`` float32 tensors, :mod:`.logprobs`); ``compute_dtype``
    (e.g. ``torch.bfloat16``): every forward pass, sampling with the default backend included,
    runs under ``torch.autocast`` in that dtype while the weights stay as they are
    (log-probs and entropies come back in float32); ``chat_template`` wraps each
    prompt as a user turn with the tokenizer's chat template, after ``system_prompt``
    (``None``: the template's own default; ``""``: an empty one, which saves the
    default's tokens in every sequence).
    """

    def __init__(
        self,
        model,
        tokenizer,
        sampling: SamplingConfig = SamplingConfig(),
        *,
        backend: RolloutBackend | None = None,
        token_budget: int = 16384,
        chat_template: bool = False,
        system_prompt: str | None = None,
        logit_chunk: int = 1024,
        compute_dtype: torch.dtype | None = None,
    ):
        if logit_chunk < 1:
            raise ValueError(f"logit_chunk must be at least 1, got {logit_chunk}")
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has neither a pad nor an end-of-sequence token")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.backend = backend or GenerateBackend(model, tokenizer, compute_dtype=compute_dtype)
        self.logit_chunk, self.compute_dtype = logit_chunk, compute_dtype
        self.token_budget, self.chat_template, self.system_prompt = token_budget, chat_template, system_prompt

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def parameters(self):
        return self.model.parameters()

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded prompt token ids and attention mask."""
        tok = self.tokenizer
        if self.chat_template:
            prompts = [
                tok.apply_chat_template(self._messages(p), tokenize=False, add_generation_prompt=True)
                for p in prompts
            ]
        elif tok.bos_token is not None and not getattr(tok, "add_bos_token", False):
            prompts = [p if p.startswith(tok.bos_token) else tok.bos_token + p for p in prompts]
        enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        return enc.input_ids.to(self.device), enc.attention_mask.to(self.device)

    def _messages(self, prompt: str) -> list[dict]:
        """The chat turns of a prompt: the system prompt (none: the template's default) and the user's."""
        system = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        return system + [{"role": "user", "content": prompt}]

    def sample(self, prompts: Sequence[str], n: int, greedy: bool = False) -> Rollout:
        """``n`` responses to each prompt; group ``g`` holds the responses to ``prompts[g]``."""
        ids, mask = self.encode(prompts)
        tokens, logps, rmask = self.backend.generate(ids, mask, n, self.sampling, greedy=greedy)
        group_ids = torch.arange(len(prompts), device=tokens.device).repeat_interleave(n)
        return Rollout(
            group_ids=group_ids,
            tokens=tokens,
            mask=rmask,
            sampler_logprobs=logps,
            prompts=ids.repeat_interleave(n, dim=0),
            extras={"prompt_mask": mask.repeat_interleave(n, dim=0)},
        )

    def decode(self, rollout: Rollout) -> list[str]:
        """Each response's text (special tokens dropped)."""
        rows = [t[m > 0].tolist() for t, m in zip(rollout.tokens, rollout.mask)]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def _token_stats(self, rollout: Rollout, entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        r, chunk = rollout, self.logit_chunk
        with autocast(self.model, self.compute_dtype):
            args = (r.prompts, r.extras["prompt_mask"], r.tokens, r.mask, self.sampling.temperature)
            return response_log_probs(self.model, *args, chunk, entropy)

    def log_probs(self, rollout: Rollout) -> torch.Tensor:
        """``log pi_theta`` of each response token, (B, T); 0 on padding
        (:func:`.logprobs.response_log_probs`)."""
        return self._token_stats(rollout, entropy=False)[0]

    @torch.no_grad()
    def log_probs_and_entropy(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Token log-probs and token entropies ``-sum_v p log p`` (no gradient), micro-batched."""
        lps = torch.zeros(rollout.tokens.shape, device=rollout.tokens.device)
        ents = torch.zeros_like(lps)
        for index in self.micro_batches(rollout):
            lp, ent = self._token_stats(rollout.select(index), entropy=True)
            lps = lps.to(lp.dtype)
            ents = ents.to(ent.dtype)
            lps[index], ents[index] = lp, ent
        return lps, ents

    def micro_batches(self, rollout: Rollout) -> list[torch.Tensor]:
        """Index sets of responses within the token budget, by length (:func:`length_sorted_batches`)."""
        return length_sorted_batches(*_lengths(rollout), self.token_budget)


def _lengths(rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's real prompt and response lengths."""
    return rollout.extras["prompt_mask"].sum(1).long().cpu(), rollout.mask.sum(1).long().cpu()


def length_sorted_batches(prompt_lengths: torch.Tensor, response_lengths: torch.Tensor, budget: int):
    """Micro-batches of rows of similar lengths: rows sorted by length, split into consecutive runs
    whose padded size ``rows x (longest prompt + longest response)`` (a forward pass's,
    :func:`.logprobs.response_log_probs`) stays within ``budget`` (a single row over it is a
    micro-batch of its own). Three orders are tried: by ``prompt + response`` length, by response
    then prompt length, by prompt then response length; the split with the fewest padded slots
    is kept (the sum alone pads more when one of the two lengths varies much more than the other)."""
    if budget < 1:
        raise ValueError(f"the token budget must be at least 1, got {budget}")
    p, r = prompt_lengths.long(), response_lengths.long().clamp(min=1)
    scale = int(max(p.max(), r.max())) + 1 if len(p) else 1
    best, fewest = [], None
    for key in (p + r, r * scale + p, p * scale + r):
        parts = _split(torch.argsort(key, stable=True).tolist(), p.tolist(), r.tolist(), budget)
        slots = sum(len(x) * (max(p[x].tolist()) + max(r[x].tolist())) for x in parts)
        if fewest is None or slots < fewest:
            best, fewest = parts, slots
    return best


def _split(order: list[int], prompt: list[int], response: list[int], budget: int) -> list[torch.Tensor]:
    """``order`` cut into consecutive runs with ``rows x (longest prompt + longest response) <= budget``."""
    out, run, wide_p, wide_r = [], [], 0, 0
    for i in order:
        wp, wr = max(wide_p, prompt[i]), max(wide_r, response[i])
        if run and (len(run) + 1) * (wp + wr) > budget:
            out.append(torch.tensor(run))
            run, wp, wr = [], prompt[i], response[i]
        run.append(i)
        wide_p, wide_r = wp, wr
    if run:
        out.append(torch.tensor(run))
    return out


def padding_share(rollout: Rollout, parts: Sequence[torch.Tensor]) -> float:
    """Padded share of the token slots of the micro-batches ``parts`` (index tensors):
    ``1 - real tokens / sum over parts of rows x (longest prompt + longest response)`` (the width a
    forward pass pads a micro-batch to; responses count at least one slot)."""
    prompt, response = _lengths(rollout)
    slots = real = 0
    for index in parts:
        index = index.cpu()
        if index.numel() == 0:
            continue
        width = int(prompt[index].max()) + max(int(response[index].max()), 1)
        slots += index.numel() * width
        real += int(prompt[index].sum() + response[index].sum())
    return 1.0 - real / slots if slots else 0.0
