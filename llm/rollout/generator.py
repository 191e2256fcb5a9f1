"""The generator: the one object that makes scored batches, in the trainer's process or in a rollout worker.

``Generator.make(b, version)`` makes batch ``b`` (the batch trained at step
``b``) from the weights its policy holds now, version ``version``:

* plain rollouts: ``n`` responses to each of ``prompts`` new problems,
  sampled with the seed ``seed_of(seed, b, 1, rank)`` (one seed per batch,
  however many batches are made from one version), scored, with the
  behaviour policy's log-probs when :func:`~pmdlab.rl.anchor.behaviour_pass_needed`;
* partial rollouts (``partial_tokens > 0``, :mod:`.partial`): every response
  in progress ``partial_tokens`` further, new problems drawn until ``prompts``
  groups are finished.

It owns the data position (the task's) and the responses in progress:
:meth:`Generator.state_dict` is what a checkpoint needs to continue making
batches exactly. :func:`lead_of` says how many versions ahead of the
learner it may make them.
"""

from __future__ import annotations

import time

import torch

from pmdlab.rl.anchor import behaviour_pass_needed

from .. import build
from .batch import ScoredBatch, batch_stats
from .partial import PartialRollouts, next_partial_batch, sampling_lead

__all__ = ["Generator", "generate_batch", "lead_of"]


def lead_of(config) -> int:
    """How many versions ahead of the learner batches are made: batch ``b`` from version
    ``>= b - lead`` (``max_staleness``, less what carrying partial rollouts needs)."""
    return sampling_lead(config.lag, config.sampling.max_new_tokens, config.partial_tokens)


def generate_batch(
    policy, task, reward, problems: list, n: int, behaviour_pass: bool, seed: int, version: int
) -> ScoredBatch:
    """``n`` responses to each of ``problems`` from ``policy`` (seeded by ``seed``), scored; with
    ``behaviour_pass`` their log-probs and entropies under the weights that sampled them."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    policy.model.eval()
    rollout = policy.sample([p.prompt for p in problems], n)
    behaviour, entropy = policy.log_probs_and_entropy(rollout) if behaviour_pass else (None, None)
    texts = policy.decode(rollout)
    hits = [task.is_correct(t, problems[i // n]) for i, t in enumerate(texts)]
    rollout.rewards = torch.tensor(
        [reward(hit) for hit in hits], dtype=torch.float32, device=rollout.tokens.device
    )
    policy.model.train()
    stats = batch_stats(rollout, hits, n, entropy, time.perf_counter() - start, version)
    return ScoredBatch(rollout=rollout, behaviour=behaviour, version=version, stats=stats)


class Generator:
    """Scored batches from ``policy`` on ``task`` (see the module docstring).

    ``rank`` of ``world_size``: every rank draws every problem and samples its share (the
    prompts ``rank, rank + world_size, ...``), seeded by its rank."""

    def __init__(self, policy, task, reward, config, rank: int = 0, world_size: int = 1):
        self.policy, self.task, self.reward, self.config = policy, task, reward, config
        self.rank, self.world_size = rank, world_size
        self.behaviour_pass = behaviour_pass_needed(config.algorithm.old_source)
        self.lead = lead_of(config)
        self.partial = None
        if config.partial_tokens:  # whole batches: one training rank (TrainConfig.check_ranks)
            self.partial = PartialRollouts(
                policy, task, reward, config.n, config.partial_tokens, self.behaviour_pass
            )

    def make(self, b: int, version: int) -> ScoredBatch:
        """Batch ``b`` from the weights of version ``version``."""
        cfg = self.config
        seed = build.seed_of(cfg.seed, b, 1, self.rank)
        if self.partial is not None:
            floor = b - cfg.lag  # a group with a token older than this would lag too much at step b

            def draw():
                return self.task.train_batch(cfg.prompts)

            return next_partial_batch(self.partial, draw, cfg.prompts, version, floor, seed)
        problems = self.task.train_batch(cfg.prompts)[self.rank :: self.world_size]
        return generate_batch(
            self.policy, self.task, self.reward, problems, cfg.n, self.behaviour_pass, seed, version
        )

    def skip(self) -> None:
        """Pass over one batch that another worker makes (every worker draws every batch: one data order)."""
        self.task.train_batch(self.config.prompts)

    def state_dict(self) -> dict:
        """The data position and, with partial rollouts, the responses in progress."""
        return {"task": self.task.state(), "partial": None if self.partial is None else self.partial.state()}

    def load_state_dict(self, state: dict) -> None:
        self.task.set_state(state["task"])
        if self.partial is not None and state.get("partial") is not None:
            self.partial.set_state(state["partial"])
