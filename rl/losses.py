r"""Policy losses: PMD-mean, PMD-part, GRPO, GSPO and RLOO (pmd-math.md §5–6).

Every loss is a pure function of a batch of ``B`` responses, padded to
``T`` tokens:

* ``logprobs`` (B, T): ``log pi_theta`` of each response token (with grad);
* ``old_logprobs`` (B, T): ``log pi_old`` of the same tokens, the policy
  that generated the batch, as recomputed by the trainer; optionally
  ``sampler_logprobs`` from the inference engine, selected with
  ``old_source="sampler"``;
* ``mask`` (B, T): 1 on response tokens, 0 on padding;
* ``advantages`` (B,), or ``rewards`` (B,) with ``groups`` (group ids or a
  :class:`~pmdlab.llm.groups.Groups`) from which the loss's baseline
  computes them.

With ``Delta_i = sum_t (log pi_theta - log pi_old)(y_{i,t})`` the sequence
log-ratio and ``L_i`` the response length:

* ``pmd_mean``: ``l_i = 1/2 (A_i/tau - Delta_i)^2`` with the mean (or
  leave-one-out mean) baseline: Kimi K1.5's loss. ``tau_scaled`` multiplies
  by ``tau`` (the authors' code). Its gradient at ``Delta = 0`` is
  ``-(A_i/tau) grad log pi_theta(y_i)``.
* ``pmd_part``: the same regression with the partition (or leave-one-out
  partition) baseline ``tau log mean e^{r/tau}``.
* ``grpo``: per token ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)``,
  ``rho = pi_theta/pi_old``, group mean/std advantages.
* ``gspo``: per sequence the same with ``s_i = exp(Delta_i / L_i)``.
* ``rloo``: ``-A_i Delta_i`` with the leave-one-out baseline (REINFORCE;
  its gradient is ``-A_i grad log pi_theta(y_i)``).

**Aggregation** (:data:`AGGREGATIONS`). Each loss has a per-sequence value
``v_i`` (the sum over tokens of a token-level loss, or ``l_i``), and the
batch loss is ``sum_i w_i c_i / D`` with sample weights ``w_i`` (1 unless
given) and

==========================  ================  ==========================
aggregation                 ``c_i``           normaliser ``D``
==========================  ================  ==========================
``seq_mean_token_mean``     ``v_i / L_i``     ``sum_i w_i``
``seq_mean_token_sum``      ``v_i``           ``sum_i w_i``
``seq_mean_token_sum_norm`` ``v_i``           ``sum_i w_i * max_length``
``token_mean``              ``v_i``           ``sum_i w_i L_i``
==========================  ================  ==========================

``D`` is computed from the batch unless ``normalizer`` is given: pass the
normaliser of the whole (global) batch, from :func:`loss_normalizer`, and
the losses of its micro-batches (or data-parallel shards) sum to the
loss of the whole batch, with the same gradient, whatever the split.

Each loss returns a :class:`LossOutput`: the scalar loss and detached
diagnostics (KL estimates, clip fractions, and for the PMD losses the
achieved log-ratios against their targets and the implied chi^2 weight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .groups import Groups, advantages as group_advantages, grpo_advantages

__all__ = [
    "AGGREGATIONS",
    "LOSSES",
    "LossOutput",
    "grpo",
    "gspo",
    "loss_normalizer",
    "pmd_group_diagnostics",
    "pmd_mean",
    "pmd_part",
    "rloo",
    "sequence_log_ratio",
]

AGGREGATIONS = ("seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_mean")


@dataclass
class LossOutput:
    """The scalar ``loss`` (with grad) and ``metrics``: detached 0-dim tensors."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


# --------------------------------------------------------------------------- checks


def _check_batch(logprobs, old_logprobs, mask, sampler_logprobs, old_source):
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must be (batch, tokens), got shape {tuple(logprobs.shape)}")
    for name, x in (("old_logprobs", old_logprobs), ("mask", mask)):
        if x.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but logprobs has {tuple(logprobs.shape)}")
    if logprobs.shape[0] == 0:
        raise ValueError("logprobs is empty: the batch has no responses")
    if old_source == "sampler":
        if sampler_logprobs is None:
            raise ValueError("old_source='sampler' needs sampler_logprobs")
        if sampler_logprobs.shape != logprobs.shape:
            raise ValueError(
                f"sampler_logprobs has shape {tuple(sampler_logprobs.shape)} but logprobs has {tuple(logprobs.shape)}"
            )
        return sampler_logprobs.detach()
    if old_source != "trainer":
        raise ValueError(f"old_source must be 'trainer' or 'sampler', got {old_source!r}")
    return old_logprobs.detach()


def _check_tau(tau) -> float:
    t = float(tau)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"tau must be positive and finite, got {tau}")
    return t


def _resolve_advantages(advantages, rewards, groups, batch, baseline, tau=None, weights=None, grpo=None):
    """The advantages given, or computed from ``rewards`` and ``groups``."""
    if advantages is not None:
        if rewards is not None:
            raise ValueError("pass either advantages or rewards (with groups), not both")
        adv = torch.as_tensor(advantages).detach()
        if adv.shape != (batch,):
            raise ValueError(f"advantages has shape {tuple(adv.shape)}; expected ({batch},), one per response")
        if not torch.isfinite(adv).all():
            i = int(torch.nonzero(~torch.isfinite(adv))[0])
            raise ValueError(f"advantages[{i}] = {adv[i].item()} is not finite")
        return adv
    if rewards is None or groups is None:
        raise ValueError("pass advantages, or rewards together with groups")
    r = torch.as_tensor(rewards)
    if r.shape != (batch,):
        raise ValueError(f"rewards has shape {tuple(r.shape)}; expected ({batch},), one per response")
    if grpo is not None:
        return grpo_advantages(r, groups, eps=grpo[0], scale=grpo[1])
    return group_advantages(r, groups, baseline=baseline, tau=tau, weights=weights)


def _check_weights(weights, batch, like):
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).detach()
    if w.shape != (batch,):
        raise ValueError(f"weights has shape {tuple(w.shape)}; expected ({batch},)")
    return w


# ----------------------------------------------------------------------- aggregation


def sequence_log_ratio(logprobs, old_logprobs, mask) -> torch.Tensor:
    """``Delta_i = sum_t mask_{i,t} (logprobs - old_logprobs)_{i,t}``."""
    return _token_log_ratio(logprobs, old_logprobs, mask).sum(dim=-1)


def loss_normalizer(mask, aggregation: str, weights=None, max_length: int | None = None) -> torch.Tensor:
    """The normaliser ``D`` of ``aggregation`` for a batch (see the module docstring).

    Sum it over micro-batches or ranks (``all_reduce``) to get the global one;
    ``max_length`` (``seq_mean_token_sum_norm``) defaults to ``mask.shape[1]``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    mask = torch.as_tensor(mask)
    dtype = mask.dtype if mask.is_floating_point() else torch.get_default_dtype()
    w = torch.ones(mask.shape[0], dtype=dtype, device=mask.device) if weights is None else torch.as_tensor(weights)
    if aggregation == "token_mean":
        return (w * mask.sum(dim=-1).to(w.dtype)).sum()
    if aggregation == "seq_mean_token_sum_norm":
        return w.sum() * float(mask.shape[1] if max_length is None else max_length)
    return w.sum()


def _aggregate(values, lengths, aggregation, weights, normalizer, mask, max_length):
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    c = values / lengths.clamp(min=1) if aggregation == "seq_mean_token_mean" else values
    if weights is not None:
        c = c * weights
    d = loss_normalizer(mask, aggregation, weights, max_length) if normalizer is None else normalizer
    return c.sum() / d


def _wmean(x, weights):
    if weights is None:
        return x.mean()
    return (x * weights).sum() / weights.sum()


def _token_log_ratio(logprobs, old, mask):
    """``(log pi_theta - log pi_old)`` per token, 0 on padding."""
    return (logprobs - old) * mask


def _kl_metrics(diff, mask):
    """Token averages of ``KL(pi_old || pi_theta)`` estimators from the masked token
    log-ratios ``diff = log rho``: ``k1 = -log rho`` and ``k3 = rho - 1 - log rho``
    (0 on padding, where ``diff`` is 0)."""
    with torch.no_grad():
        d = diff.detach()
        n = mask.sum().clamp(min=1)
        return {"kl_k1": -d.sum() / n, "kl_k3": (torch.expm1(d) - d).sum() / n}


def _mismatch_metrics(old_logprobs, sampler_logprobs, mask):
    """Trainer vs sampler log-probs of ``pi_old``: mean |difference| and a k3 KL estimate."""
    if sampler_logprobs is None:
        return {}
    with torch.no_grad():
        d = (old_logprobs - sampler_logprobs) * mask
        n = mask.sum().clamp(min=1)
        return {"sampler_abs_diff": d.abs().sum() / n, "sampler_kl_k3": ((torch.expm1(d) - d) * mask).sum() / n}


# ----------------------------------------------------------------------- PMD losses


def pmd_group_diagnostics(delta, target, groups, tau: float, weights=None) -> dict[str, torch.Tensor]:
    r"""Per group: the implied multiplier and chi^2 weight of PMD-mean.

    The population solution satisfies ``s + lambda e^s = a`` for every response
    with one ``lambda`` per prompt (pmd-math.md §3), so the achieved
    log-ratios ``Delta_i`` and targets ``a_i = A_i/tau`` give the least-squares
    estimate ``lambda = sum_i w_i (a_i - Delta_i) e^{Delta_i} / sum_i w_i e^{2 Delta_i}``
    and ``beta = tau lambda / 2``, the weight of the chi^2 term in the mixed
    KL-chi^2 step that the achieved update solves. Returns per-group
    tensors ``lam``, ``chi2_weight``, ``delta_mean`` and ``target_mean``.
    """
    g = groups if isinstance(groups, Groups) else Groups.from_ids(groups)
    with torch.no_grad():
        delta = delta.detach()
        e = torch.exp(delta)
        wt = target if weights is None else weights * target
        wd = delta if weights is None else weights * delta
        lam = g.sum((wt - wd) * e) / g.sum(e * e if weights is None else weights * e * e)
        total = g.sizes.to(delta.dtype) if weights is None else g.sum(weights)
        return {
            "lam": lam,
            "chi2_weight": 0.5 * tau * lam,
            "delta_mean": g.sum(wd) / total,
            "target_mean": g.sum(wt) / total,
        }


def _pmd_regression(
    logprobs, old_logprobs, mask, advantages, rewards, groups, *, tau, baseline, aggregation, tau_scaled,
    weights, normalizer, max_length, sampler_logprobs, old_source,
) -> LossOutput:  # fmt: skip
    old = _check_batch(logprobs, old_logprobs, mask, sampler_logprobs, old_source)
    t = _check_tau(tau)
    batch = logprobs.shape[0]
    w = _check_weights(weights, batch, logprobs)
    adv = _resolve_advantages(advantages, rewards, groups, batch, baseline, t, w)
    mask = mask.to(logprobs.dtype)
    lengths = mask.sum(dim=-1)
    diff = _token_log_ratio(logprobs, old, mask)
    delta = diff.sum(dim=-1)
    target = adv.to(logprobs.dtype) / t
    values = 0.5 * (target - delta) ** 2 * (t if tau_scaled else 1.0)
    loss = _aggregate(values, lengths, aggregation, w, normalizer, mask, max_length)
    with torch.no_grad():
        gap = delta - target
        metrics = {
            "delta_mean": _wmean(delta, w),
            "abs_delta_mean": _wmean(delta.abs(), w),
            "target_mean": _wmean(target, w),
            "abs_target_mean": _wmean(target.abs(), w),
            # Population PMD-mean has Delta < A/tau for every response (pmd-math.md §3).
            "frac_above_target": _wmean((gap > 0).to(delta.dtype), w),
            # Moved beyond the target in the target's own direction.
            "frac_past_target": _wmean((gap * torch.sign(target) > 0).to(delta.dtype), w),
            **_kl_metrics(diff, mask),
            **_mismatch_metrics(old_logprobs.detach(), sampler_logprobs, mask),
        }
        if groups is not None:
            per_group = pmd_group_diagnostics(delta, target, groups, t, w)
            metrics["chi2_weight"] = per_group["chi2_weight"].mean().to(delta.dtype)
    return LossOutput(loss, metrics)


def pmd_mean(
    logprobs, old_logprobs, mask, advantages=None, *, rewards=None, groups=None, tau: float,
    baseline: str = "mean", aggregation: str = "seq_mean_token_mean", tau_scaled: bool = False,
    weights=None, normalizer=None, max_length=None, sampler_logprobs=None, old_source: str = "trainer",
) -> LossOutput:  # fmt: skip
    """PMD-mean (Kimi K1.5/K2): ``1/2 (A_i/tau - Delta_i)^2`` with ``A = r - mean``.

    ``baseline``: ``"mean"`` (default) or ``"leave_one_out"`` (``A_i = n/(n-1) (r_i - mean)``).
    ``tau_scaled`` multiplies the loss by ``tau``; see the module docstring for
    ``aggregation``, ``weights``, ``normalizer`` and ``old_source``.
    """
    if baseline not in ("mean", "leave_one_out"):
        raise ValueError(f"pmd_mean's baseline must be 'mean' or 'leave_one_out', got {baseline!r}")
    return _pmd_regression(
        logprobs, old_logprobs, mask, advantages, rewards, groups, tau=tau, baseline=baseline,
        aggregation=aggregation, tau_scaled=tau_scaled, weights=weights, normalizer=normalizer,
        max_length=max_length, sampler_logprobs=sampler_logprobs, old_source=old_source,
    )  # fmt: skip


def pmd_part(
    logprobs, old_logprobs, mask, advantages=None, *, rewards=None, groups=None, tau: float,
    baseline: str = "partition", aggregation: str = "seq_mean_token_mean", tau_scaled: bool = False,
    weights=None, normalizer=None, max_length=None, sampler_logprobs=None, old_source: str = "trainer",
) -> LossOutput:  # fmt: skip
    """PMD-part: ``1/2 (A_i/tau - Delta_i)^2`` with ``A = r - tau log mean e^{r/tau}``.

    ``baseline``: ``"partition"`` (default) or ``"leave_one_out_partition"``. With
    exact expectations (``weights = pi_old`` over every response) its minimiser
    is the KL step ``pi_old e^{r/tau} / Z``. Other options as :func:`pmd_mean`.
    """
    if baseline not in ("partition", "leave_one_out_partition"):
        raise ValueError(f"pmd_part's baseline must be 'partition' or 'leave_one_out_partition', got {baseline!r}")
    return _pmd_regression(
        logprobs, old_logprobs, mask, advantages, rewards, groups, tau=tau, baseline=baseline,
        aggregation=aggregation, tau_scaled=tau_scaled, weights=weights, normalizer=normalizer,
        max_length=max_length, sampler_logprobs=sampler_logprobs, old_source=old_source,
    )  # fmt: skip


# ------------------------------------------------------------- policy-gradient losses


def _clip_surrogate(ratio, adv, clip_low, clip_high):
    """``-min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)`` and where the clip is active.

    The minimum clips only on the side that would increase the objective:
    it equals ``-A clamp(rho, max=1 + clip_high)`` for ``A > 0`` and
    ``-A clamp(rho, min=1 - clip_low)`` for ``A < 0``, one clamp with
    per-row bounds (the same value and gradient in fewer passes).
    """
    inf = torch.full_like(adv, math.inf)
    upper = torch.where(adv > 0, 1.0 + clip_high, inf)
    lower = torch.where(adv < 0, 1.0 - clip_low, -inf)
    clamped = torch.clamp(ratio, lower, upper)
    return -adv * clamped, clamped != ratio


def _check_clip(clip_low, clip_high):
    if not (0 <= clip_low < 1) or not (clip_high >= 0):
        raise ValueError(f"clip_low must be in [0, 1) and clip_high >= 0, got {clip_low}, {clip_high}")


def grpo(
    logprobs, old_logprobs, mask, advantages=None, *, rewards=None, groups=None, clip_low: float = 0.2,
    clip_high: float = 0.2, scale_rewards: bool = True, eps: float = 1e-6, aggregation: str = "token_mean",
    weights=None, normalizer=None, max_length=None, sampler_logprobs=None, old_source: str = "trainer",
) -> LossOutput:  # fmt: skip
    """GRPO: token-level clipped ratio with group mean/std advantages.

    Per token ``-min(rho_t A_i, clip(rho_t, 1 - clip_low, 1 + clip_high) A_i)``;
    ``scale_rewards=False`` drops the division by the std (Dr. GRPO). Metrics:
    ``clip_frac`` (tokens whose clipped term is the one taken) and KL estimates.
    """
    old = _check_batch(logprobs, old_logprobs, mask, sampler_logprobs, old_source)
    _check_clip(clip_low, clip_high)
    batch = logprobs.shape[0]
    w = _check_weights(weights, batch, logprobs)
    adv = _resolve_advantages(advantages, rewards, groups, batch, None, grpo=(eps, scale_rewards))
    mask = mask.to(logprobs.dtype)
    diff = _token_log_ratio(logprobs, old, mask)
    ratio = torch.exp(diff)
    token_loss, clipped = _clip_surrogate(ratio, adv.to(logprobs.dtype)[:, None], clip_low, clip_high)
    values = (token_loss * mask).sum(dim=-1)
    loss = _aggregate(values, mask.sum(dim=-1), aggregation, w, normalizer, mask, max_length)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {
            "clip_frac": (clipped * mask).sum() / n,
            "ratio_mean": (ratio * mask).sum() / n,
            "advantage_mean": _wmean(adv.to(logprobs.dtype), w),
            **_kl_metrics(diff, mask),
            **_mismatch_metrics(old_logprobs.detach(), sampler_logprobs, mask),
        }
    return LossOutput(loss, metrics)


def gspo(
    logprobs, old_logprobs, mask, advantages=None, *, rewards=None, groups=None, clip_low: float = 3e-4,
    clip_high: float = 4e-4, scale_rewards: bool = True, eps: float = 1e-6,
    aggregation: str = "seq_mean_token_sum", weights=None, normalizer=None, max_length=None,
    sampler_logprobs=None, old_source: str = "trainer",
) -> LossOutput:  # fmt: skip
    """GSPO: the sequence ratio ``s_i = exp(Delta_i / L_i)`` (geometric mean of the
    token ratios), clipped: ``-min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i)``
    per sequence, group mean/std advantages. Default clip range as in the GSPO paper."""
    old = _check_batch(logprobs, old_logprobs, mask, sampler_logprobs, old_source)
    _check_clip(clip_low, clip_high)
    batch = logprobs.shape[0]
    w = _check_weights(weights, batch, logprobs)
    adv = _resolve_advantages(advantages, rewards, groups, batch, None, grpo=(eps, scale_rewards))
    mask = mask.to(logprobs.dtype)
    lengths = mask.sum(dim=-1)
    diff = _token_log_ratio(logprobs, old, mask)
    ratio = torch.exp(diff.sum(dim=-1) / lengths.clamp(min=1))
    values, clipped = _clip_surrogate(ratio, adv.to(logprobs.dtype), clip_low, clip_high)
    loss = _aggregate(values, lengths, aggregation, w, normalizer, mask, max_length)
    with torch.no_grad():
        metrics = {
            "clip_frac": _wmean(clipped.to(ratio.dtype), w),
            "ratio_mean": _wmean(ratio, w),
            "advantage_mean": _wmean(adv.to(logprobs.dtype), w),
            **_kl_metrics(diff, mask),
            **_mismatch_metrics(old_logprobs.detach(), sampler_logprobs, mask),
        }
    return LossOutput(loss, metrics)


def rloo(
    logprobs, old_logprobs, mask, advantages=None, *, rewards=None, groups=None,
    baseline: str = "leave_one_out", aggregation: str = "seq_mean_token_sum", weights=None,
    normalizer=None, max_length=None, sampler_logprobs=None, old_source: str = "trainer",
) -> LossOutput:  # fmt: skip
    """RLOO / REINFORCE: ``-A_i Delta_i`` (gradient ``-A_i grad log pi_theta(y_i)``), no ratio,
    with the leave-one-out baseline (``baseline="mean"`` for plain REINFORCE with a mean baseline)."""
    if baseline not in ("mean", "leave_one_out"):
        raise ValueError(f"rloo's baseline must be 'mean' or 'leave_one_out', got {baseline!r}")
    old = _check_batch(logprobs, old_logprobs, mask, sampler_logprobs, old_source)
    batch = logprobs.shape[0]
    w = _check_weights(weights, batch, logprobs)
    adv = _resolve_advantages(advantages, rewards, groups, batch, baseline, weights=w)
    mask = mask.to(logprobs.dtype)
    diff = _token_log_ratio(logprobs, old, mask)
    values = -adv.to(logprobs.dtype) * diff.sum(dim=-1)
    loss = _aggregate(values, mask.sum(dim=-1), aggregation, w, normalizer, mask, max_length)
    with torch.no_grad():
        metrics = {
            "advantage_mean": _wmean(adv.to(logprobs.dtype), w),
            **_kl_metrics(diff, mask),
            **_mismatch_metrics(old_logprobs.detach(), sampler_logprobs, mask),
        }
    return LossOutput(loss, metrics)


#: The losses by name, as trainers select them.
LOSSES = {"pmd_mean": pmd_mean, "pmd_part": pmd_part, "grpo": grpo, "gspo": gspo, "rloo": rloo}
