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


class _Problem:
    def __init__(self, i):
        self.prompt, self.answer = f"p{i}", str(i % 3)


class _ModuloPolicy:
    """Answers problem ``i``'s ``j``-th sample with ``(i + j) % 3`` (and greedy ``i % 2``): a
    deterministic policy whose results do not depend on which problems share a batch."""

    def sample(self, prompts, k, greedy=False):
        from types import SimpleNamespace

        import torch

        ids = [int(p[1:]) for p in prompts]
        answers = [str(i % 2) if greedy else str((i + j) % 3) for i in ids for j in range(k)]
        rows = 1 if greedy else k
        mask = torch.tensor([[1.0] * (1 + i % 4) + [0.0] * (3 - i % 4) for i in ids for _ in range(rows)])
        return SimpleNamespace(texts=answers, mask=mask)

    def decode(self, rollout):
        return rollout.texts


class _ModuloTask:
    def is_correct(self, text, problem):
        return text == problem.answer

    def extract(self, text):
        return text


def test_evaluation_sharded_over_ranks_and_summed_is_the_evaluation_of_the_whole_set():
    """Each rank evaluates its share (``problems[rank::W]``) and the counts are summed: the means
    are those of one process evaluating every problem."""
    import torch

    from pmdlab.llm import evaluate as ev

    problems = [_Problem(i) for i in range(11)]
    whole = ev.evaluate(_ModuloPolicy(), _ModuloTask(), problems, 4, batch_prompts=3)
    world = 3
    counts = [
        ev._counts(_ModuloPolicy(), _ModuloTask(), problems[r::world], 4, True, 3, 0) for r in range(world)
    ]
    keys = sorted(counts[0])
    others = torch.tensor([[c[k] for k in keys] for c in counts[1:]], dtype=torch.float64).sum(0)
    sharded = ev.evaluate(
        _ModuloPolicy(),
        _ModuloTask(),
        problems[0::world],
        4,
        batch_prompts=3,
        all_reduce=lambda t: t.add_(others),
    )
    assert sharded.keys() == whole.keys()
    assert all(math.isclose(sharded[k], whole[k], rel_tol=1e-12) for k in whole)
    assert 0 < whole["eval/avg@k"] < 1 and whole["eval/greedy"] > 0  # not a degenerate set
