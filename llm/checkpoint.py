"""Checkpoints that a killed run resumes from exactly.

A checkpoint is a folder ``step-000040/`` in the run's folder holding

* the weights and optimiser state, written one of two ways:

  - one process, or replicated weights (DDP): ``model/``, the weights
    (``save_pretrained``, safetensors) and tokenizer, written by rank 0,
    and the optimiser state in ``trainer.pt``;
  - sharded weights (FSDP2): ``shards/``, written with
    ``torch.distributed.checkpoint``: each training rank writes its own
    shard of the weights and optimiser state, nothing is gathered on rank 0.
    ``model/`` then holds the model's configuration and tokenizer only;
    ``python -m pmdlab.llm.export`` makes a Hugging Face folder of it;
* ``trainer.pt``: the learner's schedule, version and non-finite streak, and
  the step;
* ``rank{r}.pt``: each training rank's batch source (the batches made and not
  yet trained on, the generator's data position) and random states (torch
  CPU and CUDA, numpy, Python);
* ``manifest.json``, written last: every other file's size and digest, each
  rank digesting the files it wrote (:func:`.digest.sampled_sha256`: whole
  files up to 64 MiB, 16 sampled MiB of larger ones).

It is written to a temporary folder (:func:`begin`, then the files) and
renamed into place (:func:`commit`), so a crash while saving leaves the
previous checkpoint intact; only the newest ``keep`` are kept. On resume
(:func:`latest_valid`) each checkpoint is checked against its manifest,
newest first: a damaged one (a file truncated, swapped, edited, missing) is
skipped with a warning that names it, and the newest intact one is used;
when checkpoints exist but none is intact, the run stops with a one-line
error naming the folder. Everything is loaded onto the CPU
(``map_location``) and each rank reads only its own files. :func:`save` and
:func:`restore` take and give state dicts: this module knows nothing of
what is in them.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from . import distributed
from .digest import sampled_sha256

__all__ = [
    "MANIFEST",
    "SHARDS",
    "begin",
    "commit",
    "latest_valid",
    "load",
    "problem",
    "restore",
    "rng_state",
    "save",
    "set_rng_state",
    "weights_folder",
    "write_manifest",
    "write_model",
]

_NAME = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"
#: The folder of a sharded checkpoint's ``torch.distributed.checkpoint`` files.
SHARDS = "shards"
_RANK_FILE = re.compile(r"^rank(\d+)\.pt$")
_SHARD_FILE = re.compile(r"^__(\d+)_\d+\.distcp$")


def rng_state() -> dict:
    """This process's random states: torch (CPU, and every CUDA device in use), numpy, Python."""
    state = {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def begin(run_dir: str | os.PathLike, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (one process creates it)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".tmp-step-{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def write_model(folder: Path, model, tokenizer) -> None:
    """``save_pretrained`` (safetensors) of the model and its tokenizer into ``folder``."""
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)


def _write_model_description(folder: Path, model, tokenizer) -> None:
    """The model's configuration (and generation settings) and tokenizer, without weights."""
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def commit(run_dir: str | os.PathLike, tmp: Path, step: int, keep: int = 2) -> Path:
    """Rename the finished temporary folder into place; keep only the newest ``keep``."""
    run_dir = Path(run_dir)
    final = run_dir / f"step-{step:06d}"
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in _checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _checkpoints(run_dir: Path) -> list[Path]:
    found = [(int(m.group(1)), p) for p in run_dir.iterdir() if (m := _NAME.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def writer_of(name: str) -> int:
    """The training rank that writes (and digests) a checkpoint file: ``rank{r}.pt`` and shard
    ``__{r}_*.distcp`` rank ``r``, everything else rank 0."""
    m = _RANK_FILE.match(Path(name).name) or _SHARD_FILE.match(Path(name).name)
    return int(m.group(1)) if m else 0


def digests(folder: Path, rank: int = 0, ranks: int = 1) -> dict[str, dict]:
    """``{relative path: {"bytes", "sha256"}}`` of the files in ``folder`` that ``rank`` wrote
    (every file when ``ranks`` is 1)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    mine = [p for p in files if ranks == 1 or writer_of(str(p.relative_to(folder))) == rank]
    return {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": sampled_sha256(p)} for p in mine
    }


def write_manifest(folder: Path, entries: dict[str, dict] | None = None) -> None:
    """``manifest.json`` of ``entries`` (default: :func:`digests` of every file in ``folder``)."""
    entries = digests(folder) if entries is None else entries
    (folder / MANIFEST).write_text(json.dumps({"files": dict(sorted(entries.items()))}, indent=1))


def problem(folder: Path) -> str | None:
    """What is wrong with a checkpoint folder against its manifest (``None``: intact)."""
    try:
        entries = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return "it has no manifest.json (an interrupted save)"
    except (json.JSONDecodeError, KeyError, TypeError):
        return "its manifest.json is unreadable"
    if "trainer.pt" not in entries:
        return "its manifest lists no trainer.pt"
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['bytes']}"
        if sampled_sha256(path) != entry["sha256"]:
            return f"{name} does not match its digest in the manifest"
    return None


def latest_valid(run_dir: str | os.PathLike) -> Path | None:
    """The newest intact checkpoint in ``run_dir``; ``None`` if there are none at all.

    Damaged ones are skipped with a warning naming each; if every checkpoint is
    damaged a :class:`ValueError` names the folder.
    """
    run_dir = Path(run_dir)
    found = _checkpoints(run_dir) if run_dir.is_dir() else []
    for path in reversed(found):
        reason = problem(path)
        if reason is None:
            return path
        warnings.warn(f"checkpoint {path} is damaged ({reason}); trying an older one", stacklevel=2)
    if found:
        raise ValueError(f"resume: no intact checkpoint in {run_dir} ({len(found)} found, every one damaged)")
    return None


def load(path: str | os.PathLike) -> dict:
    """The ``trainer.pt`` state of a checkpoint, on the CPU."""
    return torch.load(Path(path) / "trainer.pt", map_location="cpu", weights_only=False)


def weights_folder(path: Path) -> Path | None:
    """The checkpoint's Hugging Face weights folder; ``None`` for a sharded checkpoint (its weights
    are in ``shards/``, loaded into the model built from the run's base weights)."""
    return None if (path / SHARDS).is_dir() else path / "model"


# --------------------------------------------------------------------- a run's state


def save(
    run_dir: Path, step: int, ctx, model, tokenizer, state: dict, rank_state: dict, keep: int, shards=None
) -> Path:
    """An atomic checkpoint of step ``step`` (see the module docstring). Every training rank calls it.

    ``state`` (rank 0's: the learner's and the loop's state dicts) goes to ``trainer.pt``, each
    rank's ``rank_state`` to ``rank{r}.pt``. ``shards`` (FSDP2: the sharded weights' and optimiser's
    state dict) is written by every rank with ``torch.distributed.checkpoint``; without it rank 0
    writes the model's weights with ``save_pretrained``."""
    tmp = run_dir / f".tmp-step-{step:06d}"
    if ctx.main:
        tmp = begin(run_dir, step)
    distributed.barrier(ctx)
    if shards is not None:
        import torch.distributed.checkpoint as dcp

        writer = dcp.FileSystemWriter(tmp / SHARDS, single_file_per_rank=True)
        dcp.save(shards, storage_writer=writer, process_group=distributed.train_group())
    if ctx.main:
        inner = distributed.unwrap(model)
        if shards is None:
            write_model(tmp / "model", inner, tokenizer)
        else:
            _write_model_description(tmp / "model", inner, tokenizer)
        info = {"step": step, "world_size": ctx.world_size, "sharded": shards is not None}
        torch.save({**state, **info}, tmp / "trainer.pt")
    torch.save(rank_state, tmp / f"rank{ctx.rank}.pt")
    distributed.barrier(ctx)
    entries = distributed.all_gather_object(digests(tmp, ctx.rank, ctx.world_size), ctx)
    final = run_dir / f"step-{step:06d}"
    if ctx.main:
        write_manifest(tmp, {k: v for part in entries for k, v in part.items()})
        final = commit(run_dir, tmp, step, keep=keep)
    distributed.barrier(ctx)
    return final


def restore(path: Path, ctx) -> tuple[dict, dict]:
    """``(state, rank_state)`` that :func:`save` wrote, on the CPU; each rank reads its own ``rank{r}.pt``
    (the weights are loaded from ``model/`` or ``shards/`` by the learner)."""
    state = load(path)
    if state.get("world_size", 1) != ctx.world_size:
        raise ValueError(
            f"{path} was written by {state.get('world_size', 1)} ranks; resume with as many "
            f"(this run has {ctx.world_size})"
        )
    rank_state = torch.load(path / f"rank{ctx.rank}.pt", map_location="cpu", weights_only=False)
    return state, rank_state
