r"""Every claim of docs/math.md §3–4, and the ones derived from them, as a check.

A proposition is a named statement with a function that tests it on many
random (or exhaustive) instances and returns the number of instances and the
worst error it measured there (a residual, a difference to a reference, a
margin by which an inequality is violated, or a count of violating
instances); it passes exactly when that error is finite and within its
tolerance, ``0 <= error <= tolerance``. ``python -m pmdlab.theory.verify``
runs them all and prints each error beside its tolerance.

Instances span general and binary rewards, ``tau`` from 1e-4 to 10,
``K`` from 2 to 1e5 and ``p`` down to 1e-9.
"""

from __future__ import annotations

from . import _binary_claims, _population_claims
from ._registry import Outcome, Proposition
from ._registry import run as _run

#: Every proposition, in the order of docs/math.md (each one's seed depends on its position).
PROPOSITIONS: list[Proposition] = _population_claims.CLAIMS + _binary_claims.CLAIMS

__all__ = ["PROPOSITIONS", "Outcome", "Proposition", "run"]


def run(seed: int = 0, names: list[str] | None = None) -> list[Outcome]:
    """Run the propositions (all, or those named) with a seeded generator each."""
    return _run(PROPOSITIONS, seed, names)
