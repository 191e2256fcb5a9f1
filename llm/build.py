"""What a run is built from: its task, its model and tokenizer, its rollout backend and policy.

Each is one function of :class:`~pmdlab.llm.settings.TrainConfig`, so the
learner (:mod:`.learner`) and a rollout worker (:mod:`.rollout.worker`) build
their policies the same way, and the trainer (:mod:`.train`) only wires them
together.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import distributed, models
from .policy import GenerateBackend, LMPolicy
from .settings import TrainConfig
from .tasks import ArithmeticTask, MathDataset
from .warmstart import warm_start

__all__ = [
    "enable_activation_checkpointing",
    "load_model",
    "load_trainable",
    "make_backend",
    "make_policy",
    "make_task",
    "model_path",
    "seed_of",
]


def seed_of(*parts: int) -> int:
    """A 63-bit seed from integers (stable across runs and machines)."""
    value = 0x9E3779B97F4A7C15
    for p in parts:
        value = (value * 6364136223846793005 + int(p) + 1442695040888963407) % (1 << 63)
    return value


def make_task(config: TrainConfig):
    """The embedded arithmetic task or a jsonl data set (``config.task``)."""
    task = config.task
    if task.data == "arithmetic":
        return ArithmeticTask(
            task.digits,
            task.terms,
            task.operations,
            eval_size=config.eval_size or 200,
            seed=config.seed,
            **task.arithmetic_prompt(),
        )
    return MathDataset(
        task.data,
        task.eval_data,
        template=task.math_template,
        timeout=task.verify_timeout,
        eval_size=config.eval_size,
        seed=config.seed,
    )


def resolve_dtype(config: TrainConfig, device: torch.device) -> torch.dtype:
    """The compute dtype, ``config.dtype``; ``auto`` is bfloat16 on a GPU and float32 on a CPU.
    The weights themselves are always float32 (the masters of mixed precision)."""
    if config.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, config.dtype)


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The dtype forward passes autocast to (``None``: float32, no autocast)."""
    compute = resolve_dtype(config, device)
    return None if compute == torch.float32 else compute


def model_path(config: TrainConfig, task, ctx, checkpoint_weights: Path | None = None) -> Path:
    """Where the weights come from.

    A resumed checkpoint's weights folder, the warm-started tiny model, or ``config.model`` (also
    for a sharded checkpoint, whose shards are loaded into the model built from it).
    """
    if checkpoint_weights is not None:
        return checkpoint_weights
    if config.model in models.KNOWN:
        return models.cache_root() / config.model
    if config.model.endswith(".gguf"):
        with distributed.main_first(ctx):  # rank 0 converts it once, the others read the folder
            return models.folder_for_gguf(config.model)
    if config.model != "tiny":
        return Path(config.model)
    if not isinstance(task, ArithmeticTask):
        raise ValueError("the embedded tiny model only knows the arithmetic task; give model=/path")
    with distributed.main_first(ctx):  # rank 0 trains and caches it, the others read it
        return warm_start(config.tiny, task, config.warmstart, progress=config.progress and ctx.main)


def load_model(path: str | Path, config: TrainConfig, device: torch.device):
    """Model and tokenizer from a local folder (no download: ``local_files_only``), the weights in
    float32 whatever the compute dtype (mixed precision keeps float32 masters: a bfloat16 weight
    rounds away an update below 2^-8 of itself)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    kwargs = dict(local_files_only=True, trust_remote_code=config.trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).to(device)
    except Exception as e:  # a damaged or incomplete folder (safetensors, JSON, missing files)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot load the model in {path}: {type(e).__name__}: {reason}") from None
    if config.chat_template and not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"chat_template=true, but the tokenizer in {path} has no chat template")
    if config.gradient_checkpointing:
        enable_activation_checkpointing(model)
    return model, tokenizer


def enable_activation_checkpointing(model) -> None:
    """Recompute activations in the backward pass (``activation_checkpointing_enable`` in
    transformers 5, ``gradient_checkpointing_enable`` before)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    model.config.use_cache = False


def apply_lora(model, lora, adapter: Path | None = None, seed: int = 0):
    """``model`` with LoRA adapters (``peft``): new ones from ``lora``, initialised from ``seed`` (the
    global random state is left alone), or the trained ones saved in ``adapter`` (a checkpoint's
    ``model/``). Only the adapters require gradients."""
    try:
        import peft
    except ImportError:
        raise ValueError("lora.rank > 0 needs peft: pip install peft (or the lora extra)") from None
    if adapter is not None:
        return peft.PeftModel.from_pretrained(model, adapter, is_trainable=True)
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.modules(),
        task_type="CAUSAL_LM",
    )
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return peft.get_peft_model(model, config)
    except ValueError as e:
        raise ValueError(f"lora.target_modules={lora.target_modules!r}: {e}") from None


def make_backend(
    config: TrainConfig, model, tokenizer, path: Path, device: torch.device, enforce_eager: bool = False
):
    """The rollout backend: ``model.generate`` on the trained model, or a colocated vLLM engine
    (``enforce_eager``: without its compilation and CUDA graphs)."""
    if config.rollout_backend == "vllm":
        from .vllm_backend import VLLMBackend

        dtype = str(resolve_dtype(config, device)).removeprefix("torch.")
        return VLLMBackend(
            path,
            tokenizer,
            dtype=dtype,
            max_model_len=config.vllm_max_model_len,
            gpu_memory_utilization=config.vllm_memory,
            seed=config.seed,
            trust_remote_code=config.trust_remote_code,
            enforce_eager=enforce_eager,
        )
    return GenerateBackend(distributed.unwrap(model), tokenizer, compute_dtype=autocast_dtype(config, device))


def load_trainable(config: TrainConfig, path: str | Path, adapter: str | Path | None, device: torch.device):
    """The model to train (or to sample with) and its tokenizer: :func:`load_model`, then with
    ``lora.rank`` new adapters (seeded) or the trained ones in ``adapter``."""
    model, tokenizer = load_model(path, config, device)
    if config.lora.rank:
        adapter = None if adapter is None else Path(adapter)
        model = apply_lora(model, config.lora, adapter, seed=seed_of(config.seed, 4))
    return model, tokenizer


def make_policy(config: TrainConfig, model, tokenizer, path: Path, device: torch.device) -> LMPolicy:
    """``model`` (possibly data-parallel wrapped) as a policy, sampling through :func:`make_backend`;
    with a bfloat16 compute dtype every forward pass runs under autocast."""
    return LMPolicy(
        model,
        tokenizer,
        config.sampling,
        token_budget=config.token_budget,
        logit_chunk=config.logit_chunk,
        chat_template=config.chat_template,
        system_prompt=config.system_prompt,
        backend=make_backend(config, model, tokenizer, path, device),
        compute_dtype=autocast_dtype(config, device),
    )
