"""The shipped recipes parse into the settings they state."""

import json
from pathlib import Path

from pmdlab.llm.train import TrainConfig
from pmdlab.rl.config import parse

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_the_cpu_recipe_is_the_chat_arithmetic_task(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = parse(TrainConfig, ["--config", str(RECIPES / "smollm2-arithmetic-cpu.yaml"), f"model={model}"])
    assert cfg.chat_template and cfg.system_prompt == ""
    assert (cfg.task.digits, cfg.task.terms, cfg.task.grading) == (1, 3, "last_number")
    assert cfg.task.template == "What is {problem}? Answer with the number only."
    assert (cfg.prompts, cfg.n, cfg.sampling.max_new_tokens, cfg.sampling.temperature) == (8, 4, 16, 0.7)
    assert cfg.algorithm.name == "pmd_mean" and cfg.algorithm.tau == 1.0


def test_the_gpu_recipe_reads_math_data(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"id": "1", "problem": "1+1", "answer": "2"}) + "\n")
    cfg = parse(
        TrainConfig, ["--config", str(RECIPES / "math-gpu.yaml"), f"model={model}", f"task.data={data}"]
    )
    assert cfg.task.eval_data == "math500" and cfg.dtype == "bfloat16" and cfg.sampling.max_new_tokens == 1024


def test_the_authors_recipe_sets_their_loss_and_schedule():
    cfg = parse(TrainConfig, ["--config", str(RECIPES / "authors-pmd.yaml")])
    a = cfg.algorithm
    assert (a.name, a.tau, a.tau_scaled, a.resolved_aggregation) == (
        "pmd_mean",
        0.01,
        True,
        "seq_mean_token_mean",
    )
    assert cfg.task.reward_values == "signed" and cfg.minibatches == 16
    part = parse(
        TrainConfig,
        [
            "--config",
            str(RECIPES / "authors-pmd.yaml"),
            "algorithm.name=pmd_part",
            "algorithm.baseline=leave_one_out_partition_clamped",
        ],
    )
    assert (
        part.algorithm.resolved_baseline == "leave_one_out_partition_clamped" and part.algorithm.tau == 0.01
    )
