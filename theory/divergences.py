r"""Divergences between policies and the objectives the updates optimise.

All functions reduce over the last (action) axis and broadcast over the
leading (prompt) axes. Conventions: ``0 log 0 = 0``; ``KL(p||q) = inf`` when
``q = 0 < p``; ``chi^2(q||p) = inf`` when ``p = 0 < q``.

* ``KL(p||q) = sum p log(p/q)``
* ``chi^2(q||p) = sum q^2/p - 1``
* PMD-part's objective (docs/math.md §2): ``E_q r - tau KL(q||pi)``
* the mixed objective (§3): ``E_q r - tau KL(q||pi) - beta chi^2(q||pi)``
* PMD-mean's regression loss (§3): ``E_pi 1/2 (log q/pi - (r - E_pi r)/tau)^2``
"""

from __future__ import annotations

import numpy as np

from ._validation import broadcast_actions, check_nonnegative, check_policy, check_positive, check_rewards

__all__ = [
    "kl_divergence",
    "chi2_divergence",
    "kl_objective",
    "mixed_objective",
    "pmd_mean_regression_loss",
]


def kl_divergence(p, q) -> np.ndarray:
    r"""``KL(p || q) = sum_y p(y) log(p(y)/q(y))`` over the last axis."""
    p, q = check_policy(p, "p"), check_policy(q, "q")
    broadcast_actions({"p": p, "q": q})
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return np.sum(terms, axis=-1)


def chi2_divergence(q, p) -> np.ndarray:
    r"""``chi^2(q || p) = sum_y q(y)^2 / p(y) - 1`` over the last axis."""
    q, p = check_policy(q, "q"), check_policy(p, "p")
    broadcast_actions({"q": q, "p": p})
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * q / p, 0.0)
    return np.sum(terms, axis=-1) - 1.0


def kl_objective(q, pi, r, tau) -> np.ndarray:
    r"""PMD-part's subproblem objective ``E_q r - tau KL(q || pi)``."""
    r = check_rewards(r, "r")
    tau = check_positive(tau, "tau")
    return np.sum(check_policy(q, "q") * r, axis=-1) - tau * kl_divergence(q, pi)


def mixed_objective(q, pi, r, tau, beta) -> np.ndarray:
    r"""``E_q r - tau KL(q || pi) - beta chi^2(q || pi)``, the problem PMD-mean solves."""
    beta = check_nonnegative(beta, "beta")
    return kl_objective(q, pi, r, tau) - beta * chi2_divergence(q, pi)


def pmd_mean_regression_loss(q, pi, r, tau) -> np.ndarray:
    r"""PMD-mean's population loss ``E_pi 1/2 (log q/pi - (r - E_pi r)/tau)^2``.

    Terms where ``pi = 0`` do not count; ``inf`` where ``q = 0 < pi``.
    """
    q, pi, r = check_policy(q, "q"), check_policy(pi, "pi"), check_rewards(r, "r")
    broadcast_actions({"q": q, "pi": pi, "r": r})
    tau = np.asarray(check_positive(tau, "tau"))[..., None]
    rbar = np.sum(pi * r, axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = np.log(q) - np.log(pi)
        terms = np.where(pi > 0, 0.5 * pi * (s - (r - rbar) / tau) ** 2, 0.0)
    return np.sum(terms, axis=-1)
