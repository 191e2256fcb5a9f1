"""``python -m pmdlab.bandit``: compare algorithms on one bandit task in seconds.

python -m pmdlab.bandit                                  # the defaults below
python -m pmdlab.bandit bandit.n=4 bandit.staleness=4    # fewer, staler rollouts
python -m pmdlab.bandit algorithms=pmd_mean,grpo tau=0.05 out=runs.json
python -m pmdlab.bandit --help                           # every setting
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from pmdlab.rl.algorithms import ALGORITHMS, Algorithm
from pmdlab.rl.config import parse, to_dict

from .task import TaskConfig
from .train import BanditConfig, train


@dataclass(frozen=True)
class CompareConfig:
    """Train several algorithms on the same bandit task and print how they fare.

    Attributes:
        bandit: the run settings, shared by every algorithm (its algorithm field is replaced).
        algorithms: algorithm names to compare, comma-separated.
        tau: PMD's tau for pmd_mean and pmd_part.
        seeds: seeds (each sets the task and the sampling), comma-separated.
        out: optional JSON file for the per-step metrics of every run.
    """

    bandit: BanditConfig = field(
        default_factory=lambda: BanditConfig(
            task=TaskConfig(prompts=128, responses=64),
            policy="loglinear",
            steps=100,
            n=4,
            minibatches=8,
            lr=0.05,
        )
    )
    algorithms: tuple[str, ...] = ALGORITHMS
    tau: float = 0.1
    seeds: tuple[int, ...] = (0, 1, 2)
    out: str | None = None

    def __post_init__(self):
        for name in self.algorithms:
            if name not in ALGORITHMS:
                raise ValueError(f"algorithms: {name!r} is not one of {ALGORITHMS}")
        if not self.seeds:
            raise ValueError("seeds must name at least one seed")
        self.algorithm_table()  # validates tau

    def algorithm_table(self) -> dict[str, Algorithm]:
        """Each compared algorithm, the PMD ones with ``tau``."""
        return {name: Algorithm(name, tau=self.tau) for name in self.algorithms}


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse(CompareConfig, argv, prog="python -m pmdlab.bandit")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    b = cfg.bandit
    print(
        f"{b.task.prompts} prompts x {b.task.responses} responses ({b.task.rewards} rewards, "
        f"initial success {b.task.difficulty}), {b.policy} policy, n = {b.n}, {b.minibatches} minibatches, "
        f"staleness {b.staleness}, {b.steps} steps, seeds {list(cfg.seeds)}"
    )
    marks = sorted({0, b.steps // 10, b.steps // 4, b.steps // 2, b.steps})
    print(
        f"\n{'algorithm':10s}"
        + "".join(f"{'step ' + str(m):>14s}" for m in marks)
        + f"{'collapses':>11s}{'KL/step':>9s}{'time':>7s}"
    )
    records = {}
    start = time.perf_counter()
    for name, alg in cfg.algorithm_table().items():
        t0 = time.perf_counter()
        runs = []
        for seed in cfg.seeds:
            run_cfg = dataclasses.replace(
                b, algorithm=alg, seed=seed, task=dataclasses.replace(b.task, seed=seed)
            )
            runs.append(train(run_cfg).metrics)
        elapsed = time.perf_counter() - t0
        success = np.stack([m["success_mean"] for m in runs])
        cells = "".join(f"{success[:, m].mean():8.3f}±{success[:, m].std():.3f}" for m in marks)
        collapses = np.mean([np.nansum(m["collapses"]) for m in runs])
        kl = np.mean([np.nanmean(m["kl_old_new"]) for m in runs])
        print(f"{name:10s}{cells}{collapses:11.1f}{kl:9.4f}{elapsed:6.1f}s")
        records[name] = [{k: v.tolist() for k, v in m.items()} for m in runs]
    print(
        f"\n{len(cfg.algorithms)} algorithms x {len(cfg.seeds)} seeds x {b.steps} steps in "
        f"{time.perf_counter() - start:.1f} s"
    )
    print(
        "success = mean over prompts of pi(correct), mean ± sd over seeds; collapses = prompts whose "
        f"success fell by more than {b.collapse_drop} in one step (mean over seeds)"
    )
    if cfg.out:
        with open(cfg.out, "w") as f:
            json.dump({"config": to_dict(cfg), "runs": records}, f)
        print(f"per-step metrics written to {cfg.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
