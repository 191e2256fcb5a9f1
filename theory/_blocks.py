"""Row blocks, threads and the fused validation pass of the batched updates.

Large batches are cut into blocks of rows (about ``BLOCK`` elements) that are
processed by a small thread pool; numpy releases the GIL inside its loops, so
two cores give close to twice the throughput. Every computation is per row,
so results do not depend on how rows are grouped into blocks.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from . import _row_kernels
from ._validation import SIMPLEX_ATOL

#: Elements per block: large enough to amortise Python's overhead, small enough for the cache.
BLOCK = 1 << 18

_pool: ThreadPoolExecutor | None = None


def num_threads() -> int:
    """Worker threads for large batches: ``PMDLAB_NUM_THREADS`` or the usable cores."""
    env = os.environ.get("PMDLAB_NUM_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def map_blocks(fn, n_rows: int, row_len: int) -> None:
    """Call ``fn(start, stop)`` over row blocks of about ``BLOCK`` elements, threaded."""
    rows_per_block = max(1, BLOCK // max(1, row_len))
    bounds = [(s, min(s + rows_per_block, n_rows)) for s in range(0, n_rows, rows_per_block)]
    threads = min(num_threads(), len(bounds))
    if threads <= 1:
        for b in bounds:
            fn(*b)
        return
    global _pool
    if _pool is None or _pool._max_workers < threads:
        _pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="pmdlab")
    for _ in _pool.map(lambda b: fn(*b), bounds):
        pass


def rowdot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``sum_j x[i, j] y[i, j]`` for every row ``i``."""
    return np.vecdot(x, y)


_local = threading.local()


def scratch(name: str, n: int, k: int, dtype=np.float64) -> np.ndarray:
    """An (n, k) work array private to the calling thread, reused across calls.

    Fresh large temporaries cost more in page faults than the arithmetic
    done in them; the hot loops work in these instead.
    """
    cache = getattr(_local, "arrays", None)
    if cache is None:
        cache = _local.arrays = {}
    key = (name, k, np.dtype(dtype))
    buf = cache.get(key)
    if buf is None or buf.shape[0] < n:
        buf = cache[key] = np.empty((max(n, BLOCK // max(1, k)), k), dtype=dtype)
    return buf[:n]


@dataclass
class RowStats:
    """Per-row facts about ``pi`` and ``r`` (shape (n, K)). ``E_pi r = mean_hi +
    mean_lo`` (a rounded mean and its correction); ``var``, ``amax``, ``amin``
    describe the targets ``a = (r - E r)/tau`` (the extremes over the support)
    and are filled by :func:`target_stats`."""

    total: np.ndarray
    rmin: np.ndarray
    rmax: np.ndarray
    mass_max: np.ndarray  # pi-mass at rmax
    mass_min: np.ndarray  # pi-mass at rmin (computed apart: accurate when mass_max -> total)
    two_valued: np.ndarray  # every reward of the row equals rmin or rmax
    mean_hi: np.ndarray
    mean_lo: np.ndarray
    var: np.ndarray
    amax: np.ndarray
    amin: np.ndarray

    def rows(self, sl: slice) -> "RowStats":
        return RowStats(*(getattr(self, f)[sl] for f in self.__dataclass_fields__))


def row_stats(pi: np.ndarray, r: np.ndarray, batch_shape: tuple[int, ...]) -> RowStats:
    """One threaded pass: checks ``pi`` and ``r`` and collects :class:`RowStats`.

    ``pi`` and ``r`` are the flattened (n, K) rows of inputs whose leading
    shape is ``batch_shape``. Raises ``ValueError`` naming the first offending
    entry, as :func:`._validation.check_policy` and ``check_rewards`` do:
    ``min pi`` catches NaN and negative entries, the row sums ``+inf``, and
    the rows' reward range non-finite rewards.
    """
    n, k = pi.shape
    pmin = np.empty(n)
    st = RowStats(
        *(np.empty(n) for _ in range(5)), np.empty(n, dtype=bool), *(np.full(n, np.nan) for _ in range(5))
    )

    def block(i0, i1):
        sl = slice(i0, i1)
        p, rr = pi[sl], r[sl]
        pmin[sl] = p.min(axis=1)
        st.total[sl] = total = p.sum(axis=1)
        st.rmin[sl], st.rmax[sl] = rr.min(axis=1), rr.max(axis=1)
        with np.errstate(invalid="ignore"):
            st.mean_hi[sl] = rowdot(p, rr) / total
        _row_kernels.mean_and_masses(
            p,
            rr,
            total,
            st.rmin[sl],
            st.rmax[sl],
            st.mean_hi[sl],
            st.mean_lo[sl],
            st.mass_max[sl],
            st.mass_min[sl],
            st.two_valued[sl],
        )

    map_blocks(block, n, k)
    bad_pi = ~(pmin >= 0)
    if bad_pi.any():
        _raise_first(
            pi,
            "pi",
            bad_pi,
            batch_shape,
            lambda x: ~((x >= 0) & np.isfinite(x)),
            "must be finite and non-negative",
        )
    off = np.abs(st.total - 1.0)
    if not off.max() <= SIMPLEX_ATOL:
        row = int(np.argmax(~(off <= SIMPLEX_ATOL)))
        if not np.isfinite(st.total[row]):
            _raise_first(
                pi,
                "pi",
                ~(off <= SIMPLEX_ATOL),
                batch_shape,
                lambda x: ~np.isfinite(x),
                "must be finite and non-negative",
            )
        raise ValueError(
            f"pi must sum to 1 over its last axis (tolerance {SIMPLEX_ATOL:g}); "
            f"pi{_index(row, batch_shape)} sums to {st.total[row]!r}"
        )
    bad_r = ~(np.isfinite(st.rmin) & np.isfinite(st.rmax))
    if bad_r.any():
        _raise_first(r, "r", bad_r, batch_shape, lambda x: ~np.isfinite(x), "must be finite")
    return st


def target_stats(pi, r, tau, st: RowStats) -> None:
    """Fill ``var``, ``amax`` and ``amin`` (threaded)."""
    n, k = pi.shape

    def block(i0, i1):
        sl = slice(i0, i1)
        b = st.rows(sl)
        _row_kernels.target_moments(
            pi[sl], r[sl], tau[sl], b.total, b.mean_hi, b.mean_lo, np.arange(i1 - i0), b.var, b.amax, b.amin
        )

    map_blocks(block, n, k)


def _index(row: int, batch_shape: tuple[int, ...], col: int | None = None) -> list[int]:
    idx = [int(i) for i in np.unravel_index(row, batch_shape)] if batch_shape else []
    return idx + ([col] if col is not None else [])


def _raise_first(arr, name, bad_rows, batch_shape, is_bad, what):
    row = int(np.argmax(bad_rows))
    col = int(np.argmax(is_bad(arr[row])))
    raise ValueError(f"{name} {what}; {name}{_index(row, batch_shape, col)} = {arr[row, col]!r}")
