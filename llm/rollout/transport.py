"""How weights and batches move between the learner and the rollout workers, all on ``torch.distributed``.

* **weights** move by broadcast from training rank 0 to the workers
  (``publish_group``: NCCL on GPUs, gloo on CPUs). Version ``v`` is the
  policy after ``v`` optimiser phases. A worker receives every version in
  order on a background thread (:class:`WeightReceiver`), so publishing
  never waits for generation;
* **batches** go from the workers to training rank 0 as pickled plain data
  (``channel_group``, gloo; :meth:`.batch.ScoredBatch.pack`); batch ``b`` is
  made by worker ``b mod rollout_ranks`` and received in order on a
  background thread (:class:`BatchReceiver`).

A worker that dies makes the other side's next receive or broadcast fail:
:class:`WorkerDied` names it.
"""

from __future__ import annotations

import queue
import threading

import torch
import torch.distributed as dist

from .. import distributed

__all__ = [
    "RECEIVER_THREADS",
    "BatchReceiver",
    "WeightReceiver",
    "WorkerDied",
    "buffers_like",
    "flatten",
    "publish",
    "receivers_alive",
    "trainable",
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


#: The names of the receiving threads (weights on a worker, batches on training rank 0).
RECEIVER_THREADS = ("weights", "batches")


def receivers_alive() -> bool:
    """Whether a receiving thread may still be blocked in a collective (receiving weights or batches).

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
            self._queue.put(box[0])

    def get(self, b: int, block: bool = True) -> dict | None:
        """The message of batch ``b`` (``None`` if ``block`` is false and it has not arrived): its packed
        :class:`~.batch.ScoredBatch` (``batch``), ``step`` and the worker's ``generator`` state after it."""
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
