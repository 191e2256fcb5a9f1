"""One machine, no ``torchrun``: start the trainer and its rollout workers as processes and watch them.

``python -m pmdlab.llm.train async_rollouts=true ...`` without ``WORLD_SIZE``
runs :func:`launch`: what ``torchrun --nproc_per_node 1+rollout_ranks``
would start, with a supervisor that passes stop signals to the trainer and
takes every process down with the first that dies.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from ..distributed import check_devices
from ..stopping import StopSignals

__all__ = ["launch"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child: SIGKILL when the supervisor dies (Linux ``PR_SET_PDEATHSIG``), so no orphan is left."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except OSError:
        pass


def _describe(code: int) -> str:
    return f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def launch(argv: list[str], config, poll_s: float = 0.2) -> int:
    """Run ``python -m pmdlab.llm.train argv`` as one training and ``rollout_ranks`` rollout processes
    on this machine (what ``torchrun --nproc_per_node 1+rollout_ranks`` would start), and watch them.

    SIGTERM and SIGINT go to the trainer, which checkpoints and stops (exit 143 or 130, returned).
    A worker that dies stops the trainer at once (its work since the last checkpoint is lost) and the
    run exits 1 naming the worker; when the trainer exits the workers are stopped. The processes'
    ids are written to ``<out>/processes.json``. On GPUs, process ``r`` runs on ``cuda:r``: one GPU
    per process is needed (:func:`~pmdlab.llm.distributed.check_devices`)."""
    world = 1 + config.rollout_ranks
    check_devices(world, config.device)  # every process its own GPU, or a one-line error
    threads = config.threads or max(1, (os.cpu_count() or 1) // world)
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(
            os.environ,
            WORLD_SIZE=str(world),
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(world),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS=str(threads),
        )
        if rank:  # only the trainer shows progress
            argv_rank = [*argv, "progress=false"]
        else:
            argv_rank = argv
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pmdlab.llm.train", *argv_rank],
                env=env,
                start_new_session=True,  # a terminal's Ctrl-C reaches the supervisor only
                preexec_fn=_die_with_parent,
            )
        )
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "processes.json").write_text(
        json.dumps(
            {"supervisor": os.getpid(), "trainer": procs[0].pid, "rollout": [p.pid for p in procs[1:]]}
        )
    )

    def forward(signum):
        if procs[0].poll() is None:
            procs[0].send_signal(signum)

    with StopSignals(on_signal=forward, keep=True):
        return _watch(procs, poll_s)


def _watch(procs: list[subprocess.Popen], poll_s: float) -> int:
    """Wait for the trainer's exit status; stop everything when a process dies."""
    try:
        while True:
            trainer = procs[0].poll()
            if trainer is not None:
                _stop(procs[1:], grace_s=10.0)
                if trainer < 0:
                    print(f"error: the trainer (rank 0) died with {_describe(trainer)}", file=sys.stderr)
                    return 128 - trainer
                return trainer
            for rank, p in enumerate(procs[1:], start=1):
                code = p.poll()
                if code not in (None, 0):
                    _stop(procs, grace_s=0.0)
                    print(
                        f"error: rollout worker rank {rank} (pid {p.pid}) died with {_describe(code)}; "
                        f"the trainer was stopped. Continue from the last checkpoint with --resume",
                        file=sys.stderr,
                    )
                    return 1
            time.sleep(poll_s)
    finally:
        _stop(procs, grace_s=0.0)


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    """Wait up to ``grace_s`` for the processes to exit, then kill those still running."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        if p.poll() is None:
            p.kill()
            p.wait()
