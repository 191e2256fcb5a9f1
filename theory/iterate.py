r"""Repeated exact updates: ``pi_0 -> pi_1 -> ...`` on a fixed bandit.

For convergence studies: each step is the population update of
:func:`.updates.pmd_mean` or :func:`.updates.pmd_part` with the same rewards
and ``tau``. For rewards in {0, 1} only the success probability matters, and
:func:`iterate_success` follows it with :mod:`.binary`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import binary
from .updates import pmd_mean, pmd_part

__all__ = ["Trajectory", "iterate_updates", "iterate_success"]

_METHODS = ("mean", "part")


def _check(method: str, steps: int) -> None:
    if method not in _METHODS:
        raise ValueError(f"method must be 'mean' or 'part', got {method!r}")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")


@dataclass(frozen=True)
class Trajectory:
    """``policies[t] = pi_t`` (t = 0..steps) and ``expected_reward[t] = E_{pi_t} r``.

    ``kl[t] = KL(pi_t || pi_{t+1})`` (t = 0..steps-1).
    """

    policies: np.ndarray
    expected_reward: np.ndarray
    kl: np.ndarray


def iterate_updates(pi0, r, tau, steps: int, method: str = "mean") -> Trajectory:
    """Apply PMD-mean (``method="mean"``) or PMD-part (``"part"``) ``steps`` times."""
    _check(method, steps)
    update = pmd_mean if method == "mean" else pmd_part
    pi = np.asarray(pi0, dtype=np.float64)
    r = np.asarray(r, dtype=np.float64)
    policies, kls = [np.broadcast_to(pi, np.broadcast_shapes(pi.shape, r.shape)).copy()], []
    for _ in range(int(steps)):
        res = update(policies[-1], r, tau)
        with np.errstate(divide="ignore", invalid="ignore"):
            p = policies[-1]
            kls.append(np.sum(np.where(p > 0, -p * res.log_ratio, 0.0), axis=-1))
        policies.append(res.policy)
    stacked = np.stack(policies)
    kl = np.stack(kls) if kls else np.empty((0,) + stacked.shape[1:-1])
    return Trajectory(policies=stacked, expected_reward=np.sum(stacked * r, axis=-1), kl=kl)


def iterate_success(p0, tau, steps: int, method: str = "mean") -> np.ndarray:
    """Success probabilities ``p_0, ..., p_steps`` under repeated binary-reward steps.

    ``p0`` and ``tau`` broadcast; the result has a leading axis of length
    ``steps + 1``.
    """
    _check(method, steps)
    step = binary.pmd_mean_step if method == "mean" else binary.pmd_part_step
    p = np.asarray(p0, dtype=np.float64)
    out = [np.broadcast_to(p, np.broadcast_shapes(p.shape, np.shape(tau))).astype(np.float64)]
    for _ in range(int(steps)):
        out.append(np.asarray(step(out[-1], tau).success, dtype=np.float64))
    return np.stack(out)
