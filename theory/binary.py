r"""Binary rewards: the exact one-step updates as functions of ``p`` alone.

With ``r in {0, 1}`` and ``p = pi_t(correct)``, PMD-mean's update depends on
``pi_t`` only through ``p`` (docs/math.md §4). With ``q = 1 - p``,
``a_1 = q/tau`` and ``a_0 = -p/tau``, every correct response gets the ratio
``rho_1 = omega(a_1 + u)/lambda`` and every incorrect one
``rho_0 = omega(a_0 + u)/lambda``, where ``u = log lambda`` solves

.. math:: p\,\rho_1 + q\,\rho_0 = 1 .

The new success probability is ``p' = p rho_1``; PMD-part gives
``p' = p e^{1/tau} / (p e^{1/tau} + q)``.

Everything is vectorised over broadcast arrays of ``p`` and ``tau``. The
boundary cases ``p = 0`` and ``p = 1`` have ``lambda = 0`` and no change;
their log-ratios are the limits ``s -> a``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._rootfind import solve_rows
from ._validation import check_positive, check_probability

__all__ = [
    "BinaryMeanStep",
    "BinaryPartStep",
    "pmd_mean_step",
    "pmd_part_step",
    "pmd_mean_step_small_tau",
    "pmd_part_step_small_tau",
    "solve_two_point",
]


def solve_two_point(p: np.ndarray, a1: np.ndarray, a0: np.ndarray, rough: bool = False, q=None):
    r"""Solve PMD-mean's multiplier for a two-point distribution.

    Mass ``p`` at target ``a1 > 0`` and ``q = 1 - p`` at ``a0 < 0`` with
    ``p a1 + q a0 = 0`` (``0 < p < 1``; pass ``q`` when it is known more
    accurately than ``1 - p``). Returns ``(u, s1, s0)``: ``u = log lambda``
    and the log-ratios ``s = a - omega(a + u)``; with ``rough``, ``u`` only
    to about 1e-3 (a start for other solvers) and no log-ratios.

    The safeguarded Halley/Newton iteration of :mod:`._rootfind` on the
    residual of :mod:`._residual`, in the bracket ``(-inf, log a1]``
    (``lambda <= max a``), with the lower bound ``(E e^a - 1)/E e^{2a}``
    supplied where the safeguard needs one.
    Accurate for ``p`` down to 1e-300 and ``tau`` from 1e-300 to 1e300.
    """
    p, a1, a0 = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (p, a1, a0)))
    p, a1, a0 = p.reshape(-1), a1.reshape(-1), a0.reshape(-1)
    logp = np.log(p)
    logq = (
        np.log1p(-p)
        if q is None
        else np.log(np.broadcast_to(np.asarray(q, dtype=np.float64), p.shape).reshape(-1))
    )
    with np.errstate(divide="ignore"):
        hi = np.log(a1)
    u = np.minimum(_two_point_start(p, a1, logp, logq), hi)
    u, s, _ = solve_rows(
        np.stack([a1, a0], axis=-1),
        np.stack([logp, logq], axis=-1),
        u,
        np.full(u.shape, -np.inf),
        hi,
        tol=1e-3 if rough else 1e-9,
        bounded=True,
    )
    if rough:
        return u, None, None
    return u, s[:, 0], s[:, 1]


def _two_point_start(p, a1, logp, logq):
    """A start for ``log lambda``: the smaller of two asymptotic values.

    Small steps: ``lambda ~ Var(a)/2 = p a1^2 / (2q)``. Large targets:
    ``lambda ~ p (a1 + log p) + sqrt(p a1)``; the first term is the limit
    ``p' -> 1`` (``tau -> 0``), the second the balance ``p'^2/p ~ a1`` when the
    correct response is rare (``p' << 1``).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        log_half_var = logp + 2.0 * np.log(a1) - logq - np.log(2.0)
        large = np.log(np.maximum(p * (a1 + logp), 0.0) + np.sqrt(p * a1))
    return np.where(np.isfinite(large), np.minimum(log_half_var, large), log_half_var)


def _solve_binary(p: np.ndarray, tau: np.ndarray):
    """``(u, s1, s0)`` for rewards in {0,1}; ``u = -inf`` at ``p in {0, 1}``."""
    shape = p.shape
    p, tau = p.reshape(-1), tau.reshape(-1)
    q = 1.0 - p
    a1, a0 = q / tau, -p / tau
    u = np.full(p.shape, -np.inf)
    s1, s0 = a1.copy(), a0.copy()
    interior = (p > 0) & (p < 1)
    if interior.any():
        u[interior], s1[interior], s0[interior] = solve_two_point(p[interior], a1[interior], a0[interior])
    return u.reshape(shape), s1.reshape(shape), s0.reshape(shape)


@dataclass(frozen=True)
class BinaryMeanStep:
    """One exact PMD-mean step with rewards in {0, 1} (arrays broadcast over ``p``, ``tau``).

    ``success = p'``, ``failure = 1 - p'`` (computed directly, accurate near 1),
    ``log_ratio_correct = log rho_1``, ``log_ratio_incorrect = log rho_0``,
    ``lam = lambda = KL(pi_t || pi_{t+1})`` and ``chi2_weight = beta = tau lambda / 2``.
    """

    success: np.ndarray
    failure: np.ndarray
    log_ratio_correct: np.ndarray
    log_ratio_incorrect: np.ndarray
    lam: np.ndarray
    chi2_weight: np.ndarray


@dataclass(frozen=True)
class BinaryPartStep:
    """One exact PMD-part (KL) step with rewards in {0, 1}.

    ``log_partition = log Z = log(p e^{1/tau} + 1 - p)``.
    """

    success: np.ndarray
    failure: np.ndarray
    log_ratio_correct: np.ndarray
    log_ratio_incorrect: np.ndarray
    log_partition: np.ndarray


def _binary_inputs(p, tau):
    p = check_probability(p, "p")
    tau = check_positive(tau, "tau")
    try:
        p, tau = np.broadcast_arrays(p, tau)
    except ValueError:
        raise ValueError(f"p.shape={np.shape(p)} and tau.shape={np.shape(tau)} do not broadcast") from None
    return p.astype(np.float64), tau.astype(np.float64)


def _masses(p, s1, s0):
    """``(p', 1 - p')`` from the log-ratios: ``p e^{s1}`` and ``(1-p) e^{s0}``, divided
    by their sum (1 up to the root's rounding; dividing keeps ``p' <= 1``).
    Formed in log space, so that ``p = 0`` with a large ``s1`` gives 0, not NaN."""
    with np.errstate(divide="ignore"):
        success, failure = np.exp(np.log(p) + s1), np.exp(np.log1p(-p) + s0)
    total = success + failure
    return success / total, failure / total


def _out(x):
    return x[()] if np.ndim(x) == 0 else x


def pmd_mean_step(p, tau) -> BinaryMeanStep:
    r"""Exact PMD-mean step for rewards in {0, 1} (docs/math.md §4).

    ``p`` in [0, 1], ``tau > 0``, broadcast together. Returns
    :class:`BinaryMeanStep`. Example: ``pmd_mean_step(0.01, 0.1).success``
    is 0.25996 (PMD-part gives 0.99553).
    """
    p, tau = _binary_inputs(p, tau)
    u, s1, s0 = _solve_binary(p, tau)
    lam = np.exp(u)
    success, failure = _masses(p, s1, s0)
    return BinaryMeanStep(
        success=_out(success),
        failure=_out(failure),
        log_ratio_correct=_out(s1),
        log_ratio_incorrect=_out(s0),
        lam=_out(lam),
        chi2_weight=_out(0.5 * tau * lam),
    )


def pmd_part_step(p, tau) -> BinaryPartStep:
    r"""Exact PMD-part step for rewards in {0, 1}: the KL-regularised tilt.

    ``log Z = log(p e^{1/tau} + q)``, ``log rho_1 = 1/tau - log Z``,
    ``log rho_0 = -log Z``, computed with a max-shift so that ``tau = 1e-4``
    does not overflow.
    """
    p, tau = _binary_inputs(p, tau)
    q = 1.0 - p
    with np.errstate(divide="ignore"):
        log_z = np.logaddexp(np.log(p) + 1.0 / tau, np.log(q))
    s1 = 1.0 / tau - log_z
    s0 = -log_z
    success, failure = _masses(p, s1, s0)
    return BinaryPartStep(
        success=_out(success),
        failure=_out(failure),
        log_ratio_correct=_out(s1),
        log_ratio_incorrect=_out(s0),
        log_partition=_out(log_z),
    )


def pmd_mean_step_small_tau(p, tau) -> BinaryMeanStep:
    r"""Leading-order PMD-mean step as ``tau -> 0`` at fixed ``0 < p < 1``.

    ``log rho_0 ~ -p/tau``, ``log rho_1 ~ -log p`` (so ``p' -> 1`` with
    ``1 - p' ~ q e^{-p/tau}``), ``lambda ~ p (q/tau + log p)`` and
    ``beta ~ p q / 2 + (tau/2) p log p``, which tends to ``p(1-p)/2``, the
    reward variance over two. Valid once ``p/tau`` is large.
    """
    p, tau = _binary_inputs(p, tau)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        s0 = -p / tau
        lam = p * (q / tau + np.log(p))
        return BinaryMeanStep(
            success=_out(1.0 - q * np.exp(s0)),
            failure=_out(q * np.exp(s0)),
            log_ratio_correct=_out(-np.log(p)),
            log_ratio_incorrect=_out(s0),
            lam=_out(lam),
            chi2_weight=_out(0.5 * tau * lam),
        )


def pmd_part_step_small_tau(p, tau) -> BinaryPartStep:
    r"""Leading-order PMD-part step as ``tau -> 0`` at fixed ``0 < p < 1``.

    ``log Z ~ 1/tau + log p``, so ``log rho_0 ~ -1/tau - log p``,
    ``log rho_1 ~ -log p`` and ``1 - p' ~ (q/p) e^{-1/tau}``.
    """
    p, tau = _binary_inputs(p, tau)
    q = 1.0 - p
    with np.errstate(divide="ignore", invalid="ignore"):
        log_z = 1.0 / tau + np.log(p)
        fail = q * np.exp(-log_z)
        return BinaryPartStep(
            success=_out(1.0 - fail),
            failure=_out(fail),
            log_ratio_correct=_out(-np.log(p)),
            log_ratio_incorrect=_out(-log_z),
            log_partition=_out(log_z),
        )
