"""Model FLOPs of a training update and the model FLOPs utilisation (MFU) it reaches.

The counts are of the matrix multiplications a decoder-only transformer
(Qwen2, Llama and alike) needs, from its ``config`` and the real (unpadded)
lengths of the sequences, with ``d`` the hidden width, ``V`` the vocabulary,
``l`` the decoder layers and ``d_attn = heads x head_dim``:

* ``N``, the non-embedding matmul parameters: per layer the attention
  projections ``q, o: d x d_attn`` and ``k, v: d x kv_heads x head_dim``
  (grouped-query attention), and the MLP ``gate, up, down: d x intermediate``;
* the LM head, ``V x d`` (whether or not it shares the embedding's weights);
* attention's own matmuls ``Q K^T`` and ``A V``: ``2 x 2 x d_attn`` FLOPs per
  query token, layer and attended key.

A row of ``P`` prompt and ``R`` response tokens runs the backbone on all
``L = P + R`` tokens and the head on the ``R`` response positions only (the
trainer asks for those logits alone: ``logits_to_keep``). A matmul costs
``2`` FLOPs per parameter and token forward and ``4`` backward (the input's
gradient and the weight's), hence per row

    forward          2 N L + 2 V d R + 4 l d_attn C(L)
    forward+backward 6 N L + 6 V d R + 12 l d_attn C(L)

with ``C(L)`` the keys attended, summed over the row's queries. Attention is
causal: query ``t`` (from 1) attends ``t`` keys, so ``C(L) = L (L + 1) / 2``
exactly (the average context is ``(L + 1) / 2``, not ``L / 2``: the exact sum
costs nothing and is right for short rows too). That is the work the model
needs; a kernel that skips masked blocks does about that much, one that
computes the whole masked square (eager attention, SDPA with a padding mask,
and what :class:`torch.utils.flop_counter.FlopCounterMode` counts) does
``C(L) = L^2``, available as ``causal=False``. Not counted: padding, the
head's logits beyond the response positions, elementwise work (norms,
activations, softmax, rotary embeddings), the embedding lookup, the
optimiser, and activation checkpointing's recomputed forward (model FLOPs,
not hardware FLOPs, as MFU is defined). Sliding-window layers are counted as
full causal attention; mixture-of-experts models are not covered.

With LoRA the model's own weights are frozen: no weight gradients, so
``4 N L + 4 V d R`` (the input gradients still flow through every matmul),
plus ``6`` FLOPs per adapter parameter and token. Checked against
``FlopCounterMode`` on Qwen2.5-0.5B- and 1.5B-shaped models in
``tests/llm/test_flops.py`` (docs/math.md §5, *Update FLOPs and MFU*).

MFU is the achieved FLOP/s over the peak: :func:`peak_flops` takes a known
accelerator's dense bf16/fp16 peak from :data:`PEAK_FLOPS` by
``torch.cuda.get_device_name()``, and elsewhere (a CPU, an unlisted
accelerator or dtype) a square GEMM measured once per process, so that MFU
there is against the matmul throughput actually reachable.
"""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass

import torch

from .logprobs import causal_lm

__all__ = [
    "PEAK_FLOPS",
    "ModelShape",
    "attention_context",
    "config_of",
    "forward_flops",
    "lora_layout",
    "measured_gemm_flops",
    "mfu",
    "model_shape",
    "peak_flops",
    "table_peak",
    "update_flops",
]


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that its FLOPs depend on."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @property
    def attention_width(self) -> int:
        """``d_attn = heads x head_dim``: the width of the queries (and of ``Q K^T``'s reduction)."""
        return self.heads * self.head_dim

    @property
    def matmul_params(self) -> int:
        """``N = l (2 d d_attn + 2 d kv_heads head_dim + 3 d intermediate)``: the weights of the
        attention projections and of the MLP, without embedding, head, biases and norms."""
        d, kv = self.hidden, self.kv_heads * self.head_dim
        return self.layers * (2 * d * self.attention_width + 2 * d * kv + 3 * d * self.intermediate)

    @property
    def head_params(self) -> int:
        """``V x d``: the LM head's matmul (tied to the embedding or not)."""
        return self.vocab * self.hidden


def model_shape(config) -> ModelShape:
    """The :class:`ModelShape` of a ``transformers`` config (Qwen2/Llama-like; a multimodal
    config's text part). Raises ``ValueError`` for a mixture-of-experts model or a missing size."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if any(getattr(text, k, 0) for k in ("num_experts", "num_local_experts", "n_routed_experts")):
        raise ValueError("mixture-of-experts models are not covered by the dense FLOPs formula")
    try:
        hidden, heads = int(text.hidden_size), int(text.num_attention_heads)
        return ModelShape(
            vocab=int(text.vocab_size),
            hidden=hidden,
            intermediate=int(text.intermediate_size),
            layers=int(text.num_hidden_layers),
            heads=heads,
            kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=int(getattr(text, "head_dim", None) or hidden // heads),
        )
    except (AttributeError, TypeError) as e:
        raise ValueError(f"no dense decoder shape in {type(text).__name__}: {e}") from None


def config_of(model: torch.nn.Module):
    """The ``transformers`` config of ``model``, inside its wrappers (:func:`.logprobs.causal_lm`)."""
    model = causal_lm(model)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(f"{type(model).__name__} has no config")
    return config


def lora_layout(model: torch.nn.Module) -> tuple[bool, int]:
    """``(frozen_base, adapter_params)``: a peft model trains only its adapters (the trainable
    parameters); any other model trains its own weights (``(False, 0)``)."""
    model = getattr(model, "module", model)
    if not hasattr(model, "peft_config"):
        return False, 0
    return True, sum(p.numel() for p in model.parameters() if p.requires_grad)


def attention_context(lengths, causal: bool = True) -> float:
    """``sum over rows of C(L)``, the keys attended summed over queries: ``L (L + 1) / 2`` causal
    (query ``t`` attends ``t`` keys, itself included), ``L^2`` for the full square."""
    L = _lengths(lengths)
    return float((L * (L + 1) / 2).sum() if causal else (L * L).sum())


def forward_flops(
    shape: ModelShape, prompt_lengths, response_lengths, *, causal: bool = True, adapter_params: int = 0
) -> float:
    """One forward pass (no gradient) over rows of ``P`` prompt and ``R`` response tokens:
    ``sum over rows of 2 N L + 2 V d R + 4 l d_attn C(L) + 2 A L``, ``L = P + R``
    (the head on the response positions only, as :meth:`LMPolicy.log_probs` computes it;
    ``A`` = ``adapter_params``, LoRA's)."""
    P, R = _lengths(prompt_lengths), _lengths(response_lengths)
    L = P + R
    attention = 4 * shape.layers * shape.attention_width * attention_context(L, causal)
    matmuls = 2 * (shape.matmul_params + adapter_params) * L.sum() + 2 * shape.head_params * R.sum()
    return float(matmuls + attention)


def update_flops(
    shape: ModelShape,
    prompt_lengths,
    response_lengths,
    *,
    epochs: int = 1,
    causal: bool = True,
    frozen_base: bool = False,
    adapter_params: int = 0,
) -> float:
    """The forward and backward passes of ``epochs`` passes over rows of ``P`` prompt and ``R``
    response tokens (every row once per epoch, whatever the minibatches):

        epochs x sum over rows of (6 N L + 6 V d R + 12 l d_attn C(L) + 6 A L),   L = P + R,

    or with ``frozen_base`` (LoRA: no weight gradients of the model's own weights) ``4 N L + 4 V d R``
    in place of ``6 N L + 6 V d R``; ``A`` = ``adapter_params`` (forward, input and weight gradients)."""
    P, R = _lengths(prompt_lengths), _lengths(response_lengths)
    L = P + R
    per = 4 if frozen_base else 6
    attention = 12 * shape.layers * shape.attention_width * attention_context(L, causal)
    once = (per * shape.matmul_params + 6 * adapter_params) * L.sum() + per * shape.head_params * R.sum()
    return float(epochs * (once + attention))


def mfu(flops: float, seconds: float, peak: float, devices: int = 1) -> float:
    """Model FLOPs utilisation: ``flops / seconds / (devices x peak)`` (``nan`` without time or peak)."""
    if not seconds > 0 or not peak > 0:
        return float("nan")
    return flops / seconds / (devices * peak)


#: Dense (no sparsity) bf16/fp16 tensor-core peaks in FLOP/s, by a pattern of
#: ``torch.cuda.get_device_name()`` (lower case; the first that matches wins, so the
#: more specific names come first). Vendor data sheets; per GPU (one GCD pair for an MI250X card).
PEAK_FLOPS: tuple[tuple[str, str, float], ...] = (
    (r"gb200", "NVIDIA GB200", 2500e12),
    (r"\bb200", "NVIDIA B200", 2250e12),
    (r"\bb100", "NVIDIA B100", 1750e12),
    (r"gh200", "NVIDIA GH200", 989e12),
    (r"h200.*nvl", "NVIDIA H200 NVL", 835e12),
    (r"h200", "NVIDIA H200", 989e12),
    (r"h100.*pcie", "NVIDIA H100 PCIe", 756e12),
    (r"h100.*nvl", "NVIDIA H100 NVL", 835e12),
    (r"h100", "NVIDIA H100 SXM", 989e12),
    (r"h800.*pcie", "NVIDIA H800 PCIe", 756e12),
    (r"h800", "NVIDIA H800 SXM", 989e12),
    (r"\bh20\b", "NVIDIA H20", 148e12),
    (r"a100", "NVIDIA A100", 312e12),
    (r"a800", "NVIDIA A800", 312e12),
    (r"l40s", "NVIDIA L40S", 362e12),
    (r"\bl40\b", "NVIDIA L40", 181e12),
    (r"\bl4\b", "NVIDIA L4", 121e12),
    (r"\ba10\b", "NVIDIA A10", 125e12),
    (r"rtx a6000", "NVIDIA RTX A6000", 155e12),
    (r"rtx 4090", "NVIDIA GeForce RTX 4090", 165e12),
    (r"rtx 3090", "NVIDIA GeForce RTX 3090", 71e12),
    (r"mi355x", "AMD Instinct MI355X", 2517e12),
    (r"mi325x", "AMD Instinct MI325X", 1307e12),
    (r"mi300x", "AMD Instinct MI300X", 1307e12),
    (r"mi300a", "AMD Instinct MI300A", 981e12),
    (r"mi250x", "AMD Instinct MI250X", 383e12),
    (r"mi250", "AMD Instinct MI250", 362e12),
)


def table_peak(name: str) -> tuple[float, str] | None:
    """``(dense bf16 peak, the table's name)`` of a device name, or ``None`` if it is not listed."""
    low = name.lower()
    for pattern, label, peak in PEAK_FLOPS:
        if re.search(pattern, low):
            return peak, label
    return None


def peak_flops(device, dtype: torch.dtype) -> tuple[float, str]:
    """``(peak FLOP/s, where it comes from)`` of ``device`` at matmuls in ``dtype``.

    A listed CUDA/ROCm device in bfloat16 or float16: :data:`PEAK_FLOPS`; in float32 with
    TF32 matmuls allowed, half that (TF32's dense rate). Anything else (a CPU, an unlisted
    device, float32 without TF32): :func:`measured_gemm_flops`, measured once per process.
    """
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        known = table_peak(name)
        if known is not None:
            peak, label = known
            if dtype in (torch.bfloat16, torch.float16):
                return peak, f"table: {label} dense bf16/fp16 ({name})"
            if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
                return peak / 2, f"table: {label} dense tf32, half the bf16 peak ({name})"
    value = measured_gemm_flops(str(device), dtype)
    return value, f"measured: best {_GEMM_SIZE}^3 {str(dtype).removeprefix('torch.')} GEMM on {device}"


_GEMM_SIZE = 2048


@functools.lru_cache(maxsize=None)
def measured_gemm_flops(device: str, dtype: torch.dtype, size: int = _GEMM_SIZE, repeats: int = 3) -> float:
    """FLOP/s of a ``size x size`` by ``size x size`` matmul (``2 size^3`` FLOPs) on ``device`` in
    ``dtype``: the best of ``repeats`` after a warm-up, cached per process."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=generator).to(device=device, dtype=dtype)
    sync = _synchronize(torch.device(device))
    torch.matmul(a, b)
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def _synchronize(device: torch.device):
    """Wait for ``device``'s queued work (a no-op on a CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return getattr(getattr(torch, device.type, None), "synchronize", None) or (lambda: None)


def _lengths(values) -> torch.Tensor:
    """Lengths (a tensor, a sequence or one number) as a flat float64 CPU tensor."""
    if isinstance(values, torch.Tensor):
        return values.detach().to("cpu", torch.float64).reshape(-1)
    return torch.as_tensor(values, dtype=torch.float64).reshape(-1)
