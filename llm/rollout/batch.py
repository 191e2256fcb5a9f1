"""A scored batch: what every batch source hands the learner.

A :class:`ScoredBatch` is

* ``rollout``: the :class:`~pmdlab.rl.rollout.Rollout`, rewards filled in;
* ``behaviour``: ``log pi_old`` of every response token under the weights
  that sampled it, computed by the process that sampled it (``None`` when
  no such pass was made: ``old_source="sampler"``, see
  :func:`pmdlab.rl.anchor.behaviour_pass_needed`), so the learner never needs
  weights it no longer has (docs/math.md §5);
* ``versions``: with partial rollouts, the version that made each token
  (``None``: every token was made by ``version``);
* ``version``: the oldest policy version (optimiser phases done) that made a token;
* ``stats``: reward, accuracy, length, entropy and timing of the batch.

It travels between processes as plain data (:meth:`ScoredBatch.pack`,
numpy arrays: a tensor pickles through ``torch.save``, milliseconds a step)
and sits in checkpoints the same way.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from pmdlab.rl.rollout import Rollout

__all__ = ["ScoredBatch", "batch_stats"]


@dataclass
class ScoredBatch:
    rollout: Rollout
    behaviour: torch.Tensor | None
    version: int
    stats: dict = field(default_factory=dict)
    versions: torch.Tensor | None = None

    def select(self, index: torch.Tensor) -> "ScoredBatch":
        """The responses at ``index``, every per-response field indexed alike."""

        def pick(x):
            return None if x is None else x[index]

        return dataclasses.replace(
            self,
            rollout=self.rollout.select(index),
            behaviour=pick(self.behaviour),
            versions=pick(self.versions),
        )

    def shard(self, rank: int, world_size: int) -> "ScoredBatch":
        """Rank ``rank``'s share of a whole batch: groups ``rank, rank + W, ...``, renumbered ``g // W``
        (the groups :func:`pmdlab.llm.distributed.shard` gives the rank when every rank samples)."""
        if world_size == 1:
            return self
        index = torch.nonzero(self.rollout.group_ids % world_size == rank).flatten()
        part = self.select(index)
        part.rollout.group_ids = part.rollout.group_ids // world_size
        return part

    def to(self, device) -> "ScoredBatch":
        def move(x):
            return None if x is None else x.to(device)

        return dataclasses.replace(
            self,
            rollout=self.rollout.to(device),
            behaviour=move(self.behaviour),
            versions=move(self.versions),
        )

    def token_lag(self, step: int) -> dict[str, float]:
        """Mean and largest lag at ``step`` of a partial-rollout batch's tokens (each made by its version)."""
        if self.versions is None:
            return {}
        lags = (step - self.versions)[self.rollout.mask > 0].float()
        return {"async/token_lag_mean": float(lags.mean()), "async/token_lag_max": float(lags.max())}

    def pack(self) -> dict:
        """The batch as plain data, every tensor a numpy array where numpy has its dtype (:meth:`unpack`)."""
        rollout = self.rollout.to_dict()
        rollout["extras"] = {k: _array(v) for k, v in rollout["extras"].items()}
        fields = {k: _array(v) if isinstance(v, torch.Tensor) else v for k, v in rollout.items()}
        return {
            "rollout": fields,
            "behaviour": _array(self.behaviour),
            "versions": _array(self.versions),
            "version": self.version,
            "stats": dict(self.stats),
        }

    @classmethod
    def unpack(cls, data: dict, device=None) -> "ScoredBatch":
        """The batch :meth:`pack` wrote, with tensors on ``device`` (default: the CPU)."""
        rollout = {k: _tensor(v) for k, v in data["rollout"].items() if k != "extras"}
        extras = {k: _tensor(v) for k, v in data["rollout"]["extras"].items()}
        batch = cls(
            rollout=Rollout.from_dict({**rollout, "extras": extras}),
            behaviour=_tensor(data["behaviour"]),
            version=data["version"],
            stats=dict(data["stats"]),
            versions=_tensor(data["versions"]),
        )
        return batch if device is None else batch.to(device)


def _array(t):
    """A tensor as a CPU numpy array, or the CPU tensor itself where numpy lacks its dtype (bfloat16)."""
    if not isinstance(t, torch.Tensor):
        return t
    t = t.detach().cpu()
    return t if t.dtype == torch.bfloat16 else t.numpy()


def _tensor(x):
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


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
