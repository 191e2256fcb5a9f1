r"""Softmax policies over a bandit task's finite response sets.

Both answer the trainer's policy interface (:mod:`pmdlab.rl.rollout`): a
response is one "token", the index of the chosen response.

* :class:`TabularPolicy`: free logits ``theta[x, y]`` per prompt and
  response, starting at ``log pi_0``. It can represent every policy, so
  minimising a loss over it reaches the population solution.
* :class:`LogLinearPolicy`: ``log pi(y|x) = log pi_0(y|x) + u_x^T W v_y - log Z``
  with fixed prompt and response features and one shared matrix ``W``
  (starting at 0): an update on some prompts moves all of them, as in a
  language model.
"""

from __future__ import annotations

import torch
from torch import nn

from pmdlab.rl.rollout import Rollout

from .task import Task

__all__ = ["LogLinearPolicy", "SoftmaxPolicy", "TabularPolicy", "rollout_from_table", "sample_rows"]


def sample_rows(
    log_probs: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
    probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """``n`` draws per row from distributions given as log-probs (b, K) -> (b, n).

    Inverse CDF: ``u ~ U(0, total)``, the first index whose cumulative mass
    exceeds ``u``; zero-probability responses are never drawn.
    """
    cdf = torch.cumsum(torch.exp(log_probs) if probs is None else probs, dim=1)
    u = torch.rand(log_probs.shape[0], n, generator=generator, dtype=cdf.dtype, device=cdf.device)
    u = u * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=log_probs.shape[1] - 1)


def rollout_from_table(
    log_probs: torch.Tensor,
    prompts: torch.Tensor,
    n: int,
    generator: torch.Generator | None = None,
    probs: torch.Tensor | None = None,
) -> Rollout:
    """A :class:`Rollout` of ``n`` draws per prompt from the rows ``log_probs`` (b, K)
    of prompts ``prompts`` (b,) (``probs = exp(log_probs)`` if already at hand). The
    group of a response is its prompt's row index."""
    picks = sample_rows(log_probs, n, generator, probs)
    group = prompts.repeat_interleave(n)
    tokens = picks.reshape(-1, 1)
    return Rollout(
        group_ids=group,
        tokens=tokens,
        mask=torch.ones(tokens.shape, dtype=log_probs.dtype),
        sampler_logprobs=log_probs.gather(1, picks).reshape(-1, 1),
    )


class SoftmaxPolicy(nn.Module):
    """Common part: ``forward(rows)`` gives the (b, K) logits of prompts ``rows``."""

    num_prompts: int

    def log_softmax(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self(rows), dim=-1)

    def all_log_probs(self) -> torch.Tensor:
        """``log pi(y|x)`` for every prompt and response (P, K)."""
        return self.log_softmax(torch.arange(self.num_prompts))

    @torch.no_grad()
    def sample(self, prompts: torch.Tensor, n: int, generator: torch.Generator | None = None) -> Rollout:
        """``n`` responses to each prompt (row index) in ``prompts``; groups are the prompts."""
        return rollout_from_table(self.log_softmax(prompts), prompts, n, generator)

    def log_probs(self, rollout: Rollout) -> torch.Tensor:
        """``log pi(y|x)`` of the rollout's responses, (B, 1), differentiable."""
        # Responses to a prompt are adjacent in a rollout (and its minibatches), so
        # consecutive runs find the rows; a prompt split into runs is merely looked up twice.
        rows, where = torch.unique_consecutive(rollout.group_ids, return_inverse=True)
        logp = self.log_softmax(rows)
        return logp[where, rollout.tokens[:, 0]].unsqueeze(1)


class TabularPolicy(SoftmaxPolicy):
    """Free logits per prompt and response, initialised to the task's ``log pi_0``.

    ``sparse=True`` gives sparse row gradients (only the prompts of a
    minibatch), for :class:`torch.optim.SparseAdam` or plain SGD.
    """

    def __init__(self, task: Task, sparse: bool = False, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_prompts = task.prompts
        self.sparse = sparse
        self.logits = nn.Embedding(
            task.prompts, task.responses, sparse=sparse, _weight=task.initial_logits.to(dtype).clone()
        )

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.logits(rows)


class LogLinearPolicy(SoftmaxPolicy):
    """``logits = log pi_0(.|x) + (u_x W) V^T`` with learnable ``W`` (d, d), zero at start."""

    def __init__(self, task: Task, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.num_prompts = task.prompts
        self.sparse = False
        d = task.prompt_features.shape[1]
        self.register_buffer("base", task.initial_logits.to(dtype).clone())
        self.register_buffer("prompt_features", task.prompt_features.to(dtype).clone())
        self.register_buffer("response_features", task.response_features.to(dtype).clone())
        self.weight = nn.Parameter(torch.zeros(d, d, dtype=dtype))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.base[rows] + (self.prompt_features[rows] @ self.weight) @ self.response_features.T
