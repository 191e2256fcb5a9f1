"""The trainer's settings: :class:`TrainConfig` and its nested :class:`TaskConfig`.

``python -m pmdlab.llm.train --help`` lists every field; ``key=value`` sets
one (``task.digits=2``, ``algorithm.tau=0.5``) and ``--config FILE`` reads a
JSON or YAML file of them (:mod:`pmdlab.rl.config`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from pmdlab.rl.algorithms import Algorithm

from .models import KNOWN, is_fetched
from .policy import SamplingConfig
from .tasks import ARITHMETIC_TEMPLATE, DEFAULT_TEMPLATE, REWARD_VALUES, ArithmeticTask
from .tiny import TinyModelConfig
from .warmstart import WarmStartConfig

__all__ = ["DTYPES", "LoraConfig", "TaskConfig", "TrainConfig"]

#: ``dtype=`` names (``auto`` picks bfloat16 on a GPU, float32 on a CPU).
DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class TaskConfig:
    """The task: problems to train on, the held-out ones and how answers are scored.

    Attributes:
        data: ``arithmetic`` (the embedded task) or a jsonl file of {"id", "problem", "answer"} rows.
        eval_data: held-out jsonl file or bundled set (aime2024, aime2025, math500); arithmetic holds out
            its own.
        template: prompt template ({problem} is replaced; none: ``{problem}=`` for arithmetic, a
            boxed-answer instruction for jsonl problems).
        grading: arithmetic: ``exact`` (the stripped completion is the answer) or ``last_number`` (the
            last integer in free text is; for chat models).
        digits: arithmetic: digits of each number.
        terms: arithmetic: numbers per problem.
        operations: arithmetic: operators to draw from (+, -, *).
        reward_values: ``binary`` (1/0) or ``signed`` (1/-1).
        verify_timeout: seconds allowed to math-verify per parse or comparison.
    """

    data: str = "arithmetic"
    eval_data: str | None = None
    template: str | None = None
    grading: str = "exact"
    digits: int = 1
    terms: int = 4
    operations: str = "+"
    reward_values: str = "binary"
    verify_timeout: int = 5

    def __post_init__(self):
        if self.reward_values not in REWARD_VALUES:
            raise ValueError(
                f"task.reward_values must be one of {tuple(REWARD_VALUES)}, got {self.reward_values!r}"
            )
        if self.data == "arithmetic" and self.eval_data is not None:
            raise ValueError(
                "task.eval_data applies to jsonl data; the arithmetic task holds out its own problems"
            )
        if self.verify_timeout < 1:
            raise ValueError(f"task.verify_timeout must be at least 1 second, got {self.verify_timeout}")
        if self.data == "arithmetic":
            try:  # the task's own checks of digits, terms and operations
                ArithmeticTask(
                    self.digits, self.terms, self.operations, eval_size=0, **self.arithmetic_prompt()
                )
            except ValueError as e:
                raise ValueError(f"task.{e}") from None
        elif self.grading != "exact":
            raise ValueError(
                "task.grading applies to the arithmetic task; jsonl answers are checked by math-verify"
            )

    def arithmetic_prompt(self) -> dict:
        """The arithmetic task's ``template`` and ``grading`` arguments."""
        return {"template": self.template or ARITHMETIC_TEMPLATE, "grading": self.grading}

    @property
    def math_template(self) -> str:
        """The prompt template of jsonl problems."""
        return self.template or DEFAULT_TEMPLATE


@dataclass(frozen=True)
class LoraConfig:
    """LoRA adapters through ``peft``: only the adapters train and are checkpointed.

    Attributes:
        rank: adapter rank (0: no adapters, every weight trains).
        alpha: scale of the adapters' update, ``alpha / rank``.
        dropout: dropout on the adapters' input.
        target_modules: comma-separated module names (``q_proj,v_proj``) or ``all-linear`` (every linear
            layer but the output head).
    """

    rank: int = 0
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: str = "all-linear"

    def __post_init__(self):
        if self.rank < 0:
            raise ValueError(f"lora.rank must be non-negative (0: off), got {self.rank}")
        if not self.alpha > 0:
            raise ValueError(f"lora.alpha must be positive, got {self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules.strip(", "):
            raise ValueError("lora.target_modules must name at least one module (or all-linear)")

    def modules(self) -> str | list[str]:
        """``target_modules`` as peft takes it."""
        if self.target_modules == "all-linear":
            return "all-linear"
        return [m.strip() for m in self.target_modules.split(",") if m.strip()]


@dataclass(frozen=True)
class TrainConfig:
    """RL post-training of a causal language model on a verifiable task.

    Attributes:
        model: ``tiny`` (the embedded model, built and warm-started here), a local model folder, a
            ``.gguf`` file (converted once), or a name that ``python -m pmdlab.llm.models fetch`` has
            fetched (``smollm2-135m-instruct``).
        tiny: size of the embedded model.
        warmstart: the embedded model's supervised warm start.
        trust_remote_code: let ``transformers`` run code shipped with the model.
        dtype: the compute precision: ``float32``, or ``bfloat16`` mixed precision (float32 master
            weights and optimiser state, bfloat16 matmuls under autocast; under FSDP2 bfloat16
            parameters with float32 gradient reductions; checkpoints hold the float32 masters);
            ``auto``: bfloat16 on a GPU, float32 on a CPU. ``float16`` would need loss scaling and
            is refused.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun: ``auto`` or ``cpu``).
        parallel: under torchrun, ``auto`` (FSDP2 on GPUs, DDP on CPUs), ``fsdp`` or ``ddp``.
        gradient_checkpointing: recompute activations in the backward pass (less memory).
        lora: LoRA adapters (``lora.rank=16``); rank 0 trains every weight.
        task: the training task and its held-out set (arithmetic or a jsonl data set).
        chat_template: wrap each prompt as a user turn with the tokenizer's chat template.
        system_prompt: with the chat template, the system turn (none: the template's default; an empty
            string saves the default's tokens in every sequence).
        rollout_backend: ``transformers`` (``model.generate``) or ``vllm`` (a colocated vLLM engine; the
            vllm extra).
        vllm_memory: the vLLM engine's share of GPU memory.
        vllm_max_model_len: longest prompt plus response the vLLM engine accepts.
        algorithm: the loss and its options (pmd_mean, pmd_part, grpo, gspo, rloo).
        sampling: temperature, top-p and response length of the sampler.
        steps: RL steps (rollout batches).
        prompts: prompts per rollout batch.
        n: responses sampled per prompt.
        minibatches: optimiser steps per pass over a rollout batch (off-policy reuse).
        epochs: passes over each rollout batch.
        async_rollouts: generate on rollout ranks while the learner updates (:mod:`.rollout.sources`);
            otherwise this process takes turns generating and updating.
        max_staleness: the most policy versions a trained batch may lag (none: 0 in one process, 1
            with ``async_rollouts``). In one process batch ``s`` is sampled by version
            ``max(0, s - lead)`` exactly, ``lead = max_staleness`` without partial rollouts.
        rollout_ranks: with ``async_rollouts``, how many ranks generate (the others train).
        async_weights: ``latest`` (a worker samples from the newest weights it has received; the lag
            varies with timing) or ``fixed`` (batch ``s`` from version ``max(0, s - lead)``
            exactly, as in one process: deterministic, for reproduction and tests).
        dist_timeout_s: how long a collective waits for its peers before the run fails naming this
            time-out (every process group; a publish waits for the workers' batch in progress, a
            worker for the trainer's next step, evaluation and checkpoint included).
        partial_tokens: partial rollouts (Kimi K1.5): generate at most this many tokens of each
            response per iteration and carry unfinished ones over to newer weights (0: off;
            :mod:`.rollout.partial`). Batches are then sampled at most ``max_staleness - (K - 1)``
            versions ahead, ``K = ceil(max_new_tokens / partial_tokens)``, so carried responses are
            trained within the bound (:func:`.rollout.partial.sampling_lead`).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: RL steps of linear learning-rate warm-up.
        max_grad_norm: gradient clipping threshold.
        token_budget: most padded tokens in one forward pass (micro-batches are formed by length).
        logit_chunk: response positions whose full-vocabulary logits are held at once (log-probs and
            entropies are computed from the hidden states a chunk at a time, :mod:`.logprobs`).
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
    lora: LoraConfig = field(default_factory=LoraConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    chat_template: bool = False
    system_prompt: str | None = None
    rollout_backend: str = "transformers"
    vllm_memory: float = 0.4
    vllm_max_model_len: int = 4096
    algorithm: Algorithm = field(default_factory=lambda: Algorithm(name="pmd_mean", tau=1.0))
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_new_tokens=4))
    steps: int = 600
    prompts: int = 32
    n: int = 8
    minibatches: int = 2
    epochs: int = 1
    async_rollouts: bool = False
    max_staleness: int | None = None
    rollout_ranks: int = 1
    async_weights: str = "latest"
    dist_timeout_s: float = 1800.0
    partial_tokens: int = 0
    lr: float = 3e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float = 1.0
    token_budget: int = 16384
    logit_chunk: int = 1024
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
        for name in (
            "steps",
            "prompts",
            "n",
            "minibatches",
            "epochs",
            "eval_k",
            "max_nonfinite",
            "token_budget",
            "logit_chunk",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lag", "warmup_steps", "eval_every", "save_every"):
            if getattr(self, name) < 0:
                shown = "max_staleness" if name == "lag" else name
                raise ValueError(f"{shown} must be non-negative, got {getattr(self, name)}")
        if self.rollout_ranks < 1:
            raise ValueError(f"rollout_ranks must be at least 1, got {self.rollout_ranks}")
        if self.async_weights not in ("latest", "fixed"):
            raise ValueError(f"async_weights must be latest or fixed, got {self.async_weights!r}")
        if not (self.dist_timeout_s > 0 and math.isfinite(self.dist_timeout_s)):
            raise ValueError(
                f"dist_timeout_s must be a positive number of seconds, got {self.dist_timeout_s}"
            )
        if self.partial_tokens < 0:
            raise ValueError(f"partial_tokens must be non-negative, got {self.partial_tokens}")
        if self.partial_tokens and self.rollout_ranks > 1:
            raise ValueError("partial_tokens works with one rollout rank (rollout_ranks=1)")
        if self.minibatches > self.prompts:
            raise ValueError(f"minibatches ({self.minibatches}) cannot exceed prompts ({self.prompts})")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be positive, got {self.max_grad_norm}")
        if self.rollout_backend not in ("transformers", "vllm"):
            raise ValueError(f"rollout_backend must be transformers or vllm, got {self.rollout_backend!r}")
        if self.rollout_backend == "vllm" and self.lora.rank:
            raise ValueError(
                "rollout_backend=vllm does not reload LoRA adapters: use rollout_backend=transformers"
            )
        if self.rollout_backend == "vllm" and self.parallel == "fsdp":
            raise ValueError("rollout_backend=vllm runs one engine per rank: use parallel=ddp")
        if self.parallel not in ("auto", "fsdp", "ddp"):
            raise ValueError(f"parallel must be auto, fsdp or ddp, got {self.parallel!r}")
        if self.dtype == "float16":
            raise ValueError(
                "dtype=float16 would need loss scaling, which this trainer does not do: use bfloat16"
            )
        if self.dtype != "auto" and self.dtype not in DTYPES:
            raise ValueError(f"dtype must be auto or one of {DTYPES}, got {self.dtype!r}")
        if self.model in KNOWN:
            if not is_fetched(self.model):
                raise ValueError(
                    f"model {self.model} is not fetched yet: python -m pmdlab.llm.models fetch {self.model}"
                )
        elif self.model.endswith(".gguf"):
            if not Path(self.model).is_file():
                raise ValueError(f"model file {self.model} does not exist")
        elif self.model != "tiny" and not Path(self.model).is_dir():
            raise ValueError(
                f"model must be 'tiny', a local model folder or a .gguf file; {self.model} is not a folder"
            )
        elif self.model != "tiny" and not (Path(self.model) / "config.json").is_file():
            raise ValueError(f"model folder {self.model} has no config.json: not a Hugging Face model folder")

    @property
    def lag(self) -> int:
        """``max_staleness``, its default resolved: 0 in one process, 1 with ``async_rollouts``."""
        if self.max_staleness is None:
            return 1 if self.async_rollouts else 0
        return self.max_staleness

    def check_ranks(self, world_size: int) -> None:
        """The batch splits over ``world_size`` training ranks (a one-line error otherwise)."""
        if self.prompts % world_size:
            raise ValueError(
                f"prompts ({self.prompts}) must be a multiple of the number of ranks ({world_size})"
            )
        if self.minibatches > self.prompts // world_size:
            raise ValueError(
                f"minibatches ({self.minibatches}) cannot exceed the prompts per rank "
                f"({self.prompts // world_size})"
            )
        if self.partial_tokens and world_size > 1 and not self.async_rollouts:
            raise ValueError("partial_tokens in one process makes whole batches: use one training rank")

    @property
    def run_dir(self) -> Path:
        return Path(self.out or f"runs/{self.algorithm.name}-seed{self.seed}")
