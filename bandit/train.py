"""The trainer loop at bandit scale.

Per step (one policy version):

1. choose the step's prompts (all, or ``batch_prompts`` of them at random);
2. the sampler, the policy ``staleness`` versions ago (``min(step, k)``),
   draws ``n`` responses per prompt; their rewards are read off the task;
3. :func:`pmdlab.rl.update.policy_update` runs the ``minibatches``
   optimiser steps with ``pi_old`` = the sampler (the behaviour policy), or
   with ``old_source="current"`` the policy being trained
   (:func:`pmdlab.rl.anchor.anchor_logprobs`): the same advantages, losses
   and update as the LLM trainer;
4. metrics, exact because the response sets are finite: success
   ``E_pi[r in C]`` per prompt (mean, std, 10% and 90% quantiles), mean
   reward, policy entropy, ``KL(pi_old || pi)`` over the step's prompts, collapse events
   (prompts whose success fell by more than ``collapse_drop`` in the step),
   and, every ``exact_every`` steps for a tabular policy, the total-variation
   distance to the exact population update of :mod:`pmdlab.theory` from
   ``pi_old`` (PMD-mean's for ``pmd_mean``, PMD-part's for ``pmd_part``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from pmdlab.rl.algorithms import Algorithm
from pmdlab.rl.update import policy_update

from .optim import RowAdam
from .policies import LogLinearPolicy, SoftmaxPolicy, TabularPolicy, rollout_from_table
from .task import Task, TaskConfig, make_task

__all__ = ["BanditConfig", "BanditRun", "BanditTrainer", "make_optimizer", "make_policy", "train"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class BanditConfig:
    """One bandit training run.

    Attributes:
        task: the prompts, responses, rewards and difficulty (:class:`TaskConfig`).
        algorithm: the loss and its options (:class:`pmdlab.rl.algorithms.Algorithm`).
        policy: ``tabular`` or ``loglinear``.
        steps: policy versions (one rollout batch each).
        batch_prompts: prompts per rollout batch (``None``: all).
        n: responses sampled per prompt.
        minibatches: optimiser steps per pass over a rollout batch (off-policy reuse).
        epochs: passes over each rollout batch.
        staleness: the sampler is the policy this many versions ago.
        optimizer: ``adam`` or ``sgd``.
        lr: learning rate.
        dtype: ``float32`` or ``float64`` for the policy.
        seed: sampling and shuffling seed.
        collapse_drop: a prompt's success falling by more than this in a step is a collapse event.
        exact_every: every this many steps, compare with the exact update (tabular policy; 0: never).
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    algorithm: Algorithm = field(default_factory=Algorithm)
    policy: str = "tabular"
    steps: int = 100
    batch_prompts: int | None = None
    n: int = 8
    minibatches: int = 4
    epochs: int = 1
    staleness: int = 0
    optimizer: str = "adam"
    lr: float = 0.1
    dtype: str = "float32"
    seed: int = 0
    collapse_drop: float = 0.2
    exact_every: int = 0

    def __post_init__(self):
        if self.policy not in ("tabular", "loglinear"):
            raise ValueError(f"policy must be 'tabular' or 'loglinear', got {self.policy!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {tuple(_DTYPES)}, got {self.dtype!r}")
        for name in ("steps", "n", "minibatches", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.staleness < 0:
            raise ValueError(f"staleness must be non-negative, got {self.staleness}")
        if self.batch_prompts is not None and not (1 <= self.batch_prompts <= self.task.prompts):
            raise ValueError(f"batch_prompts must lie in [1, {self.task.prompts}], got {self.batch_prompts}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")


def make_policy(config: BanditConfig, task: Task) -> SoftmaxPolicy:
    dtype = _DTYPES[config.dtype]
    if config.policy == "tabular":
        return TabularPolicy(task, sparse=config.optimizer == "adam", dtype=dtype)
    return LogLinearPolicy(task, dtype=dtype)


def make_optimizer(config: BanditConfig, policy: SoftmaxPolicy) -> torch.optim.Optimizer:
    """Adam (:class:`.optim.RowAdam` for the sparse tabular logits: only the prompts
    of a minibatch move) or plain SGD."""
    params = list(policy.parameters())
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr)
    if getattr(policy, "sparse", False):
        return RowAdam(params, lr=config.lr)
    return torch.optim.Adam(params, lr=config.lr)


@dataclass
class BanditRun:
    """The result of :func:`train`: per-step ``metrics`` (name -> array over steps),
    the trained ``policy`` and the ``task``."""

    config: BanditConfig
    metrics: dict[str, np.ndarray]
    policy: SoftmaxPolicy
    task: Task

    def to_records(self) -> list[dict]:
        keys = list(self.metrics)
        return [{k: float(self.metrics[k][i]) for k in keys} for i in range(len(self.metrics["step"]))]


@dataclass
class _Version:
    """One policy version's tables over every prompt: log-probs, probabilities, and
    per prompt the success ``pi(C_x)``, mean reward ``E_pi r`` and ``sum pi log pi``."""

    log_probs: torch.Tensor
    probs: torch.Tensor
    success: torch.Tensor
    reward: torch.Tensor
    neg_entropy: torch.Tensor

    @classmethod
    @torch.no_grad()
    def of(cls, policy: SoftmaxPolicy, correct: torch.Tensor, rewards: torch.Tensor | None) -> "_Version":
        logp = policy.all_log_probs()
        p = torch.exp(logp)
        success = (p * correct).sum(1)
        reward = success if rewards is None else (p * rewards).sum(1)
        return cls(logp, p, success, reward, (p * logp).sum(1))

    def kl_to(self, other: "_Version", pick) -> torch.Tensor:
        """``KL(self || other)`` per prompt ``pick``: ``sum p log p - sum p log q``."""
        return self.neg_entropy[pick] - (self.probs[pick] * other.log_probs[pick]).sum(1)


def _exact_distance(config: BanditConfig, old_logp, new_logp, rewards) -> float:
    """Mean total variation between the trained policy and the population update from ``pi_old``."""
    from pmdlab.theory import pmd_mean, pmd_part

    old = torch.softmax(old_logp.to(torch.float64), dim=1).numpy()
    new = torch.softmax(new_logp.to(torch.float64), dim=1).numpy()
    exact = pmd_mean if config.algorithm.name == "pmd_mean" else pmd_part
    target = exact(old, rewards.to(torch.float64).numpy(), config.algorithm.tau).policy
    return float(0.5 * np.abs(new - target).sum(axis=1).mean())


class BanditTrainer:
    """The loop, one :meth:`step` at a time (``train`` runs it to the end).

    ``metrics`` holds the records so far (step 0 is the initial policy).
    """

    def __init__(self, config: BanditConfig, task: Task | None = None):
        task = make_task(config.task) if task is None else task
        if task.config != config.task:
            raise ValueError("task was sampled from a different TaskConfig than config.task")
        self.config, self.task = config, task
        self.gen = torch.Generator().manual_seed(config.seed)
        self.policy = make_policy(config, task)
        self.optimizer = make_optimizer(config, self.policy)
        dtype = _DTYPES[config.dtype]
        self._correct = task.correct.to(dtype)
        self._rewards = task.rewards.to(dtype)
        self._graded = None if config.task.rewards == "binary" else self._rewards
        self._exact = (
            config.exact_every > 0
            and config.policy == "tabular"
            and config.algorithm.name in ("pmd_mean", "pmd_part")
        )
        self.current = _Version.of(self.policy, self._correct, self._graded)
        self.history: list[tuple[int, _Version]] = []  # the last `staleness` versions, oldest first
        self.steps_done = 0
        self.records: dict[str, list[float]] = {}
        self._log(_summary(0, self.current, {}))

    def _log(self, values):
        for k, v in values.items():
            self.records.setdefault(k, []).append(float(v))

    def step(self) -> dict[str, float]:
        """One policy version: sample, score, update, measure. Returns its metrics."""
        cfg, task, gen = self.config, self.task, self.gen
        step = self.steps_done + 1
        if cfg.batch_prompts is None:
            rows, pick = torch.arange(task.prompts), slice(None)  # a view of the tables, not a copy
        else:
            rows = torch.randperm(task.prompts, generator=gen)[: cfg.batch_prompts].sort().values
            pick = rows
        # The sampler is version max(0, step - 1 - staleness).
        sampler_version, sampler = self.history[0] if self.history else (step - 1, self.current)
        rollout = rollout_from_table(sampler.log_probs[pick], rows, cfg.n, gen, sampler.probs[pick])
        rollout.rewards = self._rewards[rollout.group_ids, rollout.tokens[:, 0]]
        if cfg.staleness:
            self.history.append((step - 1, self.current))
            if len(self.history) > cfg.staleness:
                self.history.pop(0)
        upd = policy_update(
            self.policy.log_probs,
            self.optimizer,
            rollout,
            cfg.algorithm,
            num_minibatches=cfg.minibatches,
            epochs=cfg.epochs,
            generator=gen,
            # the sampler's log-probs are the behaviour policy's, exactly; pmdlab.rl.anchor makes
            # pi_old of them, or with old_source=current of the policy being trained
            behaviour_logprobs=rollout.sampler_logprobs,
        )
        new = _Version.of(self.policy, self._correct, self._graded)
        with torch.no_grad():
            extra = {
                "sampler_version": sampler_version,
                "kl_old_new": sampler.kl_to(new, pick).mean(),
                "entropy": -new.neg_entropy.mean(),
                "collapses": ((self.current.success - new.success) > cfg.collapse_drop).sum(),
                **{f"loss/{k}": v for k, v in upd.items()},
            }
            if self._exact:
                due = step % cfg.exact_every == 0
                tv = (
                    _exact_distance(cfg, sampler.log_probs[pick], new.log_probs[pick], task.rewards[pick])
                    if due
                    else math.nan
                )
                extra["exact_tv"] = tv
        self.current = new
        self.steps_done = step
        summary = _summary(step, new, extra)
        self._log(summary)
        return summary

    def result(self) -> BanditRun:
        n = len(self.records["step"])
        metrics = {k: np.asarray([math.nan] * (n - len(v)) + v) for k, v in self.records.items()}
        return BanditRun(self.config, metrics, self.policy, self.task)


def train(config: BanditConfig, task: Task | None = None, progress=None) -> BanditRun:
    """Run ``config.steps`` policy versions; ``progress(step, metrics)`` is called after each."""
    trainer = BanditTrainer(config, task)
    for _ in range(config.steps):
        summary = trainer.step()
        if progress is not None:
            progress(trainer.steps_done, summary)
    return trainer.result()


def _summary(step, version: _Version, extra) -> dict[str, float]:
    success = version.success.to(torch.float64)
    q = torch.quantile(success, torch.tensor([0.1, 0.9], dtype=success.dtype))
    out = {
        "step": step,
        "success_mean": success.mean(),
        "success_std": success.std() if success.numel() > 1 else 0.0,
        "success_q10": q[0],
        "success_q90": q[1],
        "reward_mean": version.reward.to(torch.float64).mean(),
    }
    out.update(extra)
    return {k: float(v) for k, v in out.items()}


def config_dict(config: BanditConfig) -> dict:
    """The configuration as plain nested dicts (for caches and logs)."""
    return asdict(config)
