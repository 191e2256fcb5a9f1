"""Claims that compare methods: fed numbers where they must fail, they fail; a paper claim that does
not reproduce is reported, not counted as a failure of the report."""

import numpy as np
import pytest

import paper_repro
from figures import FIGURES_IN_ORDER
from figures.compare import claim_above, claim_positive, verdict
from figures.regimes import ALGORITHMS, MEASURES, run_measures
from figures.registry import Claim


@pytest.mark.parametrize(
    "a, b, holds",
    [
        ([0.9, 0.92, 0.91, 0.93, 0.9], [0.7, 0.72, 0.69, 0.71, 0.7], True),
        ([0.9, 0.5, 0.91, 0.6, 0.8], [0.7, 0.9, 0.69, 0.8, 0.75], False),  # overlapping seeds
        ([0.7, 0.72, 0.69, 0.71, 0.7], [0.9, 0.92, 0.91, 0.93, 0.9], False),  # the other way round
    ],
)
def test_claim_above_holds_only_when_the_interval_of_the_difference_is_above_zero(a, b, holds):
    c = claim_above("A beats B", a, b)
    assert c.passed is holds and "difference" in c.detail and "(Welch t, n = 5 + 5)" in c.detail
    assert claim_positive("gain", np.array(a) - np.array(b)).passed is holds
    paired = claim_above("A beats B on the same seeds", a, b, paired=True)
    assert paired.passed is holds and "(paired t, n = 5)" in paired.detail


def test_verdict_names_the_higher_method_or_says_not_separated():
    assert verdict([1.0, 1.1, 1.05], [0.0, 0.1, 0.05], ("A", "B")).endswith("(A higher)")
    assert verdict([0.0, 0.1, 0.05], [1.0, 1.1, 1.05], ("A", "B")).endswith("(B higher)")
    assert "not separated" in verdict([0.0, 1.0, 0.5], [0.1, 0.9, 0.4], ("A", "B"))


def test_claim_kinds():
    with pytest.raises(ValueError, match="kind"):
        Claim("x", True, kind="hope")
    assert paper_repro._claim_line(Claim("x", False, "d", kind="paper")) == "- **not reproduced**: x (d)"
    assert paper_repro._claim_line(Claim("x", True, kind="paper")) == "- reproduced: x"
    assert paper_repro._claim_line(Claim("x", False)).endswith("**FAILED**")
    assert paper_repro._claim_line(Claim("x", False, "d", kind="finding")) == "- **does not hold**: x (d)"
    assert paper_repro._claim_line(Claim("x", True, kind="finding")) == "- holds: x"


def test_run_measures_against_a_hand_computed_run():
    metrics = {
        "success_mean": np.array([0.2, 0.5, 0.3, 0.6, 0.55]),
        "kl_old_new": np.array([np.nan, 0.1, 0.3, 0.2, 0.0]),
        "collapses": np.array([0, 1, 3, 0, 2]),
    }
    m = run_measures(metrics, prompts=4)
    assert m["final"] == 0.55 and m["start"] == 0.2
    assert m["drop"] == pytest.approx(0.2)  # 0.5 -> 0.3
    assert m["kl"] == pytest.approx(0.15) and m["collapses"] == pytest.approx(1.5)
    assert run_measures({**metrics, "success_mean": np.linspace(0.1, 0.9, 5)}, 4)["drop"] == 0.0


def _regimes_data(mean_final, part_final, mean_drop, part_drop):
    """A grid of one reward scheme, tau 0.01, n 4, staleness 0 and 8, 5 seeds; PMD-mean's and
    PMD-part's per-seed values of ``final`` and ``drop`` as given, the rest benign."""
    rng = np.random.default_rng(0)
    shape = (2, 1, 1, 1, 2, 5)
    d = {m: np.zeros(shape) for m in (*MEASURES, "start")}
    for i, (final, drop) in enumerate(((mean_final, mean_drop), (part_final, part_drop))):
        d["final"][i] = final + 0.01 * rng.standard_normal((1, 1, 1, 2, 5))
        d["drop"][i] = drop + 0.001 * rng.random((1, 1, 1, 2, 5))
        d["collapses"][i] = drop
    d["start"][:] = 0.3
    d.update(
        rewards=np.array(["binary"]), taus=np.array([0.01]), ns=np.array([4]), stalenesses=np.array([0, 8])
    )
    return d


@pytest.mark.parametrize(
    "mean_final, part_final, holds", [(0.9, 0.6, True), (0.6, 0.9, False), (0.7, 0.7, False)]
)
def test_the_regimes_claim_fails_where_pmd_part_is_not_worse(mean_final, part_final, holds):
    fig = FIGURES_IN_ORDER["regimes"]
    d = _regimes_data(mean_final, part_final, 0.01, 0.1)
    claims = fig.claims(d, {})
    tested = [c for c in claims if c.kind == "paper"]
    assert len(tested) == 2 and all(c.passed is holds for c in tested)
    assert all(c.passed for c in claims if c.kind == "check")
    assert ALGORITHMS == ("pmd_mean", "pmd_part")


@pytest.mark.parametrize("mean_drop, part_drop, holds", [(0.01, 0.2, True), (0.2, 0.01, False)])
def test_the_instability_claim_fails_where_pmd_mean_is_not_the_steadier(mean_drop, part_drop, holds):
    fig = FIGURES_IN_ORDER["regimes_instability"]
    d = _regimes_data(0.8, 0.8, mean_drop, part_drop)
    tested = [c for c in fig.claims(d, {}) if c.kind == "paper"]
    assert [c.passed for c in tested] == [holds, holds]


def test_the_regimes_checks_fail_on_a_nan_or_different_starts():
    fig = FIGURES_IN_ORDER["regimes"]
    d = _regimes_data(0.9, 0.6, 0.01, 0.1)
    d["kl"][0, 0, 0, 0, 1, 2] = np.nan
    d["start"][1] += 0.1
    assert [c.passed for c in fig.claims(d, {}) if c.kind == "check"] == [False, False]


def _dynamics_data(learns: bool):
    steps = np.arange(11)
    d = {
        "steps": steps,
        "settings": np.array(["fresh", "stale"]),
        "algorithms": np.array(["PMD-mean", "GRPO"]),
    }
    rng = np.random.default_rng(1)
    for s in d["settings"]:
        for a in d["algorithms"]:
            top = 0.9 if (a == "PMD-mean" or learns) else 0.3
            curve = 0.3 + (top - 0.3) * steps / 10
            d[f"{s}/{a}/success_mean"] = curve[None, :] + 0.01 * rng.standard_normal((5, 11)) * (steps > 0)
            d[f"{s}/{a}/collapses"] = np.zeros((5, 11))
    return d


@pytest.mark.parametrize("learns", [True, False])
def test_the_dynamics_gain_claim_fails_for_an_algorithm_that_does_not_learn(learns):
    fig = FIGURES_IN_ORDER["training_dynamics"]
    claims = fig.claims(_dynamics_data(learns), {})
    gains = {c.statement: c.passed for c in claims if "raises mean success" in c.statement}
    assert len(gains) == 4
    assert all(p for s, p in gains.items() if s.startswith("PMD-mean"))
    assert all(p is learns for s, p in gains.items() if s.startswith("GRPO"))
    (paper,) = [c for c in claims if c.kind == "paper"]
    assert paper.passed is not learns  # PMD-mean ends higher only when GRPO does not learn


def _adaptive_data(std_early):
    fig = FIGURES_IN_ORDER["adaptive_tau"]
    ps = np.linspace(0.01, 0.99, 99)
    from pmdlab.rl.tau_rules import population_tau
    from pmdlab.theory import pmd_mean_step

    d = {"ps": ps, "taus": np.array([0.1, 1.0]), "map_taus": np.array([0.1]), "early_step": np.array(3)}
    for rule in ("fixed", "std"):
        d[f"map/{rule}/0.1"] = pmd_mean_step(ps, population_tau(ps, 0.1, rule)).success - ps
        early = std_early if rule == "std" else 0.6
        d[f"{rule}/early"] = np.array([[early, early + 0.01, early - 0.01, early, early]] * 2)
        d[f"{rule}/final"] = d[f"{rule}/early"] + 0.2
        d[f"{rule}/start"] = np.full((2, 5), 0.3)
    return fig, d


@pytest.mark.parametrize("std_early, holds", [(0.8, True), (0.5, False)])
def test_the_adaptive_tau_claim_fails_when_the_rule_is_not_faster(std_early, holds):
    fig, d = _adaptive_data(std_early)
    claims = fig.claims(d, {})
    assert all(c.passed for c in claims if c.kind == "check")
    assert [c.passed for c in claims if c.kind == "paper"] == [holds]
