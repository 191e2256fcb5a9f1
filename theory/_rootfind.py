"""Safeguarded Newton iteration for ``u = log lambda``, row by row.

Used wherever a robust solve is needed (the two-point problem, and rows the
fast batched path leaves unfinished). The iteration itself is the kernel
:func:`._kernels.newton_rows`; per row it is Numerical Recipes' ``rtsafe``:

* the residual of :mod:`._residual` has the sign of ``E e^s - 1``, which is
  decreasing in ``u``; the iterates keep a bracket ``[lo, hi]`` with
  ``f(lo) > 0 > f(hi)`` (a step in the wrong direction, possible where
  the small-``lambda`` residual is not monotone, leaves it);
* the step is Halley's (third order) where the second derivative is finite,
  Newton's otherwise;
* a step that leaves the bracket, or fails to halve the step before last, is
  replaced by halving the bracket or, while the bracket is very wide (or has
  no lower end), by a search downward from its top with doubling steps;
* a row stops once its Newton step is at most ``tol``, or its Halley step at
  most ``tol**(2/3)`` (absolute in ``u``, so relative in ``lambda``; with
  quadratic, respectively cubic, convergence ``tol = 1e-9`` leaves an error
  near 1e-18), and takes that last step when it stays inside the bracket.
"""

from __future__ import annotations

import numpy as np

from . import _kernels


def solve_rows(a, log_pi, u, lo, hi, tol: float = 1e-9, bounded: bool = False):
    """Roots ``u`` for rows of targets ``a`` (n, K) with weights ``log pi``.

    ``u``, ``lo``, ``hi`` (n,) are the starts and bracket ends (``lo`` may be
    ``-inf``). With ``bounded`` (only valid when ``E_pi a = 0`` to rounding),
    a row that needs the safeguard while it has no lower end gets
    ``log((E e^a - 1)/E e^{2a})``, a lower bound of the root. Returns
    ``(u, s, omega)``: the roots, and the log-ratios and omega there.
    """
    a = np.ascontiguousarray(a, dtype=np.float64)
    log_pi = np.ascontiguousarray(log_pi, dtype=np.float64)
    u, lo, hi = (np.array(x, dtype=np.float64).reshape(-1) for x in (u, lo, hi))
    s, w = np.empty_like(a), np.empty_like(a)
    iterations = np.empty(u.size, dtype=np.int64)
    _kernels.newton_rows(a, log_pi, u, lo, hi, float(tol), bool(bounded), s, w, iterations)
    if (iterations < 0).any():
        raise RuntimeError("PMD-mean multiplier did not converge; please report this input")
    return u, s, w
