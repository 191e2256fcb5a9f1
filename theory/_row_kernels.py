r"""Fused row statistics of the batched update (numba): the mean, the masses at the reward's
extremes, the targets' moments and the derivative moments of the multiplier's equation.

Like :mod:`._kernels` (whose conventions these follow: per row, deterministic,
``nogil``, only reassociation and contraction under ``fastmath``), each stage is
one pass over memory.
"""

from __future__ import annotations

import numpy as np

from ._kernels import _jit


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
