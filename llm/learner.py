"""The learner: the model being trained, its optimiser and schedule, and one update per batch.

It holds the data-parallel model (FSDP2 or DDP over the training ranks,
:mod:`.distributed`), AdamW over the trainable parameters (with LoRA, the
adapters), a linear warm-up, and the count of optimiser updates in a row
that had a non-finite loss or gradient. ``update(batch)`` runs
:func:`pmdlab.rl.update.policy_update` on a :class:`~.rollout.batch.ScoredBatch`
(π_old chosen by :func:`pmdlab.rl.anchor.anchor_logprobs` from the batch's
behaviour log-probs: the learner never decides it) and returns the step's
record; its :meth:`Learner.state_dict` is what a checkpoint needs of it.
The learner's ``version`` is the number of updates done: the policy version
its weights are.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from pmdlab.rl.update import DataParallel, policy_update

from . import build, distributed, flops
from .policy import padding_share

__all__ = ["Learner", "NonFiniteError"]


class NonFiniteError(RuntimeError):
    """Too many optimiser updates in a row had a non-finite loss or gradient."""


class Learner:
    """The trained policy of ``config`` on this rank (see the module docstring)."""

    def __init__(self, config, ctx: distributed.Context, path: Path, adapter: Path | None = None):
        self.config, self.ctx = config, ctx
        model, tokenizer = build.load_trainable(config, path, adapter, ctx.device)
        strategy = "ddp" if config.rollout_backend == "vllm" else config.parallel
        #: the dtype the update's matmuls run in (bfloat16: mixed precision), which MFU's peak is for
        self.compute_dtype = build.resolve_dtype(config, ctx.device)
        self.model = distributed.wrap(model, ctx, strategy, self.compute_dtype)
        self.policy = build.make_policy(config, self.model, tokenizer, path, ctx.device)
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # with LoRA, the adapters
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        warm = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.version = 0
        self.nonfinite_streak = 0
        inner = distributed.unwrap(self.model)
        try:
            self._shape = flops.model_shape(flops.config_of(inner))
        except ValueError:  # a model the dense formula does not cover: its perf/ FLOPs are nan
            self._shape = None
        self._lora = flops.lora_layout(inner)
        self._anchor_passes = 0  # whole-batch no-grad passes of the current update
        self.peak: tuple[float, str] | None = None  # (peak FLOP/s of one device, its source), on first use

    def update(self, batch) -> dict[str, float]:
        """``minibatches x epochs`` optimiser steps on ``batch``; the step's record (``loss/*``, ``train/*``,
        ``perf/update_*``)."""
        cfg, rollout = self.config, batch.rollout
        backend = self.policy.backend
        if hasattr(backend, "sleep"):
            backend.sleep()  # a colocated engine frees its GPU memory for the update
        self._anchor_passes, self._padding = 0, []
        start = time.perf_counter()
        metrics = policy_update(
            self.policy.log_probs,
            self.optimizer,
            rollout,
            cfg.algorithm,
            num_minibatches=cfg.minibatches,
            epochs=cfg.epochs,
            generator=torch.Generator().manual_seed(build.seed_of(cfg.seed, self.version, 2)),
            behaviour_logprobs=batch.behaviour,
            anchor_log_probs=self._whole_batch_log_probs,
            micro_batches=self._micro_batches,
            parameters=list(self.policy.parameters()),
            max_grad_norm=cfg.max_grad_norm,
            parallel=self._parallel(),
        )
        metrics["update_flops"] = self._update_flops(rollout)  # this rank's, summed over ranks below
        metrics = distributed.mean_over_ranks(metrics, self.ctx)
        update_flops = metrics.pop("update_flops") * self.ctx.world_size
        if hasattr(backend, "update_weights"):
            backend.update_weights(distributed.unwrap(self.model))
        elapsed = time.perf_counter() - start
        if metrics["optimizer_steps"] > 0:  # the schedule counts steps that updated the weights
            self.scheduler.step()
            self.nonfinite_streak = int(metrics["trailing_skipped_steps"])
        else:
            self.nonfinite_streak += int(metrics["skipped_steps"])
        self.version += 1
        record = {f"loss/{k}": v for k, v in metrics.items() if k != "grad_norm"}
        record["train/grad_norm"] = metrics.get("grad_norm", float("nan"))
        record["train/lr"] = self.scheduler.get_last_lr()[0]
        record["perf/update_s"] = elapsed
        record["perf/update_tokens_per_s"] = float(rollout.mask.sum()) * cfg.epochs / elapsed
        record["train/nonfinite_streak"] = float(self.nonfinite_streak)
        record["perf/padding_share"] = sum(self._padding) / len(self._padding)
        if self.peak is None:
            self.peak = flops.peak_flops(self.ctx.device, self.compute_dtype)
        record["perf/update_flops"] = update_flops
        record["perf/update_tflops_per_s"] = update_flops / elapsed / 1e12
        record["perf/mfu"] = flops.mfu(update_flops, elapsed, self.peak[0], devices=self.ctx.world_size)
        return record

    def _update_flops(self, rollout) -> float:
        """This rank's model FLOPs of the update just made (:mod:`.flops`): the forward and backward
        passes over its rows, ``epochs`` times, and the whole-batch no-grad passes it made for
        ``pi_old`` (``old_source=current``); from the rows' real prompt and response lengths."""
        if self._shape is None:
            return float("nan")
        prompt, response = rollout.extras["prompt_mask"].sum(1), rollout.mask.sum(1)
        frozen, adapters = self._lora
        trained = flops.update_flops(
            self._shape,
            prompt,
            response,
            epochs=self.config.epochs,
            frozen_base=frozen,
            adapter_params=adapters,
        )
        if not self._anchor_passes:
            return trained
        forward = flops.forward_flops(self._shape, prompt, response, adapter_params=adapters)
        return trained + self._anchor_passes * forward

    def check_finite(self, run_dir: Path) -> None:
        """Raise :class:`NonFiniteError` once ``max_nonfinite`` updates in a row were skipped."""
        if self.nonfinite_streak >= self.config.max_nonfinite:
            raise NonFiniteError(
                f"{self.nonfinite_streak} optimiser updates in a row had a non-finite loss or "
                f"gradient (max_nonfinite={self.config.max_nonfinite}); stopped at step {self.version}. "
                f"The last checkpoint in {run_dir} holds finite weights."
            )

    def _whole_batch_log_probs(self, rollout) -> torch.Tensor:
        """The current policy's log-probs of a whole batch, no gradient, micro-batched (the anchor of
        ``old_source=current``); under FSDP2 with the full weights held, as ranks' counts may differ."""
        self._anchor_passes += 1
        with distributed.gathered(self.model):
            return self.policy.log_probs_and_entropy(rollout)[0]

    def _micro_batches(self, rollout) -> list[torch.Tensor]:
        """A minibatch's micro-batches (formed by length, as many on every rank); their padded share
        of the token slots is logged as ``perf/padding_share``, the mean over the update."""
        parts = distributed.same_count_batches(self.policy.micro_batches(rollout), self.ctx)
        self._padding.append(padding_share(rollout, parts))
        return parts

    def _parallel(self) -> DataParallel | None:
        if not self.ctx.distributed:
            return None
        return DataParallel(
            distributed.all_reduce_sum, float(self.ctx.world_size), distributed.no_sync(self.model)
        )

    def state_dict(self) -> dict:
        """Schedule, version, non-finite streak, and the optimiser's state unless it is sharded (FSDP2:
        :meth:`shards`)."""
        state = {
            "scheduler": self.scheduler.state_dict(),
            "version": self.version,
            "nonfinite_streak": self.nonfinite_streak,
        }
        if not distributed.sharded(self.model):
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def shards(self) -> dict | None:
        """Under FSDP2 this rank's shards of the weights and optimiser state (every rank writes its own);
        ``None`` otherwise (the weights are saved whole, the optimiser in :meth:`state_dict`)."""
        return (
            distributed.sharded_state(self.model, self.optimizer) if distributed.sharded(self.model) else None
        )

    def load_state_dict(self, state: dict, shards: Path | None = None) -> None:
        """Continue from :meth:`state_dict`, and from the ``shards`` folder :meth:`shards` was written to
        (otherwise the weights were loaded from the checkpoint's model folder)."""
        if (shards is not None) != distributed.sharded(self.model):
            raise ValueError(
                "the checkpoint's weights are "
                + (
                    "sharded (FSDP2): resume with parallel=fsdp"
                    if shards is not None
                    else "whole: resume with parallel=ddp"
                )
            )
        if shards is not None:
            distributed.load_sharded_state(self.model, self.optimizer, shards)
        else:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.version = state["version"]
        self.nonfinite_streak = state["nonfinite_streak"]
