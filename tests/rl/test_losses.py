"""The losses against exact theory, autograd, finite differences and each other."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pmdlab import theory
from pmdlab.rl import ALGORITHMS, TABLE, Algorithm, losses
from pmdlab.rl.groups import advantages


@pytest.fixture(autouse=True)
def _float64():
    """These tests compare with float64 theory: float64 tensors by default, restored afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


AGGS = losses.AGGREGATIONS


# ------------------------------------------------------------------ exact expectations


@st.composite
def tabular_problems(draw, binary=False):
    """``P`` prompts x ``K`` responses: ``pi_old`` (moderately spread), rewards, tau."""
    p = draw(st.integers(1, 3))
    k = draw(st.integers(2, 6))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.full(k, 2.0), size=p)
    pi = np.clip(pi, 1e-3, None)
    pi /= pi.sum(axis=1, keepdims=True)
    if binary:
        r = (rng.uniform(size=(p, k)) < 0.5).astype(float)
        r[:, 0], r[:, 1] = 1.0, 0.0  # both outcomes present
    else:
        r = rng.uniform(-1, 1, size=(p, k))
    tau = draw(st.floats(0.1, 5.0))
    return pi, r, tau


def _minimise_exact(loss_name, pi, r, tau, baseline):
    """Minimise the loss with every response weighted by ``pi_old`` over a tabular policy."""
    p, k = pi.shape
    old = torch.log(torch.tensor(pi)).reshape(-1, 1)
    rewards = torch.tensor(r).reshape(-1)
    groups = torch.arange(p).repeat_interleave(k)
    weights = torch.tensor(pi).reshape(-1)
    adv = advantages(rewards, groups, baseline, tau=tau, weights=weights)
    theta = torch.log(torch.tensor(pi)).clone().requires_grad_(True)
    mask = torch.ones(p * k, 1)
    fn = TABLE[loss_name].loss

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(theta, dim=1).reshape(-1, 1)
        loss = fn(logp, old, mask, adv, tau=tau, weights=weights).loss
        loss.backward()
        return loss

    opt = torch.optim.LBFGS(
        [theta],
        lr=1,
        max_iter=2000,
        tolerance_grad=1e-15,
        tolerance_change=1e-18,
        history_size=50,
        line_search_fn="strong_wolfe",
    )
    opt.step(closure)
    logp = torch.log_softmax(theta.detach(), dim=1)
    out = fn(logp.reshape(-1, 1), old, mask, adv, tau=tau, weights=weights)
    return torch.exp(logp).numpy(), out, (logp.reshape(-1, 1) - old).reshape(-1), adv / tau, groups


@settings(max_examples=25, deadline=None)
@given(st.one_of(tabular_problems(), tabular_problems(binary=True)))
def test_pmd_mean_loss_minimiser_is_the_exact_update(problem):
    pi, r, tau = problem
    policy, out, delta, target, groups = _minimise_exact("pmd_mean", pi, r, tau, "mean")
    exact = theory.pmd_mean(pi, r, tau)
    np.testing.assert_allclose(policy, exact.policy, atol=1e-6)
    # The implied chi^2 weight read off the achieved log-ratios is the exact beta.
    beta = losses.pmd_group_diagnostics(delta, target, groups, tau, torch.tensor(pi).reshape(-1))[
        "chi2_weight"
    ]
    np.testing.assert_allclose(beta.numpy(), exact.chi2_weight, rtol=1e-5, atol=1e-8)
    # ... and no response ends above its target (docs/math.md §3, identity 2).
    assert out.metrics["frac_above_target"] == 0.0


@settings(max_examples=25, deadline=None)
@given(st.one_of(tabular_problems(), tabular_problems(binary=True)))
def test_pmd_part_loss_with_exact_partition_recovers_the_kl_step(problem):
    pi, r, tau = problem
    policy, _, _, _, _ = _minimise_exact("pmd_part", pi, r, tau, "partition")
    np.testing.assert_allclose(policy, theory.pmd_part(pi, r, tau).policy, atol=1e-6)


# ---------------------------------------------------------------- gradients at pi_old


def _token_model(b=5, t=4, v=6, d=3, seed=0):
    """A small differentiable token policy: ``log softmax(X W)`` at given tokens."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, d, generator=g)
    tokens = torch.randint(0, v, (b, t), generator=g)
    lengths = torch.tensor([t, t - 1, 1, t - 2, t][:b])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).double()
    w0 = torch.randn(d, v, generator=g)

    def logprobs(w):
        return torch.log_softmax(x @ w, dim=-1).gather(-1, tokens[..., None]).squeeze(-1)

    return logprobs, w0, mask


def _finite_difference(f, w, h=1e-6):
    grad = torch.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        e = torch.zeros_like(w)
        e[idx] = h
        grad[idx] = (f(w + e) - f(w - e)) / (2 * h)
    return grad


def _weights_and_normaliser(aggregation, mask):
    lengths = mask.sum(1)
    c = 1.0 / lengths if aggregation == "seq_mean_token_mean" else torch.ones_like(lengths)
    d = {
        "seq_mean_token_mean": len(mask),
        "seq_mean_token_sum": len(mask),
        "seq_mean_token_sum_norm": len(mask) * mask.shape[1],
        "token_mean": lengths.sum(),
    }[aggregation]
    return c, d


@pytest.mark.parametrize("aggregation", AGGS)
@pytest.mark.parametrize("tau_scaled", [False, True])
def test_pmd_gradient_at_pi_old_is_reinforce_with_target(aggregation, tau_scaled):
    """At ``Delta = 0`` (times tau if scaled):

    ``grad = -(1/D) sum_i c_i (A_i/tau) grad sum_t log pi(y_it)``.
    """
    logprobs, w0, mask = _token_model()
    adv = torch.tensor([0.7, -0.2, 0.4, -0.9, 0.0])
    tau = 0.3
    old = logprobs(w0).detach()
    c, d = _weights_and_normaliser(aggregation, mask)
    scale = tau if tau_scaled else 1.0

    def loss(w):
        return losses.pmd(
            logprobs(w), old, mask, adv, tau=tau, aggregation=aggregation, tau_scaled=tau_scaled
        ).loss

    def expected_objective(w):
        return -scale * (c * adv / tau * (logprobs(w) * mask).sum(1)).sum() / d

    w = w0.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(loss(w), w)
    (want,) = torch.autograd.grad(expected_objective(w), w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, _finite_difference(loss, w0), rtol=1e-6, atol=1e-8)
    assert got.abs().max() > 1e-3  # the check has something to compare


@pytest.mark.parametrize("name", ["grpo", "gspo", "rloo"])
def test_policy_gradient_losses_at_pi_old(name):
    """GRPO (ratio 1, unclipped): ``-A grad log pi`` per token; GSPO: ``-A/L_i grad sum_t log pi``;
    RLOO: ``-A grad sum_t log pi``; each aggregated as configured."""
    logprobs, w0, mask = _token_model()
    adv = torch.tensor([0.7, -0.2, 0.4, -0.9, 0.3])
    old = logprobs(w0).detach()
    agg = {"grpo": "token_mean", "gspo": "seq_mean_token_sum", "rloo": "seq_mean_token_sum"}[name]
    c, d = _weights_and_normaliser(agg, mask)
    if name == "gspo":
        c = c / mask.sum(1)

    def loss(w):
        return TABLE[name].loss(logprobs(w), old, mask, adv, aggregation=agg).loss

    w = w0.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(loss(w), w)
    (want,) = torch.autograd.grad(-(c * adv * (logprobs(w) * mask).sum(1)).sum() / d, w)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, _finite_difference(loss, w0), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", ["pmd_mean", "pmd_part"])
def test_a_sequence_at_its_target_contributes_no_gradient(name):
    logprobs, w0, mask = _token_model()
    adv = torch.tensor([0.7, -0.2, 0.4, -0.9, 0.3])
    tau = 0.5
    lp = logprobs(w0).detach()
    # Shift pi_old so that Delta_0 equals its target A_0/tau exactly; the others stay at 0.
    old = lp.clone()
    old[0] -= (adv[0] / tau) / mask[0].sum() * mask[0]

    def grad_of(i):
        w = w0.clone().requires_grad_(True)
        sel = torch.tensor([i])
        out = TABLE[name].loss(logprobs(w)[sel], old[sel], mask[sel], adv[sel], tau=tau)
        return torch.autograd.grad(out.loss, w)[0]

    assert grad_of(0).abs().max() < 1e-13
    assert grad_of(1).abs().max() > 1e-3


# --------------------------------------------------------------------- equivalences


@given(st.integers(1, 12), st.integers(0, 2**31 - 1), st.floats(0.0, 0.5), st.floats(0.0, 0.5))
def test_gspo_on_one_token_responses_is_grpo(b, seed, clip_low, clip_high):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(b, 1, generator=g) * 0.3
    old = base + torch.randn(b, 1, generator=g) * 0.3
    adv = torch.randn(b, generator=g)
    mask = torch.ones(b, 1)
    kw = dict(clip_low=clip_low, clip_high=clip_high)
    x1 = base.clone().requires_grad_(True)
    x2 = base.clone().requires_grad_(True)
    a = losses.grpo(x1, old, mask, adv, aggregation="seq_mean_token_mean", **kw)
    s = losses.gspo(x2, old, mask, adv, **kw)
    a.loss.backward()
    s.loss.backward()
    torch.testing.assert_close(a.loss, s.loss, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(a.metrics["clip_frac"], s.metrics["clip_frac"])


@settings(deadline=None)
@given(
    st.sampled_from(ALGORITHMS),
    st.sampled_from(AGGS),
    st.lists(st.integers(1, 11), min_size=1, max_size=4),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_micro_batch_split_leaves_loss_and_gradient_unchanged(name, aggregation, cuts, weighted, seed):
    """With the whole batch's normaliser, the micro-batch losses sum to the batch loss and
    their accumulated gradients to its gradient, whatever the split."""
    g = torch.Generator().manual_seed(seed)
    b, t = 12, 5
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).double()
    base = torch.randn(b, t, generator=g) * 0.2
    old = base + torch.randn(b, t, generator=g) * 0.2
    rewards = (torch.rand(b, generator=g) < 0.5).double()
    groups = torch.arange(b) // 4
    weights = torch.rand(b, generator=g) + 0.5 if weighted else None
    algorithm = Algorithm(name, tau=0.4)
    kw = algorithm.options()
    adv = algorithm.advantages(rewards, groups)
    norm = losses.loss_normalizer(mask, aggregation, weights)
    fn = TABLE[name].loss

    full_x = base.clone().requires_grad_(True)
    full = fn(full_x, old, mask, adv, aggregation=aggregation, weights=weights, **kw).loss
    full.backward()

    split_x = base.clone().requires_grad_(True)
    bounds = sorted(set([0, b] + [c for c in cuts if c < b]))
    total = 0.0
    for s, e in zip(bounds[:-1], bounds[1:]):
        w = None if weights is None else weights[s:e]
        out = fn(
            split_x[s:e],
            old[s:e],
            mask[s:e],
            adv[s:e],
            aggregation=aggregation,
            weights=w,
            normalizer=norm,
            **kw,
        )
        out.loss.backward()
        total = total + out.loss.detach()
    torch.testing.assert_close(total, full.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(split_x.grad, full_x.grad, rtol=1e-12, atol=1e-14)


# --------------------------------------------------------------- finite-sample targets


@pytest.mark.parametrize("baseline", ["mean", "partition"])
def test_sample_targets_converge_to_population_targets(baseline):
    """Seed 0, 400 batches per n: the RMS error of the correct response's target
    ``A/tau`` matches the delta-method standard error to within 25% at n = 256,
    1024 and 4096 (so it falls as ``1/sqrt(n)`` towards the population target)."""
    p, tau = 0.3, 1.0
    z = p * math.e + (1 - p)
    population = (1 - p) / tau if baseline == "mean" else (1 - tau * math.log(z)) / tau
    sd_unit = (
        math.sqrt(p * (1 - p)) / tau if baseline == "mean" else (math.e - 1) * math.sqrt(p * (1 - p)) / z
    )
    gen = torch.Generator().manual_seed(0)
    reps = 400
    for n in (256, 1024, 4096):
        r = (torch.rand(reps * n, generator=gen) < p).double()
        r[::n] = 1.0  # one correct response per batch to read its target from
        groups = torch.arange(reps).repeat_interleave(n)
        a = advantages(r, groups, baseline, tau=tau) / tau
        err = a[::n] - population
        rmse = float(err.pow(2).mean().sqrt())
        assert rmse == pytest.approx(sd_unit / math.sqrt(n), rel=0.25), (n, rmse)


# ------------------------------------------------------------------------ options


def test_tau_scaled_multiplies_by_tau():
    logprobs, w0, mask = _token_model()
    lp = logprobs(w0)
    old = lp.detach() + 0.1
    adv = torch.tensor([0.7, -0.2, 0.4, -0.9, 0.3])
    a = losses.pmd(lp, old, mask, adv, tau=0.25, tau_scaled=True).loss
    b = losses.pmd(lp, old, mask, adv, tau=0.25).loss
    torch.testing.assert_close(a, 0.25 * b)


def test_diagnostics_on_a_constructed_batch():
    """Two one-token sequences with known ratios: clip fraction, KL estimators and targets."""
    old = torch.zeros(2, 1)
    lp = torch.tensor([[math.log(1.5)], [math.log(0.5)]])
    mask = torch.ones(2, 1)
    adv = torch.tensor([1.0, 1.0])
    g = losses.grpo(lp, old, mask, adv, clip_low=0.2, clip_high=0.2)
    assert float(g.metrics["clip_frac"]) == 0.5  # ratio 1.5 > 1.2 with A > 0 is clipped; 0.5 is not
    assert float(g.metrics["kl_k1"]) == pytest.approx(-(math.log(1.5) + math.log(0.5)) / 2)
    assert float(g.metrics["kl_k3"]) == pytest.approx(((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2)
    m = losses.pmd(lp, old, mask, torch.tensor([0.2, -0.2]), tau=0.5)  # targets 0.4, -0.4
    assert float(m.metrics["target_mean"]) == pytest.approx(0.0)
    assert float(m.metrics["frac_above_target"]) == 0.5  # log 1.5 > 0.4; log 0.5 < -0.4
    assert float(m.metrics["frac_past_target"]) == 1.0  # both moved beyond, in the target's direction


def test_pmd_mean_leave_one_out_baseline():
    """The algorithm's leave-one-out advantages are ``n/(n-1) (r_i - mean)``, and its loss is
    :func:`losses.pmd` of them."""
    logprobs, w0, mask = _token_model(b=4)
    lp = logprobs(w0)
    r = torch.tensor([1.0, 0.0, 0.0, 1.0])
    groups = torch.tensor([0, 0, 0, 0])
    algorithm = Algorithm("pmd_mean", tau=0.5, baseline="leave_one_out")
    adv = algorithm.advantages(r, groups)
    torch.testing.assert_close(adv, 4 / 3 * (r - r.mean()))
    a = algorithm.loss(lp, lp.detach() + 0.1, mask, adv)
    b = losses.pmd(lp, lp.detach() + 0.1, mask, 4 / 3 * (r - r.mean()), tau=0.5)
    torch.testing.assert_close(a.loss, b.loss)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_the_table_passes_each_loss_its_own_options(name):
    """Every option the table names reaches the loss: a changed option changes the loss."""
    logprobs, w0, mask = _token_model()
    lp = logprobs(w0)
    adv = torch.tensor([0.7, -0.2, 0.4, -0.9, 0.3])
    old = lp.detach() - 0.5 * torch.sign(adv)[:, None]  # ratios e^{+-1/2}: both clips are active
    base = Algorithm(name, tau=0.5)
    for option, default in TABLE[name].options.items():
        changed = (not default) if isinstance(default, bool) else (0.5 if default < 0.1 else 0.01)
        other = Algorithm(name, tau=0.5, **{option: changed})
        assert float(other.loss(lp, old, mask, adv).loss) != pytest.approx(
            float(base.loss(lp, old, mask, adv).loss)
        )
    if base.is_pmd:
        other = Algorithm(name, tau=0.25)
        assert float(other.loss(lp, old, mask, adv).loss) != pytest.approx(
            float(base.loss(lp, old, mask, adv).loss)
        )


# ------------------------------------------------------------------------ bad input


def _batch():
    lp = torch.zeros(3, 2, requires_grad=True)
    return lp, torch.zeros(3, 2), torch.ones(3, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(advantages=torch.tensor([0.1, float("nan"), 0.0])), r"advantages\[1\]"),
        (dict(advantages=torch.tensor([0.1, 0.2])), "advantages has shape"),
        (dict(advantages=torch.zeros(3), tau=0.0), "tau must be positive"),
        (dict(advantages=torch.zeros(3), tau=-1.0), "tau must be positive"),
        (dict(advantages=torch.zeros(3), aggregation="mean"), "aggregation must be one of"),
        (dict(advantages=torch.zeros(3), weights=torch.ones(2)), "weights has shape"),
    ],
)
def test_bad_input_names_the_argument(kwargs, match):
    lp, old, mask = _batch()
    kwargs = {"tau": 0.5, **kwargs}
    with pytest.raises(ValueError, match=match):
        losses.pmd(lp, old, mask, **kwargs)


@pytest.mark.parametrize(
    "rewards, groups, match",
    [
        (torch.tensor([1.0, float("inf"), 0.0]), torch.tensor([0, 0, 0]), r"rewards\[1\]"),
        (torch.tensor([1.0, 0.0, 1.0]), torch.tensor([0, 0]), "group_ids has 2"),
    ],
)
def test_bad_rewards_name_the_argument(rewards, groups, match):
    with pytest.raises(ValueError, match=match):
        Algorithm("pmd_mean", tau=0.5).advantages(rewards, groups)


def test_bad_algorithm_options_are_named():
    with pytest.raises(ValueError, match="pmd_mean's baseline must be one of"):
        Algorithm("pmd_mean", baseline="partition")
    with pytest.raises(ValueError, match="old_source"):
        Algorithm("grpo", old_source="engine")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        Algorithm("ppo")


def test_mismatched_token_shapes_are_named():
    lp, old, mask = _batch()
    with pytest.raises(ValueError, match="mask has shape"):
        losses.grpo(lp, old, mask[:, :1], torch.zeros(3))
    with pytest.raises(ValueError, match="old_logprobs has shape"):
        losses.rloo(lp, old[:2], mask, torch.zeros(3))
    with pytest.raises(ValueError, match="logprobs is empty"):
        losses.gspo(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0))
    with pytest.raises(ValueError, match="clip_low"):
        losses.grpo(lp, old, mask, torch.zeros(3), clip_low=1.5)


@given(
    st.integers(1, 6), st.integers(1, 5), st.integers(0, 2**31 - 1), st.floats(0.0, 0.9), st.floats(0.0, 2.0)
)
def test_grpo_matches_the_textbook_clipped_objective(b, t, seed, clip_low, clip_high):
    """Value and gradient against ``-min(rho A, clip(rho, 1-e_low, 1+e_high) A)`` written out."""
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(b, t, generator=g) * 0.5).requires_grad_(True)
    old = torch.randn(b, t, generator=g) * 0.5
    mask = (torch.rand(b, t, generator=g) < 0.8).double()
    mask[:, 0] = 1.0
    adv = torch.randn(b, generator=g)
    out = losses.grpo(lp, old, mask, adv, clip_low=clip_low, clip_high=clip_high)
    (got,) = torch.autograd.grad(out.loss, lp)
    x = lp.detach().clone().requires_grad_(True)
    rho = torch.exp(x - old)
    a = adv[:, None]
    ref = (
        -torch.minimum(rho * a, torch.clamp(rho, 1 - clip_low, 1 + clip_high) * a) * mask
    ).sum() / mask.sum()
    (want,) = torch.autograd.grad(ref, x)
    torch.testing.assert_close(out.loss.detach(), ref.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
