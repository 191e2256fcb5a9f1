r"""Per-prompt τ: PMD-mean's regularisation strength as a function of each prompt's rewards.

The paper's refined analysis has PMD-mean converge with a τ schedule that scales
with each prompt's improvement rate. A rule here sets prompt ``x``'s strength to

.. math:: \tau_x = \tau \, s_x,

with ``s_x`` computed from the prompt's group of rewards:

* ``fixed``: ``s_x = 1`` (every prompt at ``τ``; the paper's experiments);
* ``std``: ``s_x = σ_x``, the group's reward standard deviation (population form,
  ``σ_x² = mean (r - r̄)²``); with binary rewards and success rate ``p̂`` that is
  ``sqrt(p̂ (1 - p̂))``. The target ``(r - r̄)/(τ σ_x)`` is then GRPO's
  normalised advantage over ``τ``, unchanged by any affine rescaling of the
  rewards ``r → a r + b`` (``a > 0``). The prompts learning fastest under a fixed
  τ (success near 1/2, where a Bernoulli's variance peaks) get the gentlest step
  relative to the rest; prompts near 0 or 1 get a smaller τ, a bolder step.

A group whose rewards are all equal has no advantage under any τ; its ``s_x`` is
set to 1 rather than 0, and so is that of a group whose spread is below
:data:`MIN_SPREAD` (rounding error, not a signal, which dividing by it would
blow up).

Because PMD-mean's baseline does not depend on τ, prompt ``x``'s regression
``½ ((r - r̄)/τ_x - Δ)²`` is the fixed-τ regression with advantages ``A/s_x``:
the trainers apply a rule by dividing the advantages (:meth:`Algorithm.advantages`),
which is exact for the loss; ``tau_scaled`` and the reported χ² weight keep the
base ``τ``.
"""

from __future__ import annotations

import numpy as np
import torch

from .groups import _rewards, mean_baseline

__all__ = ["MIN_SPREAD", "TAU_RULES", "population_tau", "tau_scale"]

#: The per-prompt τ rules.
TAU_RULES = ("fixed", "std")
#: A group reward standard deviation at or below this is treated as no spread (``s_x = 1``).
MIN_SPREAD = 1e-6


def _check_rule(rule: str) -> None:
    if rule not in TAU_RULES:
        raise ValueError(f"tau_rule must be one of {TAU_RULES}, got {rule!r}")


def tau_scale(rewards, groups, rule: str, weights=None) -> torch.Tensor:
    """``s_x`` of each response's prompt (one value per response): ``τ_x = τ s_x``.

    ``std``: ``σ_x = sqrt(Σ_j w_j (r_j - r̄)² / Σ_j w_j)`` (unweighted: the population std of
    the group); 1 where ``σ_x ≤`` :data:`MIN_SPREAD`.
    """
    _check_rule(rule)
    r = _rewards(rewards)
    if rule == "fixed":
        return torch.ones_like(r)
    centred = r - mean_baseline(r, groups, weights)
    std = torch.sqrt(mean_baseline(centred * centred, groups, weights))  # the group mean of (r - r̄)²
    return torch.where(std > MIN_SPREAD, std, torch.ones_like(std))


def population_tau(p, tau: float, rule: str) -> np.ndarray:
    """The population form for binary rewards at success probability ``p``:
    ``τ`` (``fixed``) or ``τ sqrt(p (1 - p))`` (``std``); ``τ`` where ``p`` is 0 or 1."""
    _check_rule(rule)
    p = np.asarray(p, dtype=float)
    if rule == "fixed":
        return np.full_like(p, tau)
    sd = np.sqrt(p * (1.0 - p))
    return np.where(sd > 0, tau * sd, tau)
