"""Checkpoints that a killed run resumes from exactly.

A checkpoint is a folder ``step-000040/`` in the run's folder holding

* ``model/``: the weights (``save_pretrained``, safetensors) and tokenizer;
* ``trainer.pt``: optimiser and scheduler states, torch/numpy/Python
  random states, the data position, the step and the non-finite streak;
* ``rollouts-rank{r}.pt``: each rank's not-yet-used rollouts (staleness).

It is written to a temporary folder (:func:`begin`, then the files) and
renamed into place (:func:`commit`), so a crash while saving leaves the
previous checkpoint intact; only the newest ``keep`` are kept.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

__all__ = ["begin", "commit", "latest", "load", "rng_state", "set_rng_state", "write_model"]

_NAME = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    return {"torch": torch.random.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


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


def latest(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint in ``run_dir`` (``None`` if there is none)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = [p for p in _checkpoints(run_dir) if (p / "trainer.pt").is_file()]
    return found[-1] if found else None


def load(path: str | os.PathLike) -> dict:
    """The ``trainer.pt`` state of a checkpoint (its model is loaded from ``path/model``)."""
    return torch.load(Path(path) / "trainer.pt", weights_only=False)
