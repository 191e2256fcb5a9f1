r"""Every claim of pmd-math.md §3–4, and the ones derived from them, as a check.

A proposition is a named statement with a function that tests it on many
random (or exhaustive) instances and returns the number of instances and the
worst error found; it passes when that error is within its tolerance.
``python -m pmdlab.theory.verify`` runs them all and prints the table.

Instances span general and binary rewards, ``tau`` from 1e-4 to 10,
``K`` from 2 to 1e5 and ``p`` down to 1e-9.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mpmath as mp
import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax

from . import binary, divergences, iterate, symbolic
from .mixed import mixed_kl_chi2_argmax
from .omega import wright_omega
from .reference import binary_mean_reference, pmd_mean_reference
from .updates import pmd_mean, pmd_part

__all__ = ["Proposition", "Outcome", "PROPOSITIONS", "run"]


@dataclass(frozen=True)
class Proposition:
    name: str
    statement: str
    checked: str
    tolerance: float
    check: Callable[[np.random.Generator], tuple[int, float]]


@dataclass(frozen=True)
class Outcome:
    proposition: Proposition
    instances: int
    worst: float
    seconds: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.worst) and self.worst <= self.proposition.tolerance)


PROPOSITIONS: list[Proposition] = []


def proposition(name: str, statement: str, checked: str, tolerance: float):
    def register(fn):
        PROPOSITIONS.append(Proposition(name, statement, checked, tolerance, fn))
        return fn

    return register


# -- random instances ---------------------------------------------------------


def _general(rng, n: int, k: int, tau_range=(1e-2, 10.0), concentration=(0.05, 3.0)):
    """``n`` prompts with ``k`` actions: Dirichlet policies, Gaussian or uniform rewards."""
    alpha = np.exp(rng.uniform(*np.log(concentration), size=(n, 1)))
    pi = rng.gamma(np.broadcast_to(alpha, (n, k)))
    pi /= pi.sum(axis=1, keepdims=True)
    scale = np.exp(rng.uniform(np.log(0.1), np.log(3.0), size=(n, 1)))
    r = np.where(rng.uniform(size=(n, 1)) < 0.5, rng.normal(size=(n, k)), rng.uniform(size=(n, k))) * scale
    tau = np.exp(rng.uniform(*np.log(tau_range), size=n))
    return pi, r, tau


def _binary_pairs(rng, n: int, p_min: float = 1e-9, tau_min: float = 1e-4, tau_max: float = 10.0):
    p = np.exp(rng.uniform(np.log(p_min), 0.0, size=n)) * rng.choice([1.0, -1.0], size=n)
    p = np.where(p > 0, p, 1.0 + p)  # mass near 0 and near 1
    p = np.clip(p, p_min, 1 - p_min)
    tau = np.exp(rng.uniform(np.log(tau_min), np.log(tau_max), size=n))
    return p, tau


# -- section 3: PMD-mean's population update ----------------------------------


@proposition(
    "lambert_w_form",
    "log pi_{t+1}/pi_t = a - omega(a + log lambda) solves s + lambda e^s = a with sum pi_{t+1} = 1",
    "stationarity residual / max(1, |r|/tau) and |sum pi_{t+1} - 1|; general rewards, K = 2..1000",
    1e-12,
)
def _lambert_w_form(rng):
    worst, count = 0.0, 0
    for k in (2, 5, 50, 1000):
        pi, r, tau = _general(rng, 200, k, tau_range=(1e-4, 10.0))
        res = pmd_mean(pi, r, tau)
        a, s = res.target, res.log_ratio
        # The target a = (r - r̄)/tau itself is known to eps |r| / tau only.
        scale = np.maximum(1.0, np.abs(r).max(axis=1, keepdims=True) / tau[:, None])
        stat = np.abs(s + res.lam[:, None] * np.exp(s) - a) / scale
        stat = np.where(pi > 0, stat, 0.0)
        worst = max(worst, stat.max(), np.abs(res.policy.sum(axis=1) - 1).max())
        count += 200
    return count, worst


@proposition(
    "regression_minimiser",
    "pi_{t+1} minimises E_t 1/2 (log q/pi_t - (r - r̄)/tau)^2 over the simplex",
    "loss(pi_{t+1}) - loss(generic optimiser over logits), relative; K = 2..6",
    1e-9,
)
def _regression_minimiser(rng):
    worst, count = 0.0, 0
    for _ in range(40):
        k = int(rng.integers(2, 7))
        pi, r, tau = _general(rng, 1, k, tau_range=(0.05, 5.0), concentration=(0.5, 3.0))
        ours = float(divergences.pmd_mean_regression_loss(pmd_mean(pi, r, tau).policy, pi, r, tau)[0])

        def loss(z):
            return float(divergences.pmd_mean_regression_loss(softmax(z)[None], pi, r, tau)[0])

        best = min(
            minimize(loss, start, method="BFGS", options={"gtol": 1e-12}).fun
            for start in (np.log(pi[0]), rng.normal(size=k))
        )
        worst = max(worst, (ours - best) / max(1.0, abs(best)))
        count += 1
    return count, worst


@proposition(
    "lambda_is_kl",
    "lambda = KL(pi_t || pi_{t+1})",
    "|lambda - KL| / lambda, KL summed in 60-digit arithmetic; general rewards",
    1e-12,
)
def _lambda_is_kl(rng):
    pi, r, tau = _general(rng, 300, 20, tau_range=(1e-3, 10.0))
    res = pmd_mean(pi, r, tau)
    worst = 0.0
    for i in range(pi.shape[0]):
        kl = -mp.fsum(mp.mpf(p) * mp.mpf(s) for p, s in zip(pi[i], res.log_ratio[i]))
        worst = max(worst, abs(float(kl / mp.mpf(res.lam[i])) - 1.0))
    return pi.shape[0], worst


@proposition(
    "log_ratio_below_target",
    "s(y) < a(y) = (r(y) - r̄)/tau for every action",
    "max of (s - a) / max(1, |r|/tau) (the margin a - s = omega(a + log lambda) may underflow, "
    "so up to rounding); general and binary rewards, tau down to 1e-4",
    4 * np.finfo(float).eps,
)
def _below_target(rng):
    pi, r, tau = _general(rng, 500, 30, tau_range=(1e-4, 10.0))
    res = pmd_mean(pi, r, tau)
    scale = np.maximum(1.0, np.abs(r).max(axis=1, keepdims=True) / tau[:, None])
    gap = np.where(pi > 0, (res.log_ratio - res.target) / scale, -np.inf).max()
    p, t = _binary_pairs(rng, 2000)
    step = binary.pmd_mean_step(p, t)
    scale_b = np.maximum(1.0, 1.0 / t)
    gap_b = max(((step.log_ratio_correct - (1 - p) / t) / scale_b).max(),
                ((step.log_ratio_incorrect + p / t) / scale_b).max())  # fmt: skip
    return 2500, max(gap, gap_b, 0.0)


@proposition(
    "chi2_equivalence",
    "pi_{t+1} is the maximiser of E_q r - tau KL(q||pi_t) - beta chi^2(q||pi_t) with beta = tau lambda/2",
    "max |log-ratio difference| / max(1,|s|) against an independent nested-root solver",
    1e-10,
)
def _equivalence(rng):
    worst, count = 0.0, 0
    for k in (2, 10, 300):
        pi, r, tau = _general(rng, 100, k, tau_range=(1e-3, 10.0))
        res = pmd_mean(pi, r, tau)
        other = mixed_kl_chi2_argmax(pi, r, tau, res.chi2_weight)
        diff = np.abs(other.log_ratio - res.log_ratio) / np.maximum(1.0, np.abs(res.log_ratio))
        worst = max(worst, np.where(pi > 0, diff, 0.0).max())
        count += 100
    return count, worst


@proposition(
    "chi2_objective_optimal",
    "no feasible perturbation of pi_{t+1} raises the mixed objective at beta = tau lambda/2",
    "max over random feasible directions of J(pi_{t+1} + e d) - J(pi_{t+1}), relative",
    1e-13,
)
def _objective_optimal(rng):
    pi, r, tau = _general(rng, 200, 8, tau_range=(1e-2, 10.0), concentration=(0.5, 3.0))
    res = pmd_mean(pi, r, tau)
    base = divergences.mixed_objective(res.policy, pi, r, tau, res.chi2_weight)
    worst = 0.0
    for _ in range(20):
        d = rng.normal(size=pi.shape)
        d -= d.mean(axis=1, keepdims=True)
        step = 0.3 * res.policy.min(axis=1, keepdims=True) / np.abs(d).max(axis=1, keepdims=True)
        q = res.policy + step * d
        gain = divergences.mixed_objective(q, pi, r, tau, res.chi2_weight) - base
        worst = max(worst, (gain / np.maximum(1.0, np.abs(base))).max())
    return 200 * 20, max(worst, 0.0)


@proposition(
    "lambda_zero_iff_flat",
    "lambda = 0 (no change) exactly when r is constant on the support; otherwise lambda > 0",
    "lambda == 0 and |pi_{t+1} - pi_t| (rounding) for constant-on-support rewards; count of lambda <= 0 otherwise",
    1e-15,
)
def _lambda_zero(rng):
    pi, r, tau = _general(rng, 200, 6)
    pi[:, :2] = 0.0
    pi /= pi.sum(axis=1, keepdims=True)
    flat = r.copy()
    flat[:, 2:] = flat[:, 2:3]  # constant where pi > 0, arbitrary elsewhere
    res_flat = pmd_mean(pi, flat, tau)
    res = pmd_mean(pi, r, tau)
    worst = max(np.abs(res_flat.lam).max() * 1e300, np.abs(res_flat.policy - pi).max(), float((res.lam <= 0).sum()))
    return 400, worst


# -- derived claims --------------------------------------------------------------


@proposition(
    "improvement",
    "E_{pi_{t+1}} r >= E_{pi_t} r (from the mixed objective at q = pi_t)",
    "max of E_t r - E_{t+1} r (must be <= 0); general rewards",
    1e-14,
)
def _improvement(rng):
    pi, r, tau = _general(rng, 2000, 12, tau_range=(1e-4, 10.0))
    res = pmd_mean(pi, r, tau)
    drop = (pi * r).sum(axis=1) - (res.policy * r).sum(axis=1)
    return 2000, max(0.0, float((drop / np.maximum(1.0, np.abs(r).max(axis=1))).max()))


@proposition(
    "conservative_vs_part",
    "PMD-mean improves the expected reward less than PMD-part: E_mean r <= E_part r",
    "max of E_mean r - E_part r (must be <= 0); general rewards, and binary p' on a (p, tau) grid",
    1e-12,
)
def _conservative(rng):
    pi, r, tau = _general(rng, 2000, 12, tau_range=(1e-3, 10.0))
    gap = (pmd_mean(pi, r, tau).policy * r).sum(axis=1) - (pmd_part(pi, r, tau).policy * r).sum(axis=1)
    p, t = np.meshgrid(np.geomspace(1e-9, 0.999, 200), np.geomspace(1e-4, 10.0, 50))
    gap_b = binary.pmd_mean_step(p, t).success - binary.pmd_part_step(p, t).success
    return 2000 + p.size, max(0.0, float(gap.max()), float(gap_b.max()))


@proposition(
    "pmd_part_tilt",
    "PMD-part's update is the tilt pi_t e^{r/tau}/Z and its log-ratio equals its regression target",
    "max |policy - softmax(log pi + r/tau)| / max(1, |r|/tau) and |sum pi_t e^{target} - 1|; tau >= 1e-4",
    1e-12,
)
def _part_tilt(rng):
    pi, r, tau = _general(rng, 500, 40, tau_range=(1e-4, 10.0))
    res = pmd_part(pi, r, tau)
    tilt = softmax(np.log(pi) + r / tau[:, None], axis=1)
    # Both sides round r/tau, known to eps |r|/tau.
    scale = np.maximum(1.0, np.abs(r).max(axis=1) / tau)
    feasible = np.abs((pi * np.exp(res.log_ratio)).sum(axis=1) - 1) / scale
    return 500, max((np.abs(res.policy - tilt) / scale[:, None]).max(), feasible.max())


@proposition(
    "invariances",
    "the update is equivariant to permuting actions and invariant to adding a constant to r",
    "max |difference| of policy and log-ratio under a random permutation and shift",
    1e-12,
)
def _invariances(rng):
    pi, r, tau = _general(rng, 300, 25)
    res = pmd_mean(pi, r, tau)
    perm = rng.permutation(pi.shape[1])
    permuted = pmd_mean(pi[:, perm], r[:, perm], tau)
    shifted = pmd_mean(pi, r + rng.normal(size=(300, 1)) * 5, tau)
    worst = max(
        np.abs(permuted.policy - res.policy[:, perm]).max(),
        np.abs(permuted.log_ratio - res.log_ratio[:, perm]).max() / max(1.0, np.abs(res.log_ratio).max()),
        np.abs(shifted.policy - res.policy).max(),
        np.abs(shifted.log_ratio - res.log_ratio).max() / max(1.0, np.abs(res.log_ratio).max()),
    )
    return 600, worst


@proposition(
    "reference_60_digits",
    "the float64 update agrees with a 60-digit mpmath solution of the same equations",
    "max relative error of policy, log-ratio and lambda; general (K <= 8) and binary rewards",
    1e-10,
)
def _reference(rng):
    worst, count = 0.0, 0
    for _ in range(12):
        k = int(rng.integers(2, 9))
        pi, r, tau = _general(rng, 1, k, tau_range=(1e-2, 10.0), concentration=(0.3, 3.0))
        res, ref = pmd_mean(pi, r, tau), pmd_mean_reference(pi[0], r[0], tau[0])
        worst = max(worst, _rel_err(res.policy[0], ref.policy), _rel_err(res.log_ratio[0], ref.log_ratio),
                    _rel_err(res.lam, [ref.lam]))  # fmt: skip
        count += 1
    p, t = _binary_pairs(rng, 12, p_min=1e-6, tau_min=1e-3)
    step = binary.pmd_mean_step(p, t)
    for i in range(p.size):
        ref = binary_mean_reference(p[i], t[i])
        worst = max(worst, _rel_err([step.success[i], step.log_ratio_correct[i], step.log_ratio_incorrect[i],
                                     step.lam[i]], [ref.policy[0], *ref.log_ratio, ref.lam]))  # fmt: skip
        count += 1
    return count, worst


def _rel_err(values, reference) -> float:
    return max(abs(float(v) - float(x)) / max(abs(float(x)), 1e-300) for v, x in zip(values, reference))


@proposition(
    "extreme_inputs_finite",
    "the update stays finite and normalised at tau = 1e-4, p = 1e-9, K = 1e5",
    "non-finite entries and |sum pi_{t+1} - 1| over extreme batches",
    1e-12,
)
def _extreme(rng):
    worst, count = 0.0, 0
    k = 100_000
    pi = rng.dirichlet(np.full(k, 0.3), size=2)
    r = rng.uniform(size=(2, k))
    rb = np.zeros((2, k))
    rb[:, 0] = 1.0
    pi_b = np.full((2, k), (1 - 1e-9) / (k - 1))
    pi_b[:, 0] = 1e-9
    for args in ((pi, r, 1e-4), (pi, r, 10.0), (pi_b, rb, 1e-4), (pi_b, rb, 1.0)):
        res = pmd_mean(*args)
        bad = (~np.isfinite(res.policy)).sum() + (~np.isfinite(res.log_ratio)).sum()
        worst = max(worst, float(bad), np.abs(res.policy.sum(axis=1) - 1).max())
        count += 2
    return count, worst


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
        pi = np.concatenate([w[:, :3] / w[:, :3].sum(1, keepdims=True) * p[:, None],
                             w[:, 3:] / w[:, 3:].sum(1, keepdims=True) * (1 - p[:, None])], axis=1)  # fmt: skip
        res = pmd_mean(pi, r, tau, method="general")
        step = binary.pmd_mean_step(p, tau)
        worst = max(
            np.abs(res.policy[:, :3].sum(1) - step.success).max(),
            (np.abs(res.log_ratio[:, 0] - step.log_ratio_correct) / np.maximum(1, np.abs(step.log_ratio_correct))).max(),
            (np.abs(res.log_ratio[:, 5] - step.log_ratio_incorrect) / np.maximum(1, np.abs(step.log_ratio_incorrect))).max(),
            (np.abs(res.lam - step.lam) / step.lam).max(),
        )  # fmt: skip
    return 3 * n, worst


_TABLE = [  # p, tau, PMD-mean p', PMD-part p', mean log rho0, part log rho0, beta (pmd-math.md §4)
    (0.01, 0.1, 0.25996, 0.99553, -0.291, -5.399, 0.01278),
    (0.1, 0.1, 0.74589, 0.99959, -1.265, -7.698, 0.04686),
    (0.5, 1.0, 0.71376, 0.73106, -0.558, -0.620, 0.05046),
]


@proposition(
    "binary_table",
    "the worked values of pmd-math.md §4 (p' for PMD-mean/part, log rho_0, beta)",
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
            worst = max(worst, abs(float(value) - q) / (0.5 * 10.0**-decimals))
    return len(_TABLE) * 5, worst


@proposition(
    "small_tau_limits",
    "as tau -> 0 at fixed p: PMD-mean log rho_0 -> -p/tau, beta -> p(1-p)/2; PMD-part log rho_0 ~ -1/tau - log p",
    "relative error of the asymptotic forms at tau = 1e-4 (p in [0.05, 0.95])",
    2e-3,
)
def _small_tau(rng):
    p = rng.uniform(0.05, 0.95, size=200)
    tau = 1e-4
    m, mm = binary.pmd_mean_step(p, tau), binary.pmd_mean_step_small_tau(p, tau)
    pt, pa = binary.pmd_part_step(p, tau), binary.pmd_part_step_small_tau(p, tau)
    worst = max(
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
    return 1, max(abs(float(m.success) - 0.031) / 0.031, 1 - float(pt.success))


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
        worst = max(worst, np.abs(a.policy - b.policy).max(),
                    (np.abs(a.log_ratio - b.log_ratio) / np.maximum(1, np.abs(b.log_ratio))).max())  # fmt: skip
    return 2 * n, worst


@proposition(
    "multi_step_convergence",
    "repeated exact steps raise the success probability monotonically towards 1 (PMD-mean and PMD-part)",
    "largest decrease p_t - p_{t+1}, and 1 - p_T after 200 steps from p_0 >= 1e-3 at tau <= 1",
    1e-12,
)
def _multi_step(rng):
    p0 = np.geomspace(1e-3, 0.9, 40)
    tau = np.geomspace(1e-3, 1.0, 40)[:, None]
    worst = 0.0
    for method in ("mean", "part"):
        path = iterate.iterate_success(p0, tau, 200, method=method)
        worst = max(worst, float(np.maximum(path[:-1] - path[1:], 0).max()), float((1 - path[-1]).max()))
    return 2 * p0.size * tau.size, worst


# -- tools ------------------------------------------------------------------------


@proposition(
    "wright_omega_accuracy",
    "the Wright omega kernel is exact to rounding relative to its conditioning",
    "max |omega - mpmath| / omega / (eps (1 + |z|/(1+omega))) over z in [-700, 1e12]",
    8.0,
)
def _omega(rng):
    z = np.concatenate([rng.uniform(-60, 60, 400), -np.exp(rng.uniform(0, np.log(700), 100)),
                        np.exp(rng.uniform(-20, np.log(1e12), 100))])  # fmt: skip
    w = wright_omega(z)
    worst = 0.0
    with mp.workdps(40):
        for zi, wi in zip(z, w):
            ref = mp.lambertw(mp.exp(mp.mpf(zi))).real
            if ref < mp.mpf("1e-300"):
                continue
            cond = 1 + abs(zi) / (1 + float(ref))
            worst = max(worst, abs(float((wi - ref) / ref)) / (np.finfo(float).eps * cond))
    return z.size, worst


@proposition(
    "symbolic_derivations",
    "sympy derives the stationarity conditions, the Lambert-W solution, beta = tau lambda/2, "
    "lambda = KL, the binary targets, the reward scale and the small-tau limit",
    "derivations whose residual does not simplify to 0",
    0.0,
)
def _symbolic(rng):
    derivations = symbolic.derive_all()
    return len(derivations), 0.0


def run(seed: int = 0, names: list[str] | None = None) -> list[Outcome]:
    """Run the propositions (all, or those named) with a seeded generator each."""
    import time

    chosen = [p for p in PROPOSITIONS if names is None or p.name in names]
    unknown = set(names or []) - {p.name for p in PROPOSITIONS}
    if unknown:
        raise ValueError(f"unknown propositions: {sorted(unknown)}")
    outcomes = []
    for prop in chosen:
        rng = np.random.default_rng([seed, PROPOSITIONS.index(prop)])
        t0 = time.perf_counter()
        try:
            count, worst = prop.check(rng)
        except AssertionError:
            count, worst = 0, float("inf")
        outcomes.append(Outcome(prop, int(count), float(worst), time.perf_counter() - t0))
    return outcomes
