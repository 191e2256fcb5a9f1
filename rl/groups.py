r"""Per-prompt group baselines and advantages (docs/math.md §5–6).

A rollout batch holds ``N`` responses; ``group_ids`` (``N`` integers, any
labels, uneven group sizes allowed) says which prompt each answers. With
``n`` responses in a group and rewards ``r_1..r_n``:

* mean: ``b = (1/n) sum_j r_j`` (``sum_j w_j r_j / sum_j w_j`` with weights);
* leave-one-out mean (RLOO): ``b_i = (1/(n-1)) sum_{j != i} r_j``;
* partition: ``b = tau log((1/n) sum_j e^{r_j/tau})`` (weighted likewise);
* leave-one-out partition: ``b_i = tau log((1/(n-1)) sum_{j != i} e^{r_j/tau})``;
* GRPO: ``A_i = (r_i - mean) / (std + eps)`` with the unbiased group std.

The advantage is ``A_i = r_i - b_i``. Log-sum-exps are max-shifted, so
``tau = 1e-4`` does not overflow. Every reduction is a scatter over the
whole batch (no loop over groups). A singleton group has no leave-one-out
baseline and no standard deviation: its leave-one-out and GRPO advantages
are 0 (no learning signal), stated here rather than left to a division by 0.
Baselines carry no gradient (they are computed from rewards).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "BASELINES",
    "Groups",
    "advantages",
    "grpo_advantages",
    "leave_one_out_mean",
    "leave_one_out_partition",
    "leave_one_out_partition_clamped",
    "mean_baseline",
    "partition_baseline",
]


@dataclass(frozen=True)
class Groups:
    """Group structure of a batch: ``index[i]`` in ``0..G-1`` and the group ``sizes``.

    Build with :meth:`from_ids` (any integer labels) or :meth:`from_sizes`
    (consecutive groups). Reductions return one value per group; ``[index]``
    broadcasts them back to the responses.
    """

    index: torch.Tensor
    sizes: torch.Tensor
    #: Whether each group's responses are adjacent, groups numbered in order
    #: (as in a rollout of ``n`` responses per prompt).
    contiguous: bool = False

    @classmethod
    def from_ids(cls, group_ids) -> "Groups":
        """Groups of equal ids (any integer labels, in any order).

        When every group's responses are adjacent (the usual rollout layout), the
        groups are numbered in order of appearance and found without a sort.
        """
        ids = torch.as_tensor(group_ids)
        if ids.ndim != 1:
            raise ValueError(f"group_ids must be one-dimensional, got shape {tuple(ids.shape)}")
        if ids.numel() == 0:
            raise ValueError("group_ids is empty: a batch needs at least one response")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"group_ids must be integers, got {ids.dtype}")
        runs, index, sizes = torch.unique_consecutive(ids, return_inverse=True, return_counts=True)
        if torch.unique(runs).numel() == runs.numel():
            return cls(index=index, sizes=sizes, contiguous=True)
        _, index, sizes = torch.unique(ids, return_inverse=True, return_counts=True)
        return cls(index=index, sizes=sizes)

    @classmethod
    def from_sizes(cls, sizes, device=None) -> "Groups":
        """Consecutive groups of the given sizes (``[16] * 512``: 512 prompts x 16)."""
        sizes = torch.as_tensor(sizes, dtype=torch.long, device=device)
        if sizes.ndim != 1 or sizes.numel() == 0:
            raise ValueError("sizes must be a non-empty one-dimensional list of group sizes")
        if (sizes <= 0).any():
            bad = int(torch.nonzero(sizes <= 0)[0])
            raise ValueError(
                f"sizes[{bad}] = {int(sizes[bad])}: every group needs at least one response (empty group)"
            )
        index = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)
        return cls(index=index, sizes=sizes, contiguous=True)

    @property
    def count(self) -> int:
        return self.sizes.numel()

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.count, dtype=x.dtype, device=x.device).index_add_(0, self.index, x)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.full((self.count,), -math.inf, dtype=x.dtype, device=x.device)
        return out.scatter_reduce_(0, self.index, x, reduce="amax")

    def first(self, mask: torch.Tensor) -> torch.Tensor:
        """Per response: whether it is the first (lowest position) in its group with ``mask``."""
        pos = torch.arange(mask.numel(), device=mask.device)
        big = torch.full((self.count,), mask.numel(), dtype=pos.dtype, device=mask.device)
        first = big.scatter_reduce_(0, self.index, torch.where(mask, pos, mask.numel()), reduce="amin")
        return pos == first[self.index]


def _groups(groups, n: int) -> Groups:
    g = groups if isinstance(groups, Groups) else Groups.from_ids(groups)
    if g.index.numel() != n:
        raise ValueError(f"group_ids has {g.index.numel()} entries but rewards has {n}")
    return g


def _rewards(rewards) -> torch.Tensor:
    r = torch.as_tensor(rewards)
    if not r.is_floating_point():
        r = r.to(torch.get_default_dtype())
    if r.ndim != 1:
        raise ValueError(f"rewards must be one-dimensional (one per response), got shape {tuple(r.shape)}")
    if r.numel() == 0:
        raise ValueError("rewards is empty")
    bad = ~torch.isfinite(r)
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise ValueError(f"rewards[{i}] = {r[i].item()} is not finite")
    return r.detach()


def _tau(tau) -> float:
    t = float(tau)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"tau must be positive and finite, got {tau}")
    return t


def _weights(weights, r: torch.Tensor) -> torch.Tensor | None:
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=r.dtype, device=r.device).detach()
    if w.shape != r.shape:
        raise ValueError(f"weights has shape {tuple(w.shape)} but rewards has {tuple(r.shape)}")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be finite and non-negative")
    return w


def mean_baseline(rewards, groups, weights=None) -> torch.Tensor:
    """``b_i = sum_{j in g(i)} w_j r_j / sum_{j in g(i)} w_j`` (``w = 1`` by default)."""
    r = _rewards(rewards)
    g = _groups(groups, r.numel())
    w = _weights(weights, r)
    if w is None:
        return (g.sum(r) / g.sizes.to(r.dtype))[g.index]
    total = g.sum(w)
    if (total <= 0).any():
        raise ValueError("weights sum to zero in some group")
    return (g.sum(w * r) / total)[g.index]


def leave_one_out_mean(rewards, groups) -> torch.Tensor:
    """``b_i = (sum_j r_j - r_i) / (n - 1)``; a singleton's baseline is its own reward."""
    r = _rewards(rewards)
    g = _groups(groups, r.numel())
    n = g.sizes[g.index].to(r.dtype)
    loo = (g.sum(r)[g.index] - r) / (n - 1).clamp(min=1)
    return torch.where(n > 1, loo, r)


def partition_baseline(rewards, groups, tau, weights=None) -> torch.Tensor:
    """``b_i = tau log(sum_j w_j e^{r_j/tau} / sum_j w_j)`` over the group, max-shifted."""
    r = _rewards(rewards)
    g = _groups(groups, r.numel())
    t = _tau(tau)
    w = _weights(weights, r)
    x = r / t
    m = g.max(x) if w is None else g.max(torch.where(w > 0, x, -math.inf))
    e = torch.exp(x - m[g.index])
    if w is None:
        log_mean = torch.log(g.sum(e) / g.sizes.to(r.dtype))
    else:
        total = g.sum(w)
        if (total <= 0).any():
            raise ValueError("weights sum to zero in some group")
        log_mean = torch.log(g.sum(w * e) / total)
    return (t * (m + log_mean))[g.index]


def leave_one_out_partition(rewards, groups, tau) -> torch.Tensor:
    r"""``b_i = tau log((1/(n-1)) sum_{j != i} e^{r_j/tau})``; a singleton's is ``r_i``.

    Max-shifted by the largest *other* reward: for the group's (first) argmax
    that is the second largest, and its sum is formed directly; for every
    other response it is the group maximum, and the sum over ``j != i`` is
    the group sum less its own term, which still contains the maximum's 1,
    so the subtraction loses at most ``log2(n)`` bits.
    """
    r = _rewards(rewards)
    g = _groups(groups, r.numel())
    t = _tau(tau)
    x = r / t
    top = g.max(x)[g.index]
    is_arg = g.first(x == top)
    second = g.max(torch.where(is_arg, -math.inf, x))[g.index]
    e_top = torch.exp(x - top)
    others_of_arg = g.sum(torch.where(is_arg, 0.0, torch.exp(x - second)))
    log_sum = torch.where(
        is_arg,
        second + torch.log(others_of_arg[g.index]),
        top + torch.log(g.sum(e_top)[g.index] - e_top),
    )
    n = g.sizes[g.index].to(r.dtype)
    loo = t * (log_sum - torch.log((n - 1).clamp(min=1)))
    return torch.where(n > 1, loo, r)


#: The floor of the authors' clamped leave-one-out partition (their training code's ``min=1e-8``).
LOO_CLAMP = 1e-8


def leave_one_out_partition_clamped(rewards, groups, tau, floor: float = LOO_CLAMP) -> torch.Tensor:
    r"""The authors' code's leave-one-out partition, reproduced as written:

    ``b_i = M + tau log(clamp((1/(n-1)) sum_{j != i} e^{(r_j - M)/tau}, min=floor))``, ``M`` the
    group's maximum (``r_i`` included). Where the others' mean term is above ``floor`` it equals
    :func:`leave_one_out_partition`; where not, the clamp decides: the group's lone best response
    gets ``b_i = M + tau log(floor)``, so at ``tau = 0.01`` a lone correct answer among wrong
    ones has advantage ``-0.01 log(1e-8) = 0.184`` instead of about 1. A singleton's is ``r_i``.
    """
    r = _rewards(rewards)
    g = _groups(groups, r.numel())
    t = _tau(tau)
    x = r / t
    top = g.max(x)[g.index]
    e = torch.exp(x - top)
    n = g.sizes[g.index].to(r.dtype)
    others = (g.sum(e)[g.index] - e) / (n - 1).clamp(min=1)
    loo = t * (top + torch.log(others.clamp(min=floor)))
    return torch.where(n > 1, loo, r)


def grpo_advantages(rewards, groups, eps: float = 1e-6, scale: bool = True) -> torch.Tensor:
    """``A_i = (r_i - mean) / (std + eps)`` with the unbiased group std (``scale=False``:
    ``r_i - mean``, as in Dr. GRPO). Singletons get 0."""
    r = _rewards(rewards)
    g = _groups(groups, r.numel())
    n = g.sizes.to(r.dtype)
    mean = g.sum(r) / n
    centred = r - mean[g.index]
    if not scale:
        return torch.where(g.sizes[g.index] > 1, centred, torch.zeros_like(r))
    std = torch.sqrt(g.sum(centred * centred) / (n - 1).clamp(min=1))
    return torch.where(g.sizes[g.index] > 1, centred / (std[g.index] + eps), torch.zeros_like(r))


#: Baselines by name, as the algorithm table selects them.
BASELINES = (
    "mean",
    "leave_one_out",
    "partition",
    "leave_one_out_partition",
    "leave_one_out_partition_clamped",
    "mean_std",
)


def advantages(rewards, groups, baseline: str = "mean", tau=None, weights=None) -> torch.Tensor:
    """``A_i = r_i - b_i`` for a baseline in :data:`BASELINES` (``tau`` for the partitions);
    ``mean_std`` is GRPO's ``(r_i - mean) / (std + eps)``."""
    r = _rewards(rewards)
    if baseline == "mean_std":
        if weights is not None:
            raise ValueError("baseline='mean_std' takes no weights")
        return grpo_advantages(r, groups)
    if baseline == "mean":
        b = mean_baseline(r, groups, weights)
    elif baseline == "leave_one_out":
        if weights is not None:
            raise ValueError("baseline='leave_one_out' takes no weights")
        b = leave_one_out_mean(r, groups)
    elif baseline == "partition":
        b = partition_baseline(r, groups, _tau(tau), weights)
    elif baseline == "leave_one_out_partition":
        if weights is not None:
            raise ValueError("baseline='leave_one_out_partition' takes no weights")
        b = leave_one_out_partition(r, groups, _tau(tau))
    elif baseline == "leave_one_out_partition_clamped":
        if weights is not None:
            raise ValueError("baseline='leave_one_out_partition_clamped' takes no weights")
        b = leave_one_out_partition_clamped(r, groups, _tau(tau))
    else:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    return r - b
