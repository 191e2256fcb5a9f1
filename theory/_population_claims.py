"""The propositions of docs/math.md §3 (PMD-mean's population update) and the claims derived from it."""

from __future__ import annotations

import mpmath as mp
import numpy as np
from scipy.optimize import minimize
from scipy.special import softmax

from . import binary, divergences
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
from .mixed import mixed_kl_chi2_argmax
from .reference import binary_mean_reference, pmd_mean_reference
from .updates import pmd_mean, pmd_part

#: This module's propositions, in the order they are run.
CLAIMS: list = []
proposition = registrar(CLAIMS)


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
        worst = _worst(worst, stat, np.abs(res.policy.sum(axis=1) - 1))
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

        def loss(z, pi=pi, r=r, tau=tau):
            return float(divergences.pmd_mean_regression_loss(softmax(z)[None], pi, r, tau)[0])

        best = min(
            minimize(loss, start, method="BFGS", options={"gtol": 1e-12}).fun
            for start in (np.log(pi[0]), rng.normal(size=k))
        )
        worst = _worst(worst, (ours - best) / max(1.0, abs(best)))
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
        worst = _worst(worst, abs(float(kl / mp.mpf(res.lam[i])) - 1.0))
    return pi.shape[0], worst


@proposition(
    "log_ratio_below_target",
    "s(y) < a(y) = (r(y) - r̄)/tau for every action",
    "largest violation max(0, s - a) / max(1, |r|/tau) (the margin a - s = omega(a + log lambda) may "
    "underflow, so up to rounding); general and binary rewards, tau down to 1e-4",
    4 * np.finfo(float).eps,
)
def _below_target(rng):
    pi, r, tau = _general(rng, 500, 30, tau_range=(1e-4, 10.0))
    res = pmd_mean(pi, r, tau)
    scale = np.maximum(1.0, np.abs(r).max(axis=1, keepdims=True) / tau[:, None])
    gap = np.where(pi > 0, (res.log_ratio - res.target) / scale, -np.inf)
    p, t = _binary_pairs(rng, 2000)
    step = binary.pmd_mean_step(p, t)
    scale_b = np.maximum(1.0, 1.0 / t)
    gap_c = (step.log_ratio_correct - (1 - p) / t) / scale_b
    gap_i = (step.log_ratio_incorrect + p / t) / scale_b
    return 2500, _worst(0.0, gap, gap_c, gap_i)


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
        worst = _worst(worst, np.where(pi > 0, diff, 0.0))
        count += 100
    return count, worst


@proposition(
    "chi2_objective_optimal",
    "no feasible perturbation of pi_{t+1} raises the mixed objective at beta = tau lambda/2",
    "largest gain max(0, J(pi_{t+1} + e d) - J(pi_{t+1})) over random feasible directions, relative",
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
        worst = _worst(worst, gain / np.maximum(1.0, np.abs(base)))
    return 200 * 20, worst


@proposition(
    "lambda_zero_iff_flat",
    "lambda = 0 (no change) exactly when r is constant on the support; otherwise lambda > 0",
    "count of lambda != 0, |pi_{t+1} - pi_t| and |s| on the support (rounding) for constant-on-support "
    "rewards; count of lambda <= 0 otherwise",
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
    moved = np.abs(res_flat.policy - pi)
    log_ratio = np.where(pi > 0, np.abs(res_flat.log_ratio), 0.0)
    not_positive = np.count_nonzero(~(res.lam > 0))  # NaN counts too
    return 400, _worst(np.count_nonzero(res_flat.lam != 0), moved, log_ratio, not_positive)


# -- derived claims --------------------------------------------------------------


@proposition(
    "improvement",
    "E_{pi_{t+1}} r >= E_{pi_t} r (from the mixed objective at q = pi_t)",
    "largest violation max(0, E_t r - E_{t+1} r) / max(1, |r|); general rewards",
    1e-14,
)
def _improvement(rng):
    pi, r, tau = _general(rng, 2000, 12, tau_range=(1e-4, 10.0))
    res = pmd_mean(pi, r, tau)
    drop = (pi * r).sum(axis=1) - (res.policy * r).sum(axis=1)
    return 2000, _worst(0.0, drop / np.maximum(1.0, np.abs(r).max(axis=1)))


@proposition(
    "conservative_vs_part",
    "PMD-mean improves the expected reward less than PMD-part: E_mean r <= E_part r",
    "largest violation max(0, E_mean r - E_part r); general rewards, and binary p' on a (p, tau) grid",
    1e-12,
)
def _conservative(rng):
    pi, r, tau = _general(rng, 2000, 12, tau_range=(1e-3, 10.0))
    gap = (pmd_mean(pi, r, tau).policy * r).sum(axis=1) - (pmd_part(pi, r, tau).policy * r).sum(axis=1)
    p, t = np.meshgrid(np.geomspace(1e-9, 0.999, 200), np.geomspace(1e-4, 10.0, 50))
    gap_b = binary.pmd_mean_step(p, t).success - binary.pmd_part_step(p, t).success
    return 2000 + p.size, _worst(0.0, gap, gap_b)


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
    return 500, _worst(np.abs(res.policy - tilt) / scale[:, None], feasible)


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
    worst = _worst(
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
        worst = _worst(
            worst,
            _rel_err(res.policy[0], ref.policy),
            _rel_err(res.log_ratio[0], ref.log_ratio),
            _rel_err(res.lam, [ref.lam]),
        )
        count += 1
    p, t = _binary_pairs(rng, 12, p_min=1e-6, tau_min=1e-3)
    step = binary.pmd_mean_step(p, t)
    for i in range(p.size):
        ref = binary_mean_reference(p[i], t[i])
        ours = [step.success[i], step.log_ratio_correct[i], step.log_ratio_incorrect[i], step.lam[i]]
        worst = _worst(worst, _rel_err(ours, [ref.policy[0], *ref.log_ratio, ref.lam]))
        count += 1
    return count, worst


def _rel_err(values, reference) -> float:
    """``max_i |v_i - x_i| / |x_i|`` (``|x_i|`` floored at 1e-300); NaN if any ``v_i`` is NaN."""
    return _worst(*(abs(float(v) - float(x)) / max(abs(float(x)), 1e-300) for v, x in zip(values, reference)))


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
        worst = _worst(worst, bad, np.abs(res.policy.sum(axis=1) - 1))
        count += 2
    return count, worst
