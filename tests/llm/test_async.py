"""Asynchronous rollouts: a rollout process generates while the learner updates (:mod:`pmdlab.llm.rollout`).

Each run here is the real command line, ``python -m pmdlab.llm.train async_rollouts=true ...``: a
supervisor, one training and one generating process on gloo.
"""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from pmdlab.llm.rollout.batch import ScoredBatch
from pmdlab.llm.rollout.sources import RemoteSource
from pmdlab.llm.train import TrainConfig, Trainer
from pmdlab.rl.algorithms import Algorithm
from pmdlab.rl.config import to_dict
from pmdlab.rl.rollout import Rollout

from .lm_helpers import checkpoint_weights, records_so_far, small_config, weights

ROOT = Path(__file__).resolve().parents[2]

needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(),
    reason="torch.distributed with gloo is not available in this build",
)


def _config_file(tmp_path, **settings) -> Path:
    path = tmp_path / "config.json"
    data = {k: v for k, v in to_dict(small_config(tmp_path, **settings)).items() if k != "out"}
    path.write_text(json.dumps(data))
    return path


def start(tmp_path, out, *extra, **settings) -> subprocess.Popen:
    """``python -m pmdlab.llm.train --config ... async_rollouts=true out=<out> extra...``, one thread each."""
    settings.setdefault("threads", 1)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "pmdlab.llm.train", "--config", str(_config_file(tmp_path, **settings))]
    cmd += ["async_rollouts=true", f"out={out}", *extra]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300) -> str:
    err = proc.communicate(timeout=timeout)[1]
    assert proc.returncode == 0, err[-4000:]
    return err


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    """The last checkpoint's weights (exported first if FSDP2 wrote them in shards)."""
    last = sorted(run.glob("step-*"))[-1]
    return checkpoint_weights(last, run.parent / f"{run.name}-exported")


def timeless(path: Path, drop=("perf/", "async/", "run")) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.startswith(drop)} for r in records_so_far(path)]


def wait_for_step(run: Path, step: int, proc, timeout=300) -> None:
    deadline = time.monotonic() + timeout
    while not any(r["step"] >= step for r in records_so_far(run / "metrics.jsonl")):
        assert proc.poll() is None, proc.stderr.read()[-4000:]
        assert time.monotonic() < deadline, "the run did not reach the step"
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) is not running
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


# --------------------------------------------------------------------- pure parts


def test_a_packed_batch_unpacks_to_the_same_tensors_and_travels_without_torch_pickling():
    rollout = Rollout(
        group_ids=torch.arange(3).repeat_interleave(2),
        tokens=torch.randint(0, 50, (6, 5)),
        mask=torch.ones(6, 5),
        sampler_logprobs=torch.randn(6, 5, dtype=torch.bfloat16),  # numpy has no bfloat16
        rewards=torch.rand(6),
        prompts=torch.randint(0, 50, (6, 4)),
        extras={"prompt_mask": torch.ones(6, 4, dtype=torch.long)},
    )
    batch = ScoredBatch(
        rollout=rollout,
        behaviour=torch.randn(6, 5, dtype=torch.float64),
        version=3,
        stats={"x": 1.0},
        versions=torch.arange(30).view(6, 5),
    )
    packed = batch.pack()
    leaves = [*packed["rollout"].values(), *packed["rollout"]["extras"].values()]
    leaves += [packed["behaviour"], packed["versions"]]
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    assert [t.dtype for t in tensors] == [torch.bfloat16]
    back = ScoredBatch.unpack(packed)
    assert back.stats == batch.stats and back.version == 3
    assert torch.equal(back.behaviour, batch.behaviour) and back.behaviour.dtype == torch.float64
    assert torch.equal(back.versions, batch.versions)
    for name in ("group_ids", "tokens", "mask", "sampler_logprobs", "rewards", "prompts"):
        a, b = getattr(back.rollout, name), getattr(rollout, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert back.rollout.extras.keys() == rollout.extras.keys()
    assert all(torch.equal(back.rollout.extras[k], v) for k, v in rollout.extras.items())


@pytest.mark.parametrize("world", [1, 2, 4])
def test_a_sharded_batch_gives_each_rank_the_groups_the_synchronous_shard_gives(world):
    n, prompts = 3, 8
    group_ids = torch.arange(prompts).repeat_interleave(n)
    tokens = torch.arange(prompts * n * 2).view(-1, 2)
    rollout = Rollout(group_ids=group_ids, tokens=tokens, mask=torch.ones_like(tokens))
    batch = ScoredBatch(rollout=rollout, behaviour=tokens.double(), version=3, versions=tokens + 100)
    seen = []
    for rank in range(world):
        part = batch.shard(rank, world)
        mine = list(range(prompts))[rank::world]  # the prompts each rank samples in one process, in order
        assert part.rollout.group_ids.tolist() == [g for g in range(len(mine)) for _ in range(n)]
        assert part.rollout.tokens[:, 0].div(2 * n, rounding_mode="floor").tolist() == [
            g for g in mine for _ in range(n)
        ]
        assert torch.equal(part.behaviour, part.rollout.tokens.double())
        assert torch.equal(part.versions, part.rollout.tokens + 100)
        seen += part.rollout.tokens[:, 0].tolist()
    assert sorted(seen) == tokens[:, 0].tolist()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(rollout_ranks=0), "rollout_ranks"),
        (dict(async_weights="newest"), "async_weights"),
        (dict(max_staleness=-1), "max_staleness"),
    ],
)
def test_bad_asynchronous_settings_are_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        small_config(tmp_path, **overrides)


def test_a_lag_beyond_max_staleness_is_refused():
    side = RemoteSource(None, TrainConfig(max_staleness=2), Path("model"), None)
    assert side.count_lag(2)["async/lag_hist_2"] == 1.0
    with pytest.raises(RuntimeError, match="lags 3 versions; max_staleness is 2"):
        side.count_lag(3)


# --------------------------------------------------------------------- runs


@needs_gloo
def test_max_staleness_zero_with_fixed_weights_is_the_synchronous_run(tmp_path):
    """Lag 0: the asynchronous pipeline is the synchronous trainer, weight for weight, metric for metric."""
    settings = dict(steps=4, eval_every=2, save_every=2, threads=1)
    proc = start(tmp_path, tmp_path / "async", "max_staleness=0", "async_weights=fixed", **settings)
    sync = Trainer(small_config(tmp_path, out=str(tmp_path / "sync"), **settings))
    sync.run()
    finish(proc)
    mine, theirs = final_weights(tmp_path / "async"), weights(sync)
    assert mine.keys() <= theirs.keys() and len(mine) > 1  # the file leaves out tied weights
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    a, s = timeless(tmp_path / "async" / "metrics.jsonl"), timeless(tmp_path / "sync" / "metrics.jsonl")
    assert [r["step"] for r in a] == [0, 1, 2, 3, 4] and a == s
    lags = [r["async/lag"] for r in records_so_far(tmp_path / "async" / "metrics.jsonl") if "async/lag" in r]
    assert lags == [0.0] * 4


@needs_gloo
@pytest.mark.parametrize("extra", [(), ("partial_tokens=1",)], ids=["plain", "partial"])
def test_one_lag_setting_the_in_process_source_is_the_remote_one_with_fixed_weights(tmp_path, extra):
    """``max_staleness=2``: batch ``s`` from version ``max(0, s - lead)``, whether this process makes
    it or a rollout rank does (``async_weights=fixed``): the same weights and the same log. Each
    batch is sampled with its own seed (the first ``lead + 1`` batches, all made from version 0,
    once shared one)."""
    settings = dict(steps=6, eval_every=3, save_every=3, threads=1)
    lag = ("max_staleness=2", *extra)
    proc = start(tmp_path, tmp_path / "async", *lag, "async_weights=fixed", **settings)
    overrides = dict(max_staleness=2, partial_tokens=1 if extra else 0)
    sync = Trainer(small_config(tmp_path, out=str(tmp_path / "sync"), **overrides, **settings))
    sync.run()
    finish(proc)
    mine, theirs = final_weights(tmp_path / "async"), weights(sync)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    a, s = timeless(tmp_path / "async" / "metrics.jsonl"), timeless(tmp_path / "sync" / "metrics.jsonl")
    assert [r["step"] for r in a] == [0, 1, 2, 3, 4, 5, 6] and a == s
    lead = 0 if extra else 2  # partial: a response takes K = 3 iterations, which spend the lag
    versions = [r["train/sampler_version"] for r in s if "train/sampler_version" in r]
    assert versions == [float(max(0, b - lead)) for b in range(6)]


@needs_gloo
@pytest.mark.parametrize("weights_mode", ["latest", "fixed"])
def test_every_trained_batch_lags_at_most_max_staleness(tmp_path, weights_mode):
    k, steps = 2, 10
    out = tmp_path / "run"
    proc = start(
        tmp_path, out, f"max_staleness={k}", f"async_weights={weights_mode}", steps=steps, eval_every=0
    )
    finish(proc)
    records = records_so_far(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    lags = [r["async/lag"] for r in records]
    assert all(0 <= lag <= k for lag in lags)
    # the batch of step s (logged at s + 1) was sampled by version s - lag
    assert all(r["train/sampler_version"] == r["step"] - 1 - r["async/lag"] for r in records)
    hist = [records[-1][f"async/lag_hist_{j}"] for j in range(k + 1)]
    assert hist == [lags.count(float(j)) for j in range(k + 1)] and sum(hist) == steps
    if weights_mode == "fixed":
        assert lags == [float(min(s, k)) for s in range(steps)]
    # the lag shows in the trained policy's distance from pi_old before the batch's first step
    fresh = [r["loss/behaviour_kl_k3"] for r in records if r["async/lag"] == 0]
    stale = [r["loss/behaviour_kl_k3"] for r in records if r["async/lag"] > 0]
    assert max(fresh) < 1e-6 < max(stale)  # (a lagging batch costs nothing where the weights did not move)


def assert_sigterm_then_resume_is_the_uninterrupted_run(tmp_path, extra, stop_after, **settings):
    """Run straight through; run again, SIGTERM after step ``stop_after`` (a checkpoint of that step,
    exit 143), ``--resume``: the same final weights, bit for bit, and the same log."""
    finish(start(tmp_path, tmp_path / "straight", *extra, **settings))
    run = tmp_path / "stopped"
    proc = start(tmp_path, run, *extra, **settings)
    wait_for_step(run, stop_after, proc)
    proc.send_signal(signal.SIGTERM)
    status, err = proc.wait(timeout=120), proc.stderr.read()
    assert status == 143, err[-4000:]
    stopped_at = max(r["step"] for r in records_so_far(run / "metrics.jsonl"))
    assert stop_after <= stopped_at < settings["steps"] and f"stopped after step {stopped_at}" in err
    assert [p.name for p in run.glob("step-*")] == [f"step-{stopped_at:06d}"]
    finish(start(tmp_path, run, *extra, "resume=true", **settings))
    mine, theirs = final_weights(run), final_weights(tmp_path / "straight")
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    drop = ("perf/", "run")
    assert timeless(run / "metrics.jsonl", drop) == timeless(tmp_path / "straight" / "metrics.jsonl", drop)


@needs_gloo
def test_sigterm_then_resume_reaches_the_uninterrupted_weights(tmp_path):
    """Asynchronous, fixed weights, lag 2: SIGTERM mid-run checkpoints (with the batches in flight)
    and exits 143; --resume ends with the weights and log of the uninterrupted run."""
    extra = ("max_staleness=2", "async_weights=fixed")
    settings = dict(steps=24, eval_every=8, save_every=0, threads=1)
    assert_sigterm_then_resume_is_the_uninterrupted_run(tmp_path, extra, 3, **settings)


@needs_gloo
def test_a_killed_worker_stops_the_run_naming_it_and_resume_continues(tmp_path):
    settings = dict(steps=40, eval_every=0, save_every=2, threads=1)
    run = tmp_path / "run"
    proc = start(tmp_path, run, "max_staleness=1", **settings)
    wait_for_step(run, 3, proc)
    pids = json.loads((run / "processes.json").read_text())
    os.kill(pids["rollout"][0], signal.SIGKILL)
    killed = time.monotonic()
    status = proc.wait(timeout=60)
    assert time.monotonic() - killed < 30
    err = proc.stderr.read()
    assert status == 1 and "rollout worker rank 1" in err and "--resume" in err, err[-4000:]
    assert not alive(pids["trainer"])  # no orphan
    done = max(r["step"] for r in records_so_far(run / "metrics.jsonl"))
    assert done < 40
    finish(start(tmp_path, run, "max_staleness=1", "resume=true", **settings))
    steps = [r["step"] for r in records_so_far(run / "metrics.jsonl")]
    assert steps == list(range(1, 41))  # the records after the last checkpoint were redone once


@needs_gloo
def test_the_trainers_death_stops_the_worker(tmp_path):
    run = tmp_path / "run"
    proc = start(tmp_path, run, "max_staleness=1", steps=200, eval_every=0, save_every=0)
    wait_for_step(run, 2, proc)
    pids = json.loads((run / "processes.json").read_text())
    os.kill(pids["trainer"], signal.SIGKILL)
    killed = time.monotonic()
    status = proc.wait(timeout=60)
    err = proc.stderr.read()
    assert status == 128 + signal.SIGKILL and "the trainer (rank 0) died" in err, err[-4000:]
    deadline = killed + 30
    while alive(pids["rollout"][0]):
        assert time.monotonic() < deadline, "the worker outlived the trainer"
        time.sleep(0.1)


@needs_gloo
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_under_torchrun_two_training_ranks_and_a_worker_take_the_one_process_steps(tmp_path, strategy):
    """``torchrun --nproc_per_node 3``: ranks 0-1 train (DDP or FSDP2 over their own group), rank 2
    generates. With lag 0 and one minibatch per batch the weights are those of one synchronous process.

    GRPO: a group whose rewards are all equal has a gradient of exactly 0, where PMD-mean's squared
    loss turns the ranks' 1e-7 differences in log-probs into a gradient that Adam scales up to a
    step of ``lr``."""
    settings = dict(
        steps=3, eval_every=0, save_every=3, prompts=4, minibatches=1, threads=1, algorithm=Algorithm("grpo")
    )
    config = _config_file(tmp_path, **settings)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "3"]
    cmd += ["-m", "pmdlab.llm.train", "--config", str(config), "async_rollouts=true", "max_staleness=0"]
    cmd += ["async_weights=fixed", f"parallel={strategy}", f"out={tmp_path / 'torchrun'}"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    sync = Trainer(small_config(tmp_path, out=str(tmp_path / "sync"), **settings))
    before = weights(sync)
    sync.run()
    mine, theirs = final_weights(tmp_path / "torchrun"), weights(sync)
    assert mine.keys() <= theirs.keys() and len(mine) > 1

    def distance(a, b):
        return max(float((a[k] - b[k]).abs().max()) for k in mine)

    assert distance(mine, theirs) < 1e-5 < 1e-4 < distance(theirs, before)


PARTIAL = ("max_staleness=3", "partial_tokens=1", "async_weights=fixed")


@needs_gloo
def test_partial_rollouts_train_responses_made_by_several_versions_within_the_lag_bound(tmp_path):
    """One token per response per iteration (answers up to 3: K = 3), lag bound 3, ``fixed`` weights:
    the worker samples batch ``s`` from version ``max(0, s - 1)``, leaving two versions of the bound
    for carrying. Responses continued by newer weights are trained, every token within the bound, and
    none is dropped (a worker 3 versions ahead would drop every carried group)."""
    k, steps, out = 3, 12, tmp_path / "run"
    finish(start(tmp_path, out, *PARTIAL, steps=steps, eval_every=0))
    records = records_so_far(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(r["async/token_lag_max"] <= r["async/lag"] <= k for r in records)
    assert max(r["async/lag"] for r in records) == k
    multi = [r["async/partial_multi_version"] for r in records]
    assert sum(m > 0 for m in multi) >= steps // 2  # most batches hold responses made by several versions
    assert records[-1]["async/dropped_groups"] == 0
    assert all(r["loss/optimizer_steps"] == 2 for r in records)


@needs_gloo
def test_partial_rollouts_resume_their_responses_in_progress_after_sigterm(tmp_path):
    """The responses in progress are in the checkpoint: SIGTERM, then --resume, ends with the weights
    and log of the uninterrupted run."""
    settings = dict(steps=16, eval_every=0, save_every=0, threads=1)
    assert_sigterm_then_resume_is_the_uninterrupted_run(tmp_path, PARTIAL, 4, **settings)


@needs_gloo
def test_old_source_current_anchors_the_loss_at_the_trained_policy_not_the_sampler(tmp_path):
    """``algorithm.old_source=current``: pi_old is the trained policy at the start of each update, so
    the lag no longer shows between pi_old and pi_theta, only between the sampler and pi_old."""
    out = tmp_path / "run"
    extra = ("max_staleness=2", "async_weights=fixed", "algorithm.old_source=current")
    finish(start(tmp_path, out, *extra, steps=6, eval_every=0))
    records = records_so_far(out / "metrics.jsonl")
    assert any(r["async/lag"] > 0 for r in records)
    assert all(r["loss/behaviour_kl_k3"] < 1e-9 for r in records)
    # the worker still runs the behaviour pass: entropies, and the sampler compared with its own weights
    assert all(math.isfinite(r["train/entropy"]) for r in records)
    assert all(r["loss/sampler_kl_k3"] < 1e-6 for r in records)


def test_receivers_alive_sees_a_blocked_receiving_thread():
    """The check that makes a run leave with os._exit rather than abort in the process group's teardown."""
    import threading

    from pmdlab.llm.rollout.transport import RECEIVER_THREADS, receivers_alive

    release = threading.Event()
    assert not receivers_alive()
    thread = threading.Thread(target=release.wait, name=RECEIVER_THREADS[1], daemon=True)
    thread.start()
    assert receivers_alive()
    release.set()
    thread.join()
    assert not receivers_alive()


# --------------------------------------------------------------------- NCCL's early return, simulated


def start_nccl_like(tmp_path, out, *extra, **settings) -> list[subprocess.Popen]:
    """A trainer and a rollout worker whose weight broadcasts return before their data has arrived, as
    NCCL's do (``tests/llm/nccl_like.py``), started as torchrun would."""
    from pmdlab.llm.rollout.launch import _free_port

    settings.setdefault("threads", 1)
    config = _config_file(tmp_path, **settings)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            PYTHONPATH=str(ROOT),
            WORLD_SIZE="2",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
            OMP_NUM_THREADS="1",
        )
        cmd = [sys.executable, str(ROOT / "tests" / "llm" / "nccl_like.py"), "--config", str(config)]
        cmd += ["async_rollouts=true", f"out={out}", "dist_timeout_s=120", *extra]
        procs.append(subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True))
    return procs


def finish_all(procs, timeout=300) -> None:
    try:
        errors = [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    failed = [f"rank {r}: {err[-3000:]}" for r, (p, err) in enumerate(zip(procs, errors)) if p.returncode]
    assert not failed, "\n".join(failed)


@needs_gloo
def test_with_broadcasts_that_return_early_every_version_arrives_in_order_with_its_weights(tmp_path):
    """NCCL semantics on gloo: a broadcast returns before its data has arrived. With ``fixed`` weights
    and lag 2 the run is still the in-process run with the same lag, weight for weight and record for
    record: every batch sampled by exactly the version it should be, holding exactly that version's
    weights."""
    settings = dict(steps=6, eval_every=3, save_every=3)
    finish_all(
        start_nccl_like(tmp_path, tmp_path / "nccl", "max_staleness=2", "async_weights=fixed", **settings)
    )
    sync = Trainer(small_config(tmp_path, out=str(tmp_path / "sync"), max_staleness=2, threads=1, **settings))
    sync.run()
    mine, theirs = final_weights(tmp_path / "nccl"), weights(sync)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    a, s = timeless(tmp_path / "nccl" / "metrics.jsonl"), timeless(tmp_path / "sync" / "metrics.jsonl")
    assert [r["step"] for r in a] == list(range(7)) and a == s
    lags = [r["async/lag"] for r in records_so_far(tmp_path / "nccl" / "metrics.jsonl") if "async/lag" in r]
    assert lags == [0.0, 1.0, 2.0, 2.0, 2.0, 2.0]


@needs_gloo
def test_with_broadcasts_that_return_early_the_newest_weights_lag_within_the_bound(tmp_path):
    k, steps = 2, 8
    out = tmp_path / "run"
    finish_all(
        start_nccl_like(
            tmp_path, out, f"max_staleness={k}", "async_weights=latest", steps=steps, eval_every=0
        )
    )
    records = records_so_far(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, steps + 1))
    assert all(0 <= r["async/lag"] <= k for r in records)
    assert all(r["train/sampler_version"] == r["step"] - 1 - r["async/lag"] for r in records)
    versions = [r["train/sampler_version"] for r in records]
    assert versions == sorted(versions)  # versions arrive in order


# --------------------------------------------------------------------- placement


@pytest.fixture
def one_gpu(monkeypatch):
    """A machine with one visible GPU, as far as the placement check can tell."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_asynchronous_rollouts_on_too_few_gpus_are_one_error_line(one_gpu, capsys, tmp_path):
    """A trainer and a rollout worker need two GPUs (NCCL refuses two ranks on one); with one visible
    the run stops before starting any process, saying what is needed."""
    from pmdlab.llm.train import main

    status = main(["async_rollouts=true", f"out={tmp_path / 'run'}", "progress=false"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: 2 processes on this machine need a GPU each, but 1 is visible")
    assert not (tmp_path / "run").exists()  # nothing was started


def test_under_torchrun_more_local_ranks_than_gpus_are_refused(one_gpu, monkeypatch):
    from pmdlab.llm import distributed

    env = dict(WORLD_SIZE="3", RANK="2", LOCAL_RANK="2", LOCAL_WORLD_SIZE="3")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match="3 processes on this machine need a GPU each, but 1 is visible"):
        distributed.setup("auto", rollout_ranks=1)
    distributed.check_devices(3, "cpu")  # on the CPU nothing to check
