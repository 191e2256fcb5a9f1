"""Runs over algorithms and seeds, and their outcome with intervals over seeds.

    python -m pmdlab.llm.sweep --config recipes/smollm2-arithmetic-cpu.yaml \\
        --algorithms pmd_mean,grpo,pmd_part --seeds 0,1,2 --jobs 2 --threads 1 --out runs/seeds steps=15
    python -m pmdlab.llm.sweep --summary runs/seeds          # the table again, from the logs

Each run is ``python -m pmdlab.llm.train --config CONFIG algorithm=NAME
seed=S out=OUT/NAME-seedS threads=T [key=value ...]`` in its own process
(``--jobs`` at a time; its output in ``OUT/NAME-seedS/train.log``). A run
whose log already reaches the last step is not run again, and one that was
interrupted continues from its last checkpoint (``--resume``), so a stopped
sweep is restarted with the same command. SIGTERM or Ctrl-C is passed on to
the runs, which finish their step, checkpoint it and stop; the sweep then
exits with status ``128 + signal``.

The summary gives, per algorithm, the held-out metrics at the first and the
last evaluation as the mean over seeds with a 95% interval (Student-t below
10 seeds, named beside each: :mod:`pmdlab.rl.stats`), the gain (paired: one
per seed), and the difference of every other algorithm's final held-out
metrics from the first algorithm's, paired over the seeds they share.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from pmdlab.rl.algorithms import ALGORITHMS
from pmdlab.rl.stats import difference_interval, mean_interval

from . import checkpoint, metrics_log
from .stopping import StopSignals

__all__ = ["outcomes", "summary", "main"]

METRICS = ("eval/avg@k", "eval/pass@k", "eval/maj@k")


def _run_name(algorithm: str, seed: int) -> str:
    return f"{algorithm}-seed{seed}"


def _finished(run_dir: Path, steps: int) -> bool:
    log = run_dir / "metrics.jsonl"
    return log.exists() and any(r["step"] >= steps for r in metrics_log.read([log]))


def _command(config: str | None, algorithm: str, seed: int, run_dir: Path, threads: int, extra, resume):
    cmd = [sys.executable, "-m", "pmdlab.llm.train"]
    cmd += ["--config", config] if config else []
    cmd += [f"algorithm={algorithm}", f"seed={seed}", f"out={run_dir}", f"threads={threads}", *extra]
    return cmd + (["--resume"] if resume else [])


def _steps(config: str | None, extra: list[str]) -> int:
    from pmdlab.rl.config import parse

    from .settings import TrainConfig

    argv = (["--config", config] if config else []) + list(extra)
    return parse(TrainConfig, argv, prog="python -m pmdlab.llm.sweep").steps


def run_sweep(
    config, algorithms, seeds, out: Path, jobs: int, threads: int, extra: list[str]
) -> tuple[int, int]:
    """Run every (algorithm, seed) not yet finished, ``jobs`` at a time.

    Return ``(runs that failed, stop signal or 0)``. Each run is a session of its own, so a
    Ctrl-C reaches the sweep only; the sweep passes every SIGTERM or SIGINT on to its runs (the
    first lets each finish and checkpoint its step, a second abandons it) and starts no more."""
    steps = _steps(config, extra)  # also checks the settings once, before any run starts
    todo = [(a, s) for s in seeds for a in algorithms if not _finished(out / _run_name(a, s), steps)]
    done = len(algorithms) * len(seeds) - len(todo)
    print(f"{len(todo)} runs to do ({done} already finished), {jobs} at a time, {threads} threads each")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    running: dict[str, tuple[subprocess.Popen, float, Path]] = {}
    failed, forwarded = [], 0
    # keep: the sweep stays to pass a second signal on too (its runs then abandon their step). The
    # loop, not the handler, passes them on: it reaches a run started just before, and may print.
    with StopSignals(keep=True) as signals:
        while running or (todo and not signals.received):  # a stop starts no more runs
            while todo and len(running) < jobs and not signals.received:
                algorithm, seed = todo.pop(0)
                run_dir = out / _run_name(algorithm, seed)
                run_dir.mkdir(parents=True, exist_ok=True)
                resume = checkpoint.latest_valid(run_dir) is not None
                log = open(run_dir / "train.log", "a")
                cmd = _command(config, algorithm, seed, run_dir, threads, extra, resume)
                proc = subprocess.Popen(
                    cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
                )
                log.close()
                running[run_dir.name] = (proc, time.perf_counter(), run_dir)
                print(f"  started {run_dir.name}" + (" (resumed)" if resume else ""), flush=True)
            for signum in signals.received[forwarded:]:
                print(f"  {signal.Signals(signum).name}: passed on to {len(running)} runs", flush=True)
                for proc, _, _ in running.values():
                    proc.send_signal(signum)
            forwarded = len(signals.received)
            time.sleep(0.5)
            for name, (proc, start, run_dir) in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[name]
                took = time.perf_counter() - start
                if proc.returncode in {c for s in signals.received for c in (128 + s, -s)}:
                    # 128 + s: stopped after a checkpointed step; -s: stopped before its first step
                    print(f"  stopped {name} after {took / 60:.1f} min", flush=True)
                elif proc.returncode:
                    failed.append(name)
                    print(
                        f"  FAILED {name} (exit {proc.returncode}); see {run_dir / 'train.log'}", flush=True
                    )
                else:
                    print(f"  finished {name} in {took / 60:.1f} min", flush=True)
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
    if signals.received:
        print("stopped: run the same command to continue where each run stopped", file=sys.stderr)
    return len(failed), signals.signum


#: Training metrics summarised by their mean over each run's last :data:`TAIL` steps.
TRAINING = ("train/entropy", "train/response_length")
TAIL = 10


def _seed_order(log) -> tuple[float, str]:
    """Logs ordered by the seed in their run folder's name (``pmd_mean-seed2``), so that the runs of
    every algorithm line up seed by seed."""
    match = re.search(r"seed(\d+)", Path(log).parent.name)
    return (int(match.group(1)) if match else float("inf"), str(log))


def outcomes(logs) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{algorithm: {metric: {"first"|"last": [one value per run]}}}`` from metrics logs, each
    algorithm's runs in seed order.

    For held-out metrics "first" and "last" are the metric at the run's first and last evaluation;
    for :data:`TRAINING` metrics "last" is their mean over the run's last :data:`TAIL` steps;
    ``perf/wall_s`` has only "last", each run's longest ``perf/wall_s``.
    Every run must have evaluated at the same steps, so that the runs compare."""
    out: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    eval_steps = {}
    for log in sorted(logs, key=_seed_order):
        records = metrics_log.read([log])
        if not records:
            raise ValueError(f"{log}: the log is empty")
        evals = sorted((r for r in records if r.get("eval/avg@k") is not None), key=lambda r: r["step"])
        if len(evals) < 2:
            raise ValueError(f"{log}: needs evaluations at two steps at least, found {len(evals)}")
        eval_steps[str(log)] = [r["step"] for r in evals]
        algorithm = records[0]["algorithm"]
        for metric in METRICS:
            out[algorithm][metric]["first"].append(float(evals[0][metric]))
            out[algorithm][metric]["last"].append(float(evals[-1][metric]))
        steps = sorted((r for r in records if r.get(TRAINING[0]) is not None), key=lambda r: r["step"])
        for metric in TRAINING:
            tail = [float(r[metric]) for r in steps[-TAIL:] if r.get(metric) is not None]
            if tail:
                out[algorithm][metric]["last"].append(sum(tail) / len(tail))
        wall = [r["perf/wall_s"] for r in records if r.get("perf/wall_s") is not None]
        if wall:
            out[algorithm]["perf/wall_s"]["last"].append(max(wall))
    if len({tuple(s) for s in eval_steps.values()}) > 1:
        detail = "; ".join(f"{k}: {v}" for k, v in eval_steps.items())
        raise ValueError(f"the runs evaluated at different steps, so they do not compare: {detail}")
    return {a: {m: dict(v) for m, v in ms.items()} for a, ms in out.items()}


def _mean_with_interval(values: list[float]) -> str:
    """``mean [low, high] (method, n seeds)`` over seeds; one seed has no interval."""
    return str(mean_interval(values)) if len(values) > 1 else f"{values[0]:.3f} (1 seed)"


def summary(logs) -> str:
    """A Markdown table of :func:`outcomes` with 95% intervals over seeds, and the paired differences."""
    result = outcomes(logs)
    order = list(ALGORITHMS)  # PMD-mean first: the others are compared with it
    algorithms = sorted(result, key=lambda a: order.index(a) if a in order else len(order))
    lines = [
        "| algorithm | seeds | metric | first evaluation | last evaluation | gain |",
        "|---|---|---|---|---|---|",
    ]
    for a in algorithms:
        for metric in METRICS:
            first, last = result[a][metric]["first"], result[a][metric]["last"]
            gains = [y - x for x, y in zip(first, last)]  # paired: one gain per seed
            cells = [_mean_with_interval(v) for v in (first, last, gains)]
            lines.append(f"| {a} | {len(first)} | {metric} | " + " | ".join(cells) + " |")
    for a in algorithms:
        for metric in TRAINING:
            values = result[a].get(metric, {}).get("last", [])
            if values:
                cell = _mean_with_interval(values)
                lines.append(f"| {a} | {len(values)} | {metric} (last {TAIL} steps) | | {cell} | |")
    reference, differences = algorithms[0], []
    for a in algorithms[1:]:
        for metric in (*METRICS, *TRAINING):
            if metric not in result[a] or metric not in result[reference]:
                continue
            ours, theirs = result[a][metric]["last"], result[reference][metric]["last"]
            if min(len(ours), len(theirs)) < 2:
                continue
            d = difference_interval(ours, theirs, paired=len(ours) == len(theirs))  # the same seeds
            verdict = "differ" if d.excludes_zero() else "not separated by this many seeds"
            differences.append(f"- last {metric}, {a} − {reference}: {d} ({verdict})")
    if differences:
        lines += ["", *differences]
    walls = [w / 60 for a in algorithms for w in result[a].get("perf/wall_s", {}).get("last", [])]
    if walls:
        lines.append(f"\nwall time per run: {min(walls):.1f}–{max(walls):.1f} min")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pmdlab.llm.sweep", description=__doc__.splitlines()[0], epilog="key=value: settings"
    )
    parser.add_argument("--config", help="a settings file, as for python -m pmdlab.llm.train")
    parser.add_argument(
        "--algorithms", default="pmd_mean,grpo", help="comma-separated (default pmd_mean,grpo)"
    )
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per run (default cores/jobs)"
    )
    parser.add_argument("--out", default="runs/sweep", help="folder of the runs (default runs/sweep)")
    parser.add_argument("--summary", metavar="DIR", help="only print the summary of the runs under DIR")
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if "=" not in a or a.startswith("-")]
    if unknown:
        parser.error(f"unrecognised arguments: {' '.join(unknown)}")
    try:
        if args.summary:
            logs = sorted(Path(args.summary).glob("*/metrics.jsonl"))
            if not logs:
                raise ValueError(f"no */metrics.jsonl under {args.summary}")
            print(summary(logs))
            return 0
        if args.jobs < 1:
            raise ValueError(f"--jobs must be at least 1, got {args.jobs}")
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
        out = Path(args.out)
        failed, signum = run_sweep(args.config, algorithms, seeds, out, args.jobs, threads, extra)
        if signum:
            return 128 + signum
        logs = [out / _run_name(a, s) / "metrics.jsonl" for a in algorithms for s in seeds]
        print(summary([p for p in logs if p.exists()]))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
