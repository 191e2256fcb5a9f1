"""Configuration parsing: files, dotted overrides, types and errors."""

import json

import pytest

from pmdlab.bandit import BanditConfig
from pmdlab.bandit.__main__ import CompareConfig, main
from pmdlab.rl.config import describe, parse, to_dict


def test_dotted_overrides_reach_nested_fields_with_their_types():
    cfg = parse(
        BanditConfig,
        [
            "task.prompts=12",
            "algorithm.tau=0.05",
            "batch_prompts=none",
            "n=3",
            "algorithm.tau_scaled=yes",
            "algorithm.clip_low=0.1",
        ],
    )
    assert cfg.task.prompts == 12 and cfg.algorithm.tau == 0.05 and cfg.batch_prompts is None and cfg.n == 3
    assert cfg.algorithm.tau_scaled is True and cfg.algorithm.clip_low == 0.1


def test_a_file_then_overrides(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"steps": 7, "task": {"responses": 9}, "algorithm": {"name": "grpo"}}))
    cfg = parse(BanditConfig, ["--config", str(path), "steps=8"])
    assert cfg.steps == 8 and cfg.task.responses == 9 and cfg.algorithm.name == "grpo"
    assert parse(BanditConfig, [f"--config={path}"]).steps == 7


def test_yaml_files(tmp_path):
    pytest.importorskip("yaml", reason="PyYAML is part of the llm extra")
    path = tmp_path / "run.yaml"
    path.write_text("steps: 5\ntask:\n  prompts: 6\n")
    cfg = parse(BanditConfig, ["--config", str(path)])
    assert cfg.steps == 5 and cfg.task.prompts == 6


def test_tuples_from_comma_lists():
    cfg = parse(CompareConfig, ["algorithms=pmd_mean,grpo", "seeds=3,4"])
    assert cfg.algorithms == ("pmd_mean", "grpo") and cfg.seeds == (3, 4)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["n=two"], r"n='two' is not a valid int"),
        (["task.prompts=1.5"], r"task.prompts='1.5' is not a valid int"),
        (["task.colour=red"], r"unknown setting 'task.colour'"),
        (["steps"], "unexpected argument 'steps'"),
        (["--config", "/nonexistent.json"], "does not exist"),
        (["n=none"], "n=.none. is not a valid int"),
        (["algorithm.name=ppo"], "algorithm must be one of"),
    ],
)
def test_errors_name_the_setting(argv, match):
    with pytest.raises(ValueError, match=match):
        parse(BanditConfig, argv)


def test_malformed_file_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"steps": 3,\n "n": }')
    with pytest.raises(ValueError, match=r"bad.json: line 2"):
        parse(BanditConfig, ["--config", str(path)])


def test_help_lists_every_field_with_its_description():
    lines = "\n".join(describe(BanditConfig))
    for name in ("task.prompts=", "algorithm.tau=", "staleness=", "exact_every="):
        assert name in lines
    assert "responses sampled per prompt" in lines
    assert to_dict(BanditConfig())["task"]["prompts"] == BanditConfig().task.prompts


def test_bandit_command_compares_algorithms(tmp_path, capsys):
    out = tmp_path / "runs.json"
    code = main(
        [
            "bandit.steps=12",
            "bandit.task.prompts=16",
            "bandit.task.responses=8",
            "seeds=0",
            "algorithms=pmd_mean,grpo",
            f"out={out}",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "pmd_mean" in printed and "grpo" in printed
    runs = json.loads(out.read_text())["runs"]
    for name in ("pmd_mean", "grpo"):
        success = runs[name][0]["success_mean"]
        assert len(success) == 13 and success[-1] > success[0] + 0.1
    assert main(["bandit.n=0"]) == 2


def test_a_bare_string_names_a_nested_setting_with_a_name():
    from pmdlab.llm.train import TrainConfig

    cfg = parse(TrainConfig, ["algorithm=grpo", "algorithm.clip_high=0.28"])
    assert cfg.algorithm.name == "grpo" and cfg.algorithm.clip_high == 0.28
    with pytest.raises(ValueError, match="algorithm"):
        parse(TrainConfig, ["algorithm=ppo"])


def test_a_flag_sets_a_boolean_field_and_the_last_argument_wins():
    from pmdlab.llm.settings import TrainConfig

    assert TrainConfig().resume is False and parse(TrainConfig, ["--resume"]).resume is True
    assert parse(TrainConfig, ["steps=3", "--resume"]).steps == 3
    assert parse(TrainConfig, ["--resume", "resume=false"]).resume is False
    assert parse(TrainConfig, ["resume=false", "--resume"]).resume is True
    assert TrainConfig().progress is True and parse(TrainConfig, ["--no-progress"]).progress is False
    assert parse(TrainConfig, ["--async-rollouts"]).async_rollouts is True
    assert parse(TrainConfig, ["--async_rollouts"]).async_rollouts is True


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--frobnicate"], r"^unknown flag '--frobnicate' \(the flags are .*--resume"),
        (["--steps"], r"^--steps is not a flag: steps is a setting of type int; write steps=VALUE$"),
        (["--no-steps"], r"^--no-steps is not a flag: steps is a setting of type int"),
        (["--algorithm"], r"^--algorithm is not a flag"),
        (["--resume=true"], r"a flag takes no value; write --resume, or resume=true$"),
        (["--lora.rank"], r"^unknown flag '--lora.rank'"),
        (["--"], r"unexpected argument '--'"),
    ],
)
def test_flag_errors_are_one_line_naming_the_flag(argv, match):
    from pmdlab.llm.settings import TrainConfig

    with pytest.raises(ValueError, match=match) as error:
        parse(TrainConfig, argv)
    assert "\n" not in str(error.value)


def test_help_documents_the_flags(capsys):
    from pmdlab.llm.settings import TrainConfig

    with pytest.raises(SystemExit):
        parse(TrainConfig, ["--help"], prog="train")
    printed = capsys.readouterr().out
    assert printed.startswith("usage: train [--config FILE] [--FLAG ...] [key=value ...]")
    assert "--no-NAME is NAME=false" in printed and " --resume " in printed and "--async-rollouts" in printed
    with pytest.raises(SystemExit):
        parse(BanditConfig, ["--help"], prog="bandit")
    assert "--FLAG" not in capsys.readouterr().out  # no boolean field at its top level
