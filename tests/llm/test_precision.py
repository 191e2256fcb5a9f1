"""Mixed precision: float32 master weights and optimiser state, bfloat16 compute (``dtype=bfloat16``)."""

import pytest
import torch
from safetensors.torch import load_file

from pmdlab.llm.policy import SamplingConfig
from pmdlab.llm.train import Trainer

from .lm_helpers import killed_and_resumed, small_config, weights


def test_bfloat16_at_lr_1e_6_moves_most_weights_where_pure_bfloat16_would_round_the_steps_away(tmp_path):
    """AdamW's steps are about lr = 1e-6 per weight: below half a bfloat16 ulp of every weight over
    about 2.6e-4, so pure-bfloat16 weights keep almost all of them. Float32 masters keep every one."""
    hot = SamplingConfig(max_new_tokens=3, temperature=2.0)  # groups with mixed rewards: non-zero gradients
    config = small_config(
        tmp_path,
        dtype="bfloat16",
        lr=1e-6,
        warmup_steps=0,
        steps=2,
        eval_every=0,
        prompts=8,
        n=8,
        sampling=hot,
    )
    trainer = Trainer(config)
    before = weights(trainer)
    assert all(v.dtype == torch.float32 for v in before.values())  # the masters
    trainer.run()
    after = weights(trainer)
    changed = sum(int((after[k] != before[k]).sum()) for k in before)
    total = sum(v.numel() for v in before.values())
    assert changed > total / 2
    # what pure bfloat16 weights would have kept of the same update
    kept = sum(int((after[k].bfloat16() != before[k].bfloat16()).sum()) for k in before)
    assert kept < total / 10
    saved = load_file(tmp_path / "run" / "step-000002" / "model" / "model.safetensors")
    assert saved and all(v.dtype == torch.float32 for v in saved.values())
    assert all(torch.equal(saved[k], after[k]) for k in saved)


def test_bfloat16_runs_its_matmuls_in_bfloat16(tmp_path):
    trainer = Trainer(small_config(tmp_path, dtype="bfloat16", steps=1, eval_every=0))
    seen = set()
    linear = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    trainer.run()
    assert seen == {torch.bfloat16}
    assert trainer.learner.compute_dtype == torch.bfloat16


def test_bfloat16_resume_is_exact(tmp_path, monkeypatch):
    straight, resumed, a, b = killed_and_resumed(tmp_path, monkeypatch, dtype="bfloat16")
    assert a == b
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_float16_is_refused_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="float16 would need loss scaling") as e:
        small_config(tmp_path, dtype="float16")
    assert "\n" not in str(e.value)
