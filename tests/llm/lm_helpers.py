"""Tiny language models for the trainer's tests (built here: no download)."""

from __future__ import annotations

import torch

from pmdlab.llm.tiny import TinyModelConfig, build_model, build_tokenizer

SMALL = TinyModelConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, max_positions=32, seed=0)


def tiny_lm(config: TinyModelConfig = SMALL):
    tokenizer = build_tokenizer()
    return build_model(config, tokenizer), tokenizer


def save_tiny(path, config: TinyModelConfig = SMALL):
    model, tokenizer = tiny_lm(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def single_token_lm(vocab: int, hidden: int = 16, seed: int = 0, dtype=torch.float64):
    """A one-layer Qwen2 over ``vocab`` tokens (no tokenizer): responses are single tokens."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8,
                      tie_word_embeddings=False)  # fmt: skip
    return Qwen2ForCausalLM(cfg).to(dtype)
