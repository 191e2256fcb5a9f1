"""PMD-mean and PMD-part in verl, selected by name through verl's own registries.

With ``pmdlab`` installed, ``import verl`` loads this module through verl's
``verl.plugins`` entry point (or set ``VERL_USE_EXTERNAL_MODULES=pmdlab.llm.integrations.verl``),
which registers

* policy losses ``pmd_mean`` and ``pmd_part``
  (``actor_rollout_ref.actor.policy_loss.loss_mode=pmd_mean``);
* advantage estimators ``pmd_mean`` (the group-mean baseline, ``A = r - mean``),
  ``pmd_partition`` (``tau log mean e^{r/tau}``) and
  ``pmd_loo_partition`` (its leave-one-out form) (``algorithm.adv_estimator=...``).

``tau`` is read from ``PMDLAB_TAU`` (default 1) in every process, so the
driver's advantages and the workers' losses agree. Each function converts
verl's tensors and calls :mod:`pmdlab.rl.losses` or :mod:`pmdlab.rl.groups`.

Two things the paper's verl code gets wrong are right here: the loss is
normalised by the *global* batch (verl's ``global_batch_info``: sequences
or tokens over all data-parallel ranks and micro-batches) rather than the
local micro-batch, so gradient accumulation and data parallelism give the
loss of the whole minibatch; and the reduced loss is returned as a scalar,
never multiplied again by a per-token tensor.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from pmdlab.rl import losses
from pmdlab.rl.groups import Groups
from pmdlab.rl.groups import advantages as group_advantages

__all__ = ["advantage_estimator", "policy_loss", "register", "tau"]

#: verl's ``loss_agg_mode`` names and this project's aggregation names.
AGGREGATION = {
    "token-mean": "token_mean",
    "seq-mean-token-sum": "seq_mean_token_sum",
    "seq-mean-token-mean": "seq_mean_token_mean",
    "seq-mean-token-sum-norm": "seq_mean_token_sum_norm",
}
BASELINES = {"pmd_mean": "mean", "pmd_partition": "partition", "pmd_loo_partition": "leave_one_out_partition"}


def tau() -> float:
    """PMD's ``tau`` from the ``PMDLAB_TAU`` environment variable (default 1)."""
    text = os.environ.get("PMDLAB_TAU", "1.0")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"PMDLAB_TAU must be a number, got {text!r}") from None
    if not value > 0:
        raise ValueError(f"PMDLAB_TAU must be positive, got {value}")
    return value


def _info(config) -> dict:
    info = getattr(config, "global_batch_info", None) if config is not None else None
    return dict(info or {})


def _normalizer(aggregation: str, info: dict, mask: torch.Tensor) -> tuple[torch.Tensor | None, int | None]:
    """The global normaliser divided by the data-parallel size (verl's gradients are averaged
    over ranks), and the ``max_length`` of ``seq_mean_token_sum_norm``; ``None`` without global info."""
    dp = int(info.get("dp_size") or 1)
    max_length = info.get("loss_scale_factor") or mask.shape[-1]
    if aggregation == "token_mean":
        total = info.get("batch_num_tokens")
    else:
        total = info.get("global_batch_size")
        if total is not None and aggregation == "seq_mean_token_sum_norm":
            total = total * max_length
    if total is None:
        if dp > 1:
            raise ValueError(
                "verl passed no global batch size with dp_size > 1: the loss cannot be normalised"
            )
        return None, int(max_length)
    return torch.as_tensor(total, dtype=torch.float64, device=mask.device) / dp, int(max_length)


def policy_loss(name: str):
    """A verl policy loss (verl's ``PolicyLossFn`` signature) computing :func:`pmdlab.rl.losses.pmd`
    (PMD-mean and PMD-part share the loss; verl's advantage estimator supplies the baseline)."""
    if name not in ("pmd_mean", "pmd_part"):
        raise ValueError(f"name must be pmd_mean or pmd_part, got {name!r}")

    def loss(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        loss_agg_mode="seq-mean-token-mean",
        config=None,
        rollout_is_weights=None,
    ):
        if loss_agg_mode not in AGGREGATION:
            raise ValueError(
                f"loss_agg_mode {loss_agg_mode!r} is not supported by {name}: use one of {tuple(AGGREGATION)}"
            )
        if rollout_is_weights is not None:
            raise ValueError(
                f"{name} takes no rollout correction weights: turn policy_loss.rollout_correction off"
            )
        mask = response_mask.to(log_prob.dtype)
        lengths = mask.sum(-1)
        if bool((lengths == 0).any()):
            raise ValueError("a response has no tokens in response_mask")
        seq_adv = (advantages * mask).sum(-1) / lengths  # verl broadcasts the outcome advantage over tokens
        aggregation = AGGREGATION[loss_agg_mode]
        normalizer, max_length = _normalizer(aggregation, _info(config), mask)
        out = losses.pmd(
            log_prob,
            old_log_prob,
            mask,
            seq_adv,
            tau=tau(),
            aggregation=aggregation,
            normalizer=normalizer,
            max_length=max_length,
        )
        return out.loss, {f"actor/pmd_{k}": float(v) for k, v in out.metrics.items()}

    loss.__name__ = f"{name}_verl_policy_loss"
    loss.__doc__ = (
        f"verl policy loss {name}: :func:`pmdlab.rl.losses.pmd` with verl's global batch normalisation."
    )
    return loss


def advantage_estimator(name: str):
    """A verl advantage estimator.

    The group baseline ``BASELINES[name]`` over verl's ``index`` (uid) groups.
    """
    baseline = BASELINES[name]

    def estimate(token_level_rewards, response_mask, index=None, config=None, **kwargs):
        if index is None:
            raise ValueError(
                f"{name} needs the prompt uid of every response (verl's non_tensor_batch['uid'])"
            )
        rewards = token_level_rewards.sum(-1)
        _, ids = np.unique(np.asarray(index, dtype=object).astype(str), return_inverse=True)
        groups = Groups.from_ids(torch.as_tensor(ids, device=rewards.device))
        adv = group_advantages(rewards.double(), groups, baseline=baseline, tau=tau()).to(rewards.dtype)
        scores = adv.unsqueeze(-1) * response_mask
        return scores, scores

    estimate.__name__ = f"{name}_verl_advantage"
    return estimate


def register() -> None:
    """Register the PMD losses and advantage estimators with verl (idempotent)."""
    from verl.trainer.ppo import core_algos

    for name in ("pmd_mean", "pmd_part"):
        if name not in core_algos.POLICY_LOSS_REGISTRY:
            core_algos.register_policy_loss(name)(policy_loss(name))
    for name in BASELINES:
        if name not in core_algos.ADV_ESTIMATOR_REGISTRY:
            core_algos.register_adv_est(name)(advantage_estimator(name))


def _register_if_verl_is_loaded() -> None:
    """Importing this module registers with verl when verl is importable (its plugin hook)."""
    try:
        import verl  # noqa: F401
    except ImportError:
        return
    register()


_register_if_verl_is_loaded()
