r"""The Wright omega function for real arguments, fast and to full precision.

:math:`\omega(z) = W(e^z)` is the solution of :math:`\omega + \log\omega = z`
(principal branch). PMD-mean's update is written with it (docs/math.md §3):
``log pi_{t+1}/pi_t = a - omega(a + log lambda)``, which never forms
``e^a`` and so stays finite for ``a = 1/tau = 1e4``.

Derivatives follow from :math:`\omega' = \omega/(1+\omega)`; with
:math:`t = 1/(1+\omega)`:

* :math:`\omega'   = \omega t`
* :math:`\omega''  = \omega t^3`
* :math:`\omega''' = \omega (1 - 2\omega) t^5`
* :math:`\omega'''' = \omega (1 - 8\omega + 6\omega^2) t^7`

``scipy.special.wrightomega`` is accurate but costs about 80 ns per value,
which would dominate the batched update. Here the value is built in two
stages: a single-precision start (a Winitzki-type formula plus one Fritsch
step, relative error below 3e-6), then one double-precision Fritsch step,
which is fourth order, so the result is exact to rounding. Arguments outside
``[-40, 1e15]`` use the series ``e^z`` and ``z - log z + log z / z``, exact
there to double precision.

The single-precision stage is numpy (its SIMD ``exp`` and ``log``); the
double-precision step and the derivatives are the scalar kernels of
:mod:`._kernels`, shared with the batched solver. The ``_into`` functions
work in caller-provided arrays: fresh large temporaries cost more in page
faults than the arithmetic done in them.
"""

from __future__ import annotations

import numpy as np

from . import _kernels
from ._validation import as_float_array

#: Single-precision arguments are clamped to [-80, 3e38]: e^-80 is a normal float32.
_Z32_MIN, _Z32_MAX = -80.0, 3e38
#: Elements per block in :func:`wright_omega`.
_BLOCK = 1 << 15


def start_f32_into(z: np.ndarray, out: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> None:
    """Winitzki-type start, relative error < 2e-2 for ``z`` in [-80, 3e38].

    ``L = log(1 + e^z)`` (with ``log(1+x) ~ x(6+x)/(6+4x)``, enough for a
    start), then ``omega ~ L (1 - log(1+L) / (2+L))``.
    """
    np.abs(z, out=t1)
    np.negative(t1, out=t1)
    np.exp(t1, out=t1)  # x = e^{-|z|}
    np.multiply(t1, 4, out=t2)
    t2 += 6
    np.add(t1, 6, out=out)
    out *= t1
    out /= t2
    np.maximum(z, 0, out=t2)
    out += t2  # L
    np.add(out, 1, out=t1)
    np.log(t1, out=t1)
    np.add(out, 2, out=t2)
    t1 /= t2
    np.subtract(1, t1, out=t1)
    out *= t1


def fritsch_into(w: np.ndarray, z: np.ndarray, r: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> None:
    """One Fritsch–Shafer–Crowley step for ``w + log w = z``, updating ``w`` (fourth order).

    With ``r = z - w - log w`` and ``q = 2 (1+w) (1 + w + 2r/3)``:
    ``w <- w (1 + r/(1+w) * (q - r)/(q - 2r))``, in the dtype of ``w``.
    """
    np.log(w, out=r)
    np.subtract(z, r, out=r)
    r -= w
    np.add(w, 1, out=t1)  # 1 + w
    np.multiply(r, 2.0 / 3.0, out=t2)
    t2 += t1
    t2 *= t1
    t2 *= 2  # q
    t2 -= r  # q - r
    np.divide(r, t1, out=t1)  # r / (1 + w)
    np.subtract(t2, r, out=r)  # q - 2r
    t2 /= r
    t1 *= t2
    t1 += 1
    w *= t1


def omega_f32_into(z32: np.ndarray, out: np.ndarray, t1, t2, t3) -> None:
    """Single-precision omega (relative error < 3e-6) of ``z32`` clamped to [-80, 3e38].

    ``z32`` is clamped in place; below -80 the result is too large and must
    be replaced by the caller (the double-precision step of :mod:`._kernels` does).
    """
    np.clip(z32, _Z32_MIN, _Z32_MAX, out=z32)
    start_f32_into(z32, out, t1, t2)
    fritsch_into(out, z32, t1, t2, t3)


def _omega_block(z: np.ndarray) -> np.ndarray:
    z32 = np.clip(z, -3e38, 3e38).astype(np.float32)
    w32 = np.empty_like(z32)
    t1, t2, t3 = np.empty_like(z32), np.empty_like(z32), np.empty_like(z32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        omega_f32_into(z32, w32, t1, t2, t3)
    out = np.empty_like(z)
    _kernels.refine_flat(w32, z, True, out)
    return out


def wright_omega(z) -> np.ndarray:
    """Wright omega ``omega(z) = W(e^z)`` for real ``z`` (float64, any shape).

    ``omega(-inf) = 0``, ``omega(inf) = inf``, NaN propagates. Accurate to a
    few units in the last place relative to the conditioning of the problem
    (``|z|/(1+omega)`` ulps of ``z``).
    """
    arr = as_float_array(z, "z")
    flat = np.ascontiguousarray(arr).reshape(-1)
    out = np.empty_like(flat)
    for start in range(0, flat.size, _BLOCK):
        out[start : start + _BLOCK] = _omega_block(flat[start : start + _BLOCK])
    nan = np.isnan(flat)
    if nan.any():
        out[nan] = np.nan
    return out.reshape(arr.shape)


def omega_derivatives(w, order: int = 3) -> list[np.ndarray]:
    """``[omega, omega', ..., omega^(order)]`` evaluated from ``w = omega(z)`` (order <= 4)."""
    if not 0 <= order <= 4:
        raise ValueError(f"order must be 0..4, got {order}")
    w = np.asarray(w, dtype=np.float64)
    out = np.empty((order + 1, w.size))
    _kernels.derivatives(np.ascontiguousarray(w).reshape(-1), order, out)
    return [x.reshape(w.shape) for x in out]


def log_ratio_from_omega(
    a: np.ndarray, u: np.ndarray, w: np.ndarray, out: np.ndarray | None = None
) -> np.ndarray:
    """``s = a - omega(a + u)``, written ``log omega - u`` where ``omega > 16``.

    Both are equal (``log omega = z - omega``); the second avoids the
    cancellation of two large numbers when ``a`` is large (``tau`` small).
    """
    s = np.subtract(a, w, out=out)
    if w.size and w.max() > _kernels.CANCELLATION:
        big = w > _kernels.CANCELLATION
        s[big] = np.log(w[big]) - np.broadcast_to(u, s.shape)[big]
    return s
