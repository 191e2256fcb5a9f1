"""Benchmark: the trainer's update and rollout on a GPU, prepared for one short run on an H200.

Qwen2.5-0.5B- and 1.5B-shaped models (configs written here, random weights: no
download), float32 master weights with bfloat16 compute (the trainer's
``dtype=bfloat16``), on a synthetic batch of ``prompts x n`` responses of
mixed lengths. For each model, with PMD-mean, PMD-part and GRPO interleaved
round by round:

* the update (:func:`pmdlab.rl.update.policy_update`, ``minibatches`` steps,
  micro-batched by length within the token budget): tokens/s, model FLOP/s,
  MFU against 989 TFLOP/s (dense bf16, H100/H200) and against a bf16 GEMM
  measured on the device in the same run, ``torch.cuda.max_memory_allocated``;
* the floor: a bare forward and backward of the same padded sequences (the
  log-prob overhead is the update's time over it);
* the loss's share: the loss and its backward on log-probs already computed;
* the rollout: tokens/s of the ``generate`` backend.

Times are taken with the device synchronised. The results go to ``--out``
(JSON) and a table, both rewritten as each phase finishes; the run stops
itself before ``--budget-s`` (default 400 s, under 7 minutes) and reports
what it skipped. ``--dry-run`` runs every phase on the CPU at tiny shapes
(CI does).

    python benchmarks/gpu_train.py --out gpu.json             # on the GPU
    python benchmarks/gpu_train.py --dry-run --out /tmp/x.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from pmdlab.llm import flops
from pmdlab.llm.policy import GenerateBackend, LMPolicy, SamplingConfig
from pmdlab.rl import Algorithm, Groups
from pmdlab.rl.rollout import Rollout
from pmdlab.rl.update import policy_update

#: Qwen2.5 shapes (config.json of the released models), random weights.
SHAPES = {
    "qwen2.5-0.5b": dict(
        hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14
    ),
    "qwen2.5-1.5b": dict(
        hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12
    ),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
}
ALGORITHMS = ("pmd_mean", "pmd_part", "grpo")
H100_BF16 = 989e12


def build(shape: str, device: torch.device, vocab: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=vocab,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).to(device=device, dtype=torch.float32)


def synthetic_batch(args, vocab: int, device) -> Rollout:
    """``prompts x n`` responses, lengths uniform in [max/4, max], random tokens and {0, 1} rewards."""
    g = torch.Generator().manual_seed(0)
    rows = args.prompts * args.n
    lengths = torch.randint(args.response_tokens // 4, args.response_tokens + 1, (rows,), generator=g)
    mask = (torch.arange(args.response_tokens)[None] < lengths[:, None]).float()
    return Rollout(
        group_ids=torch.arange(args.prompts).repeat_interleave(args.n),
        tokens=torch.randint(2, vocab, (rows, args.response_tokens), generator=g),
        mask=mask,
        rewards=torch.randint(0, 2, (rows,), generator=g).float(),
        prompts=torch.randint(2, vocab, (rows, args.prompt_tokens), generator=g),
        extras={"prompt_mask": torch.ones(rows, args.prompt_tokens, dtype=torch.long)},
    ).to(device)


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def peak_memory(device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def reset_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def measured_gemm(device, dtype, size: int) -> float:
    """FLOP/s of a ``size``-square matmul in ``dtype``, best of 5."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    return 2 * size**3 / min(timed(lambda: a @ b, device) for _ in range(5))


class Bench:
    """One model's phases; ``record`` holds everything measured so far."""

    def __init__(self, args, shape: str, device, deadline: float, results: dict):
        self.args, self.device, self.deadline = args, device, deadline
        self.record = results.setdefault(shape, {"skipped": []})
        self.model = build(shape, device, args.vocab)
        tokenizer = SimpleNamespace(pad_token_id=0, eos_token_id=1, pad_token="<pad>", eos_token="<eos>")
        sampling = SamplingConfig(max_new_tokens=args.response_tokens)
        self.policy = LMPolicy(
            self.model, tokenizer, sampling, token_budget=args.token_budget, compute_dtype=torch.bfloat16
        )
        self.rollout = synthetic_batch(args, args.vocab, device)
        self.config = self.model.config
        self.tokens = float(self.rollout.mask.sum())

    def due(self, name: str) -> bool:
        if time.monotonic() < self.deadline:
            return True
        self.record["skipped"].append(name)
        return False

    def update(self, algorithm: str) -> float:
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-6)
        with torch.no_grad():
            behaviour = self.policy.log_probs_and_entropy(self.rollout)[0]

        def step():
            policy_update(
                self.policy.log_probs,
                optimizer,
                self.rollout,
                Algorithm(algorithm, tau=1.0),
                num_minibatches=self.args.minibatches,
                behaviour_logprobs=behaviour,
                micro_batches=self.policy.micro_batches,
                parameters=list(self.model.parameters()),
                max_grad_norm=1.0,
            )

        step()  # warm-up: kernels, allocator, optimiser state
        reset_memory(self.device)
        seconds = timed(step, self.device)
        self.record.setdefault(algorithm, {}).setdefault("update_s", []).append(seconds)
        self.record[algorithm]["max_memory_gib"] = peak_memory(self.device)
        return seconds

    def bare(self) -> float:
        """A forward and backward of the same micro-batches with a trivial loss on the response logits."""
        parts = self.policy.micro_batches(self.rollout)
        r = self.rollout

        def step():
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                for index in parts:
                    ids = torch.cat([r.prompts[index], r.tokens[index]], dim=1)
                    attn = torch.cat([r.extras["prompt_mask"][index], r.mask[index].long()], dim=1)
                    out = self.model(input_ids=ids, attention_mask=attn, logits_to_keep=r.tokens.shape[1])
                    out.logits.float().mean().backward()
            self.model.zero_grad(set_to_none=True)

        step()
        return timed(step, self.device)

    def loss_share(self, algorithm: str) -> float:
        """Seconds of the loss and its backward alone, on log-probs already computed."""
        with torch.no_grad():
            current = self.policy.log_probs_and_entropy(self.rollout)[0]
        algo = Algorithm(algorithm, tau=1.0)
        groups = Groups.from_ids(self.rollout.group_ids)
        advantages = algo.advantages(self.rollout.rewards, groups)

        def step():
            leaf = current.clone().requires_grad_(True)
            algo.loss(leaf, current, self.rollout.mask, advantages, groups=groups).loss.backward()

        step()
        return timed(step, self.device)

    def rollout_speed(self) -> float:
        backend = GenerateBackend(self.model, self.policy.tokenizer, compute_dtype=torch.bfloat16)
        prompts = self.rollout.prompts[:: self.args.n][: self.args.rollout_prompts]
        mask = torch.ones_like(prompts)
        sampling = SamplingConfig(max_new_tokens=self.args.response_tokens)
        torch.manual_seed(0)
        backend.generate(prompts[:1], mask[:1], 1, SamplingConfig(max_new_tokens=4))  # warm-up
        reset_memory(self.device)
        out = {}
        seconds = timed(
            lambda: out.update(zip("tlm", backend.generate(prompts, mask, self.args.n, sampling))),
            self.device,
        )
        self.record["rollout"] = {
            "seconds": seconds,
            "tokens": float(out["m"].sum()),
            "tokens_per_s": float(out["m"].sum()) / seconds,
            "max_memory_gib": peak_memory(self.device),
        }
        return seconds


def summarise(record: dict, bench: Bench, peaks: dict) -> None:
    """Tokens/s, FLOP/s and MFU of each algorithm's median update, in place."""
    prompt_lengths = bench.rollout.extras["prompt_mask"].sum(1)
    response_lengths = bench.rollout.mask.sum(1)
    work = flops.update_flops(flops.model_shape(bench.config), prompt_lengths, response_lengths)
    record["update_flops"] = work
    for name in ALGORITHMS:
        if name not in record:
            continue
        seconds = statistics.median(record[name]["update_s"])
        rate = work / seconds
        record[name].update(
            tokens_per_s=bench.tokens / seconds,
            tflops_per_s=rate / 1e12,
            mfu_vs_989=rate / H100_BF16,
            mfu_vs_gemm=rate / peaks["gemm_flops"],
        )
        if "bare_s" in record:
            record[name]["over_bare"] = seconds / record["bare_s"]
        if "loss_s" in record.get(name, {}):
            record[name]["loss_share"] = record[name]["loss_s"] / seconds


def table(results: dict) -> str:
    lines = [
        f"{'model':14s} {'algorithm':9s} {'tokens/s':>10s} {'TFLOP/s':>8s} {'MFU/989':>8s} {'MFU/GEMM':>8s} "
        f"{'mem GiB':>8s} {'x bare':>7s} {'loss %':>7s}"
    ]
    for shape, rec in results.items():
        if shape.startswith("_"):
            continue
        for name in ALGORITHMS:
            r = rec.get(name)
            if not r or "tokens_per_s" not in r:
                continue
            lines.append(
                f"{shape:14s} {name:9s} {r['tokens_per_s']:10.0f} {r['tflops_per_s']:8.2f} "
                f"{r['mfu_vs_989']:8.3f} {r['mfu_vs_gemm']:8.3f} "
                f"{r.get('max_memory_gib', float('nan')):8.2f} "
                f"{r.get('over_bare', float('nan')):7.2f} {100 * r.get('loss_share', float('nan')):6.2f}%"
            )
        if "rollout" in rec:
            ro = rec["rollout"]
            lines.append(
                f"{shape:14s} rollout   {ro['tokens_per_s']:10.0f} tokens/s, {ro['max_memory_gib']:.2f} GiB"
            )
        if rec.get("skipped"):
            lines.append(f"{shape:14s} skipped (time budget): {', '.join(rec['skipped'])}")
    return "\n".join(lines)


def run_model(args, shape: str, device, deadline: float, results: dict, peaks: dict, write) -> None:
    bench = Bench(args, shape, device, deadline, results)
    record = bench.record
    record.update(
        parameters=sum(p.numel() for p in bench.model.parameters()),
        batch=dict(
            prompts=args.prompts,
            n=args.n,
            response_tokens=args.response_tokens,
            prompt_tokens=args.prompt_tokens,
            tokens=bench.tokens,
            minibatches=args.minibatches,
        ),
    )
    for round_ in range(args.rounds):
        for name in ALGORITHMS:  # interleaved: drift in the device's speed hits each alike
            if bench.due(f"{name} update, round {round_ + 1}"):
                bench.update(name)
                summarise(record, bench, peaks)
                write()
    if bench.due("bare forward+backward"):
        record["bare_s"] = bench.bare()
    for name in ALGORITHMS:
        if name in record and bench.due(f"{name} loss share"):
            record[name]["loss_s"] = bench.loss_share(name)
    summarise(record, bench, peaks)
    write()
    if bench.due("rollout"):
        bench.rollout_speed()
    write()
    del bench


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every phase on the CPU at tiny shapes")
    parser.add_argument("--models", default="qwen2.5-0.5b,qwen2.5-1.5b")
    parser.add_argument("--out", default="gpu_train.json")
    parser.add_argument("--budget-s", type=float, default=400.0)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--response-tokens", type=int, default=1024)
    parser.add_argument("--rollout-prompts", type=int, default=16)
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--token-budget", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--vocab", type=int, default=151936)
    args = parser.parse_args(argv)
    if args.dry_run:
        args.models, args.prompts, args.n, args.prompt_tokens, args.response_tokens = "tiny", 2, 2, 8, 16
        args.rollout_prompts, args.vocab, args.token_budget, args.rounds = 2, 512, 256, 1
    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    if device.type != "cuda" and not args.dry_run:
        raise SystemExit("no GPU: run with --dry-run to check the script on the CPU")
    started = time.monotonic()
    deadline = started + args.budget_s
    out = Path(args.out)
    results: dict = {"_device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    peaks = {"gemm_flops": measured_gemm(device, torch.bfloat16, 256 if args.dry_run else 8192)}
    results["_gemm_tflops"] = peaks["gemm_flops"] / 1e12

    def write():
        results["_elapsed_s"] = time.monotonic() - started
        out.write_text(json.dumps(results, indent=1))
        print(table(results), flush=True)

    for shape in args.models.split(","):
        if time.monotonic() >= deadline:
            results.setdefault(shape, {"skipped": []})["skipped"].append("everything (time budget)")
            continue
        run_model(args, shape, device, deadline, results, peaks, write)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
