"""Tiny language models for the trainer's tests (built here: no download)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from pmdlab.llm.tiny import TinyModelConfig, build_model, build_tokenizer

SMALL = TinyModelConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, max_positions=32, seed=0)

#: One warm-start cache for every trainer test of a session (the tiny model is trained once).
_CACHE = tempfile.TemporaryDirectory(prefix="pmdlab-test-warm-start-")


def small_config(tmp_path, **overrides):
    """A trainer configuration that runs in seconds: the small tiny model, 4 prompts x 4, 4 steps."""
    from pmdlab.llm.policy import SamplingConfig
    from pmdlab.llm.train import TaskConfig, TrainConfig
    from pmdlab.llm.warmstart import WarmStartConfig

    base = dict(
        tiny=SMALL,
        warmstart=WarmStartConfig(steps=150, batch_size=32, lr=3e-3, cache_dir=_CACHE.name),
        task=TaskConfig(terms=2),
        eval_size=4,
        eval_k=2,
        eval_every=2,
        steps=4,
        prompts=4,
        n=4,
        minibatches=2,
        sampling=SamplingConfig(max_new_tokens=3),
        lr=1e-3,
        out=str(tmp_path / "run"),
        progress=False,
        save_every=2,
    )
    base.update(overrides)
    return TrainConfig(**base)


def weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.policy.model.state_dict().items()}


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
    cfg = Qwen2Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=8,
        tie_word_embeddings=False,
    )
    return Qwen2ForCausalLM(cfg).to(dtype)


def killed_and_resumed(tmp_path, monkeypatch, **overrides):
    """Two runs of ``small_config(**overrides)`` over 4 steps: one straight through (``tmp_path/a``), one
    killed after its step-2 checkpoint and resumed (``tmp_path/b``). Returns both trainers and both
    logs without their timings, for the test to compare."""
    from pmdlab.llm import metrics_log
    from pmdlab.llm.train import Trainer

    straight = Trainer(small_config(tmp_path / "a", steps=4, **overrides))
    straight.run()
    killed = Trainer(small_config(tmp_path / "b", steps=4, **overrides))
    real_step = Trainer.train_step

    def die_at_step_three(self):
        if self.step == 2:
            raise KeyboardInterrupt  # killed after the checkpoint of step 2
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", die_at_step_three)
    try:
        killed.run()
        raise AssertionError("the run was not interrupted")
    except KeyboardInterrupt:
        pass
    monkeypatch.setattr(Trainer, "train_step", real_step)
    resumed = Trainer(small_config(tmp_path / "b", steps=4, resume=True, **overrides))
    assert resumed.step == 2
    resumed.run()

    def log(folder):
        records = metrics_log.read([folder / "run" / "metrics.jsonl"])
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]

    return straight, resumed, log(tmp_path / "a"), log(tmp_path / "b")


def records_so_far(path):
    """A metrics log's records so far (none while a line is half written by a running process)."""
    from pmdlab.llm import metrics_log

    try:
        return metrics_log.read([path]) if path.exists() else []
    except ValueError:
        return []


def checkpoint_weights(folder, export_to) -> dict:
    """The weights a checkpoint holds: its model folder, or for a sharded one what
    ``python -m pmdlab.llm.export`` makes of its shards (checking the checkpoint's files first)."""
    folder = Path(folder)
    if (folder / "shards").is_dir():
        assert sorted(p.name for p in (folder / "shards").glob("*.distcp")) == [
            "__0_0.distcp",
            "__1_0.distcp",
        ]
        assert not (folder / "model" / "model.safetensors").exists()  # nothing gathered on rank 0
        assert {"rank0.pt", "rank1.pt", "trainer.pt"} <= {p.name for p in folder.iterdir()}
        manifest = json.loads((folder / "manifest.json").read_text())["files"]
        assert {"shards/__0_0.distcp", "shards/__1_0.distcp", "shards/.metadata"} <= manifest.keys()
        done = subprocess.run(
            [sys.executable, "-m", "pmdlab.llm.export", str(folder), str(export_to)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        folder = export_to
    else:
        folder = folder / "model"
    return load_file(folder / "model.safetensors")
