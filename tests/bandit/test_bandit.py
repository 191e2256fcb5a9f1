"""The bandit task, policies, optimiser and training loop."""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from pmdlab import theory
from pmdlab.bandit import BanditConfig, LogLinearPolicy, TabularPolicy, TaskConfig, make_task, train
from pmdlab.bandit.optim import RowAdam
from pmdlab.bandit.policies import sample_rows
from pmdlab.bandit.task import parse_difficulty
from pmdlab.rl import Algorithm, policy_update

# ---------------------------------------------------------------------------- task


@pytest.mark.parametrize("rewards", ["binary", "signed", "graded"])
def test_task_has_the_requested_difficulty_and_rewards(rewards):
    task = make_task(TaskConfig(prompts=50, responses=40, correct_fraction=0.1, rewards=rewards, seed=3))
    pi0 = torch.softmax(task.initial_logits, dim=1)
    torch.testing.assert_close(pi0.sum(1), torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close((pi0 * task.correct).sum(1), task.success0, rtol=1e-12, atol=1e-14)
    assert (task.correct.sum(1) == 4).all()
    assert ((task.success0 >= 0.02) & (task.success0 <= 0.6)).all()
    assert torch.equal(task.rewards[task.correct], torch.ones(200, dtype=torch.float64))
    wrong = task.rewards[~task.correct]
    expected = {"binary": wrong == 0, "signed": wrong == -1, "graded": (wrong >= 0) & (wrong <= 0.5)}
    assert expected[rewards].all()


@pytest.mark.parametrize("name", ["pmd_mean", "pmd_part"])
def test_signed_rewards_at_tau_train_as_binary_rewards_at_half_tau(name):
    """r' = 2r - 1 doubles every advantage, so A'/tau = A/(tau/2) (docs/math.md section 5):
    the same draws give the same training run, step for step."""

    def run(rewards, tau):
        cfg = BanditConfig(
            task=TaskConfig(prompts=12, responses=10, rewards=rewards, seed=4),
            algorithm=Algorithm(name, tau=tau),
            policy="loglinear",
            steps=6,
            n=4,
            minibatches=4,
            lr=0.05,
            dtype="float64",
        )
        return train(cfg).metrics

    signed, binary = run("signed", 0.06), run("binary", 0.03)
    np.testing.assert_allclose(signed["success_mean"], binary["success_mean"], rtol=1e-9, atol=1e-12)
    assert signed["success_mean"][-1] > signed["success_mean"][0] + 0.05  # it trained: not a trivial match
    other = run("binary", 0.06)["success_mean"]
    assert np.abs(other - binary["success_mean"]).max() > 1e-3  # tau matters, so the match is not vacuous


def test_task_correct_set_follows_the_features():
    """The correct set is picked by a feature score, so it is predictable from features:
    a least-squares fit on the features separates correct from incorrect far above chance."""
    task = make_task(TaskConfig(prompts=200, responses=50, label_noise=0.1, seed=0))
    u, v = task.prompt_features.numpy(), task.response_features.numpy()
    x = np.einsum("pi,kj->pkij", u, v).reshape(200 * 50, -1)
    y = task.correct.numpy().reshape(-1).astype(float)
    coef, *_ = np.linalg.lstsq(x, y - y.mean(), rcond=None)
    score = (x @ coef).reshape(200, 50)
    top = np.argsort(-score, axis=1)[:, :6]
    precision = np.take_along_axis(task.correct.numpy(), top, axis=1).mean()
    assert precision > 0.5  # chance is 6/50 = 0.12


def test_difficulty_specs():
    assert parse_difficulty("beta:0.5,2") == ("beta", (0.5, 2.0))
    for bad in ("uniform:0.1", "gauss:0,1", "fixed:1.5", "beta:-1,2", "uniform:a,b"):
        with pytest.raises(ValueError, match="difficulty"):
            parse_difficulty(bad)
    loguni = make_task(TaskConfig(prompts=2000, difficulty="loguniform:1e-3,1e-1", seed=1)).success0
    assert float(torch.log10(loguni).mean()) == pytest.approx(-2.0, abs=0.05)


@pytest.mark.parametrize(
    "field, value", [("responses", 1), ("prompts", 0), ("correct_fraction", 1.0), ("rewards", "x")]
)
def test_task_config_rejects_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        TaskConfig(**{field: value})


# ------------------------------------------------------------------------ policies


def test_sampling_matches_the_distribution():
    """Seed 0: 200,000 draws from a row with a zero-probability response; chi-square p > 1e-3."""
    probs = torch.tensor([[0.5, 0.0, 0.2, 0.25, 0.05]], dtype=torch.float64)
    draws = sample_rows(torch.log(probs), 200_000, torch.Generator().manual_seed(0))[0]
    counts = torch.bincount(draws, minlength=5).numpy()
    assert counts[1] == 0
    keep = probs[0].numpy() > 0
    assert chisquare(counts[keep], 200_000 * probs[0].numpy()[keep]).pvalue > 1e-3


@pytest.mark.parametrize("cls", [TabularPolicy, LogLinearPolicy])
def test_policy_log_probs_are_the_softmax_of_its_logits(cls):
    task = make_task(TaskConfig(prompts=6, responses=9, seed=2))
    policy = cls(task, dtype=torch.float64)
    if cls is LogLinearPolicy:
        torch.nn.init.normal_(policy.weight)
    rollout = policy.sample(torch.tensor([4, 1, 3]), 5, torch.Generator().manual_seed(0))
    table = torch.log_softmax(policy(torch.arange(6)), dim=1)
    want = table[rollout.group_ids, rollout.tokens[:, 0]]
    torch.testing.assert_close(policy.log_probs(rollout)[:, 0], want)
    torch.testing.assert_close(rollout.sampler_logprobs[:, 0], want)
    assert rollout.group_ids.tolist() == [4] * 5 + [1] * 5 + [3] * 5


def test_log_linear_updates_carry_over_to_unseen_prompts():
    """Training on half the prompts raises the success of the other half."""
    task = make_task(TaskConfig(prompts=64, responses=32, label_noise=0.1, seed=0))
    policy = LogLinearPolicy(task, dtype=torch.float64)
    opt = torch.optim.Adam(policy.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(0)
    seen, unseen = torch.arange(32), torch.arange(32, 64)

    def success(rows):
        with torch.no_grad():
            return float((torch.softmax(policy(rows), 1) * task.correct[rows]).sum(1).mean())

    before = success(unseen)
    for _ in range(30):
        rollout = policy.sample(seen, 8, gen)
        rollout.rewards = task.rewards[rollout.group_ids, rollout.tokens[:, 0]]
        policy_update(
            policy.log_probs, opt, rollout, Algorithm("pmd_mean", tau=0.5), num_minibatches=2, generator=gen
        )
    assert success(unseen) > before + 0.1


def test_row_adam_is_adam_on_the_rows_it_touches():
    torch.manual_seed(0)
    w0 = torch.randn(6, 4, dtype=torch.float64)
    sparse = torch.nn.Embedding(6, 4, sparse=True, _weight=w0.clone())
    dense = torch.nn.Parameter(w0.clone())
    ra = RowAdam(sparse.parameters(), lr=0.1)
    ad = torch.optim.Adam([dense], lr=0.1)
    rows = torch.tensor([0, 2, 5])
    target = torch.randn(3, 4, dtype=torch.float64)
    for _ in range(5):
        for opt, out in ((ra, sparse(rows)), (ad, dense[rows])):
            opt.zero_grad()
            ((out - target) ** 4).sum().backward()
            opt.step()
    # Adam leaves rows with zero gradient in place too (zero moments): both agree everywhere.
    torch.testing.assert_close(sparse.weight.detach(), dense.detach(), rtol=1e-12, atol=1e-14)
    assert torch.equal(sparse.weight.detach()[1], w0[1])


# --------------------------------------------------------------------------- loop


def test_many_epochs_on_a_large_batch_reach_the_exact_update():
    """n = 20,000 rollouts per prompt and 300 full-batch Adam steps on them: the tabular
    policy lands within sampling error (TV ~ 1e-2) of pmdlab.theory's population update."""
    cfg = BanditConfig(
        task=TaskConfig(prompts=4, responses=5, correct_fraction=0.4, difficulty="uniform:0.2,0.6", seed=1),
        algorithm=Algorithm("pmd_mean", tau=1.0),
        steps=1,
        n=20_000,
        minibatches=1,
        epochs=300,
        lr=0.05,
        dtype="float64",
        exact_every=1,
    )
    run = train(cfg)
    assert run.metrics["exact_tv"][1] < 0.02
    pi0 = torch.softmax(run.task.initial_logits, 1).numpy()
    moved = 0.5 * np.abs(theory.pmd_mean(pi0, run.task.rewards.numpy(), 1.0).policy - pi0).sum(1).mean()
    assert moved > 0.1  # the update is large compared with the tolerance


@pytest.mark.parametrize("staleness", [0, 1, 3])
def test_staleness_samples_from_an_older_version(staleness):
    cfg = BanditConfig(
        task=TaskConfig(prompts=8, responses=6), steps=7, n=2, minibatches=2, staleness=staleness
    )
    versions = train(cfg).metrics["sampler_version"][1:]
    assert versions.tolist() == [max(0, s - 1 - staleness) for s in range(1, 8)]


@pytest.mark.parametrize("old_source, anchored_at_sampler", [("trainer", True), ("current", False)])
def test_old_source_current_anchors_the_update_at_the_trained_policy(old_source, anchored_at_sampler):
    """Stale rollouts (3 versions): pi_old is the sampler, or with ``current`` the policy being
    trained; the KL between pi_old and pi_theta before the first step tells which."""
    cfg = BanditConfig(
        task=TaskConfig(prompts=8, responses=6),
        algorithm=Algorithm("pmd_mean", tau=0.1, old_source=old_source),
        steps=8,
        n=4,
        minibatches=2,
        staleness=3,
    )
    m = train(cfg).metrics
    drift = m["loss/behaviour_kl_k3"][5:]  # steps whose sampler lags 3 versions
    if anchored_at_sampler:
        assert drift.min() > 1e-4
    else:
        assert drift.max() < 1e-9


def test_training_raises_success_and_logs_metrics():
    cfg = BanditConfig(task=TaskConfig(prompts=32, responses=16), steps=30, n=8, exact_every=10)
    m = train(cfg).metrics
    assert m["success_mean"][-1] > m["success_mean"][0] + 0.2
    assert np.isnan(m["exact_tv"][0]) and np.isfinite(m["exact_tv"][10]) and np.isnan(m["exact_tv"][11])
    assert (m["kl_old_new"][1:] > 0).all()
    assert m["success_q10"][-1] <= m["success_mean"][-1] <= m["success_q90"][-1] + 1e-12


def test_collapse_events_count_prompts_whose_success_fell():
    """SGD with a large step on a shared (log-linear) policy makes some prompts' success
    fall by more than 0.2; the count equals a recount from the per-step success tables."""
    cfg = BanditConfig(
        task=TaskConfig(prompts=16, responses=8, seed=4),
        policy="loglinear",
        algorithm=Algorithm("rloo"),
        steps=6,
        n=2,
        minibatches=1,
        optimizer="sgd",
        lr=20.0,
        collapse_drop=0.2,
    )
    run = train(cfg)

    def success(policy):
        with torch.no_grad():
            p = torch.softmax(policy(torch.arange(16)).double(), 1)
        return (p * run.task.correct).sum(1)

    # A run of s steps replays the first s steps of the longer run (same seed).
    successes = [success(LogLinearPolicy(run.task))] + [
        success(train(dataclasses.replace(cfg, steps=s)).policy) for s in range(1, 7)
    ]
    recount = [int(((successes[s - 1] - successes[s]) > 0.2).sum()) for s in range(1, 7)]
    assert run.metrics["collapses"][1:].tolist() == recount
    assert sum(recount) > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(policy="mlp"), "policy must be"),
        (dict(optimizer="rmsprop"), "optimizer must be"),
        (dict(n=0), "n must be at least 1"),
        (dict(staleness=-1), "staleness"),
        (dict(batch_prompts=10_000), "batch_prompts"),
        (dict(lr=0.0), "lr must be positive"),
        (dict(dtype="float16"), "dtype"),
    ],
)
def test_bandit_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BanditConfig(**kwargs)


def test_batch_prompts_and_math_are_finite_with_tiny_tau():
    cfg = BanditConfig(
        task=TaskConfig(prompts=20, responses=10),
        algorithm=Algorithm("pmd_part", tau=1e-4),
        steps=5,
        batch_prompts=7,
        n=4,
        minibatches=7,
    )
    m = train(cfg).metrics
    assert all(np.all(np.isfinite(v[1:])) for k, v in m.items() if k != "exact_tv")
    assert math.isfinite(m["loss/loss"][-1])
