"""Exact population updates of policy mirror descent, PMD-part and PMD-mean.

Everything here is numpy/scipy (float64), batched over any leading axes, with
inputs validated. See ``docs/math.md`` for the
formulas; ``python -m pmdlab.theory.verify`` checks every proposition.
"""

from .binary import (
    BinaryMeanStep,
    BinaryPartStep,
    pmd_mean_step,
    pmd_mean_step_small_tau,
    pmd_part_step,
    pmd_part_step_small_tau,
)
from .omega import wright_omega
from .updates import PMDMeanResult, PMDPartResult, pmd_mean, pmd_part

__all__ = [
    "BinaryMeanStep",
    "BinaryPartStep",
    "PMDMeanResult",
    "PMDPartResult",
    "pmd_mean",
    "pmd_mean_step",
    "pmd_mean_step_small_tau",
    "pmd_part",
    "pmd_part_step",
    "pmd_part_step_small_tau",
    "wright_omega",
]
