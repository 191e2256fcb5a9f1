"""The sympy derivations, and the Lambert-W identity they rely on, checked numerically."""

import mpmath as mp
import pytest
import sympy as sp

from pmdlab.theory import symbolic


def test_every_derivation_holds():
    derived = symbolic.derive_all()
    assert set(derived) == {f for f in symbolic.__all__ if f != "derive_all"}
    assert sp.simplify(derived["mixed_objective_equivalence"]["chi2_weight"] - sp.Symbol("tau", positive=True)
                       * sp.Symbol("lambda", positive=True) / 2) == 0  # fmt: skip


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
