"""JSON-lines files whose errors name the file and the line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

__all__ = ["objects"]


def objects(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-empty line; a line that is not a JSON object is a
    ``ValueError`` saying ``<path>, line <n>: ...``."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {number}: not valid JSON ({e.msg})") from None
            if not isinstance(value, dict):
                raise ValueError(f"{path}, line {number}: a row must be a JSON object")
            yield number, value
