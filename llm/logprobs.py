"""Token log-probs and entropies of a causal LM's responses, a chunk of positions at a time.

A response token ``y_t`` after the context ``x, y_<t`` has, at temperature ``T``,

    z = W h_t / T                       (h_t: the final hidden state that predicts y_t; W: the LM head)
    log pi(y_t) = z[y_t] - logsumexp(z)
    H_t = -sum_v pi(v) log pi(v) = logsumexp(z) - sum_v softmax(z)_v z_v

Nothing here holds a ``(rows x tokens x vocabulary)`` tensor: the backbone's
final hidden states are taken at the response positions only, and the
logits ``z`` are made for ``chunk`` positions at a time. With gradient, each
chunk runs under :func:`torch.utils.checkpoint.checkpoint`, so its logits are
recomputed in the backward pass instead of kept, and its backward pass is
written out (:class:`_TokenStats`: one ``chunk x vocabulary`` buffer becomes the
logits' gradient in place): the peak memory is two or three ``chunk x
vocabulary`` float32 tensors, whatever the micro-batch.

The forward pass always goes through the model as given (a DDP, FSDP2 or
PEFT wrapper included), so the wrapper's hooks (all-gathers, gradient
reduction) run; it asks for the logits of one position only
(``logits_to_keep=1``). The LM head is applied to the response positions in a
forward hook on the backbone (:func:`head_in_forward`), so inside the wrapped
model's forward pass: under FSDP2 the root module's parameters (embeddings,
final norm, LM head) are unsharded there whatever its ``reshard_after_forward``.
The model's own output (the last position's logits) joins the result with
weight 0, so in the backward pass the root's pre-backward hook (on that
output; it runs first, as the output was made last) unshards them again before
the chunks are recomputed, and its gradients are reduce-scattered as usual.
Models that transform the head's output (Gemma's logit soft-capping, Cohere's
and Granite's logit scales) take the full-logits path (:func:`plain_head`):
the model's own logits of the response positions, still reduced a chunk at a
time.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

__all__ = [
    "causal_lm",
    "chunk_stats",
    "chunked_log_probs",
    "head_in_forward",
    "plain_head",
    "response_log_probs",
]

#: Config fields of models whose logits are not just the LM head's output.
_HEAD_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def causal_lm(model: torch.nn.Module) -> torch.nn.Module:
    """The ``transformers`` causal LM inside DDP (``.module``), ``torch.compile`` (``._orig_mod``) and
    PEFT (``get_base_model()``) wrappers; FSDP2 shards in place, so its model is itself."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            inner = model.module
        elif hasattr(model, "_orig_mod"):
            inner = model._orig_mod
        elif hasattr(model, "get_base_model"):
            inner = model.get_base_model()
        else:
            return model
        if inner is model:
            return model
        model = inner


def plain_head(model: torch.nn.Module) -> bool:
    """Whether the model's logits are its LM head's output, ``W h`` (no soft-capping or scaling)."""
    config = causal_lm(model).config
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return all(getattr(config, name, None) in (None, 1, 1.0) for name in _HEAD_TRANSFORMS)


def _scaled(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``z = logits / T`` in at least float32 (``logits`` itself when nothing changes)."""
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return logits if temperature == 1.0 else logits / temperature


class _TokenStats(torch.autograd.Function):
    """``log pi(y) = z[y] - logsumexp(z)`` and, with ``entropy``, ``H = logsumexp(z) - m``,
    ``m = sum_v softmax(z)_v z_v``, of ``z = logits / T`` (C, V), with a backward pass that makes one
    ``(C, V)`` buffer (``p = softmax(z)``, turned into the gradient in place):

        d log pi(y) / dz = onehot(y) - p,        dH / dz = p (m - z),        d / dlogits = (d / dz) / T
    """

    @staticmethod
    def forward(ctx, logits, tokens, temperature, entropy):
        z = _scaled(logits, temperature)
        lse = torch.logsumexp(z, dim=-1)
        chosen = z.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - lse
        mean = None
        if entropy:
            p = torch.sub(z, lse.unsqueeze(-1)).exp_()
            mean = torch.bmm(p.unsqueeze(1), z.unsqueeze(-1)).view(-1)  # sum_v p_v z_v
            del p
        ctx.temperature = temperature
        ctx.save_for_backward(logits, tokens, lse, mean)
        return (chosen, lse - mean) if entropy else chosen

    @staticmethod
    def backward(ctx, grad_chosen, grad_entropy=None):
        logits, tokens, lse, mean = ctx.saved_tensors
        z = _scaled(logits, ctx.temperature)
        p = torch.sub(z, lse.unsqueeze(-1)).exp_()
        g = torch.zeros_like(lse) if grad_chosen is None else grad_chosen
        if grad_entropy is None:
            grad = p.mul_(-g.unsqueeze(-1))
        else:  # p (g_H (m - z) - g)
            grad = p.mul_((mean.unsqueeze(-1) - z).mul_(grad_entropy.unsqueeze(-1)).sub_(g.unsqueeze(-1)))
        grad.scatter_add_(-1, tokens.unsqueeze(-1), g.unsqueeze(-1))
        if ctx.temperature != 1.0:
            grad.div_(ctx.temperature)
        return grad.to(logits.dtype), None, None, None


def chunk_stats(
    head, hidden: torch.Tensor, tokens: torch.Tensor, temperature: float, entropy: bool
) -> tuple[torch.Tensor, ...]:
    """``log pi(y)`` (and ``H``) of one chunk: ``z = head(h) / T`` in at least float32,
    ``log pi(y) = z[y] - logsumexp(z)``, ``H = logsumexp(z) - sum softmax(z) z`` (:class:`_TokenStats`)."""
    out = _TokenStats.apply(head(hidden), tokens, temperature, entropy)
    return out if entropy else (out,)


def chunked_log_probs(
    head,
    hidden: torch.Tensor,
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 1024,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log pi(y_i)`` (N,) and, with ``entropy``, ``H_i`` (N,) of ``N`` positions with final hidden
    states ``hidden`` (N, H) and tokens ``tokens`` (N,), ``chunk`` positions at a time
    (:func:`chunk_stats`). With gradient each chunk's logits are recomputed in the backward pass."""
    if chunk < 1:
        raise ValueError(f"the logit chunk must be at least 1 position, got {chunk}")
    grad = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in getattr(head, "parameters", list)())
    )
    parts = []
    for h, y in zip(hidden.split(chunk), tokens.split(chunk)):
        if grad:
            parts.append(checkpoint(chunk_stats, head, h, y, temperature, entropy, use_reentrant=False))
        else:
            parts.append(chunk_stats(head, h, y, temperature, entropy))
    if not parts:
        empty = hidden.new_zeros(0, dtype=torch.promote_types(hidden.dtype, torch.float32))
        return empty, (empty if entropy else None)
    lp = torch.cat([p[0] for p in parts])
    return lp, (torch.cat([p[1] for p in parts]) if entropy else None)


def head_in_forward(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    width: int,
    where: tuple[torch.Tensor, torch.Tensor],
    tokens: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 1024,
    entropy: bool = False,
) -> tuple[tuple[torch.Tensor, torch.Tensor | None], torch.Tensor]:
    """:func:`chunked_log_probs` of the final hidden states ``h[:, S-W-1 : S-1][where]`` that
    predict ``tokens[where]`` (of the last ``W`` tokens of the sequences), computed in a forward
    hook on the backbone, inside a forward pass through ``model`` itself that makes the logits of
    the last position only; and those logits (B, 1, V), to keep in the graph (with weight 0), so
    that a wrapper's backward hooks run before the chunks are recomputed."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    stats = []

    def reduce(module, args, output):
        hidden = output[0][:, -(width + 1) : -1]
        stats.append(chunked_log_probs(head, hidden[where], tokens[where], temperature, chunk, entropy))

    handle = lm.get_decoder().register_forward_hook(reduce)
    try:
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=1,
            use_cache=False,
        )
    finally:
        handle.remove()
    return stats[-1], out.logits


def response_log_probs(
    model,
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    chunk: int = 1024,
    entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log pi(y_t | x, y_<t)`` (B, T) of each response token at ``temperature`` (0 on padding) and,
    with ``entropy``, the token entropies ``H_t`` (B, T).

    Sequences are ``[left-padded prompt | right-padded response]``: ``prompts``/``prompt_mask``
    (B, P), ``tokens``/``mask`` (B, T); prompt columns that are padding in every row are dropped,
    the response is cut to its longest row, and position ids count real tokens
    (``cumsum(attention_mask) - 1``), as ``generate`` does. Only the real response positions
    reach the LM head, ``chunk`` at a time (:func:`chunked_log_probs`)."""
    rows, total = tokens.shape
    width = max(int(mask.sum(1).max().item()) if rows else 0, 1)
    first = int((prompt_mask.sum(0) > 0).int().argmax().item()) if prompt_mask.any() else 0
    prompt_mask = prompt_mask[:, first:]
    tokens, rmask = tokens[:, :width], mask[:, :width]
    ids = torch.cat([prompts[:, first:], tokens], dim=1)
    attn = torch.cat([prompt_mask, rmask.to(prompt_mask.dtype)], dim=1)
    positions = (torch.cumsum(attn, dim=1) - 1).clamp(min=0)
    where = (rmask > 0).nonzero(as_tuple=True)
    if plain_head(model):
        (lp, ent), last = head_in_forward(
            model, ids, attn, positions, width, where, tokens, temperature, chunk, entropy
        )
    else:  # the model's own logits of the response positions (B, W, V), in its own dtype
        out = model(
            input_ids=ids,
            attention_mask=attn,
            position_ids=positions,
            logits_to_keep=width + 1,
            use_cache=False,
        )
        logits, last = out.logits[:, :-1], out.logits[:, -1:]
        lp, ent = chunked_log_probs(
            torch.nn.Identity(), logits[where], tokens[where], temperature, chunk, entropy
        )
    if last.requires_grad:  # the model's own output joins the graph (a wrapper's backward hooks run)
        lp = lp + 0.0 * last.sum()

    def place(values):
        full = values.new_zeros(rows, total)
        return full.index_put(where, values)

    return place(lp), (place(ent) if entropy else None)
