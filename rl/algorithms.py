"""The algorithm table: each name's loss, baseline and defaults, as trainers configure them.

========  ====================  ===========================================  ===================
name      loss                  baselines (first: default)                   default aggregation
========  ====================  ===========================================  ===================
pmd_mean  :func:`losses.pmd`    mean, leave_one_out                          seq_mean_token_mean
pmd_part  :func:`losses.pmd`    partition, leave_one_out_partition,          seq_mean_token_mean
                                leave_one_out_partition_clamped (authors')
grpo      :func:`losses.grpo`   mean_std, mean (Dr. GRPO)                    token_mean
gspo      :func:`losses.gspo`   mean_std, mean                               seq_mean_token_sum
rloo      :func:`losses.rloo`   leave_one_out, mean                          seq_mean_token_sum
========  ====================  ===========================================  ===================

Why each exists: ``pmd_mean`` is the update of Kimi K1.5/K2 that this project
is about (the partition function replaced by the mean reward, docs/math.md §3);
``pmd_part`` is the ideal KL step it approximates (§2), whose sample baseline
is dominated by the best response at small ``tau``; ``grpo``, ``gspo`` and
``rloo`` are the policy-gradient baselines it is compared with (§6).

An :class:`Algorithm` computes the advantages of a whole rollout batch once
(:meth:`Algorithm.advantages`: baselines need every response of a group, so
they are never recomputed on a minibatch) and then the loss of any
minibatch of it (:meth:`Algorithm.loss`). Options left at ``None`` take the
table's default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import losses
from .groups import advantages as group_advantages
from .tau_rules import TAU_RULES, tau_scale

__all__ = ["ALGORITHMS", "TABLE", "Algorithm", "Entry"]


@dataclass(frozen=True)
class Entry:
    """One row of the table: the loss, the baselines it accepts (the first is the default),
    its default aggregation, and the :class:`Algorithm` fields it takes with their defaults."""

    loss: Callable[..., losses.LossOutput]
    baselines: tuple[str, ...]
    aggregation: str
    options: dict[str, object] = field(default_factory=dict)


TABLE: dict[str, Entry] = {
    "pmd_mean": Entry(losses.pmd, ("mean", "leave_one_out"), "seq_mean_token_mean", {"tau_scaled": False}),
    "pmd_part": Entry(
        losses.pmd,
        ("partition", "leave_one_out_partition", "leave_one_out_partition_clamped"),
        "seq_mean_token_mean",
        {"tau_scaled": False},
    ),
    "grpo": Entry(losses.grpo, ("mean_std", "mean"), "token_mean", {"clip_low": 0.2, "clip_high": 0.2}),
    "gspo": Entry(
        losses.gspo, ("mean_std", "mean"), "seq_mean_token_sum", {"clip_low": 3e-4, "clip_high": 4e-4}
    ),
    "rloo": Entry(losses.rloo, ("leave_one_out", "mean"), "seq_mean_token_sum"),
}

ALGORITHMS = tuple(TABLE)


@dataclass(frozen=True)
class Algorithm:
    """A policy loss and its options.

    Attributes:
        name: one of ``pmd_mean``, ``pmd_part``, ``grpo``, ``gspo``, ``rloo``.
        tau: PMD's regularisation strength (``pmd_mean``, ``pmd_part``).
        tau_rule: per-prompt τ (``pmd_mean``): ``fixed`` (every prompt at ``tau``) or ``std``
            (``tau`` times the prompt's reward standard deviation); see :mod:`pmdlab.rl.tau_rules`.
        baseline: the group baseline (none: the table's default; see the module docstring).
        aggregation: one of :data:`pmdlab.rl.losses.AGGREGATIONS` (none: the table's default).
        max_length: the constant of ``seq_mean_token_sum_norm``.
        tau_scaled: multiply the PMD losses by ``tau`` (the authors' code).
        clip_low, clip_high: ratio clip range (``grpo``, ``gspo``; none: the table's default).
        old_source: ``pi_old``'s log-probs: ``trainer`` (recomputed by the trained model; with
            asynchronous rollouts, by the rollout worker with the weights that sampled the batch: the
            behaviour policy), ``sampler`` (the inference engine's own), or ``current`` (recomputed by
            the trained model at the start of the update: with lagging rollouts the loss is anchored
            at the current policy, not the behaviour policy; otherwise the same as ``trainer``);
            decided in one place, :func:`pmdlab.rl.anchor.anchor_logprobs`.
    """

    name: str = "pmd_mean"
    tau: float = 0.1
    tau_rule: str = "fixed"
    baseline: str | None = None
    aggregation: str | None = None
    max_length: int | None = None
    tau_scaled: bool = False
    clip_low: float | None = None
    clip_high: float | None = None
    old_source: str = "trainer"

    def __post_init__(self):
        if self.name not in TABLE:
            raise ValueError(f"algorithm must be one of {ALGORITHMS}, got {self.name!r}")
        entry = TABLE[self.name]
        if self.baseline is not None and self.baseline not in entry.baselines:
            raise ValueError(
                f"{self.name}'s baseline must be one of {entry.baselines}, got {self.baseline!r}"
            )
        if self.aggregation is not None and self.aggregation not in losses.AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {losses.AGGREGATIONS}, got {self.aggregation!r}")
        if entry.loss is losses.pmd and not (self.tau > 0):
            raise ValueError(f"tau must be positive, got {self.tau}")
        if self.tau_rule not in TAU_RULES:
            raise ValueError(f"tau_rule must be one of {TAU_RULES}, got {self.tau_rule!r}")
        if self.tau_rule != "fixed" and self.name != "pmd_mean":
            raise ValueError(
                f"tau_rule={self.tau_rule!r} applies to pmd_mean (whose baseline does not depend on tau), "
                f"not {self.name}"
            )
        if self.old_source not in ("trainer", "sampler", "current"):
            raise ValueError(f"old_source must be 'trainer', 'sampler' or 'current', got {self.old_source!r}")

    @property
    def entry(self) -> Entry:
        return TABLE[self.name]

    @property
    def is_pmd(self) -> bool:
        return self.entry.loss is losses.pmd

    @property
    def resolved_baseline(self) -> str:
        return self.baseline or self.entry.baselines[0]

    @property
    def resolved_aggregation(self) -> str:
        return self.aggregation or self.entry.aggregation

    def options(self) -> dict:
        """The loss's own hyper-parameters: the table's defaults, overridden where set."""
        out = {
            k: (v if getattr(self, k) is None else getattr(self, k)) for k, v in self.entry.options.items()
        }
        if self.is_pmd:
            out["tau"] = self.tau
        return out

    def advantages(self, rewards, groups, weights=None) -> torch.Tensor:
        """Advantages of a whole rollout batch from its rewards and groups (docs/math.md §5–6),
        divided by the per-prompt scale ``s_x`` of ``tau_rule`` (``tau_x = tau s_x``)."""
        adv = group_advantages(
            rewards, groups, baseline=self.resolved_baseline, tau=self.tau, weights=weights
        )
        if self.tau_rule == "fixed":
            return adv
        return adv / tau_scale(rewards, groups, self.tau_rule, weights).to(adv.dtype)

    def normalizer(self, mask, weights=None) -> torch.Tensor:
        """The loss normaliser of a (mini)batch; see :func:`pmdlab.rl.losses.loss_normalizer`."""
        return losses.loss_normalizer(mask, self.resolved_aggregation, weights, self.max_length)

    def loss(
        self, logprobs, old_logprobs, mask, advantages, *, groups=None, weights=None, normalizer=None
    ) -> losses.LossOutput:
        """The loss of a (mini)batch whose advantages came from :meth:`advantages`.

        With ``groups`` (a :class:`~pmdlab.rl.groups.Groups` or ids), PMD's metrics
        gain the implied chi^2 weight averaged over groups (docs/math.md §7).
        """
        out = self.entry.loss(
            logprobs,
            old_logprobs,
            mask,
            advantages,
            aggregation=self.resolved_aggregation,
            weights=weights,
            normalizer=normalizer,
            max_length=self.max_length,
            **self.options(),
        )
        if groups is not None and self.is_pmd:
            delta = losses.sequence_log_ratio(logprobs.detach(), old_logprobs, mask.to(logprobs.dtype))
            target = torch.as_tensor(advantages).to(delta.dtype) / self.tau
            w = None if weights is None else torch.as_tensor(weights, dtype=delta.dtype)
            chi2 = losses.pmd_group_diagnostics(delta, target, groups, self.tau, w)["chi2_weight"]
            out.metrics["chi2_weight"] = chi2.mean()
        return out
