"""The embedded model: a tiny Qwen2-architecture causal LM and a character tokenizer.

Built entirely here (``transformers`` config classes and a ``tokenizers``
word-level model over single characters): no download. Saved with
``save_pretrained`` it is an ordinary local checkpoint, loaded like any
other model by path. :mod:`.warmstart` trains it briefly on the embedded
task so that reinforcement learning starts from a middling success rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["TinyModelConfig", "build_model", "build_tokenizer", "CHARACTERS"]

#: Every character the embedded arithmetic task uses.
CHARACTERS = "0123456789+-*= "
SPECIAL = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}


@dataclass(frozen=True)
class TinyModelConfig:
    """Size of the embedded model (a Qwen2-architecture decoder).

    Attributes:
        hidden_size: width of the residual stream.
        layers: number of decoder layers.
        heads: attention heads (the key/value heads are half of them).
        intermediate_size: width of the MLP.
        max_positions: longest sequence (prompt and response).
        seed: seed of the random initialisation.
    """

    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    intermediate_size: int = 384
    max_positions: int = 64
    seed: int = 0


def build_tokenizer():
    """A fast tokenizer over single characters with ``<pad>``, ``<eos>``, ``<bos>``, ``<unk>``."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate([SPECIAL["pad"], SPECIAL["eos"], SPECIAL["bos"], SPECIAL["unk"]])}
    for ch in CHARACTERS:
        vocab[ch] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL["unk"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=SPECIAL["pad"],
        eos_token=SPECIAL["eos"],
        bos_token=SPECIAL["bos"],
        unk_token=SPECIAL["unk"],
        padding_side="left",
    )


def build_model(config: TinyModelConfig, tokenizer) -> torch.nn.Module:
    """A randomly initialised ``Qwen2ForCausalLM`` of the given size (deterministic in ``seed``)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=max(1, config.heads // 2),
        max_position_embeddings=config.max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    try:
        model = Qwen2ForCausalLM(cfg)
    finally:
        torch.random.set_rng_state(state)
    return model
