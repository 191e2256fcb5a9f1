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

Closed forms used (pmd-math.md §3 and :mod:`.omega`), with ``t = 1/(1+w)``:
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


@_jit
def mean_and_masses(pi, r, total, rmin, rmax, first, mean_lo, mass_max, mass_min, two):
    """Per row: the mean's correction ``E[r - first]`` (``first = E r`` rounded),
    the masses at ``max r`` and ``min r``, and whether every reward is one of them."""
    n, k = pi.shape
    for i in range(n):
        hi_r, lo_r, m1 = rmax[i], rmin[i], first[i]
        corr = 0.0
        m_max = 0.0
        m_min = 0.0
        others = 0
        for j in range(k):
            x = pi[i, j]
            y = r[i, j]
            corr += x * (y - m1)
            at_max = y == hi_r
            at_min = y == lo_r
            m_max += x if at_max else 0.0
            m_min += x if at_min else 0.0
            others += not (at_max or at_min)
        mean_lo[i] = corr / total[i]
        mass_max[i] = m_max
        mass_min[i] = m_min
        two[i] = others == 0


@_jit
def target_moments(pi, r, tau, total, mean_hi, mean_lo, rows, var, amax, amin):
    """For the given rows: the targets ``a = ((r - hi) - lo)/tau``, their variance
    under ``pi`` and their extremes over the support of ``pi``."""
    k = pi.shape[1]
    for i in rows:
        hi, lo, inv_tau = mean_hi[i], mean_lo[i], 1.0 / tau[i]
        v = 0.0
        top = -np.inf
        bottom = np.inf
        for j in range(k):
            x = pi[i, j]
            a = ((r[i, j] - hi) - lo) * inv_tau
            v += x * a * a
            if x > 0.0:
                top = max(top, a)
                bottom = min(bottom, a)
        var[i] = v / total[i]
        amax[i] = top
        amin[i] = bottom


@_jit
def targets32(r, mean_hi, mean_lo, tau, u, out):
    """``out = float32(a + u)`` with ``a = ((r - hi) - lo)/tau``."""
    n, k = r.shape
    for i in range(n):
        hi, lo, inv_tau, ui = mean_hi[i], mean_lo[i], 1.0 / tau[i], u[i]
        for j in range(k):
            out[i, j] = ((r[i, j] - hi) - lo) * inv_tau + ui


@_jit
def moments(pi, w, inv_s, order, out):
    """``out[k, i] = E_pi omega^{(k)}`` for ``k <= order`` (2, 3 or 4), in float64."""
    n, k = pi.shape
    for i in range(n):
        m0 = 0.0
        m1 = 0.0
        m2 = 0.0
        m3 = 0.0
        m4 = 0.0
        if order == 2:
            for j in range(k):
                x = pi[i, j]
                ww = np.float64(w[i, j])
                t = 1.0 / (1.0 + ww)
                d1 = ww * t
                m0 += x * ww
                m1 += x * d1
                m2 += x * d1 * t * t
        else:
            for j in range(k):
                x = pi[i, j]
                ww = np.float64(w[i, j])
                t = 1.0 / (1.0 + ww)
                t2 = t * t
                d1 = ww * t
                d2 = d1 * t2
                d3 = d2 * t2
                m0 += x * ww
                m1 += x * d1
                m2 += x * d2
                m3 += x * d3 * (1.0 - 2.0 * ww)
                m4 += x * d3 * t2 * (1.0 + ww * (6.0 * ww - 8.0))
        s = inv_s[i]
        out[0, i] = m0 * s
        out[1, i] = m1 * s
        out[2, i] = m2 * s
        if order >= 3:
            out[3, i] = m3 * s
        if order >= 4:
            out[4, i] = m4 * s


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
