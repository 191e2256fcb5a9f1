r"""Bandit tasks: many prompts, each a finite set of responses with rewards.

Prompt ``x`` has ``K`` responses, a correct subset ``C_x`` (a fraction
``correct_fraction`` of them, at least one, never all) and an initial
policy ``pi_0`` whose success probability ``pi_0(C_x) = p_x`` is drawn from
a difficulty distribution. Within ``C_x`` and its complement the mass is
spread by a softmax of Gaussian logits (scale ``spread``), so

.. math:: \log \pi_0(y|x) = \log p_x + g_y - \log \sum_{C_x} e^{g}
          \quad (y \in C_x), \text{ likewise with } 1 - p_x \text{ outside}.

Rewards: ``binary`` (1 on ``C_x``, else 0), ``signed`` (+1 on ``C_x``, else
-1, as the authors' training code scores answers; the same task and draws as
``binary``) or ``graded`` (1 on ``C_x``, partial credit ``U(0, 1/2)`` elsewhere).

Every prompt and response also has a feature vector (``features``
dimensions): the correct set is the top responses by a hidden score
``u_x^T W^* v_y`` (plus noise), so a log-linear policy over these features
can learn something that carries across prompts, as a language model does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Task", "TaskConfig", "make_task", "parse_difficulty"]

_DIFFICULTIES = ("uniform", "loguniform", "beta", "fixed")


def parse_difficulty(spec: str):
    """``"uniform:a,b"``, ``"loguniform:a,b"``, ``"beta:a,b"`` or ``"fixed:p"`` -> (kind, params)."""
    kind, _, rest = spec.partition(":")
    try:
        params = tuple(float(x) for x in rest.split(",")) if rest else ()
    except ValueError:
        raise ValueError(f"difficulty {spec!r}: parameters must be numbers") from None
    want = {"uniform": 2, "loguniform": 2, "beta": 2, "fixed": 1}
    if kind not in want or len(params) != want[kind]:
        raise ValueError(
            f"difficulty must be one of uniform:a,b  loguniform:a,b  beta:a,b  fixed:p, got {spec!r}"
        )
    if kind in ("uniform", "loguniform", "fixed") and not all(0 < p < 1 for p in params):
        raise ValueError(f"difficulty {spec!r}: success probabilities must lie in (0, 1)")
    if kind == "beta" and not all(p > 0 for p in params):
        raise ValueError(f"difficulty {spec!r}: beta parameters must be positive")
    return kind, params


#: Reward schemes of a task.
REWARDS = ("binary", "signed", "graded")


@dataclass(frozen=True)
class TaskConfig:
    """A family of bandit prompts.

    Attributes:
        prompts: number of prompts ``P``.
        responses: responses per prompt ``K`` (2 to 10^4 and beyond).
        correct_fraction: share of responses that are correct (at least one, at most ``K - 1``).
        difficulty: distribution of the initial success probability ``p_x``
            (``uniform:a,b``, ``loguniform:a,b``, ``beta:a,b``, ``fixed:p``).
        rewards: ``binary`` ({0, 1}), ``signed`` ({-1, +1}) or ``graded``.
        spread: scale of the Gaussian logits spreading mass within the correct and incorrect sets.
        features: dimension of the prompt and response features.
        label_noise: noise added to the hidden score that picks the correct set.
        seed: seed of the task (independent of the training seed).
    """

    prompts: int = 256
    responses: int = 64
    correct_fraction: float = 0.125
    difficulty: str = "uniform:0.02,0.6"
    rewards: str = "binary"
    spread: float = 1.0
    features: int = 16
    label_noise: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.prompts < 1:
            raise ValueError(f"prompts must be at least 1, got {self.prompts}")
        if self.responses < 2:
            raise ValueError(f"responses must be at least 2, got {self.responses}")
        if not (0 < self.correct_fraction < 1):
            raise ValueError(f"correct_fraction must lie in (0, 1), got {self.correct_fraction}")
        if self.rewards not in REWARDS:
            raise ValueError(f"rewards must be one of {REWARDS}, got {self.rewards!r}")
        if self.features < 1:
            raise ValueError(f"features must be at least 1, got {self.features}")
        parse_difficulty(self.difficulty)


@dataclass(frozen=True)
class Task:
    """A sampled task: ``rewards``, ``correct`` and ``initial_logits`` are (P, K);
    ``success0`` (P,) is ``pi_0(C_x)``; ``prompt_features`` (P, d) and
    ``response_features`` (K, d) are what a log-linear policy sees."""

    config: TaskConfig
    rewards: torch.Tensor
    correct: torch.Tensor
    initial_logits: torch.Tensor
    success0: torch.Tensor
    prompt_features: torch.Tensor
    response_features: torch.Tensor

    @property
    def prompts(self) -> int:
        return self.rewards.shape[0]

    @property
    def responses(self) -> int:
        return self.rewards.shape[1]

    def to(self, dtype: torch.dtype) -> "Task":
        f = {
            k: getattr(self, k)
            for k in ("rewards", "initial_logits", "success0", "prompt_features", "response_features")
        }
        return Task(config=self.config, correct=self.correct, **{k: v.to(dtype) for k, v in f.items()})


def _draw_difficulty(spec: str, n: int, rng: np.random.Generator) -> np.ndarray:
    kind, params = parse_difficulty(spec)
    if kind == "fixed":
        return np.full(n, params[0])
    if kind == "uniform":
        return rng.uniform(params[0], params[1], n)
    if kind == "loguniform":
        return np.exp(rng.uniform(math.log(params[0]), math.log(params[1]), n))
    return np.clip(rng.beta(params[0], params[1], n), 1e-12, 1 - 1e-12)


def make_task(config: TaskConfig = TaskConfig()) -> Task:
    """Sample a task (float64; deterministic in ``config.seed``)."""
    rng = np.random.default_rng(config.seed)
    p, k, d = config.prompts, config.responses, config.features
    u = rng.standard_normal((p, d)) / math.sqrt(d)
    v = rng.standard_normal((k, d))
    score = u @ (rng.standard_normal((d, d)) / math.sqrt(d)) @ v.T
    score = score / score.std() + config.label_noise * rng.standard_normal((p, k))
    n_correct = min(max(1, round(config.correct_fraction * k)), k - 1)
    top = np.argpartition(-score, n_correct - 1, axis=1)[:, :n_correct]
    correct = np.zeros((p, k), dtype=bool)
    np.put_along_axis(correct, top, True, axis=1)
    success0 = _draw_difficulty(config.difficulty, p, rng)
    g = config.spread * rng.standard_normal((p, k))
    log_in = _log_softmax(np.where(correct, g, -np.inf))
    log_out = _log_softmax(np.where(correct, -np.inf, g))
    logits = np.where(correct, np.log(success0)[:, None] + log_in, np.log1p(-success0)[:, None] + log_out)
    if config.rewards == "binary":
        rewards = correct.astype(np.float64)
    elif config.rewards == "signed":
        rewards = np.where(correct, 1.0, -1.0)
    else:
        rewards = np.where(correct, 1.0, 0.5 * rng.uniform(size=(p, k)))
    t = torch.from_numpy
    return Task(config, t(rewards), t(correct), t(logits), t(success0), t(u), t(v))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))
