"""Group baselines against per-group brute force (numpy/scipy loops over groups)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

from pmdlab.rl.groups import (
    Groups,
    advantages,
    grpo_advantages,
    leave_one_out_mean,
    leave_one_out_partition,
    leave_one_out_partition_clamped,
    mean_baseline,
    partition_baseline,
)


@st.composite
def batches(draw, min_size=1, max_groups=6, max_size=7, binary=False):
    """Rewards with integer group labels (shuffled, uneven sizes, singletons allowed)."""
    sizes = draw(st.lists(st.integers(min_size, max_size), min_size=1, max_size=max_groups))
    labels = draw(st.permutations(list(range(100, 100 + 7 * len(sizes), 7))))[: len(sizes)]
    ids = np.repeat(labels, sizes)
    order = draw(st.permutations(range(ids.size)))
    ids = ids[list(order)]
    elems = st.sampled_from([0.0, 1.0]) if binary else st.floats(-5, 5, allow_nan=False)
    r = np.array(draw(st.lists(elems, min_size=ids.size, max_size=ids.size)))
    return torch.tensor(r, dtype=torch.float64), torch.tensor(ids)


def _per_group(r, ids, fn):
    """Apply ``fn(values, position_in_group)`` group by group (the brute-force reference)."""
    r, ids = r.numpy(), ids.numpy()
    out = np.empty_like(r)
    for g in np.unique(ids):
        idx = np.flatnonzero(ids == g)
        for j, i in enumerate(idx):
            out[i] = fn(r[idx], j)
    return out


@given(batches())
def test_mean_baseline_is_the_group_mean(batch):
    r, ids = batch
    ref = _per_group(r, ids, lambda v, j: v.mean())
    np.testing.assert_allclose(mean_baseline(r, ids).numpy(), ref, rtol=1e-13, atol=1e-13)


@given(batches())
def test_leave_one_out_mean_excludes_the_response(batch):
    r, ids = batch
    ref = _per_group(r, ids, lambda v, j: np.delete(v, j).mean() if v.size > 1 else v[j])
    np.testing.assert_allclose(leave_one_out_mean(r, ids).numpy(), ref, rtol=1e-12, atol=1e-12)


@given(batches(), st.floats(1e-4, 100.0))
def test_partition_baseline_matches_logsumexp(batch, tau):
    r, ids = batch
    ref = _per_group(r, ids, lambda v, j: tau * (logsumexp(v / tau) - math.log(v.size)))
    got = partition_baseline(r, ids, tau).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12 * (1 + tau))


@given(batches(), st.floats(1e-4, 100.0))
def test_leave_one_out_partition_matches_logsumexp(batch, tau):
    r, ids = batch

    def loo(v, j):
        if v.size == 1:
            return v[j]
        rest = np.delete(v, j)
        return tau * (logsumexp(rest / tau) - math.log(rest.size))

    got = leave_one_out_partition(r, ids, tau).numpy()
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, _per_group(r, ids, loo), rtol=1e-11, atol=1e-11 * (1 + tau))


def test_leave_one_out_partition_with_ties_and_a_dominant_reward():
    """Ties at the maximum, and a maximum 1e4 above the rest at tau = 1e-4 (e^{-1e8})."""
    r = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1, 1, 1])
    got = leave_one_out_partition(r, ids, 1e-4).numpy()
    # Group 0: removing one of the tied maxima leaves the other; removing the 0 leaves two 1s.
    assert got[0] == pytest.approx(1.0 - 1e-4 * math.log(2), abs=1e-15)
    assert got[2] == pytest.approx(1.0, abs=1e-15)
    # Group 1: without the 1 only zeros remain; without a 0 the 1 dominates.
    assert got[3] == pytest.approx(0.0, abs=1e-15)
    assert got[4] == pytest.approx(1.0 - 1e-4 * math.log(2), abs=1e-15)


@given(batches(), st.floats(1e-2, 100.0))
def test_clamped_leave_one_out_partition_is_the_authors_formula(batch, tau):
    """Against the formula of the authors' code written out in numpy, with the group maximum
    taken over the whole group and the others' mean clamped at 1e-8."""
    r, ids = batch

    def authors(v, j):
        if v.size == 1:
            return v[j]
        top = v.max()
        mean = np.exp((np.delete(v, j) - top) / tau).sum() / (v.size - 1)
        return top + tau * math.log(max(mean, 1e-8))

    got = leave_one_out_partition_clamped(r, ids, tau).numpy()
    np.testing.assert_allclose(got, _per_group(r, ids, authors), rtol=1e-10, atol=1e-10 * (1 + tau))


@given(batches(min_size=2), st.floats(0.5, 100.0))
def test_the_clamp_changes_nothing_where_it_is_not_reached(batch, tau):
    """Rewards within 1 of each other and tau >= 0.5: every mean term is at least e^{-2} > 1e-8."""
    r, ids = batch
    r = r / max(1.0, float((r.max() - r.min()).abs())) * 0.999
    a = leave_one_out_partition_clamped(r, ids, tau)
    b = leave_one_out_partition(r, ids, tau)
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-10 * (1 + tau))


@pytest.mark.parametrize(
    "baseline",
    ["mean", "leave_one_out", "partition", "leave_one_out_partition", "leave_one_out_partition_clamped"],
)
@given(batch=batches(binary=True), tau=st.floats(1e-2, 10.0))
def test_plus_minus_one_rewards_at_tau_are_binary_rewards_at_half_tau(baseline, batch, tau):
    """PMD's targets ``A/tau``: rewards ``2r - 1`` at ``tau`` give those of ``r`` at ``tau/2`` for every
    baseline (the clamp's floor included), so the authors' ±1 runs are {0, 1} runs at half the tau."""
    r, ids = batch
    pm = advantages(2 * r - 1, ids, baseline, tau=tau) / tau
    binary = advantages(r, ids, baseline, tau=tau / 2) / (tau / 2)
    np.testing.assert_allclose(pm.numpy(), binary.numpy(), rtol=1e-9, atol=1e-9 / tau)


def test_the_clamp_decides_a_lone_correct_answer_at_small_tau():
    """One correct answer among 8 at tau = 0.01: advantage 0.01 log(1e8) = 0.184 (1 - 7.6e-44 unclamped)."""
    r = torch.tensor([1.0] + [0.0] * 7, dtype=torch.float64)
    ids = torch.zeros(8, dtype=torch.long)
    a = r - leave_one_out_partition_clamped(r, ids, 0.01)
    assert float(a[0]) == pytest.approx(0.01 * math.log(1e8), rel=1e-12)  # 0.18420680743952367
    assert float((r - leave_one_out_partition(r, ids, 0.01))[0]) == pytest.approx(1.0, abs=1e-12)
    # the wrong answers see the correct one among the others: both forms agree
    np.testing.assert_allclose(a[1:].numpy(), (r - leave_one_out_partition(r, ids, 0.01))[1:].numpy())


@given(batches(min_size=2))
def test_leave_one_out_partition_tends_to_leave_one_out_mean(batch):
    """``tau log mean e^{r/tau} = mean r + Var(r)/(2 tau) + O(tau^-2)``, so the gap is
    at most ``(max - min)^2 / (2 tau)`` up to higher order (plus rounding: ``tau`` times
    a few ulps of ``log n``)."""
    r, ids = batch
    tau = 1e5
    gap = (leave_one_out_partition(r, ids, tau) - leave_one_out_mean(r, ids)).abs().max()
    spread = (r.max() - r.min()) ** 2
    assert gap <= spread / (2 * tau) * 1.01 + tau * 8 * np.finfo(float).eps


@given(batches())
def test_grpo_advantages_use_the_unbiased_std(batch):
    r, ids = batch

    def ref(v, j):
        return 0.0 if v.size == 1 else (v[j] - v.mean()) / (v.std(ddof=1) + 1e-6)

    np.testing.assert_allclose(grpo_advantages(r, ids).numpy(), _per_group(r, ids, ref), rtol=1e-9, atol=1e-9)
    unscaled = _per_group(r, ids, lambda v, j: 0.0 if v.size == 1 else v[j] - v.mean())
    np.testing.assert_allclose(grpo_advantages(r, ids, scale=False).numpy(), unscaled, rtol=1e-12, atol=1e-12)


@given(batches(), st.floats(0.05, 10.0), st.integers(0, 2**31 - 1))
def test_weighted_baselines_are_expectations(batch, tau, seed):
    r, ids = batch
    w = torch.tensor(np.random.default_rng(seed).uniform(0.1, 1.0, r.numel()), dtype=torch.float64)

    rn, idn, wn = r.numpy(), ids.numpy(), w.numpy()
    ref_mean = np.empty_like(rn)
    ref_part = np.empty_like(rn)
    for g in np.unique(idn):
        idx = idn == g
        ref_mean[idx] = np.sum(wn[idx] * rn[idx]) / np.sum(wn[idx])
        ref_part[idx] = tau * (logsumexp(rn[idx] / tau, b=wn[idx]) - math.log(np.sum(wn[idx])))
    np.testing.assert_allclose(mean_baseline(r, ids, w).numpy(), ref_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(partition_baseline(r, ids, tau, w).numpy(), ref_part, rtol=1e-12, atol=1e-12)


def test_advantages_subtract_the_named_baseline():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    ids = torch.tensor([3, 3, 3, 9, 9])
    a = advantages(r, ids, "leave_one_out")
    # A_i = n/(n-1) (r_i - mean) for the leave-one-out mean.
    np.testing.assert_allclose(a[:3].numpy(), 1.5 * (r[:3] - r[:3].mean()).numpy(), rtol=1e-14)
    assert torch.equal(a[3:], torch.zeros(2, dtype=torch.float64))


def test_groups_from_sizes_and_ids_agree():
    g = Groups.from_sizes([2, 3, 1])
    assert g.index.tolist() == [0, 0, 1, 1, 1, 2]
    h = Groups.from_ids(torch.tensor([7, 7, 8, 8, 8, 2]))
    assert h.contiguous and h.sizes.tolist() == [2, 3, 1] and h.index.tolist() == g.index.tolist()
    k = Groups.from_ids(torch.tensor([7, 8, 7, 2]))  # 7 appears twice apart: not contiguous
    assert not k.contiguous and k.sizes.tolist() == [1, 2, 1]  # numbered by sorted label here


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: mean_baseline(torch.tensor([1.0, float("nan")]), torch.tensor([0, 0])), r"rewards\[1\]"),
        (lambda: mean_baseline(torch.tensor([1.0, float("inf")]), torch.tensor([0, 0])), r"rewards\[1\]"),
        (lambda: mean_baseline(torch.tensor([1.0, 0.0]), torch.tensor([0, 0, 1])), "group_ids has 3"),
        (lambda: mean_baseline(torch.tensor([]), torch.tensor([], dtype=torch.long)), "rewards is empty"),
        (lambda: Groups.from_sizes([2, 0, 3]), r"sizes\[1\] = 0.*empty group"),
        (lambda: Groups.from_ids(torch.tensor([0.5, 1.0])), "group_ids must be integers"),
        (
            lambda: partition_baseline(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), 0.0),
            "tau must be positive",
        ),
        (
            lambda: leave_one_out_partition(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), -1.0),
            "tau must be positive",
        ),
        (
            lambda: advantages(torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), "median"),
            "baseline must be one of",
        ),
        (lambda: mean_baseline(torch.ones(2, 2), torch.tensor([0, 0])), "rewards must be one-dimensional"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
