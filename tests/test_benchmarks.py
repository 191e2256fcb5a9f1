"""The GPU benchmark's ``--dry-run``: every phase on the CPU at tiny shapes, and its time budget."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path, *extra):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "gpu_train.py"), "--dry-run", "--out", str(out), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_gpu_benchmark_dry_run_measures_every_phase(tmp_path):
    results, table = _run(tmp_path)
    tiny = results["tiny"]
    assert tiny["skipped"] == []
    for name in ("pmd_mean", "pmd_part", "grpo"):
        r = tiny[name]
        assert r["tokens_per_s"] > 0 and r["tflops_per_s"] > 0 and 0 < r["mfu_vs_gemm"]
        assert r["over_bare"] > 0 and 0 < r["loss_share"] < 1
        assert r["tokens_per_s"] == tiny["batch"]["tokens"] / sorted(r["update_s"])[len(r["update_s"]) // 2]
    assert tiny["rollout"]["tokens_per_s"] > 0
    assert "pmd_mean" in table and "rollout" in table


def test_gpu_benchmark_stops_at_its_time_budget_and_says_what_it_skipped(tmp_path):
    results, table = _run(tmp_path, "--budget-s", "0")
    assert "everything (time budget)" in results["tiny"]["skipped"]
    assert "skipped" in table
