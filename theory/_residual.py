r"""The normalisation residual of PMD-mean's update, accurate in every regime.

At ``u = log lambda`` the candidate update has log-ratios
``s = a - omega(a + u)`` and the constraint is ``E_pi e^s = 1``. Two
residuals with the sign of ``E e^s - 1`` are used:

* ``F = log E e^s``: accurate when ``lambda >= 0.01``. Its rounding error, a
  few ulps, moves the root by about ``eps / |dF/du|`` in ``u``, and
  ``|dF/du|`` is of the order of ``lambda``: at ``lambda >= 0.01`` that is a
  few ulps of ``lambda`` (at most 3e-15 against 60-digit references).
  With softmax weights ``v = pi e^s / sum pi e^s``, ``s' = -omega'`` and
  ``s'' = -omega''``: ``F' = E_v s'`` and ``F'' = E_v[s'' + s'^2] - F'^2``.
* ``H = log P - log N`` with ``P = E[e^s - 1 - s]`` and ``N = E omega``.
  Because ``E a = 0``, ``E s = -E omega`` and so ``E e^s - 1 = P - N``;
  both are sums of non-negative terms of size ``lambda``, summed in log
  space, so ``H`` keeps full relative accuracy as ``lambda -> 0`` where
  ``F`` would be a difference of nearly equal numbers.
  ``d log P/du = -E[(e^s - 1) omega'] / P`` and ``d log N/du = E[omega'] / N``.

The evaluation (omega, log-ratios and residual of a row) is one fused
kernel, :func:`._kernels.residual_rows`; :mod:`._rootfind` iterates on it.
"""

from __future__ import annotations

import numpy as np

from . import _kernels

#: Below this ``u = log lambda`` the residual is ``H``; above it, ``F``.
LOG_LAMBDA_SWITCH = _kernels.LOG_LAMBDA_SWITCH


def evaluate(a: np.ndarray, log_pi: np.ndarray, u: np.ndarray, previous=None):
    """``(f, df/du, d2f/du2, s, omega)`` at ``u`` for rows of targets ``a`` (n, K).

    ``f`` is ``F`` where ``u >= LOG_LAMBDA_SWITCH`` and ``H`` below (there the
    second derivative is NaN: callers take a Newton step). ``previous = (u0, w0)``,
    omega at nearby ``u0``, saves recomputing omega from scratch.
    """
    n, k = a.shape
    s = np.empty((n, k))
    if previous is None:
        w, moved = np.empty((n, k)), np.full(n, np.inf)
    else:
        w, moved = np.array(previous[1], dtype=np.float64), u - previous[0]
        moved = np.where(np.isfinite(moved), moved, np.inf)
    f, df, d2f = np.empty(n), np.empty(n), np.empty(n)
    _kernels.residual_rows(np.ascontiguousarray(a), np.ascontiguousarray(log_pi), u, moved, s, w, f, df, d2f)
    return f, df, d2f, s, w


def log_expm1_minus_x(x) -> np.ndarray:
    """``log(e^x - 1 - x)`` elementwise, without overflow or underflow (``-inf`` at 0)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty(x.size)
    _kernels.log_expm1_minus_x_flat(np.ascontiguousarray(x).reshape(-1), out)
    return out.reshape(x.shape)
