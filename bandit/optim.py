r"""Adam for tabular logits whose gradients are sparse in rows.

A minibatch of a few hundred prompts touches only their rows of a
(prompts x responses) logit table. :class:`RowAdam` applies Adam's update
to those rows only (the "lazy" semantics of :class:`torch.optim.SparseAdam`,
with the arithmetic of :class:`torch.optim.Adam`): with ``g`` the rows'
gradient at step ``t``,

.. math:: m \leftarrow \beta_1 m + (1-\beta_1) g,\quad
          v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
          \theta \leftarrow \theta - \mathrm{lr}\,
          \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon},

in a handful of passes over the touched rows instead of SparseAdam's
sparse-tensor bookkeeping (about 2.5x faster on 256 x 1000 rows).
"""

from __future__ import annotations

import math

import torch

__all__ = ["RowAdam"]


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam for parameters with sparse (row) gradients, e.g. ``nn.Embedding(sparse=True)``."""

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8):
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not grad.is_sparse:
                    raise ValueError(
                        "RowAdam needs sparse row gradients; use torch.optim.Adam for dense ones"
                    )
                grad = grad.coalesce()
                rows, g = grad.indices()[0], grad.values()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    # First and second moments side by side: one gather and one scatter per step.
                    state["moments"] = torch.zeros((2, *p.shape), dtype=p.dtype, device=p.device)
                state["step"] += 1
                t = state["step"]
                mv = state["moments"].index_select(1, rows)
                m, v = mv[0], mv[1]
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                state["moments"].index_copy_(1, rows, mv)
                # Clamping subnormal v to the smallest normal number leaves sqrt(v) far below
                # eps (so the update is unchanged) and avoids the slow subnormal sqrt.
                denom = (
                    v.clamp(min=torch.finfo(v.dtype).tiny)
                    .sqrt_()
                    .div_(math.sqrt(1 - b2**t))
                    .add_(group["eps"])
                )
                p.index_add_(0, rows, m.div(denom), alpha=-group["lr"] / (1 - b1**t))
        return loss
