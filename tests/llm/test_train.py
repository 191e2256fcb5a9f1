"""The training loop on a tiny model: learning signal, logging, resume, guards, bad input."""

import dataclasses
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from pmdlab.llm import metrics_log
from pmdlab.llm.train import NonFiniteError, TaskConfig, TrainConfig, Trainer, main
from pmdlab.rl.algorithms import Algorithm
from pmdlab.rl.config import to_dict, update
from pmdlab.rl.losses import LossOutput

from .lm_helpers import SMALL, killed_and_resumed, save_tiny, small_config, weights
from .lm_helpers import records_so_far as _records


def test_a_step_changes_the_parameters_and_logs_every_panel(tmp_path):
    trainer = Trainer(small_config(tmp_path))
    before = weights(trainer)
    records = trainer.run()
    after = weights(trainer)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logged = metrics_log.read([tmp_path / "run" / "metrics.jsonl"])
    assert [r["step"] for r in logged] == [0, 1, 2, 3, 4]
    assert len(records) == 5
    for name, _ in metrics_log.PANELS:
        assert any(name in r for r in logged), name
    step = logged[1]
    for key in (
        "loss/chi2_weight",
        "loss/target_mean",
        "loss/delta_mean",
        "loss/kl_k3",
        "train/grad_norm",
        "perf/rollout_tokens_per_s",
        "perf/update_tokens_per_s",
        "loss/optimizer_steps",
    ):
        assert key in step, key
    assert step["loss/optimizer_steps"] == 2
    assert 1 <= step["train/response_length"] <= 3  # generation stops at sampling.max_new_tokens
    assert (tmp_path / "run" / "step-000004" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("max_staleness", [0, 1])
def test_resume_repeats_the_uninterrupted_run_exactly(tmp_path, max_staleness, monkeypatch):
    straight, resumed, a, b = killed_and_resumed(tmp_path, monkeypatch, max_staleness=max_staleness)
    assert [r["step"] for r in b] == [0, 1, 2, 3, 4]
    assert a == b
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)


def test_resume_drops_log_records_past_the_checkpoint(tmp_path):
    trainer = Trainer(small_config(tmp_path, steps=4, save_every=2, eval_every=0))
    trainer.run()
    # Pretend the run was killed at step 3, after logging it but before its checkpoint.
    import shutil

    shutil.rmtree(tmp_path / "run" / "step-000004")
    resumed = Trainer(small_config(tmp_path, steps=4, save_every=2, eval_every=0, resume=True))
    assert resumed.step == 2
    resumed.run()
    steps = [r["step"] for r in metrics_log.read([tmp_path / "run" / "metrics.jsonl"])]
    assert steps == [1, 2, 3, 4]


@dataclasses.dataclass(frozen=True)
class PoisonedAlgorithm(Algorithm):
    """PMD-mean whose loss is NaN: every update must be skipped."""

    def loss(self, *args, **kwargs):
        out = super().loss(*args, **kwargs)
        return LossOutput(out.loss * float("nan"), out.metrics)


def test_non_finite_losses_skip_updates_and_stop_the_run(tmp_path):
    config = small_config(
        tmp_path,
        algorithm=PoisonedAlgorithm(name="pmd_mean", tau=1.0),
        max_nonfinite=3,
        steps=5,
        eval_every=0,
    )
    trainer = Trainer(config)
    before = weights(trainer)
    with pytest.raises(NonFiniteError, match="4 optimiser updates in a row"):
        trainer.run()
    assert trainer.step == 2  # two skipped updates per step: 4 >= 3 after the second
    after = weights(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)
    logged = metrics_log.read([tmp_path / "run" / "metrics.jsonl"])
    assert [r["loss/skipped_steps"] for r in logged] == [2, 2]


def test_a_model_folder_loads_by_path(tmp_path):
    from transformers import AutoModelForCausalLM

    path = save_tiny(tmp_path / "model")
    saved = AutoModelForCausalLM.from_pretrained(path).state_dict()
    trainer = Trainer(small_config(tmp_path, model=str(path), steps=1, eval_every=0))
    assert trainer.policy.model.config.hidden_size == SMALL.hidden_size
    loaded = weights(trainer)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    (record,) = trainer.run()
    assert record["loss/optimizer_steps"] == 2  # the untrained model scores 0: its update is a no-op


def test_jsonl_data_trains_with_math_verify_rewards(tmp_path, monkeypatch):
    """The logged reward is the share of completions that math-verify, called here directly,
    accepts against the reference answer."""
    from math_verify import parse, verify

    from pmdlab.llm.tasks import MathDataset, Problem

    rows = [{"id": str(i), "problem": f"{i}+1", "answer": str(i + 1)} for i in range(8)]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = save_tiny(tmp_path / "model")
    seen = []
    real = MathDataset.is_correct

    def recording(self, completion, problem):
        seen.append((completion, problem.answer))
        return real(self, completion, problem)

    monkeypatch.setattr(MathDataset, "is_correct", recording)
    task = TaskConfig(data=str(data), eval_data=str(data), template="{problem}=")
    config = small_config(tmp_path, model=str(path), task=task, steps=1, eval_every=0, eval_size=4)
    records = Trainer(config).run()
    assert len(seen) == 4 * 4  # prompts x n, each scored once
    # The scorer the trainer uses accepts a right answer and rejects a wrong one.
    scorer = MathDataset(str(data), str(data))
    assert real(scorer, "the sum is 9", Problem("8", "8+1=", "9"))
    assert not real(scorer, "the sum is 10", Problem("8", "8+1=", "9"))
    expected = sum(bool(verify(parse(f"${a}$"), parse(c))) for c, a in seen) / len(seen)
    assert records[-1]["train/reward"] == pytest.approx(expected)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"steps": 0}, "steps must be at least 1"),
        ({"model": "/no/such/model"}, "not a folder"),
        ({"task.eval_data": "math500"}, "eval_data applies to jsonl data"),
        ({"minibatches": 9}, "minibatches"),
        ({"dtype": "int8"}, "dtype"),
        ({"task.reward_values": "ternary"}, "task.reward_values"),
        ({"lr": -1.0}, "lr must be positive"),
    ],
)
def test_bad_settings_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        Trainer(update(small_config(tmp_path), overrides))


def test_resume_without_a_checkpoint_and_reusing_a_run_folder_are_errors(tmp_path):
    with pytest.raises(ValueError, match="no checkpoint"):
        Trainer(small_config(tmp_path, resume=True))
    Trainer(small_config(tmp_path, steps=1, eval_every=0)).run()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(small_config(tmp_path, steps=1))


def test_command_line_help_lists_every_setting(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(TrainConfig):
        assert f"  {f.name}" in text, f.name
    assert "algorithm.tau=" in text and "sampling.temperature=" in text


def test_command_line_errors_name_the_setting(capsys):
    assert main(["steps=zero"]) == 2
    assert "steps" in capsys.readouterr().err


def test_tensorboard_receives_the_same_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    Trainer(small_config(tmp_path, steps=2, eval_every=2, tensorboard=True)).run()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    logged = metrics_log.read([tmp_path / "run" / "metrics.jsonl"])
    rewards = [(r["step"], r["train/reward"]) for r in logged if "train/reward" in r]
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in events.Scalars("train/reward")] == rewards
    assert "eval/avg@k" in events.Tags()["scalars"]


def test_sampler_log_probs_as_pi_old_skip_the_second_forward(tmp_path, monkeypatch):
    """``algorithm.old_source=sampler``: the rollout's own log-probs are pi_old, and the trainer never
    runs the no-grad forward that would recompute them."""
    from pmdlab.llm.policy import LMPolicy

    calls = []
    real = LMPolicy.log_probs_and_entropy
    monkeypatch.setattr(LMPolicy, "log_probs_and_entropy", lambda self, r: calls.append(1) or real(self, r))
    config = small_config(
        tmp_path, algorithm=Algorithm("pmd_mean", tau=1.0, old_source="sampler"), eval_every=0
    )
    records = Trainer(config).run()
    assert calls == [] and len(records) == 4
    assert all(
        r["loss/kl_k1"] == pytest.approx(0.0, abs=1e-5) or r["loss/optimizer_steps"] == 2 for r in records
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_checkpoints_the_step_and_resume_reaches_the_uninterrupted_weights(tmp_path, sig):
    """SIGTERM (pre-emption) or Ctrl-C mid-run: the step in progress is finished and checkpointed,
    the exit status is 128 + signal, and ``--resume`` ends where the uninterrupted run ends."""
    settings = dict(steps=30, save_every=0, eval_every=10, threads=1)  # save_every=0: no periodic checkpoint
    config = tmp_path / "run.json"
    config.write_text(
        json.dumps({k: v for k, v in to_dict(small_config(tmp_path, **settings)).items() if k != "out"})
    )
    run = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmdlab.llm.train", "--config", str(config), f"out={run}"],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not any(r["step"] >= 2 for r in _records(run / "metrics.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.05)
    proc.send_signal(sig)
    status, err = proc.wait(timeout=120), proc.stderr.read()
    assert status == 128 + sig, err
    stopped_at = max(r["step"] for r in _records(run / "metrics.jsonl"))
    assert 2 <= stopped_at < 30 and f"stopped after step {stopped_at}" in err
    assert [p.name for p in run.glob("step-*")] == [f"step-{stopped_at:06d}"]  # the signal's checkpoint

    resumed = Trainer(small_config(tmp_path, out=str(run), resume=True, **settings))
    assert resumed.step == stopped_at
    resumed.run()
    straight = Trainer(small_config(tmp_path, out=str(tmp_path / "straight"), **settings))
    straight.run()
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)

    def timeless(path):
        return [
            {k: v for k, v in r.items() if not k.startswith("perf/") and k != "run"} for r in _records(path)
        ]

    assert timeless(run / "metrics.jsonl") == timeless(tmp_path / "straight" / "metrics.jsonl")


@pytest.mark.parametrize("old_source", ["trainer", "current"])
def test_with_lagging_batches_in_one_process_current_anchors_at_the_trained_policy(tmp_path, old_source):
    """``max_staleness=2`` in one process: with ``old_source=current`` pi_old is the policy being
    trained (no distance between it and pi_theta before the first step), with ``trainer`` the
    behaviour policy (a distance once the batches lag behind moved weights)."""
    config = small_config(
        tmp_path,
        max_staleness=2,
        steps=6,
        eval_every=0,
        algorithm=Algorithm("pmd_mean", old_source=old_source),
    )
    records = Trainer(config).run()
    drift = [r["loss/behaviour_kl_k3"] for r in records]
    if old_source == "current":
        assert max(drift) < 1e-9
    else:
        assert drift[0] < 1e-9 < 1e-6 < max(drift[1:])  # batches 1, 2, ... lag behind moved weights


def test_the_metrics_sinks_are_closed_when_a_run_fails(tmp_path, monkeypatch):
    """A run that stops on an error (here: non-finite losses) still flushes and closes TensorBoard."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    import torch.utils.tensorboard as tb

    calls = []

    class Writer:
        def __init__(self, logdir):
            calls.append("open")

        def add_scalar(self, *args):
            pass

        def flush(self):
            calls.append("flush")

        def close(self):
            calls.append("close")

    monkeypatch.setattr(tb, "SummaryWriter", Writer)
    config = small_config(
        tmp_path,
        algorithm=PoisonedAlgorithm(name="pmd_mean", tau=1.0),
        max_nonfinite=3,
        steps=5,
        eval_every=0,
        tensorboard=True,
    )
    with pytest.raises(NonFiniteError):
        Trainer(config).run()
    assert calls == ["open", "flush", "close"]
