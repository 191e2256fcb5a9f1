"""The rollout batch and the policy interface shared by the bandit and the LLM trainer.

A :class:`Rollout` is ``B`` sampled responses, each padded to ``T`` tokens,
with the group (prompt) each answers. A policy is anything with

* ``sample(prompts, n, generator) -> Rollout``: ``n`` responses per prompt,
  with the sampler's own token log-probs;
* ``log_probs(rollout) -> Tensor (B, T)``: ``log pi_theta`` of the rollout's
  tokens, differentiable in the policy's parameters.

so the update loop above the losses (:mod:`pmdlab.rl.update`) does not
care whether it drives a softmax over a finite response set or a language
model.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import torch

__all__ = ["Policy", "Rollout"]


@dataclass
class Rollout:
    """``B`` responses. Every tensor field has the batch on its first axis.

    ``group_ids`` (B,): the group (prompt) of each response;
    ``tokens`` (B, T) and ``mask`` (B, T): response tokens and 1 on real ones;
    ``sampler_logprobs`` (B, T): the sampling policy's log-probs of the tokens;
    ``rewards`` (B,), once scored; ``prompts``: per-response prompt data (a
    tensor with the batch first: a prompt index, or prompt token ids);
    ``extras``: further per-response tensors (e.g. the prompt mask).
    """

    group_ids: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    sampler_logprobs: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    prompts: Any = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.group_ids.shape[0]

    def select(self, index: torch.Tensor) -> "Rollout":
        """The responses at ``index`` (a long tensor), every field indexed alike."""

        def pick(x):
            return x[index] if isinstance(x, torch.Tensor) else x

        values = {f.name: pick(getattr(self, f.name)) for f in fields(self) if f.name != "extras"}
        return Rollout(**values, extras={k: v[index] for k, v in self.extras.items()})

    def to(self, device) -> "Rollout":
        """The rollout with every tensor on ``device``."""
        return Rollout.from_dict(self.to_dict(), device)

    def to_dict(self) -> dict:
        """Every field by name (for ``torch.save``); :meth:`from_dict` inverts it."""
        return {
            f.name: dict(self.extras) if f.name == "extras" else getattr(self, f.name) for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: dict, device=None) -> "Rollout":
        """The rollout of :meth:`to_dict`, its tensors moved to ``device`` (if given)."""

        def move(x):
            return x.to(device) if isinstance(x, torch.Tensor) and device is not None else x

        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"rollout data has unknown fields {sorted(unknown)}")
        values = {k: move(v) for k, v in data.items() if k != "extras"}
        return cls(**values, extras={k: move(v) for k, v in data.get("extras", {}).items()})


class Policy(Protocol):
    def sample(self, prompts: Any, n: int, generator: torch.Generator | None = None) -> Rollout: ...

    def log_probs(self, rollout: Rollout) -> torch.Tensor: ...
