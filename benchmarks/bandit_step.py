"""Benchmark: one off-policy bandit step, and each loss on an LLM-sized batch.

1. One full step of :class:`pmdlab.bandit.train.BanditTrainer` (4,096 prompts x
   16 responses x K = 1,000, 16 minibatch updates, PMD-mean, tabular policy,
   Adam) against a plain per-prompt Python-loop implementation of the same
   step measured in the same run (sampling, baselines, losses and metrics
   prompt by prompt; the same optimiser).
2. Each loss, forward and backward, on a (512 x 16) x 1,024-token batch,
   against a naive reference: the same loss written as a Python loop over
   sequences (timed on a slice of the batch and scaled up: the whole batch
   would take minutes).

    python benchmarks/bandit_step.py [--prompts 4096] [--responses 1000] [--steps 5]
"""

from __future__ import annotations

import argparse
import time

import torch

from pmdlab.bandit import BanditConfig, TaskConfig, make_task
from pmdlab.bandit.optim import RowAdam
from pmdlab.bandit.train import BanditTrainer
from pmdlab.rl import ALGORITHMS, Algorithm


def naive_step(
    logits: torch.nn.Embedding, optimizer, task, n: int, minibatches: int, tau: float, gen
) -> dict:
    """The same off-policy PMD-mean step, one prompt at a time, with the same metrics:
    success and KL(pi_old || pi) per prompt, and the per-prompt chi^2-weight fit."""
    prompts = task.prompts
    batch = []
    with torch.no_grad():
        old_tables = []
        for x in range(prompts):
            logp = torch.log_softmax(logits.weight[x], dim=0)
            ys = torch.multinomial(torch.exp(logp), n, replacement=True, generator=gen)
            r = task.rewards[x, ys].float()
            batch.append((ys, logp[ys], r - r.mean()))
            old_tables.append(logp)
    order = torch.randperm(prompts, generator=gen).tolist()
    size = prompts // minibatches
    chi2 = []
    for m in range(minibatches):
        chunk = order[m * size : (m + 1) * size]
        optimizer.zero_grad()
        loss = 0.0
        for x in chunk:
            ys, old, adv = batch[x]
            logp = torch.log_softmax(logits(torch.tensor([x]))[0], dim=0)[ys]
            delta, target = logp - old, adv / tau
            loss = loss + (0.5 * (target - delta) ** 2).sum()
            with torch.no_grad():
                e = torch.exp(delta)
                chi2.append(0.5 * tau * float(((target - delta) * e).sum() / (e * e).sum()))
        (loss / (len(chunk) * n)).backward()
        optimizer.step()
    with torch.no_grad():
        success, kl = [], []
        for x in range(prompts):
            logp = torch.log_softmax(logits.weight[x], dim=0)
            success.append(float((torch.exp(logp) * task.correct[x]).sum()))
            kl.append(float((torch.exp(old_tables[x]) * (old_tables[x] - logp)).sum()))
    return {"success": sum(success) / prompts, "kl": sum(kl) / prompts, "chi2_weight": sum(chi2) / len(chi2)}


def bench_step(args) -> None:
    task = make_task(TaskConfig(prompts=args.prompts, responses=args.responses, seed=0))
    cfg = BanditConfig(
        task=task.config,
        algorithm=Algorithm("pmd_mean", tau=args.tau),
        n=args.n,
        minibatches=args.minibatches,
        steps=args.steps,
        lr=0.1,
    )
    trainer = BanditTrainer(cfg, task)
    trainer.step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(args.steps):
        trainer.step()
    ours = (time.perf_counter() - t0) / args.steps

    logits = torch.nn.Embedding(
        task.prompts, task.responses, sparse=True, _weight=task.initial_logits.float().clone()
    )
    opt = RowAdam(logits.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    naive_step(logits, opt, task, args.n, args.minibatches, args.tau, gen)
    naive = time.perf_counter() - t0
    print(
        f"one off-policy step: {args.prompts} prompts x {args.n} responses x K = {args.responses}, "
        f"{args.minibatches} minibatch updates, threads = {torch.get_num_threads()}"
    )
    print(f"  pmdlab (vectorised)   {ours * 1e3:9.1f} ms/step")
    print(f"  per-prompt loop       {naive * 1e3:9.1f} ms/step")
    print(f"  ratio                 {naive / ours:9.1f}x")


def naive_loss(name, logprobs, old, mask, adv, tau):
    """The loss, sequence by sequence (token-mean for GRPO, sequence means otherwise)."""
    total = 0.0
    lengths = mask.sum(1)
    for i in range(logprobs.shape[0]):
        length = int(lengths[i])
        d = logprobs[i, :length] - old[i, :length]
        if name in ("pmd_mean", "pmd_part"):
            total = total + 0.5 * (adv[i] / tau - d.sum()) ** 2 / length
        elif name == "grpo":
            ratio = torch.exp(d)
            total = total - torch.minimum(ratio * adv[i], ratio.clamp(0.8, 1.2) * adv[i]).sum()
        elif name == "gspo":
            s = torch.exp(d.sum() / length)
            total = total - torch.minimum(s * adv[i], s.clamp(1 - 3e-4, 1 + 4e-4) * adv[i])
        else:
            total = total - adv[i] * d.sum()
    return total / (lengths.sum() if name == "grpo" else logprobs.shape[0])


def bench_losses(args) -> None:
    b, t = args.loss_prompts * 16, args.tokens
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(t // 8, t + 1, (b,), generator=gen)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    base = -torch.rand(b, t, generator=gen) * 3
    old = base + 0.05 * torch.randn(b, t, generator=gen)
    rewards = (torch.rand(b, generator=gen) < 0.4).float()
    groups = torch.arange(b) // 16
    m = min(args.naive_sequences, b)
    print(
        f"\nlosses, forward + backward, on ({args.loss_prompts} x 16) x {t} tokens "
        f"({int(mask.sum()):,} response tokens); the naive loop is timed on {m} sequences "
        f"and scaled by {b}/{m}"
    )
    print(f"  {'loss':10s} {'pmdlab':>10s} {'naive':>10s} {'ratio':>8s} {'rel. diff':>10s}")
    for name in ALGORITHMS:
        alg = Algorithm(name, tau=0.1)
        adv = alg.advantages(rewards, groups)
        x = base.clone().requires_grad_(True)
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            out = alg.loss(x, old, mask, adv)
            out.loss.backward()
            times.append(time.perf_counter() - t0)
            x.grad = None
        ours = sorted(times)[1]
        xs = base[:m].clone().requires_grad_(True)
        t0 = time.perf_counter()
        ref = naive_loss(name, xs, old[:m], mask[:m], adv[:m], 0.1)
        ref.backward()
        naive = (time.perf_counter() - t0) * b / m
        with torch.no_grad():
            same = alg.loss(base[:m], old[:m], mask[:m], adv[:m]).loss
        diff = abs(float(ref.detach()) - float(same)) / max(1e-12, abs(float(same)))
        print(f"  {name:10s} {ours * 1e3:8.1f}ms {naive * 1e3:8.0f}ms {naive / ours:7.0f}x {diff:10.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4096)
    parser.add_argument("--responses", type=int, default=1000)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--minibatches", type=int, default=16)
    parser.add_argument("--tau", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--loss-prompts", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument(
        "--naive-sequences", type=int, default=256, help="sequences the naive loss loop is timed on"
    )
    args = parser.parse_args()
    bench_step(args)
    bench_losses(args)


if __name__ == "__main__":
    main()
