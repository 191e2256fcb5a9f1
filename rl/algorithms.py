"""Algorithms by name: a loss from :mod:`.losses` with its options, as trainers configure it.

An :class:`Algorithm` computes the advantages of a whole rollout batch
once (baselines need every response of a group, so they are never
recomputed on a minibatch) and then the loss of any minibatch of it.
Options left at ``None`` take the loss's own default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import losses
from .groups import advantages as group_advantages, grpo_advantages

__all__ = ["ALGORITHMS", "Algorithm"]

ALGORITHMS = tuple(losses.LOSSES)

#: Each algorithm's default baseline and aggregation.
_DEFAULTS = {
    "pmd_mean": ("mean", "seq_mean_token_mean"),
    "pmd_part": ("partition", "seq_mean_token_mean"),
    "grpo": (None, "token_mean"),
    "gspo": (None, "seq_mean_token_sum"),
    "rloo": ("leave_one_out", "seq_mean_token_sum"),
}


@dataclass(frozen=True)
class Algorithm:
    """A policy loss and its options.

    Attributes:
        name: one of ``pmd_mean``, ``pmd_part``, ``grpo``, ``gspo``, ``rloo``.
        tau: PMD's regularisation strength (``pmd_mean``, ``pmd_part``).
        baseline: ``mean``/``leave_one_out`` (``pmd_mean``, ``rloo``),
            ``partition``/``leave_one_out_partition`` (``pmd_part``).
        aggregation: one of :data:`pmdlab.llm.losses.AGGREGATIONS`.
        max_length: the constant of ``seq_mean_token_sum_norm``.
        tau_scaled: multiply the PMD losses by ``tau`` (the authors' code).
        clip_low, clip_high: ratio clip range (``grpo``, ``gspo``).
        scale_rewards: divide GRPO/GSPO advantages by the group std.
        old_source: ``trainer`` (recomputed old log-probs) or ``sampler``.
    """

    name: str = "pmd_mean"
    tau: float = 0.1
    baseline: str | None = None
    aggregation: str | None = None
    max_length: int | None = None
    tau_scaled: bool = False
    clip_low: float | None = None
    clip_high: float | None = None
    scale_rewards: bool = True
    old_source: str = "trainer"

    def __post_init__(self):
        if self.name not in losses.LOSSES:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.name!r}")
        if self.aggregation is not None and self.aggregation not in losses.AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {losses.AGGREGATIONS}, got {self.aggregation!r}")
        if self.name.startswith("pmd") and not (self.tau > 0):
            raise ValueError(f"tau must be positive, got {self.tau}")

    @property
    def resolved_baseline(self) -> str | None:
        return self.baseline or _DEFAULTS[self.name][0]

    @property
    def resolved_aggregation(self) -> str:
        return self.aggregation or _DEFAULTS[self.name][1]

    def advantages(self, rewards, groups, weights=None) -> torch.Tensor:
        """Advantages of a whole rollout batch (``A = r - b``; GRPO's normalised form)."""
        if self.name in ("grpo", "gspo"):
            return grpo_advantages(rewards, groups, scale=self.scale_rewards)
        return group_advantages(rewards, groups, baseline=self.resolved_baseline, tau=self.tau, weights=weights)

    def normalizer(self, mask, weights=None) -> torch.Tensor:
        """The loss normaliser of a (mini)batch; see :func:`pmdlab.llm.losses.loss_normalizer`."""
        return losses.loss_normalizer(mask, self.resolved_aggregation, weights, self.max_length)

    def loss(self, logprobs, old_logprobs, mask, advantages, *, groups=None, weights=None, normalizer=None,
             sampler_logprobs=None) -> losses.LossOutput:  # fmt: skip
        """The loss of a batch whose advantages were computed by :meth:`advantages`."""
        common = dict(
            groups=groups, aggregation=self.resolved_aggregation, weights=weights, normalizer=normalizer,
            max_length=self.max_length, sampler_logprobs=sampler_logprobs, old_source=self.old_source,
        )  # fmt: skip
        fn = losses.LOSSES[self.name]
        if self.name in ("pmd_mean", "pmd_part"):
            return fn(logprobs, old_logprobs, mask, advantages, tau=self.tau, baseline=self.resolved_baseline,
                      tau_scaled=self.tau_scaled, **common)  # fmt: skip
        if self.name == "rloo":
            return fn(logprobs, old_logprobs, mask, advantages, baseline=self.resolved_baseline, **common)
        clip = {k: v for k, v in (("clip_low", self.clip_low), ("clip_high", self.clip_high)) if v is not None}
        return fn(logprobs, old_logprobs, mask, advantages, scale_rewards=self.scale_rewards, **clip, **common)
