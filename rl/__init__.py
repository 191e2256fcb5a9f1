"""The reinforcement-learning core that the bandit and the language-model trainers share.

* :mod:`.groups`: per-prompt baselines and advantages (docs/math.md §5–6);
* :mod:`.losses`: every policy loss (PMD-mean, PMD-part, GRPO, GSPO, RLOO)
  as a small pure function of log-probs and advantages, with the loss
  aggregations;
* :mod:`.algorithms`: the algorithm table, name -> loss, baseline, defaults;
* :mod:`.rollout`: the rollout batch and the policy interface;
* :mod:`.anchor`: which log-probs are ``pi_old`` (the sampler's, the behaviour policy's, or the
  current policy's), decided in one place for every trainer;
* :mod:`.update`: the off-policy minibatch update;
* :mod:`.config`: configuration dataclasses from files and the command line;
* :mod:`.stats`: intervals over seeds for every comparison the project reports.

It needs torch (and scipy, for :mod:`.stats`) only; :mod:`pmdlab.bandit` and :mod:`pmdlab.llm` stand on it.
"""

from .algorithms import ALGORITHMS, TABLE, Algorithm
from .groups import BASELINES, Groups, advantages
from .losses import AGGREGATIONS, LossOutput, loss_normalizer
from .rollout import Rollout
from .update import DataParallel, policy_update

__all__ = [
    "AGGREGATIONS",
    "ALGORITHMS",
    "Algorithm",
    "BASELINES",
    "DataParallel",
    "Groups",
    "TABLE",
    "LossOutput",
    "Rollout",
    "advantages",
    "loss_normalizer",
    "policy_update",
]
