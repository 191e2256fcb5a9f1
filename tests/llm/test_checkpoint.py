"""Checkpoints against their manifests.

A damaged newest one falls back to the previous, none intact is an error.
"""

import subprocess
import sys

import pytest
import torch

from pmdlab.llm import checkpoint, metrics_log
from pmdlab.llm.train import Trainer

from .lm_helpers import small_config, weights


def _run_with_two_checkpoints(tmp_path):
    trainer = Trainer(small_config(tmp_path, steps=4, save_every=2, eval_every=0, keep_checkpoints=2))
    trainer.run()
    run = tmp_path / "run"
    assert [p.name for p in sorted(run.glob("step-*"))] == ["step-000002", "step-000004"]
    return run


def _truncate(path, keep=100):
    data = path.read_bytes()
    path.write_bytes(data[:keep])


def test_an_intact_checkpoint_verifies_and_every_damage_is_named(tmp_path):
    run = _run_with_two_checkpoints(tmp_path)
    newest = run / "step-000004"
    assert checkpoint.problem(newest) is None
    weights_file = newest / "model" / "model.safetensors"
    original = weights_file.read_bytes()
    data = bytearray(original)
    data[-1] ^= 0xFF  # same size, one byte changed
    weights_file.write_bytes(bytes(data))
    assert "model/model.safetensors does not match its digest" in checkpoint.problem(newest)
    _truncate(weights_file)
    assert "model/model.safetensors has 100 bytes" in checkpoint.problem(newest)
    weights_file.write_bytes(original)
    assert checkpoint.problem(newest) is None
    (newest / "trainer.pt").unlink()
    assert "trainer.pt is missing" in checkpoint.problem(newest)
    (newest / "manifest.json").unlink()
    assert "no manifest.json" in checkpoint.problem(newest)


def test_resume_skips_a_truncated_newest_checkpoint_with_a_warning(tmp_path):
    run = _run_with_two_checkpoints(tmp_path)
    _truncate(run / "step-000004" / "model" / "model.safetensors")
    with pytest.warns(UserWarning, match=r"step-000004 is damaged \(model/model.safetensors has 100 bytes"):
        resumed = Trainer(small_config(tmp_path, steps=4, save_every=2, eval_every=0, resume=True))
    assert resumed.step == 2
    resumed.run()
    steps = [r["step"] for r in metrics_log.read([run / "metrics.jsonl"])]
    assert steps == [1, 2, 3, 4]
    # The redone steps 3 and 4 give the weights the uninterrupted run had.
    straight = Trainer(small_config(tmp_path / "straight", steps=4, save_every=2, eval_every=0))
    straight.run()
    wa, wb = weights(straight), weights(resumed)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert checkpoint.problem(run / "step-000004") is None  # rewritten intact


def test_every_checkpoint_damaged_is_a_one_line_error_naming_the_folder(tmp_path):
    run = _run_with_two_checkpoints(tmp_path)
    for folder in run.glob("step-*"):
        _truncate(folder / "model" / "model.safetensors")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=f"no intact checkpoint in {run}"):
        Trainer(small_config(tmp_path, steps=4, resume=True))
    # From the command line: exit status 2 and an error line, no traceback.
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "pmdlab.llm.train", "--resume", f"out={run}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: resume: no intact checkpoint in {run} (2 found, every one damaged)"
    ]


def test_a_small_file_is_digested_whole_and_a_large_one_by_samples_that_catch_cuts_and_swaps(tmp_path):
    import hashlib

    from pmdlab.llm.digest import sampled_sha256

    small = tmp_path / "small"
    small.write_bytes(b"abc" * 1000)
    assert sampled_sha256(small) == hashlib.sha256(b"abc" * 1000).hexdigest()
    mib = 1 << 20
    a, b = tmp_path / "a", tmp_path / "b"
    data = bytes(range(256)) * (40 * mib // 256) + b"tail"  # 16 samples of 1 MiB, 2.6 MiB apart
    a.write_bytes(data)
    b.write_bytes(data[::-1])  # another shard of the same size
    digest = sampled_sha256(a, whole_below=mib)
    assert digest.startswith("sampled:") and digest != sampled_sha256(b, whole_below=mib)
    a.write_bytes(data[:-1])  # cut by one byte
    assert sampled_sha256(a, whole_below=mib) != digest
    for at in (0, len(data) - 1):  # a damaged head or tail
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        a.write_bytes(bytes(damaged))
        assert sampled_sha256(a, whole_below=mib) != digest
    damaged = bytearray(data)  # the stated limit: a byte between the samples goes unseen
    damaged[mib + mib // 2 + 7] ^= 0xFF
    a.write_bytes(bytes(damaged))
    assert sampled_sha256(a, whole_below=mib) == digest
