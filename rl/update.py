"""The off-policy update shared by the bandit simulator and the LLM trainer.

One rollout batch from ``pi_old`` feeds ``m`` optimiser steps (docs/math.md §5):

1. advantages of the whole batch, once (:meth:`Algorithm.advantages`);
2. ``pi_old``'s log-probs: the sampler's own (``old_source="sampler"``), or
   recomputed once under ``no_grad`` by the policy being trained; when both
   exist their per-token mismatch is logged (``sampler_abs_diff``, ``sampler_kl_k3``);
3. the batch is shuffled into ``m`` minibatches, by group (all responses to
   a prompt together, the default) or by response, ``epochs`` times over;
4. per minibatch: the loss of each micro-batch with the minibatch's
   normaliser, so that gradient accumulation over micro-batches gives the
   minibatch's loss and gradient exactly; then one optimiser step.

A non-finite loss or gradient norm skips that optimiser step and is counted
(``skipped_steps``); the caller decides when too many in a row stop a run.

**Data parallel.** Each rank passes its shard of the batch (whole groups)
and ``all_reduce`` (a sum over ranks, e.g. ``torch.distributed.all_reduce``).
The minibatch normaliser and the loss are then global sums, each rank's
loss is its share of the global loss, and with gradients summed over ranks
(``loss_scale = world size`` undoes DDP's and FSDP's averaging) every rank
takes the step one process would take on the whole batch. Every rank
reaches the same skip decision because it is made on reduced values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch

from . import losses
from .algorithms import Algorithm
from .groups import Groups
from .rollout import Rollout

__all__ = ["minibatches", "policy_update"]


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
    old_logprobs: torch.Tensor | None = None,
    micro_batches: Callable[[Rollout], Sequence[torch.Tensor]] | None = None,
    parameters: Sequence[torch.Tensor] | None = None,
    max_grad_norm: float | None = None,
    group_diagnostics: bool = True,
    all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    loss_scale: float = 1.0,
    no_sync: Callable[[], contextlib.AbstractContextManager] | None = None,
) -> dict[str, float]:
    """Run the ``epochs x m`` optimiser steps of one rollout batch; return averaged metrics.

    Each epoch reshuffles the batch into ``num_minibatches`` minibatches.
    ``log_probs(rollout)`` is the trained policy's (B, T) token log-probs.
    ``micro_batches(minibatch)`` splits a minibatch into index sets for
    gradient accumulation (default: none). ``max_grad_norm`` clips the
    gradient of ``parameters`` (needed then). Metrics are means over the
    minibatches of the loss's diagnostics, plus ``behaviour_abs_diff`` and ``behaviour_kl_k3`` (the
    trained policy before this batch's first step against ``pi_old``, on the first minibatch:
    what the lag of an asynchronous batch costs), ``loss``, ``grad_norm`` (when
    clipping), ``skipped_steps``, ``optimizer_steps`` and
    ``trailing_skipped_steps`` (the skipped steps since the last one taken).
    Data parallel (see the module docstring): ``all_reduce`` sums a tensor
    over ranks, ``loss_scale`` multiplies each backward pass, ``no_sync()``
    (e.g. DDP's) wraps every micro-batch's backward but the last.
    """
    if rollout.rewards is None:
        raise ValueError("the rollout has no rewards: score it before the update")
    groups = Groups.from_ids(rollout.group_ids)
    if advantages is None:
        advantages = algorithm.advantages(rollout.rewards, groups, weights)
    sampler = rollout.sampler_logprobs
    trainer = old_logprobs
    if algorithm.old_source == "sampler":
        if sampler is None:
            raise ValueError("old_source='sampler' needs a rollout with sampler_logprobs")
        old_logprobs = sampler  # the trainer's, if given, serve only to compare
    elif old_logprobs is None:
        with torch.no_grad():
            old_logprobs = trainer = log_probs(rollout)
    compare = sampler is not None and trainer is not None and trainer is not sampler
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if max_grad_norm is not None and parameters is None:
        raise ValueError("max_grad_norm needs the parameters to clip")
    history: dict[str, list[torch.Tensor]] = {}
    skipped = steps = trailing = 0
    schedule = [index for _ in range(epochs) for index in minibatches(groups, num_minibatches, generator, by)]
    drift: dict[str, torch.Tensor] = {}  # pi_theta before any step of this batch against pi_old
    for position, index in enumerate(schedule):
        sub = rollout.select(index)
        w = None if weights is None else weights[index]
        normalizer = algorithm.normalizer(sub.mask, w)
        if all_reduce is not None:
            normalizer = all_reduce(normalizer.detach().clone())
        optimizer.zero_grad(set_to_none=True)
        parts = [slice(None)] if micro_batches is None else micro_batches(sub)
        total = 0.0
        for number, part in enumerate(parts):
            micro = sub if micro_batches is None else sub.select(part)
            groups_mb = Groups.from_ids(micro.group_ids) if group_diagnostics else None
            current = log_probs(micro)
            if position == 0:
                mask = micro.mask.to(old_logprobs.dtype)
                share = len(micro) / len(sub)
                for k, v in losses.sampler_mismatch(
                    current.detach(), old_logprobs[index][part], mask
                ).items():
                    key = k.replace("sampler_", "behaviour_")
                    drift[key] = drift.get(key, 0.0) + v.detach() * share
            out = algorithm.loss(
                current,
                old_logprobs[index][part],
                micro.mask,
                advantages[index][part],
                groups=groups_mb,
                weights=None if w is None else w[part],
                normalizer=normalizer,
            )
            if compare:
                mask = micro.mask.to(old_logprobs.dtype)
                out.metrics.update(losses.sampler_mismatch(trainer[index][part], sampler[index][part], mask))
            quiet = no_sync is not None and number < len(parts) - 1
            with no_sync() if quiet else contextlib.nullcontext():
                (out.loss * loss_scale if loss_scale != 1.0 else out.loss).backward()
            total = total + out.loss.detach()
            share = len(micro) / len(sub)
            for k, v in out.metrics.items():
                history.setdefault(k, []).append(
                    v.detach() * share if micro_batches is not None else v.detach()
                )
        if all_reduce is not None:
            total = all_reduce(torch.as_tensor(total, dtype=torch.float64, device=normalizer.device).clone())
        ok = bool(torch.isfinite(total))
        if ok and max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
            history.setdefault("grad_norm", []).append(norm.detach())
            ok = bool(torch.isfinite(norm))
        if ok:
            optimizer.step()
            steps += 1
            trailing = 0
        else:
            skipped += 1
            trailing += 1
        history.setdefault("loss", []).append(total)
    out = {k: float(torch.stack(v).sum()) / len(schedule) for k, v in history.items()}
    out.update({k: float(v) for k, v in drift.items()})
    out["skipped_steps"] = float(skipped)
    out["optimizer_steps"] = float(steps)
    out["trailing_skipped_steps"] = float(trailing)
    return out
