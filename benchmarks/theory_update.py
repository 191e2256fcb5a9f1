"""Benchmark: PMD-mean's exact update on 1,000 prompts x 1,000 actions.

Compares ``pmdlab.theory.pmd_mean`` with a naive reference measured in the
same run: for each prompt, ``scipy.optimize.brentq`` on lambda with
``scipy.special.wrightomega``, then the policy and log-ratios from the root.
Both produce the same outputs (policy, log-ratio, lambda); the script prints
the time per call, the speed ratio and the largest differences.

    python benchmarks/theory_update.py [--prompts 1000] [--actions 1000] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from scipy.optimize import brentq
from scipy.special import wrightomega


def naive_pmd_mean(pi: np.ndarray, r: np.ndarray, tau: float):
    """Per-prompt brentq on lambda in [1e-300, max a], to full double precision."""
    n, k = pi.shape
    policy, log_ratio, lam = np.empty((n, k)), np.empty((n, k)), np.empty(n)
    for i in range(n):
        p = pi[i]
        a = (r[i] - p @ r[i]) / tau

        def excess(lmb, a=a, p=p):
            return p @ np.exp(a - wrightomega(a + np.log(lmb))) - 1.0

        lmb = brentq(excess, 1e-300, a[p > 0].max(), xtol=1e-300, rtol=4 * np.finfo(float).eps)
        w = wrightomega(a + np.log(lmb))
        policy[i], log_ratio[i], lam[i] = p * w / lmb, a - w, lmb
    return policy, log_ratio, lam


def median_time(fn, repeats: int) -> float:
    times = []
    result = fn()  # warm-up; results are held, as a caller would
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    del result
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=1000)
    parser.add_argument("--actions", type=int, default=1000)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="worker threads (default: usable cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads is not None:
        os.environ["PMDLAB_NUM_THREADS"] = str(args.threads)

    from pmdlab.theory import pmd_mean
    from pmdlab.theory._blocks import num_threads

    rng = np.random.default_rng(args.seed)
    n, k = args.prompts, args.actions
    pi = rng.dirichlet(np.ones(k), size=n)
    success = rng.uniform(0.02, 0.98, size=(n, 1))
    cases = {
        "general rewards U(0,1)": rng.uniform(size=(n, k)),
        "binary rewards {0,1}": (rng.uniform(size=(n, k)) < success).astype(np.float64),
    }
    print(f"{n} prompts x {k} actions = {n * k:,} entries, tau = {args.tau}, threads = {num_threads()}")
    print(
        f"{'case':26s} {'pmdlab':>10s} {'naive':>10s} {'ratio':>8s} {'max|dpolicy|':>13s} "
        f"{'max|dlog_ratio|':>16s} {'max rel dlambda':>16s}"
    )
    for name, r in cases.items():
        ours = median_time(lambda r=r: pmd_mean(pi, r, args.tau), args.repeats)
        t0 = time.perf_counter()
        ref_policy, ref_log_ratio, ref_lam = naive_pmd_mean(pi, r, args.tau)
        naive = time.perf_counter() - t0
        res = pmd_mean(pi, r, args.tau)
        dpol = np.abs(res.policy - ref_policy).max()
        dlr = np.abs(res.log_ratio - ref_log_ratio).max()
        dlam = np.abs(res.lam / ref_lam - 1.0).max()
        print(
            f"{name:26s} {ours * 1e3:8.2f}ms {naive * 1e3:8.0f}ms {naive / ours:7.0f}x "
            f"{dpol:13.2e} {dlr:16.2e} {dlam:16.2e}"
        )


if __name__ == "__main__":
    main()
