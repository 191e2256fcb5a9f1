"""Figures 6 and 7: finite samples and training dynamics on bandits (:mod:`pmdlab.bandit.experiments`)."""

from __future__ import annotations

import numpy as np

from pmdlab.bandit import BanditConfig, TaskConfig
from pmdlab.bandit.experiments import one_step_success, sample_targets, target_error, training_dynamics
from pmdlab.rl import Algorithm
from pmdlab.rl.stats import mean_interval
from pmdlab.theory import pmd_mean_step, pmd_part_step

from .compare import claim_above, claim_positive, verdict
from .registry import Claim, Figure, register
from .style import ALGORITHM_COLORS, METHOD_STYLE, TAU_COLORS, plot_mean_band, plt

#: The figure parameters a bandit run takes, by :class:`BanditConfig` field.
_RUN_FIELDS = ("policy", "steps", "n", "minibatches", "lr", "staleness", "dtype")


def base_config(params) -> BanditConfig:
    """The bandit run a figure's ``params`` describe: task size (``prompts`` x ``responses``), a
    log-linear policy unless ``policy`` says otherwise, and whichever of :data:`_RUN_FIELDS` they set."""
    fields = {k: params[k] for k in _RUN_FIELDS if k in params}
    return BanditConfig(
        task=TaskConfig(prompts=params["prompts"], responses=params["responses"]),
        **{"policy": "loglinear", **fields},
    )


_FIELDS = (
    "mean_abs_error",
    "q10",
    "q90",
    "mean_kl_error",
    "no_signal",
    "population",
    "target_mean",
    "target_population",
)

# ----------------------------------------------------------- 6. finite-sample error


def _finite_sample(params, seed):
    recs = target_error(ps=params["ps"], ns=params["ns"], taus=params["taus"])
    ps, ns, taus = (np.array(params[k], dtype=float) for k in ("ps", "ns", "taus"))
    out = {"ps": ps, "ns": ns, "taus": taus}
    for method in ("pmd_mean", "pmd_part"):
        for f in _FIELDS:
            arr = np.empty((len(taus), len(ps), len(ns)))
            for r in recs:
                if r["method"] == method:
                    arr[list(taus).index(r["tau"]), list(ps).index(r["p"]), list(ns).index(r["n"])] = r[f]
            out[f"{method}/{f}"] = arr
        # The n -> infinity limit of the sampled regression, against the exact update.
        step = pmd_mean_step if method == "pmd_mean" else pmd_part_step
        limit = np.array(
            [
                [one_step_success(p, p, *map(float, sample_targets(method, p, 1, tau))) for p in ps]
                for tau in taus
            ]
        )
        exact = np.array([[float(step(p, tau).success) for p in ps] for tau in taus])
        out[f"{method}/limit_gap"] = np.abs(limit - exact)
    return out


def _plot_finite_sample(d, params):
    taus, ps, ns = d["taus"], d["ps"], d["ns"]
    fig, axes = plt.subplots(
        len(taus), len(ps), figsize=(3.6 * len(ps), 3.1 * len(taus)), squeeze=False, sharex=True
    )
    for i, tau in enumerate(taus):
        for j, p in enumerate(ps):
            ax = axes[i, j]
            for k, method in enumerate(("pmd_mean", "pmd_part")):
                style = METHOD_STYLE[method]
                color = TAU_COLORS[k]
                ax.plot(
                    ns,
                    d[f"{method}/mean_abs_error"][i, j],
                    color=color,
                    ls=style["ls"],
                    marker="o",
                    ms=3.5,
                    lw=1.5,
                    label=style["label"] + " (mean)",
                )
                ax.fill_between(
                    ns,
                    d[f"{method}/q10"][i, j],
                    d[f"{method}/q90"][i, j],
                    color=color,
                    alpha=0.15,
                    label=style["label"] + " (10–90%)",
                )
            ax.set_xscale("log", base=2)
            ax.set_xticks(ns, [f"{n:g}" for n in ns])
            ax.set_title(f"p = {p:g}, τ = {tau:g}")
            if i == len(taus) - 1:
                ax.set_xlabel("rollouts per prompt n")
            if j == 0:
                ax.set_ylabel("|p′(n) − p′(∞)|")
    axes[0, -1].legend(loc="upper right", fontsize=7.5)
    fig.tight_layout()
    return fig


def _caption_finite_sample(d, params):
    i = list(d["taus"]).index(0.1) if 0.1 in d["taus"] else 0
    j = 0
    n_lo, n_hi = 0, len(d["ns"]) - 1
    m, q = d["pmd_mean/mean_kl_error"], d["pmd_part/mean_kl_error"]
    return (
        "Error of the one-step update computed from n rollouts (binary rewards, the sampled regression's "
        "minimiser in success-probability space) against the population update, PMD-mean (solid) and "
        "PMD-part (dashed): the mean absolute error of p′ and its 10–90% range over the exact binomial "
        f"distribution of the draws (no seed noise). At p = {d['ps'][j]:g}, τ = {d['taus'][i]:g} the mean "
        "error falls from "
        f"{d['pmd_mean/mean_abs_error'][i, j, n_lo]:.3f} (n = {d['ns'][n_lo]:g}) to "
        f"{d['pmd_mean/mean_abs_error'][i, j, n_hi]:.3f} (n = {d['ns'][n_hi]:g}) for PMD-mean and from "
        f"{d['pmd_part/mean_abs_error'][i, j, n_lo]:.3f} to "
        f"{d['pmd_part/mean_abs_error'][i, j, n_hi]:.3f} for PMD-part; measured as KL from the population "
        f"update, {m[i, j, n_lo]:.2f} against {q[i, j, n_lo]:.2f} "
        f"at n = {d['ns'][n_lo]:g}. Much of the small-n error is the chance that every rollout gets the same "
        f"reward, which leaves the policy unchanged ({d['pmd_mean/no_signal'][i, j, n_lo]:.2f} at n = "
        f"{d['ns'][n_lo]:g})."
    )


def _claims_finite_sample(d, params):
    gaps = max(d["pmd_mean/limit_gap"].max(), d["pmd_part/limit_gap"].max())
    falls = all(
        np.all(d[f"{m}/mean_abs_error"][..., -1] < 0.5 * d[f"{m}/mean_abs_error"][..., 0])
        for m in ("pmd_mean", "pmd_part")
    )
    bands = all(np.all(d[f"{m}/q10"] <= d[f"{m}/q90"] + 1e-15) for m in ("pmd_mean", "pmd_part"))
    return [
        Claim(
            "with infinitely many rollouts the sampled regression gives the exact update (gap < 1e-9)",
            bool(gaps < 1e-9),
            f"{gaps:.1e}",
        ),
        Claim(
            "the error at the largest n is less than half that at the smallest, for every (p, τ, method)",
            bool(falls),
        ),
        Claim("10% quantile ≤ 90% quantile everywhere", bool(bands)),
    ]


register(
    Figure(
        name="finite_sample",
        title="Finite-sample robustness",
        shows=(
            "Error of the one-step update from n rollouts against the population update, "
            "PMD-mean vs PMD-part, over n and τ."
        ),
        full={"ps": [0.05, 0.2, 0.5], "ns": [2, 4, 8, 16, 32, 64, 128], "taus": [0.1, 1.0]},
        quick={"ps": [0.05, 0.2, 0.5], "ns": [2, 4, 8, 16, 32, 64], "taus": [0.1, 1.0]},
        compute=_finite_sample,
        plot=_plot_finite_sample,
        caption=_caption_finite_sample,
        claims=_claims_finite_sample,
    )
)


# ----------------------------------------------------------- 7. training dynamics

_LABELS = {"pmd_mean": "PMD-mean", "pmd_part": "PMD-part", "grpo": "GRPO", "gspo": "GSPO", "rloo": "RLOO"}


def _dynamics(params, seed):
    base = base_config(params)
    algorithms = {
        _LABELS[a]: Algorithm(a, tau=params["tau"]) if a.startswith("pmd") else Algorithm(a)
        for a in params["algorithms"]
    }
    settings = {name: dict(overrides) for name, overrides in params["settings"].items()}
    seeds = [seed + s for s in range(params["seeds"])]
    res = training_dynamics(base, algorithms, seeds=seeds, settings=settings)
    out = {
        "steps": res["steps"],
        "settings": np.array(list(settings)),
        "algorithms": np.array(list(algorithms)),
    }
    for s, runs in res["runs"].items():
        for a, metrics in runs.items():
            for k, v in metrics.items():
                out[f"{s}/{a}/{k}"] = v
    return out


def _plot_dynamics(d, params):
    settings = list(d["settings"])
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4.2), squeeze=False, sharey=True)
    steps = d["steps"]
    for ax, s in zip(axes[0], settings):
        for a in d["algorithms"]:
            y = d[f"{s}/{a}/success_mean"]
            color = ALGORITHM_COLORS.get(a)
            plot_mean_band(ax, steps, y, color, resamples=1_000, label=a)
        ax.set_xscale("symlog", linthresh=1, linscale=0.5)
        ticks = [t for t in (0, 1, 3, 10, 30, 100, 300, 1000, 3000) if t <= steps[-1]]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.set_xlim(0, steps[-1])
        ax.set_xlabel("step (policy version), symmetric-log scale")
        ax.set_title(s)
    axes[0, 0].set_ylabel("mean success over prompts")
    axes[0, 0].legend(loc="lower right")
    fig.tight_layout()
    return fig


def _caption_dynamics(d, params):
    settings = list(d["settings"])
    parts = []
    for s in settings:
        finals = {a: d[f"{s}/{a}/success_mean"][:, -1] for a in d["algorithms"]}
        cells = ", ".join(f"{a} {mean_interval(v)}" for a, v in finals.items())
        diffs = "; ".join(
            verdict(finals["PMD-mean"], v, ("PMD-mean", a)) for a, v in finals.items() if a != "PMD-mean"
        )
        coll = ", ".join(
            f"{a} {np.nansum(d[f'{s}/{a}/collapses']) / d[f'{s}/{a}/collapses'].shape[0]:.1f}"
            for a in d["algorithms"]
        )
        parts.append(f"In “{s}”, final mean success {cells}; {diffs}; collapse events per run: {coll}")
    return (
        f"Bandit training ({params['prompts']} prompts × {params['responses']} responses, binary rewards, a "
        f"log-linear policy shared across prompts, n = {params['n']} rollouts per prompt, "
        f"{params['minibatches']} minibatch steps per batch, Adam lr {params['lr']}, τ = {params['tau']} "
        "for the PMD losses), mean over "
        f"prompts of the success probability, mean over {params['seeds']} seeds with 95% bands "
        "(intervals: 95% over seeds, method named beside each). "
        + ". ".join(parts)
        + ". A collapse event is a prompt whose success falls by more than 0.2 in one step."
    )


def _claims_dynamics(d, params):
    out = []
    start_same = True
    for s in d["settings"]:
        first = None
        for a in d["algorithms"]:
            y = d[f"{s}/{a}/success_mean"]
            first = y[:, 0] if first is None else first
            start_same &= bool(np.allclose(y[:, 0], first))
    out.append(Claim("every algorithm starts from the same policy in each seed", start_same))
    finite = all(np.all(np.isfinite(d[k][:, 1:])) for k in d if k.endswith("success_mean"))
    out.append(Claim("all success curves finite", bool(finite)))
    for s in d["settings"]:
        for a in d["algorithms"]:
            y = d[f"{s}/{a}/success_mean"]
            out.append(
                claim_positive(
                    f"{a} raises mean success in “{s}” (paired gain over seeds above 0)", y[:, -1] - y[:, 0]
                )
            )
    stale = d["settings"][-1]
    final = {a: d[f"{stale}/{a}/success_mean"][:, -1] for a in d["algorithms"]}
    for other in ("PMD-part", "GRPO"):
        if other in final and "PMD-mean" in final:
            out.append(
                claim_above(
                    f"in “{stale}”, PMD-mean ends with higher success than {other}",
                    final["PMD-mean"],
                    final[other],
                    kind="paper",
                )
            )
    return out


_DYNAMICS = {
    "algorithms": ["pmd_mean", "pmd_part", "grpo", "gspo", "rloo"],
    "tau": 0.1,
    "policy": "loglinear",
    "n": 4,
    "minibatches": 8,
    "lr": 0.05,
    "settings": {"n = 4 rollouts per prompt": {}, "n = 4, rollouts 4 versions stale": {"staleness": 4}},
}

register(
    Figure(
        name="training_dynamics",
        title="Training dynamics on bandits",
        shows=(
            "Success vs step for PMD-mean, PMD-part, GRPO, GSPO, RLOO with seed bands, "
            "at small n and with staleness."
        ),
        full={**_DYNAMICS, "prompts": 128, "responses": 64, "steps": 300, "seeds": 5},
        quick={**_DYNAMICS, "prompts": 32, "responses": 16, "steps": 40, "seeds": 3},
        compute=_dynamics,
        plot=_plot_dynamics,
        caption=_caption_dynamics,
        claims=_claims_dynamics,
    )
)
