r"""High-precision references (mpmath) for the exact updates.

Slow and simple on purpose: one prompt at a time, the formulas of
docs/math.md written out literally, every operation at ``dps`` significant
digits (60 by default), the multiplier found by bisection on its bracket.
They are the independent oracle for :mod:`.updates` and :mod:`.binary`.
"""

from __future__ import annotations

from dataclasses import dataclass

import mpmath as mp

__all__ = ["MeanReference", "pmd_mean_reference", "pmd_part_reference", "binary_mean_reference"]


@dataclass(frozen=True)
class MeanReference:
    """``lam``, ``policy`` and ``log_ratio`` as mpmath numbers (lists for the last two)."""

    lam: mp.mpf
    policy: list
    log_ratio: list


def _omega(z):
    return mp.lambertw(mp.exp(z)).real


def _solve_u(weights, targets, bisections: int):
    """``u = log lambda`` with ``sum w exp(a - omega(a + u)) = 1``, by bisection."""

    def excess(u):
        return mp.fsum(w * mp.exp(a - _omega(a + u)) for w, a in zip(weights, targets)) - 1

    hi = mp.log(max(a for w, a in zip(weights, targets) if w > 0))
    lo = hi - 1
    while excess(lo) <= 0:  # the root lies in (-inf, hi]; step down until bracketed
        lo = hi - 2 * (hi - lo)
    for _ in range(bisections):
        mid = (lo + hi) / 2
        if excess(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def pmd_mean_reference(pi, r, tau, dps: int = 60) -> MeanReference:
    """PMD-mean's update for one prompt at ``dps`` digits (docs/math.md §3).

    The reward must not be constant on the support (then ``lambda = 0``).
    """
    with mp.workdps(dps):
        pi = [mp.mpf(x) for x in pi]
        total = mp.fsum(pi)
        pi = [x / total for x in pi]
        r = [mp.mpf(x) for x in r]
        tau = mp.mpf(tau)
        rbar = mp.fsum(p * x for p, x in zip(pi, r))
        a = [(x - rbar) / tau for x in r]
        # Bisection halves the bracket per step: enough steps for dps digits.
        u = _solve_u(pi, a, bisections=int(dps * 3.4) + 60)
        s = [ai - _omega(ai + u) for ai in a]
        return MeanReference(lam=mp.exp(u), policy=[p * mp.exp(si) for p, si in zip(pi, s)], log_ratio=s)


def pmd_part_reference(pi, r, tau, dps: int = 60):
    """PMD-part's ``(policy, log_ratio)`` for one prompt at ``dps`` digits (§2)."""
    with mp.workdps(dps):
        pi = [mp.mpf(x) for x in pi]
        total = mp.fsum(pi)
        pi = [x / total for x in pi]
        tau = mp.mpf(tau)
        log_z = mp.log(mp.fsum(p * mp.exp(mp.mpf(x) / tau) for p, x in zip(pi, r) if p > 0))
        s = [mp.mpf(x) / tau - log_z for x in r]
        return [p * mp.exp(si) for p, si in zip(pi, s)], s


def binary_mean_reference(p, tau, dps: int = 60) -> MeanReference:
    """PMD-mean with rewards in {0, 1}: ``policy = [p', 1 - p']`` and the two log-ratios."""
    with mp.workdps(dps):
        p = mp.mpf(p)
        return pmd_mean_reference([p, 1 - p], [1, 0], tau, dps=dps)
