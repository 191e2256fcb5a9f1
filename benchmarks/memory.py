"""Benchmark: the peak memory of one RL step of the LLM trainer at a real vocabulary size.

A narrow Qwen2 (2 layers, width 64) with SmolLM2's 49,152-token vocabulary,
built here from ``transformers``' config classes (no download; the prompts are
encoded with the embedded character tokenizer, whose ids the big vocabulary
contains), so that the ``(positions x vocabulary)`` tensors dominate. One step:

1. ``LMPolicy.sample``: ``prompts x n`` responses of up to ``max_new_tokens``
   (the random model rarely draws its end token, so nearly all run to the limit);
2. ``log_probs_and_entropy`` (the behaviour pass, no gradient, micro-batched);
3. ``log_probs`` with its backward pass on every micro-batch (the learner's update).

Each run is a fresh process; its peak resident set (``ru_maxrss``) is
reported with the same process's after building the model only (the floor),
and the time of each phase.

    python benchmarks/memory.py                      # 16 prompts x 16 responses x 64 tokens
    python benchmarks/memory.py --logit-chunk 256 --compute-dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch


def build(args):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from pmdlab.llm.policy import LMPolicy, SamplingConfig
    from pmdlab.llm.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.width,
        intermediate_size=2 * args.width,
        num_hidden_layers=args.layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    sampling = SamplingConfig(temperature=1.0, max_new_tokens=args.max_new_tokens)
    options = {"logit_chunk": args.logit_chunk}
    if args.compute_dtype != "float32":
        options["compute_dtype"] = getattr(torch, args.compute_dtype)
    return LMPolicy(model, tokenizer, sampling, token_budget=args.token_budget, **options)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def step(args) -> dict:
    """One step in this process: the floor after building, then each phase's time, then the peak."""
    torch.set_num_threads(args.threads)
    policy = build(args)
    out = {"floor_rss_mb": peak_rss_mb()}
    prompts = [f"{i}+{i + 1}+{2 * i}=" for i in range(args.prompts)]
    torch.manual_seed(1)
    t0 = time.perf_counter()
    rollout = policy.sample(prompts, args.n)
    out["sample_s"] = time.perf_counter() - t0
    out["response_tokens"] = int(rollout.mask.sum())
    t0 = time.perf_counter()
    policy.log_probs_and_entropy(rollout)
    out["entropy_pass_s"] = time.perf_counter() - t0
    policy.model.train()
    t0 = time.perf_counter()
    for index in policy.micro_batches(rollout):
        part = rollout.select(index)
        (policy.log_probs(part) * part.mask).sum().backward()
    out["log_probs_backward_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=49152, help="SmolLM2's vocabulary size")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--logit-chunk", type=int, default=1024)
    parser.add_argument("--token-budget", type=int, default=16384)
    parser.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help="run the step in this process")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(step(args)))
        return
    cmd = [sys.executable, __file__, "--child", *(argv if argv is not None else sys.argv[1:])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    size = (
        f"{args.prompts} prompts x {args.n} responses x {args.max_new_tokens} tokens, vocabulary {args.vocab}"
    )
    print(f"one step, {size}, logit_chunk {args.logit_chunk}, compute {args.compute_dtype}:")
    print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
