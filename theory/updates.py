r"""Exact population updates of PMD-part and PMD-mean, batched over prompts.

Inputs share one convention: ``pi`` and ``r`` have the actions on the last
axis and broadcast together over any leading (prompt) axes; ``tau`` is one
positive value per prompt, broadcast to the leading axes. Computation is in
float64. Zero-probability actions are allowed and keep probability zero; their
``log_ratio`` is the value the update's formula assigns (the limit as their
probability tends to zero), so it is finite.

PMD-part (docs/math.md §2), the KL-regularised step:

.. math:: \pi_{t+1} = \pi_t e^{r/\tau} / Z, \qquad Z = E_t e^{r/\tau}.

PMD-mean (§3), the regression on the mean-reward target ``a = (r - r̄)/tau``:

.. math:: \log\frac{\pi_{t+1}}{\pi_t} = a - \omega(a + \log\lambda),
          \qquad \lambda = KL(\pi_t \| \pi_{t+1}),

the maximiser of ``E_q r - tau KL(q||pi_t) - beta chi^2(q||pi_t)`` with
``beta = tau lambda / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _blocks, _kernels, _multiplier, binary
from ._validation import (
    as_float_array,
    broadcast_actions,
    broadcast_per_row,
    check_policy,
    check_positive,
    check_rewards,
)

__all__ = ["PMDMeanResult", "PMDPartResult", "pmd_mean", "pmd_part"]

#: The grouped path handles rows with at most this many distinct rewards.
MAX_GROUPS = 16


@dataclass(frozen=True)
class PMDMeanResult:
    r"""PMD-mean's population update.

    Attributes
    ----------
    policy : ``pi_{t+1}``, shape of the broadcast inputs.
    log_ratio : ``log pi_{t+1}/pi_t``, finite everywhere.
    lam : ``lambda = KL(pi_t || pi_{t+1})`` per prompt (0 when the reward is
        constant on the support).
    mean_reward : ``r̄ = E_{pi_t} r`` per prompt.
    tau : ``tau`` per prompt.
    """

    policy: np.ndarray
    log_ratio: np.ndarray
    lam: np.ndarray
    mean_reward: np.ndarray
    tau: np.ndarray
    _rewards: np.ndarray = field(repr=False)

    @property
    def chi2_weight(self) -> np.ndarray:
        """``beta = tau lambda / 2``, the weight of the implicit chi^2 regulariser."""
        return 0.5 * self.tau * self.lam

    @property
    def kl(self) -> np.ndarray:
        """``KL(pi_t || pi_{t+1})``, which equals ``lam``."""
        return self.lam

    @property
    def target(self) -> np.ndarray:
        """The regression target ``a = (r - r̄)/tau``; ``log_ratio < target`` everywhere."""
        return (self._rewards - self.mean_reward[..., None]) / self.tau[..., None]


@dataclass(frozen=True)
class PMDPartResult:
    r"""PMD-part's population update (the exact KL-regularised step).

    ``log_partition = log Z = log E_{pi_t} e^{r/tau}`` per prompt; the
    ``log_ratio`` equals the regression target ``r/tau - log Z``.
    """

    policy: np.ndarray
    log_ratio: np.ndarray
    log_partition: np.ndarray
    tau: np.ndarray


def _flatten(pi, r, tau, check_values: bool):
    """Shapes, dtypes and ``tau`` checked; ``pi`` and ``r`` as (n, K) rows.

    With ``check_values`` the entries of ``pi`` and ``r`` are checked here too;
    otherwise the caller checks them in its own pass.
    """
    if check_values:
        pi, r = check_policy(pi, "pi"), check_rewards(r, "r")
    else:
        pi, r = as_float_array(pi, "pi"), as_float_array(r, "r")
        for name, x in (("pi", pi), ("r", r)):
            if x.ndim == 0:
                raise ValueError(f"{name} must have an action axis (last axis); got a scalar")
            if x.shape[-1] == 0:
                raise ValueError(f"{name} has an empty action axis")
    shape = broadcast_actions({"pi": pi, "r": r})
    tau = check_positive(tau, "tau")
    batch = shape[:-1]
    tau_rows = np.ascontiguousarray(broadcast_per_row(tau, batch, "tau"), dtype=np.float64).reshape(-1)
    k = shape[-1]
    pi2 = np.ascontiguousarray(np.broadcast_to(pi, shape)).reshape(-1, k)
    r2 = np.ascontiguousarray(np.broadcast_to(r, shape)).reshape(-1, k)
    return pi2, r2, tau_rows, shape


def pmd_part(pi, r, tau) -> PMDPartResult:
    r"""PMD-part's update ``pi_{t+1} = pi_t e^{r/tau} / Z`` (docs/math.md §2).

    ``log Z`` is a max-shifted log-sum-exp over the support of ``pi_t``, so
    ``tau = 1e-4`` does not overflow.
    """
    pi2, r2, tau_rows, shape = _flatten(pi, r, tau, check_values=True)
    p = pi2 / pi2.sum(axis=1, keepdims=True)
    x = r2 / tau_rows[:, None]
    support = p > 0
    xmax = np.where(support, x, -np.inf).max(axis=1)
    shifted = x - xmax[:, None]
    with np.errstate(over="ignore", invalid="ignore"):  # e^{x - xmax} off the support is not used
        weights = np.where(support, p * np.exp(shifted), 0.0)
    total = weights.sum(axis=1)
    log_z = xmax + np.log(total)
    log_ratio = shifted - np.log(total)[:, None]
    policy = weights / total[:, None]
    batch = shape[:-1]
    return PMDPartResult(
        policy=policy.reshape(shape),
        log_ratio=log_ratio.reshape(shape),
        log_partition=log_z.reshape(batch),
        tau=tau_rows.reshape(batch),
    )


def pmd_mean(pi, r, tau, *, method: str = "auto") -> PMDMeanResult:
    r"""PMD-mean's population update (docs/math.md §3), via the Wright omega function.

    Parameters
    ----------
    pi : old policy ``pi_t``, actions on the last axis, rows summing to 1.
    r : rewards, broadcast against ``pi``.
    tau : regularisation strength per prompt, > 0.
    method : ``"auto"`` (default) uses the exact shortcut when every prompt's
        rewards take at most two distinct values (binary rewards: the update
        then depends on ``pi_t`` only through the success probability) or at
        most ``MAX_GROUPS``, and the general solver otherwise; ``"general"``
        and ``"grouped"`` force one path.

    Returns
    -------
    PMDMeanResult
    """
    if method not in ("auto", "general", "grouped"):
        raise ValueError(f"method must be 'auto', 'general' or 'grouped', got {method!r}")
    pi2, r2, tau_rows, shape = _flatten(pi, r, tau, check_values=False)
    stats = _blocks.row_stats(pi2, r2, shape[:-1])
    n, k = pi2.shape
    out = _Outputs(n, k)

    if method == "auto" and stats.two_valued.all():
        _two_valued(pi2, r2, tau_rows, stats, out)
        return out.result(tau_rows, r2, shape)
    if method != "general":
        groups = _distinct_groups(r2) if method == "grouped" or _few_values(r2[0]) else None
        if groups is not None:
            _grouped(pi2, tau_rows, stats, groups, out)
            return out.result(tau_rows, r2, shape)
        if method == "grouped":
            raise ValueError(f"method='grouped' needs at most {MAX_GROUPS} distinct rewards per prompt")
    _solve_general(pi2, r2, tau_rows, stats, out)
    return out.result(tau_rows, r2, shape)


def _solve_general(pi2, r2, tau_rows, stats, out) -> None:
    _blocks.target_stats(pi2, r2, tau_rows, stats)
    _multiplier.solve_rows_into(pi2, r2, tau_rows, stats, out.policy, out.log_ratio, out.lam)
    out.mean_reward = stats.mean_hi + stats.mean_lo


class _Outputs:
    def __init__(self, n, k):
        # One allocation for both arrays: a caller that updates repeatedly gets
        # the same memory back from the allocator instead of fresh pages.
        both = np.empty((2, n, k))
        self.policy, self.log_ratio = both[0], both[1]
        self.lam = np.zeros(n)
        self.mean_reward = None

    def result(self, tau_rows, r2, shape) -> PMDMeanResult:
        batch = shape[:-1]
        return PMDMeanResult(
            policy=self.policy.reshape(shape),
            log_ratio=self.log_ratio.reshape(shape),
            lam=self.lam.reshape(batch),
            mean_reward=self.mean_reward.reshape(batch),
            tau=tau_rows.reshape(batch),
            _rewards=r2.reshape(shape),
        )


def _two_valued(pi2, r2, tau_rows, stats, out) -> None:
    """Rows whose rewards take two values: the binary solution with
    ``p = pi(r = max)`` and ``tau_eff = tau / (max - min)`` (docs/math.md §4)."""
    both = stats.mass_max + stats.mass_min
    p_hi, p_lo = stats.mass_max / both, stats.mass_min / both  # p_lo, not 1 - p_hi: exact 0s
    gap = stats.rmax - stats.rmin
    out.mean_reward = stats.rmin + p_hi * gap
    s_hi = p_lo * gap / tau_rows  # the targets a: the limit when lambda = 0
    s_lo = -p_hi * gap / tau_rows
    u = np.full(p_hi.shape, -np.inf)
    live = (p_hi > 0) & (p_lo > 0) & (s_hi > 0) & (s_lo < 0)  # targets that underflow count as flat
    if live.any():
        u[live], s_hi[live], s_lo[live] = binary.solve_two_point(
            p_hi[live], s_hi[live], s_lo[live], q=p_lo[live]
        )
    out.lam[...] = np.exp(u)
    inv_s = 1.0 / stats.total
    # log_ratio = (m step + shift) + base with m = [r == max]: the log-ratio of
    # smaller magnitude is the base, exact; the larger one is recovered by a sum,
    # within an ulp of itself.
    step = s_hi - s_lo
    hi_base = np.abs(s_hi) < np.abs(s_lo)
    base = np.where(hi_base, s_hi, s_lo)
    shift = np.where(hi_base, -step, 0.0)
    with np.errstate(over="ignore"):
        rho_lo = np.where(live, np.exp(s_lo), 1.0) * inv_s
        rho_step = np.where(live, np.exp(s_hi), 1.0) * inv_s - rho_lo
    n, k = pi2.shape

    def block(i0, i1):
        sl = slice(i0, i1)
        _kernels.two_valued_outputs(
            pi2[sl],
            r2[sl],
            stats.rmax[sl],
            step[sl],
            shift[sl],
            base[sl],
            rho_lo[sl],
            rho_step[sl],
            out.policy[sl],
            out.log_ratio[sl],
        )

    _blocks.map_blocks(block, n, k)
    if max(s_hi.max(), s_lo.max()) >= 700.0:  # a ratio past e^700 (a group of mass < 1e-300)
        out.policy[...] = _multiplier.policy_from_log_ratio(pi2, inv_s, out.log_ratio, u)


def _few_values(row: np.ndarray) -> bool:
    return np.unique(row).size <= MAX_GROUPS


def _distinct_groups(r2: np.ndarray):
    """``(values, index)`` with ``values`` (n, G) sorted per row (padded by the row
    maximum) and ``index`` (n, K) the group of each entry; ``None`` if some row has
    more than ``MAX_GROUPS`` distinct rewards."""
    srt = np.sort(r2, axis=1)
    new = np.ones(srt.shape, dtype=bool)
    new[:, 1:] = srt[:, 1:] != srt[:, :-1]
    g = int(new.sum(axis=1).max())
    if g > MAX_GROUPS:
        return None
    rows, cols = np.nonzero(new)
    gid = np.cumsum(new, axis=1)[rows, cols] - 1
    values = np.repeat(srt[:, -1:], g, axis=1)
    values[rows, gid] = srt[rows, cols]
    index = np.zeros(r2.shape, dtype=np.intp)
    for j in range(g - 1):
        index += r2 > values[:, j : j + 1]
    return values, index


def _grouped(pi2, tau_rows, stats, groups, out) -> None:
    """Rows with few distinct rewards: solve on the distinct values (masses summed),
    then give every action its group's log-ratio. Exact: the update's log-ratio
    depends on an action only through its reward."""
    values, index = groups
    n, g = values.shape
    mass = np.stack([_blocks.rowdot(pi2, (index == j).astype(np.float64)) for j in range(g)], axis=1)
    reduced = _blocks.row_stats(mass, values, (n,))
    group = _Outputs(n, g)
    _solve_general(mass, values, tau_rows, reduced, group)
    out.mean_reward, out.lam[...] = group.mean_reward, group.lam
    out.log_ratio[...] = np.take_along_axis(group.log_ratio, index, axis=1)
    with np.errstate(divide="ignore"):
        out.policy[...] = _multiplier.policy_from_log_ratio(
            pi2, 1.0 / stats.total, out.log_ratio, np.log(out.lam)
        )
