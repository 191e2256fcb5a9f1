"""A run's metrics sinks: the JSONL log as metrics_log writes it, TensorBoard and W&B closed on every exit."""

import math
import signal
import sys
import types
from pathlib import Path

import pytest

from pmdlab.llm import metrics_log
from pmdlab.llm.sinks import MetricsSinks
from pmdlab.llm.stopping import Stopped

FULL = {"run": "r", "algorithm": "pmd_mean", "model": "tiny", "step": 3, "train/reward": 0.5}
SHORT = {"train/reward": 0.5, "loss/loss": float("nan"), "eval/avg@k": 0.25}


class _Writer:
    """A SummaryWriter that records what it is asked to do."""

    made = []

    def __init__(self, logdir):
        self.logdir, self.scalars, self.calls = logdir, [], []
        _Writer.made.append(self)

    def add_scalar(self, key, value, step):
        self.scalars.append((key, value, step))

    def flush(self):
        self.calls.append("flush")

    def close(self):
        self.calls.append("close")


@pytest.fixture
def writer(monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    import torch.utils.tensorboard

    _Writer.made = []
    monkeypatch.setattr(torch.utils.tensorboard, "SummaryWriter", _Writer)
    return _Writer.made


@pytest.fixture
def wandb(monkeypatch):
    """A fake ``wandb`` module that records its calls."""
    module = types.ModuleType("wandb")
    module.calls = []
    module.init = lambda **kw: module.calls.append(("init", kw))
    module.log = lambda data, step: module.calls.append(("log", data, step))
    module.finish = lambda **kw: module.calls.append(("finish", kw))
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module.calls


def _sinks(tmp_path, **kw):
    return MetricsSinks(tmp_path / "metrics.jsonl", tmp_path, "r", **kw)


def test_the_log_holds_exactly_what_metrics_log_writes(tmp_path):
    records = [FULL, {**FULL, "step": 4, "eval/avg@k": float("inf"), "perf/wall_s": 1.5}]
    with _sinks(tmp_path) as sinks:
        for r in records:
            sinks.write(r, r["step"], scalars=SHORT)
    for r in records:
        metrics_log.append(tmp_path / "expected.jsonl", r)
    assert (tmp_path / "metrics.jsonl").read_bytes() == (tmp_path / "expected.jsonl").read_bytes()
    with pytest.raises(ValueError, match="lacks run"):  # the log's own checks still apply
        _sinks(tmp_path).write({"step": 1}, 1)


def test_tensorboard_gets_the_finite_scalars_and_is_closed_once(tmp_path, writer):
    sinks = _sinks(tmp_path, tensorboard=True)
    assert writer == []  # nothing opened before the run
    with sinks:
        sinks.write(FULL, 3, scalars=SHORT)
        sinks.write(FULL, 4)  # default: the numbers of the record
    (tb,) = writer
    assert tb.logdir == str(tmp_path / "tensorboard")
    assert tb.scalars == [("train/reward", 0.5, 3), ("eval/avg@k", 0.25, 3), ("train/reward", 0.5, 4)]
    assert tb.calls == ["flush", "close"]
    sinks.close()
    assert tb.calls == ["flush", "close"] and not sinks.is_open


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), Stopped(signal.SIGTERM, 1, Path("c")), KeyboardInterrupt()]
)
def test_every_way_out_of_the_block_closes_the_sinks(tmp_path, writer, wandb, error):
    with pytest.raises(type(error)):
        with _sinks(tmp_path, tensorboard=True, wandb_project="p", config={"seed": 0}) as sinks:
            sinks.write(FULL, 3, scalars=SHORT)
            raise error
    assert writer[0].calls == ["flush", "close"]
    code = {RuntimeError: 1, Stopped: 143, KeyboardInterrupt: 130}[type(error)]
    assert [c[0] for c in wandb] == ["init", "log", "finish"] and wandb[-1] == ("finish", {"exit_code": code})
    sinks.close()
    assert len(writer) == 1 and writer[0].calls == ["flush", "close"] and len(wandb) == 3


def test_wandb_is_started_logged_to_and_finished(tmp_path, wandb):
    with _sinks(tmp_path, wandb_project="proj", config={"seed": 0}) as sinks:
        assert wandb == [("init", {"project": "proj", "name": "r", "config": {"seed": 0}, "resume": "allow"})]
        sinks.write(FULL, 3, scalars=SHORT)
    assert wandb[1][0] == "log" and wandb[1][2] == 3 and wandb[1][1]["train/reward"] == 0.5
    assert math.isnan(wandb[1][1]["loss/loss"])  # W&B takes non-finite values as they are
    assert wandb[2:] == [("finish", {})]
    sinks.close()
    assert len(wandb) == 3


def test_a_write_outside_the_block_opens_and_close_finishes(tmp_path, wandb):
    sinks = _sinks(tmp_path, wandb_project="proj")
    sinks.write(FULL, 3)
    assert [c[0] for c in wandb] == ["init", "log"] and sinks.is_open
    sinks.close()
    sinks.close()
    assert [c[0] for c in wandb] == ["init", "log", "finish"]


def test_a_disabled_sink_writes_nothing(tmp_path, wandb, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # not even checked
    with _sinks(tmp_path, tensorboard=True, wandb_project="p", enabled=False) as sinks:
        sinks.write(FULL, 3)
    assert wandb == [] and not (tmp_path / "metrics.jsonl").exists()


def test_missing_packages_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ValueError, match="^tensorboard=true needs the tensorboard package: pip install"):
        _sinks(tmp_path, tensorboard=True)
    with pytest.raises(ValueError, match="^wandb_project needs the wandb package: pip install wandb$"):
        _sinks(tmp_path, wandb_project="p")


def test_the_real_tensorboard_files_are_complete_after_an_exception(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sinks = _sinks(tmp_path, tensorboard=True)
    with pytest.raises(RuntimeError):
        with sinks:
            for step in (1, 2):
                sinks.write({**FULL, "step": step}, step, scalars={"train/reward": step / 4})
            raise RuntimeError("boom")
    assert not sinks.is_open  # closed: its events are on disk now, not in a buffer
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/reward")] == [(1, 0.25), (2, 0.5)]
