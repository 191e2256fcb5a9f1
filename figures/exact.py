"""Figures 1, 2, 3 and 5: the exact binary-reward updates (docs/math.md §4)."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import TwoSlopeNorm

from pmdlab.theory import pmd_mean_step, pmd_part_step
from pmdlab.theory.iterate import iterate_success

from .registry import Claim, Figure, register
from .style import METHOD_STYLE, TAU_COLORS, plt

# ------------------------------------------------------------------ 1. update map


def _update_map(params, seed):
    p_lin = np.linspace(1e-4, 1 - 1e-4, params["points"])
    p_log = np.logspace(-6, np.log10(0.5), params["points"])
    taus = np.array(params["taus"])
    out = {"p_lin": p_lin, "p_log": p_log, "taus": taus}
    for grid, p in (("lin", p_lin), ("log", p_log)):
        out[f"mean_{grid}"] = pmd_mean_step(p[None, :], taus[:, None]).success
        out[f"part_{grid}"] = pmd_part_step(p[None, :], taus[:, None]).success
    out["ref_mean"] = np.array(pmd_mean_step(0.01, 0.1).success)
    out["ref_part"] = np.array(pmd_part_step(0.01, 0.1).success)
    return out


def _plot_update_map(d, params):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, grid in zip(axes, ("lin", "log")):
        p = d[f"p_{grid}"]
        for i, tau in enumerate(d["taus"]):
            for method in ("mean", "part"):
                style = METHOD_STYLE[f"pmd_{method}"]
                ax.plot(
                    p,
                    d[f"{method}_{grid}"][i],
                    color=TAU_COLORS[i],
                    ls=style["ls"],
                    lw=1.6,
                    label=f"{style['label']}, τ = {tau:g}",
                )
        ax.plot(p, p, color="0.4", ls=":", lw=1, label="no change (p′ = p)")
        ax.set_xlabel("success probability before the step, p")
        ax.set_ylabel("after one exact step, p′")
    axes[0].set_title("(a) binary rewards: p′ against p")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_title("(b) low p (log-log): PMD-mean moves conservatively")
    axes[0].legend(loc="lower right", ncol=1)
    fig.tight_layout()
    return fig


def _caption_update_map(d, params):
    i = list(d["taus"]).index(0.1) if 0.1 in d["taus"] else -1
    p = d["p_log"]
    j = np.argmin(np.abs(p - 1e-4))
    return (
        "The new success probability after one exact step with rewards in {0, 1}, PMD-mean (solid) against "
        f"PMD-part (dashed), for τ = {', '.join(f'{t:g}' for t in d['taus'])}. At p = 0.01, τ = 0.1, "
        f"PMD-mean moves to p′ = {float(d['ref_mean']):.3f} while PMD-part jumps to "
        f"{float(d['ref_part']):.3f}; at p = {p[j]:.0e}, τ = {d['taus'][i]:g}, "
        f"p′ = {d['mean_log'][i, j]:.2e} (PMD-mean) and {d['part_log'][i, j]:.2e} (PMD-part). "
        "PMD-mean's step is never larger than PMD-part's, and both improve."
    )


def _claims_update_map(d, params):
    out = []
    for grid in ("lin", "log"):
        p, m, q = d[f"p_{grid}"], d[f"mean_{grid}"], d[f"part_{grid}"]
        below = q < 1 - 1e-9
        out.append(
            Claim(
                f"PMD-mean p′ ≤ PMD-part p′ on the {grid} grid, strictly where PMD-part's p′ < 1 − 1e-9",
                bool(np.all(m <= q) and np.all(m[below] < q[below])),
                f"max(p′_mean − p′_part) = {np.max(m - q):.1e}",
            )
        )
        out.append(
            Claim(
                f"both updates improve (p′ > p) on the {grid} grid",
                bool(np.all(m > p) and np.all(q > p)),
                f"min(p′ − p) = {min(np.min(m - p), np.min(q - p)):.1e}",
            )
        )
    out.append(
        Claim(
            "p = 0.01, τ = 0.1 matches docs/math.md §4 (0.25996 and 0.99553)",
            bool(abs(d["ref_mean"] - 0.25996) < 5e-6 and abs(d["ref_part"] - 0.99553) < 5e-6),
            f"{float(d['ref_mean']):.5f}, {float(d['ref_part']):.5f}",
        )
    )
    return out


register(
    Figure(
        name="update_map",
        title="Update map",
        shows="New success probability p′ against p for PMD-mean and PMD-part (binary rewards), several τ.",
        full={"taus": [0.01, 0.1, 1.0], "points": 600},
        quick={"taus": [0.01, 0.1, 1.0], "points": 150},
        compute=_update_map,
        plot=_plot_update_map,
        caption=_caption_update_map,
        claims=_claims_update_map,
    )
)


# ------------------------------------------------------------------ 2. log-ratios


def _log_ratios(params, seed):
    p = np.logspace(-4, np.log10(1 - 1e-4), params["points"])
    taus = np.array(params["taus"])
    m = pmd_mean_step(p[None, :], taus[:, None])
    q = pmd_part_step(p[None, :], taus[:, None])
    return {
        "p": p,
        "taus": taus,
        "mean_correct": m.log_ratio_correct,
        "mean_incorrect": m.log_ratio_incorrect,
        "part_correct": q.log_ratio_correct,
        "part_incorrect": q.log_ratio_incorrect,
    }


def _plot_log_ratios(d, params):
    taus = d["taus"]
    fig, axes = plt.subplots(1, len(taus), figsize=(5 * len(taus), 4.2), squeeze=False)
    p = d["p"]
    for ax, i in zip(axes[0], range(len(taus))):
        tau = taus[i]
        ax.plot(p, (1 - p) / tau, color="0.55", ls=":", lw=1.3, label="target (1 − p)/τ")
        ax.plot(p, -p / tau, color="0.25", ls=":", lw=1.3, label="target −p/τ")
        for method in ("mean", "part"):
            style = METHOD_STYLE[f"pmd_{method}"]
            ax.plot(
                p,
                d[f"{method}_correct"][i],
                color="#3a7d44",
                ls=style["ls"],
                lw=1.6,
                label=f"{style['label']}: correct",
            )
            ax.plot(
                p,
                d[f"{method}_incorrect"][i],
                color="#d1495b",
                ls=style["ls"],
                lw=1.6,
                label=f"{style['label']}: incorrect",
            )
        ax.set_xscale("log")
        ax.set_xlabel("success probability p")
        ax.set_ylabel(r"log-ratio $\log\,\pi_{t+1}/\pi_t$")
        ax.set_title(f"τ = {tau:g}")
    axes[0, -1].legend(loc="center left", fontsize=8)
    fig.tight_layout()
    return fig


def _caption_log_ratios(d, params):
    i = 0
    j = np.argmin(np.abs(d["p"] - 0.01))
    tau = d["taus"][i]
    return (
        "Log-ratios of correct and incorrect responses after one exact step, PMD-mean (solid) and PMD-part "
        "(dashed), with PMD-mean's regression targets (1 − p)/τ and −p/τ (dotted). PMD-mean's log-ratios "
        f"stay below their targets everywhere. At p = {d['p'][j]:.2g}, τ = {tau:g}, the incorrect "
        f"responses' log-ratio is {d['mean_incorrect'][i, j]:.3f} under PMD-mean and "
        f"{d['part_incorrect'][i, j]:.3f} under PMD-part."
    )


def _claims_log_ratios(d, params):
    p, taus = d["p"], d["taus"][:, None]
    finite = all(
        np.all(np.isfinite(d[k]))
        for k in ("mean_correct", "mean_incorrect", "part_correct", "part_incorrect")
    )
    below = np.all(d["mean_correct"] < (1 - p) / taus) and np.all(d["mean_incorrect"] < -p / taus)
    smaller = np.all(np.abs(d["mean_incorrect"]) < np.abs(d["part_incorrect"]))
    return [
        Claim("all log-ratios finite (log space, no underflow)", bool(finite)),
        Claim(
            "PMD-mean's log-ratios lie below their targets (r − r̄)/τ (docs/math.md §3, identity 2)",
            bool(below),
            f"max(log ρ₁ − (1−p)/τ) = {np.max(d['mean_correct'] - (1 - p) / taus):.2e}",
        ),
        Claim("PMD-mean pushes incorrect responses down less than PMD-part", bool(smaller)),
    ]


register(
    Figure(
        name="log_ratios",
        title="Log-ratios",
        shows=(
            "Log-ratios of correct and incorrect responses against p, PMD-mean vs PMD-part, "
            "with PMD-mean's bounds."
        ),
        full={"taus": [0.1, 1.0], "points": 500},
        quick={"taus": [0.1, 1.0], "points": 120},
        compute=_log_ratios,
        plot=_plot_log_ratios,
        caption=_caption_log_ratios,
        claims=_claims_log_ratios,
    )
)


# ---------------------------------------------------------------- 3. chi^2 weight


def _kl_from_log_ratios(p, step):
    """``KL(pi_t || pi_{t+1}) = -(p log rho_1 + (1 - p) log rho_0)``: from the new policy's
    log-ratios alone, not from the multiplier lambda that defines beta."""
    return -(p * step.log_ratio_correct + (1 - p) * step.log_ratio_incorrect)


def _chi2_weight(params, seed):
    ps = np.array(params["ps"])
    tau = np.logspace(np.log10(params["tau_min"]), np.log10(params["tau_max"]), params["points"])
    beta = pmd_mean_step(ps[:, None], tau[None, :]).chi2_weight
    marks = np.logspace(np.log10(params["tau_min"]), np.log10(params["tau_max"]), params["marks"])
    step = pmd_mean_step(ps[:, None], marks[None, :])
    kl = _kl_from_log_ratios(ps[:, None], step)
    grid_p = np.logspace(-3, np.log10(0.99), params["grid"])
    grid_tau = np.logspace(np.log10(params["tau_min"]), np.log10(params["tau_max"]), params["grid"])
    grid_beta = pmd_mean_step(grid_p[:, None], grid_tau[None, :]).chi2_weight
    return {
        "ps": ps,
        "tau": tau,
        "beta": beta,
        "marks": marks,
        "half_tau_kl": 0.5 * marks[None, :] * kl,
        "beta_marks": step.chi2_weight,
        "grid_p": grid_p,
        "grid_tau": grid_tau,
        "grid_ratio": grid_beta / (grid_p[:, None] * (1 - grid_p[:, None]) / 2),
    }


def _plot_chi2_weight(d, params):
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.2))
    ax = axes[0]
    for i, p in enumerate(d["ps"]):
        c = TAU_COLORS[i % len(TAU_COLORS)]
        ax.plot(d["tau"], d["beta"][i], color=c, lw=1.6, label=f"β, p = {p:g}")
        ax.axhline(p * (1 - p) / 2, color=c, ls="--", lw=1)
        ax.plot(d["marks"], d["half_tau_kl"][i], "o", color=c, ms=4, mfc="none")
    ax.plot([], [], "k--", lw=1, label="limit p(1 − p)/2 as τ → 0")
    ax.plot([], [], "ko", ms=4, mfc="none", label=r"$(\tau/2)\,\mathrm{KL}(\pi_t\,\|\,\pi_{t+1})$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("τ")
    ax.set_ylabel("implicit χ² weight β")
    ax.set_title("(a) β(p, τ) and its identity β = (τ/2) KL")
    ax.legend(loc="lower left", fontsize=7.5)
    ax = axes[1]
    norm = TwoSlopeNorm(vmin=0.0, vcenter=1.0, vmax=max(1.5, float(d["grid_ratio"].max())))
    mesh = ax.pcolormesh(
        d["grid_p"], d["grid_tau"], d["grid_ratio"].T, shading="auto", cmap="RdBu_r", norm=norm
    )
    cs = ax.contour(
        d["grid_p"],
        d["grid_tau"],
        d["grid_ratio"].T,
        levels=[0.25, 0.5, 0.9, 1.1, 2.0],
        colors="k",
        linewidths=0.7,
    )
    ax.clabel(cs, fontsize=7.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("success probability p")
    ax.set_ylabel("τ")
    ax.set_title("(b) β / (p(1 − p)/2)")
    fig.colorbar(mesh, ax=ax)
    fig.tight_layout()
    return fig


def _caption_chi2_weight(d, params):
    i = int(np.argmin(np.abs(d["ps"] - 0.1)))
    p = d["ps"][i]
    return (
        "The weight β of the χ² term in the mixed KL–χ² step that PMD-mean solves exactly (binary rewards). "
        f"(a) β against τ for p = {', '.join(f'{x:g}' for x in d['ps'])}; it tends to the reward "
        "variance over "
        f"two, p(1 − p)/2 (dashed), as τ → 0 (at p = {p:g}, τ = {d['tau'][0]:.0e}: β = {d['beta'][i, 0]:.5f} "
        f"against {p * (1 - p) / 2:.5f}), and the circles, (τ/2) KL(π_t‖π_{{t+1}}) computed from the new "
        "policy's log-ratios alone, sit on the curves. (b) β relative to that limit over the (p, τ) plane: "
        f"for small p it overshoots the limit at intermediate τ (up to {d['grid_ratio'].max():.2f}×) before "
        "falling off as τ grows; the χ² term weighs most when τ is small."
    )


def _claims_chi2_weight(d, params):
    rel = np.max(np.abs(d["beta_marks"] / d["half_tau_kl"] - 1))
    p = d["ps"][:, None]
    small = np.max(np.abs(d["beta"][:, :1] / (p * (1 - p) / 2) - 1))
    return [
        Claim(
            "β = (τ/2) KL(π_t‖π_{t+1}) at every marked point (relative error < 1e-9)",
            bool(rel < 1e-9),
            f"{rel:.1e}",
        ),
        Claim(
            f"β → p(1 − p)/2 as τ → 0 (relative gap < 1e-2 at τ = {d['tau'][0]:.0e})",
            bool(small < 1e-2),
            f"{small:.1e}",
        ),
        Claim("β > 0 everywhere on the (p, τ) grid", bool(np.all(d["grid_ratio"] > 0))),
    ]


register(
    Figure(
        name="chi2_weight",
        title="The implicit χ² weight",
        shows=(
            "β(p, τ) over a (p, τ) grid, its small-τ limit p(1−p)/2, "
            "and the identity β = (τ/2) KL(π_t‖π_{t+1})."
        ),
        full={
            "ps": [0.01, 0.1, 0.3, 0.5, 0.9],
            "tau_min": 1e-4,
            "tau_max": 10.0,
            "points": 300,
            "marks": 9,
            "grid": 200,
        },
        quick={
            "ps": [0.01, 0.1, 0.3, 0.5, 0.9],
            "tau_min": 1e-4,
            "tau_max": 10.0,
            "points": 80,
            "marks": 7,
            "grid": 60,
        },
        compute=_chi2_weight,
        plot=_plot_chi2_weight,
        caption=_caption_chi2_weight,
        claims=_claims_chi2_weight,
    )
)


# ------------------------------------------------------------ 5. multi-step convergence


def _convergence(params, seed):
    p0 = np.array(params["p0"])
    taus = np.array(params["taus"])
    out = {"p0": p0, "taus": taus, "steps": np.arange(params["steps"] + 1)}
    for method in ("mean", "part"):
        out[method] = np.stack(
            [iterate_success(p0, tau, params["steps"], method) for tau in taus]
        )  # (tau, t, p0)
        out[method + "_failure"] = np.stack([_failure_path(p0, tau, params["steps"], method) for tau in taus])
    return out


def _failure_path(p0, tau, steps, method):
    """``1 - p_t`` from each step's directly computed failure mass (accurate below 1e-16)."""
    step = pmd_mean_step if method == "mean" else pmd_part_step
    p = np.asarray(p0, dtype=np.float64)
    out = [1 - p]
    for _ in range(steps):
        s = step(p, tau)
        out.append(np.asarray(s.failure))
        p = np.asarray(s.success)
    return np.stack(out)


def _plot_convergence(d, params):
    taus = d["taus"]
    fig, axes = plt.subplots(1, len(taus), figsize=(4.2 * len(taus), 4), squeeze=False, sharey=True)
    for ax, i in zip(axes[0], range(len(taus))):
        for j, p0 in enumerate(d["p0"]):
            for method in ("mean", "part"):
                style = METHOD_STYLE[f"pmd_{method}"]
                ax.plot(
                    d["steps"],
                    np.maximum(d[method + "_failure"][i, :, j], 1e-300),
                    color=TAU_COLORS[j],
                    ls=style["ls"],
                    lw=1.5,
                    label=f"{style['label']}, p₀ = {p0:g}",
                )
        ax.set_yscale("log")
        ax.set_ylim(1e-16, 2)
        below = np.all(np.maximum(d["mean_failure"][i], d["part_failure"][i]) < 1e-16, axis=1)
        last = int(np.argmax(below)) + 2 if below.any() else int(d["steps"][-1])
        ax.set_xlim(0, min(last, int(d["steps"][-1])))
        ax.set_xlabel("iteration t")
        ax.set_title(f"τ = {taus[i]:g}")
    axes[0, 0].set_ylabel("failure probability 1 − p_t")
    axes[0, -1].legend(loc="lower left", fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def _caption_convergence(d, params):
    i = len(d["taus"]) // 2
    j = 0
    t = min(10, len(d["steps"]) - 1)
    return (
        "Repeated exact steps on a binary-reward bandit: the failure probability 1 − p_t against the "
        "iteration, PMD-mean (solid) and PMD-part (dashed), "
        f"from p₀ = {', '.join(f'{x:g}' for x in d['p0'])}. "
        "Both converge to the correct response; PMD-mean is slower from a low start: "
        f"with τ = {d['taus'][i]:g} and "
        f"p₀ = {d['p0'][j]:g}, after {t} steps p_t = {d['mean'][i, t, j]:.3f} (PMD-mean) against "
        f"{d['part'][i, t, j]:.3f} (PMD-part)."
    )


def _claims_convergence(d, params):
    mono = all(np.all(np.diff(d[m], axis=1) >= 0) for m in ("mean", "part"))
    ahead = np.all(d["part"] >= d["mean"]) and np.all(d["part_failure"] <= d["mean_failure"])
    final = min(d["mean"][:, -1].min(), d["part"][:, -1].min())
    return [
        Claim("success never decreases along either trajectory", bool(mono)),
        Claim("PMD-part is ahead at every iteration (success ≥ and failure ≤ PMD-mean's)", bool(ahead)),
        Claim("every trajectory ends above 0.99", bool(final > 0.99), f"lowest final p = {final:.4f}"),
    ]


register(
    Figure(
        name="convergence",
        title="Multi-step convergence",
        shows=(
            "Success probability over iterations of the exact updates from several p₀, "
            "PMD-mean vs PMD-part, several τ."
        ),
        full={"p0": [1e-4, 1e-2, 0.1, 0.5], "taus": [0.1, 1.0, 3.0], "steps": 60},
        quick={"p0": [1e-4, 1e-2, 0.1, 0.5], "taus": [0.1, 1.0, 3.0], "steps": 60},
        compute=_convergence,
        plot=_plot_convergence,
        caption=_caption_convergence,
        claims=_claims_convergence,
    )
)
