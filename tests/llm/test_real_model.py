"""A real pretrained model through the whole loop: SmolLM2-135M-Instruct, chat template, free-text rewards.

The model is fetched once (``python -m pmdlab.llm.models fetch smollm2-135m-instruct``; ``.ci/run``
does it before the tests) and read from the cache. Without it the tests skip with that reason,
unless ``PMDLAB_REQUIRE_REAL_MODEL=1`` (CI), where its absence fails.
"""

import os

import pytest
import torch

from pmdlab.llm import models
from pmdlab.llm.policy import LMPolicy, SamplingConfig
from pmdlab.llm.settings import LoraConfig, TaskConfig
from pmdlab.llm.train import TrainConfig, Trainer

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def fetched():
    if not models.is_fetched(NAME):
        if os.environ.get("PMDLAB_REQUIRE_REAL_MODEL"):
            pytest.fail(f"{NAME} is not fetched, and PMDLAB_REQUIRE_REAL_MODEL is set")
        pytest.skip(f"{NAME} is not fetched: python -m pmdlab.llm.models fetch {NAME}")
    return NAME


def _config(tmp_path, **overrides) -> TrainConfig:
    base = dict(
        model=NAME,
        chat_template=True,
        system_prompt="",
        task=TaskConfig(
            digits=1,
            terms=2,
            template="What is {problem}? Answer with the number only.",
            grading="last_number",
        ),
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=12),
        steps=2,
        prompts=2,
        n=4,
        minibatches=1,
        lr=1e-4,
        eval_every=0,
        eval_size=4,
        save_every=0,
        progress=False,
        out=str(tmp_path / "run"),
    )
    base.update(overrides)
    return TrainConfig(**base)


def _watch(monkeypatch):
    """Record every rollout sampled and every completion text scored."""
    from pmdlab.llm.tasks import ArithmeticTask

    rollouts, scored = [], []
    sample = LMPolicy.sample

    def sampled(self, *args, **kwargs):
        rollouts.append(sample(self, *args, **kwargs))
        return rollouts[-1]

    def scoring(self, completion, problem):
        scored.append(completion)
        return len(completion) % 2 == 0  # varies between completions: every step has a gradient

    monkeypatch.setattr(LMPolicy, "sample", sampled)
    monkeypatch.setattr(ArithmeticTask, "is_correct", scoring)
    return rollouts, scored


def test_two_rl_steps_with_the_chat_template(fetched, tmp_path, monkeypatch):
    rollouts, scored = _watch(monkeypatch)
    trainer = Trainer(_config(tmp_path))
    tok = trainer.policy.tokenizer
    prompt = trainer.policy.encode(["What is 1+2? Answer with the number only."])[0]
    text = tok.decode(prompt[0])
    assert text.startswith("<|im_start|>system\n<|im_end|>") and text.endswith("<|im_start|>assistant\n")
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    records = trainer.run()
    after = trainer.model.state_dict()
    assert all(torch.isfinite(torch.tensor(r["loss/loss"])) for r in records)
    assert sum(not torch.equal(before[k], after[k]) for k in before) > 0.9 * len(before)
    # Nothing after the end token is scored: the mask ends at the first <|im_end|>, and the scored
    # text is the decoded response up to it.
    eos = tok.eos_token_id
    texts = []
    for rollout in rollouts:
        for tokens, mask in zip(rollout.tokens, rollout.mask):
            ends = (tokens == eos).nonzero()
            stop = int(ends[0]) + 1 if len(ends) else tokens.numel()
            assert mask[:stop].all() and not mask[stop:].any()
            texts.append(tok.decode(tokens[:stop], skip_special_tokens=True))
    assert scored == texts and len(texts) == 2 * 2 * 4
    assert any(len((t == eos).nonzero()) for r in rollouts for t in r.tokens)  # some responses did end
    assert not any("<|im_" in t for t in scored)


def test_with_lora_only_the_adapters_change(fetched, tmp_path, monkeypatch):
    pytest.importorskip("peft", reason="peft is not installed (the lora extra)")
    _watch(monkeypatch)
    trainer = Trainer(_config(tmp_path, lora=LoraConfig(rank=8, target_modules="q_proj,v_proj"), lr=1e-3))
    before = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    trainer.run()
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)
    assert any("lora_B" in k for k in changed)
