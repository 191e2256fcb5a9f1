"""Safeguarded Newton iteration for many decreasing 1-D functions at once.

Used for ``u = log lambda`` wherever a robust solve is needed (the two-point
problem, and rows the fast batched path leaves unfinished). The safeguard is
that of Numerical Recipes' ``rtsafe``: the iterates keep a bracket
``[lo, hi]`` with ``f(lo) > 0 > f(hi)``; a Newton step that leaves it, or
that fails to halve the step before last, is replaced by halving the
bracket, or, while the bracket is very wide (or has no lower end), by a
search downward from its top with doubling steps.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

_MAX_ITER = 200


def newton_decreasing(
    evaluate: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    u: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    tol: float,
    lower_bound: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Roots of decreasing functions, one per entry of ``u``.

    ``evaluate(idx, u[idx])`` returns ``(f, df/du, d2f/du2)`` for the entries
    ``idx``; where the second derivative is finite the step is Halley's
    (third order), else Newton's.
    Stops an entry once its Newton step is at most ``tol``, or its Halley step
    at most ``tol**(2/3)`` (absolute: in ``u = log lambda`` that is the
    relative precision of ``lambda``; with quadratic, respectively cubic,
    convergence ``tol = 1e-9`` leaves an error near 1e-18), and applies that
    last step when it stays inside the bracket. ``lower_bound(idx)``,
    if given, supplies a lower end for entries that need the safeguard while
    their bracket has none (computed only then).
    """
    u, lo, hi = (np.array(x, dtype=np.float64) for x in (u, lo, hi))
    dx, dx_old = np.full(u.shape, np.inf), np.full(u.shape, np.inf)
    active = np.arange(u.size)
    for _ in range(_MAX_ITER):
        if not active.size:
            return u
        ua = u[active]
        f, dfdu, d2fdu2 = evaluate(active, ua)
        lo_a = np.where(f > 0, ua, lo[active])
        hi_a = np.where(f < 0, ua, hi[active])
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            step = -f / dfdu
            halley = 1.0 + 0.5 * step * d2fdu2 / dfdu  # = 1 - f f'' / (2 f'^2)
            cubic = np.isfinite(halley) & (halley > 0.5)
            step = np.where(cubic, step / halley, step)
        new = ua + step
        inside = np.isfinite(new) & (new > lo_a) & (new < hi_a)
        newton_ok = inside & (np.abs(step) <= 0.5 * dx_old[active])
        done = (f == 0) | (np.abs(step) <= np.where(cubic, tol ** (2.0 / 3.0), tol))
        if lower_bound is not None:
            need = np.nonzero(~newton_ok & ~done & np.isneginf(lo_a))[0]
            if need.size:
                lo_a[need] = np.minimum(lower_bound(active[need]), ua[need])
        expand = hi_a - 2.0 * np.maximum(1.0, dx[active])  # doubles the last move
        fallback = np.where((hi_a - lo_a > 64.0) & (expand > lo_a), expand, 0.5 * (lo_a + hi_a))
        u_next = np.where(done, np.where(inside, new, ua), np.where(newton_ok, new, fallback))
        lo[active], hi[active] = lo_a, hi_a
        dx_old[active], dx[active] = dx[active], np.abs(u_next - ua)
        u[active] = u_next
        active = active[~done]
    raise RuntimeError("PMD-mean multiplier did not converge; please report this input")
