"""The sympy derivations, and the Lambert-W identity they rely on, checked numerically."""

import inspect

import mpmath as mp
import numpy as np
import pytest
import sympy as sp

from pmdlab.theory import symbolic


def test_every_derivation_holds():
    derived = symbolic.derive_all()
    public = [getattr(symbolic, name) for name in symbolic.__all__]
    takes_a_check = {
        f.__name__ for f in public if inspect.isfunction(f) and "check" in inspect.signature(f).parameters
    }
    takes_a_check -= {"derive_all"}
    assert set(derived) == {f.__name__ for f in symbolic.DERIVATIONS} == takes_a_check
    assert (
        sp.simplify(
            derived["mixed_objective_equivalence"]["chi2_weight"]
            - sp.Symbol("tau", positive=True) * sp.Symbol("lambda", positive=True) / 2
        )
        == 0
    )


def test_every_residual_vanishes_at_random_points():
    """Evaluated as constructed (before the Lambert-W rewrite) at 50 digits, independently of simplify."""
    claims = symbolic.residuals()
    assert len(claims) >= len(symbolic.DERIVATIONS)
    rng = np.random.default_rng(0)
    sizes = {claim: symbolic.numeric_residual(expr, rng, points=5) for claim, expr, _ in claims}
    assert all(size <= 1e-30 for size in sizes.values()), sizes


@pytest.mark.parametrize(
    "expr, vanishes",
    [
        (
            sp.LambertW(sp.Symbol("x", positive=True)) * sp.exp(sp.LambertW(sp.Symbol("x", positive=True)))
            - sp.Symbol("x", positive=True),
            True,
        ),
        (sp.sin(sp.Symbol("y")) ** 2 + sp.cos(sp.Symbol("y")) ** 2 - 1, True),
        (sp.exp(sp.Symbol("y")) - 1 - sp.Symbol("y"), False),
        (sp.Symbol("y") * 1e-20, False),
    ],
)
def test_numeric_residual_separates_identities_from_wrong_claims(expr, vanishes):
    size = symbolic.numeric_residual(expr, np.random.default_rng(1))
    assert (size <= 1e-30) is vanishes, size


def test_numeric_residual_of_an_unevaluated_derivative_is_nan():
    omega = sp.Function("omega")(sp.Symbol("z"))
    assert np.isnan(symbolic.numeric_residual(sp.Derivative(omega, sp.Symbol("z")), np.random.default_rng(0)))


@pytest.mark.parametrize("x", [1e-300, 1e-8, 0.3, 1.0, 7.5, 1e5, 1e200])
def test_the_lambert_rewrite_rule(x):
    # The derivations rewrite exp(-W(x)) as W(x)/x; check it at 50 digits.
    with mp.workdps(50):
        w = mp.lambertw(mp.mpf(x)).real
        assert abs(mp.exp(-w) - w / mp.mpf(x)) <= mp.mpf(10) ** -45 * mp.exp(-w)


def test_a_wrong_claim_is_caught():
    with pytest.raises(AssertionError, match="does not simplify"):
        symbolic._zero(sp.Symbol("x") + 1, "a wrong claim")


def test_small_tau_limit_value():
    out = symbolic.small_tau_chi2_weight()
    p = sp.Symbol("p", positive=True)
    assert sp.simplify(out["limit"] - p * (1 - p) / 2) == 0
