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
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from pmdlab.rl.rollout import Rollout

__all__ = [
    "GenerateBackend",
    "LMPolicy",
    "RolloutBackend",
    "SamplingConfig",
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


class GenerateBackend:
    """``transformers``' ``model.generate``: batched sampling with temperature and top-p.

    The sampler's log-probs are those of the processed scores (after the
    temperature and top-p warpers), so they are the log-probs of the
    distribution each token was actually drawn from. Sampling uses torch's
    global random generator (seed it for reproducible rollouts). Ranks generate
    independently (``synced_gpus=False``): under FSDP2 the trainer holds the full
    parameters while it samples (:func:`pmdlab.llm.distributed.gathered`).
    """

    def __init__(self, model, tokenizer, max_batch: int | None = None):
        self.model, self.tokenizer, self.max_batch = model, tokenizer, max_batch

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
        return tokens, logps * mask, mask

    def _generate(self, ids, mask, sampling, greedy):
        was_training = self.model.training
        self.model.eval()
        kwargs = (
            dict(do_sample=False)
            if greedy
            else dict(
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
            )
        )
        try:
            out = self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=sampling.max_new_tokens,
                output_scores=True,
                return_dict_in_generate=True,
                synced_gpus=False,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **kwargs,
            )
        finally:
            self.model.train(was_training)
        tokens = out.sequences[:, ids.shape[1] :]
        scores = torch.stack(out.scores, dim=1).float()  # (B, T, V), processed
        return tokens, torch.log_softmax(scores, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def _token_log_probs(logp: torch.Tensor, rollout: Rollout) -> torch.Tensor:
    """``log p(y_t)`` of the response tokens from log-softmax ``logp`` (B, W, V); 0 on padding."""
    width = logp.shape[1]
    tokens = rollout.tokens[:, :width].unsqueeze(-1)
    return logp.gather(-1, tokens).squeeze(-1) * rollout.mask[:, :width]


class LMPolicy:
    """A causal LM with its tokenizer as a policy (see the module docstring).

    ``token_budget`` bounds the padded tokens of one forward pass (the
    micro-batcher of :meth:`micro_batches`); ``chat_template`` wraps each
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
    ):
        if tokenizer.pad_token_id is None:
            if tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has neither a pad nor an end-of-sequence token")
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"
        self.model, self.tokenizer, self.sampling = model, tokenizer, sampling
        self.backend = backend or GenerateBackend(model, tokenizer)
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

    def _forward(self, rollout: Rollout) -> tuple[torch.Tensor, int]:
        """Logits ``(B, W, V)`` for the first ``W`` response positions (divided by the temperature),
        and the padding ``T - W`` beyond the longest response."""
        width = int(rollout.mask.sum(1).max().item()) if len(rollout) else 0
        width = max(width, 1)
        tokens, rmask = rollout.tokens[:, :width], rollout.mask[:, :width]
        pmask = rollout.extras["prompt_mask"]
        ids = torch.cat([rollout.prompts, tokens], dim=1)
        attn = torch.cat([pmask, rmask.to(pmask.dtype)], dim=1)
        positions = (torch.cumsum(attn, dim=1) - 1).clamp(min=0)
        out = self.model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=positions,
            logits_to_keep=width + 1,
            use_cache=False,
        )
        logits = out.logits[:, :-1]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        logits = logits / self.sampling.temperature
        pad = rollout.tokens.shape[1] - width
        return logits, pad

    def log_probs(self, rollout: Rollout) -> torch.Tensor:
        """``log pi_theta`` of each response token, (B, T); 0 on padding."""
        logits, pad = self._forward(rollout)
        lp = _token_log_probs(torch.log_softmax(logits, dim=-1), rollout)
        return torch.nn.functional.pad(lp, (0, pad))

    @torch.no_grad()
    def log_probs_and_entropy(self, rollout: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        """Token log-probs and token entropies ``-sum_v p log p`` (no gradient), micro-batched."""
        lps, ents = [], []
        for index in self.micro_batches(rollout):
            part = rollout.select(index)
            logits, pad = self._forward(part)
            logp = torch.log_softmax(logits, dim=-1)
            lp = _token_log_probs(logp, part)
            ent = -(logp.exp() * logp).sum(-1) * part.mask[:, : logits.shape[1]]
            lps.append(torch.nn.functional.pad(lp, (0, pad)))
            ents.append(torch.nn.functional.pad(ent, (0, pad)))
        return torch.cat(lps), torch.cat(ents)

    def micro_batches(self, rollout: Rollout) -> list[torch.Tensor]:
        """Index sets of consecutive responses within the token budget (prompt + response width)."""
        lengths = rollout.extras["prompt_mask"].shape[1] + rollout.mask.sum(1)
        return token_budget_batches(lengths, self.token_budget)
