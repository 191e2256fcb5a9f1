"""PMD-mean inside TRL's GRPO trainer, on the CPU, with the project's tiny model."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

trl = pytest.importorskip("trl", reason="TRL is not installed (pip install -e '.[trl]')")
datasets = pytest.importorskip("datasets", reason="datasets is not installed (pip install -e '.[trl]')")

from pmdlab.llm.integrations.trl import PMDConfig, PMDTrainer  # noqa: E402
from pmdlab.rl import losses  # noqa: E402
from pmdlab.rl.groups import advantages  # noqa: E402

from .lm_helpers import save_tiny  # noqa: E402

TAU = 0.5


def digit_share(prompts, completions, **kwargs):
    """A reward that varies between completions of one prompt: the share of digits."""
    return [sum(ch.isdigit() for ch in c) / max(len(c), 1) for c in completions]


class RecordingTrainer(PMDTrainer):
    seen: list

    def _compute_loss(self, model, inputs):
        loss = super()._compute_loss(model, inputs)
        self.seen.append(
            {
                k: inputs[k].detach().clone()
                for k in ("pmd_rewards", "pmd_group_ids", "completion_mask", "advantages")
            }
            | {"loss": float(loss.detach())}
        )
        return loss


def make_trainer(tmp_path, **overrides):
    from transformers import AutoTokenizer

    path = save_tiny(tmp_path / "model")
    args = dict(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        num_generations=4,
        max_completion_length=6,
        max_steps=3,
        num_iterations=1,
        learning_rate=1e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        seed=0,
        pmd_tau=TAU,
    )
    args.update(overrides)
    prompts = [f"{a}+{b}=" for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1), (4, 4), (6, 3)]]
    trainer = RecordingTrainer(
        model=str(path),
        reward_funcs=digit_share,
        args=PMDConfig(**args),
        train_dataset=datasets.Dataset.from_dict({"prompt": prompts}),
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    trainer.seen = []
    return trainer


def test_pmd_mean_trains_inside_trl_and_reports_pmdlabs_loss(tmp_path):
    trainer = make_trainer(tmp_path)
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)

    logged = [row for row in trainer.state.log_history if "loss" in row and "train_loss" not in row]
    assert len(logged) == 3 and len(trainer.seen) == 3  # one micro-batch per optimiser step here
    for row, batch in zip(logged, trainer.seen):
        mask = batch["completion_mask"].double()
        zeros = torch.zeros_like(mask)  # one iteration per batch: pi_old is the current policy, Delta = 0
        adv = advantages(batch["pmd_rewards"], batch["pmd_group_ids"], "mean")
        ours = losses.pmd(zeros, zeros, mask, adv, tau=TAU).loss
        # Independently: the mean-baseline advantage per group, 1/2 (A/tau)^2 per sequence over its length.
        r, g = batch["pmd_rewards"].numpy(), batch["pmd_group_ids"].numpy()
        a = r - np.array([r[g == x].mean() for x in g])
        closed = np.mean(0.5 * (a / TAU) ** 2 / mask.sum(1).numpy())
        assert row["loss"] == pytest.approx(float(ours), rel=1e-5, abs=1e-7)
        assert row["loss"] == pytest.approx(closed, rel=1e-5, abs=1e-7)
        np.testing.assert_allclose(batch["advantages"].numpy(), a, atol=1e-6)
        assert "pmd/chi2_weight" in row and "pmd/target_mean" in row
    assert any(abs(row["loss"]) > 1e-4 for row in logged)  # the rewards did vary


def test_gradient_accumulation_gives_the_loss_of_the_whole_step(tmp_path):
    """Two micro-batches of 4 accumulate to the loss one batch of 8 would have."""
    trainer = make_trainer(
        tmp_path, per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=2
    )
    trainer.train()
    logged = [row["loss"] for row in trainer.state.log_history if "loss" in row and "train_loss" not in row]
    for step, row_loss in enumerate(logged):
        parts = trainer.seen[2 * step : 2 * step + 2]
        mask = torch.cat([p["completion_mask"] for p in parts]).double()
        a = torch.cat([p["advantages"] for p in parts]).double()
        whole = float(np.mean(0.5 * (a.numpy() / TAU) ** 2 / mask.sum(1).numpy()))
        assert row_loss == pytest.approx(whole, rel=1e-5, abs=1e-7)


def test_bad_pmd_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="pmd_loss"):
        PMDConfig(output_dir=str(tmp_path), pmd_loss="grpo", use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="beta must be 0"):
        PMDConfig(output_dir=str(tmp_path), beta=0.04, use_cpu=True, bf16=False)
    with pytest.raises(ValueError, match="tau must be positive"):
        PMDConfig(output_dir=str(tmp_path), pmd_tau=0.0, use_cpu=True, bf16=False)
