"""Run under ``torchrun --nproc_per_node 2``: data-parallel update against one process.

    torchrun --standalone --nproc_per_node 2 tests/llm/dist_worker.py update OUT.json [ddp|fsdp]
    torchrun --standalone --nproc_per_node 2 tests/llm/dist_worker.py trainer OUT.json RUN_DIR CACHE \\
        ddp|fsdp [straight|killed|resume]
    torchrun --standalone --nproc_per_node 3 tests/llm/dist_worker.py publish OUT.json
    torchrun --standalone --nproc_per_node 2 tests/llm/dist_worker.py silent OUT.json

``update``: every rank builds the same tiny model and the same global
rollout batch; rank 0 also runs the single-process update on a copy of
the model over the whole batch. The ranks then update their shards
(whole groups) through the wrapped model. Rank 0 writes the largest
differences of the loss, the gradients and the updated weights.
``trainer``: two training steps of ``pmdlab.llm.train`` under torchrun;
each rank writes a digest of its weights, rank 0 the whole weights.
``publish``: ranks 0 and 1 train a tiny model under FSDP2, rank 2 is a
rollout worker; rank 0 publishes version 0 and the worker receives it, each
under a live-bytes tracker; every rank writes what it measured.
``silent``: rank 1, a rollout worker, waits for a version that rank 0 never
announces, with a 3 s process-group time-out; it writes the error.
"""

from __future__ import annotations

import copy
import hashlib
import json
import sys

import torch
import torch.distributed as dist

from pmdlab.llm import distributed
from pmdlab.llm.policy import LMPolicy, SamplingConfig
from pmdlab.llm.tiny import TinyModelConfig, build_model, build_tokenizer
from pmdlab.rl import Algorithm
from pmdlab.rl.update import DataParallel, policy_update


class RecordingSGD(torch.optim.SGD):
    """SGD that keeps a copy of the gradients it stepped with."""

    def step(self, closure=None):
        self.grads = [
            p.grad.detach().clone().to_local() if hasattr(p.grad, "to_local") else p.grad.detach().clone()
            for group in self.param_groups
            for p in group["params"]
        ]
        return super().step(closure)


def full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def update(out_path: str, strategy: str) -> None:
    ctx = distributed.setup("cpu")
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    cfg = TinyModelConfig(hidden_size=32, layers=2, heads=2, intermediate_size=64, max_positions=32, seed=0)
    model = build_model(cfg, tokenizer).double()
    policy = LMPolicy(model, tokenizer, SamplingConfig(max_new_tokens=4))
    torch.manual_seed(0)
    prompts = ["1+2+3+4=", "9+9=", "5+0+7=", "8+1=", "2+2+2=", "7+3+1="]
    batch = policy.sample(prompts, 4)
    batch.rewards = (torch.rand(len(batch), generator=torch.Generator().manual_seed(1)) < 0.5).double()
    batch.rewards[:4] = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    algorithm = Algorithm("pmd_mean", tau=0.5)
    with torch.no_grad():
        old = policy.log_probs(batch)
    before = [p.detach().clone() for p in model.parameters()]

    reference = {}
    if ctx.main:
        ref_model = copy.deepcopy(model)
        ref_policy = LMPolicy(ref_model, tokenizer, SamplingConfig(max_new_tokens=4))
        opt = RecordingSGD(ref_model.parameters(), lr=0.5)
        m = policy_update(ref_policy.log_probs, opt, batch, algorithm, behaviour_logprobs=old)
        reference = {
            "loss": m["loss"],
            "grads": opt.grads,
            "weights": [p.detach().clone() for p in ref_model.parameters()],
        }

    wrapped = distributed.wrap(model, ctx, strategy)
    mine = torch.isin(batch.group_ids, torch.arange(ctx.rank, len(prompts), ctx.world_size))
    index = torch.nonzero(mine).squeeze(1)
    shard = batch.select(index)
    shard.group_ids = torch.unique(shard.group_ids, return_inverse=True)[1]
    shard_policy = LMPolicy(wrapped, tokenizer, SamplingConfig(max_new_tokens=4), token_budget=20)
    opt = RecordingSGD(wrapped.parameters(), lr=0.5)
    m = policy_update(
        shard_policy.log_probs,
        opt,
        shard,
        algorithm,
        behaviour_logprobs=old[index],
        micro_batches=lambda r: distributed.same_count_batches(shard_policy.micro_batches(r), ctx),
        parallel=DataParallel(
            distributed.all_reduce_sum, loss_scale=float(ctx.world_size), no_sync=distributed.no_sync(wrapped)
        ),
    )
    grads = [full(p.grad) if p.grad is not None else None for p in wrapped.parameters()]
    weights = [full(p.detach()) for p in wrapped.parameters()]
    if ctx.main:
        result = {
            "world_size": ctx.world_size,
            "micro_batches": len(shard_policy.micro_batches(shard)),
            "loss": m["loss"],
            "reference_loss": reference["loss"],
            "grad_diff": max(float((g - r).abs().max()) for g, r in zip(grads, reference["grads"])),
            "grad_scale": max(float(r.abs().max()) for r in reference["grads"]),
            "weight_diff": max(float((w - r).abs().max()) for w, r in zip(weights, reference["weights"])),
            "moved": max(float((w - p).abs().max()) for w, p in zip(reference["weights"], before)),
        }
        with open(out_path, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def trainer(out_path: str, run_dir: str, cache: str, strategy: str, mode: str = "straight") -> None:
    """``straight``: 2 steps; ``killed``: dies after the checkpoint of step 1; ``resume``: finishes it."""
    import dataclasses

    from pmdlab.llm.train import TaskConfig, TrainConfig, Trainer
    from pmdlab.llm.warmstart import WarmStartConfig

    torch.set_num_threads(1)
    config = TrainConfig(
        tiny=TinyModelConfig(hidden_size=32, layers=1, heads=2, intermediate_size=64, max_positions=32),
        warmstart=WarmStartConfig(steps=100, batch_size=32, cache_dir=cache),
        task=TaskConfig(terms=2),
        eval_size=4,
        eval_k=2,
        eval_every=2,
        steps=2,
        prompts=4,
        n=4,
        minibatches=2,
        sampling=SamplingConfig(max_new_tokens=3),
        out=run_dir,
        progress=False,
        save_every=1,
        parallel=strategy,
        token_budget=24,
    )
    if mode == "resume":
        config = dataclasses.replace(config, resume=True)
    t = Trainer(config)
    if mode == "killed":
        real = Trainer.train_step

        def die_after_step_one(self):
            if self.step == 1:
                raise KeyboardInterrupt
            return real(self)

        Trainer.train_step = die_after_step_one
        try:
            t.run()
        except KeyboardInterrupt:
            pass
        dist.barrier()
        dist.destroy_process_group()
        return
    records = t.run()
    state = distributed.full_state_dict(t.model)  # every rank takes part under FSDP2; rank 0 gets it
    if state is None:
        state = distributed.unwrap(t.model).state_dict()
    result = {"records": len(records), "step": t.step, "rank": t.ctx.rank}
    if state:
        digest = hashlib.sha256()
        for key in sorted(state):
            digest.update(state[key].detach().double().contiguous().numpy().tobytes())
        result["digest"] = digest.hexdigest()
    if t.ctx.main:  # the whole trained weights, for the test to compare with what the checkpoint holds
        torch.save(state, f"{out_path}.weights.pt")
    with open(f"{out_path}.rank{t.ctx.rank}", "w") as f:
        json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


def publish(out_path: str) -> None:
    from pmdlab.llm.rollout import transport
    from tests.llm.memtrack import LiveBytes

    ctx = distributed.setup("cpu", rollout_ranks=1)
    torch.set_num_threads(1)
    cfg = TinyModelConfig(hidden_size=64, layers=4, heads=2, intermediate_size=128, max_positions=32, seed=0)
    model = build_model(cfg, build_tokenizer())  # the same weights on every rank
    reference = [p.detach().clone() for _, p in transport.trainable(model)]
    sizes = [p.numel() * p.element_size() for p in reference]
    result = {"rank": ctx.global_rank, "largest_parameter": max(sizes), "model": sum(sizes)}
    if ctx.role == "train":
        model = distributed.wrap(model, ctx, "fsdp")
        with LiveBytes() as tracker:
            transport.publish(model, 0, ctx)
        result["publish_peak"] = tracker.peak
        if ctx.main:
            transport.transfers_done(ctx)
        with LiveBytes() as tracker:  # for contrast: the whole model gathered, as a publish once did
            whole = distributed.full_state_dict(model)
        result["gathered_peak"] = tracker.peak
        del whole
    else:
        params = [p for _, p in transport.trainable(model)]
        with torch.no_grad():
            for p in params:
                p.zero_()
        inbox = transport.WeightInbox(params, [0], ctx)
        with LiveBytes() as tracker:
            held = inbox.take(0, exact=True)
        inbox.finish()
        result["receive_peak"] = tracker.peak
        result["held"] = held
        result["equal"] = all(torch.equal(p, r) for p, r in zip(params, reference))
    with open(f"{out_path}.rank{ctx.global_rank}", "w") as f:
        json.dump(result, f)


def silent(out_path: str) -> None:
    import time

    from pmdlab.llm.rollout import transport

    ctx = distributed.setup("cpu", rollout_ranks=1, timeout=3.0)
    if ctx.role == "train":
        time.sleep(10)  # alive, but announcing nothing
        return
    inbox = transport.WeightInbox([torch.zeros(3)], [0], ctx)
    start = time.monotonic()
    try:
        inbox.take(0, exact=True)
        error = None
    except transport.WorkerDied as e:
        error = str(e)
    with open(out_path, "w") as f:
        json.dump({"error": error, "waited_s": time.monotonic() - start}, f)


if __name__ == "__main__":
    from pmdlab.llm.rollout.worker import leave

    if sys.argv[1] == "update":
        update(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "ddp")
    elif sys.argv[1] == "publish":
        publish(sys.argv[2])
    elif sys.argv[1] == "silent":
        silent(sys.argv[2])
    else:
        trainer(*sys.argv[2:])
    # Its results written and the group destroyed, the rank leaves without the interpreter's teardown,
    # where gloo's threads once aborted a finished rank (SIGABRT, "terminate called without an
    # active exception"), as the trainer's rollout workers do.
    leave(0)
