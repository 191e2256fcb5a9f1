"""Benchmark: the rollout backends on a recipe's model, prompts and sampling, in the same run.

Times, on the same prompts, in one process:

1. ``LMPolicy.sample`` with the vLLM backend (``rollout_backend=vllm``, the engine
   the trainer builds: :func:`pmdlab.llm.build.make_backend`);
2. ``LMPolicy.sample`` with the ``generate`` backend (``rollout_backend=transformers``);
3. a bare ``model.generate`` of the same prompts (the floor of 2).

Each is warmed up once, then timed ``--repeats`` times in turns (median); tokens/s counts
each method's own response tokens (up to and including end-of-sequence), since
samples differ in length. The engine's start-up (compilation, KV cache; ``--eager``:
none) and its weight reload, which the trainer does after each update, are
reported apart. vLLM needs its own environment (README, "Compatibility notes");
on a CPU, ``VLLM_CPU_KVCACHE_SPACE`` (GiB) defaults here to 1.

    python benchmarks/rollout_backends.py                    # recipes/smollm2-arithmetic-cpu.yaml
    python benchmarks/rollout_backends.py --config FILE threads=1 n=8 sampling.max_new_tokens=32
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import torch

from pmdlab.llm import build
from pmdlab.llm.policy import LMPolicy, response_mask
from pmdlab.llm.settings import TrainConfig
from pmdlab.rl.config import parse


def timed(fns: dict, repeats: int) -> dict:
    """Median seconds and mean response tokens of each of ``fns`` (each returns its tokens).

    The calls take turns (one of each per round), so that a load that changes during
    the run weighs on all alike.
    """
    times = {name: [] for name in fns}
    tokens = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            count = fn()
            times[name].append(time.perf_counter() - t0)
            tokens[name].append(count)
    return {name: (statistics.median(times[name]), statistics.mean(tokens[name])) for name in fns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="recipes/smollm2-arithmetic-cpu.yaml")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eager", action="store_true", help="the engine without compilation (enforce_eager)")
    parser.add_argument("settings", nargs="*", help="key=value overrides of the recipe (threads=1, n=8, ...)")
    args = parser.parse_args()
    config = parse(TrainConfig, ["--config", args.config, *args.settings])
    if config.threads:
        torch.set_num_threads(config.threads)  # before the engine: vLLM's CPU worker then forbids it
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    device = torch.device("cpu")

    task = build.make_task(config)
    path = build.model_path(config, task, None, None)
    model, tokenizer = build.load_model(path, config, device)
    model.eval()
    prompts = [p.prompt for p in task.train_batch(config.prompts)]
    n, sampling = config.n, config.sampling

    def policy(backend=None):
        return LMPolicy(
            model,
            tokenizer,
            sampling,
            token_budget=config.token_budget,
            chat_template=config.chat_template,
            system_prompt=config.system_prompt,
            backend=backend,
        )

    t0 = time.perf_counter()
    vllm_config = dataclasses.replace(config, rollout_backend="vllm")
    engine = build.make_backend(vllm_config, model, tokenizer, path, device, enforce_eager=args.eager)
    startup = time.perf_counter() - t0
    with_vllm, with_generate = policy(engine), policy()
    ids, mask = with_generate.encode(prompts)

    def sample(p):
        return lambda: float(p.sample(prompts, n).mask.sum())

    def bare_generate():
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=0,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=n,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        return float(response_mask(out[:, ids.shape[1] :], tokenizer.eos_token_id).sum())

    torch.manual_seed(config.seed)
    fns = {
        "LMPolicy.sample, vLLM": sample(with_vllm),
        "LMPolicy.sample, generate": sample(with_generate),
        "bare model.generate": bare_generate,
    }
    for fn in fns.values():
        fn()  # warm-up
    rows = timed(fns, args.repeats)

    def reload_weights():  # what the trainer does after each update
        engine.update_weights(model)
        return 0.0

    reload = timed({"reload": reload_weights}, args.repeats)["reload"][0]

    print(
        f"{config.model}, {args.config}: {len(prompts)} prompts x {n} samples, "
        f"max_new_tokens = {sampling.max_new_tokens}, temperature = {sampling.temperature}, "
        f"chat template = {config.chat_template}, dtype = {model.dtype}, "
        f"threads = {torch.get_num_threads()}, median of {args.repeats}"
    )
    eager = ", enforce_eager" if args.eager else ""
    print(f"{'vLLM engine start-up':28s} {startup:9.1f} s   (once per run{eager})")
    print(f"{'vLLM weight reload':28s} {reload * 1e3:9.1f} ms  (once per step)")
    for name, (seconds, tokens) in rows.items():
        print(f"{name:28s} {seconds * 1e3:9.1f} ms  {tokens:6.1f} tokens  {tokens / seconds:8.0f} tokens/s")
    (tv, nv), (tg, ng), (tb, nb) = rows.values()
    print(f"{'vLLM against generate':28s} time {tv / tg:6.2f}x   tokens/s {(nv / tv) / (ng / tg):6.2f}x")
    print(f"{'generate against bare':28s} time {tg / tb:6.2f}x   tokens/s {(ng / tg) / (nb / tb):6.2f}x")


if __name__ == "__main__":
    main()
