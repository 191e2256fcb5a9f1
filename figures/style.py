"""Matplotlib settings shared by every figure (non-interactive backend, readable sizes)."""

from __future__ import annotations

import os

import matplotlib
import numpy as np

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from pmdlab.rl.stats import mean_interval  # noqa: E402

__all__ = ["ALGORITHM_COLORS", "METHOD_STYLE", "TAU_COLORS", "plot_mean_band", "plt", "save"]

plt.rcParams.update(
    {
        "figure.dpi": 110,
        "savefig.dpi": 150,
        "font.size": 10,
        "axes.titlesize": 10.5,
        "axes.labelsize": 10,
        "legend.fontsize": 8.5,
        "legend.framealpha": 0.85,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
)

#: PMD-mean solid, PMD-part dashed, in every figure.
METHOD_STYLE = {"pmd_mean": dict(ls="-", label="PMD-mean"), "pmd_part": dict(ls="--", label="PMD-part")}
TAU_COLORS = ["#1b6ca8", "#d1495b", "#3a7d44", "#8d6a9f", "#e09f3e"]
ALGORITHM_COLORS = {
    "PMD-mean": "#1b6ca8",
    "PMD-part": "#6fa8dc",
    "GRPO": "#d1495b",
    "GSPO": "#e09f3e",
    "RLOO": "#3a7d44",
}


def plot_mean_band(ax, x, values, color, style="-", alpha=0.15, resamples=2_000, **line):
    """``values[seed, point]`` drawn as their mean over seeds (a line, ``**line`` passed on) and the
    95% interval of that mean at each point, a band (:func:`pmdlab.rl.stats.mean_interval`: Student-t
    below 10 seeds; from 10 a percentile bootstrap of ``resamples`` per point, fewer than the captions'
    intervals use, as a band has one per point)."""
    values = np.asarray(values)
    bands = [mean_interval(col, resamples=resamples) for col in values.T]
    ax.plot(x, values.mean(axis=0), style, color=color, lw=1.6, **line)
    ax.fill_between(x, [b.low for b in bands], [b.high for b in bands], color=color, alpha=alpha)


def save(fig, out_dir: str, name: str) -> list[str]:
    """Write ``name.png`` and ``name.pdf``; return their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return paths
