"""Held-out evaluation: avg@k, unbiased pass@k, maj@k and greedy accuracy.

For a prompt with ``k`` sampled completions of which ``c`` are correct:

* ``avg@k = c / k``;
* ``pass@k``: the unbiased estimator of the chance that at least one of
  ``k`` draws is correct from ``n >= k`` samples (Chen et al., 2021),
  ``1 - C(n - c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k / i)``;
  with ``n = k`` it is 1 if any sample is correct;
* ``maj@k``: 1 if the most frequent extracted answer is correct (ties go to
  the answer seen first; completions without an answer do not vote);
* greedy: the accuracy of the arg-max decode.

Each is averaged over prompts. With several training ranks each evaluates
its share of the problems and the sums are added over ranks (``all_reduce``),
so no rank waits while another evaluates.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["evaluate", "majority_correct", "pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """``1 - C(n-c, k) / C(n, k)``: unbiased pass@k from ``c`` correct of ``n`` samples."""
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def majority_correct(answers: Sequence[str | None], correct: Sequence[bool]) -> bool:
    """Whether the most frequent non-empty answer is a correct one (first seen wins a tie)."""
    votes = Counter(a for a in answers if a is not None)
    if not votes:
        return False
    top = max(votes.values())
    winner = next(a for a in answers if a is not None and votes[a] == top)
    return bool(correct[list(answers).index(winner)])


def evaluate(
    policy,
    task,
    problems,
    k: int,
    *,
    greedy: bool = True,
    batch_prompts: int = 64,
    seed: int = 0,
    all_reduce=None,
) -> dict[str, float]:
    """Sample ``k`` completions per held-out problem; return ``eval/avg@k``, ``eval/pass@k``,
    ``eval/maj@k``, ``eval/greedy`` and ``eval/response_length``.

    Sampling is seeded with ``seed`` (torch's global generator), so two
    evaluations of the same weights agree. ``all_reduce`` (a sum over ranks, in place) makes the
    means those of every rank's ``problems`` together.
    """
    if k < 1:
        raise ValueError(f"eval k must be at least 1, got {k}")
    if not problems and all_reduce is None:
        raise ValueError("no held-out problems to evaluate on")
    sums = _counts(policy, task, problems, k, greedy, batch_prompts, seed)
    if all_reduce is not None:
        keys = sorted(sums)
        total = all_reduce(torch.tensor([sums[key] for key in keys], dtype=torch.float64))
        sums = dict(zip(keys, total.tolist()))
    if not sums["problems"]:
        raise ValueError("no held-out problems to evaluate on")
    length = torch.tensor(sums.pop("tokens"), dtype=torch.float32) / sums["responses"]
    out = {f"eval/{key}": sums[key] / sums["problems"] for key in ("avg@k", "pass@k", "maj@k")}
    out["eval/response_length"] = float(length)
    out["eval/k"] = float(k)
    if greedy:
        out["eval/greedy"] = sums["greedy"] / sums["problems"]
    return out


def _counts(policy, task, problems, k: int, greedy: bool, batch_prompts: int, seed: int) -> dict[str, float]:
    """Sums over ``problems`` of each metric, the tokens and responses sampled, and the count."""
    torch.manual_seed(seed)
    avg, passed, major, greedy_hits, lengths = [], [], [], [], []
    for start in range(0, len(problems), batch_prompts):
        chunk = problems[start : start + batch_prompts]
        rollout = policy.sample([p.prompt for p in chunk], k)
        texts = policy.decode(rollout)
        lengths.append(rollout.mask.sum(1))
        for g, problem in enumerate(chunk):
            mine = texts[g * k : (g + 1) * k]
            hits = [task.is_correct(t, problem) for t in mine]
            avg.append(sum(hits) / k)
            passed.append(pass_at_k(k, sum(hits), k))
            major.append(majority_correct([task.extract(t) for t in mine], hits))
        if greedy:
            rollout = policy.sample([p.prompt for p in chunk], 1, greedy=True)
            greedy_hits += [task.is_correct(t, p) for t, p in zip(policy.decode(rollout), chunk)]
    lengths = torch.cat(lengths).float() if lengths else torch.zeros(0)
    # np.sum(x) / len(x) is np.mean(x) to the last bit: one rank gives the plain means
    return {
        "avg@k": float(np.sum(avg)),
        "pass@k": float(np.sum(passed)),
        "maj@k": float(np.sum(major)),
        "greedy": float(np.sum(greedy_hits)),
        "tokens": float(lengths.sum()),
        "responses": float(lengths.numel()),
        "problems": float(len(problems)),
    }
