"""Checkpoints that a killed run resumes from exactly.

A checkpoint is a folder ``step-000040/`` in the run's folder holding

* ``model/``: the weights (``save_pretrained``, safetensors) and tokenizer;
* ``trainer.pt``: the state dicts of the learner (optimiser, schedule,
  non-finite streak) and of the loop (torch/numpy/Python random states),
  and the step;
* ``source-rank{r}.pt``: each rank's batch source: the batches made and not
  yet trained on, and the generator's data position after them;
* ``manifest.json``, written last: every other file's size and SHA-256.

It is written to a temporary folder (:func:`begin`, then the files) and
renamed into place (:func:`commit`), so a crash while saving leaves the
previous checkpoint intact; only the newest ``keep`` are kept. On resume
(:func:`latest_valid`) each checkpoint is checked against its manifest,
newest first: a damaged one (truncated, edited, a file missing) is skipped
with a warning that names it, and the newest intact one is used; when
checkpoints exist but none is intact, the run stops with a one-line error
naming the folder. :func:`save` and :func:`restore` take and give state
dicts: this module knows nothing of what is in them.
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
from .digest import file_sha256

__all__ = [
    "begin",
    "commit",
    "latest_valid",
    "load",
    "problem",
    "restore",
    "rng_state",
    "save",
    "set_rng_state",
    "write_manifest",
    "write_model",
]

_NAME = re.compile(r"^step-(\d+)$")
MANIFEST = "manifest.json"


def rng_state() -> dict:
    return {
        "torch": torch.random.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.random.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def begin(run_dir: str | os.PathLike, step: int) -> Path:
    """A fresh temporary folder for the checkpoint of ``step`` (one process creates it)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / f".tmp-step-{step:06d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def write_model(tmp: Path, model, tokenizer, state_dict=None) -> None:
    """``save_pretrained`` (safetensors) of the model, or of a gathered ``state_dict``, and the tokenizer."""
    model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp / "model")


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


def write_manifest(folder: Path) -> None:
    """``manifest.json``: ``{relative path: {"bytes", "sha256"}}`` of every file in ``folder``."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    entries = {
        str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files
    }
    (folder / MANIFEST).write_text(json.dumps({"files": entries}, indent=1))


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
        if file_sha256(path) != entry["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest"
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
    """The ``trainer.pt`` state of a checkpoint (its model is loaded from ``path/model``)."""
    return torch.load(Path(path) / "trainer.pt", weights_only=False)


# --------------------------------------------------------------------- a run's state


def save(run_dir: Path, step: int, ctx, model, tokenizer, state: dict, rank_state: dict, keep: int) -> Path:
    """An atomic checkpoint of step ``step``: the full weights of ``model`` and ``state`` (state dicts
    of the learner and the loop, from rank 0), every rank's ``rank_state`` (its batch source), then
    the manifest. Every training rank calls it (gathering FSDP2 weights is a collective)."""
    full_weights = distributed.full_state_dict(model)  # a collective under FSDP2
    tmp = run_dir / f".tmp-step-{step:06d}"
    if ctx.main:
        tmp = begin(run_dir, step)
        write_model(tmp, distributed.unwrap(model), tokenizer, full_weights)
        torch.save({**state, "step": step, "world_size": ctx.world_size}, tmp / "trainer.pt")
    distributed.barrier(ctx)
    torch.save(rank_state, tmp / f"source-rank{ctx.rank}.pt")
    distributed.barrier(ctx)
    final = run_dir / f"step-{step:06d}"
    if ctx.main:
        write_manifest(tmp)
        final = commit(run_dir, tmp, step, keep=keep)
    distributed.barrier(ctx)
    return final


def restore(path: Path, ctx) -> tuple[dict, dict]:
    """``(state, rank_state)`` that :func:`save` wrote (the weights are loaded from ``path/model``)."""
    state = load(path)
    if state.get("world_size", 1) != ctx.world_size:
        raise ValueError(
            f"{path} was written by {state.get('world_size', 1)} ranks; resume with as many "
            f"(this run has {ctx.world_size})"
        )
    rank_state = torch.load(path / f"source-rank{ctx.rank}.pt", weights_only=False)
    return state, rank_state
