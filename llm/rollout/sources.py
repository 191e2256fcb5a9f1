"""Where the learner's batches come from: the only thing that differs between synchronous,
asynchronous and partial-rollout training.

Both sources hand step ``s`` batch ``s``, made from a version
``v >= s - lead`` (:func:`.generator.lead_of`: ``max_staleness``, less what
carrying partial rollouts needs), as this rank's share, on its device:

* :class:`InProcessSource`: the trainer's own :class:`~.generator.Generator`,
  taking turns with the update. At step ``s`` (weights of version ``s``) it
  makes every batch up to ``s + lead``; each training rank makes its share
  of every batch. With lag 0 this is plain synchronous training;
* :class:`RemoteSource`: rollout ranks make the batches while the learner
  updates (:mod:`.worker`); training rank 0 receives them (:mod:`.transport`)
  and shares each with the other training ranks. Publishing the weights
  after a step is its one extra duty.

A source's :meth:`state_dict` is what a checkpoint needs to continue
exactly: the batches made and not yet trained on, and the generator's state
after the last of them.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import torch.distributed as dist

from .. import distributed
from .batch import ScoredBatch
from .generator import lead_of
from .transport import BatchReceiver, WorkerDied, describe_failure, parameter_layout, publish, transfers_done

__all__ = ["InProcessSource", "RemoteSource"]


class InProcessSource:
    """Batches made in this process by ``generator``, ``lead`` versions ahead at most (see the module)."""

    def __init__(self, generator, ctx: distributed.Context, model, steps: int):
        self.generator, self.ctx, self.model, self.steps = generator, ctx, model, steps
        self.queue: deque[ScoredBatch] = deque()
        self.made = 0  # the next batch to make

    def start(self, step: int, learner) -> None:
        """Nothing to start: batches are made on demand, from ``made`` (0, or the checkpoint's)."""

    def next(self, step: int) -> ScoredBatch:
        """Batch ``step``; first every batch up to ``step + lead`` not yet made, from the current weights."""
        while self.made <= min(step + self.generator.lead, self.steps - 1):
            with distributed.gathered(self.model):
                batch = self.generator.make(self.made, version=step)
            batch.stats = distributed.mean_over_ranks(batch.stats, self.ctx)
            self.queue.append(batch)
            self.made += 1
        return self.queue.popleft()

    def publish(self, learner) -> None:
        """Nothing to do: the generator samples with the learner's own weights."""

    def finish(self) -> None:
        """Nothing to wait for."""

    def state_dict(self) -> dict:
        return {
            "made": self.made,
            "queue": [b.pack() for b in self.queue],
            "generator": self.generator.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.made = state["made"]
        self.queue = deque(ScoredBatch.unpack(b, self.ctx.device) for b in state["queue"])
        self.generator.load_state_dict(state["generator"])


class RemoteSource:
    """Training rank 0's end of the rollout workers (see the module docstring): the plan, the
    weights, the batches; ``lag_counts`` is the histogram of the lags trained so far."""

    def __init__(self, ctx: distributed.Context, config, model_path: Path, adapter: Path | None):
        self.ctx, self.config, self.lead = ctx, config, lead_of(config)
        self.model_source = (str(model_path), None if adapter is None else str(adapter))
        self.batches: BatchReceiver | None = None
        self.received: deque[ScoredBatch] = deque()  # taken in for a checkpoint, not yet trained on
        self.generator_state: dict | None = None  # the workers' generator after the last batch taken in
        self.lag_counts = [0] * (config.lag + 1)
        self.step = 0

    def start(self, step: int, learner) -> None:
        """Tell the workers where to start, then publish the current weights (version ``step``)."""
        cfg, ctx = self.config, self.ctx
        self.step = step
        start = step + len(self.received)
        if ctx.main:
            plan = {
                "start": start,
                "parameters": parameter_layout(learner.model),
                "versions": list(range(step, cfg.steps)) or [step],
                "generator": self.generator_state if start > 0 else None,
                "model_path": self.model_source[0],
                "adapter": self.model_source[1],
            }
            for w in ctx.rollout_ranks:
                dist.send_object_list([plan], dst=w, group=ctx.channel_group)
            self.batches = BatchReceiver(ctx, start, cfg.steps)
        self.publish(learner)

    def next(self, step: int) -> ScoredBatch:
        """Batch ``step`` from the workers (or the checkpoint), this rank's share of it."""
        packed = None
        if self.ctx.main:
            begun = time.perf_counter()
            batch = self.received.popleft() if self.received else self._take_in(self.batches.get(step))
            batch.stats.update(self.count_lag(step - batch.version))
            batch.stats.update(batch.token_lag(step))
            batch.stats["perf/batch_wait_s"] = time.perf_counter() - begun
            packed = batch.pack()
        self.step = step + 1
        packed = distributed.broadcast_object(packed, self.ctx)
        return ScoredBatch.unpack(packed, self.ctx.device).shard(self.ctx.rank, self.ctx.world_size)

    def _take_in(self, message: dict) -> ScoredBatch:
        self.generator_state = message["generator"]  # the data position a checkpoint records
        return ScoredBatch.unpack(message["batch"])

    def publish(self, learner) -> None:
        """Broadcast the learner's weights (version ``learner.version``) to the workers, parameter by
        parameter (:func:`.transport.publish`); every training rank calls it."""
        try:
            publish(learner.model, learner.version, self.ctx)
        except RuntimeError as e:
            raise WorkerDied(
                f"a rollout worker (ranks {list(self.ctx.rollout_ranks)}) is gone: {describe_failure(e)}"
            ) from None

    def finish(self) -> None:
        """At the end of the run: wait until the published weights have reached the workers."""
        if self.ctx.main:
            try:
                transfers_done(self.ctx)
            except RuntimeError as e:
                raise WorkerDied(
                    f"a rollout worker (ranks {list(self.ctx.rollout_ranks)}) is gone: {describe_failure(e)}"
                ) from None

    def count_lag(self, lag: int) -> dict[str, float]:
        """The lag of this step's batch and the histogram of lags so far."""
        if not 0 <= lag <= self.config.lag:
            raise RuntimeError(f"a batch lags {lag} versions; max_staleness is {self.config.lag}")
        self.lag_counts[lag] += 1
        return {
            "async/lag": float(lag),
            **{f"async/lag_hist_{j}": float(c) for j, c in enumerate(self.lag_counts)},
        }

    def state_dict(self) -> dict:
        """Rank 0 first takes in the batches already here (with ``fixed`` weights: every batch up to
        ``step + lead - 1``, waiting for them: they come from versions older than the checkpoint's)."""
        if not self.ctx.main:
            return {}
        cfg = self.config
        b = self.step + len(self.received)
        wanted = min(self.step + self.lead, cfg.steps) if cfg.async_weights == "fixed" else b
        while b < cfg.steps:
            message = self.batches.get(b, block=b < wanted)
            if message is None:
                break
            self.received.append(self._take_in(message))
            b += 1
        return {
            "received": [batch.pack() for batch in self.received],
            "generator": self.generator_state,
            "lag_counts": list(self.lag_counts),
        }

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.received = deque(ScoredBatch.unpack(b) for b in state["received"])
        self.generator_state = state["generator"]
        self.lag_counts = list(state["lag_counts"])
