"""How weights and batches move between the learner and the rollout workers, all on ``torch.distributed``.

**Weights** (version ``v``: the policy after ``v`` optimiser phases) move in
two parts, so that the protocol is correct wherever a collective returns
before its data has arrived (NCCL enqueues it on a stream and returns):

1. training rank 0 *announces* ``v`` to every worker with a small tensor on a
   gloo group (``control_group``), whose receive returns only once it has
   arrived. A worker's thread (:class:`Announcements`) takes announcements in;
   it never touches weights;
2. the *payload* moves parameter by parameter in a broadcast from training
   rank 0 (``publish_group``: NCCL on GPUs, gloo on CPUs), straight into the
   worker's own parameters, on the worker's main thread, between batches
   (:class:`WeightInbox`). Every training rank takes part: under FSDP2 each
   parameter's ``full_tensor()`` is gathered in turn, never the whole model.

A worker joins version ``v``'s payload only when it has finished its batch
and its next batch may use ``v``, so the versions it holds are exactly the
versions announced to it, in order: it never believes a version has arrived
before the trainer has made it. Nothing is copied: a worker holds its model's
weights (with vLLM also the engine's, reloaded by the engine's own
``reload_weights``) and the trainer at most one parameter beyond its model,
while it publishes. Publishing waits for the workers to finish the batch they
are making (``perf/publish_s``).

**Batches** go from the workers to training rank 0 as pickled plain data
(``channel_group``, gloo; :meth:`.batch.ScoredBatch.pack`); batch ``b`` is
made by worker ``b mod rollout_ranks`` and received in order on a
background thread (:class:`BatchReceiver`).

Every group has the time-out ``dist_timeout_s``; a worker that dies or stops
answering makes the other side's next receive or broadcast fail:
:class:`WorkerDied` names it, and the time-out.
"""

from __future__ import annotations

import queue
import threading

import torch
import torch.distributed as dist

from .. import distributed

__all__ = [
    "RECEIVER_THREADS",
    "Announcements",
    "BatchReceiver",
    "WeightInbox",
    "WorkerDied",
    "describe_failure",
    "parameter_layout",
    "publish",
    "receivers_alive",
    "trainable",
    "transfers_done",
]


class WorkerDied(RuntimeError):
    """A rollout worker (or, seen from a worker, the trainer) stopped answering."""


# --------------------------------------------------------------------- weights


def trainable(model) -> list[tuple[str, torch.Tensor]]:
    """The published weights: every parameter that trains (with LoRA, the adapters), in model order."""
    return [(n, p) for n, p in distributed.unwrap(model).named_parameters() if p.requires_grad]


def parameter_layout(model) -> list[tuple[str, tuple[int, ...], str]]:
    """``(name, full shape, dtype)`` of each published weight: what both ends must agree on."""
    return [(n, tuple(p.shape), str(p.dtype)) for n, p in trainable(model)]


def _row_sharded(p: torch.Tensor) -> bool:
    """An FSDP2 parameter: a DTensor sharded by rows over one mesh dimension."""
    return hasattr(p, "placements") and len(p.placements) == 1 and p.placements[0].is_shard(0)


def _gathered_shape(p: torch.Tensor) -> tuple[int, ...]:
    """FSDP2 shards by rows as ``torch.chunk`` does (``ceil(rows / W)`` a rank, the last ranks fewer):
    the gathered buffer has ``W * ceil(rows / W)`` rows, the parameter its first ``rows``."""
    ranks = p.device_mesh.size()
    return (-(-p.shape[0] // ranks) * ranks, *p.shape[1:])


def _gather_rows(p: torch.Tensor, room: torch.Tensor) -> torch.Tensor:
    """The whole of row-sharded ``p`` gathered into ``room`` (a collective of the training ranks)."""
    shape = _gathered_shape(p)
    whole = room[: torch.Size(shape).numel()].view(shape)
    per_rank = shape[0] // p.device_mesh.size()
    local = p.to_local()
    if local.shape[0] != per_rank:  # a short (or empty) last shard, padded to the others' size
        local = torch.cat([local, local.new_zeros((per_rank - local.shape[0], *local.shape[1:]))])
    dist.all_gather_into_tensor(whole, local.contiguous(), group=p.device_mesh.get_group())
    return whole[: p.shape[0]]


def publish(model, version: int, ctx: distributed.Context) -> None:
    """Version ``version`` of the trained weights to every rollout worker (see the module docstring).

    Every training rank calls it: rank 0 announces the version on the gloo control group, then each
    parameter in turn is made whole and broadcast from rank 0. Under FSDP2 the shards are gathered
    into one buffer the size of the largest parameter, reused for each (the next gather runs after
    the broadcast, in stream order on GPUs), so a publish holds one parameter beyond the model."""
    if ctx.main:
        note = torch.tensor([version], dtype=torch.int64)
        for w in ctx.rollout_ranks:
            dist.send(note, dst=w, group=ctx.control_group)
    params = [p.detach() for _, p in trainable(model)]
    rooms: dict[torch.dtype, int] = {}
    for p in filter(_row_sharded, params):
        rooms[p.dtype] = max(rooms.get(p.dtype, 0), torch.Size(_gathered_shape(p)).numel())
    local = next((p.to_local() for p in params if _row_sharded(p)), None)
    buffers = {dtype: local.new_empty(n, dtype=dtype) for dtype, n in rooms.items()}
    for p in params:
        if _row_sharded(p):
            whole = _gather_rows(p, buffers[p.dtype])
        else:
            whole = p.full_tensor() if hasattr(p, "full_tensor") else p
        if ctx.main:
            dist.broadcast(whole, src=0, group=ctx.publish_group)
        del whole


def transfers_done(ctx: distributed.Context) -> None:
    """Wait until every weight transfer issued so far has completed on both ends, not only been
    enqueued (training rank 0 and every worker call it, at the end of the run). A barrier of the
    publish group completes after the group's earlier collectives (NCCL: in stream order; gloo: it
    waits for prior work); a process that left before would abandon transfers in flight."""
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    dist.barrier(group=ctx.publish_group, device_ids=device_ids)


#: The names of the receiving threads (announcements on a worker, batches on training rank 0).
RECEIVER_THREADS = ("announcements", "batches")


def receivers_alive() -> bool:
    """Whether a receiving thread may still be blocked in a collective (receiving weights or batches).

    A process must not reach interpreter exit like that: the process group's C++ state is torn down
    under the blocked call and the process aborts (``terminate called without an active exception``,
    SIGABRT) instead of exiting with its status.
    """
    return any(t.name in RECEIVER_THREADS and t.is_alive() for t in threading.enumerate())


class Announcements:
    """A worker's thread that receives the announced versions (gloo: each arrived when received), in order."""

    def __init__(self, count: int, ctx: distributed.Context):
        self._ctx = ctx
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(
            target=self._receive, args=(count,), name=RECEIVER_THREADS[0], daemon=True
        )
        self._thread.start()

    def _receive(self, count: int) -> None:
        for _ in range(count):
            note = torch.empty(1, dtype=torch.int64)
            try:
                dist.recv(note, src=0, group=self._ctx.control_group)
            except BaseException as e:  # the trainer is gone, or silent past the time-out
                self._queue.put(e)
                return
            self._queue.put(int(note))

    def next(self, block: bool) -> int | None:
        """The next announced version (``None`` if ``block`` is false and none has arrived)."""
        try:
            item = self._queue.get(block=block)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise WorkerDied(f"the trainer (rank 0) stopped publishing weights: {describe_failure(item)}")
        return item


class WeightInbox:
    """A worker's weights: the versions it holds, received into ``params`` (its model's trained
    parameters) on the calling thread, in announced order (see the module docstring)."""

    def __init__(self, params: list[torch.Tensor], versions: list[int], ctx: distributed.Context):
        self._params, self._ctx = params, ctx
        self._versions = list(versions)  # every version the trainer will publish, in order
        self.version: int | None = None  # the version ``params`` hold
        self._announced = Announcements(len(self._versions), ctx)

    def take(self, at_least: int, exact: bool) -> int:
        """Hold version ``at_least`` (``exact``), or the newest announced one at least as new; the
        version held. Versions are received in order, waiting for their announcement if need be."""
        while self.version is None or self.version < at_least:
            self._receive(self._announced.next(block=True))
        if exact and self.version != at_least:
            raise RuntimeError(f"the worker holds version {self.version}; the batch needs {at_least}")
        while not exact and (version := self._announced.next(block=False)) is not None:
            self._receive(version)
        return self.version

    def finish(self) -> None:
        """Receive the versions still to come (every worker takes part in every publish) and wait until
        their transfers are done (:func:`transfers_done`): then the worker may leave."""
        while self.version is None or self.version < self._versions[-1]:
            self._receive(self._announced.next(block=True))
        try:
            transfers_done(self._ctx)
        except RuntimeError as e:
            raise WorkerDied(
                f"the trainer (rank 0) stopped publishing weights: {describe_failure(e)}"
            ) from None

    @torch.no_grad()
    def _receive(self, version: int) -> None:
        expected = self._versions[0] if self.version is None else self.version + 1
        if version != expected:
            raise RuntimeError(f"version {version} announced; version {expected} was expected next")
        try:
            for p in self._params:
                dist.broadcast(p.detach(), src=0, group=self._ctx.publish_group)
        except RuntimeError as e:
            raise WorkerDied(
                f"the trainer (rank 0) stopped publishing weights: {describe_failure(e)}"
            ) from None
        self.version = version


def describe_failure(e: BaseException) -> str:
    """A collective's error on one line, with the process groups' time-out named."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return f"{first} (process-group time-out dist_timeout_s={distributed.timeout_s():g})"


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
                raise WorkerDied(
                    f"rollout worker rank {rank} died or stopped sending batches: {describe_failure(e)}"
                )
            if batch["step"] != b:
                raise RuntimeError(f"expected the batch of step {b}, received step {batch['step']}")
            return batch
