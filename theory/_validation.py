"""Input checks shared by every public function in ``pmdlab.theory``.

Each check raises ``ValueError`` with a message that names the offending
argument, so a bad call fails loudly instead of returning NaN.
"""

from __future__ import annotations

import numpy as np

#: Largest accepted ``|sum(pi) - 1|`` for a policy; inside it, policies are renormalised.
SIMPLEX_ATOL = 1e-8


def _first_bad_index(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(mask)), mask.shape))


def as_float_array(x, name: str) -> np.ndarray:
    """``x`` as a float64 array; complex, object or string input is rejected."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} must be array-like of real numbers: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    return arr.astype(np.float64, copy=False)


def check_finite(arr: np.ndarray, name: str) -> None:
    if not np.isfinite(arr).all():
        bad = _first_bad_index(~np.isfinite(arr))
        raise ValueError(f"{name} must be finite; {name}{list(bad)} = {arr[bad]!r}")


def check_policy(pi, name: str = "pi") -> np.ndarray:
    """A batch of distributions over the last axis: finite, >= 0, summing to 1.

    Returns the float64 array (not renormalised; callers divide by the sum).
    """
    arr = as_float_array(pi, name)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have an action axis (last axis); got a scalar")
    if arr.shape[-1] == 0:
        raise ValueError(f"{name} has an empty action axis")
    check_finite(arr, name)
    if arr.min() < 0:
        bad = _first_bad_index(arr < 0)
        raise ValueError(f"{name} must be non-negative; {name}{list(bad)} = {arr[bad]!r}")
    total = arr.sum(axis=-1)
    off = np.abs(total - 1.0)
    if off.max() > SIMPLEX_ATOL:
        bad = _first_bad_index(off > SIMPLEX_ATOL)
        where = f"row {list(bad)}" if bad else "it"
        raise ValueError(
            f"{name} must sum to 1 over its last axis (tolerance {SIMPLEX_ATOL:g}); "
            f"{where} sums to {total[bad]!r}"
        )
    return arr


def check_rewards(r, name: str = "r") -> np.ndarray:
    arr = as_float_array(r, name)
    if arr.ndim == 0:
        raise ValueError(f"{name} must have an action axis (last axis); got a scalar")
    if arr.shape[-1] == 0:
        raise ValueError(f"{name} has an empty action axis")
    check_finite(arr, name)
    return arr


def check_positive(x, name: str) -> np.ndarray:
    """A finite, strictly positive float64 array (or scalar), e.g. ``tau``."""
    arr = as_float_array(x, name)
    check_finite(arr, name)
    if arr.size and arr.min() <= 0:
        bad = _first_bad_index(arr <= 0) if arr.ndim else ()
        raise ValueError(f"{name} must be > 0; {name}{list(bad)} = {arr[bad]!r}")
    return arr


def check_nonnegative(x, name: str) -> np.ndarray:
    arr = as_float_array(x, name)
    check_finite(arr, name)
    if arr.size and arr.min() < 0:
        bad = _first_bad_index(arr < 0) if arr.ndim else ()
        raise ValueError(f"{name} must be >= 0; {name}{list(bad)} = {arr[bad]!r}")
    return arr


def check_probability(p, name: str = "p") -> np.ndarray:
    arr = as_float_array(p, name)
    check_finite(arr, name)
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        bad = _first_bad_index((arr < 0) | (arr > 1)) if arr.ndim else ()
        raise ValueError(f"{name} must lie in [0, 1]; {name}{list(bad)} = {arr[bad]!r}")
    return arr


def broadcast_actions(names_arrays: dict[str, np.ndarray]) -> tuple[int, ...]:
    """Common shape of arrays whose last axis is the action axis.

    Raises ``ValueError`` naming the arguments when shapes do not broadcast or
    the action axes differ.
    """
    names = list(names_arrays)
    shapes = [names_arrays[n].shape for n in names]
    ks = {s[-1] for s in shapes}
    if len(ks) != 1:
        desc = ", ".join(f"{n}.shape={s}" for n, s in zip(names, shapes))
        raise ValueError(f"action axes (last axis) differ: {desc}")
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        desc = ", ".join(f"{n}.shape={s}" for n, s in zip(names, shapes))
        raise ValueError(f"shapes do not broadcast: {desc}") from None


def broadcast_per_row(x: np.ndarray, batch_shape: tuple[int, ...], name: str) -> np.ndarray:
    """Broadcast a per-prompt parameter (e.g. ``tau``) to the batch shape."""
    try:
        return np.broadcast_to(x, batch_shape)
    except ValueError:
        raise ValueError(
            f"{name}.shape={np.shape(x)} does not broadcast to the batch shape {batch_shape} "
            "(one value per prompt, the action axis excluded)"
        ) from None
