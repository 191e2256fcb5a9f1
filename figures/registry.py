"""The figure registry: what each figure computes, with which parameters, and how it is drawn.

A :class:`Figure` separates the numbers from the drawing: ``compute(params,
seed)`` returns a flat mapping of names to numpy arrays (cached by
:mod:`.cache`), ``plot(data, params)`` draws them, ``caption(data, params)``
states what the figure shows with the numbers behind it, and
``claims(data, params)`` checks the claim the figure illustrates against the
same numbers, so a figure cannot silently show the wrong thing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["CLAIM_KINDS", "Claim", "FIGURES", "Figure", "register"]


#: What a claim is. ``check``: something this project's numbers must satisfy (the
#: code is wrong otherwise; a failure fails ``paper_repro.py``). ``paper``: a claim
#: of the paper tested here; the report says whether it reproduced, and a claim
#: that does not reproduce is a finding, not an error. ``finding``: what an
#: experiment's committed logs show (a real model's runs over a few seeds); the
#: report says whether it holds, and either way is a result, not an error.
CLAIM_KINDS = ("check", "paper", "finding")


@dataclass(frozen=True)
class Claim:
    """One statement tested on the cached numbers: ``passed`` says whether it holds.

    ``kind`` is one of :data:`CLAIM_KINDS`.
    """

    statement: str
    passed: bool
    detail: str = ""
    kind: str = "check"

    def __post_init__(self):
        if self.kind not in CLAIM_KINDS:
            raise ValueError(f"kind must be one of {CLAIM_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Figure:
    """One figure.

    Attributes:
        name: identifier (``--figure NAME``) and file stem.
        title: a short title.
        shows: one sentence: what the figure shows.
        full: parameters of the full run.
        quick: parameters of the ``--quick`` run.
        compute: ``(params, seed) -> {name: array}``.
        plot: ``(data, params) -> matplotlib Figure``, or ``None`` when there is nothing to draw.
        caption: ``(data, params) -> str``: what is shown, with its numbers.
        claims: ``(data, params) -> [Claim]``.
        missing: ``(data) -> str | None``: why the figure cannot be drawn (no input), if so.
    """

    name: str
    title: str
    shows: str
    full: Mapping[str, Any]
    quick: Mapping[str, Any]
    compute: Callable[[Mapping[str, Any], int], dict[str, np.ndarray]]
    plot: Callable[[dict[str, np.ndarray], Mapping[str, Any]], Any]
    caption: Callable[[dict[str, np.ndarray], Mapping[str, Any]], str]
    claims: Callable[[dict[str, np.ndarray], Mapping[str, Any]], list[Claim]]
    missing: Callable[[dict[str, np.ndarray]], str | None] = field(default=lambda data: None)

    def params(self, quick: bool) -> dict[str, Any]:
        return dict(self.quick if quick else self.full)


#: Figures in the order they are drawn and reported.
FIGURES: dict[str, Figure] = {}


def register(figure: Figure) -> Figure:
    if figure.name in FIGURES:
        raise ValueError(f"figure {figure.name!r} is registered twice")
    FIGURES[figure.name] = figure
    return figure
