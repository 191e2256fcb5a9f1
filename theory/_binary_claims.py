"""The propositions of docs/math.md §4 (binary rewards) and of the numerical tools (Wright omega, sympy)."""

from __future__ import annotations

import mpmath as mp
import numpy as np

from . import binary, iterate, symbolic
from ._registry import (
    binary_pairs as _binary_pairs,
)
from ._registry import (
    general_instances as _general,
)
from ._registry import (
    registrar,
)
from ._registry import (
    worst as _worst,
)
from .omega import wright_omega
from .updates import pmd_mean, pmd_part

#: This module's propositions, in the order they are run.
CLAIMS: list = []
proposition = registrar(CLAIMS)


# -- section 4: binary rewards ----------------------------------------------------


@proposition(
    "binary_depends_on_p",
    "with r in {0,1} the update depends on pi_t only through p; the binary helpers match the general update",
    "max |difference| across random policies with equal p, and binary helper vs pmd_mean(general)",
    1e-12,
)
def _binary_p_only(rng):
    worst = 0.0
    n, k = 200, 12
    p, tau = _binary_pairs(rng, n, p_min=1e-6, tau_min=1e-3)
    r = np.zeros((n, k))
    r[:, :3] = 1.0
    for _ in range(3):
        w = rng.dirichlet(np.ones(k), size=n)
        pi = np.concatenate(
            [
                w[:, :3] / w[:, :3].sum(1, keepdims=True) * p[:, None],
                w[:, 3:] / w[:, 3:].sum(1, keepdims=True) * (1 - p[:, None]),
            ],
            axis=1,
        )
        res = pmd_mean(pi, r, tau, method="general")
        step = binary.pmd_mean_step(p, tau)
        worst = _worst(
            worst,
            np.abs(res.policy[:, :3].sum(1) - step.success).max(),
            (
                np.abs(res.log_ratio[:, 0] - step.log_ratio_correct)
                / np.maximum(1, np.abs(step.log_ratio_correct))
            ).max(),
            (
                np.abs(res.log_ratio[:, 5] - step.log_ratio_incorrect)
                / np.maximum(1, np.abs(step.log_ratio_incorrect))
            ).max(),
            (np.abs(res.lam - step.lam) / step.lam).max(),
        )
    return 3 * n, worst


_TABLE = [  # p, tau, PMD-mean p', PMD-part p', mean log rho0, part log rho0, beta (docs/math.md §4)
    (0.01, 0.1, 0.25996, 0.99553, -0.291, -5.399, 0.01278),
    (0.1, 0.1, 0.74589, 0.99959, -1.265, -7.698, 0.04686),
    (0.5, 1.0, 0.71376, 0.73106, -0.558, -0.620, 0.05046),
]


@proposition(
    "binary_table",
    "the worked values of docs/math.md §4 (p' for PMD-mean/part, log rho_0, beta)",
    "max |computed - quoted| / (half a unit in the quoted last digit)",
    1.0,
)
def _binary_table(rng):
    worst = 0.0
    for p, tau, *quoted in _TABLE:
        m, pt = binary.pmd_mean_step(p, tau), binary.pmd_part_step(p, tau)
        computed = [m.success, pt.success, m.log_ratio_incorrect, pt.log_ratio_incorrect, m.chi2_weight]
        for value, q in zip(computed, quoted):
            decimals = len(repr(q).split(".")[1])
            worst = _worst(worst, abs(float(value) - q) / (0.5 * 10.0**-decimals))
    return len(_TABLE) * 5, worst


@proposition(
    "small_tau_limits",
    "as tau -> 0 at fixed p: PMD-mean log rho_0 -> -p/tau, beta -> p(1-p)/2; "
    "PMD-part log rho_0 ~ -1/tau - log p",
    "relative error of the asymptotic forms at tau = 1e-4 (p in [0.05, 0.95])",
    2e-3,
)
def _small_tau(rng):
    p = rng.uniform(0.05, 0.95, size=200)
    tau = 1e-4
    m, mm = binary.pmd_mean_step(p, tau), binary.pmd_mean_step_small_tau(p, tau)
    pt, pa = binary.pmd_part_step(p, tau), binary.pmd_part_step_small_tau(p, tau)
    worst = _worst(
        np.abs(m.log_ratio_incorrect / mm.log_ratio_incorrect - 1).max(),
        np.abs(m.chi2_weight / (p * (1 - p) / 2) - 1).max(),
        np.abs(pt.log_ratio_incorrect / pa.log_ratio_incorrect - 1).max(),
    )
    return 600, worst


@proposition(
    "conservative_at_low_p",
    "at p = 1e-6, tau = 1e-3 PMD-mean moves to p' ~ 0.031 while PMD-part moves to p' ~ 1",
    "|p'_mean - 0.031| / 0.031 (quoted to 2 digits) and 1 - p'_part",
    2e-2,
)
def _low_p(rng):
    m, pt = binary.pmd_mean_step(1e-6, 1e-3), binary.pmd_part_step(1e-6, 1e-3)
    return 1, _worst(abs(float(m.success) - 0.031) / 0.031, 1 - float(pt.success))


@proposition(
    "reward_scale",
    "rewards 2r - 1 at tau give the same updates as r in {0,1} at tau/2 (PMD-mean and PMD-part)",
    "max |difference| of policies and log-ratios over random binary batches",
    1e-12,
)
def _reward_scale(rng):
    n, k = 300, 10
    pi, _, tau = _general(rng, n, k, tau_range=(1e-3, 10.0))
    r = (rng.uniform(size=(n, k)) < 0.4).astype(float)
    worst = 0.0
    for update in (pmd_mean, pmd_part):
        a, b = update(pi, 2 * r - 1, tau), update(pi, r, tau / 2)
        worst = _worst(
            worst,
            np.abs(a.policy - b.policy),
            np.abs(a.log_ratio - b.log_ratio) / np.maximum(1, np.abs(b.log_ratio)),
        )
    return 2 * n, worst


@proposition(
    "multi_step_convergence",
    "repeated exact steps raise the success probability monotonically towards 1 (PMD-mean and PMD-part)",
    "largest decrease max(0, p_t - p_{t+1}), and 1 - p_T after 200 steps from p_0 >= 1e-3 at tau <= 1",
    1e-12,
)
def _multi_step(rng):
    p0 = np.geomspace(1e-3, 0.9, 40)
    tau = np.geomspace(1e-3, 1.0, 40)[:, None]
    worst = 0.0
    for method in ("mean", "part"):
        path = iterate.iterate_success(p0, tau, 200, method=method)
        worst = _worst(worst, path[:-1] - path[1:], 1 - path[-1])
    return 2 * p0.size * tau.size, worst


# -- tools ------------------------------------------------------------------------


@proposition(
    "wright_omega_accuracy",
    "the Wright omega kernel is exact to rounding relative to its conditioning",
    "max |omega - mpmath| / omega / (eps (1 + |z|/(1+omega))) over z in [-700, 1e12]",
    8.0,
)
def _omega(rng):
    z = np.concatenate(
        [
            rng.uniform(-60, 60, 400),
            -np.exp(rng.uniform(0, np.log(700), 100)),
            np.exp(rng.uniform(-20, np.log(1e12), 100)),
        ]
    )
    w = wright_omega(z)
    worst = 0.0
    with mp.workdps(40):
        for zi, wi in zip(z, w):
            ref = mp.lambertw(mp.exp(mp.mpf(zi))).real
            if ref < mp.mpf("1e-300"):
                continue
            cond = 1 + abs(zi) / (1 + float(ref))
            worst = _worst(worst, abs(float((wi - ref) / ref)) / (np.finfo(float).eps * cond))
    return z.size, worst


@proposition(
    "symbolic_derivations",
    "sympy derives the stationarity conditions, the Lambert-W solution, beta = tau lambda/2, "
    "lambda = KL, the binary targets, the reward scale and the small-tau limit",
    "count of the derivations' residuals that do not simplify to 0, or exceed 1e-30 at 3 random points "
    "(evaluated to 50 digits, before any rewrite)",
    0.0,
)
def _symbolic(rng):
    claims = symbolic.residuals()
    failed = sum(not symbolic.residual_vanishes(expr, rewrite, rng) for _, expr, rewrite in claims)
    return len(claims), float(failed)
