"""Stopping cleanly on SIGTERM or SIGINT: one handler for the trainer, the sweep and the launcher.

    with StopSignals() as stop:                        # the trainer
        while ...:
            ...one step...
            signum = stop.agreed(ctx)                  # the same on every rank
            if signum:
                raise Stopped(signum, step, saved)

    with StopSignals(on_signal=forward, keep=True):    # a supervisor: every signal goes to its children
        ...

:class:`StopSignals` records the first stop signal (``signum``; ``received`` lists them all) and
calls ``on_signal(signum)``. By default a second signal acts at once: after the first one the
previous handlers are back (for a Python process, SIGINT raises :class:`KeyboardInterrupt` and
SIGTERM kills), so a run that does not stop quickly enough can still be interrupted. With
``keep=True`` every signal is recorded and passed to ``on_signal`` until the block ends: a
supervisor stays alive to pass a second signal on to its children, which then abandon their
step. The previous handlers are restored when the block ends, however it ends.

Handlers live in the main thread only: entered elsewhere, :class:`StopSignals` installs nothing
and records nothing (``signum`` stays 0).

``on_signal`` runs inside the signal handler, between two bytecodes of the main thread: keep it
short (sending a signal on is fine; printing is not, as the interrupted code may be writing to the
same stream).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = ["STOP_SIGNALS", "StopSignals", "Stopped"]

#: The signals that stop a run cleanly (after the current step, with a checkpoint).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(RuntimeError):
    """SIGTERM or SIGINT arrived: the current step was finished and checkpointed, then the run stopped.

    ``exit_status`` is the shell's convention for the signal, ``128 + signum``: 143 for SIGTERM
    (a scheduler's pre-emption), 130 for SIGINT (Ctrl-C)."""

    def __init__(self, signum: int, step: int, checkpoint_dir: Path):
        self.signum, self.step, self.checkpoint_dir = signum, step, checkpoint_dir
        self.exit_status = 128 + signum
        name = signal.Signals(signum).name
        super().__init__(
            f"{name}: stopped after step {step}, checkpoint {checkpoint_dir}; continue with --resume"
        )


class StopSignals:
    """A context manager that records SIGTERM and SIGINT instead of dying of them (see the module).

    Args:
        on_signal: called with the signal's number each time one is handled (from the handler).
        keep: handle every signal until the block ends; by default only the first one is handled
            and the previous handlers are restored at once, so that a second signal acts at once.
        signals: the signals to handle (default :data:`STOP_SIGNALS`).

    Attributes:
        signum: the first signal received, 0 while none has been.
        received: every signal handled, in order.
        installed: whether the handlers were installed (False outside the main thread).
    """

    def __init__(
        self,
        on_signal: Callable[[int], object] | None = None,
        *,
        keep: bool = False,
        signals: tuple[int, ...] = STOP_SIGNALS,
    ):
        self.on_signal = on_signal
        self.keep = keep
        self.signals = tuple(signals)
        self.signum = 0
        self.received: list[int] = []
        self.installed = False
        self._previous: dict = {}

    def _handle(self, signum, frame) -> None:
        if not self.signum:
            self.signum = signum
        self.received.append(signum)
        if not self.keep:
            self._restore()  # the next signal acts at once
        if self.on_signal is not None:
            self.on_signal(signum)

    def _restore(self) -> None:
        previous, self._previous = self._previous, {}
        for s, handler in previous.items():
            # None: the handler was not installed from Python; the default action is the closest
            signal.signal(s, signal.SIG_DFL if handler is None else handler)

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # handlers live in the main thread
            self._previous = {s: signal.getsignal(s) for s in self.signals}
            for s in self.signals:
                signal.signal(s, self._handle)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
        self.installed = False

    def agreed(self, ctx, reduce: Callable | None = None) -> int:
        """The signal any rank received (0 if none), so that every rank stops at the same step.

        With one process (``ctx.distributed`` false) this is :attr:`signum`; otherwise the ranks'
        signals are reduced with ``reduce`` (in place on a one-element tensor on ``ctx.device``;
        default :func:`.distributed.all_reduce_max`), a collective every training rank must call."""
        if not ctx.distributed:
            return self.signum
        import torch

        if reduce is None:
            from . import distributed

            reduce = distributed.all_reduce_max
        flag = torch.tensor([float(self.signum)], device=ctx.device)
        reduce(flag)
        return int(flag.item())
