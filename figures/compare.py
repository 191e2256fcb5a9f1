"""Claims that compare methods over seeds: each carries its 95% bootstrap interval and holds only
when that interval excludes zero (:mod:`pmdlab.rl.stats`), so a claim can fail on its numbers."""

from __future__ import annotations

from collections.abc import Sequence

from pmdlab.rl.stats import bootstrap_difference, bootstrap_mean

from .registry import Claim

__all__ = ["claim_above", "claim_positive", "verdict"]


def claim_above(statement: str, a: Sequence[float], b: Sequence[float], kind: str = "check") -> Claim:
    """``mean(a) > mean(b)`` over seeds: holds when the interval of ``mean(a) - mean(b)`` lies above 0."""
    diff = bootstrap_difference(a, b)
    return Claim(statement, bool(diff.low > 0), f"difference {diff}, {diff.n[0]} and {diff.n[1]} seeds", kind)


def claim_positive(statement: str, values: Sequence[float], kind: str = "check") -> Claim:
    """``mean(values) > 0`` over seeds (e.g. paired gains): holds when the interval lies above 0."""
    mean = bootstrap_mean(values)
    return Claim(statement, bool(mean.low > 0), f"{mean}, {mean.n} seeds", kind)


def verdict(a: Sequence[float], b: Sequence[float], names: tuple[str, str]) -> str:
    """``"A − B: d [lo, hi] (A higher)"`` or ``"(not separated by these seeds)"``."""
    diff = bootstrap_difference(a, b)
    if not diff.excludes_zero():
        return f"{names[0]} − {names[1]} {diff} (not separated by these seeds)"
    return f"{names[0]} − {names[1]} {diff} ({names[0] if diff.low > 0 else names[1]} higher)"
