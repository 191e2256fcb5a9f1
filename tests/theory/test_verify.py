"""The propositions, one test each, and the verification command and its table."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import sympy as sp

from pmdlab.theory import _binary_claims, _population_claims, propositions, symbolic, verify

#: Every claim of docs/math.md §3–4 the registry must hold (the report quotes "21 of 21").
EXPECTED = (
    "lambert_w_form",
    "regression_minimiser",
    "lambda_is_kl",
    "log_ratio_below_target",
    "chi2_equivalence",
    "chi2_objective_optimal",
    "lambda_zero_iff_flat",
    "improvement",
    "conservative_vs_part",
    "pmd_part_tilt",
    "invariances",
    "reference_60_digits",
    "extreme_inputs_finite",
    "binary_depends_on_p",
    "binary_table",
    "small_tau_limits",
    "conservative_at_low_p",
    "reward_scale",
    "multi_step_convergence",
    "wright_omega_accuracy",
    "symbolic_derivations",
)


def _run_one(name: str, seed: int = 0) -> propositions.Outcome:
    (outcome,) = propositions.run(seed=seed, names=[name])
    return outcome


def test_the_registry_is_complete():
    names = [p.name for p in propositions.PROPOSITIONS]
    assert len(names) == len(set(names)), "duplicate proposition names"
    assert sorted(names) == sorted(EXPECTED)
    for p in propositions.PROPOSITIONS:
        assert p.statement and p.checked, p.name
        assert np.isfinite(p.tolerance) and p.tolerance >= 0, p.name


@pytest.mark.parametrize("prop", propositions.PROPOSITIONS, ids=[p.name for p in propositions.PROPOSITIONS])
def test_proposition_error_is_within_its_tolerance(prop):
    outcome = _run_one(prop.name)
    assert outcome.instances > 0, f"{prop.name}: checked no instances"
    assert np.isfinite(outcome.worst) and outcome.worst <= prop.tolerance, (
        f"{prop.name}: measured error {outcome.worst:.3e} > tolerance {prop.tolerance:.3e} ({prop.checked})"
    )
    assert outcome.passed, outcome.summary()


# -- the checks can fail ---------------------------------------------------------------


def _nan_in_first_action(update):
    """``update`` with NaN as the first action's probability and log-ratio in every row."""

    def poisoned(*args, **kwargs):
        res = update(*args, **kwargs)
        policy, log_ratio = res.policy.copy(), res.log_ratio.copy()
        policy[..., 0] = np.nan
        log_ratio[..., 0] = np.nan
        return dataclasses.replace(res, policy=policy, log_ratio=log_ratio)

    return poisoned


def _replace_update(monkeypatch, update):
    """Every claim module calls ``update`` instead of :func:`pmdlab.theory.pmd_mean`."""
    for module in (_population_claims, _binary_claims):
        monkeypatch.setattr(module, "pmd_mean", update)


@pytest.mark.parametrize(
    "name",
    [
        "lambert_w_form",
        "lambda_is_kl",
        "log_ratio_below_target",
        "chi2_equivalence",
        "lambda_zero_iff_flat",
        "improvement",
        "conservative_vs_part",
        "invariances",
        "extreme_inputs_finite",
        "binary_depends_on_p",
        "reward_scale",
    ],
)
def test_a_nan_in_the_update_fails_the_proposition(monkeypatch, name):
    """A NaN error fails: the worst error is not a ``max`` that would drop it. (The optimality checks
    ``regression_minimiser`` and ``chi2_objective_optimal`` hand the policy to objectives that reject NaN
    with a ValueError instead.)"""
    _replace_update(monkeypatch, _nan_in_first_action(_population_claims.pmd_mean))
    outcome = _run_one(name)
    assert not outcome.passed and np.isnan(outcome.worst), outcome.summary()


def test_a_tiny_nonzero_lambda_for_flat_rewards_fails(monkeypatch):
    """``lambda = 0`` exactly for flat rewards: even the smallest subnormal lambda is a violation."""
    update = _population_claims.pmd_mean

    def subnormal_lambda(*args, **kwargs):
        res = update(*args, **kwargs)
        return dataclasses.replace(res, lam=np.where(res.lam == 0, 5e-324, res.lam))

    _replace_update(monkeypatch, subnormal_lambda)
    outcome = _run_one("lambda_zero_iff_flat")
    assert not outcome.passed and outcome.worst >= 1, outcome.summary()


def test_a_wrong_derivation_is_counted(monkeypatch):
    """A residual that does not vanish counts as one failure; nothing raises."""

    def wrong(check=symbolic._zero):
        x = sp.Symbol("x", positive=True)
        check(sp.log(x**2) - 2 * sp.log(x) + x / 10**6, "a claim off by x/1e6", symbolic._expand_logs)
        return {}

    monkeypatch.setattr(symbolic, "DERIVATIONS", symbolic.DERIVATIONS + (wrong,))
    outcome = _run_one("symbolic_derivations")
    assert outcome.worst == 1.0 and not outcome.passed, outcome.summary()
    assert outcome.instances == len(symbolic.residuals())


# -- the command and its table ---------------------------------------------------------


def test_table_and_exit_status(capsys):
    assert verify.main(["--only", "binary_table", "lambda_zero_iff_flat", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "binary_table" in out and "2 of 2 propositions pass" in out
    row = next(line for line in out.splitlines() if line.startswith("binary_table"))
    outcome = _run_one("binary_table", seed=3)
    assert f"{outcome.worst:.2e}" in row and f"{outcome.tolerance:.2e}" in row and row.endswith("pass")


def test_a_failing_check_fails_the_command(monkeypatch, capsys):
    broken = propositions.Proposition("broken", "a claim", "nothing", 0.0, lambda rng: (1, 1.0))
    monkeypatch.setattr(propositions, "PROPOSITIONS", propositions.PROPOSITIONS + [broken])
    monkeypatch.setattr(verify, "PROPOSITIONS", propositions.PROPOSITIONS)
    assert verify.main(["--only", "broken"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "failed: broken" in out


def test_unknown_name_is_an_error():
    with pytest.raises(ValueError, match="unknown propositions"):
        propositions.run(names=["no_such_claim"])


def test_module_entry_point_lists_propositions():
    out = subprocess.run(
        [sys.executable, "-m", "pmdlab.theory.verify", "--list"], capture_output=True, text=True, check=True
    ).stdout
    listed = [line.split(":")[0] for line in out.splitlines() if line.strip()]
    assert listed == [p.name for p in propositions.PROPOSITIONS]


def test_markdown_table():
    outcomes = propositions.run(names=["binary_table"])
    table = verify.format_table(outcomes, markdown=True)
    assert table.splitlines()[0].startswith("| proposition |") and "| pass |" in table


def test_markdown_table_escapes_pipes_in_cells():
    """Descriptions such as ``|sum pi - 1|`` must not split a row into extra cells."""
    outcomes = propositions.run(names=["lambert_w_form", "pmd_part_tilt"])
    for row in verify.format_table(outcomes, markdown=True).splitlines()[2:]:
        unescaped = row.replace("\\|", "")
        assert unescaped.count("|") == 7, row
