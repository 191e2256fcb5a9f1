"""Figures 12 and 13: PMD-mean against PMD-part in the paper's regimes, on bandits.

The authors train with small τ (0.01 by default), ±1 rewards, few rollouts per
prompt and 16 minibatch steps per rollout batch, and say PMD-part "can be
highly unstable" there while PMD-mean stays stable. This grid runs both
losses over τ ∈ {0.01, 0.03, 0.1, 1}, rewards {0, 1} and ±1, n ∈ {2, 4, 8, 16}
responses per prompt and rollouts 0, 2 or 8 versions stale, 16 minibatch
steps per batch, several seeds, and measures per run:

- ``final``: mean success over prompts at the last step;
- ``drop``: the largest fall of mean success in one step (0 if it never falls);
- ``kl``: the mean over steps of ``KL(π_old ‖ π)`` over the step's prompts;
- ``collapses``: collapse events (a prompt's success falling by more than 0.2
  in one step) per prompt over the run.

±1 rewards at τ are {0, 1} rewards at τ/2 for both losses (docs/math.md §5),
so the "signed" rows repeat the grid at half the τ; they are run, not derived.
Figure 12 draws ``final``, figure 13 the three instability measures; both come
from one computation (memoised within a run, cached on disk per figure).
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np

from pmdlab.bandit import BanditConfig
from pmdlab.bandit.experiments import train_many
from pmdlab.rl import Algorithm
from pmdlab.rl.stats import difference_interval, mean_interval

from .bandit import base_config
from .compare import claim_above
from .registry import Claim, Figure, register
from .style import plt

ALGORITHMS = ("pmd_mean", "pmd_part")
_NAMES = {"pmd_mean": "PMD-mean", "pmd_part": "PMD-part"}
MEASURES = {
    "final": "final success",
    "drop": "largest one-step fall of success",
    "kl": "mean KL(π_old ‖ π) per step",
    "collapses": "collapse events per prompt",
}
_AXES = ("algorithm", "rewards", "tau", "n", "staleness", "seed")
_MEMO: dict[str, dict] = {}


def grid_configs(params, seed) -> list[tuple[tuple, BanditConfig]]:
    """Every run of the grid: ``((algorithm, rewards, tau, n, staleness, seed), config)``."""
    base = base_config({**params, "n": params["ns"][0]})
    seeds = [seed + s for s in range(params["seeds"])]
    out = []
    for key in itertools.product(
        ALGORITHMS, params["rewards"], params["taus"], params["ns"], params["stalenesses"], seeds
    ):
        alg, rewards, tau, n, staleness, s = key
        task = dataclasses.replace(base.task, rewards=rewards, seed=s)
        cfg = dataclasses.replace(
            base, task=task, algorithm=Algorithm(alg, tau=tau), n=n, staleness=staleness, seed=s
        )
        out.append((key, cfg))
    return out


def run_measures(metrics: dict[str, np.ndarray], prompts: int) -> dict[str, float]:
    """The four measures of one run from its per-step metrics (see the module docstring)."""
    success = np.asarray(metrics["success_mean"], dtype=float)
    return {
        "final": float(success[-1]),
        "drop": float(max(0.0, np.max(success[:-1] - success[1:]))),
        "kl": float(np.nanmean(np.asarray(metrics["kl_old_new"], dtype=float)[1:])),
        "collapses": float(np.nansum(metrics["collapses"]) / prompts),
        "start": float(success[0]),
    }


def _compute(params, seed):
    memo = json.dumps([params, seed], sort_keys=True)
    if memo not in _MEMO:
        jobs = grid_configs(params, seed)
        results = train_many([cfg for _, cfg in jobs], workers=params.get("workers"))
        shape = tuple(
            len(v)
            for v in (
                ALGORITHMS,
                params["rewards"],
                params["taus"],
                params["ns"],
                params["stalenesses"],
                range(params["seeds"]),
            )
        )
        out = {m: np.empty(shape) for m in (*MEASURES, "start")}
        for index, (_, metrics) in zip(np.ndindex(shape), zip(jobs, results)):
            for m, v in run_measures(metrics, params["prompts"]).items():
                out[m][index] = v
        for k in ("rewards", "taus", "ns", "stalenesses"):
            out[k] = np.array(params[k])
        _MEMO[memo] = out
    return dict(_MEMO[memo])


def _cell(d, measure, alg, rewards, tau, n, staleness):
    """The per-seed values of one grid cell."""
    i = (
        ALGORITHMS.index(alg),
        list(d["rewards"]).index(rewards),
        list(d["taus"]).index(tau),
        list(d["ns"]).index(n),
        list(d["stalenesses"]).index(staleness),
    )
    return d[measure][i]


def _rows(d):
    return [(r, t) for r in d["rewards"] for t in d["taus"]]


def _cols(d):
    return [(n, s) for s in d["stalenesses"] for n in d["ns"]]


def _heatmap(ax, values, d, title, fmt, cmap, vmin=None, vmax=None, marks=None):
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.grid(False)
    rows, cols = _rows(d), _cols(d)
    for (i, j), v in np.ndenumerate(values):
        mark = "" if marks is None else marks[i, j]
        r, g, b, _ = im.cmap(im.norm(v))
        color = "white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black"  # legible on any cell
        ax.text(j, i, format(v, fmt) + mark, ha="center", va="center", fontsize=6.5, color=color)
    ax.set_yticks(range(len(rows)), [f"{'±1' if r == 'signed' else '0/1'}, τ={t:g}" for r, t in rows])
    ax.set_xticks(range(len(cols)), [f"n={n}\nstale {s}" for n, s in cols], fontsize=7)
    ax.set_title(title, fontsize=9)
    return im


def _table(d, measure, alg):
    return np.array([[_cell(d, measure, alg, r, t, n, s).mean() for n, s in _cols(d)] for r, t in _rows(d)])


def _separated(d, measure, sign):
    """``*`` where PMD-mean − PMD-part's interval lies on the side ``sign`` (+1 above 0, -1 below)."""
    marks = np.full((len(_rows(d)), len(_cols(d))), "", dtype=object)
    for i, (r, t) in enumerate(_rows(d)):
        for j, (n, s) in enumerate(_cols(d)):
            a, b = (_cell(d, measure, alg, r, t, n, s) for alg in ALGORITHMS)
            diff = difference_interval(a, b)  # as the captions and claims compute it: one verdict per cell
            if (diff.low > 0 and sign > 0) or (diff.high < 0 and sign < 0):
                marks[i, j] = "*"
            elif diff.excludes_zero():
                marks[i, j] = "†"
    return marks


def _plot_final(d, params):
    fig, axes = plt.subplots(1, 3, figsize=(21, 0.55 * len(_rows(d)) + 2.2), sharey=True)
    for ax, alg in zip(axes, ALGORITHMS):
        im = _heatmap(ax, _table(d, "final", alg), d, f"{_NAMES[alg]}: final success", ".2f", "viridis", 0, 1)
    fig.colorbar(im, ax=axes[:2], fraction=0.02)
    diff = _table(d, "final", "pmd_mean") - _table(d, "final", "pmd_part")
    im = _heatmap(
        axes[2],
        diff,
        d,
        "PMD-mean − PMD-part (* PMD-mean higher, † lower: 95% interval excludes 0)",
        "+.2f",
        "RdBu",
        -1,
        1,
        _separated(d, "final", +1),
    )
    fig.colorbar(im, ax=axes[2], fraction=0.04)
    return fig


def _plot_instability(d, params):
    fig, axes = plt.subplots(
        3, 2, figsize=(15, 3 * (0.55 * len(_rows(d)) + 1.4)), sharey=True, constrained_layout=True
    )
    for row, measure in zip(axes, ("drop", "kl", "collapses")):
        top = max(_table(d, measure, a).max() for a in ALGORITHMS)
        for ax, alg in zip(row, ALGORITHMS):
            marks = _separated(d, measure, -1) if alg == "pmd_mean" else None
            im = _heatmap(
                ax,
                _table(d, measure, alg),
                d,
                f"{_NAMES[alg]}: {MEASURES[measure]}",
                ".2f",
                "magma_r",
                0,
                top or 1,
                marks,
            )
        fig.colorbar(im, ax=row, fraction=0.02)
    return fig


def _describe(params) -> str:
    return (
        f"Bandits ({params['prompts']} prompts × {params['responses']} responses, log-linear policy, "
        f"{params['steps']} steps of {params['minibatches']} minibatch steps each, Adam lr {params['lr']}), "
        f"{params['seeds']} seeds per cell; the same seeds give the same task and initial policy to both "
        "losses. Rows: rewards {0, 1} or ±1 and τ; columns: responses per prompt n and how many versions "
        "old the rollouts are. Intervals are 95% over seeds, each with its method."
    )


def _cell_text(d, measure, r, t, n, s) -> str:
    a, b = (_cell(d, measure, alg, r, t, n, s) for alg in ALGORITHMS)
    diff = difference_interval(a, b)
    verdict = "not separated" if not diff.excludes_zero() else "separated"
    return (
        f"{'±1' if r == 'signed' else '{0, 1}'} rewards, τ = {t:g}, n = {n}, staleness {s}: PMD-mean "
        f"{mean_interval(a)}, PMD-part {mean_interval(b)}, difference {diff} ({verdict})"
    )


def _highlights(d):
    """The cells the captions quote: the smallest τ at the smallest n, fresh and stalest, each reward."""
    t, n = min(d["taus"]), (4 if 4 in d["ns"] else min(d["ns"]))
    return [(r, t, n, s) for r in d["rewards"] for s in (min(d["stalenesses"]), max(d["stalenesses"]))]


def _count(d, measure, sign):
    marks = _separated(d, measure, sign)
    total = marks.size
    return int((marks == "*").sum()), int((marks == "†").sum()), total


def _caption_final(d, params):
    above, below, total = _count(d, "final", +1)
    return (
        _describe(params)
        + f" Final mean success over prompts; PMD-mean is higher in {above} of {total} cells and lower in "
        f"{below}, the rest not separated by these seeds. Final success: "
        + "; ".join(_cell_text(d, "final", *c) for c in _highlights(d))
        + "."
    )


def _caption_instability(d, params):
    parts = []
    for measure in ("drop", "kl", "collapses"):
        lower, higher, total = _count(d, measure, -1)
        parts.append(f"{MEASURES[measure]}: PMD-mean lower in {lower} of {total} cells, higher in {higher}")
    return (
        _describe(params)
        + " Instability: "
        + "; ".join(parts)
        + ". Marks on PMD-mean's maps: * PMD-mean lower, † higher (95% interval excludes 0). Largest fall: "
        + "; ".join(_cell_text(d, "drop", *c) for c in _highlights(d))
        + ". Collapse events per prompt: "
        + "; ".join(_cell_text(d, "collapses", *c) for c in _highlights(d))
        + "."
    )


def _checks(d):
    finite = all(np.all(np.isfinite(d[m])) for m in MEASURES)
    same_start = bool(np.allclose(d["start"][0], d["start"][1]))
    return [
        Claim("every run's measures are finite (no NaN from any τ, n or staleness)", bool(finite)),
        Claim("both losses start every cell from the same policy in each seed", same_start),
    ]


def _claims_final(d, params):
    t, n, stale = min(d["taus"]), 4, max(d["stalenesses"])
    out = _checks(d)
    for s in (0, stale):
        a, b = (_cell(d, "final", alg, "binary", t, n, s) for alg in ALGORITHMS)
        out.append(
            claim_above(
                f"at τ = {t:g}, n = {n}, rollouts {s} versions old, {{0, 1}} rewards, PMD-mean ends with "
                "higher success than PMD-part",
                a,
                b,
                kind="paper",
            )
        )
    return out


def _claims_instability(d, params):
    t, n, stale = min(d["taus"]), 4, max(d["stalenesses"])
    out = _checks(d)
    for measure in ("drop", "collapses"):
        a, b = (_cell(d, measure, alg, "binary", t, n, stale) for alg in ALGORITHMS)
        out.append(
            claim_above(
                f"at τ = {t:g}, n = {n}, rollouts {stale} versions old, PMD-part's {MEASURES[measure]} "
                "exceeds PMD-mean's (PMD-part is the less stable)",
                b,
                a,
                kind="paper",
            )
        )
    return out


_COMMON = {"taus": [0.01, 0.03, 0.1, 1.0], "rewards": ["binary", "signed"], "minibatches": 16, "lr": 0.05}
FULL = {
    **_COMMON,
    "ns": [2, 4, 8, 16],
    "stalenesses": [0, 2, 8],
    "prompts": 32,
    "responses": 16,
    "steps": 30,
    "seeds": 5,
}
QUICK = {
    **_COMMON,
    "taus": [0.01, 1.0],
    "ns": [4],
    "stalenesses": [0, 8],
    "prompts": 16,
    "responses": 8,
    "steps": 6,
    "seeds": 2,
    "workers": 1,
}

for _name, _title, _shows, _plot, _caption, _claims in (
    (
        "regimes",
        "The paper's regimes on bandits: final success of PMD-mean and PMD-part",
        "Final success of PMD-mean and PMD-part over τ, reward scale, rollouts per prompt and staleness, "
        "with the difference and where seeds separate it.",
        _plot_final,
        _caption_final,
        _claims_final,
    ),
    (
        "regimes_instability",
        "The paper's regimes on bandits: instability of PMD-mean and PMD-part",
        "Largest one-step fall of success, KL per step and collapse events of PMD-mean and PMD-part over "
        "the same grid.",
        _plot_instability,
        _caption_instability,
        _claims_instability,
    ),
):
    register(
        Figure(
            name=_name,
            title=_title,
            shows=_shows,
            full=FULL,
            quick=QUICK,
            compute=_compute,
            plot=_plot,
            caption=_caption,
            claims=_claims,
        )
    )
