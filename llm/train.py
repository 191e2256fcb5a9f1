"""``python -m pmdlab.llm.train``: RL post-training of a causal LM with PMD-mean (or GRPO, GSPO, ...).

    python -m pmdlab.llm.train                                   # embedded task and tiny model, CPU
    python -m pmdlab.llm.train algorithm=grpo                    # the same budget with GRPO
    python -m pmdlab.llm.train model=/path/to/checkpoint task.data=/path/train.jsonl task.eval_data=math500
    python -m pmdlab.llm.train --resume out=runs/my-run          # continue from the last checkpoint
    python -m pmdlab.llm.train --help                            # every setting
    torchrun --nproc_per_node 8 -m pmdlab.llm.train model=/path ...   # data parallel (FSDP2 or DDP)

Each step (docs/math.md §5):

1. the sampler, the policy ``staleness`` versions ago, draws ``n``
   responses to each of ``prompts`` training problems; they are scored, and
   ``pi_old``'s log-probs (and token entropies) computed once;
2. :func:`pmdlab.rl.update.policy_update` runs ``minibatches x epochs``
   optimiser steps with ``pi_old`` fixed, micro-batched within a token
   budget, using the losses of :mod:`pmdlab.rl.losses`;
3. a metrics record goes to ``<out>/metrics.jsonl`` (the format of
   :mod:`.metrics_log`), with held-out evaluation every ``eval_every`` steps;
4. every ``save_every`` steps, an atomic, verified checkpoint (:mod:`.checkpoint`).

SIGTERM (a scheduler's pre-emption) or SIGINT (Ctrl-C) lets the step in
progress finish, writes a checkpoint of it and stops with exit status
``128 + signal`` (143, 130); a second signal abandons the step at once.
``--resume`` then continues exactly where the run stopped.

Settings are :mod:`.settings`; the task, model and backend are built by :mod:`.build`.

All randomness is drawn from generators seeded by ``(seed, step)``, so a
resumed run repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import NoReturn

import torch

from pmdlab.rl.config import parse, to_dict
from pmdlab.rl.rollout import Rollout
from pmdlab.rl.update import policy_update

from . import build, checkpoint, distributed, metrics_log, pipeline
from .evaluate import evaluate
from .policy import LMPolicy
from .rollouts import generate_batch, shard_batch
from .settings import TaskConfig, TrainConfig
from .tasks import make_reward

__all__ = ["NonFiniteError", "Stopped", "TaskConfig", "TrainConfig", "Trainer", "main"]


class NonFiniteError(RuntimeError):
    """Too many optimiser updates in a row had a non-finite loss or gradient."""


class Stopped(RuntimeError):
    """SIGTERM or SIGINT arrived: the current step was finished and checkpointed, then the run stopped.

    ``exit_status`` is the shell's convention for the signal, ``128 + signum``: 143 for SIGTERM
    (a scheduler's pre-emption), 130 for SIGINT (Ctrl-C)."""

    def __init__(self, signum: int, step: int, checkpoint_dir: Path):
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        self.exit_status = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after step {step}, checkpoint {checkpoint_dir}; continue with --resume"
        )


#: The signals that stop a run cleanly (after the current step, with a checkpoint).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _StopRequest:
    """Record the first stop signal; a second one abandons the step at once (the default action)."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def _handle(self, signum, frame):
        self.signum = signum
        for s, handler in self._previous.items():  # the next signal acts at once
            signal.signal(s, handler)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            self._previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}
            for s in STOP_SIGNALS:
                signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def agreed(self, ctx) -> int:
        """The signal any rank received (0 if none): every rank stops at the same step."""
        if not ctx.distributed:
            return self.signum
        flag = torch.tensor([float(self.signum)], device=ctx.device)
        distributed.all_reduce_max(flag)
        return int(flag.item())


# --------------------------------------------------------------------- trainer


class Trainer:
    """The training loop of :class:`TrainConfig` (see the module docstring)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.ctx = distributed.setup(config.device, config.rollout_ranks if config.async_rollouts else 0)
        if self.ctx.role != "train":
            raise ValueError("a rollout rank runs pipeline.run_worker, not the trainer")
        if config.prompts % self.ctx.world_size:
            raise ValueError(
                f"prompts ({config.prompts}) must be a multiple of the number of ranks "
                f"({self.ctx.world_size})"
            )
        if config.minibatches > config.prompts // self.ctx.world_size:
            raise ValueError(
                f"minibatches ({config.minibatches}) cannot exceed the prompts per rank "
                f"({config.prompts // self.ctx.world_size})"
            )
        self.task = build.make_task(config)
        self.reward = make_reward(config.task.reward_values)
        self.run_dir = config.run_dir
        self.log_path = self.run_dir / "metrics.jsonl"
        self.run_name = config.run_name or self.run_dir.name
        resume_from = checkpoint.latest_valid(self.run_dir) if config.resume else None
        if config.resume and resume_from is None:
            raise ValueError(f"resume: no checkpoint in {self.run_dir}")
        if resume_from is None and self.log_path.exists():
            raise ValueError(f"{self.run_dir} already holds a run; pass --resume, or choose another out=")
        path = build.model_path(config, self.task, self.ctx, resume_from)
        model, tokenizer = build.load_model(path, config, self.ctx.device)
        adapter = None if resume_from is None or not config.lora.rank else resume_from / "model"
        self._model_source = (path, adapter)  # where asynchronous rollout workers load it from
        if config.lora.rank:
            model = build.apply_lora(model, config.lora, adapter, seed=build.seed_of(config.seed, 4))
        self.model = distributed.wrap(
            model, self.ctx, "ddp" if config.rollout_backend == "vllm" else config.parallel
        )
        self.backend = build.make_backend(config, self.model, tokenizer, path, self.ctx.device)
        self.policy = LMPolicy(
            self.model,
            tokenizer,
            config.sampling,
            token_budget=config.token_budget,
            chat_template=config.chat_template,
            system_prompt=config.system_prompt,
            backend=self.backend,
        )
        trainable = [p for p in self.model.parameters() if p.requires_grad]  # with LoRA, the adapters
        self.optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        warm = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.step = 0
        self.nonfinite_streak = 0
        self.queue: deque[dict] = deque()
        self.pipeline = pipeline.TrainerSide(self.ctx, config) if config.async_rollouts else None
        self.eval_problems = self.task.eval_problems()  # eval_size applied by the task
        self._writers = self._open_writers() if self.ctx.main else []
        if resume_from is not None:
            checkpoint.restore(self, resume_from)
        distributed.barrier(self.ctx)  # every rank has checked the run folder before rank 0 writes to it

    def save(self) -> Path:
        """An atomic, verified checkpoint of the run so far (:func:`checkpoint.save`); asynchronous
        runs first take in the batches already received (see :mod:`.pipeline`)."""
        if self.pipeline is not None and self.ctx.main:
            self.queue.extend(self.pipeline.drain(self.step, len(self.queue), self.task))
        return checkpoint.save(self)

    # -- rollouts ------------------------------------------------------------

    def _generate(self, version: int) -> dict:
        """One scored rollout batch from the current policy, with its ``pi_old`` log-probs."""
        cfg = self.config
        problems = distributed.shard(self.task.train_batch(cfg.prompts), self.ctx)  # every rank draws all
        seed = build.seed_of(cfg.seed, version, 1, self.ctx.rank)
        with distributed.gathered(self.model):
            batch = generate_batch(
                self.policy, self.task, self.reward, problems, cfg.n, cfg.algorithm.old_source, seed, version
            )
        batch["stats"] = distributed.mean_over_ranks(batch["stats"], self.ctx)
        return batch

    def _next_batch(self) -> dict:
        """The batch to train on at this step: sampled ``min(step, staleness)`` versions ago, or
        (asynchronous) the next one the rollout workers sent."""
        cfg = self.config
        if self.pipeline is not None:
            return self._received_batch()
        if self.step == 0 and not self.queue:
            for _ in range(min(cfg.staleness + 1, cfg.steps)):
                self.queue.append(self._generate(0))
        elif self.step + cfg.staleness < cfg.steps:
            self.queue.append(self._generate(self.step))
        return self.queue.popleft()

    def _received_batch(self) -> dict:
        """Rank 0 takes the step's batch from the workers (or the checkpoint's queue) and shares it
        with the other training ranks; each keeps its groups."""
        batch, start = None, time.perf_counter()
        if self.ctx.main:
            if self.queue:
                batch = self.queue.popleft()
            else:
                batch = self.pipeline.take(self.step, self.task)
            batch["stats"] = {
                **batch["stats"],
                **self.pipeline.count_lag(self.step - batch["version"]),
                **_token_lag(batch["rollout"], self.step),
                "perf/batch_wait_s": time.perf_counter() - start,
            }
        batch = shard_batch(distributed.broadcast_object(batch, self.ctx), self.ctx.rank, self.ctx.world_size)
        batch["rollout"] = batch["rollout"].to(self.ctx.device)
        batch["old"] = batch["old"].to(self.ctx.device)
        return batch

    # -- one step ------------------------------------------------------------

    def train_step(self) -> dict:
        cfg = self.config
        batch = self._next_batch()
        rollout = batch["rollout"]
        if hasattr(self.backend, "sleep"):
            self.backend.sleep()  # a colocated engine frees its GPU memory for the update
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(build.seed_of(cfg.seed, self.step, 2))
        old = batch["old"]
        if self.pipeline is not None and cfg.algorithm.old_source == "current":
            with distributed.gathered(self.model):  # the anchor: this policy, not the one that sampled
                old, _ = self.policy.log_probs_and_entropy(rollout)
        metrics = policy_update(
            self.policy.log_probs,
            self.optimizer,
            rollout,
            cfg.algorithm,
            num_minibatches=cfg.minibatches,
            epochs=cfg.epochs,
            generator=generator,
            old_logprobs=old,
            micro_batches=self._micro_batches,
            parameters=list(self.policy.parameters()),
            max_grad_norm=cfg.max_grad_norm,
            **self._parallel_update_options(),
        )
        metrics = distributed.mean_over_ranks(metrics, self.ctx)
        if hasattr(self.backend, "update_weights"):
            self.backend.update_weights(distributed.unwrap(self.model))
        elapsed = time.perf_counter() - start
        if metrics["optimizer_steps"] > 0:  # the schedule counts steps that updated the weights
            self.scheduler.step()
        self.step += 1
        if metrics["optimizer_steps"] == 0:
            self.nonfinite_streak += int(metrics["skipped_steps"])
        else:
            self.nonfinite_streak = int(metrics["trailing_skipped_steps"])
        tokens = float(rollout.mask.sum()) * cfg.epochs
        record = dict(batch["stats"])
        record.update({f"loss/{k}": v for k, v in metrics.items() if k not in ("grad_norm",)})
        record["train/grad_norm"] = metrics.get("grad_norm", float("nan"))
        record["train/lr"] = self.scheduler.get_last_lr()[0]
        record["perf/update_s"] = elapsed
        record["perf/update_tokens_per_s"] = tokens / elapsed
        record["perf/rollout_share"] = record["perf/rollout_s"] / (record["perf/rollout_s"] + elapsed)
        record["train/nonfinite_streak"] = float(self.nonfinite_streak)
        return record

    def _micro_batches(self, rollout: Rollout) -> list[torch.Tensor]:
        return distributed.same_count_batches(self.policy.micro_batches(rollout), self.ctx)

    def _parallel_update_options(self) -> dict:
        if not self.ctx.distributed:
            return {}
        return {
            "all_reduce": distributed.all_reduce_sum,
            "loss_scale": float(self.ctx.world_size),
            "no_sync": distributed.no_sync(self.model),
        }

    def evaluate(self) -> dict:
        """Held-out metrics (computed on rank 0; the other ranks wait)."""
        cfg = self.config
        start = time.perf_counter()
        out = {}
        with distributed.gathered(self.model):
            if self.ctx.main:
                out = evaluate(
                    self.policy,
                    self.task,
                    self.eval_problems,
                    cfg.eval_k,
                    greedy=cfg.eval_greedy,
                    seed=build.seed_of(cfg.seed, 3),
                )
            distributed.barrier(self.ctx)
        self.policy.model.train()
        out["perf/eval_s"] = time.perf_counter() - start
        return out

    # -- logging and checkpoints --------------------------------------------------

    def _log(self, record: dict) -> None:
        if not self.ctx.main:
            return
        cfg = self.config
        full = {
            "run": self.run_name,
            "algorithm": cfg.algorithm.name,
            "model": cfg.model,
            "step": self.step,
            **record,
            "perf/wall_s": time.perf_counter() - self._started,  # since this process began ``run``
        }
        metrics_log.append(self.log_path, full)
        for write in self._writers:
            write(record, self.step)

    def _open_writers(self) -> list:
        cfg, writers = self.config, []
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError(
                    "tensorboard=true needs the tensorboard package: pip install tensorboard"
                ) from None

            tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            writers.append(lambda r, s: [tb.add_scalar(k, v, s) for k, v in r.items() if math.isfinite(v)])
        if cfg.wandb_project:
            try:
                import wandb
            except ImportError:
                raise ValueError("wandb_project needs the wandb package: pip install wandb") from None

            wandb.init(project=cfg.wandb_project, name=self.run_name, config=to_dict(cfg), resume="allow")
            writers.append(lambda r, s: wandb.log(r, step=s))
        return writers

    # -- the run -------------------------------------------------------------

    def run(self) -> list[dict]:
        """Train to ``steps``; return the records logged by this call.

        Raises :class:`Stopped` after checkpointing the finished step when SIGTERM or SIGINT arrived."""
        cfg = self.config
        self._started = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        records = []
        bar, shown = None, {}
        if cfg.progress and self.ctx.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=self.run_name, dynamic_ncols=True)
        with _StopRequest() as stop:
            try:
                if self.pipeline is not None:
                    path, adapter = self._model_source
                    self.pipeline.start(
                        self.step, len(self.queue), self.task.state(), path, adapter, self.model
                    )
                if self.step == 0 and cfg.eval_every:
                    record = self.evaluate()
                    self._log(record)
                    records.append({"step": 0, **record})
                while self.step < cfg.steps:
                    record = self.train_step()
                    last = self.step == cfg.steps
                    if self.pipeline is not None and not last and not stop.agreed(self.ctx):
                        self.pipeline.publish(self.model)  # version ``step``, for the workers
                    if cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
                        record.update(self.evaluate())
                    self._log(record)
                    records.append({"step": self.step, **record})
                    if bar is not None:
                        bar.update(1)
                        shown.update(_postfix(record))  # the last evaluation stays on show
                        bar.set_postfix(shown, refresh=False)
                    if self.nonfinite_streak >= cfg.max_nonfinite:
                        raise NonFiniteError(
                            f"{self.nonfinite_streak} optimiser updates in a row had a non-finite loss or "
                            f"gradient (max_nonfinite={cfg.max_nonfinite}); stopped at step {self.step}. "
                            f"The last checkpoint in {self.run_dir} holds finite weights."
                        )
                    signum = stop.agreed(self.ctx)
                    if last or signum or (cfg.save_every and self.step % cfg.save_every == 0):
                        saved = self.save()
                    if signum and not last:
                        raise Stopped(signum, self.step, saved)
            finally:
                if bar is not None:
                    bar.close()
        return records


def _token_lag(rollout: Rollout, step: int) -> dict[str, float]:
    """Mean and largest lag of a partial-rollout batch's tokens (each made by its own version)."""
    versions = rollout.extras.get("versions")
    if versions is None:
        return {}
    lags = (step - versions)[rollout.mask > 0].float()
    return {"async/token_lag_mean": float(lags.mean()), "async/token_lag_max": float(lags.max())}


def _postfix(record: dict) -> dict:
    keys = {"train/reward": "reward", "eval/avg@k": "avg@k", "eval/pass@k": "pass@k", "loss/loss": "loss"}
    return {short: f"{record[k]:.3f}" for k, short in keys.items() if k in record}


def _rollout_worker(config: TrainConfig, ctx: distributed.Context) -> NoReturn:
    """Run a rollout rank to its end and leave the process.

    The worker leaves with ``os._exit``: at interpreter exit the process group's C++ teardown can
    abort (``terminate called without an active exception``, SIGABRT) while the trainer still holds
    its end of the connections, and a worker has nothing left to write once its batches are sent.
    """
    try:
        pipeline.run_worker(config, ctx)
        code = 0
    except pipeline.WorkerDied as e:
        print(f"rollout worker rank {ctx.global_rank}: {e}", file=sys.stderr)
        code = 1
    _leave(code)


def _leave(status: int) -> NoReturn:
    """Exit with ``status`` at once, without the interpreter's teardown (see :func:`_rollout_worker`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--resume" in argv:
        argv = [a for a in argv if a != "--resume"] + ["resume=true"]
    try:
        config = parse(TrainConfig, argv, prog="python -m pmdlab.llm.train")
        if config.async_rollouts and "WORLD_SIZE" not in os.environ:  # one machine: start the processes
            return pipeline.launch(argv, config)
        if config.async_rollouts:
            ctx = distributed.setup(config.device, config.rollout_ranks)
            if ctx.role == "rollout":
                return _rollout_worker(config, ctx)
        trainer = Trainer(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    try:
        records = trainer.run()
    except (NonFiniteError, pipeline.WorkerDied) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Stopped as e:
        print(f"stopped: {e}", file=sys.stderr)
        return e.exit_status
    evals = [r for r in records if "eval/avg@k" in r]
    print(
        f"{trainer.run_name}: {trainer.step} steps in {time.perf_counter() - start:.0f} s; "
        f"metrics in {trainer.log_path}"
    )
    if evals:
        first, final = evals[0], evals[-1]
        for key in ("eval/avg@k", "eval/pass@k", "eval/maj@k", "eval/greedy"):
            if key in first:
                print(
                    f"  {key:14s} step {first['step']:>4d}: {first[key]:.3f}   step {final['step']:>4d}: "
                    f"{final[key]:.3f}"
                )
    return 0


if __name__ == "__main__":
    status = main()
    if pipeline.receivers_alive():  # leave without the teardown that would abort under them
        _leave(status)
    raise SystemExit(status)
