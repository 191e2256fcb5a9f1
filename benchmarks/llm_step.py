"""Benchmark: one RL step of the LLM trainer against its floor, on the tiny model or a real one.

Measured in the same run, on the same batch:

1. Rollout: ``prompts x n`` responses from :class:`pmdlab.llm.policy.LMPolicy`
   (batched ``generate`` plus the sampler's log-probs and the response mask), in
   tokens/s, against a bare ``model.generate`` of the same prompts (the floor),
   and against generating prompt by prompt.
2. Update: :func:`pmdlab.rl.update.policy_update` (``m`` minibatch steps), in
   tokens/s, against a bare forward and backward of the same padded sequences
   (the floor: the model's cost without the loss, micro-batching or
   bookkeeping), and the share spent in the loss itself.
3. With ``--lora-rank R``: the same update with LoRA adapters, and the peak
   resident memory of a process that runs the step with and without them.
4. With ``--dtypes float32,bfloat16``: each configuration in each compute
   precision (bfloat16: float32 weights, bfloat16 autocast, as the trainer's
   ``dtype=bfloat16``; the floors under the same autocast), and the speed-ups.

    python benchmarks/llm_step.py                                   # the embedded tiny model
    python benchmarks/llm_step.py --model smollm2-135m-instruct --prompts 8 --n 4 --max-new-tokens 16
    python benchmarks/llm_step.py --model PATH --lora-rank 16
    python benchmarks/llm_step.py --model smollm2-135m-instruct --dtypes float32,bfloat16
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from pmdlab.llm.policy import LMPolicy, SamplingConfig
from pmdlab.llm.tasks import ArithmeticTask
from pmdlab.rl import Algorithm, Groups
from pmdlab.rl.update import minibatches, policy_update

CHAT = "What is {problem}? Answer with the number only."


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def load(args):
    """Model, tokenizer, prompts and whether to use the chat template."""
    if args.model == "tiny":
        from pmdlab.llm.tiny import TinyModelConfig, build_model, build_tokenizer

        tokenizer = build_tokenizer()
        task = ArithmeticTask(eval_size=0)
        return build_model(TinyModelConfig(), tokenizer), tokenizer, task, False
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pmdlab.llm import models

    path = models.cache_root() / args.model if args.model in models.KNOWN else args.model
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    task = ArithmeticTask(terms=3, eval_size=0, template=CHAT, grading="last_number")
    return model, AutoTokenizer.from_pretrained(path), task, True


def with_lora(model, rank: int):
    import peft

    torch.manual_seed(0)
    config = peft.LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", task_type="CAUSAL_LM")
    return peft.get_peft_model(model, config)


def update_fn(policy, optimizer, rollout, old, algorithm, args):
    def update():
        policy_update(
            policy.log_probs,
            optimizer,
            rollout,
            algorithm,
            num_minibatches=args.minibatches,
            behaviour_logprobs=old,
            micro_batches=policy.micro_batches,
            parameters=[p for p in policy.parameters() if p.requires_grad],
            max_grad_norm=1.0,
        )

    return update


def bare_forward_backward(model, rollout, parts):
    """The floor of the update: the model's forward and backward on each minibatch's padded
    sequences, with a trivial loss on the response logits (no gather, no loss, no bookkeeping)."""

    def step():
        for index in parts:
            ids = torch.cat([rollout.prompts[index], rollout.tokens[index]], dim=1)
            attn = torch.cat([rollout.extras["prompt_mask"][index], rollout.mask[index].long()], dim=1)
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            logits[:, -rollout.tokens.shape[1] :].float().mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def measure(args) -> dict:
    torch.manual_seed(0)
    model, tokenizer, task, chat = load(args)
    if args.lora_rank:
        model = with_lora(model, args.lora_rank)
    sampling = SamplingConfig(temperature=args.temperature, max_new_tokens=args.max_new_tokens)
    compute = None if args.dtype == "float32" else getattr(torch, args.dtype)
    policy = LMPolicy(
        model,
        tokenizer,
        sampling,
        chat_template=chat,
        system_prompt="" if chat else None,
        compute_dtype=compute,
    )
    autocast = torch.autocast("cpu", dtype=compute, enabled=compute is not None)
    prompts = [p.prompt for p in task.train_batch(args.prompts)]
    algorithm = Algorithm(args.algorithm, tau=1.0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    model.eval()

    torch.manual_seed(0)
    rollout = policy.sample(prompts, args.n)
    tokens = float(rollout.mask.sum())
    ids, mask = policy.encode(prompts)

    def bare_generate():
        with torch.no_grad(), autocast:
            model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=args.temperature,
                top_p=1.0,
                top_k=0,
                max_new_tokens=args.max_new_tokens,
                num_return_sequences=args.n,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )

    out = {"tokens": tokens, "threads": torch.get_num_threads()}
    out["rollout_s"] = timed(lambda: policy.sample(prompts, args.n), args.repeats)
    out["generate_s"] = timed(bare_generate, args.repeats)
    if args.prompt_by_prompt:
        out["one_by_one_s"] = timed(lambda: [policy.sample([p], args.n) for p in prompts], 1)

    rollout.rewards = (torch.rand(len(rollout)) < 0.5).float()
    old = policy.log_probs_and_entropy(rollout)[0]
    model.train()
    update = update_fn(policy, optimizer, rollout, old, algorithm, args)
    update()  # warm-up
    out["update_s"] = timed(update, args.repeats)
    if args.compare:  # the same batch, the algorithms in turns, so that drift hits each alike
        names = [args.algorithm, *args.compare.split(",")]
        updates = {n: update_fn(policy, optimizer, rollout, old, Algorithm(n, tau=1.0), args) for n in names}
        times = {n: [] for n in names}
        for round_ in range(args.repeats):  # each round starts one further along: no fixed position
            for n in names[round_ % len(names) :] + names[: round_ % len(names)]:
                times[n].append(timed(updates[n], 1))
        out["compare_s"] = {n: statistics.median(t) for n, t in times.items()}
    groups = Groups.from_ids(rollout.group_ids)
    parts = minibatches(groups, args.minibatches, torch.Generator().manual_seed(0))
    with autocast:
        out["forward_backward_s"] = timed(bare_forward_backward(model, rollout, parts), args.repeats)

    advantages = algorithm.advantages(rollout.rewards, groups)
    with torch.no_grad():
        current = policy.log_probs(rollout)

    def loss_only():
        for index in parts:
            lp = current[index].clone().requires_grad_(True)
            normalizer = algorithm.normalizer(rollout.mask[index])
            loss = algorithm.loss(
                lp, old[index], rollout.mask[index], advantages[index], normalizer=normalizer
            )
            loss.loss.backward()

    out["loss_s"] = timed(loss_only, args.repeats * 4)
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def report(args, r: dict) -> None:
    name = "tiny model" if args.model == "tiny" else args.model
    print(
        f"{name}, {args.dtype} compute ({r['parameters'] / 1e6:.1f} M parameters, "
        f"{r['trainable'] / 1e6:.2f} M trainable), "
        f"{args.prompts} prompts x {args.n} responses, {r['tokens']:.0f} response tokens, "
        f"threads = {r['threads']}"
    )
    t = r["tokens"]
    print(
        f"rollout  LMPolicy.sample       {r['rollout_s'] * 1e3:9.1f} ms  {t / r['rollout_s']:9.0f} tokens/s"
    )
    print(
        f"         bare model.generate   {r['generate_s'] * 1e3:9.1f} ms  {t / r['generate_s']:9.0f} tokens/s"
    )
    print(f"         ratio to the floor    {r['rollout_s'] / r['generate_s']:9.2f}x")
    if "one_by_one_s" in r:
        slower = r["one_by_one_s"] / r["rollout_s"]
        print(f"         prompt by prompt      {r['one_by_one_s'] * 1e3:9.1f} ms  ({slower:.1f}x slower)")
    print(
        f"update   {args.algorithm}, {args.minibatches} minibatches {r['update_s'] * 1e3:9.1f} ms  "
        f"{t / r['update_s']:9.0f} tokens/s"
    )
    fb = r["forward_backward_s"]
    print(f"         bare forward+backward {fb * 1e3:9.1f} ms  {t / fb:9.0f} tokens/s")
    print(f"         ratio to the floor    {r['update_s'] / fb:9.2f}x")
    share = 100 * r["loss_s"] / r["update_s"]
    print(f"         the loss alone        {r['loss_s'] * 1e3:9.2f} ms  = {share:.2f}% of the update")
    print(f"peak resident memory           {r['peak_rss_mb']:9.0f} MB")
    if "compare_s" in r:
        base = r["compare_s"][args.algorithm]
        print(f"the same batch, algorithms in turns, order rotated ({args.repeats} rounds, median):")
        for name, seconds in r["compare_s"].items():
            print(
                f"         {name:10s}            {seconds * 1e3:9.1f} ms  {t / seconds:9.0f} tokens/s  "
                f"{base / seconds:.3f}x {args.algorithm}'s throughput"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny, a fetched model's name, or a model folder")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--algorithm", default="pmd_mean")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--lora-rank", type=int, default=0, help="also measure LoRA adapters of this rank")
    parser.add_argument(
        "--prompt-by-prompt", action="store_true", help="also time generating prompt by prompt"
    )
    parser.add_argument(
        "--compare", default="", help="also time these algorithms' updates in turns, e.g. grpo"
    )
    parser.add_argument("--dtypes", default="float32", help="compute precisions, e.g. float32,bfloat16")
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)  # one measurement's
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # one measurement, as JSON
    args = parser.parse_args()
    if args.json:
        print(json.dumps(measure(args)))
        return
    # Each configuration in its own process, so that its peak memory is its own.
    argv, skip = [], False
    for a in sys.argv[1:]:
        if skip or a.startswith(("--lora-rank", "--dtypes")):
            skip = a in ("--lora-rank", "--dtypes")
            continue
        argv.append(a)
    results = {}
    for dtype in args.dtypes.split(","):
        for rank in [0] + ([args.lora_rank] if args.lora_rank else []):
            cmd = [sys.executable, __file__, *argv, "--json", "--lora-rank", str(rank), "--dtype", dtype]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            results[dtype, rank] = json.loads(out)
            if rank:
                print(f"\nwith LoRA rank {rank} (all linear layers):")
            args.dtype = dtype
            report(args, results[dtype, rank])
            print()
    if ("float32", 0) in results and ("bfloat16", 0) in results:
        a, b = results["float32", 0], results["bfloat16", 0]
        print(
            f"bfloat16 against float32: update {a['update_s'] / b['update_s']:.2f}x faster, "
            f"rollout {a['rollout_s'] / b['rollout_s']:.2f}x faster"
        )


if __name__ == "__main__":
    main()
