r"""Fused inner loops of the batched update (numba).

numpy spends one pass over memory per operation; the update's arithmetic
(targets, derivative moments, Taylor transport, the double-precision
refinement, the outputs) is a few dozen operations per entry, so it is
memory-bound there. These kernels do each stage in one pass, row by row.
The single-precision Wright omega and the row reductions (min, max, sums)
stay in numpy, whose SIMD loops beat scalar code for them.

Every kernel is per row and deterministic; ``nogil`` lets the thread pool
of :mod:`._blocks` run blocks in parallel. ``fastmath`` allows only
reassociation (vectorised sums) and contraction (FMA): nothing assumes the
values are finite.

Closed forms used (docs/math.md §3 and :mod:`.omega`), with ``t = 1/(1+w)``:
``omega' = w t``, ``omega'' = w t^3``, ``omega''' = w (1 - 2w) t^5``,
``omega'''' = w (1 - 8w + 6w^2) t^7``.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

_jit = nb.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
_inline = nb.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"}, inline="always")

#: Below this, omega(z) = e^z to double precision; above _Z_LARGE, z - log z + log z / z.
_Z_SMALL = -40.0
_Z_LARGE = 1e15
#: Where omega exceeds this, a - omega would lose more than 4 ulps of s: use log(omega) - u.
CANCELLATION = 16.0
#: Below this u = log lambda the residual is the cancellation-free H (see ._residual).
LOG_LAMBDA_SWITCH = math.log(0.01)
#: Below this |x|, e^x - 1 - x is summed as a series; above it the direct form
#: loses at most 2 eps / 0.25 to cancellation.
_SERIES = 0.25
#: Iteration cap of the safeguarded Newton solve (it converges in well under 60).
MAX_NEWTON_ITER = 200


@_inline
def _derivative(w, k):
    """``omega^{(k)}`` from ``w = omega`` (k = 0..4)."""
    if k == 0:
        return w
    t = 1.0 / (1.0 + w)
    if k == 1:
        return w * t
    t2 = t * t
    if k == 2:
        return w * t * t2
    if k == 3:
        return w * (1.0 - 2.0 * w) * t * t2 * t2
    return w * (1.0 + w * (6.0 * w - 8.0)) * t * t2 * t2 * t2


@_inline
def _transport(w, d, order):
    """``omega(z + d) ~ sum_{k <= order} omega^{(k)}(z) d^k / k!`` from ``w = omega(z)``
    (order 0, 2, 3 or 4; Horner in ``d``)."""
    if order == 0 or d == 0.0:
        return w
    t = 1.0 / (1.0 + w)
    t2 = t * t
    # sum_k c_k d^k with c_k = omega^{(k)} / k!, all sharing the factor w t.
    acc = 0.5 * t2  # omega''/(2 omega')
    if order >= 3:
        c3 = (1.0 - 2.0 * w) * t2 * t2 / 6.0
        if order == 4:
            c3 += d * (1.0 + w * (6.0 * w - 8.0)) * t2 * t2 * t2 / 24.0
        acc += d * c3
    return w + d * w * t * (1.0 + d * acc)


@_inline
def _omega_refined(w, z, fourth_order):
    """One Fritsch (fourth order) or Halley (third order) step for ``w + log w = z``,
    or the exact series outside ``[-40, 1e15]``."""
    if z < _Z_SMALL:
        return math.exp(z)
    if z > _Z_LARGE:
        if math.isinf(z):
            return np.inf
        lz = math.log(z)
        return z - lz + lz / z
    r = z - w - math.log(w)
    wp1 = w + 1.0
    if fourth_order:
        q = 2.0 * wp1 * (wp1 + (2.0 / 3.0) * r)
        return w * (1.0 + r / wp1 * (q - r) / (q - 2.0 * r))
    return w + 2.0 * r * w * wp1 / (2.0 * wp1 * wp1 - r)


@_inline
def _omega(z):
    """omega(z) from scratch: a Winitzki-type start (relative error < 2e-2), then two
    Fritsch steps (fourth order: 2e-2 -> 1e-7 -> exact), or the series outside
    ``[-40, 1e15]``. Scalar; the batched path uses numpy's SIMD start instead."""
    if z < _Z_SMALL or z > _Z_LARGE:
        return _omega_refined(1.0, z, True)
    x = math.exp(-abs(z))
    big = max(z, 0.0) + math.log1p(x)  # log(1 + e^z)
    w = big * (1.0 - math.log1p(big) / (2.0 + big))
    return _omega_refined(_omega_refined(w, z, True), z, True)


@_inline
def _log_ratio(a, u, w):
    """``s = a - omega(a + u)``, as ``log omega - u`` where omega is large (cancellation)."""
    return math.log(w) - u if w > CANCELLATION else a - w


@_inline
def _log_expm1_minus_x(x):
    """``log(e^x - 1 - x)``: a Taylor series for |x| < 1/4 (tail 0.25^12/14! < 1e-18),
    ``x + log1p(-(1 + x) e^{-x})`` above 1, the direct form between."""
    if x == 0.0:
        return -np.inf
    if abs(x) < _SERIES:
        acc = 1.0 + x / 14.0
        for k in range(13, 2, -1):
            acc = 1.0 + x * acc / k
        return math.log(0.5) + 2.0 * math.log(abs(x)) + math.log(acc)
    if x > 1.0:
        return x + math.log1p(-(1.0 + x) * math.exp(-x))
    return math.log(math.expm1(x) - x)


@_jit
def log_expm1_minus_x_flat(x, out):
    for i in range(x.size):
        out[i] = _log_expm1_minus_x(x[i])


@_inline
def _logaddexp(x, y):
    if x == -np.inf:
        return y
    if y == -np.inf:
        return x
    m = max(x, y)
    return m + math.log1p(math.exp(-abs(x - y)))


@_inline
def _residual_row(a, log_pi, i, ui, moved, s, w):
    """Row ``i`` at ``u = ui``: ``w = omega(a + u)``, ``s`` its log-ratios, and
    ``(f, df/du, d2f/du2)`` for the residual of :mod:`._residual` (``F``, or ``H``
    when ``u`` is small, whose second derivative is reported as NaN).

    Where ``|moved| <= 0.08``, ``w`` holds omega at ``ui - moved`` on entry: it is
    carried over by its quadratic Taylor polynomial (error below 1e-4) and refined
    by one Fritsch step, instead of computed from scratch."""
    k = a.shape[1]
    warm = abs(moved) <= 0.08
    # log sum pi e^s, and the largest term, for the softmax weights.
    top = -np.inf
    for j in range(k):
        z = a[i, j] + ui
        if warm:
            w[i, j] = _omega_refined(_transport(w[i, j], moved, 2), z, True)
        else:
            w[i, j] = _omega(z)
        s[i, j] = _log_ratio(a[i, j], ui, w[i, j])
        top = max(top, log_pi[i, j] + s[i, j])
    if ui >= LOG_LAMBDA_SWITCH:
        total = 0.0
        g1 = 0.0
        g2 = 0.0
        for j in range(k):
            v = math.exp(log_pi[i, j] + s[i, j] - top)
            t = 1.0 / (1.0 + w[i, j])
            d1 = w[i, j] * t
            total += v
            g1 += v * d1
            g2 += v * (d1 * d1 - d1 * t * t)
        df = -g1 / total
        return top + math.log(total), df, g2 / total - df * df
    log_p = -np.inf
    log_n = -np.inf
    for j in range(k):
        log_p = _logaddexp(log_p, log_pi[i, j] + _log_expm1_minus_x(s[i, j]))
        log_n = _logaddexp(log_n, log_pi[i, j] + s[i, j] + ui)  # log omega = s + u
    dlogp = 0.0
    dlogn = 0.0
    for j in range(k):
        sj = s[i, j]
        t = 1.0 / (1.0 + w[i, j])
        if sj != 0.0 and log_pi[i, j] > -np.inf:
            # (e^s - 1) = sign(s) exp(log|e^s - 1|), kept in log space against overflow.
            log_abs = max(sj, 0.0) + math.log(-math.expm1(-abs(sj)))
            dlogp -= math.copysign(math.exp(log_pi[i, j] + log_abs - log_p), sj) * w[i, j] * t
        dlogn += math.exp(log_pi[i, j] + sj + ui - log_n) * t
    return log_p - log_n, dlogp - dlogn, np.nan


@_jit
def residual_rows(a, log_pi, u, moved, s, w, f, df, d2f):
    """:func:`_residual_row` for every row ``i`` at ``u[i]`` (``moved[i]`` as there)."""
    for i in range(a.shape[0]):
        f[i], df[i], d2f[i] = _residual_row(a, log_pi, i, u[i], moved[i], s, w)


@_inline
def _log_lower_bound(a, log_pi, i):
    """``log lambda`` is at least ``log((E e^a - 1)/E e^{2a})`` when ``E a = 0``:
    ``lambda -> E e^s`` is convex with slope ``-E e^{2a}`` at 0, and
    ``E e^a - 1 = E[e^a - 1 - a]``, summed in log space."""
    num = -np.inf
    den = -np.inf
    for j in range(a.shape[1]):
        num = _logaddexp(num, log_pi[i, j] + _log_expm1_minus_x(a[i, j]))
        den = _logaddexp(den, log_pi[i, j] + 2.0 * a[i, j])
    return num - den


@_jit
def newton_rows(a, log_pi, u, lo, hi, tol, bounded, s, w, iterations):
    """Root ``u = log lambda`` of the residual for every row, safeguarded as in
    Numerical Recipes' ``rtsafe`` (see :mod:`._rootfind`); on exit ``s`` and ``w`` hold
    the row's log-ratios and omega at the root, and ``iterations[i]`` the count used
    (``-1`` where the row did not converge)."""
    tol_halley = tol ** (2.0 / 3.0)
    for i in range(a.shape[0]):
        ui, lo_i, hi_i = u[i], lo[i], hi[i]
        dx = np.inf
        dx_old = np.inf
        seen = np.nan
        iterations[i] = -1
        for it in range(MAX_NEWTON_ITER):
            moved = ui - seen if np.isfinite(seen) else np.inf
            f, dfdu, d2fdu2 = _residual_row(a, log_pi, i, ui, moved, s, w)
            seen = ui
            if f > 0:
                lo_i = ui
            if f < 0:
                hi_i = ui
            step = -f / dfdu
            halley = 1.0 + 0.5 * step * d2fdu2 / dfdu  # = 1 - f f'' / (2 f'^2)
            cubic = np.isfinite(halley) and halley > 0.5
            if cubic:
                step /= halley
            new = ui + step
            inside = np.isfinite(new) and lo_i < new < hi_i
            if f == 0 or abs(step) <= (tol_halley if cubic else tol):
                if inside:
                    ui = new
                iterations[i] = it + 1
                break
            newton_ok = inside and abs(step) <= 0.5 * dx_old
            if not newton_ok and bounded and lo_i == -np.inf:
                bound = _log_lower_bound(a, log_pi, i)
                if np.isfinite(bound):
                    # A rounding-sized margin keeps the bound valid where it is nearly tight.
                    lo_i = min(bound - 1e-9 * max(1.0, abs(bound)), ui)
            if newton_ok:
                u_next = new
            else:
                expand = hi_i - 2.0 * (max(1.0, dx) if dx < np.inf else 1.0)  # doubles the last move
                u_next = expand if (hi_i - lo_i > 64.0 and expand > lo_i) else 0.5 * (lo_i + hi_i)
            dx_old = dx
            dx = abs(u_next - ui)
            ui = u_next
        u[i] = ui
        # The last step is below 1e-6: omega(z + d) = w + w t d + w t^3 d^2 / 2 to
        # within 1e-18, and s moves by minus that change.
        d = ui - seen
        if d != 0.0 and np.isfinite(d):
            for j in range(a.shape[1]):
                wj = w[i, j]
                t = 1.0 / (1.0 + wj)
                change = wj * t * d * (1.0 + 0.5 * t * t * d)
                w[i, j] = wj + change
                s[i, j] -= change


@_jit
def refine(w32, d, order, r, mean_hi, mean_lo, tau, u, fourth_order, out, log_buf):
    """Double-precision omega at ``a + u`` from the single-precision omega at
    ``a + u - d``: Taylor transport by ``d``, then one Fritsch or Halley step.
    ``log_buf`` (length K) is scratch: the logarithms are taken in a loop of
    their own, which keeps the arithmetic around them vectorised."""
    n, k = r.shape
    for i in range(n):
        hi, lo, inv_tau, ui, di = mean_hi[i], mean_lo[i], 1.0 / tau[i], u[i], d[i]
        for j in range(k):
            out[i, j] = _transport(np.float64(w32[i, j]), di, order)
        for j in range(k):
            log_buf[j] = math.log(out[i, j])
        for j in range(k):
            z = ((r[i, j] - hi) - lo) * inv_tau + ui
            w = out[i, j]
            if _Z_SMALL <= z <= _Z_LARGE:
                rr = z - w - log_buf[j]
                wp1 = w + 1.0
                if fourth_order:
                    q = 2.0 * wp1 * (wp1 + (2.0 / 3.0) * rr)
                    out[i, j] = w * (1.0 + rr / wp1 * (q - rr) / (q - 2.0 * rr))
                else:
                    out[i, j] = w + 2.0 * rr * w * wp1 / (2.0 * wp1 * wp1 - rr)
            else:
                out[i, j] = _omega_refined(w, z, fourth_order)


@_jit
def refine_flat(w, z, fourth_order, out):
    """``out = omega(z)`` from the start ``w`` (flat arrays), as :func:`_omega_refined`."""
    for i in range(z.size):
        out[i] = _omega_refined(np.float64(w[i]), z[i], fourth_order)


@_jit
def derivatives(w, order, out):
    """``out[k] = omega^{(k)}`` for ``k <= order`` from ``w = omega`` (flat arrays)."""
    for i in range(w.size):
        for k in range(order + 1):
            out[k, i] = _derivative(w[i], k)


@_jit
def outputs(pi, w, d, order, r, mean_hi, mean_lo, tau, u, inv_s, policy, log_ratio):
    """Carry omega to ``u`` (from ``u - d``) and write ``log pi_{t+1}/pi_t = a - omega``
    (``log omega - u`` where omega > 16) and ``pi_{t+1} = pi omega e^{-u} / sum pi``.

    Rows with ``u = -inf`` (lambda = 0) keep ``pi`` and get ``log_ratio = a``;
    where ``e^{-u}`` overflows the policy is formed from the log-ratio.
    """
    n, k = pi.shape
    for i in range(n):
        hi, lo, inv_tau, ui, di, si = mean_hi[i], mean_lo[i], 1.0 / tau[i], u[i], d[i], inv_s[i]
        if math.isinf(ui):
            for j in range(k):
                log_ratio[i, j] = ((r[i, j] - hi) - lo) * inv_tau
                policy[i, j] = pi[i, j] * si
            continue
        scale = math.exp(-ui) * si
        plain = math.isfinite(scale)
        for j in range(k):
            ww = _transport(w[i, j], di, order)
            a = ((r[i, j] - hi) - lo) * inv_tau
            s = math.log(ww) - ui if ww > CANCELLATION else a - ww
            log_ratio[i, j] = s
            x = pi[i, j]
            if plain:
                policy[i, j] = x * ww * scale
            else:
                policy[i, j] = math.exp(math.log(x) + s) * si if x > 0.0 else 0.0


@_jit
def two_valued_outputs(pi, r, rmax, step, shift, base, rho_lo, rho_step, policy, log_ratio):
    """Rows with two reward values: ``m = [r == max r]``,
    ``log_ratio = (m step + shift) + base`` (exact on the side of smaller
    magnitude) and ``policy = pi (rho_lo + m rho_step)``."""
    n, k = pi.shape
    for i in range(n):
        top, st, sh, bs, rl, rs = rmax[i], step[i], shift[i], base[i], rho_lo[i], rho_step[i]
        for j in range(k):
            m = 1.0 if r[i, j] == top else 0.0
            log_ratio[i, j] = (m * st + sh) + bs
            policy[i, j] = pi[i, j] * (rl + m * rs)
