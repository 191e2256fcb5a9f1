r"""The derivations behind PMD-mean, done in sympy (pmd-math.md §2–4).

Each function derives one step symbolically, asserts that the residual it
constructs simplifies to zero, and returns the named sympy expressions so a
reader can print them. ``derive_all()`` runs every derivation.

sympy does not simplify ``W(x) e^{W(x)} - x`` by itself; where the Lambert-W
function appears, its defining identity is applied as the rewrite
``e^{-W(x)} = W(x)/x`` (and checked numerically by the tests).
"""

from __future__ import annotations

import sympy as sp

__all__ = [
    "pmd_part_solution",
    "pmd_mean_stationarity",
    "lambert_w_solution",
    "mixed_objective_equivalence",
    "lambda_is_kl",
    "binary_targets",
    "reward_scale",
    "small_tau_chi2_weight",
    "omega_derivatives",
    "derive_all",
]


def _zero(expr, what: str) -> sp.Expr:
    residual = sp.simplify(expr)
    if residual != 0:
        raise AssertionError(f"{what}: residual {residual} does not simplify to 0")
    return residual


def _apply_lambert_identity(expr: sp.Expr) -> sp.Expr:
    """Rewrite ``exp(-W(x))`` as ``W(x)/x`` (from ``W e^W = x``) everywhere."""
    expr = sp.expand(expr, power_exp=True)
    return expr.replace(
        lambda e: e.func is sp.exp and e.args[0].func is sp.Mul and -e.args[0] != e.args[0]
        and isinstance(-e.args[0], sp.LambertW),
        lambda e: (-e.args[0]) / (-e.args[0]).args[0],
    )  # fmt: skip


def pmd_part_solution() -> dict[str, sp.Expr]:
    r"""``argmax_q E_q r - tau KL(q||pi)`` is the tilt ``pi e^{r/tau}/Z`` (§2).

    Stationarity of the Lagrangian in ``q_i``:
    ``r_i - tau (log(q_i/pi_i) + 1) - mu = 0``; the tilt satisfies it with
    ``mu = tau log Z - tau``, and it is normalised (three actions).
    """
    tau = sp.symbols("tau", positive=True)
    pi = sp.symbols("pi1:4", positive=True)
    r = sp.symbols("r1:4", real=True)
    Z = sum(p * sp.exp(ri / tau) for p, ri in zip(pi, r))
    q = [p * sp.exp(ri / tau) / Z for p, ri in zip(pi, r)]
    mu = tau * sp.log(Z) - tau
    stationarity = [ri - tau * (sp.log(qi / p) + 1) - mu for ri, qi, p in zip(r, q, pi)]
    for i, e in enumerate(stationarity):
        _zero(sp.expand_log(e, force=True), f"PMD-part stationarity, action {i + 1}")
    _zero(sum(q) - 1, "PMD-part normalisation")
    return {"policy": q[0], "multiplier": mu, "stationarity": stationarity[0]}


def pmd_mean_stationarity() -> dict[str, sp.Expr]:
    r"""The regression's stationarity condition ``s + lambda e^s = a`` (§3).

    Lagrangian ``sum_i pi_i (s_i - a_i)^2/2 + lambda (sum_i pi_i e^{s_i} - 1)``;
    its derivative in ``s_i``, divided by ``pi_i``.
    """
    lam = sp.symbols("lambda", nonnegative=True)
    pi = sp.symbols("pi1:4", positive=True)
    s = sp.symbols("s1:4", real=True)
    a = sp.symbols("a1:4", real=True)
    lagrangian = sum(p * (si - ai) ** 2 / 2 for p, si, ai in zip(pi, s, a))
    lagrangian += lam * (sum(p * sp.exp(si) for p, si in zip(pi, s)) - 1)
    condition = sp.diff(lagrangian, s[0]) / pi[0]
    _zero(condition - (s[0] + lam * sp.exp(s[0]) - a[0]), "PMD-mean stationarity")
    return {"lagrangian": lagrangian, "condition": sp.expand(condition)}


def lambert_w_solution() -> dict[str, sp.Expr]:
    r"""``s = a - W(lambda e^a)`` solves ``s + lambda e^s = a`` (§3).

    Equivalently ``s = a - omega(a + log lambda)`` and
    ``pi_{t+1}/pi_t = e^s = W(lambda e^a)/lambda``.
    """
    a = sp.symbols("a", real=True)
    lam = sp.symbols("lambda", positive=True)
    s = a - sp.LambertW(lam * sp.exp(a))
    residual = _apply_lambert_identity(s + lam * sp.exp(s) - a)
    _zero(residual, "Lambert-W solution")
    ratio = _apply_lambert_identity(sp.exp(s)) - sp.LambertW(lam * sp.exp(a)) / lam
    _zero(ratio, "ratio W(lambda e^a)/lambda")
    return {"log_ratio": s, "ratio": sp.LambertW(lam * sp.exp(a)) / lam}


def mixed_objective_equivalence() -> dict[str, sp.Expr]:
    r"""PMD-mean's update is stationary for ``E_q r - tau KL - beta chi^2`` with
    ``beta = tau lambda / 2`` (§3, equivalence).

    Stationarity in ``q_i``: ``r_i - tau log(q_i/pi_i) - tau - 2 beta q_i/pi_i - mu``.
    With ``q_i = pi_i e^{s_i}``, ``r_i = r̄ + tau (s_i + lambda e^{s_i})`` (the
    PMD-mean condition, ``a_i = (r_i - r̄)/tau``) and ``mu = r̄ - tau``, it vanishes.
    """
    tau, lam = sp.symbols("tau lambda", positive=True)
    pi_i = sp.symbols("pi_i", positive=True)
    s_i, rbar = sp.symbols("s_i rbar", real=True)
    beta = tau * lam / 2
    q_i = pi_i * sp.exp(s_i)
    r_i = rbar + tau * (s_i + lam * sp.exp(s_i))
    mu = rbar - tau
    stationarity = r_i - tau * sp.log(q_i / pi_i) - tau - 2 * beta * q_i / pi_i - mu
    _zero(sp.expand_log(stationarity, force=True), "mixed-objective stationarity")
    return {"chi2_weight": beta, "multiplier": mu, "stationarity": stationarity}


def lambda_is_kl() -> dict[str, sp.Expr]:
    r"""``lambda = KL(pi_t || pi_{t+1}) = -sum pi s`` (§3, identity 1).

    The identity ``lambda + sum pi s = sum pi (s + lambda e^s - a) + sum pi a
    + lambda (1 - sum pi e^s)`` holds for any ``s``; at the solution the three
    terms on the right vanish (stationarity, ``E a = 0``, normalisation).
    """
    lam = sp.symbols("lambda", positive=True)
    pi = sp.symbols("pi1:4", positive=True)
    s = sp.symbols("s1:4", real=True)
    a = sp.symbols("a1:4", real=True)
    kl = -sum(p * si for p, si in zip(pi, s))
    stationarity = sum(p * (si + lam * sp.exp(si) - ai) for p, si, ai in zip(pi, s, a))
    mean_target = sum(p * ai for p, ai in zip(pi, a))
    normalisation = 1 - sum(p * sp.exp(si) for p, si in zip(pi, s))
    identity = (lam - kl) - (stationarity + mean_target + lam * normalisation)
    _zero(identity, "lambda = KL identity")
    return {"kl": kl, "identity": identity}


def binary_targets() -> dict[str, sp.Expr]:
    r"""With ``r in {0,1}`` and ``p = pi(correct)``: ``a_1 = (1-p)/tau``, ``a_0 = -p/tau``,
    which depend on ``pi`` only through ``p`` and have mean zero (§4)."""
    p = sp.symbols("p", positive=True)
    tau = sp.symbols("tau", positive=True)
    rbar = p * 1 + (1 - p) * 0
    a1, a0 = (1 - rbar) / tau, (0 - rbar) / tau
    _zero(a1 - (1 - p) / tau, "correct target")
    _zero(a0 + p / tau, "incorrect target")
    _zero(p * a1 + (1 - p) * a0, "mean-zero targets")
    return {"a_correct": a1, "a_incorrect": a0}


def reward_scale() -> dict[str, sp.Expr]:
    r"""Rewards ``2r - 1`` at ``tau`` give the targets of rewards ``r`` at ``tau/2`` (§4)."""
    tau = sp.symbols("tau", positive=True)
    r, rbar = sp.symbols("r rbar", real=True)
    scaled = ((2 * r - 1) - (2 * rbar - 1)) / tau
    _zero(scaled - (r - rbar) / (tau / 2), "reward scale")
    return {"scaled_target": sp.simplify(scaled)}


def small_tau_chi2_weight() -> dict[str, sp.Expr]:
    r"""As ``tau -> 0`` at fixed ``p``: ``beta -> p(1-p)/2``, the reward variance over two (§4).

    In the limit the correct response takes all the mass (``rho_1 = 1/p``,
    ``s_1 = -log p``), so ``lambda = (a_1 - s_1)/rho_1 = p((1-p)/tau + log p)`` and
    ``beta = tau lambda/2 = p(1-p)/2 + (tau/2) p log p``.
    """
    p = sp.symbols("p", positive=True)
    tau = sp.symbols("tau", positive=True)
    a1 = (1 - p) / tau
    s1, rho1 = -sp.log(p), 1 / p
    lam = (a1 - s1) / rho1
    beta = sp.expand(tau * lam / 2)
    _zero(beta - (p * (1 - p) / 2 + tau * p * sp.log(p) / 2), "asymptotic beta")
    limit = sp.limit(beta, tau, 0)
    _zero(limit - p * (1 - p) / 2, "beta limit")
    return {"lambda": lam, "chi2_weight": beta, "limit": limit}


def omega_derivatives() -> dict[str, sp.Expr]:
    r"""``omega' = omega/(1+omega)`` from ``omega + log omega = z``, and the next three."""
    z = sp.symbols("z", real=True)
    w = sp.Function("omega")(z)
    implicit = sp.diff(w + sp.log(w) - z, z)
    d1 = sp.solve(implicit, sp.Derivative(w, z))[0]
    _zero(d1 - w / (1 + w), "omega'")
    found = {"1": d1}
    expected = {
        "2": w / (1 + w) ** 3,
        "3": w * (1 - 2 * w) / (1 + w) ** 5,
        "4": w * (1 - 8 * w + 6 * w**2) / (1 + w) ** 7,
    }
    current = d1
    for k in ("2", "3", "4"):
        current = sp.diff(current, z).subs(sp.Derivative(w, z), d1)
        _zero(current - expected[k], f"omega derivative {k}")
        found[k] = sp.simplify(current)
    return found


def derive_all() -> dict[str, dict[str, sp.Expr]]:
    """Run every derivation; raises ``AssertionError`` if one fails."""
    return {f.__name__: f() for f in (
        pmd_part_solution, pmd_mean_stationarity, lambert_w_solution, mixed_objective_equivalence,
        lambda_is_kl, binary_targets, reward_scale, small_tau_chi2_weight, omega_derivatives,
    )}  # fmt: skip
