"""Which log-probs are ``pi_old``: the one place where it is decided, for every trainer.

The off-policy losses regress ``Delta = sum_t (log pi_theta - log pi_old)``
(docs/math.md §5); ``Algorithm.old_source`` says whose token log-probs are
``log pi_old``:

* ``sampler``: the sampler's own log-probs (``Rollout.sampler_logprobs``);
* ``trainer``: the trainer's forward pass of the weights that sampled the
  batch (the behaviour policy), made when the batch was sampled;
* ``current``: the policy being trained, at the start of the update: with
  lagging rollouts the loss is anchored at the current policy, not at the
  behaviour policy.

Besides ``pi_old``, :func:`anchor_logprobs` returns the trainer-side
log-probs of the sampling weights that the sampler's are compared with
(``losses.sampler_mismatch``: ``sampler_abs_diff``, ``sampler_kl_k3``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .rollout import Rollout

__all__ = ["OLD_SOURCES", "anchor_logprobs", "behaviour_pass_needed"]

OLD_SOURCES = ("trainer", "sampler", "current")


def behaviour_pass_needed(old_source: str) -> bool:
    """Whether the sampling process must also run a forward pass of the sampling weights
    to get the behaviour policy's token log-probs: always, unless ``pi_old`` is the sampler's."""
    return old_source != "sampler"


def anchor_logprobs(
    old_source: str,
    rollout: Rollout,
    behaviour: torch.Tensor | None,
    log_probs: Callable[[Rollout], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(old, reference)`` for one rollout batch.

    ``old`` (B, T) is ``log pi_old`` for the loss; ``reference`` the trainer-side
    log-probs of the sampling weights that ``rollout.sampler_logprobs`` are compared
    with (``None``: nothing to compare). ``behaviour``: the behaviour policy's token
    log-probs, computed when the batch was sampled (``None``: not computed);
    ``log_probs(rollout)``: the trained policy's, called under ``no_grad``.

    * ``sampler``: ``old = rollout.sampler_logprobs``, ``reference = behaviour``;
    * ``trainer``: ``old = reference = behaviour``, or if ``None`` ``log_probs(rollout)``
      now (valid only when the trained weights are those that sampled: no lag);
    * ``current``: ``old = log_probs(rollout)``, always recomputed;
      ``reference = behaviour``, or ``old`` if ``None``.
    """
    if old_source not in OLD_SOURCES:
        raise ValueError(f"old_source must be one of {OLD_SOURCES}, got {old_source!r}")
    if old_source == "sampler":
        if rollout.sampler_logprobs is None:
            raise ValueError("old_source='sampler' needs a rollout with sampler_logprobs")
        return rollout.sampler_logprobs, behaviour
    if old_source == "trainer" and behaviour is not None:
        return behaviour, behaviour
    with torch.no_grad():
        old = log_probs(rollout)
    return old, old if behaviour is None else behaviour
