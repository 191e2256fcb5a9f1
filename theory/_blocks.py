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
    """Per-row facts from one pass over ``pi`` and ``r`` (shape (n, K))."""

    total: np.ndarray  # sum of pi
    rmin: np.ndarray
    rmax: np.ndarray
    two_valued: bool  # in every row, every reward equals rmin or rmax
    p_max: np.ndarray | None  # pi-mass at rmax over that at rmax or rmin; when two_valued
    p_min: np.ndarray | None  # likewise at rmin (computed apart: accurate when p_max -> 1)
    is_max: np.ndarray | None  # (n, K): 1 where reward == rmax, else 0 (bool, or r itself for {0,1})


def row_stats(pi: np.ndarray, r: np.ndarray, batch_shape: tuple[int, ...]) -> RowStats:
    """One threaded pass: checks ``pi`` and ``r`` and collects :class:`RowStats`.

    ``pi`` and ``r`` are the flattened (n, K) rows of inputs whose leading
    shape is ``batch_shape``. Raises ``ValueError`` naming the first offending
    entry, as :func:`._validation.check_policy` and ``check_rewards`` do:
    ``min(pi) >= 0`` fails for NaN and ``-inf``, the row sums for ``+inf``,
    and the rows' reward range for non-finite rewards.

    Two-valuedness (the binary shortcut) is looked for only if the first row
    has it, so other inputs pay nothing for it.
    """
    first = r[0]
    if ((first == 0) | (first == 1)).all():
        st = _zero_one_stats(pi, r, batch_shape)
        if st is not None:
            return st
    n, k = pi.shape
    st = RowStats(total=np.empty(n), rmin=np.empty(n), rmax=np.empty(n), two_valued=False,
                  p_max=None, p_min=None, is_max=None)  # fmt: skip
    pmin = np.empty(n)
    if ((first == first.min()) | (first == first.max())).all():
        st.two_valued = True
        st.p_max, st.p_min, st.is_max = np.empty(n), np.empty(n), np.empty((n, k), dtype=bool)
        row_two = np.empty(n, dtype=bool)

    def block(i0, i1):
        p, rr = pi[i0:i1], r[i0:i1]
        pmin[i0:i1] = p.min(axis=1)
        st.total[i0:i1] = total = p.sum(axis=1)
        st.rmin[i0:i1] = rmin = rr.min(axis=1)
        st.rmax[i0:i1] = rmax = rr.max(axis=1)
        if not st.two_valued:
            return
        is_max = st.is_max[i0:i1]
        np.equal(rr, rmax[:, None], out=is_max)
        is_min = scratch("is_min", i1 - i0, k, bool)
        np.equal(rr, rmin[:, None], out=is_min)
        mask = scratch("mask", i1 - i0, k)
        np.copyto(mask, is_max)
        mass_max = rowdot(p, mask)
        np.copyto(mask, is_min)
        mass_min = rowdot(p, mask)  # exactly 0 when no action of positive mass has rmin
        is_min |= is_max
        row_two[i0:i1] = is_min.all(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            st.p_max[i0:i1] = mass_max / (mass_max + mass_min)
            st.p_min[i0:i1] = mass_min / (mass_max + mass_min)

    map_blocks(block, n, k)
    _check_policy_rows(pi, pmin, st.total, batch_shape)
    bad_r = ~(np.isfinite(st.rmin) & np.isfinite(st.rmax))
    if bad_r.any():
        _raise_first(r, "r", bad_r, batch_shape, lambda x: ~np.isfinite(x), "must be finite")
    if st.two_valued and not row_two.all():
        st.two_valued, st.p_max, st.p_min, st.is_max = False, None, None, None
    return st


def _zero_one_stats(pi, r, batch_shape) -> RowStats | None:
    """:class:`RowStats` for rewards in {0, 1}, in fewer passes: ``r`` is its own
    mask and ``(1 - r) r == 0`` tests every entry (NaN and inf fail it).
    ``None`` if some entry is not 0 or 1."""
    n, k = pi.shape
    total, pmin, mass1, mass0 = (np.empty(n) for _ in range(4))
    other = np.zeros(n, dtype=bool)

    def block(i0, i1):
        p, rr = pi[i0:i1], r[i0:i1]
        pmin[i0:i1] = p.min(axis=1)
        total[i0:i1] = s = p.sum(axis=1)
        mass1[i0:i1] = m1 = rowdot(p, rr)
        q = scratch("q", i1 - i0, k)
        np.subtract(1.0, rr, out=q)
        # The mass at 0 is total - mass1 up to 2 ulps while mass1 <= total/2; above
        # that it is summed directly (exactly 0 when no action of positive mass has 0).
        m0 = s - m1
        high = np.nonzero(m1 > 0.5 * s)[0]
        if high.size:
            m0[high] = rowdot(p[high], q[high])
        mass0[i0:i1] = m0
        q *= rr
        other[i0:i1] = q.any(axis=1)

    map_blocks(block, n, k)
    if other.any():
        return None
    _check_policy_rows(pi, pmin, total, batch_shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        both = mass1 + mass0
        return RowStats(total=total, rmin=np.zeros(n), rmax=np.ones(n), two_valued=True,
                        p_max=mass1 / both, p_min=mass0 / both, is_max=r)  # fmt: skip


def _check_policy_rows(pi, pmin, total, batch_shape) -> None:
    bad_pi = ~(pmin >= 0)
    if bad_pi.any():
        _raise_first(pi, "pi", bad_pi, batch_shape, lambda x: ~((x >= 0) & np.isfinite(x)),
                     "must be finite and non-negative")  # fmt: skip
    off = np.abs(total - 1.0)
    if not off.max() <= SIMPLEX_ATOL:
        row = int(np.argmax(~(off <= SIMPLEX_ATOL)))
        if not np.isfinite(total[row]):
            _raise_first(pi, "pi", ~(off <= SIMPLEX_ATOL), batch_shape,
                         lambda x: ~np.isfinite(x), "must be finite and non-negative")  # fmt: skip
        raise ValueError(
            f"pi must sum to 1 over its last axis (tolerance {SIMPLEX_ATOL:g}); "
            f"pi{_index(row, batch_shape)} sums to {total[row]!r}"
        )


def _index(row: int, batch_shape: tuple[int, ...], col: int | None = None) -> list[int]:
    idx = [int(i) for i in np.unravel_index(row, batch_shape)] if batch_shape else []
    return idx + ([col] if col is not None else [])


def _raise_first(arr, name, bad_rows, batch_shape, is_bad, what):
    row = int(np.argmax(bad_rows))
    col = int(np.argmax(is_bad(arr[row])))
    raise ValueError(f"{name} {what}; {name}{_index(row, batch_shape, col)} = {arr[row, col]!r}")
