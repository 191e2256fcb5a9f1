"""``paper_repro.py --quick``: every file appears, and the cached numbers say what the figures claim."""

import glob
import json
import os

import numpy as np
import pytest

import paper_repro
from figures import FIGURES_IN_ORDER
from pmdlab.llm import metrics_log

DRAWN = list(FIGURES_IN_ORDER)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("repro"))
    code = paper_repro.main(["--quick", "--out", out])
    return out, code


def _cached(out, name):
    (path,) = glob.glob(os.path.join(out, "cache", f"{name}-*.npz"))
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def test_quick_run_writes_every_figure_and_the_report(quick_run):
    out, code = quick_run
    assert code == 0
    for name in DRAWN:
        for ext in ("png", "pdf"):
            path = os.path.join(out, f"{name}.{ext}")
            assert os.path.getsize(path) > 5_000, path
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "21 of 21 propositions pass" in report
    for name in DRAWN:
        assert f"![{name}]({name}.png)" in report
    assert "**Not drawn:**" not in report
    assert "FAILED" not in report


def test_update_map_numbers(quick_run):
    d = _cached(quick_run[0], "update_map")
    i = list(d["taus"]).index(0.1)
    low = d["p_lin"] < 0.5
    assert np.all(d["mean_lin"][i, low] < d["part_lin"][i, low])
    assert float(d["ref_mean"]) == pytest.approx(0.25996, abs=5e-6)


def test_equivalence_numbers(quick_run):
    d = _cached(quick_run[0], "equivalence")
    assert d["max_error"].size >= 50 and d["max_error"].max() < 1e-8


def test_chi2_weight_numbers(quick_run):
    d = _cached(quick_run[0], "chi2_weight")
    p = d["ps"]
    np.testing.assert_allclose(d["beta"][:, 0], p * (1 - p) / 2, rtol=1e-2)  # tau = 1e-4
    np.testing.assert_allclose(d["beta_marks"], d["half_tau_kl"], rtol=1e-9)


def test_log_ratio_and_convergence_numbers(quick_run):
    d = _cached(quick_run[0], "log_ratios")
    assert np.all(d["mean_incorrect"] < -d["p"][None, :] / d["taus"][:, None])
    c = _cached(quick_run[0], "convergence")
    assert np.all(np.diff(c["mean"], axis=1) >= 0) and np.all(c["part_failure"] <= c["mean_failure"])


def test_finite_sample_and_dynamics_numbers(quick_run):
    d = _cached(quick_run[0], "finite_sample")
    err = d["pmd_mean/mean_abs_error"]
    assert np.all(err[..., -1] < err[..., 0])
    t = _cached(quick_run[0], "training_dynamics")
    for s in t["settings"]:
        for a in t["algorithms"]:
            y = t[f"{s}/{a}/success_mean"]
            assert np.all(y[:, -1] > y[:, 0] + 0.3)


def test_rerun_reads_the_cache_and_a_metrics_log_draws_the_llm_figure(quick_run, tmp_path):
    out = quick_run[0]
    log = tmp_path / "run.jsonl"
    rows = []
    for alg in ("pmd_mean", "grpo"):
        for step in range(0, 30, 10):
            rows.append(
                {
                    "run": alg,
                    "algorithm": alg,
                    "step": step,
                    "train/reward": 0.3 + step / 100,
                    "train/response_length": 20 - step / 10,
                    "train/entropy": 1.0 - step / 60,
                }
            )
            rows.append(
                {
                    "run": alg,
                    "algorithm": alg,
                    "step": step,
                    "eval/avg@k": 0.2 + step / 200,
                    "eval/pass@k": 0.5 + step / 100,
                    "eval/maj@k": 0.25 + step / 150,
                }
            )
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code = paper_repro.main(
        ["--quick", "--out", out, "--figure", "update_map", "--figure", "llm", "--llm-log", str(log)]
    )
    assert code == 0
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "read from cache" in report  # update_map's numbers were not recomputed
    assert "![llm](llm.png)" in report and "eval/avg@k 0.200 → 0.300" in report
    assert os.path.getsize(os.path.join(out, "llm.png")) > 5_000


def test_malformed_metrics_log_names_the_line(tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text('{"run": "a", "algorithm": "grpo", "step": 0}\n{"run": "a", "step": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2: record lacks algorithm"):
        paper_repro.main(["--out", str(tmp_path), "--figure", "llm", "--llm-log", str(log)])


def test_without_logs_the_llm_figure_comes_from_a_cpu_comparison_on_one_footing(quick_run):
    out = quick_run[0]
    logs = {
        alg: metrics_log.read([os.path.join(out, "llm", alg, "metrics.jsonl")])
        for alg in ("pmd_mean", "grpo")
    }
    steps = {alg: [r["step"] for r in records] for alg, records in logs.items()}
    assert steps["pmd_mean"] == steps["grpo"] and steps["pmd_mean"][-1] > 0
    # Same seed and data: both start from the same warm-started model, so the step-0 evaluation agrees.
    first = {alg: records[0] for alg, records in logs.items()}
    assert first["pmd_mean"]["eval/avg@k"] == first["grpo"]["eval/avg@k"]
    report = open(os.path.join(out, "REPORT.md")).read()
    assert "PMD-mean eval/avg@k" in report and "GRPO eval/avg@k" in report


def test_no_llm_training_leaves_the_figure_undrawn(tmp_path):
    code = paper_repro.main(["--quick", "--out", str(tmp_path), "--figure", "llm", "--no-llm-training"])
    assert code == 0
    assert "**Not drawn:** no metrics log found" in open(os.path.join(tmp_path, "REPORT.md")).read()
    assert not os.path.exists(os.path.join(tmp_path, "llm", "pmd_mean"))
