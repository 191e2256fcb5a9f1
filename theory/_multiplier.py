r"""PMD-mean's multiplier and update for many prompts at once.

For each row (prompt) with old policy ``pi`` and targets ``a = (r - r̄)/tau``
(``E_pi a = 0``), find ``u = log lambda`` with

.. math:: M(u) = \sum_y \pi(y)\, \omega(a(y) + u) = e^u ,

which is ``sum_y pi_{t+1}(y) = 1`` written with ``pi_{t+1} = pi omega/lambda``
(pmd-math.md §3). ``F(u) = log M(u) - u`` is decreasing, with its root in
``(-inf, log max a]`` (at ``lambda = max a`` every ``omega(a+u) <= lambda``).

Method, per row:

1. *Start.* The root for the two-point distribution with the row's
   variance and largest target (``binary.solve_two_point``): exact for
   two-valued rewards, typically within 0.1 otherwise.
2. *Single precision.* A model of ``M`` around the start: with the moments
   ``m_k = E_pi omega^{(k)}(a + u)``, ``M(u + d) ~ sum_k m_k d^k/k!``,
   solved for ``d``. Quadratic, or quartic when some step exceeds 0.039;
   the truncation error is of order ``(d/pi)^{order+1}`` (omega's
   singularities are at ``-1 +- i pi``).
3. *Double precision.* ``omega`` carried to ``u + d`` by its Taylor series
   and refined to full precision (one Halley or Fritsch step), then one
   more model step, quadratic while ``|d| <= 1e-5`` (remainder 2e-16),
   cubic up to ``|d| <= 1e-4``; ``omega`` is carried to ``u + d`` by its
   Taylor series, exact at that distance.
4. *The rest.* Rows whose step is still larger, and rows with
   ``lambda < 1e-3`` (where ``F`` is a difference of nearly equal numbers and
   the model ill-conditioned), finish in :func:`_finish_rows`: safeguarded
   Newton steps (:mod:`._rootfind`) on the residual of :mod:`._residual`,
   cancellation-free for small ``lambda``, so ``lambda`` keeps full relative
   accuracy.

Blocks of rows are solved in parallel threads with preallocated work arrays
(``_blocks.scratch``); every decision is per row, so a row's result does
not depend on the rest of the batch.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from . import binary
from ._blocks import map_blocks, rowdot, scratch
from ._residual import residual
from ._rootfind import newton_decreasing
from .omega import (
    high_derivatives_into,
    log_ratio_from_omega,
    low_derivatives_into,
    omega_f32_into,
    refine_omega_into,
    wright_omega,
)

_F32 = np.float32
#: |d| below which the cubic model and the Taylor transport are exact to rounding.
_FINAL_STEP = 1e-4
#: |d| up to which quadratic models are used: float32 (remainder |d|^3/6 < 1e-5,
#: so Halley refines the transported omega exactly) and float64 (remainder 2e-16).
_QUADRATIC_STEP_32 = 0.039
_QUADRATIC_STEP_64 = 1e-5
_LOG_SMALL_LAMBDA = float(np.log(1e-3))


def _model_step(m: np.ndarray, u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Solve ``log(sum_k m_k d^k / k!) = u + d`` for ``d`` (per row).

    Newton from ``d = 0`` on the polynomial model (``m`` has one row per
    order), with ``u + d`` kept inside ``[lo, hi]`` and ``|d| <= 2``.
    """
    order = m.shape[0] - 1
    coef = [m[j] / float(np.prod(np.arange(1, j + 1))) for j in range(order + 1)]
    lower = np.maximum(lo - u, -2.0)
    upper = np.minimum(hi - u, 2.0)
    d = np.zeros_like(u)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(8):
            P, dP = coef[order], np.zeros_like(u)
            for j in range(order - 1, -1, -1):
                dP = dP * d + P
                P = P * d + coef[j]
            new = d - (np.log(P) - u - d) / (dP / P - 1.0)
            new = np.clip(np.where(np.isfinite(new), new, 0.5 * d), lower, upper)
            moved = np.abs(new - d).max(initial=0.0)
            d = new
            if moved <= 1e-13:
                break
    return d


def _transport_into(derivs: list[np.ndarray], d: np.ndarray) -> None:
    """``derivs[0] += sum_{k>=1} derivs[k] d^k / k!`` with one ``d`` per row (Horner).

    The higher derivative arrays are overwritten.
    """
    dcol = d[:, None].astype(derivs[0].dtype)
    acc = derivs[-1]
    for k in range(len(derivs) - 1, 1, -1):
        acc *= dcol / k
        acc += derivs[k - 1]
    acc *= dcol
    derivs[0] += acc


def _moments(p, derivs, inv_s) -> np.ndarray:
    return np.stack([rowdot(p, x) for x in derivs]).astype(np.float64) * inv_s


class _Derivatives(NamedTuple):
    arrays: list  # [omega, omega', ...] up to ``order``
    order: int
    step: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _model_derivatives(p, arrays, t, inv_s, u, lo, hi, rows, quadratic_limit, bracket=False) -> _Derivatives:
    """Derivatives of omega (``arrays[0]``) into ``arrays[1:]``, their moments and the
    model step: quadratic, or with two more orders where some step of ``rows``
    exceeds ``quadratic_limit`` (where the quadratic model is not exact enough).

    ``t`` is scratch. With ``bracket``, ``lo``/``hi`` are first narrowed by the
    sign of ``F = log m0 - u``, which is exact at this precision.
    """
    low_derivatives_into(arrays[0], t, arrays[1], arrays[2])
    m = _moments(p, arrays[:3], inv_s)
    if bracket:
        f = np.log(m[0]) - u
        lo = np.where(f > 0, np.maximum(lo, u), lo)
        hi = np.where(f < 0, np.minimum(hi, u), hi)
    step = _model_step(m, u, lo, hi)
    if np.abs(np.where(rows, step, 0.0)).max(initial=0.0) <= quadratic_limit:
        return _Derivatives(arrays[:3], 2, step, lo, hi)
    high = arrays[3:5] if len(arrays) > 4 else arrays[3:4]
    high_derivatives_into(arrays[0], t, arrays[2], *high)
    arrays = arrays[: 3 + len(high)]
    m = np.concatenate([m, _moments(p, high, inv_s)])
    return _Derivatives(arrays, len(arrays) - 1, _model_step(m, u, lo, hi), lo, hi)


def targets_into(r, mean_hi, mean_lo, tau, out) -> None:
    """``a = ((r - mean_hi) - mean_lo) / tau``: the targets from a two-part mean."""
    np.subtract(r, mean_hi[:, None], out=out)
    out -= mean_lo[:, None]
    out /= tau[:, None]


def row_moments(pi, r, tau, total):
    """Per row: ``E_pi r`` as ``hi + lo`` (two floats), ``Var_pi(a)``, and ``max a``,
    ``min a`` over the support of ``pi``, with ``a = (r - E r)/tau``; one threaded pass.

    The mean is refined once, ``lo = E_pi[r - hi]``: its error is then
    ``eps E|r - hi|`` instead of ``eps |E r|``, which keeps the targets exact to
    rounding when ``E r`` is close to one of the rewards (``p -> 1``).
    """
    n, k = pi.shape
    mean_hi, mean_lo, var, amax, amin = (np.empty(n) for _ in range(5))

    def block(i0, i1):
        p, rr = pi[i0:i1], r[i0:i1]
        inv_s = 1.0 / total[i0:i1]
        a = scratch("a", i1 - i0, k)
        mean_hi[i0:i1] = hi = rowdot(p, rr) * inv_s
        np.subtract(rr, hi[:, None], out=a)
        mean_lo[i0:i1] = lo = rowdot(p, a) * inv_s
        a -= lo[:, None]
        a /= tau[i0:i1, None]
        t = scratch("t", i1 - i0, k)
        np.multiply(a, a, out=t)
        var[i0:i1] = rowdot(p, t) * inv_s
        if p.min() > 0:
            amax[i0:i1], amin[i0:i1] = a.max(axis=1), a.min(axis=1)
        else:
            off = p == 0
            np.copyto(t, a)
            t[off] = -np.inf
            amax[i0:i1] = t.max(axis=1)
            t[off] = np.inf
            amin[i0:i1] = t.min(axis=1)

    map_blocks(block, n, k)
    return mean_hi, mean_lo, var, amax, amin


def moving_rows(var, amax, amin) -> np.ndarray:
    """Rows whose reward is not constant on the support (``lambda > 0``).

    Tested on the targets' range, which is exact: a constant reward gives equal
    targets even where rounding leaves a variance of 1e-34.
    """
    return (amax > 0) & (amin < 0) & (var > 0)


def start(var: np.ndarray, amax: np.ndarray, live: np.ndarray) -> np.ndarray:
    """``log lambda`` for the two-point distribution with the row's variance and
    largest target (``-inf`` where not ``live``)."""
    u = np.full(var.shape, -np.inf)
    if live.any():
        v, am = var[live], amax[live]
        ps = np.clip(v / (v + am * am), 1e-300, 1.0 - 1e-16)
        u[live], _, _ = binary.solve_two_point(ps, am, -ps * am / (1.0 - ps), rough=True)
    return u


def solve_block_into(pi, r, tau, total, mean_hi, mean_lo, u0, amax, policy, log_ratio, lam) -> None:
    """PMD-mean's update for a block of rows from the start ``u0``.

    ``pi`` and ``r`` have shape (n, K); ``pi``'s rows sum to ``total`` (they are
    renormalised here), ``E_pi r = mean_hi + mean_lo`` and ``amax = max a`` on
    the support. Writes ``policy``, ``log_ratio`` (n, K) and ``lam`` (n,).
    """
    n, k = pi.shape
    inv_s = 1.0 / total
    a = scratch("a", n, k)
    targets_into(r, mean_hi, mean_lo, tau, a)
    live = np.isfinite(u0)
    u = np.where(live, u0, 0.0)
    with np.errstate(divide="ignore"):
        hi = np.where(live, np.log(amax), 0.0)
    lo = np.full(n, -np.inf)

    # Single precision: one model step, quadratic or (if the step is long) quartic.
    # The float32 residual is good to ~1e-6 only, so rows with small lambda
    # are left where they are.
    p32, w32, z32 = scratch("p32", n, k, _F32), scratch("w32", n, k, _F32), scratch("z32", n, k, _F32)
    d32 = [w32] + [scratch(f"d{j}_32", n, k, _F32) for j in range(1, 5)]
    p32[...] = pi
    np.add(a, u[:, None], out=z32)
    moving = live & (u >= _LOG_SMALL_LAMBDA)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        omega_f32_into(z32, w32, *d32[1:4])
        derivs = _model_derivatives(p32, d32, z32, inv_s, u, lo, hi, moving, _QUADRATIC_STEP_32)
        d = np.where(moving, derivs.step, 0.0)
    u = u + d
    _transport_into(derivs.arrays, d)
    # Error of the transported omega: the Taylor remainder, |d|^{order+1}/(order+1)!.
    err = np.abs(d) ** (derivs.order + 1) / math.factorial(derivs.order + 1)
    far = np.nonzero(err > 1e-4)[0]
    if far.size:  # too far for the Taylor series: start again (error 3e-6)
        w32[far] = _omega_f32((a[far] + u[far, None]).astype(_F32))
        err[far] = 0.0

    # Double precision: refine omega at u (Halley is exact from within 1e-5,
    # Fritsch from within 1e-4), one model step, transport.
    w, z = scratch("w", n, k), scratch("z", n, k)
    d64 = [w] + [scratch(f"d{j}", n, k) for j in range(1, 4)]
    w[...] = w32
    np.add(a, u[:, None], out=z)
    refine_omega_into(w, z, *d64[1:4], fourth_order=max(err.max(initial=0.0), 3e-6) > 1e-5)
    with np.errstate(divide="ignore", invalid="ignore"):
        derivs = _model_derivatives(pi, d64, z, inv_s, u, lo, hi, live, _QUADRATIC_STEP_64, bracket=True)
    d = np.where(live & np.isfinite(derivs.step), derivs.step, 0.0)
    lo, hi = derivs.lo, derivs.hi
    u = u + d
    _transport_into(derivs.arrays, d)
    final_step = _QUADRATIC_STEP_64 if derivs.order == 2 else _FINAL_STEP

    # Final: a small step that the bracket did not stop (a clipped step is not converged).
    final = (np.abs(d) <= final_step) & (u > lo) & (u < hi) & (u >= _LOG_SMALL_LAMBDA)
    rest = live & ~final
    if rest.any():
        idx = np.nonzero(rest)[0]
        p_rest = pi[idx] * inv_s[idx, None]
        # Where lambda is small the sign of F is rounding noise: drop its bracket.
        small = u[idx] < _LOG_SMALL_LAMBDA
        lo_rest = np.where(small, -np.inf, lo[idx])
        with np.errstate(divide="ignore"):
            hi_rest = np.where(small, np.log(amax[idx]), hi[idx])
        u[idx], w[idx] = _finish_rows(p_rest, a[idx], u[idx], lo_rest, hi_rest)
    u[~live] = -np.inf
    w[~live] = 0.0
    _outputs_into(pi, inv_s, a, u, w, policy, log_ratio, lam)


def _omega_f32(z32: np.ndarray) -> np.ndarray:
    w32 = np.empty_like(z32)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        omega_f32_into(z32, w32, np.empty_like(z32), np.empty_like(z32), np.empty_like(z32))
    return w32


def _outputs_into(pi, inv_s, a, u, w, policy, log_ratio, lam) -> None:
    """``pi_{t+1} = pi omega / lambda`` and ``log_ratio = a - omega`` (``log omega - u`` where large)."""
    log_ratio_from_omega(a, u[:, None], w, out=log_ratio)
    lam[...] = np.exp(u)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = np.exp(-u) * inv_s
    # Below lambda ~ 1e-300 e^{-u} overflows: use exp(log pi + log_ratio) there;
    # lambda = 0 leaves the policy unchanged.
    plain = np.isfinite(scale)
    np.multiply(pi, w, out=policy)
    policy *= np.where(plain, scale, 0.0)[:, None]
    if not plain.all():
        idx = np.nonzero(~plain)[0]
        policy[idx] = policy_from_log_ratio(pi[idx], inv_s[idx], log_ratio[idx], u[idx])


def policy_from_log_ratio(pi, inv_s, log_ratio, u):
    """``pi e^{log_ratio}`` without overflow; rows with ``lambda = 0`` keep ``pi``."""
    with np.errstate(divide="ignore", over="ignore"):
        out = np.where(pi > 0, np.exp(np.log(pi) + log_ratio), 0.0) * inv_s[:, None]
    still = np.isneginf(u)
    out[still] = pi[still] * inv_s[still, None]
    return out


def _finish_rows(p, a, u, lo, hi):
    """Rows the fast path did not finish: safeguarded Newton on the residual of
    :mod:`._residual` (cancellation-free for small ``lambda``), each step on a
    full-precision omega. Returns ``(u, omega(a + u))`` (allocating; few rows)."""
    with np.errstate(divide="ignore"):
        log_p = np.log(p)

    def evaluate(idx, u_idx):
        w = wright_omega(a[idx] + u_idx[:, None])
        return residual(log_p[idx], log_ratio_from_omega(a[idx], u_idx[:, None], w), w, u_idx)

    u = newton_decreasing(evaluate, u, lo, hi, tol=1e-9)
    return u, wright_omega(a + u[:, None])


def solve_rows_into(pi, r, tau, total, policy, log_ratio, lam) -> np.ndarray:
    """PMD-mean for all rows: moments pass, two-point starts, threaded block solves.

    Returns ``E_pi r`` per row.
    """
    n, k = pi.shape
    mean_hi, mean_lo, var, amax, amin = row_moments(pi, r, tau, total)
    u0 = start(var, amax, moving_rows(var, amax, amin))

    def block(i0, i1):
        solve_block_into(
            pi[i0:i1], r[i0:i1], tau[i0:i1], total[i0:i1], mean_hi[i0:i1], mean_lo[i0:i1],
            u0[i0:i1], amax[i0:i1], policy[i0:i1], log_ratio[i0:i1], lam[i0:i1],
        )  # fmt: skip

    map_blocks(block, n, k)
    return mean_hi + mean_lo
