r"""An independent solver for the mixed KL–chi^2 mirror-descent step.

.. math:: \max_q \; E_q r - \tau\, KL(q\|\pi) - \beta\, \chi^2(q\|\pi)

over the simplex (docs/math.md §3, equivalence). It does not use the
Lambert-W form of PMD-mean: it solves the problem's own optimality
conditions by nested monotone root-finding, so agreement with
:func:`pmdlab.theory.pmd_mean` at ``beta = tau lambda / 2`` is a real check.

With ``x = log q/pi`` and a multiplier ``mu`` for ``sum q = 1``,
stationarity reads, for every action on the support,

.. math:: \tau x + 2\beta e^{x} = r - \tau - \mu =: c .

The left side is increasing and convex in ``x``; for each ``c`` it is
inverted by Newton's method started to the right of the root (so the
iterates decrease monotonically to it). The multiplier solves
``log sum pi e^{x(mu)} = 0``, decreasing in ``mu``, bracketed by
``[r_min - tau - 2 beta, r_max - tau - 2 beta]`` (at the ends every ``x`` is
``>= 0``, respectively ``<= 0``), with safeguarded Newton steps. The
objective is strictly concave, so this stationary point is the maximiser.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from ._validation import (
    broadcast_actions,
    broadcast_per_row,
    check_nonnegative,
    check_policy,
    check_positive,
    check_rewards,
)

__all__ = ["MixedResult", "mixed_kl_chi2_argmax"]

_MAX_ITER = 200


@dataclass(frozen=True)
class MixedResult:
    """The maximiser ``policy``, its ``log_ratio = log q/pi`` and the multiplier ``mu``."""

    policy: np.ndarray
    log_ratio: np.ndarray
    multiplier: np.ndarray


def _invert(c: np.ndarray, tau: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """``x`` with ``tau x + 2 beta e^x = c`` (elementwise), by monotone Newton.

    Start: ``min(c/tau, max(0, log(c / 2 beta)))``, never left of the root:
    ``x <= c/tau`` always, and ``x >= 0`` implies ``2 beta e^x <= c``.
    """
    two_beta = 2.0 * beta
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        x = np.where(
            two_beta > 0,
            np.minimum(c / tau, np.maximum(0.0, np.log(np.maximum(c, 0.0) / two_beta))),
            c / tau,
        )
    active = two_beta > 0
    for _ in range(_MAX_ITER):
        if not active.any():
            return x
        xa, ca, ta, ba = x[active], c[active], tau[active], two_beta[active]
        e = ba * np.exp(xa)
        step = (ta * xa + e - ca) / (ta + e)
        x[active] = xa - step
        # The exact iterates only decrease; a step that is not positive and
        # larger than rounding means the root is reached.
        active[active] = step > 2e-15 * np.maximum(1.0, np.abs(xa))
    raise RuntimeError("mixed KL-chi^2 inner solve did not converge")


def mixed_kl_chi2_argmax(pi, r, tau, beta) -> MixedResult:
    r"""The unique maximiser of ``E_q r - tau KL(q||pi) - beta chi^2(q||pi)``.

    ``pi`` and ``r`` broadcast with actions on the last axis; ``tau > 0`` and
    ``beta >= 0`` are per prompt (broadcast to the leading axes). Actions with
    ``pi = 0`` keep ``q = 0``.
    """
    pi, r = check_policy(pi, "pi"), check_rewards(r, "r")
    shape = broadcast_actions({"pi": pi, "r": r})
    batch, k = shape[:-1], shape[-1]
    tau_b = broadcast_per_row(check_positive(tau, "tau"), batch, "tau").reshape(-1).astype(np.float64)
    beta_b = broadcast_per_row(check_nonnegative(beta, "beta"), batch, "beta").reshape(-1).astype(np.float64)
    pi2 = np.broadcast_to(pi, shape).reshape(-1, k)
    pi2 = pi2 / pi2.sum(axis=1, keepdims=True)
    r2 = np.broadcast_to(r, shape).reshape(-1, k).astype(np.float64)
    support = pi2 > 0
    with np.errstate(divide="ignore"):
        log_pi = np.log(pi2)
    r_lo = np.where(support, r2, np.inf).min(axis=1)
    r_hi = np.where(support, r2, -np.inf).max(axis=1)
    tau_k = np.repeat(tau_b[:, None], k, axis=1)
    beta_k = np.repeat(beta_b[:, None], k, axis=1)

    def x_of(mu):
        return _invert(r2 - tau_b[:, None] - mu[:, None], tau_k, beta_k)

    lo = r_lo - tau_b - 2.0 * beta_b  # L(lo) >= 0
    hi = r_hi - tau_b - 2.0 * beta_b  # L(hi) <= 0
    mu = 0.5 * (lo + hi)
    for _ in range(_MAX_ITER):
        x = x_of(mu)
        lw = log_pi + x
        L = logsumexp(lw, axis=1)
        weights = np.exp(lw - L[:, None])
        with np.errstate(over="ignore", invalid="ignore"):  # e^x of actions off the support
            dL = -np.sum(
                np.where(support, weights / (tau_b[:, None] + 2.0 * beta_b[:, None] * np.exp(x)), 0.0), axis=1
            )
        lo = np.where(L > 0, mu, lo)
        hi = np.where(L < 0, mu, hi)
        new = mu - L / dL
        inside = (new > lo) & (new < hi) & np.isfinite(new)
        new = np.where(inside, new, 0.5 * (lo + hi))
        done = (np.abs(new - mu) <= 4e-16 * np.maximum(1.0, np.abs(mu))) | (L == 0) | (hi - lo <= 0)
        mu = new
        if done.all():
            break
    else:
        raise RuntimeError("mixed KL-chi^2 multiplier did not converge")
    x = x_of(mu)
    with np.errstate(over="ignore"):
        policy = np.where(support, np.exp(log_pi + x), 0.0)
    return MixedResult(policy=policy.reshape(shape), log_ratio=x.reshape(shape), multiplier=mu.reshape(batch))
