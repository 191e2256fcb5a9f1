"""Data-parallel training with PyTorch's own machinery: ``torchrun``, DDP or FSDP2.

Under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`setup` joins the process group
(NCCL on GPUs, gloo on CPUs) and gives each rank its device. The trainer
then

* splits every rollout batch by prompt: rank ``r`` of ``W`` takes the
  groups ``r, r + W, ...`` of the batch all ranks agree on (:func:`shard`);
* wraps the model with FSDP2 (``fully_shard`` on each decoder layer and the
  whole model) or DDP (:func:`wrap`);
* sums the loss normaliser and the loss over ranks and scales each
  backward pass by ``W`` (:func:`pmdlab.rl.update.policy_update`), so the
  update equals one process's on the whole batch;
* averages logged metrics over ranks (:func:`mean_over_ranks`); under FSDP2
  each rank checkpoints its own shards (:func:`sharded_state`), nothing is
  gathered.

With one process every function here is the identity.

**Asynchronous rollouts** (``async_rollouts=true``, :mod:`.rollout.sources`): the
last ``rollout_ranks`` ranks of the world generate, the first ones train.
Every collective here then runs over the training ranks' own group, and
:class:`Context` describes a rank's place among the trainers (or among the
rollout workers), with the groups :mod:`.rollout.transport` uses to move batches and
weights.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "Context",
    "DEFAULT_TIMEOUT_S",
    "all_gather_object",
    "all_reduce_sum",
    "check_devices",
    "barrier",
    "broadcast_object",
    "full_state_dict",
    "gathered",
    "load_sharded_state",
    "main_first",
    "mean_over_ranks",
    "no_sync",
    "setup",
    "shard",
    "sharded",
    "sharded_state",
    "timeout_s",
    "train_group",
    "unwrap",
    "wrap",
]


@dataclass(frozen=True)
class Context:
    """This process's place: ``rank`` of ``world_size``, its ``device``.

    With asynchronous rollouts ``rank`` and ``world_size`` count the processes of this rank's
    ``role`` (``train`` or ``rollout``); ``global_rank`` is its rank in the whole world,
    ``rollout_ranks`` the global ranks that generate, and ``publish_group`` (training rank 0
    and the rollout ranks: the weights' payload), ``control_group`` (the same ranks on gloo:
    announcements of versions) and ``channel_group`` (the same ranks on gloo: batches) the
    groups :mod:`.rollout.transport` uses."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    role: str = "train"
    global_rank: int = 0
    rollout_ranks: tuple[int, ...] = ()
    publish_group: Any = None
    control_group: Any = None
    channel_group: Any = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


#: The group the training ranks' collectives run over (``None``: the whole world).
_TRAIN_GROUP = None
#: This process's context once an asynchronous world is split.
_CONTEXT = None
#: How long a collective may wait for its peers before it fails (every group of this process).
DEFAULT_TIMEOUT_S = 1800.0
_TIMEOUT_S = DEFAULT_TIMEOUT_S


def timeout_s() -> float:
    """The process groups' time-out, in seconds (``dist_timeout_s``)."""
    return _TIMEOUT_S


def check_devices(processes: int, device: str = "auto") -> None:
    """One GPU for each of this machine's ``processes`` (NCCL refuses two ranks on one GPU); a
    one-line error otherwise. Nothing to check on CPUs."""
    if device == "cpu" or not torch.cuda.is_available():
        return
    count = torch.cuda.device_count()
    if processes > count:
        raise ValueError(
            f"{processes} processes on this machine need a GPU each, but {count} "
            f"{'is' if count == 1 else 'are'} visible: start as many processes as GPUs (fewer "
            f"rollout_ranks or training ranks), or device=cpu"
        )


def setup(device: str = "auto", rollout_ranks: int = 0, timeout: float = DEFAULT_TIMEOUT_S) -> Context:
    """Join the ``torchrun`` process group if there is one; pick this rank's device.

    ``rollout_ranks > 0`` (asynchronous rollouts) splits the world: the last ``rollout_ranks``
    ranks generate, the others train, and the groups of :class:`Context` are made. Every group
    fails a collective whose peers do not answer within ``timeout`` seconds."""
    global _TRAIN_GROUP, _CONTEXT, _TIMEOUT_S
    if _CONTEXT is not None and dist.is_initialized():  # the groups exist once per process
        return _CONTEXT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and device != "cpu"
    if device not in ("auto", "cpu") and device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but CUDA is not available")
    if rollout_ranks and world <= rollout_ranks:
        raise ValueError(
            f"async_rollouts needs more processes than rollout_ranks ({rollout_ranks}); WORLD_SIZE is {world}"
        )
    if world > 1:
        check_devices(int(os.environ.get("LOCAL_WORLD_SIZE", local + 1)), device)
        chosen = torch.device("cuda", local) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(chosen)
        _TIMEOUT_S = float(timeout)
        limit = datetime.timedelta(seconds=timeout)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=limit)
        if not rollout_ranks:
            return Context(rank, world, local, chosen)
        trainers = world - rollout_ranks
        workers = tuple(range(trainers, world))
        # every rank makes every group, in the same order
        train_group = dist.new_group(list(range(trainers)), timeout=limit)
        publish_group = dist.new_group([0, *workers], timeout=limit)
        control_group = dist.new_group([0, *workers], backend="gloo", timeout=limit)
        channel_group = dist.new_group([0, *workers], backend="gloo", timeout=limit)
        role, size, own = (
            ("train", trainers, rank) if rank < trainers else ("rollout", rollout_ranks, rank - trainers)
        )
        if role == "train":
            _TRAIN_GROUP = train_group
        _CONTEXT = Context(
            own, size, local, chosen, role, rank, workers, publish_group, control_group, channel_group
        )
        return _CONTEXT
    if device == "auto":
        chosen = torch.device("cuda" if cuda else "cpu")
    else:
        chosen = torch.device(device)
    return Context(0, 1, 0, chosen)


def shard(items: list, ctx: Context) -> list:
    """This rank's share of a list of prompts: every ``world_size``-th, from ``rank``."""
    if len(items) < ctx.world_size:
        raise ValueError(f"{len(items)} prompts cannot be split over {ctx.world_size} ranks")
    return items[ctx.rank :: ctx.world_size]


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """``sum over ranks of x`` (in place, returned); the identity with one process."""
    if dist.is_initialized() and dist.get_world_size(_TRAIN_GROUP) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=_TRAIN_GROUP)
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """``max over ranks of x`` (in place, returned); the identity with one process."""
    if dist.is_initialized() and dist.get_world_size(_TRAIN_GROUP) > 1:
        dist.all_reduce(x, op=dist.ReduceOp.MAX, group=_TRAIN_GROUP)
    return x


def mean_over_ranks(metrics: dict[str, float], ctx: Context) -> dict[str, float]:
    """Each metric averaged over ranks (one all-reduce for the whole dict)."""
    if not ctx.distributed or not metrics:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    all_reduce_sum(values)
    return dict(zip(keys, (values / ctx.world_size).tolist()))


def wrap(
    model: torch.nn.Module, ctx: Context, strategy: str = "auto", compute_dtype: torch.dtype | None = None
) -> torch.nn.Module:
    """FSDP2 (``fsdp``), DDP (``ddp``), or ``auto``: FSDP2 on GPUs where available, else DDP.

    ``compute_dtype`` (bfloat16: mixed precision) gives FSDP2 a ``MixedPrecisionPolicy``: the
    float32 shards are all-gathered as bfloat16 for compute and gradients are reduced in float32
    (DDP reduces the float32 gradients of the float32 masters as they are)."""
    if strategy not in ("auto", "fsdp", "ddp"):
        raise ValueError(f"parallel must be auto, fsdp or ddp, got {strategy!r}")
    if not ctx.distributed:
        return model
    fully_shard = _fully_shard()
    if strategy == "fsdp" and fully_shard is None:
        raise ValueError("parallel=fsdp needs torch.distributed.fsdp.fully_shard (PyTorch >= 2.6)")
    if strategy == "fsdp" or (strategy == "auto" and fully_shard is not None and ctx.device.type == "cuda"):
        options = {}
        if compute_dtype is not None and compute_dtype != torch.float32:
            from torch.distributed.fsdp import MixedPrecisionPolicy

            options["mp_policy"] = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
        if _TRAIN_GROUP is not None:  # the training ranks only
            from torch.distributed.device_mesh import DeviceMesh

            options["mesh"] = DeviceMesh.from_group(_TRAIN_GROUP, ctx.device.type)
        for layer in _decoder_layers(model):
            fully_shard(layer, **options)
        fully_shard(model, **options)
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids, process_group=_TRAIN_GROUP)


def _fully_shard():
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        return None
    return fully_shard


def _decoder_layers(model) -> list[torch.nn.Module]:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    return list(layers) if layers is not None else []


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def no_sync(model: torch.nn.Module):
    """DDP's ``no_sync`` for gradient accumulation (``None`` where there is none)."""
    return model.no_sync if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The full (unsharded) state dict on CPU for ``save_pretrained``; every rank must call it."""
    inner = unwrap(model)
    if _fsdp_modules(inner):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(inner, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return None  # the module's own state dict is already full


def barrier(ctx: Context) -> None:
    if ctx.distributed:
        dist.barrier(group=_TRAIN_GROUP)


def train_group():
    """The training ranks' process group (``None``: the whole world, or no group at all)."""
    return _TRAIN_GROUP


def all_gather_object(obj, ctx: Context) -> list:
    """Every training rank's ``obj``, in rank order (pickled; ``[obj]`` with one process)."""
    if not ctx.distributed:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=_TRAIN_GROUP)
    return out


def broadcast_object(obj, ctx: Context):
    """Rank 0's ``obj`` on every training rank (pickled; the identity with one process)."""
    if not ctx.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_TRAIN_GROUP)
    return box[0]


@contextlib.contextmanager
def main_first(ctx: Context):
    """Rank 0 runs the block first (e.g. a cached warm start), the others after it."""
    if not ctx.main:
        barrier(ctx)
    yield
    if ctx.main:
        barrier(ctx)


def sharded(model) -> bool:
    """Whether ``model`` is sharded over the training ranks (FSDP2): its state is then saved in shards."""
    return bool(_fsdp_modules(model))


def _fsdp_modules(model) -> list:
    return [m for m in unwrap(model).modules() if type(m).__name__.startswith("FSDP")]


@contextlib.contextmanager
def gathered(model: torch.nn.Module):
    """Under FSDP2, hold the full parameters on every rank for the block (rollouts and
    evaluation run forward passes a different number of times on each rank, so they must not
    all-gather); elsewhere nothing."""
    modules = _fsdp_modules(model)
    if not modules:
        yield
        return
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
    for m in modules:
        m.unshard()
    try:
        yield
    finally:
        for m in modules:
            m.reshard()
            m.set_reshard_after_forward(True, recurse=False)


def sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The weights' and optimiser's state as this rank's shards (FSDP2 DTensors), for
    ``torch.distributed.checkpoint``: ``{"model": ..., "optimizer": ...}``; nothing is gathered."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optimizer_state}


def load_sharded_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, folder) -> None:
    """Load :func:`sharded_state` from a ``torch.distributed.checkpoint`` folder, each rank its shards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = sharded_state(model, optimizer)
    dcp.load(state, checkpoint_id=folder, process_group=_TRAIN_GROUP)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def same_count_batches(parts: list[torch.Tensor], ctx: Context) -> list[torch.Tensor]:
    """Re-split a rank's micro-batches so that every rank has as many as the rank with the most.

    FSDP2 runs collectives in every forward and backward pass, so all ranks must run the
    same number of them; DDP needs it for ``no_sync``'s single synchronised backward too.
    """
    if not ctx.distributed:
        return parts
    count = torch.tensor([len(parts)], device=ctx.device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX, group=_TRAIN_GROUP)
    wanted = int(count)
    if wanted == len(parts):
        return parts
    rows = torch.cat(parts)
    if rows.numel() < wanted:
        raise ValueError(f"rank {ctx.rank} has {rows.numel()} responses for {wanted} micro-batches")
    return list(torch.tensor_split(rows, wanted))
