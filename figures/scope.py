"""What the report can and cannot test: the figures without sampling noise, and the paper's claims
left untested, each with the reason (``paper_repro.py`` prints both in REPORT.md)."""

from __future__ import annotations

#: Figures computed exactly (closed forms, root finding, exact binomial enumeration): no seeds.
EXACT_FIGURES = frozenset(
    {"update_map", "log_ratios", "chi2_weight", "equivalence", "convergence", "finite_sample"}
)

#: The paper's claims this report does not test, and why.
UNTESTED_CLAIMS = (
    (
        "PMD-mean beats GRPO, and in some settings GSPO, on math reasoning benchmarks (AIME, MATH-500) "
        "with 7B and 30B mixture-of-experts models",
        "the models and step counts need hundreds of GPU-hours; here the LLM comparisons are a 0.4 M-"
        "parameter model on an embedded arithmetic task (figures 8 and 10) and SmolLM2-135M for 15 steps "
        "(figure 9), whose ranking need not carry over",
    ),
    (
        "PMD-mean is more time-efficient: larger, staler rollout batches amortise inference",
        "wall-clock efficiency depends on an inference engine and accelerators; on 2 CPU cores the "
        "asynchronous benchmark (benchmarks/async_rl.py) measures only the overlap of generation and "
        "training, not time to a given accuracy",
    ),
    (
        "PMD-mean stays stable under the stale data of large-scale asynchronous LLM training",
        "tested on bandits (the regimes figures) and on the tiny model with a lag of at most 4 versions "
        "(figure 10); not at LLM scale",
    ),
    (
        "in the large-sample limit PMD-mean converges, with a τ schedule that scales with each prompt's "
        "improvement rate",
        "the convergence rate is not checked; figure 14 compares a per-prompt τ rule with a fixed τ "
        "on bandits only",
    ),
    (
        "the analysis extends beyond binary rewards",
        "the population results (figures 1–5) are for binary rewards, as in the paper; graded rewards "
        "are only exercised by the exact-update tests of the bandit trainer",
    ),
)
