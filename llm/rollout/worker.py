"""A rollout worker's life: the plan from the learner, the model, then batches until the last step.

Batch ``b`` (the batch of step ``b``) is made by worker ``b mod rollout_ranks``
from a version ``v >= b - lead`` (:func:`.generator.lead_of`), waiting for it
if need be (``perf/weight_wait_s``), so every trained batch lags at most
``max_staleness`` versions. Versions are received between batches, into the
worker's own model (:class:`.transport.WeightInbox`). With ``async_weights=latest`` the worker takes
the newest version it has (the lag depends on timing); with ``fixed``
exactly ``max(0, b - lead)``, which makes the run deterministic and equal to
the in-process source with the same lag.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from .. import build, distributed
from ..tasks import make_reward
from .generator import Generator
from .transport import WeightInbox, WorkerDied, parameter_layout, trainable

__all__ = ["leave", "run_worker", "worker_main"]


def run_worker(config, ctx: distributed.Context) -> None:
    """Make and send batches ``plan["start"], ..., steps - 1`` (see the module docstring)."""
    for s in (signal.SIGINT, signal.SIGTERM):  # the trainer decides when the run stops
        signal.signal(s, signal.SIG_IGN)
    if config.threads:
        torch.set_num_threads(config.threads)
    box = [None]
    dist.recv_object_list(box, src=0, group=ctx.channel_group)
    plan = box[0]
    path = Path(plan["model_path"])
    model, tokenizer = build.load_trainable(config, path, plan["adapter"], ctx.device)
    policy = build.make_policy(config, model, tokenizer, path, ctx.device)
    generator = Generator(policy, build.make_task(config), make_reward(config.task.reward_values), config)
    if plan["generator"] is not None:
        generator.load_state_dict(plan["generator"])
    if plan["parameters"] != parameter_layout(model):
        raise WorkerDied(
            "the worker's trained parameters differ from the trainer's (names, shapes or dtypes)"
        )
    inbox = WeightInbox([p for _, p in trainable(model)], plan["versions"], ctx)
    exact = config.async_weights == "fixed"
    version = None
    for b in range(plan["start"], config.steps):
        if generator.partial is None and b % ctx.world_size != ctx.rank:
            generator.skip()
            continue
        waited = time.perf_counter()
        held = inbox.take(max(plan["versions"][0], b - generator.lead), exact=exact)
        if held != version and hasattr(policy.backend, "update_weights"):
            policy.backend.update_weights(model)  # the engine's own reload, from the model's weights
        version = held
        waited = time.perf_counter() - waited
        batch = generator.make(b, version)
        batch.stats["perf/weight_wait_s"] = waited
        message = {"batch": batch.pack(), "step": b, "generator": generator.state_dict()}
        try:
            dist.send_object_list([message], dst=0, group=ctx.channel_group)
        except RuntimeError as e:
            raise WorkerDied(f"the trainer (rank 0) stopped receiving batches: {e}") from None
    inbox.finish()


def worker_main(config, ctx: distributed.Context) -> NoReturn:
    """Run a rollout rank to its end and leave the process.

    The worker leaves with ``os._exit``: at interpreter exit the process group's C++ teardown can
    abort (``terminate called without an active exception``, SIGABRT) while the trainer still holds
    its end of the connections, and a worker has nothing left to write once its batches are sent.
    """
    try:
        run_worker(config, ctx)
        code = 0
    except WorkerDied as e:
        print(f"rollout worker rank {ctx.global_rank}: {e}", file=sys.stderr)
        code = 1
    leave(code)


def leave(status: int) -> NoReturn:
    """Exit with ``status`` at once, without the interpreter's teardown (see :func:`worker_main`)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
