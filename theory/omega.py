r"""The Wright omega function for real arguments, fast and to full precision.

:math:`\omega(z) = W(e^z)` is the solution of :math:`\omega + \log\omega = z`
(principal branch). PMD-mean's update is written with it (pmd-math.md §3):
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

The kernels ending in ``_into`` work in caller-provided arrays: the batched
solver calls them on large blocks, where fresh temporaries would cost more
in page faults than the arithmetic itself.
"""

from __future__ import annotations

import numpy as np

from ._validation import as_float_array

#: Below this, omega(z) = e^z (1 - e^z + ...) equals e^z to double precision.
_Z_SMALL = -40.0
#: Above this, omega(z) = z - log z + log z / z to double precision.
_Z_LARGE = 1e15
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


def halley_into(w: np.ndarray, z: np.ndarray, r: np.ndarray, t1: np.ndarray, t2: np.ndarray) -> None:
    """One Halley step for ``w + log w = z``, updating ``w`` (third order).

    With ``r = z - w - log w``: ``w <- w + 2 r w (1+w) / (2 (1+w)^2 - r)``.
    """
    np.log(w, out=r)
    np.subtract(z, r, out=r)
    r -= w
    np.add(w, 1, out=t1)
    np.multiply(t1, t1, out=t2)
    t2 *= 2
    t2 -= r  # 2 (1+w)^2 - r
    t1 *= w
    t1 *= r
    t1 *= 2
    t1 /= t2
    w += t1


def omega_f32_into(z32: np.ndarray, out: np.ndarray, t1, t2, t3) -> None:
    """Single-precision omega (relative error < 3e-6) of ``z32`` clamped to [-80, 3e38].

    ``z32`` is clamped in place; below -80 the result is too large and must
    be replaced by the caller (:func:`refine_omega_into` does).
    """
    np.clip(z32, _Z32_MIN, _Z32_MAX, out=z32)
    start_f32_into(z32, out, t1, t2)
    fritsch_into(out, z32, t1, t2, t3)


def refine_omega_into(w: np.ndarray, z: np.ndarray, r, t1, t2, fourth_order: bool = True) -> None:
    """Double-precision omega(z) in ``w`` from a start close to it.

    One float64 Fritsch step (fourth order: a start within 1e-4 suffices) or,
    with ``fourth_order=False``, one Halley step (third order: within 1e-5).
    Entries outside ``[-40, 1e15]`` are replaced by their series, which are
    exact there (they need no start).
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        (fritsch_into if fourth_order else halley_into)(w, z, r, t1, t2)
    if not z.size:
        return
    # "not >=" also catches NaN, which min/max propagate.
    if not z.min() >= _Z_SMALL:
        small = z < _Z_SMALL
        w[small] = np.exp(z[small])
    if not z.max() <= _Z_LARGE:
        large = z > _Z_LARGE
        zl = z[large]
        with np.errstate(invalid="ignore"):  # z = +inf gives inf - inf
            lz = np.log(zl)
            vals = zl - lz + lz / zl
        vals[np.isinf(zl)] = np.inf
        w[large] = vals


def _omega_block(z: np.ndarray) -> np.ndarray:
    z32 = np.clip(z, -3e38, 3e38).astype(np.float32)
    w32 = np.empty_like(z32)
    t1, t2, t3 = np.empty_like(z32), np.empty_like(z32), np.empty_like(z32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        omega_f32_into(z32, w32, t1, t2, t3)
    w = w32.astype(np.float64)
    refine_omega_into(w, z, np.empty_like(z), np.empty_like(z), np.empty_like(z))
    return w


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


def low_derivatives_into(w, t2, d1, d2) -> None:
    """The first two derivatives of omega from ``w = omega(z)``; leaves ``t^2`` in ``t2``.

    Closed forms in the module docstring, ``t = 1/(1 + omega)``.
    """
    np.add(w, 1, out=t2)
    np.reciprocal(t2, out=t2)  # t
    np.multiply(w, t2, out=d1)
    t2 *= t2
    np.multiply(d1, t2, out=d2)


def high_derivatives_into(w, t2, d2, d3, d4=None) -> None:
    """The third (and fourth) derivative of omega from ``w``, ``t2 = t^2`` and the second.

    ``t2`` is overwritten.
    """
    np.multiply(d2, t2, out=d3)  # omega t^5
    if d4 is not None:
        np.multiply(d3, t2, out=d4)  # omega t^7
        np.multiply(w, 6, out=t2)
        t2 -= 8
        t2 *= w
        t2 += 1
        d4 *= t2
    np.multiply(w, -2, out=t2)
    t2 += 1
    d3 *= t2


def derivatives_into(w, t, d1, d2, d3, d4=None) -> None:
    """The first three (or four) derivatives of omega from ``w = omega(z)``; ``t`` is scratch."""
    low_derivatives_into(w, t, d1, d2)
    high_derivatives_into(w, t, d2, d3, d4)


def omega_derivatives(w: np.ndarray, order: int = 3) -> list[np.ndarray]:
    """``[omega, omega', ..., omega^(order)]`` evaluated from ``w = omega(z)`` (order <= 4)."""
    if not 0 <= order <= 4:
        raise ValueError(f"order must be 0..4, got {order}")
    d = [np.empty_like(w) for _ in range(5)]
    derivatives_into(w, *d[:4], d4=d[4] if order == 4 else None)
    return [w] + d[1 : order + 1]


#: Where omega exceeds this, ``a - omega`` would lose more than 4 ulps of ``s``.
_CANCELLATION = 16.0


def log_ratio_from_omega(a: np.ndarray, u: np.ndarray, w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``s = a - omega(a + u)``, written ``log omega - u`` where ``omega > 16``.

    Both are equal (``log omega = z - omega``); the second avoids the
    cancellation of two large numbers when ``a`` is large (``tau`` small).
    """
    s = np.subtract(a, w, out=out)
    if w.size and w.max() > _CANCELLATION:
        big = w > _CANCELLATION
        s[big] = np.log(w[big]) - np.broadcast_to(u, s.shape)[big]
    return s
