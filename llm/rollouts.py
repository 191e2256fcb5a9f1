"""One scored rollout batch: what the synchronous trainer and an asynchronous rollout worker both make.

A batch is a dict

* ``rollout``: the :class:`~pmdlab.rl.rollout.Rollout`, rewards filled in;
* ``old``: ``log pi_old`` of every response token, computed by the process
  that sampled it with the weights that sampled it (the sampler's own
  log-probs when ``old_source="sampler"``, else a forward pass of those
  weights at the sampling temperature): the trainer never needs weights it
  no longer has (docs/math.md §5);
* ``version``: the policy version (optimiser phases done) that sampled it;
* ``stats``: reward, accuracy, length, entropy and timing of the batch.
"""

from __future__ import annotations

import time

import torch

from pmdlab.rl.rollout import Rollout

__all__ = ["batch_stats", "generate_batch", "shard_batch"]


def generate_batch(
    policy, task, reward, problems: list, n: int, old_source: str, seed: int, version: int
) -> dict:
    """``n`` responses to each of ``problems`` from ``policy`` (seeded by ``seed``), scored, with pi_old."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    policy.model.eval()
    rollout = policy.sample([p.prompt for p in problems], n)
    if old_source == "sampler":  # exact already: no second forward pass
        old, entropy = rollout.sampler_logprobs, None
    else:
        old, entropy = policy.log_probs_and_entropy(rollout)
    texts = policy.decode(rollout)
    hits = [task.is_correct(t, problems[i // n]) for i, t in enumerate(texts)]
    rollout.rewards = torch.tensor(
        [reward(hit) for hit in hits], dtype=torch.float32, device=rollout.tokens.device
    )
    policy.model.train()
    stats = batch_stats(rollout, hits, n, entropy, time.perf_counter() - start, version)
    return {"rollout": rollout, "old": old, "stats": stats, "version": version}


def batch_stats(rollout: Rollout, hits: list[bool], n: int, entropy, elapsed: float, version: int) -> dict:
    """A scored batch's record: reward, accuracy, length, token entropy (``None``: not computed),
    groups all right or all wrong, rollout time and tokens/s, and the version that sampled it."""
    tokens = float(rollout.mask.sum())
    correct = torch.tensor(hits)
    return {
        "train/reward": float(rollout.rewards.mean()),
        "train/accuracy": float(correct.float().mean()),
        "train/response_length": tokens / len(rollout),
        "train/entropy": float("nan") if entropy is None else float(entropy.sum() / rollout.mask.sum()),
        "train/solved_groups": float(correct.view(-1, n).all(1).float().mean()),
        "train/unsolved_groups": float((~correct.view(-1, n)).all(1).float().mean()),
        "perf/rollout_s": elapsed,
        "perf/rollout_tokens_per_s": tokens / elapsed,
        "train/sampler_version": float(version),
    }


def shard_batch(batch: dict, rank: int, world_size: int) -> dict:
    """Rank ``rank``'s share of a whole batch: groups ``rank, rank + W, ...``, renumbered ``g // W``
    (the groups :func:`pmdlab.llm.distributed.shard` gives the rank when every rank samples)."""
    if world_size == 1:
        return batch
    rollout: Rollout = batch["rollout"]
    index = torch.nonzero(rollout.group_ids % world_size == rank).flatten()
    part = rollout.select(index)
    part.group_ids = part.group_ids // world_size
    return {**batch, "rollout": part, "old": batch["old"][index]}
