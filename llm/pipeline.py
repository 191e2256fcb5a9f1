"""Asynchronous rollouts: some ranks generate while the others train, with bounded staleness.

``async_rollouts=true`` splits a ``torchrun`` world (:func:`.distributed.setup`):
the last ``rollout_ranks`` ranks are rollout workers, the first ones train
(FSDP2 or DDP among themselves, as in synchronous training). Without
``torchrun``, :func:`launch` starts one training and ``rollout_ranks``
generating processes on this machine and watches them.

The protocol, all on ``torch.distributed`` (no sockets or queues of our own):

* **weights** move by broadcast from training rank 0 to the workers
  (``publish_group``: NCCL on GPUs, gloo on CPUs). Version ``v`` is the
  policy after ``v`` optimiser phases; version ``s + 1`` is published right
  after step ``s`` (not after the last). A worker receives every version in
  order on a background thread (:class:`WeightReceiver`), so publishing never
  waits for generation;
* **batches** go from the workers to training rank 0 as pickled objects
  (``channel_group``, gloo); batch ``b`` (the batch of step ``b``) is made
  by worker ``b mod rollout_ranks`` and received in order on a background
  thread (:class:`BatchReceiver`);
* **bounded lag**: a worker makes batch ``b`` only from a version
  ``v >= b - lead``, waiting for it if need be (``perf/weight_wait_s``), so
  every trained batch lags at most ``max_staleness`` versions. The lead is
  ``max_staleness``, less what carrying partial rollouts needs
  (:func:`.partial.sampling_lead`). With ``async_weights=latest`` it takes
  the newest version it has (the lag depends on timing); with ``fixed``
  exactly ``max(0, b - lead)``, which makes the run deterministic: with
  ``max_staleness=0`` it is the synchronous run, weight for weight;
* **pi_old** of a batch is computed by the worker that sampled it, with the
  weights that sampled it (:func:`.rollouts.generate_batch`);
* **checkpoints** hold the batches received and not yet trained on (with
  ``fixed``, first every batch up to ``step + lead - 1``, which come from
  versions older than the checkpoint's), and the data position after the
  last of them, with partial rollouts the worker's responses in progress at
  that point; ``--resume`` starts the workers there.

Faults: a worker that dies makes the trainer's next receive or broadcast
fail; the trainer raises :class:`WorkerDied` naming it. A worker whose
trainer is gone stops the same way. Under :func:`launch` a supervisor also
watches the processes: the first to die takes the others with it.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from pmdlab.rl.rollout import Rollout

from . import build, distributed
from .partial import PartialRollouts, next_partial_batch, sampling_lead
from .policy import LMPolicy
from .rollouts import generate_batch
from .tasks import make_reward

__all__ = [
    "BatchReceiver",
    "WeightReceiver",
    "WorkerDied",
    "flatten",
    "launch",
    "publish",
    "receivers_alive",
    "run_worker",
    "unflatten_into",
]


class WorkerDied(RuntimeError):
    """A rollout worker (or, seen from a worker, the trainer) stopped answering."""


# --------------------------------------------------------------------- weights


def flatten(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The tensors as one flat buffer per dtype, dtypes in order of first appearance."""
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t.detach().reshape(-1))
    return [torch.cat(parts) for parts in groups.values()]


def buffers_like(tensors: list[torch.Tensor], device) -> list[torch.Tensor]:
    """Empty buffers that :func:`flatten` of ``tensors`` would fill."""
    sizes: dict[torch.dtype, int] = {}
    for t in tensors:
        sizes[t.dtype] = sizes.get(t.dtype, 0) + t.numel()
    return [torch.empty(n, dtype=dtype, device=device) for dtype, n in sizes.items()]


@torch.no_grad()
def unflatten_into(tensors: list[torch.Tensor], flats: list[torch.Tensor]) -> None:
    """Copy :func:`flatten`'s buffers back into ``tensors`` (the inverse, in place)."""
    offsets = {f.dtype: 0 for f in flats}
    by_dtype = {f.dtype: f for f in flats}
    for t in tensors:
        start = offsets[t.dtype]
        t.copy_(by_dtype[t.dtype][start : start + t.numel()].view_as(t))
        offsets[t.dtype] = start + t.numel()


def trainable(model) -> list[tuple[str, torch.Tensor]]:
    """The published weights: every parameter that trains (with LoRA, the adapters)."""
    return [(n, p) for n, p in distributed.unwrap(model).named_parameters() if p.requires_grad]


def publish(model, ctx: distributed.Context) -> None:
    """Broadcast the trained weights from training rank 0 to every rollout worker.

    Every training rank calls it (under FSDP2 the full weights are gathered first)."""
    full = distributed.full_state_dict(model)  # a collective under FSDP2, None otherwise
    names = trainable(model)
    if not ctx.main:
        return
    tensors = [p if full is None else full[n] for n, p in names]
    for flat in flatten(tensors):
        dist.broadcast(flat.to(ctx.device), src=0, group=ctx.publish_group)


#: The names of the pipeline's receiving threads.
RECEIVER_THREADS = ("weights", "batches")


def receivers_alive() -> bool:
    """Whether a pipeline thread may still be blocked in a collective (receiving weights or batches).

    A process must not reach interpreter exit like that: the process group's C++ state is torn down
    under the blocked call and the process aborts (``terminate called without an active exception``,
    SIGABRT) instead of exiting with its status.
    """
    return any(t.name in RECEIVER_THREADS and t.is_alive() for t in threading.enumerate())


class WeightReceiver:
    """A worker's thread that receives every published version, in order, and keeps the newest ``keep``."""

    def __init__(self, like: list[torch.Tensor], versions: list[int], ctx: distributed.Context, keep: int):
        self._like, self._versions, self._ctx, self._keep = like, versions, ctx, keep
        self._store: dict[int, list[torch.Tensor]] = {}
        self._cond = threading.Condition()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._receive, name=RECEIVER_THREADS[0], daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        try:
            for version in self._versions:
                flats = buffers_like(self._like, self._ctx.device)
                for flat in flats:
                    dist.broadcast(flat, src=0, group=self._ctx.publish_group)
                with self._cond:
                    self._store[version] = flats
                    for old in sorted(self._store)[: -self._keep]:
                        del self._store[old]
                    self._cond.notify_all()
        except BaseException as e:  # the trainer is gone: the main thread reports it
            with self._cond:
                self.error = e
                self._cond.notify_all()

    def get(self, at_least: int, exact: bool = False) -> tuple[int, list[torch.Tensor]]:
        """Version ``at_least`` (``exact``) or the newest one at least as new, waiting for it."""
        with self._cond:
            while True:
                found = [v for v in self._store if (v == at_least if exact else v >= at_least)]
                if found:
                    return max(found), self._store[max(found)]
                if self.error is not None or not self._thread.is_alive():
                    raise WorkerDied(f"the trainer (rank 0) stopped publishing weights: {self.error}")
                self._cond.wait(1.0)

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise WorkerDied(f"the trainer (rank 0) stopped publishing weights: {self.error}")


# --------------------------------------------------------------------- batches


def _array(t: torch.Tensor):
    """A CPU tensor as a numpy array, or the tensor itself where numpy lacks its dtype (bfloat16)."""
    t = t.detach().cpu()
    return t if t.dtype == torch.bfloat16 else t.numpy()


def pack(batch: dict) -> dict:
    """A batch as it travels: its rollout as a dict and every tensor a numpy array where it can be.

    Pickling a numpy array costs microseconds; a tensor goes through ``torch.save`` (about 0.1 ms
    each), which made the batch's trip a few milliseconds of every step. :func:`unpack` inverts it."""
    rollout = batch["rollout"].to_dict()
    rollout["extras"] = {k: _array(v) for k, v in rollout["extras"].items()}
    fields = {k: _array(v) if isinstance(v, torch.Tensor) else v for k, v in rollout.items()}
    return {**batch, "rollout": fields, "old": _array(batch["old"])}


def unpack(batch: dict) -> dict:
    """The batch :func:`pack` sent, with CPU tensors again."""

    def tensor(x):
        return torch.from_numpy(x) if isinstance(x, np.ndarray) else x

    rollout = {k: tensor(v) for k, v in batch["rollout"].items() if k != "extras"}
    extras = {k: tensor(v) for k, v in batch["rollout"]["extras"].items()}
    return {**batch, "rollout": Rollout.from_dict({**rollout, "extras": extras}), "old": tensor(batch["old"])}


class BatchReceiver:
    """Training rank 0's thread receiving batches ``start, start + 1, ...`` from their workers, in order."""

    def __init__(self, ctx: distributed.Context, start: int, stop: int):
        self._ctx = ctx
        self._queue: queue.Queue = queue.Queue()
        self.error: tuple[int, BaseException] | None = None
        self._thread = threading.Thread(
            target=self._receive, args=(start, stop), name=RECEIVER_THREADS[1], daemon=True
        )
        self._thread.start()

    def worker_of(self, b: int) -> int:
        workers = self._ctx.rollout_ranks
        return workers[b % len(workers)]

    def _receive(self, start: int, stop: int) -> None:
        for b in range(start, stop):
            box = [None]
            try:
                dist.recv_object_list(box, src=self.worker_of(b), group=self._ctx.channel_group)
            except BaseException as e:
                self.error = (self.worker_of(b), e)
                self._queue.put(None)
                return
            self._queue.put(unpack(box[0]))

    def get(self, b: int, block: bool = True) -> dict | None:
        """Batch ``b`` (``None`` if ``block`` is false and it has not arrived)."""
        while True:
            try:
                batch = self._queue.get(timeout=1.0) if block else self._queue.get_nowait()
            except queue.Empty:
                if not block:
                    return None
                continue
            if batch is None:
                rank, e = self.error
                raise WorkerDied(f"rollout worker rank {rank} died or stopped sending batches: {e}")
            if batch["step"] != b:
                raise RuntimeError(f"expected the batch of step {b}, received step {batch['step']}")
            return batch


# --------------------------------------------------------------------- the worker


def run_worker(config, ctx: distributed.Context) -> None:
    """A rollout worker's whole life: the plan, the model, then batches until the last step."""
    for s in (signal.SIGINT, signal.SIGTERM):  # the trainer decides when the run stops
        signal.signal(s, signal.SIG_IGN)
    if config.threads:
        torch.set_num_threads(config.threads)
    box = [None]
    dist.recv_object_list(box, src=0, group=ctx.channel_group)
    plan = box[0]
    task = build.make_task(config)
    reward = make_reward(config.task.reward_values)
    model, tokenizer = build.load_model(plan["model_path"], config, ctx.device)
    if config.lora.rank:
        model = build.apply_lora(model, config.lora, plan["adapter"], seed=build.seed_of(config.seed, 4))
    backend = build.make_backend(config, model, tokenizer, Path(plan["model_path"]), ctx.device)
    policy = LMPolicy(
        model,
        tokenizer,
        config.sampling,
        token_budget=config.token_budget,
        chat_template=config.chat_template,
        system_prompt=config.system_prompt,
        backend=backend,
    )
    params = [p for _, p in trainable(model)]
    fixed = config.async_weights == "fixed"
    k, lead = config.max_staleness, worker_lead(config)
    receiver = WeightReceiver(params, plan["versions"], ctx, keep=k + 2 if fixed else 1)
    if plan["task_state"] is not None:
        task.set_state(plan["task_state"])
    # with old_source=current the trainer computes pi_old itself: the sampler's log-probs suffice here
    old_source = "sampler" if config.algorithm.old_source == "current" else config.algorithm.old_source
    partial = None
    if config.partial_tokens:
        partial = PartialRollouts(policy, task, reward, config.n, config.partial_tokens, old_source)
        if plan["partial_state"] is not None:
            partial.set_state(plan["partial_state"])
    version = None
    for b in range(plan["start"], config.steps):
        if partial is None:
            problems = task.train_batch(config.prompts)  # every worker draws every batch: one data order
            if b % ctx.world_size != ctx.rank:
                continue
        waited = time.perf_counter()
        v, flats = receiver.get(max(plan["versions"][0], b - lead), exact=fixed)
        waited = time.perf_counter() - waited
        if v != version:
            unflatten_into(params, flats)
            if hasattr(backend, "update_weights"):
                backend.update_weights(model)
            version = v
        seed = build.seed_of(config.seed, b, 1, 0)
        if partial is None:
            batch = generate_batch(policy, task, reward, problems, config.n, old_source, seed, version)
        else:

            def draw():
                return task.train_batch(config.prompts)

            batch = next_partial_batch(partial, draw, config.prompts, version, b - k, seed)
            batch["partial_state"] = partial.state()
        batch = pack(batch)
        batch["stats"]["perf/weight_wait_s"] = waited
        batch.update(step=b, task_state=task.state())
        try:
            dist.send_object_list([batch], dst=0, group=ctx.channel_group)
        except RuntimeError as e:
            raise WorkerDied(f"the trainer (rank 0) stopped receiving batches: {e}") from None
    receiver.join()


def worker_lead(config) -> int:
    """How many versions ahead of the trainer the workers sample (:func:`.partial.sampling_lead`)."""
    return sampling_lead(config.max_staleness, config.sampling.max_new_tokens, config.partial_tokens)


class TrainerSide:
    """Training rank 0's end of the pipeline: the plan, the weights, the batches."""

    def __init__(self, ctx: distributed.Context, config):
        self.ctx, self.config = ctx, config
        self.batches: BatchReceiver | None = None
        self.lag_counts = [0] * (config.max_staleness + 1)
        # with partial rollouts, the worker's responses in progress after the last batch taken
        self.partial_state: dict | None = None

    def start(
        self, step: int, queued: int, task_state, model_path: Path, adapter: Path | None, model
    ) -> None:
        """Tell the workers where to start, then publish the current weights (version ``step``)."""
        cfg, ctx = self.config, self.ctx
        start = step + queued
        if ctx.main:
            plan = {
                "start": start,
                "versions": list(range(step, cfg.steps)) or [step],
                "task_state": task_state if start > 0 else None,
                "partial_state": self.partial_state if start > 0 else None,
                "model_path": str(model_path),
                "adapter": None if adapter is None else str(adapter),
            }
            for w in ctx.rollout_ranks:
                dist.send_object_list([plan], dst=w, group=ctx.channel_group)
            self.batches = BatchReceiver(ctx, start, cfg.steps)
        self.publish(model)

    def publish(self, model) -> None:
        try:
            publish(model, self.ctx)
        except RuntimeError as e:
            raise WorkerDied(
                f"a rollout worker (ranks {list(self.ctx.rollout_ranks)}) is gone: {e}"
            ) from None

    def take(self, step: int, task) -> dict:
        """Batch ``step``, received; ``task`` and the pipeline now stand where its worker stood after it."""
        return self._accept(self.batches.get(step), task)

    def drain(self, step: int, queued: int, task) -> list[dict]:
        """The batches already here beyond ``step + queued`` (with ``fixed`` weights: every batch
        up to ``step + lead - 1``, waiting for them), each taken as :meth:`take` does."""
        cfg, out = self.config, []
        b = step + queued
        wanted = min(step + worker_lead(cfg), cfg.steps) if cfg.async_weights == "fixed" else b
        while b < cfg.steps:
            batch = self.batches.get(b, block=b < wanted)
            if batch is None:
                break
            out.append(self._accept(batch, task))
            b += 1
        return out

    def _accept(self, batch: dict, task) -> dict:
        task.set_state(batch.pop("task_state"))  # the data position a checkpoint records
        self.partial_state = batch.pop("partial_state", None)
        return batch

    def count_lag(self, lag: int) -> dict[str, float]:
        """The lag of this step's batch and the histogram of lags so far."""
        if not 0 <= lag <= self.config.max_staleness:
            raise RuntimeError(f"a batch lags {lag} versions; max_staleness is {self.config.max_staleness}")
        self.lag_counts[lag] += 1
        return {
            "async/lag": float(lag),
            **{f"async/lag_hist_{j}": float(c) for j, c in enumerate(self.lag_counts)},
        }


# --------------------------------------------------------------------- one machine, no torchrun


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
    ids are written to ``<out>/processes.json``."""
    world = 1 + config.rollout_ranks
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

    def forward(signum, frame):
        if procs[0].poll() is None:
            procs[0].send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
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
        for s, h in previous.items():
            signal.signal(s, h)


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
