"""``python -m pmdlab.llm.export CHECKPOINT OUT``: a checkpoint's weights as a Hugging Face folder.

    python -m pmdlab.llm.export runs/my-run/step-000400 exported/my-model
    python -m pmdlab.llm.export runs/my-run exported/my-model      # the newest intact checkpoint

A checkpoint of sharded training (FSDP2, ``shards/``) holds each rank's
shards as ``torch.distributed.checkpoint`` wrote them. The export builds the
model the run trained (its settings are in ``trainer.pt``: the base weights,
and LoRA adapters if any), loads the weights from the shards in one process,
on the CPU, without the optimiser state, and writes it with
``save_pretrained`` (safetensors; with LoRA, the adapters) and the
tokenizer. A checkpoint of whole weights already has this folder
(``model/``): it is copied. The checkpoint is verified against its
manifest first.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch

from pmdlab.rl.config import update

from . import build, checkpoint, distributed
from .settings import TrainConfig

__all__ = ["export", "main"]


def export(source: str | Path, out: str | Path) -> Path:
    """Write the weights of checkpoint ``source`` (or of the newest intact one in a run folder) to ``out``."""
    source, out = Path(source), Path(out)
    folder = source if (source / checkpoint.MANIFEST).exists() else checkpoint.latest_valid(source)
    if folder is None:
        raise ValueError(f"{source} is neither a checkpoint nor a run folder with one")
    reason = checkpoint.problem(folder)
    if reason is not None:
        raise ValueError(f"checkpoint {folder} is damaged: {reason}")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} exists and is not empty; choose another folder")
    weights = checkpoint.weights_folder(folder)
    if weights is not None:
        shutil.copytree(weights, out, dirs_exist_ok=True)
        return out
    import torch.distributed.checkpoint as dcp

    config = update(TrainConfig(), checkpoint.load(folder)["config"])
    task = build.make_task(config)
    base = build.model_path(config, task, distributed.Context())
    model, tokenizer = build.load_trainable(config, base, None, torch.device("cpu"))
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=folder / checkpoint.SHARDS)  # the model's keys only, in place
    model.load_state_dict(state["model"])
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.write_model(out, model, tokenizer)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pmdlab.llm.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint folder (step-NNNNNN) or a run folder")
    parser.add_argument("out", help="the Hugging Face folder to write")
    args = parser.parse_args(argv)
    try:
        out = export(args.checkpoint, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"exported {args.checkpoint} to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
