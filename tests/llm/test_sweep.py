"""Sweeps over algorithms and seeds: each run equals the trainer run alone; summaries with intervals."""

import json
import signal
import subprocess
import sys
import time

import pytest

from pmdlab.llm import metrics_log, sweep
from pmdlab.llm.train import Trainer
from pmdlab.rl.algorithms import Algorithm
from pmdlab.rl.config import to_dict

from .lm_helpers import records_so_far as _records
from .lm_helpers import small_config


def _without_timings(records):
    return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "run"} for r in records]


def test_each_run_of_a_sweep_is_the_trainers_run_and_a_finished_sweep_is_not_rerun(tmp_path, capsys):
    settings = to_dict(small_config(tmp_path, steps=2, eval_every=2, save_every=2, threads=1))
    for key in ("out", "algorithm", "seed"):
        settings.pop(key)
    config = tmp_path / "sweep.json"
    config.write_text(json.dumps(settings))
    argv = ["--config", str(config), "--algorithms", "pmd_mean,grpo", "--seeds", "0,1", "--jobs", "2"]
    argv += ["--threads", "1", "--out", str(tmp_path / "sweep")]
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 runs to do (0 already finished)" in printed and "grpo − pmd_mean" in printed
    for name, seed in (("pmd_mean", 1), ("grpo", 0)):
        alone = Trainer(
            small_config(
                tmp_path / f"alone-{name}-{seed}",
                steps=2,
                eval_every=2,
                save_every=2,
                threads=1,
                seed=seed,
                algorithm=Algorithm(name, tau=1.0) if name.startswith("pmd") else Algorithm(name),
            )
        )
        alone.run()
        swept = metrics_log.read([tmp_path / "sweep" / f"{name}-seed{seed}" / "metrics.jsonl"])
        assert _without_timings(swept) == _without_timings(metrics_log.read([alone.log_path]))
    assert sweep.main(argv) == 0
    assert "0 runs to do (4 already finished)" in capsys.readouterr().out


def _log(path, algorithm, evals):
    """A metrics log with evaluations ``[(step, avg@k)]`` (pass@k and maj@k follow avg@k)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for step, value in evals:
        record = {"run": path.parent.name, "algorithm": algorithm, "step": step, "eval/avg@k": value}
        metrics_log.append(path, {**record, "eval/pass@k": value, "eval/maj@k": value, "perf/wall_s": 60.0})
    return path


def test_the_summary_states_means_and_intervals_from_the_logs(tmp_path):
    a = [
        _log(tmp_path / f"a{i}" / "m.jsonl", "pmd_mean", [(0, 0.1), (10, v)])
        for i, v in enumerate([0.5, 0.6])
    ]
    b = [_log(tmp_path / f"b{i}" / "m.jsonl", "grpo", [(0, 0.1), (10, v)]) for i, v in enumerate([0.2, 0.3])]
    out = sweep.outcomes(a + b)
    assert out["pmd_mean"]["eval/avg@k"]["last"] == [0.5, 0.6]
    assert out["grpo"]["eval/avg@k"]["first"] == [0.1, 0.1]
    table = sweep.summary(a + b)
    # Two seeds: mean 0.55 ± t(1) 12.706 x s/sqrt(2) = 0.05, a Student-t interval named as such.
    row = "| eval/avg@k | 0.100 [0.100, 0.100] (t, n = 2) | 0.550 [-0.085, 1.185] (t, n = 2) |"
    assert row in table
    # Paired over the shared seeds: grpo is 0.3 below on each, so the difference has no spread.
    assert "last eval/avg@k, grpo − pmd_mean: -0.300 [-0.300, -0.300] (paired t, n = 2) (differ)" in table


def test_overlapping_seeds_are_reported_as_not_separated(tmp_path):
    a = [
        _log(tmp_path / f"a{i}" / "m.jsonl", "pmd_mean", [(0, 0.1), (9, v)]) for i, v in enumerate([0.3, 0.5])
    ]
    b = [_log(tmp_path / f"b{i}" / "m.jsonl", "grpo", [(0, 0.1), (9, v)]) for i, v in enumerate([0.35, 0.45])]
    assert "not separated by this many seeds" in sweep.summary(a + b)


def test_runs_evaluated_at_different_steps_do_not_compare(tmp_path):
    a = _log(tmp_path / "a" / "m.jsonl", "pmd_mean", [(0, 0.1), (10, 0.5)])
    b = _log(tmp_path / "b" / "m.jsonl", "grpo", [(0, 0.1), (12, 0.5)])
    with pytest.raises(ValueError, match="evaluated at different steps"):
        sweep.outcomes([a, b])
    c = _log(tmp_path / "c" / "m.jsonl", "grpo", [(0, 0.1)])
    with pytest.raises(ValueError, match=r"c/m.jsonl: needs evaluations at two steps"):
        sweep.outcomes([a, c])


def test_bad_sweep_arguments_are_one_error_line(tmp_path, capsys):
    assert sweep.main(["--out", str(tmp_path), "--jobs", "0"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err
    assert sweep.main(["--summary", str(tmp_path / "nothing")]) == 2
    assert "no */metrics.jsonl under" in capsys.readouterr().err
    assert sweep.main(["--out", str(tmp_path), "steps=0"]) == 2
    assert "steps" in capsys.readouterr().err


def test_a_stopped_sweep_checkpoints_its_runs_and_the_same_command_continues(tmp_path, capsys):
    steps = 100
    settings = to_dict(small_config(tmp_path, steps=steps, eval_every=50, save_every=0, threads=1))
    config = tmp_path / "sweep.json"
    config.write_text(
        json.dumps({k: v for k, v in settings.items() if k not in ("out", "algorithm", "seed")})
    )
    out = tmp_path / "sweep"
    # One run at a time: the signal comes while the second run is still to do, and starts it no more.
    argv = ["--config", str(config), "--algorithms", "pmd_mean", "--seeds", "0,1", "--jobs", "1"]
    argv += ["--threads", "1", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pmdlab.llm.sweep", *argv], stderr=subprocess.PIPE, text=True
    )
    logs = [out / f"pmd_mean-seed{s}" / "metrics.jsonl" for s in (0, 1)]
    deadline = time.monotonic() + 300
    while not any(any(r["step"] >= 1 for r in _records(log)) for log in logs):
        assert proc.poll() is None and time.monotonic() < deadline, "the sweep ended before the signal"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    status, err = proc.wait(timeout=120), proc.stderr.read()
    assert status == 128 + signal.SIGTERM, err
    assert "run the same command to continue" in err
    checkpointed = 0
    for log in logs:  # a run that had begun training stopped after a step, with that step's checkpoint
        last = max((r["step"] for r in _records(log)), default=0)
        found = [p.name for p in log.parent.glob("step-*")]
        assert last < steps and found == ([f"step-{last:06d}"] if last else [])
        checkpointed += bool(last)
    assert checkpointed >= 1
    assert sweep.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("(resumed)") == checkpointed
    assert all(max(r["step"] for r in _records(log)) == steps for log in logs)
