"""PMD-mean and PMD-part inside TRL's ``GRPOTrainer``: change two names.

    from pmdlab.llm.integrations.trl import PMDConfig, PMDTrainer   # instead of GRPOConfig, GRPOTrainer

    args = PMDConfig(output_dir="out", pmd_loss="pmd_mean", pmd_tau=1.0, num_generations=8, ...)
    trainer = PMDTrainer(model="/path/to/model", reward_funcs=my_reward, args=args, train_dataset=ds)
    trainer.train()

Everything else is TRL's: generation (``transformers`` or vLLM), reward
functions, logging, checkpoints, ``accelerate`` and DeepSpeed/FSDP. Two
steps change:

* **Advantages.** After TRL scores a generation batch, and before it
  shuffles the rows, the group baseline of :func:`pmdlab.rl.groups.advantages`
  (mean, leave-one-out, partition ``tau log mean e^{r/tau}``, ...) is taken
  over each prompt's ``num_generations`` completions of the raw weighted
  rewards, gathered over all processes; TRL's mean/std normalisation is not
  used (PMD's targets are ``A / tau`` in reward units).
* **Loss.** :func:`pmdlab.rl.losses.pmd` (PMD-mean or PMD-part by the baseline) of TRL's
  token log-probs (at TRL's temperature), the old log-probs TRL keeps
  (``num_iterations > 1`` or off-policy steps; otherwise the current ones,
  detached, so ``Delta = 0`` and the gradient is ``-(A/tau) grad log pi``),
  with the global normaliser of the optimiser step: TRL's gradient
  accumulation and data parallelism then give exactly the loss of the whole
  step. The PMD diagnostics (``pmd/delta_mean`` against ``pmd/target_mean``,
  ``pmd/chi2_weight``, ``pmd/kl_k3``, ...) are logged with TRL's metrics.

TRL's ``beta`` (a KL penalty to a reference model) must stay 0: PMD's
regularisation is ``tau``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from pmdlab.rl.algorithms import Algorithm
from pmdlab.rl.groups import Groups

__all__ = ["PMDConfig", "PMDTrainer"]


@dataclass
class PMDConfig(GRPOConfig):
    """``GRPOConfig`` plus the PMD loss and its options (:class:`pmdlab.rl.algorithms.Algorithm`)."""

    pmd_loss: str = field(default="pmd_mean", metadata={"help": "pmd_mean or pmd_part."})
    pmd_tau: float = field(default=1.0, metadata={"help": "PMD's tau: the regression target is A / tau."})
    pmd_baseline: str | None = field(
        default=None,
        metadata={
            "help": "mean or leave_one_out (pmd_mean); partition or leave_one_out_partition (pmd_part)."
        },
    )
    pmd_aggregation: str | None = field(
        default=None,
        metadata={
            "help": (
                "seq_mean_token_mean (default), seq_mean_token_sum, seq_mean_token_sum_norm or token_mean."
            )
        },
    )
    pmd_tau_scaled: bool = field(
        default=False, metadata={"help": "Multiply the loss by tau (the authors' code)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.pmd_loss not in ("pmd_mean", "pmd_part"):
            raise ValueError(f"pmd_loss must be pmd_mean or pmd_part, got {self.pmd_loss!r}")
        if self.beta != 0.0:
            raise ValueError(
                f"beta must be 0 with a PMD loss (its regularisation is pmd_tau), got {self.beta}"
            )
        self.pmd_algorithm()  # validates tau, baseline and aggregation

    def pmd_algorithm(self) -> Algorithm:
        return Algorithm(
            name=self.pmd_loss,
            tau=self.pmd_tau,
            baseline=self.pmd_baseline,
            aggregation=self.pmd_aggregation,
            max_length=self.max_completion_length,
            tau_scaled=self.pmd_tau_scaled,
        )


class PMDTrainer(GRPOTrainer):
    """TRL's ``GRPOTrainer`` with PMD's advantages and loss (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, PMDConfig):
            raise TypeError("PMDTrainer needs a PMDConfig (GRPOConfig plus pmd_loss, pmd_tau, ...)")
        self.pmd = self.args.pmd_algorithm()

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._pmd_rewards_per_func = rewards_per_func  # (global batch, reward functions), all processes
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        size = self.num_generations if mode == "train" else self.num_generations_eval
        per_func = self._pmd_rewards_per_func
        rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1).double()
        if rewards.numel() % size:
            raise ValueError(f"{rewards.numel()} completions are not whole groups of {size}")
        groups = Groups.from_sizes(torch.full((rewards.numel() // size,), size), device=rewards.device)
        advantages = self.pmd.advantages(rewards, groups)
        local = output["completion_ids"].size(0)
        rows = torch.arange(local, device=rewards.device) + self.accelerator.process_index * local
        output["advantages"] = advantages[rows].to(torch.float32)
        output["pmd_rewards"] = rewards[rows]
        output["pmd_group_ids"] = groups.index[rows]  # survive TRL's shuffle: one entry per row
        return output

    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        out = self._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True
        )
        logprobs, entropies = out[0], out[1]
        old = inputs.get("old_per_token_logps")
        old = logprobs.detach() if old is None else old
        mask = completion_mask.to(logprobs.dtype)
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        result = self.pmd.loss(
            logprobs,
            old,
            mask,
            inputs["advantages"],
            groups=Groups.from_ids(inputs["pmd_group_ids"]),
            normalizer=self._pmd_normalizer(inputs, mask),
        )
        mode = "train" if self.model.training else "eval"
        for name, value in result.metrics.items():
            self._metrics[mode][f"pmd/{name}"].append(float(value))
        if entropies is not None:
            self._metrics[mode]["entropy"].append(
                float((entropies.detach() * mask).sum() / mask.sum().clamp(min=1))
            )
        return result.loss

    def _pmd_normalizer(self, inputs, mask) -> torch.Tensor:
        """The optimiser step's normaliser, per process: this micro-batch's times the accumulation
        count (rows or padded lengths), or the global token count for ``token_mean``."""
        train = self.model.training
        accumulation = self.current_gradient_accumulation_steps if train else 1
        if self.pmd.resolved_aggregation == "token_mean":
            tokens = (
                inputs["num_items_in_batch"].to(mask.dtype).clamp(min=1.0) / self.accelerator.num_processes
            )
            return tokens * accumulation / self.args.steps_per_generation if train else tokens
        return self.pmd.normalizer(mask) * accumulation
