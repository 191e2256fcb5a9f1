"""Benchmark: asynchronous against synchronous training, same settings, in one run.

For each setting it runs ``python -m pmdlab.llm.train`` three ways, with no
evaluation, ``--rounds`` times in turns, and reads the step times from the logs
(``perf/wall_s`` between consecutive steps, the median over the steps after
``--warmup``):

1. synchronous, 1 thread: the rollout ``R1`` and update ``U1`` times;
2. synchronous, 2 threads (the machine's two cores in one process): ``R2``,
   ``U2`` and the synchronous step time, the baseline;
3. asynchronous (``async_rollouts=true``), one training and one rollout
   process of 1 thread each: the asynchronous step time.

Where rollout and training share the two cores, overlap gains at most

    bound = (R2 + U2) / max(R1, U1)

(the synchronous step against the slower of the two halves, each on its own
core); the script prints that bound, the measured ratio (synchronous step
time / asynchronous step time), the ratio as a share of the bound, and the
response tokens per second of each run. It also prints the rollout and update
times each process measured while both ran (two processes on two cores slow
each other on some machines, which the bound does not know) and the pipeline's
own cost per step: the asynchronous step less the slower half. With the halves on their own devices
the bound is ``(R + U) / max(R, U)``, printed for the 2-thread times.

A shared machine's speed drifts between runs, so each round's three runs are also
compared with each other: the script prints each round's ratio and share of its own
bound, and their means over rounds with 95% intervals (method named beside each).

Settings: ``embedded`` (the trainer's defaults: the tiny model, 32 prompts x 8,
2 minibatches) and ``balanced`` (generation about half the step: 8 responses of
up to 24 tokens to 8 two-term problems, one minibatch), or ``--config FILE``
with overrides (e.g. the SmolLM2 recipe).

    python benchmarks/async_rl.py                       # embedded and balanced, 40 steps each
    python benchmarks/async_rl.py --settings balanced --steps 60
    python benchmarks/async_rl.py --config recipes/smollm2-arithmetic-cpu.yaml --steps 8 --warmup 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pmdlab.rl.stats import mean_interval

SETTINGS = {
    "embedded": [],
    "balanced": [
        "prompts=8",
        "n=8",
        "minibatches=1",
        "sampling.max_new_tokens=24",
        "sampling.temperature=1.5",
    ],
}
ROOT = Path(__file__).resolve().parents[1]


def run(args: list[str], out: Path) -> list[dict]:
    """The metrics records of one training run (its command line ``args``)."""
    cmd = [sys.executable, "-m", "pmdlab.llm.train", *args, f"out={out}", "eval_every=0", "save_every=0"]
    cmd.append("progress=false")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def steady(runs: list[list[dict]], warmup: int) -> dict[str, float]:
    """Medians over the steps after ``warmup`` of every run: step time, rollout, update, response
    tokens per step, lag."""
    wall, later = [], []
    for records in runs:
        steps = [r for r in records if "perf/update_s" in r]
        wall += [b["perf/wall_s"] - a["perf/wall_s"] for a, b in zip(steps, steps[1:])][warmup:]
        later += steps[warmup + 1 :]
    if len(wall) < 3:
        raise SystemExit(f"too few steps after the warm-up ({len(wall)}): raise --steps")
    return {
        "step_s": statistics.median(wall),
        "rollout_s": statistics.median(r["perf/rollout_s"] for r in later),
        "update_s": statistics.median(r["perf/update_s"] for r in later),
        "tokens": statistics.mean(r["perf/rollout_tokens_per_s"] * r["perf/rollout_s"] for r in later),
        "lag": statistics.mean(r.get("async/lag", 0.0) for r in later),
    }


def bound_of(one: dict[str, float], two: dict[str, float]) -> float:
    """The most overlap gains on two cores: ``(R2 + U2) / max(R1, U1)``."""
    return (two["rollout_s"] + two["update_s"]) / max(one["rollout_s"], one["update_s"])


def measure(name: str, base: list[str], steps: int, warmup: int, staleness: int, rounds: int, folder: Path):
    """The three runs of one setting, ``rounds`` times in turns (a machine whose speed drifts
    weighs on all three alike), then the table."""
    common = [*base, f"steps={steps}"]
    variants = {
        "sync1": [*common, "threads=1"],
        "sync2": [*common, "threads=2"],
        "async": [*common, "threads=1", "async_rollouts=true", f"max_staleness={staleness}"],
    }
    started = time.perf_counter()
    logs = {v: [] for v in variants}
    for i in range(rounds):
        for v, args in variants.items():
            logs[v].append(run(args, folder / f"{name}-{v}-{i}"))
    one, two, asyn = (steady(logs[v], warmup) for v in variants)
    bound = bound_of(one, two)
    ratio = two["step_s"] / asyn["step_s"]
    rounds_ratio, rounds_share = [], []  # each round's three runs, side by side in time
    for i in range(rounds):
        r1, r2, ra = (steady([logs[v][i]], warmup) for v in variants)
        rounds_ratio.append(r2["step_s"] / ra["step_s"])
        rounds_share.append(rounds_ratio[-1] / bound_of(r1, r2))
    devices = (two["rollout_s"] + two["update_s"]) / max(two["rollout_s"], two["update_s"])
    print(f"\n{name}: {' '.join(base) or 'the defaults'}")
    print(
        f"  {rounds} x {steps} steps of each run, in turns; medians over the steps after the first {warmup}"
    )
    for label, r in (("1 thread ", one), ("2 threads", two)):
        print(f"  {label}  rollout {r['rollout_s'] * 1e3:8.1f} ms   update {r['update_s'] * 1e3:8.1f} ms")
    for label, r in (("synchronous, 2 threads", two), (f"asynchronous, 1+1, lag<={staleness}", asyn)):
        tokens_s = r["tokens"] / r["step_s"]
        print(f"  {label:30s} {r['step_s'] * 1e3:8.1f} ms/step {tokens_s:9.0f} response tokens/s")
    print(f"  mean lag of the asynchronous batches: {asyn['lag']:.2f}")
    co = (two["rollout_s"] + two["update_s"]) / max(asyn["rollout_s"], asyn["update_s"])
    overhead = asyn["step_s"] - max(asyn["rollout_s"], asyn["update_s"])
    print(
        f"  overlapping  rollout {asyn['rollout_s'] * 1e3:8.1f} ms   update {asyn['update_s'] * 1e3:8.1f} ms"
        "   (each process's own times while both run)"
    )
    print(f"  bound (R2 + U2) / max(R1, U1) = {bound:.2f}x")
    print(f"  measured sync/async           = {ratio:.2f}x  ({ratio / bound:.0%} of the bound)")
    if rounds > 1:
        each = ", ".join(f"{r:.2f}x ({f:.0%})" for r, f in zip(rounds_ratio, rounds_share))
        print(f"  round by round: {each}")
        gain, share = mean_interval(rounds_ratio), mean_interval(rounds_share)
        print(
            f"  mean over rounds: {gain.estimate:.2f}x [{gain.low:.2f}, {gain.high:.2f}], "
            f"{share.estimate:.0%} [{share.low:.0%}, {share.high:.0%}] of each round's bound "
            "(95% intervals)"
        )
    print(f"  against the overlapping halves' own times (R2 + U2) / max(R, U) = {co:.2f}x ({ratio / co:.0%})")
    print(f"  pipeline overhead per step (async step - the slower half) = {overhead * 1e3:.1f} ms")
    print(f"  on separate devices the bound would be (R2 + U2) / max(R2, U2) = {devices:.2f}x")
    print(f"  ({time.perf_counter() - started:.0f} s for the {3 * rounds} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="embedded,balanced", help="comma-separated: embedded, balanced")
    parser.add_argument("--config", help="a trainer config file instead of the settings")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the medians")
    parser.add_argument("--max-staleness", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=4, help="times each run is repeated, in turns")
    parser.add_argument("overrides", nargs="*", help="key=value settings added to each run")
    args = parser.parse_args()
    print(f"benchmarks/async_rl.py on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="pmdlab-async-bench-") as tmp:
        if args.config:
            base = ["--config", args.config, *args.overrides]
            measure(
                Path(args.config).stem,
                base,
                args.steps,
                args.warmup,
                args.max_staleness,
                args.rounds,
                Path(tmp),
            )
            return
        for name in args.settings.split(","):
            if name not in SETTINGS:
                raise SystemExit(f"unknown setting {name!r}; choose from {sorted(SETTINGS)}")
            base = [*SETTINGS[name], *args.overrides]
            measure(name, base, args.steps, args.warmup, args.max_staleness, args.rounds, Path(tmp))


if __name__ == "__main__":
    main()
