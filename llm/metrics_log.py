"""The metrics log of a training run: JSON lines, one record per logged step.

Each line is an object with at least ``run`` (the run's name), ``algorithm``
and ``step`` (the global step, an integer), and any number of numeric
metrics named ``group/metric``. The names that the training figure draws
(:data:`PANELS`) are:

============================  ===================================================
``train/reward``              mean reward of the step's rollouts
``train/response_length``     mean response length (tokens)
``train/entropy``             mean token entropy of the policy on its rollouts
``eval/avg@k``                mean accuracy over ``k`` samples per held-out prompt
``eval/pass@k``               unbiased pass@k (best@k)
``eval/maj@k``                accuracy of the majority answer over ``k`` samples
============================  ===================================================

Records for evaluation steps and training steps may be separate lines.
Readers ignore metrics they do not know, so a log can carry more.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from . import jsonl

__all__ = ["PANELS", "append", "find", "read", "truncate"]

#: (metric name, panel title) in the layout the paper's training figure uses.
PANELS = (
    ("train/reward", "training reward"),
    ("eval/avg@k", "eval avg@k"),
    ("eval/pass@k", "eval best@k (pass@k)"),
    ("eval/maj@k", "eval maj@k"),
    ("train/response_length", "response length"),
    ("train/entropy", "entropy"),
)

_REQUIRED = ("run", "algorithm", "step")


def append(path: str | os.PathLike, record: Mapping) -> None:
    """Append one record (flushed, so a crash loses at most the line being written)."""
    _check(record, str(path), None)
    line = json.dumps(
        {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()}
    )
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()


def _check(record, path: str, line: int | None) -> None:
    where = f"{path}" + (f", line {line}" if line is not None else "")
    if not isinstance(record, Mapping):
        raise ValueError(f"{where}: a record must be a JSON object")
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise ValueError(f"{where}: record lacks {', '.join(missing)}")
    if not isinstance(record["step"], int) or isinstance(record["step"], bool):
        raise ValueError(f"{where}: step must be an integer, got {record['step']!r}")


def read(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Every record of the given logs; a malformed line is an error naming file and line."""
    records = []
    for path in paths:
        for number, record in jsonl.objects(path):
            _check(record, str(path), number)
            records.append(record)
    return records


def find(folder: str | os.PathLike) -> list[Path]:
    """The ``*.jsonl`` metrics logs under ``folder`` (sorted; none if it does not exist)."""
    root = Path(folder)
    return sorted(root.rglob("*.jsonl")) if root.is_dir() else []


def truncate(path: str | os.PathLike, step: int) -> None:
    """Keep only the records of steps up to ``step`` (atomically; nothing to do without a log)."""
    path = Path(path)
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = [ln for ln in lines if ln.strip() and int(json.loads(ln)["step"]) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(kept))
    tmp.replace(path)
