"""Losses, group baselines and the off-policy update, for language models and bandits alike.

:mod:`.losses` is the one implementation of every policy loss (PMD-mean,
PMD-part, GRPO, GSPO, RLOO); :mod:`.groups` the group baselines;
:mod:`.update` the minibatch loop that applies them. These need only torch.
The language-model trainer (:mod:`.train`, ``python -m pmdlab.llm.train``)
and its model, data and evaluation code (:mod:`.policy`, :mod:`.tasks`,
:mod:`.evaluate`, :mod:`.tiny`, :mod:`.warmstart`, :mod:`.checkpoint`) use
``transformers`` and friends (the ``llm`` extra), imported only there.
"""

from .algorithms import ALGORITHMS, Algorithm
from .groups import Groups, advantages
from .losses import AGGREGATIONS, LOSSES, LossOutput, loss_normalizer
from .rollout import Rollout
from .update import policy_update

__all__ = [
    "AGGREGATIONS",
    "ALGORITHMS",
    "Algorithm",
    "Groups",
    "LOSSES",
    "LossOutput",
    "Rollout",
    "advantages",
    "loss_normalizer",
    "policy_update",
]
