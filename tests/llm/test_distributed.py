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
import torch.distributed as dist

from pmdlab.llm import metrics_log

WORKER = Path(__file__).with_name("dist_worker.py")
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this build",
)


def torchrun(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(WORKER),
        *map(str, args),
    ]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]


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
    assert ranks[0]["checkpoint_diff"] == 0.0  # the gathered weights are what was saved
    if strategy == "ddp":
        assert ranks[0]["digest"] == ranks[1]["digest"]  # replicas stay identical
    steps = [rec["step"] for rec in metrics_log.read([run / "metrics.jsonl"])]
    assert steps == [0, 1, 2]  # one log, written by rank 0


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_killed_torchrun_resumes_to_the_uninterrupted_result(tmp_path, strategy):
    """Optimiser state gathered and re-sharded, per-rank data position: the same weights and log."""
    torchrun("trainer", tmp_path / "a.json", tmp_path / "a", tmp_path / "cache", strategy, "straight")
    torchrun("trainer", tmp_path / "b.json", tmp_path / "b", tmp_path / "cache", strategy, "killed")
    assert [p.name for p in sorted((tmp_path / "b").glob("step-*"))] == ["step-000001"]
    torchrun("trainer", tmp_path / "b.json", tmp_path / "b", tmp_path / "cache", strategy, "resume")
    a = json.loads(Path(f"{tmp_path / 'a.json'}.rank0").read_text())
    b = json.loads(Path(f"{tmp_path / 'b.json'}.rank0").read_text())
    assert a["digest"] == b["digest"] and b["step"] == 2

    def strip(records):
        return [{k: v for k, v in r.items() if not k.startswith("perf/") and k != "run"} for r in records]

    assert strip(metrics_log.read([tmp_path / "a" / "metrics.jsonl"])) == strip(
        metrics_log.read([tmp_path / "b" / "metrics.jsonl"])
    )
