"""Peak live bytes of the tensors a block of code makes, on any device (CPU included).

:class:`LiveBytes` is a :class:`~torch.utils._python_dispatch.TorchDispatchMode`:
every operator's outputs pass through it, and each new storage (one that is not
the storage of one of the operator's inputs: views and in-place results are not
new) is counted with its size until it is freed, which a weak reference on the
storage reports (PyTorch keeps a storage's Python object alive exactly as long as
the storage). Storages made before the block (the model's weights) are not
counted; memory an operator uses only inside itself is not seen. Backward passes
run by autograd on the calling thread (CPU) pass through the mode too.

    with LiveBytes() as tracker:
        loss = f(x); loss.backward()
    tracker.peak  # bytes
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the live storages made under it; ``peak`` is their largest total."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0  # the largest single storage seen
        self._refs: dict[int, weakref.ref] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {
            id(t.untyped_storage())
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor) and _has_storage(t)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _has_storage(t):
                storage = t.untyped_storage()
                if id(storage) not in inputs and id(storage) not in self._refs:
                    self._add(storage)
        return out

    def _add(self, storage) -> None:
        size = storage.nbytes()
        key = id(storage)

        def freed(_ref, key=key, size=size):
            self._refs.pop(key, None)
            self.live -= size

        self._refs[key] = weakref.ref(storage, freed)
        self.live += size
        self.peak = max(self.peak, self.live)
        self.largest = max(self.largest, size)


def _has_storage(t: torch.Tensor) -> bool:
    return t.layout == torch.strided and t.device.type != "meta"


def mib(n: int) -> float:
    return n / 2**20
