"""Where a run's metrics go: the JSONL log, and TensorBoard and Weights & Biases when asked for.

    sinks = MetricsSinks(log_path, run_dir, run_name, tensorboard=True, wandb_project="pmd",
                         config=to_dict(cfg), enabled=ctx.main)   # checks the packages at once
    with sinks:                                                   # opens TensorBoard, starts W&B
        ...
        sinks.write(full_record, step, scalars=record)
    # closed here on every way out of the block: TensorBoard flushed, wandb.finish() called

Only one process of a run writes (the caller decides: ``enabled=ctx.main``; a disabled
:class:`MetricsSinks` does nothing at all).

Close in the run's ``finally`` (the ``with`` block does), never rely on interpreter exit:
a process that leaves through ``os._exit`` (``train._leave``) skips the interpreter's teardown, so
neither the TensorBoard writer's buffered events (flushed every two minutes otherwise) nor
``wandb``'s own exit hook would be written. The block must end before any ``os._exit``.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path

from . import metrics_log
from .stopping import Stopped

__all__ = ["MetricsSinks", "ProgressBar"]


class MetricsSinks:
    """The metrics sinks of one run (see the module docstring).

    Args:
        log_path: the JSONL metrics log (:mod:`.metrics_log`), appended to by every :meth:`write`.
        run_dir: the run's folder; TensorBoard's event files go to ``run_dir/tensorboard``.
        run_name: the run's name in W&B.
        tensorboard: also write scalars to TensorBoard (needs the tensorboard package).
        wandb_project: also log to this W&B project (needs the wandb package); None: not.
        config: the run's settings as plain dicts, W&B's ``config``.
        enabled: False makes every method a no-op (the processes other than the one that logs).

    Raises ValueError naming the package when tensorboard or wandb is asked for but not installed.
    """

    def __init__(
        self,
        log_path: str | os.PathLike,
        run_dir: str | os.PathLike,
        run_name: str,
        *,
        tensorboard: bool = False,
        wandb_project: str | None = None,
        config: Mapping | None = None,
        enabled: bool = True,
    ):
        self.log_path = Path(log_path)
        self.run_dir = Path(run_dir)
        self.run_name = run_name
        self.wandb_project = wandb_project
        self.config = dict(config) if config is not None else None
        self.enabled = enabled
        self._writer_class = None  # TensorBoard's SummaryWriter, when asked for
        self._wandb = None  # the wandb module, when asked for
        self._tb = None  # the open SummaryWriter
        self._wandb_run = False  # whether wandb.init ran and wandb.finish has not yet
        if not enabled:
            return
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ValueError(
                    "tensorboard=true needs the tensorboard package: pip install tensorboard"
                ) from None
            self._writer_class = SummaryWriter
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise ValueError("wandb_project needs the wandb package: pip install wandb") from None
            self._wandb = wandb

    @property
    def is_open(self) -> bool:
        return self._tb is not None or self._wandb_run

    def open(self) -> MetricsSinks:
        """Open the TensorBoard writer and start the W&B run (nothing if already open)."""
        if self._writer_class is not None and self._tb is None:
            self._tb = self._writer_class(str(self.run_dir / "tensorboard"))
        if self._wandb is not None and not self._wandb_run:
            self._wandb.init(
                project=self.wandb_project, name=self.run_name, config=self.config, resume="allow"
            )
            self._wandb_run = True
        return self

    def write(self, record: Mapping, step: int, scalars: Mapping | None = None) -> None:
        """Append ``record`` to the JSONL log as it is (:func:`.metrics_log.append`), and send
        ``scalars`` (default: the numbers of ``record`` other than ``step``) to TensorBoard (the
        finite ones) and W&B, at ``step``. Opens the sinks first if they are not open."""
        if not self.enabled:
            return
        metrics_log.append(self.log_path, record)
        if scalars is None:
            scalars = {k: v for k, v in record.items() if k != "step" and _is_number(v)}
        if self._writer_class is None and self._wandb is None:
            return
        self.open()
        if self._tb is not None:
            for key, value in scalars.items():
                if _is_number(value) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
        if self._wandb_run:
            self._wandb.log(dict(scalars), step=step)

    def close(self, exit_code: int | None = None) -> None:
        """Flush and close TensorBoard's writer and finish the W&B run (``exit_code`` given to
        ``wandb.finish`` when not None). Safe to call again; :meth:`open` or :meth:`write` reopens."""
        tb, self._tb = self._tb, None
        finish, self._wandb_run = self._wandb_run, False
        try:
            if tb is not None:
                tb.flush()
                tb.close()
        finally:
            if finish:
                if exit_code is None:
                    self._wandb.finish()
                else:
                    self._wandb.finish(exit_code=exit_code)

    def __enter__(self) -> MetricsSinks:
        if self.enabled:
            self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            code = None
        elif isinstance(exc, Stopped):
            code = exc.exit_status
        elif isinstance(exc, KeyboardInterrupt):
            code = 130
        else:
            code = 1
        self.close(code)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class ProgressBar:
    """A tqdm bar over a run's steps (``enabled``: on the main rank with ``progress=true``), with the
    step's reward and loss and the last evaluation kept on show; closed on every way out of the block."""

    KEYS = {"train/reward": "reward", "eval/avg@k": "avg@k", "eval/pass@k": "pass@k", "loss/loss": "loss"}

    def __init__(self, total: int, initial: int, name: str, enabled: bool):
        self.bar, self.shown = None, {}
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=name, dynamic_ncols=True)

    def update(self, record: Mapping) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.shown.update({short: f"{record[k]:.3f}" for k, short in self.KEYS.items() if k in record})
            self.bar.set_postfix(self.shown, refresh=False)

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()
