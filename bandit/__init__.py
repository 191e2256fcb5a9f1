"""Bandit simulator: the trainer loop at small scale, on finite response sets.

The same group baselines, losses and off-policy update as the LLM trainer
(:mod:`pmdlab.rl`, the core both stand on), driving a tabular or log-linear softmax policy, so that
finite-sample behaviour, rollout count, staleness and tau can be swept in
seconds on a CPU and checked against the exact updates of
:mod:`pmdlab.theory`.
"""

from .policies import LogLinearPolicy, TabularPolicy
from .task import Task, TaskConfig, make_task
from .train import BanditConfig, BanditRun, train

__all__ = [
    "BanditConfig",
    "BanditRun",
    "LogLinearPolicy",
    "TabularPolicy",
    "Task",
    "TaskConfig",
    "make_task",
    "train",
]
