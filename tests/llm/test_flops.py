"""The update's FLOPs formula (pmdlab.llm.flops) against torch's FlopCounterMode, and MFU in the record.

The models are Qwen2.5-0.5B- and 1.5B-shaped, built on the meta device (no
weights allocated, no download): a forward and backward pass under
``FlopCounterMode`` counts every matmul from the shapes alone.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from pmdlab.llm import flops

QWEN25 = {
    "0.5B": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14),
    "1.5B": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12),
}

#: (prompt, response) lengths of the rows: long enough that attention is ~10% of the total
ROWS = [(1200, 848), (600, 400), (300, 900)]


def qwen_config(size: str, tied: bool = True, attn: str = "sdpa"):
    from transformers import Qwen2Config

    cfg = Qwen2Config(
        vocab_size=151936,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
        max_position_embeddings=32768,
        **QWEN25[size],
    )
    cfg._attn_implementation = attn
    return cfg


def meta_model(config):
    from transformers import Qwen2ForCausalLM

    with torch.device("meta"):
        return Qwen2ForCausalLM(config)


def counted(model, rows, temperature: float = 1.0) -> tuple[float, float]:
    """``(all FLOPs, attention's bmm FLOPs)`` that FlopCounterMode counts for one update's forward and
    backward over ``rows``, done as the trainer does it (``LMPolicy.log_probs``): the backbone over
    the whole sequence, logits for the response positions only (``logits_to_keep = R + 1``, the last
    dropped), log-softmax at the temperature, the response tokens' log-probs summed as the loss.

    Each row is its own micro-batch, so nothing is padded and the count is the rows' real work.
    The 4-D attention mask (all ones; on meta only the shapes matter) is taken as given by
    transformers, which otherwise inspects the position ids for packed sequences (``.item()``,
    which a meta tensor cannot do)."""
    with FlopCounterMode(display=False) as counter:
        for prompt, response in rows:
            length = prompt + response
            ids = torch.zeros(1, length, dtype=torch.long, device="meta")
            mask = torch.ones(1, 1, length, length, dtype=torch.bool, device="meta")
            out = model(input_ids=ids, attention_mask=mask, logits_to_keep=response + 1, use_cache=False)
            logits = out.logits[:, :-1].float() / temperature
            logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, prompt:, None])
            logp.sum().backward()
    model.zero_grad(set_to_none=True)
    by_op = {str(op): v for op, v in counter.get_flop_counts()["Global"].items()}
    return float(counter.get_total_flops()), float(by_op.get("aten.bmm", 0))


def lengths(rows):
    return [p for p, _ in rows], [r for _, r in rows]


def within(value: float, reference: float, tolerance: float = 0.05) -> bool:
    return abs(value / reference - 1) <= tolerance


@pytest.mark.parametrize("size,attn", [("0.5B", "sdpa"), ("1.5B", "sdpa"), ("0.5B", "eager")])
def test_update_flops_agree_with_the_flop_counter(size, attn):
    config = qwen_config(size, attn=attn)
    shape = flops.model_shape(config)
    total, attention = counted(meta_model(config), ROWS)
    prompt, response = lengths(ROWS)
    # FlopCounterMode counts the whole L x L score matrix (no causal skipping): compare with causal=False
    formula = flops.update_flops(shape, prompt, response, causal=False)
    assert within(formula, total), (formula, total)
    assert abs(formula / total - 1) < 0.005  # the head's one extra position per row (R + 1 logits)
    full = [p + r for p, r in ROWS]
    assert attention == 12 * shape.layers * shape.attention_width * flops.attention_context(
        full, causal=False
    )

    # the 5% test can fail: without the attention term, or with the head on every position
    no_attention = formula - attention
    head_everywhere = flops.update_flops(shape, [0] * len(ROWS), full, causal=False)
    assert not within(no_attention, total), no_attention / total
    assert not within(head_everywhere, total), head_everywhere / total


def test_a_frozen_model_and_lora_adapters_have_no_weight_gradients_of_the_base():
    """LoRA freezes the model's own weights: 4 N L + 4 V d R, plus 6 per adapter parameter and token."""
    peft = pytest.importorskip("peft")
    config = qwen_config("0.5B")
    shape = flops.model_shape(config)
    prompt, response = lengths(ROWS)
    model = peft.get_peft_model(meta_model(config), peft.LoraConfig(r=16, target_modules="all-linear"))
    frozen, adapters = flops.lora_layout(model)
    assert frozen and adapters == sum(p.numel() for p in model.parameters() if p.requires_grad) > 0
    assert flops.model_shape(flops.config_of(model)) == shape
    total, _ = counted(model, ROWS)
    formula = flops.update_flops(
        shape, prompt, response, causal=False, frozen_base=True, adapter_params=adapters
    )
    assert within(formula, total), (formula, total)
    # what the first layer's q, k, v need no input gradient for (the embedding is frozen) is all that differs
    assert abs(formula / total - 1) < 0.01
    full_training = flops.update_flops(shape, prompt, response, causal=False, adapter_params=adapters)
    assert not within(full_training, total)


def test_forward_flops_are_a_third_of_the_update_without_lora():
    shape = flops.model_shape(qwen_config("0.5B"))
    prompt, response = lengths(ROWS)
    update = flops.update_flops(shape, prompt, response, epochs=2)
    assert flops.forward_flops(shape, prompt, response) == pytest.approx(update / 6)
    assert flops.update_flops(shape, torch.tensor(prompt), torch.tensor(response), epochs=2) == update


def test_causal_attention_counts_each_query_against_the_keys_up_to_itself():
    assert flops.attention_context([1, 4]) == 1 + (1 + 2 + 3 + 4)
    assert flops.attention_context([1, 4], causal=False) == 1 + 16
    length = 1000
    assert flops.attention_context([length]) == (length * length + length) / 2
    shape = flops.model_shape(qwen_config("0.5B"))
    causal = flops.update_flops(shape, [500], [500])
    full = flops.update_flops(shape, [500], [500], causal=False)
    per_key = 12 * shape.layers * shape.attention_width
    assert full - causal == pytest.approx(per_key * (length * length - length) / 2)


@pytest.mark.parametrize("size", ["0.5B", "1.5B"])
@pytest.mark.parametrize("tied", [True, False])
def test_parameter_counts_match_the_model(size, tied):
    config = qwen_config(size, tied=tied)
    shape, model = flops.model_shape(config), meta_model(config)
    linear = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"
    )
    assert shape.matmul_params == linear
    assert shape.head_params == model.get_input_embeddings().weight.numel() == model.lm_head.weight.numel()
    matrices = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    assert matrices == shape.matmul_params + shape.head_params * (1 if tied else 2)
    vectors = sum(p.numel() for p in model.parameters() if p.dim() < 2)  # biases and norms
    assert sum(p.numel() for p in model.parameters()) == matrices + vectors
    assert vectors < 1e-3 * matrices
    if size == "0.5B" and tied:
        assert shape.matmul_params + shape.head_params == 494_032_768 - vectors  # Qwen2.5-0.5B's size


def test_model_shape_reads_grouped_query_attention_and_rejects_experts():
    shape = flops.model_shape(qwen_config("1.5B"))
    assert (shape.heads, shape.kv_heads, shape.head_dim, shape.attention_width) == (12, 2, 128, 1536)
    with pytest.raises(ValueError, match="mixture-of-experts"):
        flops.model_shape(SimpleNamespace(num_experts=8, hidden_size=8))
    with pytest.raises(ValueError, match="no dense decoder shape"):
        flops.model_shape(SimpleNamespace(hidden_size=8))


def test_mfu_is_achieved_over_peak():
    assert flops.mfu(1e12, 2.0, 1e12) == 0.5
    assert flops.mfu(1e12, 2.0, 1e12, devices=2) == 0.25
    assert math.isnan(flops.mfu(1e12, 0.0, 1e12))
    assert math.isnan(flops.mfu(1e12, 1.0, 0.0))


@pytest.mark.parametrize(
    "name,peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA GH200 480GB", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A100 80GB PCIe", 312e12),
        ("NVIDIA L40S", 362e12),
        ("NVIDIA L40", 181e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA B200", 2250e12),
        ("AMD Instinct MI300X", 1307e12),
        ("NVIDIA A10G", None),
        ("NVIDIA H20", 148e12),
    ],
)
def test_the_peak_table_matches_device_names(name, peak):
    found = flops.table_peak(name)
    assert (found and found[0]) == peak


def test_peak_flops_on_a_named_gpu_and_on_a_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    value, source = flops.peak_flops("cuda", torch.bfloat16)
    assert value == 989e12 and "H200" in source
    precision = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # TF32 allowed
        assert flops.peak_flops("cuda", torch.float32)[0] == 989e12 / 2
    finally:
        torch.set_float32_matmul_precision(precision)
    value, source = flops.peak_flops("cpu", torch.float32)
    assert value > 1e8 and source.startswith("measured")
    assert flops.peak_flops(torch.device("cpu"), torch.float32) == (value, source)  # measured once


def test_the_trainer_record_carries_flops_and_mfu(tmp_path):
    from pmdlab.llm.train import Trainer

    from .lm_helpers import small_config

    trainer = Trainer(small_config(tmp_path, steps=1, eval_every=0, save_every=0))
    (record,) = trainer.run()
    assert record["perf/update_flops"] > 0
    assert record["perf/update_tflops_per_s"] == pytest.approx(
        record["perf/update_flops"] / record["perf/update_s"] / 1e12
    )
    assert 0 < record["perf/mfu"] <= 1
    learner = trainer.learner
    assert learner.compute_dtype == torch.float32 and learner.peak[1].startswith("measured")

    # the count: epochs x (forward + backward) over the rows' real lengths, plus a no-grad
    # forward for each whole-batch pass of pi_old (old_source=current)
    prompt_mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    rows = SimpleNamespace(extras={"prompt_mask": prompt_mask}, mask=mask)
    shape = flops.model_shape(trainer.model.config)
    expected = flops.update_flops(shape, [3, 4], [2, 1], epochs=trainer.config.epochs)
    learner._anchor_passes = 0
    assert learner._update_flops(rows) == pytest.approx(expected)
    learner._anchor_passes = 1
    forward = flops.forward_flops(shape, [3, 4], [2, 1])
    assert learner._update_flops(rows) == pytest.approx(expected + forward)
