"""``python -m pmdlab.llm.train``: RL post-training of a causal LM with PMD-mean (or GRPO, GSPO, ...).

    python -m pmdlab.llm.train                                   # embedded task and tiny model, CPU
    python -m pmdlab.llm.train algorithm=grpo                    # the same budget with GRPO
    python -m pmdlab.llm.train model=/path/to/checkpoint data=/path/train.jsonl eval_data=math500
    python -m pmdlab.llm.train --resume out=runs/my-run          # continue from the last checkpoint
    python -m pmdlab.llm.train --help                            # every setting
    torchrun --nproc_per_node 8 -m pmdlab.llm.train model=/path ...   # data parallel (FSDP2 or DDP)

Each step (pmd-math.md §5):

1. the sampler, the policy ``staleness`` versions ago, draws ``n``
   responses to each of ``prompts`` training problems; they are scored, and
   ``pi_old``'s log-probs (and token entropies) computed once;
2. :func:`pmdlab.llm.update.policy_update` runs ``minibatches x epochs``
   optimiser steps with ``pi_old`` fixed, micro-batched within a token
   budget, using the losses of :mod:`pmdlab.llm.losses`;
3. a metrics record goes to ``<out>/metrics.jsonl`` (the format of
   :mod:`.metrics_log`), with held-out evaluation every ``eval_every`` steps;
4. every ``save_every`` steps, an atomic checkpoint (:mod:`.checkpoint`).

All randomness is drawn from generators seeded by ``(seed, step)``, so a
resumed run repeats exactly what the uninterrupted run would have done.
"""

from __future__ import annotations

import math
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, distributed, metrics_log
from .algorithms import Algorithm
from .config import parse, to_dict
from .evaluate import evaluate
from .policy import GenerateBackend, LMPolicy, SamplingConfig
from .rollout import Rollout
from .tasks import DEFAULT_TEMPLATE, ArithmeticTask, MathDataset, make_reward
from .tiny import TinyModelConfig
from .update import policy_update
from .warmstart import WarmStartConfig, warm_start

__all__ = ["NonFiniteError", "TrainConfig", "Trainer", "main"]

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class NonFiniteError(RuntimeError):
    """Too many optimiser updates in a row had a non-finite loss or gradient."""


@dataclass(frozen=True)
class TrainConfig:
    """RL post-training of a causal language model on a verifiable task.

    Attributes:
        model: ``tiny`` (the embedded model, built and warm-started here) or a local model folder.
        tiny: size of the embedded model.
        warmstart: the embedded model's supervised warm start.
        trust_remote_code: let ``transformers`` run code shipped with the model.
        dtype: ``auto`` (bfloat16 on a GPU, float32 on a CPU), ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun: ``auto`` or ``cpu``).
        parallel: under torchrun, ``auto`` (FSDP2 on GPUs, DDP on CPUs), ``fsdp`` or ``ddp``.
        gradient_checkpointing: recompute activations in the backward pass (less memory).
        chat_template: wrap each prompt as a user turn with the tokenizer's chat template.
        rollout_backend: ``transformers`` (``model.generate``) or ``vllm`` (a colocated vLLM engine; the vllm extra).
        vllm_memory: the vLLM engine's share of GPU memory.
        vllm_max_model_len: longest prompt plus response the vLLM engine accepts.
        data: ``arithmetic`` (the embedded task) or a jsonl file of {"id", "problem", "answer"} rows.
        eval_data: held-out jsonl file or bundled set (aime2024, aime2025, math500); arithmetic holds out its own.
        template: prompt template for jsonl problems ({problem} is replaced).
        digits: arithmetic: digits of each number.
        terms: arithmetic: numbers per problem.
        operations: arithmetic: operators to draw from (+, -, *).
        reward_values: ``binary`` (1/0) or ``signed`` (1/-1).
        verify_timeout: seconds allowed to math-verify per parse or comparison.
        algorithm: the loss and its options (pmd_mean, pmd_part, grpo, gspo, rloo).
        sampling: temperature, top-p and response length of the sampler.
        steps: RL steps (rollout batches).
        prompts: prompts per rollout batch.
        n: responses sampled per prompt.
        minibatches: optimiser steps per pass over a rollout batch (off-policy reuse).
        epochs: passes over each rollout batch.
        staleness: train on rollouts sampled this many policy versions ago.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: RL steps of linear learning-rate warm-up.
        max_grad_norm: gradient clipping threshold.
        token_budget: most padded tokens in one forward pass (micro-batching).
        eval_every: evaluate every this many steps (and before the first and after the last; 0: never).
        eval_size: held-out problems evaluated (none: all).
        eval_k: samples per held-out problem (avg@k, pass@k, maj@k).
        eval_greedy: also report greedy accuracy.
        save_every: checkpoint every this many steps (and at the end; 0: only at the end).
        keep_checkpoints: how many recent checkpoints to keep.
        max_nonfinite: stop after this many optimiser updates in a row with a non-finite loss or gradient.
        out: the run's folder (metrics.jsonl, checkpoints); default runs/<algorithm>-seed<seed>.
        run_name: name of the run in the metrics log (default: the folder's name).
        resume: continue from the newest checkpoint in ``out`` (also ``--resume``).
        seed: seed of sampling, shuffling and data order.
        threads: torch CPU threads (none: torch's default).
        progress: show a progress bar.
        tensorboard: also log to TensorBoard in ``<out>/tensorboard``.
        wandb_project: also log to this Weights & Biases project.
    """

    model: str = "tiny"
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    warmstart: WarmStartConfig = field(default_factory=WarmStartConfig)
    trust_remote_code: bool = False
    dtype: str = "auto"
    device: str = "auto"
    parallel: str = "auto"
    gradient_checkpointing: bool = False
    chat_template: bool = False
    rollout_backend: str = "transformers"
    vllm_memory: float = 0.4
    vllm_max_model_len: int = 4096
    data: str = "arithmetic"
    eval_data: str | None = None
    template: str = DEFAULT_TEMPLATE
    digits: int = 1
    terms: int = 4
    operations: str = "+"
    reward_values: str = "binary"
    verify_timeout: int = 5
    algorithm: Algorithm = field(default_factory=lambda: Algorithm(name="pmd_mean", tau=1.0))
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=4))
    steps: int = 600
    prompts: int = 32
    n: int = 8
    minibatches: int = 2
    epochs: int = 1
    staleness: int = 0
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    token_budget: int = 16384
    eval_every: int = 50
    eval_size: int | None = 256
    eval_k: int = 8
    eval_greedy: bool = True
    save_every: int = 100
    keep_checkpoints: int = 2
    max_nonfinite: int = 5
    out: str | None = None
    run_name: str | None = None
    resume: bool = False
    seed: int = 0
    threads: int | None = None
    progress: bool = True
    tensorboard: bool = False
    wandb_project: str | None = None

    def __post_init__(self):
        for name in ("steps", "prompts", "n", "minibatches", "epochs", "eval_k", "max_nonfinite", "token_budget"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("staleness", "warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)}")
        if self.minibatches > self.prompts:
            raise ValueError(f"minibatches ({self.minibatches}) cannot exceed prompts ({self.prompts})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_grad_norm}")
        if self.rollout_backend not in ("transformers", "vllm"):
            raise ValueError(f"rollout_backend must be transformers or vllm, got {self.rollout_backend!r}")
        if self.rollout_backend == "vllm" and self.parallel == "fsdp":
            raise ValueError("rollout_backend=vllm runs one engine per rank: use parallel=ddp")
        if self.parallel not in ("auto", "fsdp", "ddp"):
            raise ValueError(f"parallel must be auto, fsdp or ddp, got {self.parallel!r}")
        if self.dtype != "auto" and self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be auto or one of {tuple(_DTYPES)}, got {self.dtype!r}")
        if self.model != "tiny" and not Path(self.model).is_dir():
            raise ValueError(f"model must be 'tiny' or a local model folder; {self.model} is not a folder")
        make_reward(self.reward_values)  # validates

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.algorithm.name}-seed{self.seed}")


# --------------------------------------------------------------------- set-up


def make_task(config: TrainConfig):
    """The embedded arithmetic task or a jsonl data set."""
    if config.data == "arithmetic":
        if config.eval_data is not None:
            raise ValueError("eval_data applies to jsonl data; the arithmetic task holds out its own problems")
        return ArithmeticTask(config.digits, config.terms, config.operations, eval_size=config.eval_size or 200,
                              seed=config.seed)  # fmt: skip
    return MathDataset(config.data, config.eval_data, template=config.template, timeout=config.verify_timeout,
                       eval_size=config.eval_size, seed=config.seed)  # fmt: skip


def resolve_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[config.dtype]


def load_model(path: str | Path, config: TrainConfig, device: torch.device):
    """Model and tokenizer from a local folder (no download: ``local_files_only``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    dtype = resolve_dtype(config, device)
    kwargs = dict(local_files_only=True, trust_remote_code=config.trust_remote_code)
    tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs).to(device)
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model, tokenizer


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in the backward pass (``activation_checkpointing_enable`` in
    transformers 5, ``gradient_checkpointing_enable`` before)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.config.use_cache = False


def _seed(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and machines)."""
    value = 0x9E3779B97F4A7C15
    for p in parts:
        value = (value * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return value


# --------------------------------------------------------------------- trainer


class Trainer:
    """The training loop of :class:`TrainConfig` (see the module docstring)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        if config.threads:
            torch.set_num_threads(config.threads)
        self.ctx = distributed.setup(config.device)
        if config.prompts % self.ctx.world_size:
            raise ValueError(f"prompts ({config.prompts}) must be a multiple of the number of ranks "
                             f"({self.ctx.world_size})")  # fmt: skip
        if config.minibatches > config.prompts // self.ctx.world_size:
            raise ValueError(f"minibatches ({config.minibatches}) cannot exceed the prompts per rank "
                             f"({config.prompts // self.ctx.world_size})")  # fmt: skip
        self.task = make_task(config)
        self.reward = make_reward(config.reward_values)
        self.run_dir = config.run_dir
        self.log_path = self.run_dir / "metrics.jsonl"
        self.run_name = config.run_name or self.run_dir.name
        resume_from = checkpoint.latest(self.run_dir) if config.resume else None
        if config.resume and resume_from is None:
            raise ValueError(f"resume: no checkpoint in {self.run_dir}")
        if resume_from is None and self.log_path.exists():
            raise ValueError(f"{self.run_dir} already holds a run; pass --resume, or choose another out=")
        if resume_from is not None:
            model_path = resume_from / "model"
        elif config.model == "tiny":
            if not isinstance(self.task, ArithmeticTask):
                raise ValueError("the embedded tiny model only knows the arithmetic task; give model=/path")
            with distributed.main_first(self.ctx):  # rank 0 trains and caches it, the others read it
                model_path = warm_start(config.tiny, self.task, config.warmstart,
                                        progress=config.progress and self.ctx.main)  # fmt: skip
        else:
            model_path = Path(config.model)
        model, tokenizer = load_model(model_path, config, self.ctx.device)
        parallel = "ddp" if config.rollout_backend == "vllm" else config.parallel
        self.model = distributed.wrap(model, self.ctx, parallel)
        if config.rollout_backend == "vllm":
            from .vllm_backend import VLLMBackend

            dtype = str(resolve_dtype(config, self.ctx.device)).removeprefix("torch.")
            backend = VLLMBackend(model_path, tokenizer, dtype=dtype, max_model_len=config.vllm_max_model_len,
                                  gpu_memory_utilization=config.vllm_memory, seed=config.seed,
                                  trust_remote_code=config.trust_remote_code)  # fmt: skip
        else:
            backend = GenerateBackend(distributed.unwrap(self.model), tokenizer)
        self.backend = backend
        self.policy = LMPolicy(self.model, tokenizer, config.sampling, token_budget=config.token_budget,
                               chat_template=config.chat_template, backend=backend)  # fmt: skip
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        warm = config.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
        )
        self.step = 0
        self.nonfinite_streak = 0
        self.queue: deque[dict] = deque()
        self.eval_problems = self.task.eval_problems()  # eval_size applied by the task
        self._writers = self._open_writers() if self.ctx.main else []
        if resume_from is not None:
            self._restore(resume_from)
        distributed.barrier(self.ctx)  # every rank has checked the run folder before rank 0 writes to it

    # -- rollouts ------------------------------------------------------------

    def _generate(self, version: int) -> dict:
        """One scored rollout batch from the current policy, with its ``pi_old`` log-probs."""
        cfg = self.config
        problems = distributed.shard(self.task.train_batch(cfg.prompts), self.ctx)  # every rank draws all
        torch.manual_seed(_seed(cfg.seed, version, 1, self.ctx.rank))
        start = time.perf_counter()
        self.policy.model.eval()
        with distributed.gathered(self.model):
            rollout = self.policy.sample([p.prompt for p in problems], cfg.n)
            old, entropy = self.policy.log_probs_and_entropy(rollout)
        texts = self.policy.decode(rollout)
        hits = [self.task.is_correct(t, problems[i // cfg.n]) for i, t in enumerate(texts)]
        rewards = [self.reward(hit) for hit in hits]
        rollout.rewards = torch.tensor(rewards, dtype=torch.float32, device=rollout.tokens.device)
        self.policy.model.train()
        elapsed = time.perf_counter() - start
        tokens = float(rollout.mask.sum())
        correct = torch.tensor(hits)
        stats = {
            "train/reward": float(rollout.rewards.mean()),
            "train/accuracy": float(correct.float().mean()),
            "train/response_length": tokens / len(rollout),
            "train/entropy": float(entropy.sum() / rollout.mask.sum()),
            "train/solved_groups": float(correct.view(-1, cfg.n).all(1).float().mean()),
            "train/unsolved_groups": float((~correct.view(-1, cfg.n)).all(1).float().mean()),
            "perf/rollout_s": elapsed,
            "perf/rollout_tokens_per_s": tokens / elapsed,
            "train/sampler_version": float(version),
        }
        stats = distributed.mean_over_ranks(stats, self.ctx)
        return {"rollout": rollout, "old": old, "stats": stats}

    def _next_batch(self) -> dict:
        """The batch to train on at this step: sampled ``min(step, staleness)`` versions ago."""
        cfg = self.config
        if self.step == 0 and not self.queue:
            for _ in range(min(cfg.staleness + 1, cfg.steps)):
                self.queue.append(self._generate(0))
        elif self.step + cfg.staleness < cfg.steps:
            self.queue.append(self._generate(self.step))
        return self.queue.popleft()

    # -- one step ------------------------------------------------------------

    def train_step(self) -> dict:
        cfg = self.config
        batch = self._next_batch()
        rollout = batch["rollout"]
        if hasattr(self.backend, "sleep"):
            self.backend.sleep()  # a colocated engine frees its GPU memory for the update
        start = time.perf_counter()
        generator = torch.Generator().manual_seed(_seed(cfg.seed, self.step, 2))
        metrics = policy_update(
            self.policy.log_probs, self.optimizer, rollout, cfg.algorithm,
            num_minibatches=cfg.minibatches, epochs=cfg.epochs, generator=generator,
            old_logprobs=batch["old"], micro_batches=self._micro_batches,
            parameters=list(self.policy.parameters()), max_grad_norm=cfg.max_grad_norm,
            **self._parallel_update_options(),
        )  # fmt: skip
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
        return {"all_reduce": distributed.all_reduce_sum, "loss_scale": float(self.ctx.world_size),
                "no_sync": distributed.no_sync(self.model)}  # fmt: skip

    def evaluate(self) -> dict:
        """Held-out metrics (computed on rank 0; the other ranks wait)."""
        cfg = self.config
        start = time.perf_counter()
        out = {}
        with distributed.gathered(self.model):
            if self.ctx.main:
                out = evaluate(self.policy, self.task, self.eval_problems, cfg.eval_k, greedy=cfg.eval_greedy,
                               seed=_seed(cfg.seed, 3))  # fmt: skip
            distributed.barrier(self.ctx)
        self.policy.model.train()
        out["perf/eval_s"] = time.perf_counter() - start
        return out

    # -- logging and checkpoints --------------------------------------------------

    def _log(self, record: dict) -> None:
        if not self.ctx.main:
            return
        full = {"run": self.run_name, "algorithm": self.config.algorithm.name, "step": self.step, **record}
        metrics_log.append(self.log_path, full)
        for write in self._writers:
            write(record, self.step)

    def _open_writers(self) -> list:
        cfg, writers = self.config, []
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError("tensorboard=true needs the tensorboard package: pip install tensorboard") from None

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

    def save(self) -> Path:
        """An atomic checkpoint: the full weights and trainer state from rank 0, each rank's rollouts."""
        ctx = self.ctx
        full_weights = distributed.full_state_dict(self.model)  # a collective under FSDP2
        optimizer_state = distributed.full_optimizer_state(self.model, self.optimizer)
        tmp = self.run_dir / f".tmp-step-{self.step:06d}"
        if ctx.main:
            tmp = checkpoint.begin(self.run_dir, self.step)
            checkpoint.write_model(tmp, distributed.unwrap(self.model), self.policy.tokenizer, full_weights)
            state = {
                "step": self.step,
                "nonfinite_streak": self.nonfinite_streak,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(),
                "rng": checkpoint.rng_state(),
                "task": self.task.state(),
                "world_size": ctx.world_size,
                "config": to_dict(self.config),
            }
            torch.save(state, tmp / "trainer.pt")
        distributed.barrier(ctx)
        queue = [{"rollout": _rollout_to_dict(b["rollout"]), "old": b["old"], "stats": b["stats"]} for b in self.queue]
        torch.save(queue, tmp / f"rollouts-rank{ctx.rank}.pt")
        distributed.barrier(ctx)
        final = self.run_dir / f"step-{self.step:06d}"
        if ctx.main:
            final = checkpoint.commit(self.run_dir, tmp, self.step, keep=self.config.keep_checkpoints)
        distributed.barrier(ctx)
        return final

    def _restore(self, path: Path) -> None:
        state = checkpoint.load(path)
        if state.get("world_size", 1) != self.ctx.world_size:
            raise ValueError(f"{path} was written by {state.get('world_size', 1)} ranks; resume with as many "
                             f"(this run has {self.ctx.world_size})")  # fmt: skip
        self.step = state["step"]
        self.nonfinite_streak = state["nonfinite_streak"]
        distributed.load_optimizer_state(self.model, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        checkpoint.set_rng_state(state["rng"])
        self.task.set_state(state["task"])
        device = self.ctx.device
        queue = torch.load(path / f"rollouts-rank{self.ctx.rank}.pt", weights_only=False)
        self.queue = deque(
            {"rollout": _rollout_from_dict(b["rollout"], device), "old": b["old"].to(device), "stats": b["stats"]}
            for b in queue
        )
        # Records past the checkpoint were produced by steps that are about to be redone.
        if self.ctx.main and self.log_path.exists():
            lines = self.log_path.read_text().splitlines(keepends=True)
            kept = [ln for ln in lines if ln.strip() and _step_of(ln) <= self.step]
            tmp = self.log_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(kept))
            tmp.replace(self.log_path)

    # -- the run -------------------------------------------------------------

    def run(self) -> list[dict]:
        """Train to ``steps``; return the records logged by this call."""
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        records = []
        bar = None
        if cfg.progress and self.ctx.main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc=self.run_name, dynamic_ncols=True)
        if self.step == 0 and cfg.eval_every:
            record = self.evaluate()
            self._log(record)
            records.append({"step": 0, **record})
        try:
            while self.step < cfg.steps:
                record = self.train_step()
                last = self.step == cfg.steps
                if cfg.eval_every and (self.step % cfg.eval_every == 0 or last):
                    record.update(self.evaluate())
                self._log(record)
                records.append({"step": self.step, **record})
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(_postfix(record), refresh=False)
                if self.nonfinite_streak >= cfg.max_nonfinite:
                    raise NonFiniteError(
                        f"{self.nonfinite_streak} optimiser updates in a row had a non-finite loss or gradient "
                        f"(max_nonfinite={cfg.max_nonfinite}); stopped at step {self.step}. The last checkpoint "
                        f"in {self.run_dir} holds finite weights."
                    )
                if last or (cfg.save_every and self.step % cfg.save_every == 0):
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        return records


def _postfix(record: dict) -> dict:
    keys = {"train/reward": "reward", "eval/avg@k": "avg@k", "eval/pass@k": "pass@k", "loss/loss": "loss"}
    return {short: f"{record[k]:.3f}" for k, short in keys.items() if k in record}


def _step_of(line: str) -> int:
    import json

    return int(json.loads(line)["step"])


def _rollout_to_dict(r: Rollout) -> dict:
    return {"group_ids": r.group_ids, "tokens": r.tokens, "mask": r.mask, "sampler_logprobs": r.sampler_logprobs,
            "rewards": r.rewards, "prompts": r.prompts, "extras": dict(r.extras)}  # fmt: skip


def _rollout_from_dict(d: dict, device) -> Rollout:
    def move(x):
        return x.to(device) if isinstance(x, torch.Tensor) else x

    return Rollout(**{k: move(v) for k, v in d.items() if k != "extras"},
                   extras={k: move(v) for k, v in d["extras"].items()})  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--resume" in argv:
        argv = [a for a in argv if a != "--resume"] + ["resume=true"]
    try:
        config = parse(TrainConfig, argv, prog="python -m pmdlab.llm.train")
        trainer = Trainer(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    records = trainer.run()
    evals = [r for r in records if "eval/avg@k" in r]
    print(f"{trainer.run_name}: {trainer.step} steps in {time.perf_counter() - start:.0f} s; "
          f"metrics in {trainer.log_path}")  # fmt: skip
    if evals:
        first, final = evals[0], evals[-1]
        for key in ("eval/avg@k", "eval/pass@k", "eval/maj@k", "eval/greedy"):
            if key in first:
                print(f"  {key:14s} step {first['step']:>4d}: {first[key]:.3f}   step {final['step']:>4d}: "
                      f"{final[key]:.3f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
