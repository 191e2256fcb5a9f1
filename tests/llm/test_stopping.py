"""The stop-signal handler of the trainer, the sweep and the launcher."""

import os
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from pmdlab.llm.stopping import STOP_SIGNALS, Stopped, StopSignals


def _deliver(signum):
    """Send ``signum`` to this process and let its Python handler run."""
    os.kill(os.getpid(), signum)
    time.sleep(0.01)  # the handler runs at the next bytecode boundary of the main thread; be sure


@pytest.fixture
def previous():
    """A recording handler for SIGTERM and SIGINT, installed around the test."""
    calls = []
    old = {s: signal.signal(s, lambda signum, frame: calls.append(signum)) for s in STOP_SIGNALS}
    yield calls
    for s, handler in old.items():
        signal.signal(s, handler)


@pytest.mark.parametrize("signum", STOP_SIGNALS)
def test_a_signal_is_recorded_and_passed_to_the_callback_without_stopping(previous, signum):
    seen = []
    with StopSignals(on_signal=seen.append) as stop:
        assert stop.signum == 0 and stop.installed
        _deliver(signum)
        assert stop.signum == signum and stop.received == [signum] and seen == [signum]
    assert previous == []  # the handler that was there before did not see it


def test_a_second_signal_reaches_the_previous_handler_at_once(previous):
    seen = []
    with StopSignals(on_signal=seen.append) as stop:
        _deliver(signal.SIGTERM)
        assert previous == []
        _deliver(signal.SIGINT)
        assert previous == [signal.SIGINT]  # acted at once, inside the block
        assert stop.signum == signal.SIGTERM and seen == [signal.SIGTERM]


def test_keep_handles_every_signal_until_the_block_ends(previous):
    seen = []
    with StopSignals(on_signal=seen.append, keep=True) as stop:
        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGINT):
            _deliver(s)
        assert stop.signum == signal.SIGINT and previous == []
        assert stop.received == seen == [signal.SIGINT, signal.SIGTERM, signal.SIGINT]
    _deliver(signal.SIGTERM)
    assert previous == [signal.SIGTERM] and len(seen) == 3


@pytest.mark.parametrize("signals_first", [0, 1])
def test_the_previous_handlers_are_restored_on_every_way_out(previous, signals_first):
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    with pytest.raises(KeyError):
        with StopSignals() as stop:
            assert all(signal.getsignal(s) == stop._handle for s in STOP_SIGNALS)
            if signals_first:
                _deliver(signal.SIGTERM)
            raise KeyError("out")
    assert {s: signal.getsignal(s) for s in STOP_SIGNALS} == before
    _deliver(signal.SIGINT)
    assert previous == [signal.SIGINT]


def test_a_default_handler_not_set_from_python_comes_back_as_the_default(monkeypatch):
    real = signal.getsignal
    monkeypatch.setattr(signal, "getsignal", lambda s: None if s == signal.SIGTERM else real(s))
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with StopSignals():
            pass
        assert real(signal.SIGTERM) == signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, old)


def test_outside_the_main_thread_nothing_is_installed():
    before = {s: signal.getsignal(s) for s in STOP_SIGNALS}
    seen = {}

    def body():
        with StopSignals() as stop:
            seen["installed"] = stop.installed
            seen["handlers"] = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert seen == {"installed": False, "handlers": before}


def test_the_agreed_signal_is_the_largest_over_ranks():
    stop = StopSignals()
    one = SimpleNamespace(distributed=False, device=torch.device("cpu"))
    many = SimpleNamespace(distributed=True, device=torch.device("cpu"))
    calls = []

    def other_rank_got_sigterm(flag):
        calls.append(float(flag.item()))
        flag.fill_(max(float(flag.item()), float(signal.SIGTERM)))

    assert stop.agreed(one, reduce=other_rank_got_sigterm) == 0 and calls == []
    assert stop.agreed(many, reduce=other_rank_got_sigterm) == signal.SIGTERM and calls == [0.0]
    stop.signum = signal.SIGINT
    assert stop.agreed(one) == signal.SIGINT
    assert stop.agreed(many, reduce=lambda flag: flag) == signal.SIGINT


def test_stopped_carries_the_shells_exit_status():
    e = Stopped(signal.SIGTERM, 7, Path("runs/x/step-000007"))
    assert e.exit_status == 143 and Stopped(signal.SIGINT, 1, Path("c")).exit_status == 130
    assert str(e) == "SIGTERM: stopped after step 7, checkpoint runs/x/step-000007; continue with --resume"
    assert isinstance(e, RuntimeError) and (e.signum, e.step) == (signal.SIGTERM, 7)
