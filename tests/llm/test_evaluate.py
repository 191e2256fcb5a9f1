"""Evaluation metrics against brute force."""

import itertools
import math

from hypothesis import given
from hypothesis import strategies as st

from pmdlab.llm.evaluate import majority_correct, pass_at_k


@given(st.integers(1, 10).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_pass_at_k_is_the_chance_a_random_k_subset_holds_a_correct_sample(nck):
    n, c, k = nck
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    brute = sum(any(samples[i] for i in s) for s in subsets) / len(subsets)
    assert math.isclose(pass_at_k(n, c, k), brute, rel_tol=1e-12, abs_tol=1e-12)


def test_pass_at_k_rejects_impossible_counts():
    for n, c, k in [(4, 5, 1), (4, 1, 5), (4, 1, 0)]:
        try:
            pass_at_k(n, c, k)
        except ValueError as e:
            assert "pass@k" in str(e)
        else:
            raise AssertionError((n, c, k))


def test_majority_vote_ignores_missing_answers_and_breaks_ties_by_first_seen():
    assert majority_correct(["3", None, None, "3", "4"], [True, False, False, True, False])
    assert not majority_correct(["4", "3", "3", "4"], [False, True, True, False])  # tie: "4" came first
    assert majority_correct(["3", "4", "4", "3"], [True, False, False, True])
    assert not majority_correct([None, None], [False, False])
