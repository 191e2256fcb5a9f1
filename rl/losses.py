r"""Policy losses: PMD (mean or partition baseline), GRPO, GSPO and RLOO (docs/math.md §5–6).

Every loss is a small pure function of a batch of ``B`` responses padded to
``T`` tokens, and of its own hyper-parameters:

* ``logprobs`` (B, T): ``log pi_theta`` of each response token (with grad);
* ``old_logprobs`` (B, T): ``log pi_old`` of the same tokens, the behaviour
  policy that generated the batch;
* ``mask`` (B, T): 1 on response tokens, 0 on padding;
* ``advantages`` (B,): computed once per rollout batch from rewards and groups
  by the algorithm (:mod:`pmdlab.rl.algorithms`, :mod:`pmdlab.rl.groups`).

With ``Delta_i = sum_t (log pi_theta - log pi_old)(y_{i,t})`` the sequence
log-ratio and ``L_i`` the response length:

* :func:`pmd`: ``l_i = 1/2 (A_i/tau - Delta_i)^2`` (Kimi K1.5's loss; PMD-mean
  with the mean baseline, PMD-part with the partition baseline, §5).
  ``tau_scaled`` multiplies by ``tau`` (the authors' code). Its gradient at
  ``Delta = 0`` is ``-(A_i/tau) grad log pi_theta(y_i)``.
* :func:`grpo`: per token ``-min(rho A, clip(rho, 1-eps_low, 1+eps_high) A)``,
  ``rho = pi_theta/pi_old`` (§6).
* :func:`gspo`: per sequence the same with ``s_i = exp(Delta_i / L_i)`` (§6).
* :func:`rloo`: ``-A_i Delta_i`` (REINFORCE; gradient ``-A_i grad log pi_theta(y_i)``, §6).

**Aggregation** (:data:`AGGREGATIONS`, §6). Each loss has a per-sequence value
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
diagnostics (KL estimates, clip fractions; for PMD the achieved log-ratios
against their targets).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .groups import Groups

__all__ = [
    "AGGREGATIONS",
    "LossOutput",
    "grpo",
    "gspo",
    "kl_estimates",
    "loss_normalizer",
    "pmd",
    "pmd_group_diagnostics",
    "rloo",
    "sampler_mismatch",
    "sequence_log_ratio",
]

AGGREGATIONS = ("seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm", "token_mean")


@dataclass
class LossOutput:
    """The scalar ``loss`` (with grad) and ``metrics``: detached 0-dim tensors."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


# --------------------------------------------------------------------------- checks


def _check_batch(logprobs, old_logprobs, mask, advantages) -> torch.Tensor:
    """Shapes agree, the batch is non-empty, the advantages are finite; returns them detached."""
    if logprobs.ndim != 2:
        raise ValueError(f"logprobs must be (batch, tokens), got shape {tuple(logprobs.shape)}")
    for name, x in (("old_logprobs", old_logprobs), ("mask", mask)):
        if x.shape != logprobs.shape:
            raise ValueError(f"{name} has shape {tuple(x.shape)} but logprobs has {tuple(logprobs.shape)}")
    batch = logprobs.shape[0]
    if batch == 0:
        raise ValueError("logprobs is empty: the batch has no responses")
    adv = torch.as_tensor(advantages).detach()
    if adv.shape != (batch,):
        raise ValueError(f"advantages has shape {tuple(adv.shape)}; expected ({batch},), one per response")
    if not torch.isfinite(adv).all():
        i = int(torch.nonzero(~torch.isfinite(adv))[0])
        raise ValueError(f"advantages[{i}] = {adv[i].item()} is not finite")
    return adv.to(logprobs.dtype)


def _check_tau(tau) -> float:
    t = float(tau)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"tau must be positive and finite, got {tau}")
    return t


def _check_clip(clip_low, clip_high):
    if not (0 <= clip_low < 1) or not (clip_high >= 0):
        raise ValueError(f"clip_low must be in [0, 1) and clip_high >= 0, got {clip_low}, {clip_high}")


def _check_weights(weights, like):
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=like.dtype, device=like.device).detach()
    if w.shape != (like.shape[0],):
        raise ValueError(f"weights has shape {tuple(w.shape)}; expected ({like.shape[0]},)")
    return w


# ----------------------------------------------------------------------- aggregation


def _token_log_ratio(logprobs, old_logprobs, mask):
    """``(log pi_theta - log pi_old)`` per token, 0 on padding."""
    return (logprobs - old_logprobs.detach()) * mask


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
    w = (
        torch.ones(mask.shape[0], dtype=dtype, device=mask.device)
        if weights is None
        else torch.as_tensor(weights)
    )
    if aggregation == "token_mean":
        return (w * mask.sum(dim=-1).to(w.dtype)).sum()
    if aggregation == "seq_mean_token_sum_norm":
        return w.sum() * float(mask.shape[1] if max_length is None else max_length)
    return w.sum()


def _aggregate(values, mask, aggregation, weights, normalizer, max_length):
    """``sum_i w_i c_i / D`` (the module docstring's table)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
    c = values / mask.sum(dim=-1).clamp(min=1) if aggregation == "seq_mean_token_mean" else values
    if weights is not None:
        c = c * weights
    d = loss_normalizer(mask, aggregation, weights, max_length) if normalizer is None else normalizer
    return c.sum() / d


def _wmean(x, weights):
    if weights is None:
        return x.mean()
    return (x * weights).sum() / weights.sum()


def kl_estimates(token_log_ratio, mask) -> dict[str, torch.Tensor]:
    """Token averages of ``KL(pi_old || pi_theta)`` estimators from ``log rho`` per token
    (docs/math.md §7): ``k1 = -log rho`` and ``k3 = rho - 1 - log rho`` (0 on padding)."""
    with torch.no_grad():
        d = token_log_ratio.detach() * mask
        n = mask.sum().clamp(min=1)
        return {"kl_k1": -d.sum() / n, "kl_k3": (torch.expm1(d) - d).sum() / n}


def sampler_mismatch(trainer_logprobs, sampler_logprobs, mask) -> dict[str, torch.Tensor]:
    """Trainer against sampler log-probs of ``pi_old``: mean ``|difference|`` per token and the
    k3 estimate of their KL (docs/math.md §7)."""
    with torch.no_grad():
        d = (trainer_logprobs.detach() - sampler_logprobs.detach()) * mask
        n = mask.sum().clamp(min=1)
        return {"sampler_abs_diff": d.abs().sum() / n, "sampler_kl_k3": (torch.expm1(d) - d).sum() / n}


# ----------------------------------------------------------------------- PMD


def pmd(
    logprobs,
    old_logprobs,
    mask,
    advantages,
    *,
    tau: float,
    tau_scaled: bool = False,
    aggregation: str = "seq_mean_token_mean",
    weights=None,
    normalizer=None,
    max_length=None,
) -> LossOutput:
    """PMD's regression ``l_i = 1/2 (A_i/tau - Delta_i)^2`` (``tau``-scaled: ``tau/2 (...)^2``).

    PMD-mean when ``A`` comes from the mean baseline (Kimi K1.5/K2), PMD-part
    when from the partition baseline ``tau log mean e^{r/tau}`` (docs/math.md §5).
    """
    adv = _check_batch(logprobs, old_logprobs, mask, advantages)
    t = _check_tau(tau)
    w = _check_weights(weights, logprobs)
    mask = mask.to(logprobs.dtype)
    diff = _token_log_ratio(logprobs, old_logprobs, mask)
    delta = diff.sum(dim=-1)
    target = adv / t
    values = 0.5 * (target - delta) ** 2 * (t if tau_scaled else 1.0)
    loss = _aggregate(values, mask, aggregation, w, normalizer, max_length)
    with torch.no_grad():
        gap = delta - target
        metrics = {
            "delta_mean": _wmean(delta, w),
            "abs_delta_mean": _wmean(delta.abs(), w),
            "target_mean": _wmean(target, w),
            "abs_target_mean": _wmean(target.abs(), w),
            # Population PMD-mean has Delta < A/tau for every response (docs/math.md §3, identity 2).
            "frac_above_target": _wmean((gap > 0).to(delta.dtype), w),
            # Moved beyond the target in the target's own direction.
            "frac_past_target": _wmean((gap * torch.sign(target) > 0).to(delta.dtype), w),
            **kl_estimates(diff, mask),
        }
    return LossOutput(loss, metrics)


def pmd_group_diagnostics(delta, target, groups, tau: float, weights=None) -> dict[str, torch.Tensor]:
    r"""Per group: the implied multiplier and chi^2 weight of PMD-mean (docs/math.md §7).

    The population solution satisfies ``s + lambda e^s = a`` for every response
    with one ``lambda`` per prompt (§3), so the achieved log-ratios ``Delta_i``
    and targets ``a_i = A_i/tau`` give the least-squares estimate
    ``lambda = sum_i w_i (a_i - Delta_i) e^{Delta_i} / sum_i w_i e^{2 Delta_i}``
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


def grpo(
    logprobs,
    old_logprobs,
    mask,
    advantages,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    aggregation: str = "token_mean",
    weights=None,
    normalizer=None,
    max_length=None,
) -> LossOutput:
    """GRPO: per token ``-min(rho_t A_i, clip(rho_t, 1 - clip_low, 1 + clip_high) A_i)``.

    Metrics: ``clip_frac`` (tokens whose clipped term is the one taken), the
    mean ratio and KL estimates.
    """
    adv = _check_batch(logprobs, old_logprobs, mask, advantages)
    _check_clip(clip_low, clip_high)
    w = _check_weights(weights, logprobs)
    mask = mask.to(logprobs.dtype)
    diff = _token_log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(diff)
    token_loss, clipped = _clip_surrogate(ratio, adv[:, None], clip_low, clip_high)
    values = (token_loss * mask).sum(dim=-1)
    loss = _aggregate(values, mask, aggregation, w, normalizer, max_length)
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        metrics = {
            "clip_frac": (clipped * mask).sum() / n,
            "ratio_mean": (ratio * mask).sum() / n,
            "advantage_mean": _wmean(adv, w),
            **kl_estimates(diff, mask),
        }
    return LossOutput(loss, metrics)


def gspo(
    logprobs,
    old_logprobs,
    mask,
    advantages,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    aggregation: str = "seq_mean_token_sum",
    weights=None,
    normalizer=None,
    max_length=None,
) -> LossOutput:
    """GSPO: the sequence ratio ``s_i = exp(Delta_i / L_i)`` (geometric mean of the
    token ratios), clipped: ``-min(s_i A_i, clip(s_i, 1 - clip_low, 1 + clip_high) A_i)``
    per sequence. Default clip range as in the GSPO paper."""
    adv = _check_batch(logprobs, old_logprobs, mask, advantages)
    _check_clip(clip_low, clip_high)
    w = _check_weights(weights, logprobs)
    mask = mask.to(logprobs.dtype)
    diff = _token_log_ratio(logprobs, old_logprobs, mask)
    ratio = torch.exp(diff.sum(dim=-1) / mask.sum(dim=-1).clamp(min=1))
    values, clipped = _clip_surrogate(ratio, adv, clip_low, clip_high)
    loss = _aggregate(values, mask, aggregation, w, normalizer, max_length)
    with torch.no_grad():
        metrics = {
            "clip_frac": _wmean(clipped.to(ratio.dtype), w),
            "ratio_mean": _wmean(ratio, w),
            "advantage_mean": _wmean(adv, w),
            **kl_estimates(diff, mask),
        }
    return LossOutput(loss, metrics)


def rloo(
    logprobs,
    old_logprobs,
    mask,
    advantages,
    *,
    aggregation: str = "seq_mean_token_sum",
    weights=None,
    normalizer=None,
    max_length=None,
) -> LossOutput:
    """RLOO / REINFORCE: ``-A_i Delta_i`` (gradient ``-A_i grad log pi_theta(y_i)``), no ratio."""
    adv = _check_batch(logprobs, old_logprobs, mask, advantages)
    w = _check_weights(weights, logprobs)
    mask = mask.to(logprobs.dtype)
    diff = _token_log_ratio(logprobs, old_logprobs, mask)
    values = -adv * diff.sum(dim=-1)
    loss = _aggregate(values, mask, aggregation, w, normalizer, max_length)
    with torch.no_grad():
        metrics = {"advantage_mean": _wmean(adv, w), **kl_estimates(diff, mask)}
    return LossOutput(loss, metrics)
