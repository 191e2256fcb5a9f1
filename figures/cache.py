"""Cached figure numbers: computed once per (figure, parameters, seed, code, library versions).

``out/cache/NAME-KEY.npz`` holds the arrays and ``NAME-KEY.json`` the
parameters, seed, versions and compute time. The key hashes all of them,
the source of the figure's module and the source of ``pmdlab`` itself, so
changing a parameter or the code recomputes, while re-plotting reads the
cache instantly. The proposition table is cached the same way.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np

import pmdlab.bandit
import pmdlab.llm
import pmdlab.rl
import pmdlab.theory
from pmdlab.theory.propositions import PROPOSITIONS, Outcome
from pmdlab.theory.propositions import run as run_propositions

from .registry import Figure

__all__ = ["library_versions", "load_or_compute", "load_or_run_propositions"]

_LIBRARIES = ("pmdlab", "numpy", "scipy", "sympy", "numba", "torch", "matplotlib")


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@functools.cache
def _library_source_digest() -> str:
    """A hash of every ``.py`` file of ``pmdlab`` (theory, rl, bandit, llm)."""
    h = hashlib.sha256()
    for package in (pmdlab.theory, pmdlab.rl, pmdlab.bandit, pmdlab.llm):
        for path in sorted(Path(next(iter(package.__path__))).rglob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def _digest(**parts) -> str:
    blob = json.dumps(
        {**parts, "versions": library_versions(), "library": _library_source_digest()},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _key(figure: Figure, params: dict, seed: int) -> str:
    return _digest(params=params, seed=seed, source=inspect.getsource(inspect.getmodule(figure.compute)))


def load_or_run_propositions(
    seed: int, cache_dir: str, recompute: bool = False
) -> tuple[list[Outcome], dict]:
    """The outcomes of :func:`pmdlab.theory.propositions.run` and ``{"cached", "seconds"}``."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"propositions-{_digest(seed=seed)}.json")
    by_name = {p.name: p for p in PROPOSITIONS}
    if not recompute and os.path.exists(path):
        saved = json.loads(open(path).read())
        outcomes = [
            Outcome(by_name[r["name"]], r["instances"], r["worst"], r["seconds"]) for r in saved["outcomes"]
        ]
        return outcomes, {"cached": True, "seconds": saved["seconds"]}
    t0 = time.perf_counter()
    outcomes = run_propositions(seed=seed)
    seconds = time.perf_counter() - t0
    rows = [
        {"name": o.proposition.name, "instances": o.instances, "worst": o.worst, "seconds": o.seconds}
        for o in outcomes
    ]
    with open(path, "w") as f:
        json.dump({"seed": seed, "seconds": seconds, "outcomes": rows}, f)
    return outcomes, {"cached": False, "seconds": seconds}


def load_or_compute(figure: Figure, params: dict, seed: int, cache_dir: str, recompute: bool = False):
    """``(data, info)``: the figure's arrays and ``{"cached", "seconds", "file"}``."""
    os.makedirs(cache_dir, exist_ok=True)
    stem = os.path.join(cache_dir, f"{figure.name}-{_key(figure, params, seed)}")
    if not recompute and os.path.exists(stem + ".npz") and os.path.exists(stem + ".json"):
        with np.load(stem + ".npz", allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(open(stem + ".json").read())
        return data, {"cached": True, "seconds": meta["seconds"], "file": stem + ".npz"}
    t0 = time.perf_counter()
    data = {k: np.asarray(v) for k, v in figure.compute(params, seed).items()}
    seconds = time.perf_counter() - t0
    tmp = stem + ".tmp.npz"
    np.savez_compressed(tmp, **data)
    os.replace(tmp, stem + ".npz")
    meta = {
        "figure": figure.name,
        "params": params,
        "seed": seed,
        "seconds": seconds,
        "versions": library_versions(),
    }
    with open(stem + ".json", "w") as f:
        json.dump(meta, f, indent=1, default=str)
    return data, {"cached": False, "seconds": seconds, "file": stem + ".npz"}
