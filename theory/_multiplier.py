r"""PMD-mean's multiplier and update for many prompts at once.

For each row (prompt) with old policy ``pi`` and targets ``a = (r - r̄)/tau``
(``E_pi a = 0``), find ``u = log lambda`` with

.. math:: M(u) = \sum_y \pi(y)\, \omega(a(y) + u) = e^u ,

which is ``sum_y pi_{t+1}(y) = 1`` written with ``pi_{t+1} = pi omega/lambda``
(docs/math.md §3). ``F(u) = log M(u) - u`` is decreasing, with its root in
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
   ``lambda < 1e-2`` (where ``F`` is a difference of nearly equal numbers and
   the model ill-conditioned), finish in :func:`_finish_rows`: safeguarded
   Newton steps (:mod:`._rootfind`) on the residual of :mod:`._residual`,
   cancellation-free for small ``lambda``, so ``lambda`` keeps full relative
   accuracy.

Each stage is one fused pass (:mod:`._kernels`), except the
single-precision omega (numpy's SIMD ``exp``/``log``). Blocks of rows are
solved in parallel threads with preallocated work arrays
(``_blocks.scratch``); every decision is per row, so a row's result does
not depend on the rest of the batch.
"""

from __future__ import annotations

import math

import numpy as np

from . import _kernels, _row_kernels, binary
from ._blocks import RowStats, map_blocks, scratch
from ._residual import LOG_LAMBDA_SWITCH
from ._rootfind import solve_rows
from .omega import omega_f32_into

_F32 = np.float32
#: |d| below which the cubic model and the Taylor transport are exact to rounding.
_FINAL_STEP = 1e-4
#: |d| up to which quadratic models are used: float32 (remainder |d|^3/6 < 1e-5,
#: so Halley refines the transported omega exactly) and float64 (remainder 2e-16).
_QUADRATIC_STEP_32 = 0.039
_QUADRATIC_STEP_64 = 1e-5
#: Below this lambda, F's rounding matters: rows finish on the cancellation-free residual.
_LOG_SMALL_LAMBDA = LOG_LAMBDA_SWITCH


def _model_step(m: np.ndarray, u: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Solve ``log(sum_k m_k d^k / k!) = u + d`` for ``d`` (per row).

    Newton from ``d = 0`` on the polynomial model (``m`` has one row per
    order), with ``u + d`` kept inside ``[lo, hi]`` and ``|d| <= 2``.
    """
    order = m.shape[0] - 1
    coef = [m[j] / math.factorial(j) for j in range(order + 1)]
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


def _model(p, w, inv_s, u, lo, hi, rows, quadratic_limit, high_order, bracket=False):
    """Moments of omega's derivatives and the model step: quadratic, or of
    ``high_order`` where some step of ``rows`` exceeds ``quadratic_limit``.

    With ``bracket``, ``[lo, hi]`` is first narrowed by the sign of
    ``F = log m0 - u``, exact at this precision. Returns ``(step, order, lo, hi)``.
    """
    m = np.empty((high_order + 1, p.shape[0]))
    _row_kernels.moments(p, w, inv_s, 2, m)
    if bracket:
        with np.errstate(divide="ignore", invalid="ignore"):
            f = np.log(m[0]) - u
        lo = np.where(f > 0, np.maximum(lo, u), lo)
        hi = np.where(f < 0, np.minimum(hi, u), hi)
    step = _model_step(m[:3], u, lo, hi)
    if np.abs(np.where(rows, step, 0.0)).max(initial=0.0) <= quadratic_limit:
        return step, 2, lo, hi
    _row_kernels.moments(p, w, inv_s, high_order, m)
    return _model_step(m, u, lo, hi), high_order, lo, hi


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


def _targets(r, mean_hi, mean_lo, tau) -> np.ndarray:
    return ((r - mean_hi[:, None]) - mean_lo[:, None]) / tau[:, None]


def solve_block_into(pi, r, tau, st: RowStats, u0, policy, log_ratio, lam) -> None:
    """PMD-mean's update for a block of rows from the start ``u0`` (``-inf``:
    lambda = 0), written into ``policy``, ``log_ratio`` (n, K) and ``lam`` (n,).

    ``st`` holds the block's :class:`._blocks.RowStats` (rows renormalised by
    ``st.total``)."""
    n, k = pi.shape
    inv_s = 1.0 / st.total
    target = (r, st.mean_hi, st.mean_lo, tau)
    live = np.isfinite(u0)
    u = np.where(live, u0, 0.0)
    with np.errstate(divide="ignore"):
        hi = np.where(live, np.log(st.amax), 0.0)
    lo = np.full(n, -np.inf)

    # Single precision: one model step. The float32 residual is good to ~1e-6
    # only, so rows with small lambda are left where they are.
    z32, w32 = scratch("z32", n, k, _F32), scratch("w32", n, k, _F32)
    t1, t2, t3 = (scratch(f"t{j}", n, k, _F32) for j in range(3))
    _row_kernels.targets32(*target, u, z32)
    moving = live & (u >= _LOG_SMALL_LAMBDA)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        omega_f32_into(z32, w32, t1, t2, t3)
        d, order, _, _ = _model(pi, w32, inv_s, u, lo, hi, moving, _QUADRATIC_STEP_32, 4)
    d = np.where(moving & np.isfinite(d), d, 0.0)
    # Error of the transported omega: the Taylor remainder, |d|^{order+1}/(order+1)!.
    err = np.abs(d) ** (order + 1) / math.factorial(order + 1)
    far = np.nonzero(err > 1e-4)[0]
    u = u + d
    if far.size:  # too far for the Taylor series: start again there (error 3e-6)
        w32[far] = _omega_f32(_targets(r[far], st.mean_hi[far], st.mean_lo[far], tau[far]) + u[far, None])
        d[far], err[far] = 0.0, 0.0

    # Double precision: transport and refine omega at u (Halley is exact from
    # within 1e-5, Fritsch from within 1e-4), then one model step.
    w = scratch("w", n, k)
    fourth = max(err.max(initial=0.0), 3e-6) > 1e-5
    _kernels.refine(w32, d, order, *target, u, fourth, w, scratch("log", 1, k)[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        d, order, lo, hi = _model(pi, w, inv_s, u, lo, hi, live, _QUADRATIC_STEP_64, 3, bracket=True)
    d = np.where(live & np.isfinite(d), d, 0.0)
    u_new = u + d
    # Final: a small step that the bracket did not stop (a clipped step is not converged).
    final_step = _QUADRATIC_STEP_64 if order == 2 else _FINAL_STEP
    final = (np.abs(d) <= final_step) & (u_new > lo) & (u_new < hi) & (u_new >= _LOG_SMALL_LAMBDA)
    rest = np.nonzero(live & ~final)[0]
    if rest.size:
        a_rest = _targets(r[rest], st.mean_hi[rest], st.mean_lo[rest], tau[rest])
        # Where lambda is small the sign of F is rounding noise: drop its bracket.
        small = u_new[rest] < _LOG_SMALL_LAMBDA
        with np.errstate(divide="ignore"):
            hi_rest = np.where(small, np.log(st.amax[rest]), hi[rest])
        u_new[rest], w[rest] = _finish_rows(
            pi[rest] * inv_s[rest, None], a_rest, u_new[rest], np.where(small, -np.inf, lo[rest]), hi_rest
        )
        d[rest] = 0.0
    u_new[~live] = -np.inf
    lam[...] = np.exp(u_new)
    _kernels.outputs(pi, w, d, order, *target, u_new, inv_s, policy, log_ratio)


def _omega_f32(z: np.ndarray) -> np.ndarray:
    z32 = z.astype(_F32)
    w32 = np.empty_like(z32)
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        omega_f32_into(z32, w32, np.empty_like(z32), np.empty_like(z32), np.empty_like(z32))
    return w32


def policy_from_log_ratio(pi, inv_s, log_ratio, u):
    """``pi e^{log_ratio}`` without overflow; rows with ``lambda = 0`` keep ``pi``."""
    with np.errstate(divide="ignore", over="ignore"):
        out = np.where(pi > 0, np.exp(np.log(pi) + log_ratio), 0.0) * inv_s[:, None]
    still = np.isneginf(u)
    out[still] = pi[still] * inv_s[still, None]
    return out


def _finish_rows(p, a, u, lo, hi):
    """Rows the fast path did not finish: safeguarded Newton (:mod:`._rootfind`) on the
    residual of :mod:`._residual` (cancellation-free for small ``lambda``), each step on a
    full-precision omega. Returns ``(u, omega(a + u))``."""
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    u, _, w = solve_rows(a, log_p, u, lo, hi, tol=1e-9)
    return u, w


def solve_rows_into(pi, r, tau, st: RowStats, policy, log_ratio, lam) -> None:
    """PMD-mean for all rows: two-point starts, then threaded block solves."""
    n, k = pi.shape
    u0 = start(st.var, st.amax, moving_rows(st.var, st.amax, st.amin))

    def block(i0, i1):
        sl = slice(i0, i1)
        solve_block_into(pi[sl], r[sl], tau[sl], st.rows(sl), u0[sl], policy[sl], log_ratio[sl], lam[sl])

    map_blocks(block, n, k)
