"""The off-policy update shared by the bandit simulator and the LLM trainer.

One rollout batch from ``pi_old`` feeds ``epochs x m`` optimiser steps (docs/math.md §5).
:func:`policy_update` is three steps:

1. :func:`_prepare`: the advantages of the whole batch, once
   (:meth:`Algorithm.advantages`); ``pi_old``'s log-probs, decided by
   :func:`pmdlab.rl.anchor.anchor_logprobs` from ``Algorithm.old_source``
   (the sampler's, the behaviour policy's, or the current policy's), with
   the log-probs the sampler's are compared with (their per-token mismatch
   is logged: ``sampler_abs_diff``, ``sampler_kl_k3``); and the schedule:
   the batch shuffled into ``m`` minibatches, by group (all responses to a
   prompt together, the default) or by response, ``epochs`` times over;
2. :func:`_minibatch_step`, per minibatch of the schedule: the loss of each
   micro-batch (:func:`_micro_step`) with the minibatch's normaliser, so
   that gradient accumulation over micro-batches gives the minibatch's
   loss and gradient exactly; clipping; then one optimiser step;
3. :func:`_metrics`: the diagnostics averaged over the minibatches.

A non-finite loss or gradient norm skips that optimiser step and is counted
(``skipped_steps``); the caller decides when too many in a row stop a run.

**Data parallel** (:class:`DataParallel`). Each rank passes its shard of the
batch (whole groups) and ``all_reduce`` (a sum over ranks, e.g.
``torch.distributed.all_reduce``). The minibatch normaliser and the loss
are then global sums, each rank's loss is its share of the global loss,
and with gradients summed over ranks (``loss_scale = world size`` undoes
DDP's and FSDP's averaging) every rank takes the step one process would
take on the whole batch. Every rank reaches the same skip decision because
it is made on reduced values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from . import losses
from .algorithms import Algorithm
from .anchor import anchor_logprobs
from .groups import Groups
from .rollout import Rollout

__all__ = ["DataParallel", "minibatches", "policy_update"]


@dataclass(frozen=True)
class DataParallel:
    """How one rank of a data-parallel update combines with the others (module docstring).

    ``all_reduce`` sums a tensor over ranks (in place, and returns it);
    ``loss_scale`` multiplies each backward pass (the world size, undoing the
    averaging of DDP's and FSDP's gradient reduction); ``no_sync()`` (e.g.
    DDP's) wraps every micro-batch's backward but a minibatch's last.
    """

    all_reduce: Callable[[torch.Tensor], torch.Tensor]
    loss_scale: float = 1.0
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None


def minibatches(
    groups: Groups, count: int, generator: torch.Generator | None = None, by: str = "group"
) -> list[torch.Tensor]:
    """Shuffle the batch into ``count`` near-equal minibatches of response indices.

    ``by="group"`` keeps each group whole (groups are dealt out in a random
    order); ``by="response"`` shuffles responses freely.
    """
    n = groups.index.numel()
    if count < 1:
        raise ValueError(f"the number of minibatches must be at least 1, got {count}")
    if by == "response":
        if count > n:
            raise ValueError(f"{count} minibatches but only {n} responses")
        return list(torch.tensor_split(torch.randperm(n, generator=generator), count))
    if by != "group":
        raise ValueError(f"by must be 'group' or 'response', got {by!r}")
    if count > groups.count:
        raise ValueError(f"{count} minibatches but only {groups.count} groups")
    device = groups.index.device
    perm = torch.randperm(groups.count, generator=generator).to(device)
    sizes = groups.sizes[perm]
    ends = torch.cumsum(sizes, 0)
    if groups.contiguous:
        # Group g occupies [start_g, start_g + size_g): lay the permuted groups end to end.
        starts = (torch.cumsum(groups.sizes, 0) - groups.sizes)[perm]
        order = torch.repeat_interleave(starts - (ends - sizes), sizes) + torch.arange(n, device=device)
    else:
        rank = torch.empty_like(perm)
        rank[perm] = torch.arange(groups.count, device=device)
        order = torch.argsort(rank[groups.index], stable=True)
    cuts = [int(ends[c[-1]]) for c in torch.tensor_split(torch.arange(groups.count), count)]
    return list(torch.tensor_split(order, cuts[:-1]))


def policy_update(
    log_probs: Callable[[Rollout], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    rollout: Rollout,
    algorithm: Algorithm,
    *,
    num_minibatches: int = 1,
    epochs: int = 1,
    generator: torch.Generator | None = None,
    by: str = "group",
    weights: torch.Tensor | None = None,
    advantages: torch.Tensor | None = None,
    behaviour_logprobs: torch.Tensor | None = None,
    anchor_log_probs: Callable[[Rollout], torch.Tensor] | None = None,
    micro_batches: Callable[[Rollout], Sequence[torch.Tensor]] | None = None,
    parameters: Sequence[torch.Tensor] | None = None,
    max_grad_norm: float | None = None,
    group_diagnostics: bool = True,
    parallel: DataParallel | None = None,
) -> dict[str, float]:
    """Run the ``epochs x m`` optimiser steps of one rollout batch; return averaged metrics.

    Each epoch reshuffles the batch into ``num_minibatches`` minibatches.
    ``log_probs(rollout)`` is the trained policy's (B, T) token log-probs.
    ``behaviour_logprobs``: the behaviour policy's token log-probs, computed when
    the batch was sampled (``None``: not computed); ``pi_old`` is decided from them,
    the sampler's and the trained policy's by :func:`pmdlab.rl.anchor.anchor_logprobs`;
    ``anchor_log_probs`` (default ``log_probs``) is what it recomputes the trained
    policy's with, under ``no_grad`` (e.g. micro-batched, with sharded weights gathered).
    ``micro_batches(minibatch)`` splits a minibatch into index sets for
    gradient accumulation (default: none). ``max_grad_norm`` clips the
    gradient of ``parameters`` (needed then). ``parallel``: this rank's part
    in a data-parallel update (:class:`DataParallel`; ``None``: one process).

    Metrics are means over the minibatches of the loss's diagnostics, plus
    ``behaviour_abs_diff`` and ``behaviour_kl_k3`` (the trained policy before this
    batch's first step against ``pi_old``, on the first minibatch: what the lag of
    an asynchronous batch costs), ``loss``, ``grad_norm`` (when clipping),
    ``skipped_steps``, ``optimizer_steps`` and ``trailing_skipped_steps`` (the
    skipped steps since the last one taken).
    """
    if rollout.rewards is None:
        raise ValueError("the rollout has no rewards: score it before the update")
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if max_grad_norm is not None and parameters is None:
        raise ValueError("max_grad_norm needs the parameters to clip")
    schedule = (num_minibatches, epochs, generator, by)
    anchor = log_probs if anchor_log_probs is None else anchor_log_probs
    batch = _prepare(anchor, rollout, algorithm, behaviour_logprobs, weights, advantages, schedule)
    settings = _Settings(
        log_probs, optimizer, algorithm, micro_batches, parameters, max_grad_norm, group_diagnostics, parallel
    )
    tally = _Tally()
    for position, index in enumerate(batch.schedule):
        _minibatch_step(settings, batch, tally, index, first=position == 0)
    return _metrics(tally, len(batch.schedule))


@dataclass
class _Batch:
    """One rollout batch ready for its minibatch steps (:func:`_prepare`)."""

    rollout: Rollout
    advantages: torch.Tensor  # (B,), of the whole batch
    weights: torch.Tensor | None  # (B,) sample weights
    old: torch.Tensor  # (B, T) log pi_old
    reference: torch.Tensor | None  # (B, T) compared with rollout.sampler_logprobs (None: no comparison)
    schedule: list[torch.Tensor]  # each minibatch's response indices, in order


@dataclass(frozen=True)
class _Settings:
    """What every minibatch step of one update uses: :func:`policy_update`'s arguments."""

    log_probs: Callable[[Rollout], torch.Tensor]
    optimizer: torch.optim.Optimizer
    algorithm: Algorithm
    micro_batches: Callable[[Rollout], Sequence[torch.Tensor]] | None
    parameters: Sequence[torch.Tensor] | None
    max_grad_norm: float | None
    group_diagnostics: bool
    parallel: DataParallel | None


@dataclass
class _Tally:
    """What the minibatch steps accumulate for :func:`_metrics`."""

    history: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # per minibatch (and micro-batch)
    drift: dict[str, torch.Tensor] = field(default_factory=dict)  # pi_theta before any step against pi_old
    skipped: int = 0
    steps: int = 0
    trailing: int = 0  # skipped since the last step taken

    def add(self, key: str, value) -> None:
        self.history.setdefault(key, []).append(value)

    def count(self, taken: bool) -> None:
        if taken:
            self.steps += 1
            self.trailing = 0
        else:
            self.skipped += 1
            self.trailing += 1


def _prepare(log_probs, rollout, algorithm, behaviour, weights, advantages, schedule) -> _Batch:
    """The batch's advantages (unless given), ``pi_old`` and the log-probs the sampler's are
    compared with (:func:`pmdlab.rl.anchor.anchor_logprobs`), then the schedule of minibatches,
    ``schedule = (count, epochs, generator, by)``: ``epochs`` shuffles of :func:`minibatches`."""
    groups = Groups.from_ids(rollout.group_ids)
    if advantages is None:
        advantages = algorithm.advantages(rollout.rewards, groups, weights)
    old, reference = anchor_logprobs(algorithm.old_source, rollout, behaviour, log_probs)
    if rollout.sampler_logprobs is None or reference is rollout.sampler_logprobs:
        reference = None  # nothing to compare the sampler's log-probs with
    count, epochs, generator, by = schedule
    order = [index for _ in range(epochs) for index in minibatches(groups, count, generator, by)]
    return _Batch(rollout, advantages, weights, old, reference, order)


def _minibatch_step(s: _Settings, batch: _Batch, tally: _Tally, index: torch.Tensor, first: bool) -> None:
    """One optimiser step on the minibatch ``index``: its normaliser (summed over ranks), the
    loss and backward pass of each micro-batch, clipping, then the step, or a skip when the
    loss or the gradient norm is not finite. ``first``: the schedule's first minibatch."""
    sub = batch.rollout.select(index)
    normalizer = s.algorithm.normalizer(sub.mask, None if batch.weights is None else batch.weights[index])
    if s.parallel is not None:
        normalizer = s.parallel.all_reduce(normalizer.detach().clone())
    s.optimizer.zero_grad(set_to_none=True)
    parts = [slice(None)] if s.micro_batches is None else s.micro_batches(sub)
    total = 0.0
    for number, part in enumerate(parts):
        last = number == len(parts) - 1
        total = total + _micro_step(s, batch, tally, index, sub, part, normalizer, first, last)
    if s.parallel is not None:
        total = torch.as_tensor(total, dtype=torch.float64, device=normalizer.device)
        total = s.parallel.all_reduce(total.clone())
    ok = bool(torch.isfinite(total))
    if ok and s.max_grad_norm is not None:
        norm = torch.nn.utils.clip_grad_norm_(s.parameters, s.max_grad_norm)
        tally.add("grad_norm", norm.detach())
        ok = bool(torch.isfinite(norm))
    if ok:
        s.optimizer.step()
    tally.count(ok)
    tally.add("loss", total)


def _micro_step(s, batch, tally, index, sub, part, normalizer, first, last) -> torch.Tensor:
    """The loss of the micro-batch ``part`` of the minibatch ``sub = rollout[index]`` and its
    backward pass; its diagnostics (weighted by its share of ``sub``) go to ``tally``, and on
    the ``first`` minibatch the drift of the trained policy from ``pi_old``. Returns the loss."""
    micro = sub if s.micro_batches is None else sub.select(part)
    share = len(micro) / len(sub)
    groups = Groups.from_ids(micro.group_ids) if s.group_diagnostics else None
    current = s.log_probs(micro)
    old = batch.old[index][part]
    mask = micro.mask.to(batch.old.dtype)
    if first:
        for k, v in losses.sampler_mismatch(current.detach(), old, mask).items():
            key = k.replace("sampler_", "behaviour_")
            tally.drift[key] = tally.drift.get(key, 0.0) + v.detach() * share
    weights = None if batch.weights is None else batch.weights[index][part]
    adv = batch.advantages[index][part]
    out = s.algorithm.loss(
        current, old, micro.mask, adv, groups=groups, weights=weights, normalizer=normalizer
    )
    if batch.reference is not None:
        sampler = batch.rollout.sampler_logprobs[index][part]
        out.metrics.update(losses.sampler_mismatch(batch.reference[index][part], sampler, mask))
    parallel = s.parallel
    quiet = parallel is not None and parallel.no_sync is not None and not last
    scale = 1.0 if parallel is None else parallel.loss_scale
    with parallel.no_sync() if quiet else contextlib.nullcontext():
        (out.loss * scale if scale != 1.0 else out.loss).backward()
    for k, v in out.metrics.items():
        tally.add(k, v.detach() * share if s.micro_batches is not None else v.detach())
    return out.loss.detach()


def _metrics(tally: _Tally, count: int) -> dict[str, float]:
    """The loss diagnostics, ``loss`` and ``grad_norm`` averaged over the ``count`` minibatches,
    the drift of the first, and the counts of steps taken and skipped."""
    out = {k: float(torch.stack(v).sum()) / count for k, v in tally.history.items()}
    out.update({k: float(v) for k, v in tally.drift.items()})
    out["skipped_steps"] = float(tally.skipped)
    out["optimizer_steps"] = float(tally.steps)
    out["trailing_skipped_steps"] = float(tally.trailing)
    return out
