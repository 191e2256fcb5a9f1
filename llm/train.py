"""``python -m pmdlab.llm.train``: RL post-training of a causal LM with PMD-mean (or GRPO, GSPO, ...).

    python -m pmdlab.llm.train                                   # embedded task and tiny model, CPU
    python -m pmdlab.llm.train algorithm=grpo                    # the same budget with GRPO
    python -m pmdlab.llm.train model=/path/to/checkpoint task.data=/path/train.jsonl task.eval_data=math500
    python -m pmdlab.llm.train --resume out=runs/my-run          # continue from the last checkpoint
    python -m pmdlab.llm.train --help                            # every setting
    torchrun --nproc_per_node 8 -m pmdlab.llm.train model=/path ...   # data parallel (FSDP2 or DDP)

Each step (:meth:`Trainer.run`, docs/math.md §5):

1. the batch source hands over batch ``step``, sampled at most
   ``max_staleness`` versions ago: made in this process
   (:class:`~.rollout.sources.InProcessSource`) or by rollout ranks while
   the learner updates (``async_rollouts=true``,
   :class:`~.rollout.sources.RemoteSource`); plain or partial rollouts, the
   same :class:`~.rollout.generator.Generator` either way;
2. the learner (:mod:`.learner`) runs ``minibatches x epochs`` optimiser
   steps on it with the losses of :mod:`pmdlab.rl.losses`;
3. the source publishes the new weights (to rollout ranks; in process, nothing);
4. every ``eval_every`` steps every training rank evaluates its share of the
   held-out problems; a record goes to ``<out>/metrics.jsonl`` (:mod:`.metrics_log`),
   and TensorBoard or W&B when asked for (:mod:`.sinks`);
5. every ``save_every`` steps, an atomic, verified checkpoint of the learner,
   the source and the loop (:mod:`.checkpoint`).

SIGTERM (a scheduler's pre-emption) or SIGINT (Ctrl-C) lets the step in
progress finish, writes a checkpoint of it and stops with exit status
``128 + signal`` (143, 130); a second signal abandons the step at once
(:mod:`.stopping`). ``--resume`` then continues exactly where the run stopped.

All randomness is drawn from generators seeded by ``(seed, step)``, so a
resumed run repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from pmdlab.rl.config import parse, to_dict

from . import build, checkpoint, distributed, metrics_log
from .evaluate import evaluate
from .learner import Learner, NonFiniteError
from .rollout.generator import Generator
from .rollout.launch import launch
from .rollout.sources import InProcessSource, RemoteSource
from .rollout.transport import WorkerDied, receivers_alive
from .rollout.worker import leave, worker_main
from .settings import TaskConfig, TrainConfig
from .sinks import MetricsSinks, ProgressBar
from .stopping import Stopped, StopSignals
from .tasks import make_reward

__all__ = ["NonFiniteError", "Stopped", "TaskConfig", "TrainConfig", "Trainer", "main"]


class Trainer:
    """A run of :class:`TrainConfig`: a learner, a batch source, the metrics sinks, and the loop."""

    def __init__(self, config: TrainConfig):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.ctx = ctx = distributed.setup(
            config.device, config.rollout_ranks if config.async_rollouts else 0, config.dist_timeout_s
        )
        if ctx.role != "train":
            raise ValueError("a rollout rank runs rollout.worker.run_worker, not the trainer")
        config.check_ranks(ctx.world_size)
        self.task = build.make_task(config)
        self.run_dir, self.log_path = config.run_dir, config.run_dir / "metrics.jsonl"
        self.run_name = config.run_name or self.run_dir.name
        resume_from = checkpoint.latest_valid(self.run_dir) if config.resume else None
        if config.resume and resume_from is None:
            raise ValueError(f"resume: no checkpoint in {self.run_dir}")
        if resume_from is None and self.log_path.exists():
            raise ValueError(f"{self.run_dir} already holds a run; pass --resume, or choose another out=")
        weights = checkpoint.weights_folder(resume_from) if resume_from is not None else None
        path = build.model_path(config, self.task, ctx, weights)
        adapter = weights if weights is not None and config.lora.rank else None
        self.learner = Learner(config, ctx, path, adapter)
        self.source = self._source(path, adapter)
        self.eval_problems = self.task.eval_problems()[ctx.rank :: ctx.world_size]  # eval_size applied
        self.sinks = MetricsSinks(
            self.log_path,
            self.run_dir,
            self.run_name,
            tensorboard=config.tensorboard,
            wandb_project=config.wandb_project,
            config=to_dict(config),
            enabled=ctx.main,
        )
        if resume_from is not None:
            self._restore(resume_from)
        distributed.barrier(ctx)  # every rank has checked the run folder before rank 0 writes to it

    def _source(self, path: Path, adapter: Path | None):
        cfg = self.config
        if cfg.async_rollouts:
            return RemoteSource(self.ctx, cfg, path, adapter)
        reward = make_reward(cfg.task.reward_values)
        generator = Generator(self.policy, self.task, reward, cfg, self.ctx.rank, self.ctx.world_size)
        return InProcessSource(generator, self.ctx, self.model, cfg.steps)

    # the learner's parts, by their usual names
    step = property(lambda self: self.learner.version)
    model = property(lambda self: self.learner.model)
    policy = property(lambda self: self.learner.policy)
    optimizer = property(lambda self: self.learner.optimizer)

    def run(self) -> list[dict]:
        """Train to ``steps``; return the records logged by this call.

        Raises :class:`Stopped` after checkpointing the finished step when SIGTERM or SIGINT arrived."""
        cfg, records = self.config, []
        self._started = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (
            self.sinks,
            StopSignals() as stop,
            ProgressBar(cfg.steps, self.step, self.run_name, cfg.progress and self.ctx.main) as progress,
        ):
            self.source.start(self.step, self.learner)
            if self.step == 0 and cfg.eval_every:
                records.append(self._log(self.evaluate()))
            while self.step < cfg.steps:
                record = self.train_step()
                last, signum = self.step == cfg.steps, stop.agreed(self.ctx)
                if not (last or signum):
                    published = time.perf_counter()
                    self.source.publish(self.learner)  # version ``step``, for rollout ranks
                    record["perf/publish_s"] = time.perf_counter() - published
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
                    record.update(self.evaluate())
                records.append(self._log(record))
                progress.update(record)
                self.learner.check_finite(self.run_dir)
                if last or signum or (cfg.save_every and self.step % cfg.save_every == 0):
                    saved = self.save()
                if signum and not last:
                    raise Stopped(signum, self.step, saved)
            self.source.finish()
        return records

    def train_step(self) -> dict:
        """Take this step's batch from the source and update on it; the step's record."""
        batch = self.source.next(self.step)
        record = {**batch.stats, **self.learner.update(batch)}
        rollout_s, update_s = record["perf/rollout_s"], record["perf/update_s"]
        record["perf/rollout_share"] = rollout_s / (rollout_s + update_s)
        return record

    def evaluate(self) -> dict:
        """Held-out metrics: every training rank evaluates its share, the counts are added up."""
        cfg, start = self.config, time.perf_counter()
        reduce = distributed.all_reduce_sum if self.ctx.distributed else None
        with distributed.gathered(self.model):
            out = evaluate(
                self.policy,
                self.task,
                self.eval_problems,
                cfg.eval_k,
                greedy=cfg.eval_greedy,
                seed=build.seed_of(cfg.seed, 3),
                all_reduce=reduce,
            )
        self.policy.model.train()
        out["perf/eval_s"] = time.perf_counter() - start
        return out

    def save(self) -> Path:
        """An atomic, verified checkpoint of the learner, the source and the loop (:mod:`.checkpoint`)."""
        rank_state = {  # from rollout ranks: the batches in flight taken in first
            "source": self.source.state_dict(),
            "rng": checkpoint.rng_state(),
        }
        state = {"learner": self.learner.state_dict(), "config": to_dict(self.config)}
        return checkpoint.save(
            self.run_dir,
            self.step,
            self.ctx,
            self.learner.model,
            self.policy.tokenizer,
            state,
            rank_state,
            self.config.keep_checkpoints,
            shards=self.learner.shards(),
        )

    def _restore(self, path: Path) -> None:
        """Continue from a checkpoint; the log's records past it are dropped (they are about to be redone)."""
        state, rank_state = checkpoint.restore(path, self.ctx)
        shards = path / checkpoint.SHARDS if state["sharded"] else None
        self.learner.load_state_dict(state["learner"], shards)
        checkpoint.set_rng_state(rank_state["rng"])
        self.source.load_state_dict(rank_state["source"])
        if self.ctx.main:
            metrics_log.truncate(self.log_path, self.step)

    def _log(self, record: dict) -> dict:
        cfg, step = self.config, self.step
        head = {"run": self.run_name, "algorithm": cfg.algorithm.name, "model": cfg.model, "step": step}
        wall = {"perf/wall_s": time.perf_counter() - self._started}  # since this process began ``run``
        self.sinks.write({**head, **record, **wall}, step, scalars=record)
        return {"step": step, **record}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        config = parse(TrainConfig, argv, prog="python -m pmdlab.llm.train")
        if config.async_rollouts and "WORLD_SIZE" not in os.environ:  # one machine: start the processes
            return launch(argv, config)
        if config.async_rollouts:
            ctx = distributed.setup(config.device, config.rollout_ranks, config.dist_timeout_s)
            if ctx.role == "rollout":
                worker_main(config, ctx)
        trainer = Trainer(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        records = trainer.run()
    except (NonFiniteError, WorkerDied) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_status
    elapsed = time.perf_counter() - start
    print(f"{trainer.run_name}: {trainer.step} steps in {elapsed:.0f} s; metrics in {trainer.log_path}")
    evals = [r for r in records if "eval/avg@k" in r]
    for key in ("eval/avg@k", "eval/pass@k", "eval/maj@k", "eval/greedy"):
        if evals and key in evals[0]:
            (a, b), (x, y) = ((e["step"], e[key]) for e in (evals[0], evals[-1]))
            print(f"  {key:14s} step {a:>4d}: {b:.3f}   step {x:>4d}: {y:.3f}")
    return 0


if __name__ == "__main__":
    status = main()
    if receivers_alive():  # leave without the teardown that would abort under a blocked receive
        leave(status)
    raise SystemExit(status)
