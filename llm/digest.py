"""File digests, for checkpoint manifests and model provenance."""

from __future__ import annotations

import hashlib
import os

__all__ = ["WHOLE_BELOW", "file_sha256", "sampled_sha256"]


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: Files up to this size are hashed whole in a checkpoint manifest; larger ones by samples.
WHOLE_BELOW = 64 << 20
_BLOCK = 1 << 20
_SAMPLES = 16


def sampled_sha256(path: str | os.PathLike, whole_below: int = WHOLE_BELOW) -> str:
    """A SHA-256 of the file's size and its bytes: all of them up to ``whole_below`` bytes; beyond, of
    ``16`` blocks of 1 MiB at evenly spaced offsets, the first and the last included (hex, prefixed
    ``sampled:``).

    For a checkpoint's shards of many GB this reads 16 MiB a file instead of the whole file, and still
    catches a truncated or extended file (the size), a file swapped for another (its blocks), and a
    damaged head or tail; damage confined to unsampled bytes of a large file goes unseen.
    """
    size = os.path.getsize(path)
    if size <= whole_below:
        return file_sha256(path)
    h = hashlib.sha256(str(size).encode())
    last = size - _BLOCK
    with open(path, "rb") as f:
        for i in range(_SAMPLES):
            f.seek(last * i // (_SAMPLES - 1))
            h.update(f.read(_BLOCK))
    return "sampled:" + h.hexdigest()
