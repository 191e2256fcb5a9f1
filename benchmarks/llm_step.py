"""Benchmark: one RL step of the LLM trainer on the embedded tiny model, on the CPU.

1. Rollout: ``prompts x n`` responses with the batched ``transformers.generate``
   backend, in tokens/s, against generating prompt by prompt (the same ``n``
   responses each), measured in the same run.
2. Update: :func:`pmdlab.rl.update.policy_update` on that batch (``m``
   minibatch steps with the model's forward and backward), in tokens/s, and
   the share of it spent in the loss itself: the same loss calls, forward and
   backward, on the same minibatches' log-probs without the model.

    python benchmarks/llm_step.py [--prompts 32] [--n 8] [--repeats 5] [--algorithm pmd_mean]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pmdlab.llm.policy import LMPolicy, SamplingConfig
from pmdlab.llm.tasks import ArithmeticTask
from pmdlab.llm.tiny import TinyModelConfig, build_model, build_tokenizer
from pmdlab.rl import Algorithm, Groups
from pmdlab.rl.update import minibatches, policy_update


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--minibatches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--algorithm", default="pmd_mean")
    parser.add_argument("--max-new-tokens", type=int, default=4)
    args = parser.parse_args()

    tokenizer = build_tokenizer()
    model = build_model(TinyModelConfig(), tokenizer)
    policy = LMPolicy(model, tokenizer, SamplingConfig(max_new_tokens=args.max_new_tokens))
    task = ArithmeticTask(eval_size=0)
    prompts = [p.prompt for p in task.train_batch(args.prompts)]
    algorithm = Algorithm(args.algorithm, tau=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    torch.manual_seed(0)
    rollout = policy.sample(prompts, args.n)
    tokens = float(rollout.mask.sum())
    batched = timed(lambda: policy.sample(prompts, args.n), args.repeats)
    one_by_one = timed(lambda: [policy.sample([p], args.n) for p in prompts], max(1, args.repeats // 2))

    rollout.rewards = (torch.rand(len(rollout)) < 0.5).float()
    old = policy.log_probs_and_entropy(rollout)[0]
    model.train()

    def update():
        policy_update(
            policy.log_probs,
            optimizer,
            rollout,
            algorithm,
            num_minibatches=args.minibatches,
            old_logprobs=old,
            micro_batches=policy.micro_batches,
            parameters=list(model.parameters()),
            max_grad_norm=1.0,
        )

    update()  # warm-up
    step = timed(update, args.repeats)

    groups = Groups.from_ids(rollout.group_ids)
    advantages = algorithm.advantages(rollout.rewards, groups)
    with torch.no_grad():
        current = policy.log_probs(rollout)
    parts = minibatches(groups, args.minibatches, torch.Generator().manual_seed(0))

    def loss_only():
        for index in parts:
            lp = current[index].clone().requires_grad_(True)
            sub_groups = Groups.from_ids(rollout.group_ids[index])
            normalizer = algorithm.normalizer(rollout.mask[index])
            out = algorithm.loss(
                lp,
                old[index],
                rollout.mask[index],
                advantages[index],
                groups=sub_groups,
                normalizer=normalizer,
            )
            out.loss.backward()

    loss_only()
    loss_time = timed(loss_only, args.repeats * 4)

    params = sum(p.numel() for p in model.parameters())
    print(
        f"tiny model ({params / 1e3:.0f}k parameters), {args.prompts} prompts x {args.n} responses, "
        f"{tokens:.0f} response tokens, threads = {torch.get_num_threads()}"
    )
    print(f"rollout  batched generate      {batched * 1e3:8.1f} ms  {tokens / batched:9.0f} tokens/s")
    print(f"         prompt by prompt      {one_by_one * 1e3:8.1f} ms  {tokens / one_by_one:9.0f} tokens/s")
    print(f"         ratio                 {one_by_one / batched:8.1f}x")
    print(
        f"update   {args.algorithm}, {args.minibatches} minibatches  {step * 1e3:8.1f} ms  "
        f"{tokens / step:9.0f} tokens/s"
    )
    print(
        f"         the loss alone        {loss_time * 1e3:8.2f} ms  "
        f"= {100 * loss_time / step:.2f}% of the update"
    )
    print(f"         share of the step     {100 * loss_time / (step + batched):.2f}% (rollout + update)")


if __name__ == "__main__":
    main()
