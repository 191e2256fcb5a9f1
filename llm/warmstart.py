"""The embedded model's warm start: a short supervised phase on the embedded task, cached.

Reinforcement learning from verifiable rewards needs a policy that is
sometimes right. :func:`warm_start` trains the tiny model (:mod:`.tiny`)
for a few hundred steps of next-token cross-entropy on
``prompt -> answer<eos>`` pairs of the arithmetic task, which leaves it
with a middling success rate, and saves it as an ordinary checkpoint in a
cache folder keyed by everything that determines it (model size, task,
schedule, seed, library versions). A second call returns the cached
checkpoint at once.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pmdlab.rl.rollout import Rollout

from .policy import LMPolicy, response_mask
from .tasks import ArithmeticTask
from .tiny import TinyModelConfig, build_model, build_tokenizer

__all__ = ["WarmStartConfig", "cache_root", "sft_loss", "warm_start"]

_VERSION = 1


@dataclass(frozen=True)
class WarmStartConfig:
    """The supervised warm start of the embedded model.

    Attributes:
        steps: optimiser steps of supervised training.
        batch_size: problems per step.
        lr: AdamW learning rate.
        seed: seed of the training problems (independent of the RL run's).
        cache_dir: where warm-started checkpoints are kept (default: $PMDLAB_CACHE or ~/.cache/pmdlab).
    """

    steps: int = 200
    batch_size: int = 64
    lr: float = 3e-3
    seed: int = 12345
    cache_dir: str | None = None

    def __post_init__(self):
        if self.steps < 0 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("warm start needs steps >= 0, batch_size >= 1 and lr > 0")


def cache_root(config: WarmStartConfig) -> Path:
    root = config.cache_dir or os.environ.get("PMDLAB_CACHE") or Path.home() / ".cache" / "pmdlab"
    return Path(root)


def _key(model: TinyModelConfig, task: ArithmeticTask, config: WarmStartConfig) -> str:
    import transformers

    spec = {
        "model": asdict(model),
        "task": {"digits": task.digits, "terms": task.terms, "operations": task.operations},
        "warmstart": {k: v for k, v in asdict(config).items() if k != "cache_dir"},
        "versions": [_VERSION, torch.__version__, transformers.__version__],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def sft_loss(policy: LMPolicy, prompts: list[str], answers: list[str]) -> torch.Tensor:
    """Mean token cross-entropy of ``answer<eos>`` after each prompt."""
    tok = policy.tokenizer
    ids, pmask = policy.encode(prompts)
    rows = [tok(a, add_special_tokens=False).input_ids + [tok.eos_token_id] for a in answers]
    width = max(map(len, rows))
    tokens = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows], device=ids.device)
    mask = response_mask(tokens, tok.eos_token_id)
    batch = Rollout(
        group_ids=torch.arange(len(rows)),
        tokens=tokens,
        mask=mask,
        prompts=ids,
        extras={"prompt_mask": pmask},
    )
    return -(policy.log_probs(batch) * mask).sum() / mask.sum()


def warm_start(
    model_config: TinyModelConfig, task: ArithmeticTask, config: WarmStartConfig, progress: bool = False
) -> Path:
    """The path of the warm-started tiny model for this task (trained and cached on first use)."""
    path = cache_root(config) / f"tiny-{_key(model_config, task, config)}"
    if (path / "config.json").is_file():
        return path
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = build_tokenizer()
    model = build_model(model_config, tokenizer)
    policy = LMPolicy(model, tokenizer)
    data = ArithmeticTask(task.digits, task.terms, task.operations, eval_size=0, seed=config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(config.steps, 1))
    model.train()
    steps = range(config.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="warm start", leave=False)
    for _ in steps:
        batch = data.train_batch(config.batch_size)
        loss = sft_loss(policy, [p.prompt for p in batch], [p.answer for p in batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return path
