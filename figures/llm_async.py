"""Asynchronous against synchronous training: PMD-mean and GRPO with lagging rollouts, over seeds.

Drawn from the committed logs under ``docs/runs/async-tiny/`` (docs/results.md,
"Asynchronous training"): each sub-folder is one mode (``sync``, or
``async-k<k>``: rollout and training processes, ``max_staleness=k``), each run
in it one algorithm and seed; ``async-k2-anchor-current`` adds
``algorithm.old_source=current``; a ``lr1e-4-`` prefix marks runs at learning
rate 1e-4 instead of the default 3e-4. One row of panels per learning rate:
held-out avg@k and training reward against the step, mean over seeds with 95%
bands (solid: synchronous, dashed: lag ≤ 2, dash-dot: lag ≤ 4,
dotted: anchored at the current policy), and the asynchronous runs' lag
histogram.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from pmdlab.llm.metrics_log import read
from pmdlab.rl.stats import difference_interval, mean_interval

from .llm_training import _NAMES, ROOT, _curves, _first_last
from .registry import Claim, Figure, register
from .style import ALGORITHM_COLORS, plot_mean_band, plt

#: The committed runs: ``<mode>/<algorithm>-seed<s>/metrics.jsonl``.
ASYNC_RUNS = "docs/runs/async-tiny"
_METRICS = ("eval/avg@k", "train/reward")
#: A mode anchored at the current policy is its behaviour-anchored mode's name plus this.
ANCHOR_SUFFIX = "-anchor-current"
#: The anchor runs that test the hypothesis "anchored at the current policy, PMD-mean ends above the
#: behaviour anchor": it was formed on the lr 3e-4, lag 2 runs (exploratory: their difference is in
#: the caption) and then tested, as a check that can fail, on these.
CONFIRMATORY_ANCHOR_MODES = ("lr1e-4-async-k4-anchor-current",)
_STYLE = {"sync": "-", "async-k2": "--", "async-k4": "-."}
#: The prefix of a mode trained at another learning rate, and that rate.
_LR_PREFIX = re.compile(r"^lr(?P<lr>[0-9.e-]+?)-(?=sync|async)")
DEFAULT_LR = "3e-4"


def mode_lr(mode: str) -> str:
    """The learning rate a mode's folder name says (``lr1e-4-async-k2`` → ``1e-4``; default 3e-4)."""
    m = _LR_PREFIX.match(mode)
    return m.group("lr") if m else DEFAULT_LR


def mode_bound(mode: str) -> int | None:
    """The ``max_staleness`` a mode's folder name says (``async-k2`` → 2; ``sync`` → None)."""
    m = re.search(r"async-k(\d+)", mode)
    return int(m.group(1)) if m else None


def committed_logs(folder: str = ASYNC_RUNS) -> tuple[list[str], str]:
    """The logs under ``folder`` (relative to the repository's root) and a digest of their contents."""
    paths = sorted((ROOT / folder).glob("*/*/metrics.jsonl"))
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()[:16]
    return [str(p.relative_to(ROOT)) for p in paths], digest


def _compute(params, seed):
    runs, groups, out = [], [], {}
    for path in params["logs"]:
        records = read([str(ROOT / path)])
        mode = Path(path).parent.parent.name
        run = f"{mode}/{Path(path).parent.name}"
        runs.append(run)
        groups.append(f"{records[-1]['algorithm']}|{mode}")
        for metric in _METRICS:
            pts = [(r["step"], r[metric]) for r in records if r.get(metric) is not None]
            out[f"{run}/{metric}/step"] = np.array([p[0] for p in pts], dtype=float)
            out[f"{run}/{metric}/value"] = np.array([p[1] for p in pts], dtype=float)
        hist = sorted((k, v) for k, v in records[-1].items() if k.startswith("async/lag_hist_"))
        if hist:
            out[f"{run}/lag_hist"] = np.array([v for _, v in sorted(hist, key=lambda kv: int(kv[0][15:]))])
            out[f"{run}/lags"] = np.array([r["async/lag"] for r in records if "async/lag" in r])
    out["runs"], out["groups"] = np.array(runs, dtype=str), np.array(groups, dtype=str)
    return out


def _by_group(d) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for run, group in zip(d["runs"], d["groups"]):
        groups.setdefault(str(group), []).append(str(run))
    return dict(sorted(groups.items()))


def _label(group: str) -> str:
    alg, mode = group.split("|")
    return f"{_NAMES.get(alg, alg)} {'synchronous' if mode == 'sync' else mode}"


def _plot(d, params):
    rates = sorted({mode_lr(g.split("|")[1]) for g in _by_group(d)}, key=float, reverse=True)
    fig, axes = plt.subplots(len(rates), 3, figsize=(14, 4.2 * len(rates)), squeeze=False)
    for row, lr in zip(axes, rates):
        groups = {g: runs for g, runs in _by_group(d).items() if mode_lr(g.split("|")[1]) == lr}
        _plot_row(row, d, groups, f"lr {lr}")
    fig.tight_layout()
    return fig


def _plot_row(axes, d, groups, title):
    for ax, metric in zip(axes, _METRICS):
        for group, runs in groups.items():
            alg, mode = group.split("|")
            color = ALGORITHM_COLORS.get(_NAMES.get(alg, alg))
            steps, values = _curves(d, runs, metric)
            style = ":" if mode.endswith(ANCHOR_SUFFIX) else _STYLE.get(_LR_PREFIX.sub("", mode), "-.")
            label = f"{_label(group)} ({len(runs)} seeds)"
            plot_mean_band(ax, steps, values, color, style, label=label)
        name = {"eval/avg@k": "held-out avg@k", "train/reward": "training reward (trailing mean)"}[metric]
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel("global step")
    axes[0].legend(loc="best", fontsize=7)
    ax = axes[2]
    lagging = [(g, runs) for g, runs in groups.items() if all(f"{r}/lag_hist" in d for r in runs)]
    width = 0.8 / max(1, len(lagging))
    longest = 0
    for i, (group, runs) in enumerate(lagging):
        hist = sum(d[f"{r}/lag_hist"] for r in runs)
        share = hist / hist.sum()
        longest = max(longest, len(share))
        alg, mode = group.split("|")
        color = ALGORITHM_COLORS.get(_NAMES.get(alg, alg))
        x = np.arange(len(share)) - 0.4 + (i + 0.5) * width
        hatch = "//" if mode.endswith(ANCHOR_SUFFIX) else {"async-k4": ".."}.get(_LR_PREFIX.sub("", mode))
        ax.bar(x, share, width, color=color, hatch=hatch, edgecolor="white", label=_label(group))
    ax.set_xticks(range(longest))
    ax.set_title(f"{title}: lag of the trained batches (versions)")
    ax.set_xlabel("lag")
    ax.set_ylabel("share of steps")
    if lagging:
        ax.legend(loc="best", fontsize=7)


def _finals(d, runs):
    return [p[1] for p in (_first_last(d, run, "eval/avg@k") for run in runs) if p is not None]


def _caption(d, params):
    groups = _by_group(d)
    parts = []
    for g, runs in groups.items():
        gain = _gain(d, runs)
        parts.append(
            f"{_label(g)}: final avg@k {mean_interval(_finals(d, runs))}"
            + (f", gain over the run {gain}" if gain is not None else "")
        )
    for alg in sorted({g.split("|")[0] for g in groups}):
        for g, runs in groups.items():
            mode = g.split("|")[1]
            prefix = _LR_PREFIX.match(mode)
            reference = f"{alg}|{prefix.group(0) if prefix else ''}sync"
            sync = groups.get(reference)
            if g.startswith(f"{alg}|") and mode_bound(mode) is not None and sync:
                ours, theirs = _finals(d, runs), _finals(d, sync)
                diff = difference_interval(ours, theirs, paired=len(ours) == len(theirs))  # the same seeds
                verdict = (
                    "(the interval excludes 0)" if diff.excludes_zero() else "(not separated by these seeds)"
                )
                parts.append(f"{_label(g)} − {_label(reference)}: {diff} {verdict}")
    for g, runs in groups.items():
        alg, mode = g.split("|")
        behaviour = (
            groups.get(f"{alg}|{mode[: -len(ANCHOR_SUFFIX)]}") if mode.endswith(ANCHOR_SUFFIX) else None
        )
        if behaviour and len(runs) > 1 and len(behaviour) > 1:
            ours, theirs = _finals(d, runs), _finals(d, behaviour)
            diff = difference_interval(ours, theirs, paired=len(ours) == len(theirs))  # the same seeds
            kind = "tested" if mode in CONFIRMATORY_ANCHOR_MODES else "exploratory"
            parts.append(f"{_label(g)} − behaviour anchor ({kind}): {diff}")
    lags = [
        f"{_label(g)} mean lag {np.mean([d[f'{r}/lags'].mean() for r in runs]):.2f}"
        for g, runs in groups.items()
        if all(f"{r}/lags" in d for r in runs)
    ]
    return (
        "Asynchronous (a rollout process generating while the trainer updates, each batch at most "
        "max_staleness policy versions old) against synchronous training on the embedded task and tiny "
        "model, same seeds, data and budget; anchor-current: pi_old is the trained policy at the start "
        "of each update instead of the behaviour policy (algorithm.old_source=current). Mean over seeds "
        "with 95% bands; intervals are 95% intervals over seeds, differences paired over shared seeds, "
        "each with its method. "
        f"From {ASYNC_RUNS}/. " + "; ".join(parts + lags) + "."
    )


def _gain(d, runs):
    """The paired gain of held-out avg@k over seeds (last − first evaluation of each run)."""
    pairs = [p for p in (_first_last(d, run, "eval/avg@k") for run in runs) if p is not None]
    return mean_interval([last - first for first, last in pairs]) if len(pairs) >= 2 else None


def _claims(d, params):
    """The lag bound for every asynchronous run (the bound its folder's name says); the synchronous
    runs learn (the reference); the modes in ``params["learning_modes"]`` learn for every algorithm;
    and under the same lag, PMD-mean anchored at the current policy ends above PMD-mean anchored at
    the behaviour policy. Other asynchronous runs' gains are stated in the caption, not claimed."""
    claims = []
    groups = _by_group(d)
    learning = set(params.get("learning_modes", ()))
    for group, runs in groups.items():
        gain = _gain(d, runs)
        mode = group.split("|")[1]
        if (mode.endswith("sync") or mode in learning) and gain is not None:
            claims.append(
                Claim(
                    f"{_label(group)} raises held-out avg@k over {len(runs)} seeds "
                    "(the 95% interval of last − first evaluation lies above 0)",
                    bool(gain.low > 0),
                    f"gain {gain}",
                )
            )
        for run in runs:
            if f"{run}/lag_hist" in d:
                bound = mode_bound(mode)
                hist = d[f"{run}/lag_hist"]
                claims.append(
                    Claim(
                        f"{run}: every trained batch lags at most max_staleness={bound} versions",
                        bool(len(hist) <= bound + 1 and d[f"{run}/lags"].max() <= bound),
                        f"lags {sorted(set(d[f'{run}/lags'].tolist()))}",
                    )
                )
    for mode in sorted({g.split("|")[1] for g in groups}):
        if mode not in CONFIRMATORY_ANCHOR_MODES:
            continue
        behaviour_mode = mode[: -len(ANCHOR_SUFFIX)]
        behaviour, current = groups.get(f"pmd_mean|{behaviour_mode}"), groups.get(f"pmd_mean|{mode}")
        if behaviour and current and len(behaviour) > 1 and len(current) > 1:
            ours, theirs = _finals(d, current), _finals(d, behaviour)
            diff = difference_interval(ours, theirs, paired=len(ours) == len(theirs))  # the same seeds
            claims.append(
                Claim(
                    f"under the same lag ({behaviour_mode}), PMD-mean anchored at the current policy "
                    "(old_source=current) ends above PMD-mean anchored at the behaviour policy (the 95% "
                    "interval of the difference in final avg@k lies above 0)",
                    bool(diff.low > 0),
                    f"difference {diff}",
                )
            )
    return claims


def _missing(d):
    if d["runs"].size == 0:
        return f"no committed metrics logs under {ASYNC_RUNS}/ (docs/results.md has the commands)"
    return None


_LOGS, _DIGEST = committed_logs()
#: The asynchronous modes claimed to learn (both algorithms' gain intervals above 0).
LEARNING_MODES = ["lr1e-4-async-k2"]

register(
    Figure(
        name="llm_async",
        title="Asynchronous against synchronous training: PMD-mean and GRPO over seeds",
        shows=(
            "Held-out avg@k and training reward of PMD-mean and GRPO trained synchronously and with "
            "rollouts lagging up to 2 or 4 versions, at learning rates 3e-4 and 1e-4, over seeds, and the "
            "lag histogram, from the committed logs."
        ),
        full={"logs": _LOGS, "digest": _DIGEST, "learning_modes": LEARNING_MODES},
        quick={"logs": _LOGS, "digest": _DIGEST, "learning_modes": LEARNING_MODES},
        compute=_compute,
        plot=_plot,
        caption=_caption,
        claims=_claims,
        missing=_missing,
    )
)
