"""Data parallel on the CPU: ``torchrun`` with 2 gloo processes against 1 process.

Each case launches ``tests/llm/dist_worker.py`` under ``torchrun`` and reads
what its ranks measured.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pmdlab.llm import metrics_log

from .lm_helpers import checkpoint_weights

WORKER = Path(__file__).with_name("dist_worker.py")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this build",
)


def torchrun(*args, timeout=300, processes=2):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(processes),
        str(WORKER),
        *map(str, args),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stderr


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_take_the_step_one_process_takes_on_the_whole_batch(tmp_path, strategy):
    out = tmp_path / "result.json"
    torchrun("update", out, strategy)
    r = json.loads(out.read_text())
    assert r["world_size"] == 2 and r["micro_batches"] > 1  # gradient accumulation inside each rank
    assert r["loss"] == pytest.approx(r["reference_loss"], rel=1e-12)
    assert r["moved"] > 1e-3  # the step is not trivial
    assert r["grad_diff"] <= 1e-6 * max(1.0, r["grad_scale"])
    assert r["weight_diff"] <= 1e-6


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_trainer_runs_under_torchrun(tmp_path, strategy):
    out, run = tmp_path / "result.json", tmp_path / "run"
    torchrun("trainer", out, run, tmp_path / "cache", strategy)
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [2, 2]
    trained = torch.load(f"{out}.weights.pt")
    saved = checkpoint_weights(run / "step-000002", tmp_path / "exported")
    assert saved.keys() <= trained.keys() and len(saved) > 1  # the file leaves out tied weights
    assert all(torch.equal(saved[k], trained[k]) for k in saved)  # what was trained is what was saved
    if strategy == "ddp":
        assert ranks[0]["digest"] == ranks[1]["digest"]  # replicas stay identical
    steps = [rec["step"] for rec in metrics_log.read([run / "metrics.jsonl"])]
    assert steps == [0, 1, 2]  # one log, written by rank 0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_torchrun_resumes_to_the_uninterrupted_result(tmp_path, strategy):
    """Per-rank shards of weights and optimiser state (FSDP2) or whole ones (DDP), per-rank data
    position and random states: the same weights and log."""
    torchrun("trainer", tmp_path / "a.json", tmp_path / "a", tmp_path / "cache", strategy, "straight")
    torchrun("trainer", tmp_path / "b.json", tmp_path / "b", tmp_path / "cache", strategy, "killed")
    assert [p.name for p in sorted((tmp_path / "b").glob("step-*"))] == ["step-000001"]
    assert (tmp_path / "b" / "step-000001" / "shards").is_dir() == (strategy == "fsdp")
    torchrun("trainer", tmp_path / "b.json", tmp_path / "b", tmp_path / "cache", strategy, "resume")
    a = json.loads(Path(f"{tmp_path / 'a.json'}.rank0").read_text())
    b = json.loads(Path(f"{tmp_path / 'b.json'}.rank0").read_text())
    assert a["digest"] == b["digest"] and b["step"] == 2

    def strip(records):
        return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "run"} for r in records]

    assert strip(metrics_log.read([tmp_path / "a" / "metrics.jsonl"])) == strip(
        metrics_log.read([tmp_path / "b" / "metrics.jsonl"])
    )


def test_a_truncated_shard_falls_back_to_the_previous_checkpoint_naming_it(tmp_path):
    """FSDP2, 2 ranks, a checkpoint a step: rank 1's shard of the newest cut short. Resuming warns
    naming it, continues from the checkpoint before, and ends with the uninterrupted weights."""
    torchrun("trainer", tmp_path / "a.json", tmp_path / "a", tmp_path / "cache", "fsdp", "straight")
    run = tmp_path / "a"
    shard = run / "step-000002" / "shards" / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])
    err = torchrun("trainer", tmp_path / "b.json", run, tmp_path / "cache", "fsdp", "resume")
    assert "step-000002 is damaged (shards/__1_0.distcp has 100 bytes" in err
    a = json.loads(Path(f"{tmp_path / 'a.json'}.rank0").read_text())
    b = json.loads(Path(f"{tmp_path / 'b.json'}.rank0").read_text())
    assert b["records"] == 1 and a["digest"] == b["digest"]  # step 2 redone from step 1's checkpoint


def test_a_publish_holds_one_parameter_at_a_time_never_the_model(tmp_path):
    """FSDP2 over 2 training ranks and a rollout worker: publishing version 0 makes each parameter
    whole in turn (``full_tensor``) and broadcasts it into the worker's own parameters. Measured with a
    live-bytes tracker: the training ranks' peak extra memory is one parameter (and a shard of it on
    the way), the worker's nothing;
    gathering the whole model, as a publish once did, peaks at the model's size."""
    out = tmp_path / "publish.json"
    torchrun("publish", out, processes=3)
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in range(3)]
    largest, model = ranks[0]["largest_parameter"], ranks[0]["model"]
    assert model > 8 * largest  # many parameters: one is far from the whole
    for trainer in ranks[:2]:  # the whole parameter, and at most one shard of it (2 ranks) on the way
        assert largest <= trainer["publish_peak"] <= 1.5 * largest + 1024
        assert trainer["gathered_peak"] >= model if trainer["rank"] == 0 else True
    worker = ranks[2]
    assert worker["held"] == 0 and worker["equal"]  # every weight arrived, exactly
    assert worker["receive_peak"] <= 1024  # straight into the model's parameters


def test_a_silent_peer_fails_after_the_time_out_naming_it(tmp_path):
    out = tmp_path / "silent.json"
    torchrun("silent", out)
    r = json.loads(out.read_text())
    assert r["error"] is not None and "dist_timeout_s=3" in r["error"]
    assert 2.5 <= r["waited_s"] <= 9
