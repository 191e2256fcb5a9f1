r"""Experiments as functions returning tidy records (for the figures and for users).

(a) :func:`target_error`: finite-sample error of one PMD step with binary
rewards. With true success probability ``p`` and ``n`` rollouts, ``n_1``
of them correct (``n_1 ~ Binomial(n, p)``), the sample baseline gives
targets ``a_1`` (correct) and ``a_0`` (incorrect): PMD-mean's
``(r - n_1/n)/tau``, PMD-part's ``(r - tau log((n_1 e^{1/tau} + n_0)/n))/tau``.
The one-step update in success-probability space is the minimiser of the
sampled regression

.. math:: L(p') = n_1 \tfrac12 (a_1 - \log\tfrac{p'}{p})^2
          + n_0 \tfrac12 (a_0 - \log\tfrac{1-p'}{1-p})^2,

whose ``n -> infinity`` limit (weights ``p``, ``1 - p``, population
targets) is the exact population update of :mod:`pmdlab.theory.binary`.
Everything depends on the draw only through ``n_1``, so the distribution of
the error ``|p'(n_1) - p'_population|`` is computed exactly by enumerating
``n_1 = 0..n`` with binomial weights: no Monte Carlo noise.

(b) :func:`training_dynamics`: bandit training runs (:func:`.train.train`)
of several algorithms over seeds, in named settings (e.g. few rollouts, and
stale rollouts), as success-versus-step arrays.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy.optimize import brentq
from scipy.special import expit, log_expit
from scipy.stats import binom

from pmdlab.rl.algorithms import Algorithm
from pmdlab.theory.binary import pmd_mean_step, pmd_part_step

from .train import BanditConfig, train

__all__ = ["one_step_success", "sample_targets", "target_error", "train_many", "training_dynamics"]

METHODS = ("pmd_mean", "pmd_part")
#: The per-step metrics a training run returns to the experiments.
_KEEP = ("success_mean", "success_q10", "success_q90", "kl_old_new", "collapses")


def sample_targets(method: str, n1: np.ndarray, n: int, tau: float) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``(a_1, a_0)`` of correct and incorrect responses from ``n1`` of ``n`` correct.

    PMD-mean: baseline ``n_1/n``. PMD-part: baseline ``tau log((n_1 e^{1/tau} + n_0)/n)``,
    max-shifted (``= 1 + tau log((n_1 + n_0 e^{-1/tau})/n)``). With ``n_1 = p``
    and ``n = 1`` these are the population targets.
    """
    n1 = np.asarray(n1, dtype=np.float64)
    if method == "pmd_mean":
        b = n1 / n
    elif method == "pmd_part":
        with np.errstate(divide="ignore"):
            b = 1.0 + tau * np.log((n1 + (n - n1) * np.exp(-1.0 / tau)) / n)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return (1.0 - b) / tau, -b / tau


def one_step_success(p: float, w1: float, a1: float, a0: float) -> float:
    """Minimiser ``p'`` of ``w1/2 (a1 - log p'/p)^2 + (1-w1)/2 (a0 - log (1-p')/(1-p))^2``.

    In ``x = logit p'`` the derivative ``-w1 (a1 - s1)(1 - p') + w0 (a0 - s0) p'``
    is negative far left and positive far right; the loss need not be
    unimodal, so every local minimum (a sign change from - to + on a grid,
    refined by Brent's method) is found and the lowest taken.
    Returns ``p`` itself when ``w1`` is 0 or 1 (all rewards equal: no signal).
    """
    if w1 <= 0.0 or w1 >= 1.0:
        return p
    w0 = 1.0 - w1
    lp, lq = math.log(p), math.log1p(-p)

    def slope(x):
        s1 = log_expit(x) - lp
        s0 = log_expit(-x) - lq
        return -w1 * (a1 - s1) * expit(-x) + w0 * (a0 - s0) * expit(x)

    def loss(x):
        return w1 * (a1 - (log_expit(x) - lp)) ** 2 + w0 * (a0 - (log_expit(-x) - lq)) ** 2

    # Any minimiser has loss <= the loss at p' = p, L0 = w1 a1^2 + w0 a0^2, so
    # log p' >= log p + a1 - sqrt(L0/w1) and log(1-p') >= log(1-p) + a0 - sqrt(L0/w0);
    # hence logit p' lies in [log p'_min, -log(1-p')_min].
    l0 = w1 * a1 * a1 + w0 * a0 * a0
    lo = min(-1.0, lp + a1 - math.sqrt(l0 / w1)) - 1.0
    hi = max(1.0, -(lq + a0 - math.sqrt(l0 / w0))) + 1.0
    grid = np.linspace(lo, hi, 2049)
    g = slope(grid)
    starts = np.flatnonzero((g[:-1] <= 0) & (g[1:] > 0))
    roots = [brentq(slope, grid[i], grid[i + 1], xtol=1e-14, rtol=4 * np.finfo(float).eps) for i in starts]
    best = min(roots, key=lambda x: float(loss(x)))
    return float(expit(best))


def _bernoulli_kl(p: float, q: np.ndarray) -> np.ndarray:
    """``KL(Bern(p) || Bern(q))`` (with ``0 log 0 = 0``)."""
    q = np.clip(q, 1e-300, 1 - 1e-16)
    out = np.zeros_like(q)
    if p > 0:
        out += p * (math.log(p) - np.log(q))
    if p < 1:
        out += (1 - p) * (math.log1p(-p) - np.log1p(-q))
    return out


def _population(method: str, p: float, tau: float) -> float:
    step = pmd_mean_step if method == "pmd_mean" else pmd_part_step
    return float(step(p, tau).success)


def target_error(
    ps: Iterable[float] = (0.05, 0.2, 0.5),
    ns: Iterable[int] = (2, 4, 8, 16, 32, 64),
    taus: Iterable[float] = (0.1, 1.0),
    methods: Iterable[str] = METHODS,
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9),
) -> list[dict]:
    """Experiment (a): one record per (method, p, tau, n).

    Fields: ``population`` (exact ``p'``), ``mean_success`` (``E p'(n_1)``),
    ``mean_abs_error`` and ``rmse`` of ``p'(n_1)`` against ``population``,
    ``relative_error`` (``mean_abs_error / |population - p|``), the error's
    ``quantiles`` (``q10``, ``q50``, ``q90``), ``no_signal`` (the chance that
    all ``n`` rewards are equal), ``error_given_signal`` (the mean error when
    they are not), ``success_sd`` (the spread of ``p'`` over draws),
    ``mean_kl_error`` (``E KL(Bern(population) || Bern(p'(n_1)))``), and the correct response's
    sample target against the population one: ``target_population``,
    ``target_mean`` and ``target_sd`` given ``n_1 >= 1``.
    """
    records = []
    for method in methods:
        for p in ps:
            for tau in taus:
                pop = _population(method, p, tau)
                a1_pop = sample_targets(method, p, 1, tau)[0]  # "n_1/n = p": the population targets
                for n in ns:
                    n1 = np.arange(n + 1)
                    weight = binom.pmf(n1, n, p)
                    a1, a0 = sample_targets(method, n1, n, tau)
                    success = np.array([one_step_success(p, k / n, a1[k], a0[k]) for k in n1])
                    err = np.abs(success - pop)
                    order = np.argsort(err)
                    cdf = np.cumsum(weight[order])
                    signal = (n1 > 0) & (n1 < n)
                    w_signal = weight[signal] / max(weight[signal].sum(), 1e-300)
                    some = n1 >= 1
                    w_some = weight[some] / weight[some].sum()
                    t_mean = float(np.sum(w_some * a1[some]))
                    records.append(
                        {
                            "method": method,
                            "p": p,
                            "tau": tau,
                            "n": n,
                            "population": pop,
                            "mean_success": float(np.sum(weight * success)),
                            "mean_abs_error": float(np.sum(weight * err)),
                            "rmse": float(np.sqrt(np.sum(weight * err**2))),
                            "relative_error": float(np.sum(weight * err) / abs(pop - p)),
                            "error_given_signal": float(np.sum(w_signal * err[signal]))
                            if signal.any()
                            else math.nan,
                            "success_sd": float(
                                np.sqrt(np.sum(weight * (success - np.sum(weight * success)) ** 2))
                            ),
                            "mean_kl_error": float(np.sum(weight * _bernoulli_kl(pop, success))),
                            **{
                                f"q{round(100 * q)}": float(err[order][np.searchsorted(cdf, q)])
                                for q in quantiles
                            },
                            "no_signal": float(weight[0] + weight[-1]),
                            "target_population": float(a1_pop),
                            "target_mean": t_mean,
                            "target_sd": float(np.sqrt(np.sum(w_some * (a1[some] - t_mean) ** 2))),
                        }
                    )
    return records


def training_dynamics(
    base: BanditConfig,
    algorithms: Mapping[str, Algorithm],
    seeds: Iterable[int] = (0, 1, 2),
    settings: Mapping[str, Mapping] | None = None,
    progress: Callable[[str], None] | None = None,
    workers: int | None = None,
) -> dict:
    """Experiment (b): train every algorithm in every setting over seeds.

    ``settings`` maps a name to overrides of ``base`` (e.g. ``{"n=4": {"n": 4},
    "stale": {"staleness": 4}}``; default: just ``base``). The seed sets both
    the task's and the training's randomness. Runs go to :func:`train_many`
    (``workers`` processes). Returns ``{"steps": (T+1,), "runs": {setting:
    {algorithm: {metric: (seeds, T+1)}}}}`` with the metrics ``success_mean``,
    ``success_q10``, ``success_q90``, ``kl_old_new`` and ``collapses``.
    """
    settings = {"base": {}} if settings is None else settings
    seeds = list(seeds)
    steps = _steps(base, settings)
    keys = [(name, label, seed) for name in settings for label in algorithms for seed in seeds]
    configs = [
        dataclasses.replace(
            base,
            algorithm=algorithms[label],
            seed=seed,
            task=dataclasses.replace(base.task, seed=seed),
            **settings[name],
        )
        for name, label, seed in keys
    ]
    results = train_many(configs, workers=workers)
    runs: dict = {name: {label: [] for label in algorithms} for name in settings}
    for (name, label, seed), metrics in zip(keys, results):
        runs[name][label].append(metrics)
        if progress is not None:
            progress(f"{name} / {label} / seed {seed}")
    runs = {
        name: {
            label: {k: np.stack([m[k] for m in per_seed]) for k in _KEEP}
            for label, per_seed in by_alg.items()
        }
        for name, by_alg in runs.items()
    }
    return {"steps": np.arange(steps + 1), "runs": runs}


def _steps(base: BanditConfig, settings: Mapping[str, Mapping]) -> int:
    counts = {o.get("steps", base.steps) for o in settings.values()}
    if len(counts) != 1:
        raise ValueError("every setting must run the same number of steps")
    return counts.pop()


def _train_metrics(config: BanditConfig) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in train(config).metrics.items() if k in _KEEP}


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def _spawnable() -> bool:
    """Whether worker processes can start: they re-import the main script, which must be a file
    (not ``python -`` reading standard input)."""
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    return main is None or os.path.exists(main)


def train_many(configs: Iterable[BanditConfig], workers: int | None = None) -> list[dict[str, np.ndarray]]:
    """Train every config, in ``workers`` processes of one thread each (default: one per CPU
    core; 1, or a main script read from standard input: in this process), and return each run's
    metrics (those of :func:`training_dynamics`) in order.

    Runs are independent and each is seeded by its config, so the result does not depend on
    ``workers``.
    """
    configs = list(configs)
    workers = min(len(configs), os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(configs) <= 1 or not _spawnable():
        return [_train_metrics(c) for c in configs]
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_one_thread) as pool:
        return list(pool.map(_train_metrics, configs, chunksize=max(1, len(configs) // (8 * workers))))
