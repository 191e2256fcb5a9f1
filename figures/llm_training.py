"""Figure 8: LLM training panels, drawn from metrics logs (:mod:`pmdlab.llm.metrics_log`).

This figure never invents data: it draws whatever logs it is given (by
default every ``*.jsonl`` under ``OUT/llm``). When there are none,
``paper_repro.py`` first runs :func:`run_comparison`: PMD-mean and GRPO
trained by ``pmdlab.llm.train`` on the embedded task and tiny model, on the
CPU, with the same seed, data and budget.
"""

from __future__ import annotations

import numpy as np

from pmdlab.llm.metrics_log import PANELS, read

from .registry import Claim, Figure, register
from .style import ALGORITHM_COLORS, plt

_NAMES = {"pmd_mean": "PMD-mean", "pmd_part": "PMD-part", "grpo": "GRPO", "gspo": "GSPO", "rloo": "RLOO"}


#: Settings of the CPU comparison (the trainer's defaults, shortened for ``--quick``).
COMPARISON = {"full": {}, "quick": {"steps": 60, "eval_every": 20, "eval_size": 128}}


def run_comparison(
    out_dir: str, seed: int, quick: bool, algorithms=("pmd_mean", "grpo"), progress=False
) -> list[str]:
    """Train each algorithm with ``pmdlab.llm.train``'s defaults into ``out_dir/<algorithm>``.

    Return the logs.

    ``progress`` shows each run's progress bar (step, reward, held-out avg@k)."""
    import dataclasses
    import os

    from pmdlab.llm.train import TrainConfig, Trainer
    from pmdlab.llm.warmstart import WarmStartConfig
    from pmdlab.rl.algorithms import Algorithm

    logs = []
    base = TrainConfig()
    for name in algorithms:
        algorithm = (
            dataclasses.replace(base.algorithm, name=name) if name.startswith("pmd") else Algorithm(name)
        )
        config = dataclasses.replace(
            base,
            algorithm=algorithm,
            seed=seed,
            progress=progress,
            out=os.path.join(out_dir, name),
            warmstart=WarmStartConfig(cache_dir=os.path.join(out_dir, "warm-start")),
            **COMPARISON["quick" if quick else "full"],
        )
        trainer = Trainer(config)
        trainer.run()
        logs.append(str(trainer.log_path))
    return logs


def _compute(params, seed):
    records = read(params["logs"]) if params["logs"] else []
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


def _plot(d, params):
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.4))
    for ax, (metric, title) in zip(axes.flat, PANELS):
        for run, alg in zip(d["runs"], d["algorithms"]):
            key = f"{run}/{metric}"
            if key + "/step" in d:
                label = _NAMES.get(alg, alg) + (
                    "" if len(d["runs"]) == len(set(d["algorithms"])) else f" ({run})"
                )
                color = ALGORITHM_COLORS.get(_NAMES.get(alg, alg))
                x, y = d[key + "/step"], d[key + "/value"]
                if len(x) > _DENSE:  # every step: the raw curve faint, a moving average over it
                    ax.plot(x, y, lw=0.6, alpha=0.25, color=color)
                    ax.plot(x, _moving_average(y, _WINDOW), lw=1.8, label=label, color=color)
                else:
                    ax.plot(x, y, marker="o", ms=2.5, lw=1.5, label=label, color=color)
        ax.set_title(title)
        ax.set_xlabel("global step")
    axes[0, 0].legend(loc="best")
    fig.tight_layout()
    return fig


def _caption(d, params):
    parts = []
    for run, alg in zip(d["runs"], d["algorithms"]):
        for metric in ("eval/avg@k", "eval/pass@k"):
            key = f"{run}/{metric}"
            if key + "/value" in d:
                v = d[key + "/value"]
                parts.append(f"{_NAMES.get(alg, alg)} {metric} {v[0]:.3f} → {v[-1]:.3f}")
    sources = ", ".join(params["logs"])
    return (
        "LLM training in the layout of the paper's training figure: training reward, held-out avg@k, best@k "
        "(pass@k), maj@k, response length and entropy against the global step, one curve per run (per-step "
        f"metrics faint, with a trailing mean over {_WINDOW} steps), from "
        f"{sources}. " + ("; ".join(parts) + "." if parts else "")
    )


def _claims(d, params):
    curves = [k for k in d if k.endswith("/step")]
    increasing = all(np.all(np.diff(d[k]) > 0) for k in curves)
    return [
        Claim(
            "every run in the logs is drawn with at least one panel",
            bool(all(any(k.startswith(f"{run}/") for k in curves) for run in d["runs"])),
        ),
        Claim("steps increase along every curve (one record per step and metric)", bool(increasing)),
    ]


register(
    Figure(
        name="llm",
        title="LLM training",
        shows=(
            "Training reward, eval avg@k, best@k, maj@k, response length and entropy against global step, "
            "per algorithm."
        ),
        full={"logs": []},
        quick={"logs": []},
        compute=_compute,
        plot=_plot,
        caption=_caption,
        claims=_claims,
        missing=_missing,
    )
)
