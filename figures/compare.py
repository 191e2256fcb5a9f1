"""Claims that compare methods over seeds: each carries its 95% interval (Student-t below 10 seeds,
percentile bootstrap from 10, named beside it: :mod:`pmdlab.rl.stats`) and holds only when that
interval excludes zero, so a claim can fail on its numbers. ``paired``: the methods ran on the same
seeds (same data and held-out draws), listed in the same order; the per-seed differences are used."""

from __future__ import annotations

from collections.abc import Sequence

from pmdlab.rl.stats import difference_interval, mean_interval

from .registry import Claim

__all__ = ["claim_above", "claim_positive", "verdict"]


def claim_above(
    statement: str, a: Sequence[float], b: Sequence[float], kind: str = "check", paired: bool = False
) -> Claim:
    """``mean(a) > mean(b)`` over seeds: holds when the interval of ``mean(a) - mean(b)`` lies above 0."""
    diff = difference_interval(a, b, paired=paired)
    return Claim(statement, bool(diff.low > 0), f"difference {diff}", kind)


def claim_positive(statement: str, values: Sequence[float], kind: str = "check") -> Claim:
    """``mean(values) > 0`` over seeds (e.g. paired gains): holds when the interval lies above 0."""
    mean = mean_interval(values)
    return Claim(statement, bool(mean.low > 0), f"{mean}", kind)


def verdict(a: Sequence[float], b: Sequence[float], names: tuple[str, str], paired: bool = False) -> str:
    """``"A − B: d [lo, hi] (method, n seeds) (A higher)"`` or ``"(not separated by these seeds)"``."""
    diff = difference_interval(a, b, paired=paired)
    if not diff.excludes_zero():
        return f"{names[0]} − {names[1]} {diff} (not separated by these seeds)"
    return f"{names[0]} − {names[1]} {diff} ({names[0] if diff.low > 0 else names[1]} higher)"
