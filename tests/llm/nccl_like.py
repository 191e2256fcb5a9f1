"""Run ``python -m pmdlab.llm.train ARGS`` on gloo as if its weight broadcasts were NCCL's.

    WORLD_SIZE=2 RANK=r ... python tests/llm/nccl_like.py --config CFG async_rollouts=true ...

NCCL enqueues a collective on a CUDA stream and returns at once: the call
says nothing about whether the data has arrived. What it does guarantee is
stream order: a later kernel that reads or writes the tensor runs after the
transfer. Here ``torch.distributed.broadcast`` (the weights' payload) is
replaced by gloo's ``async_op=True`` broadcast whose wait is deferred, and a
dispatch mode on the main thread plays the stream: an operator that touches a
tensor with a transfer in flight waits for that transfer first (the host
thread that issued the broadcast, like a CUDA host thread, runs on).

A protocol that takes "the broadcast returned" to mean "the version arrived"
believes versions the trainer has not made yet are there; one that is
correct on NCCL runs here unchanged.
"""

from __future__ import annotations

import sys
import threading

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

_in_flight: dict[int, object] = {}  # a tensor's storage address -> the transfer writing or reading it
_lock = threading.Lock()
_blocking_broadcast = dist.broadcast


def early_broadcast(tensor, src=None, group=None, async_op=False, group_src=None):
    """``dist.broadcast`` that returns before the transfer is done, as NCCL's does."""
    work = _blocking_broadcast(tensor, src, group=group, async_op=True, group_src=group_src)
    if async_op:
        return work
    with _lock:
        _in_flight[tensor.untyped_storage().data_ptr()] = work
    return None


class StreamOrder(TorchDispatchMode):
    """An operator on a tensor with a transfer in flight waits for the transfer (CUDA stream order)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                with _lock:
                    work = _in_flight.pop(t.untyped_storage().data_ptr(), None)
                if work is not None:
                    work.wait()
        return func(*args, **(kwargs or {}))


def main(argv: list[str]) -> int:
    dist.broadcast = early_broadcast
    from pmdlab.llm import train
    from pmdlab.llm.rollout.transport import receivers_alive
    from pmdlab.llm.rollout.worker import leave

    with StreamOrder():
        status = train.main(argv)
    with _lock:  # every transfer done before the process leaves
        pending = list(_in_flight.values())
        _in_flight.clear()
    for work in pending:
        work.wait()
    if receivers_alive():
        leave(status)
    return status


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
