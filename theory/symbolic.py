r"""The derivations behind PMD-mean, done in sympy (docs/math.md §2–4).

Each function derives one step symbolically, hands every residual it
constructs (an expression that must vanish identically) to ``check``, and
returns the named sympy expressions so a reader can print them. The default
``check`` asserts that the residual simplifies to zero; ``derive_all()`` runs
every derivation so, and ``residuals()`` collects the residuals instead.

sympy does not simplify ``W(x) e^{W(x)} - x`` by itself; where the Lambert-W
function appears, its defining identity is applied as the rewrite
``e^{-W(x)} = W(x)/x`` before simplifying. ``numeric_residual`` evaluates a
residual as constructed, without the rewrite, at random points to 50 digits,
which checks the rewrite and sympy's simplification independently.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import sympy as sp
from sympy.core.function import AppliedUndef

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
    "DERIVATIONS",
    "derive_all",
    "residuals",
    "simplified_residual",
    "numeric_residual",
    "residual_vanishes",
]

Rewrite = Callable[[sp.Expr], sp.Expr]
#: ``check(residual, claim, rewrite)``: what a derivation does with each residual it constructs.
Check = Callable[..., object]


def _as_is(expr: sp.Expr) -> sp.Expr:
    return expr


def simplified_residual(expr: sp.Expr, rewrite: Rewrite = _as_is) -> sp.Expr:
    """``simplify(rewrite(expr))``: 0 when sympy proves the residual vanishes."""
    return sp.simplify(rewrite(expr))


def _zero(expr, what: str, rewrite: Rewrite = _as_is) -> sp.Expr:
    """The default ``check``: raises ``AssertionError`` unless ``simplify(rewrite(expr)) == 0``."""
    residual = simplified_residual(expr, rewrite)
    if residual != 0:
        raise AssertionError(f"{what}: residual {residual} does not simplify to 0")
    return residual


def _expand_logs(expr: sp.Expr) -> sp.Expr:
    """``log(x y) = log x + log y`` and ``log e^x = x``, valid here since the symbols are positive or real."""
    return sp.expand_log(expr, force=True)


def _apply_lambert_identity(expr: sp.Expr) -> sp.Expr:
    """Rewrite ``exp(-W(x))`` as ``W(x)/x`` (from ``W e^W = x``) everywhere."""
    expr = sp.expand(expr, power_exp=True)
    return expr.replace(
        lambda e: (
            e.func is sp.exp
            and e.args[0].func is sp.Mul
            and -e.args[0] != e.args[0]
            and isinstance(-e.args[0], sp.LambertW)
        ),
        lambda e: (-e.args[0]) / (-e.args[0]).args[0],
    )


def pmd_part_solution(check: Check = _zero) -> dict[str, sp.Expr]:
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
        check(e, f"PMD-part stationarity, action {i + 1}", _expand_logs)
    check(sum(q) - 1, "PMD-part normalisation")
    return {"policy": q[0], "multiplier": mu, "stationarity": stationarity[0]}


def pmd_mean_stationarity(check: Check = _zero) -> dict[str, sp.Expr]:
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
    check(condition - (s[0] + lam * sp.exp(s[0]) - a[0]), "PMD-mean stationarity")
    return {"lagrangian": lagrangian, "condition": sp.expand(condition)}


def lambert_w_solution(check: Check = _zero) -> dict[str, sp.Expr]:
    r"""``s = a - W(lambda e^a)`` solves ``s + lambda e^s = a`` (§3).

    Equivalently ``s = a - omega(a + log lambda)`` and
    ``pi_{t+1}/pi_t = e^s = W(lambda e^a)/lambda``.
    """
    a = sp.symbols("a", real=True)
    lam = sp.symbols("lambda", positive=True)
    s = a - sp.LambertW(lam * sp.exp(a))
    check(s + lam * sp.exp(s) - a, "Lambert-W solution", _apply_lambert_identity)
    ratio = sp.LambertW(lam * sp.exp(a)) / lam
    check(sp.exp(s) - ratio, "ratio W(lambda e^a)/lambda", _apply_lambert_identity)
    return {"log_ratio": s, "ratio": sp.LambertW(lam * sp.exp(a)) / lam}


def mixed_objective_equivalence(check: Check = _zero) -> dict[str, sp.Expr]:
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
    check(stationarity, "mixed-objective stationarity", _expand_logs)
    return {"chi2_weight": beta, "multiplier": mu, "stationarity": stationarity}


def lambda_is_kl(check: Check = _zero) -> dict[str, sp.Expr]:
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
    check(identity, "lambda = KL identity")
    return {"kl": kl, "identity": identity}


def binary_targets(check: Check = _zero) -> dict[str, sp.Expr]:
    r"""With ``r in {0,1}`` and ``p = pi(correct)``: ``a_1 = (1-p)/tau``, ``a_0 = -p/tau``,
    which depend on ``pi`` only through ``p`` and have mean zero (§4)."""
    p = sp.symbols("p", positive=True)
    tau = sp.symbols("tau", positive=True)
    rbar = p * 1 + (1 - p) * 0
    a1, a0 = (1 - rbar) / tau, (0 - rbar) / tau
    check(a1 - (1 - p) / tau, "correct target")
    check(a0 + p / tau, "incorrect target")
    check(p * a1 + (1 - p) * a0, "mean-zero targets")
    return {"a_correct": a1, "a_incorrect": a0}


def reward_scale(check: Check = _zero) -> dict[str, sp.Expr]:
    r"""Rewards ``2r - 1`` at ``tau`` give the targets of rewards ``r`` at ``tau/2`` (§4)."""
    tau = sp.symbols("tau", positive=True)
    r, rbar = sp.symbols("r rbar", real=True)
    scaled = ((2 * r - 1) - (2 * rbar - 1)) / tau
    check(scaled - (r - rbar) / (tau / 2), "reward scale")
    return {"scaled_target": sp.simplify(scaled)}


def small_tau_chi2_weight(check: Check = _zero) -> dict[str, sp.Expr]:
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
    check(beta - (p * (1 - p) / 2 + tau * p * sp.log(p) / 2), "asymptotic beta")
    limit = sp.limit(beta, tau, 0)
    check(limit - p * (1 - p) / 2, "beta limit")
    return {"lambda": lam, "chi2_weight": beta, "limit": limit}


def omega_derivatives(check: Check = _zero) -> dict[str, sp.Expr]:
    r"""``omega' = omega/(1+omega)`` from ``omega + log omega = z``, and the next three."""
    z = sp.symbols("z", real=True)
    w = sp.Function("omega")(z)
    implicit = sp.diff(w + sp.log(w) - z, z)
    d1 = sp.solve(implicit, sp.Derivative(w, z))[0]
    check(d1 - w / (1 + w), "omega'")
    found = {"1": d1}
    expected = {
        "2": w / (1 + w) ** 3,
        "3": w * (1 - 2 * w) / (1 + w) ** 5,
        "4": w * (1 - 8 * w + 6 * w**2) / (1 + w) ** 7,
    }
    current = d1
    for k in ("2", "3", "4"):
        current = sp.diff(current, z).subs(sp.Derivative(w, z), d1)
        check(current - expected[k], f"omega derivative {k}")
        found[k] = sp.simplify(current)
    return found


DERIVATIONS: tuple[Callable[..., dict[str, sp.Expr]], ...] = (
    pmd_part_solution,
    pmd_mean_stationarity,
    lambert_w_solution,
    mixed_objective_equivalence,
    lambda_is_kl,
    binary_targets,
    reward_scale,
    small_tau_chi2_weight,
    omega_derivatives,
)


def derive_all(check: Check = _zero) -> dict[str, dict[str, sp.Expr]]:
    """Run every derivation; with the default ``check``, raises ``AssertionError`` if one fails."""
    return {f.__name__: f(check) for f in DERIVATIONS}


def residuals(derivations=None) -> list[tuple[str, sp.Expr, Rewrite]]:
    """Every residual the derivations (default: ``DERIVATIONS``) construct, unsimplified.

    Returns ``(claim, residual, rewrite)`` triples; each residual must vanish
    identically in its symbols, and ``simplify(rewrite(residual))`` is how
    sympy is to see it.
    """
    found = []
    for f in DERIVATIONS if derivations is None else derivations:

        def record(expr, what, rewrite=_as_is, name=f.__name__):
            found.append((f"{name}: {what}", expr, rewrite))

        f(record)
    return found


def _draw(symbol: sp.Symbol, rng: np.random.Generator) -> float:
    """A value in ``(0.2, 2)`` for a positive or non-negative symbol, in ``(-2, 2)`` for any other."""
    return float(rng.uniform(0.2, 2.0) if symbol.is_nonnegative else rng.uniform(-2.0, 2.0))


def numeric_residual(expr: sp.Expr, rng: np.random.Generator, points: int = 3, digits: int = 50) -> float:
    r"""``max |expr|`` over ``points`` random points, evaluated to ``digits`` significant digits.

    Each symbol is drawn from its domain (see ``_draw``); an undefined function
    such as ``omega(z)`` stands for a positive value. sympy's ``evalf`` raises
    its working precision where terms cancel, so an identity evaluates far
    below ``10^{-digits}`` (terms here are at most ``e^{10}``) and a wrong one
    to ``O(1)``. NaN where the residual has no numerical value (an unevaluated
    derivative, say).
    """
    functions = sorted(expr.atoms(AppliedUndef), key=str)
    expr = expr.subs({f: sp.Dummy(f"{f.func}", positive=True) for f in functions})
    symbols = sorted(expr.free_symbols, key=str)
    values = []
    for _ in range(points):
        point = {x: sp.Float(_draw(x, rng), digits) for x in symbols}
        value = sp.Abs(expr.evalf(digits, subs=point)).evalf(digits)
        values.append(float(value) if value.is_real else np.nan)
    return float(np.max(values))


def residual_vanishes(
    expr: sp.Expr, rewrite: Rewrite, rng: np.random.Generator, tolerance: float = 1e-30
) -> bool:
    """Whether ``simplify(rewrite(expr)) == 0`` and ``|expr| <= tolerance`` at random points (50 digits)."""
    return simplified_residual(expr, rewrite) == 0 and numeric_residual(expr, rng) <= tolerance
