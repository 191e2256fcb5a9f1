"""The registry of propositions: what a proposition is, how it runs, and random instances for them.

The claims themselves are :mod:`._population_claims` (docs/math.md §3 and
what follows from it) and :mod:`._binary_claims` (§4, and the numerical
tools); :mod:`.propositions` collects them in order.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

__all__ = ["Outcome", "Proposition", "binary_pairs", "general_instances", "registrar", "run", "worst"]


@dataclass(frozen=True)
class Proposition:
    """``check(rng) -> (instances, worst error)``; ``checked`` says what that error measures."""

    name: str
    statement: str
    checked: str
    tolerance: float
    check: Callable[[np.random.Generator], tuple[int, float]]


@dataclass(frozen=True)
class Outcome:
    """One run of a proposition: the worst error measured on ``instances`` instances."""

    proposition: Proposition
    instances: int
    worst: float
    seconds: float

    @property
    def tolerance(self) -> float:
        return self.proposition.tolerance

    @property
    def passed(self) -> bool:
        """``worst <= tolerance``, with NaN (and infinity) failing."""
        return bool(np.isfinite(self.worst) and self.worst <= self.tolerance)

    def summary(self) -> str:
        """``name: error E <= tolerance T (what was measured, N instances)``, or ``>`` if it fails."""
        relation = "<=" if self.passed else ">"
        return (
            f"{self.proposition.name}: error {self.worst:.3e} {relation} tolerance {self.tolerance:.3e} "
            f"({self.proposition.checked}; {self.instances} instances)"
        )


def registrar(claims: list[Proposition]):
    """A decorator ``@proposition(name, statement, checked, tolerance)`` appending to ``claims``."""

    def proposition(name: str, statement: str, checked: str, tolerance: float):
        def register(fn):
            claims.append(Proposition(name, statement, checked, tolerance, fn))
            return fn

        return register

    return proposition


def worst(*errors) -> float:
    """The largest entry of all the errors (scalars or arrays), NaN if any entry is NaN.

    Python's ``max(a, nan)`` returns ``a``; an error measure must not drop a NaN.
    """
    return float(np.max(np.concatenate([np.ravel(np.asarray(e, dtype=float)) for e in errors])))


# -- random instances ---------------------------------------------------------


def general_instances(rng, n: int, k: int, tau_range=(1e-2, 10.0), concentration=(0.05, 3.0)):
    """``n`` prompts with ``k`` actions: Dirichlet policies, Gaussian or uniform rewards."""
    alpha = np.exp(rng.uniform(*np.log(concentration), size=(n, 1)))
    pi = rng.gamma(np.broadcast_to(alpha, (n, k)))
    pi /= pi.sum(axis=1, keepdims=True)
    scale = np.exp(rng.uniform(np.log(0.1), np.log(3.0), size=(n, 1)))
    r = np.where(rng.uniform(size=(n, 1)) < 0.5, rng.normal(size=(n, k)), rng.uniform(size=(n, k))) * scale
    tau = np.exp(rng.uniform(*np.log(tau_range), size=n))
    return pi, r, tau


def binary_pairs(rng, n: int, p_min: float = 1e-9, tau_min: float = 1e-4, tau_max: float = 10.0):
    p = np.exp(rng.uniform(np.log(p_min), 0.0, size=n)) * rng.choice([1.0, -1.0], size=n)
    p = np.where(p > 0, p, 1.0 + p)  # mass near 0 and near 1
    p = np.clip(p, p_min, 1 - p_min)
    tau = np.exp(rng.uniform(np.log(tau_min), np.log(tau_max), size=n))
    return p, tau


def run(propositions: list[Proposition], seed: int = 0, names: list[str] | None = None) -> list[Outcome]:
    """Run ``propositions`` (all, or those named) with a generator seeded by ``(seed, position)`` each."""
    chosen = [p for p in propositions if names is None or p.name in names]
    unknown = set(names or []) - {p.name for p in propositions}
    if unknown:
        raise ValueError(f"unknown propositions: {sorted(unknown)}")
    outcomes = []
    for prop in chosen:
        rng = np.random.default_rng([seed, propositions.index(prop)])
        t0 = time.perf_counter()
        try:
            count, worst = prop.check(rng)
        except AssertionError:
            count, worst = 0, float("inf")
        outcomes.append(Outcome(prop, int(count), float(worst), time.perf_counter() - t0))
    return outcomes
