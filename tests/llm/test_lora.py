"""LoRA through peft: only adapters train and are checkpointed; resume, every loss and the merged export."""

import pytest
import torch

from pmdlab.llm.settings import LoraConfig
from pmdlab.llm.train import Trainer
from pmdlab.rl.algorithms import ALGORITHMS, Algorithm

from .lm_helpers import killed_and_resumed, small_config, weights

pytest.importorskip("peft", reason="peft is not installed (pip install peft, or the lora extra)")

LORA = LoraConfig(rank=4, alpha=8.0, target_modules="q_proj,v_proj")


@pytest.fixture(autouse=True)
def _varied_rewards(monkeypatch):
    """The small test model scores 0 on the task; a reward that varies between completions
    (an even number of characters) gives every loss a gradient to follow."""
    from pmdlab.llm.tasks import ArithmeticTask

    monkeypatch.setattr(
        ArithmeticTask, "is_correct", lambda self, completion, problem: len(completion) % 2 == 0
    )


def _split(state):
    adapters = {k: v for k, v in state.items() if "lora_" in k}
    return adapters, {k: v for k, v in state.items() if "lora_" not in k}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_only_the_adapters_train_under_every_loss(tmp_path, name):
    trainer = Trainer(
        small_config(tmp_path, lora=LORA, algorithm=Algorithm(name, tau=1.0), steps=2, eval_every=0)
    )
    before_adapters, before_base = _split(weights(trainer))
    assert before_adapters and all("q_proj" in k or "v_proj" in k for k in before_adapters)
    records = trainer.run()
    after_adapters, after_base = _split(weights(trainer))
    assert all(torch.equal(before_base[k], after_base[k]) for k in before_base)
    assert any(not torch.equal(before_adapters[k], after_adapters[k]) for k in before_adapters)
    assert all(torch.isfinite(torch.tensor(r["loss/loss"])) for r in records)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert trainable == sum(v.numel() for v in before_adapters.values())


def test_a_checkpoint_holds_the_adapters_only_and_resumes_exactly(tmp_path, monkeypatch):
    straight, resumed, a, b = killed_and_resumed(tmp_path, monkeypatch, lora=LORA)
    saved = tmp_path / "a" / "run" / "step-000004" / "model"
    assert (saved / "adapter_model.safetensors").is_file() and not (saved / "model.safetensors").exists()
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a == b and [r["step"] for r in b] == [0, 1, 2, 3, 4]


def test_the_merged_export_computes_what_the_adapted_model_computes(tmp_path):
    from transformers import AutoModelForCausalLM

    from pmdlab.llm import models

    trainer = Trainer(small_config(tmp_path, lora=LORA, steps=2, eval_every=0))
    trainer.run()
    merged = models.merge_adapter(tmp_path / "run" / "step-000002" / "model", tmp_path / "merged")
    plain = AutoModelForCausalLM.from_pretrained(merged)
    assert not any("lora_" in k for k in plain.state_dict())
    ids = torch.tensor([[1, 5, 7, 9, 3]])
    trainer.model.eval()
    with torch.no_grad():
        want = trainer.model(input_ids=ids).logits
        got = plain(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
