"""Regenerate every figure and the verification report.

    python paper_repro.py                      # all figures, full parameters, into out/
    python paper_repro.py --quick              # small parameters (about a minute)
    python paper_repro.py --figure update_map --figure chi2_weight
    python paper_repro.py --list               # the figures and what they show

Computed numbers are cached under OUT/cache (keyed by parameters, seed, code
and library versions), so re-plotting is instant. Each figure is written as
PNG and PDF, and OUT/REPORT.md collects the proposition table of
``python -m pmdlab.theory.verify``, every figure with its caption, the claims
checked against its numbers, parameters, run times and library versions.
The exit status is 1 if a proposition or a figure's claim fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from datetime import datetime, timezone

from tqdm import tqdm

from figures import FIGURES_IN_ORDER as FIGURES
from figures.cache import library_versions, load_or_compute, load_or_run_propositions
from figures.llm_training import run_comparison
from figures.scope import EXACT_FIGURES, UNTESTED_CLAIMS
from figures.style import save
from pmdlab.llm.metrics_log import find, read
from pmdlab.theory.verify import format_table


def _llm_logs(args) -> tuple[list[str], str]:
    paths = [str(p) for p in (args.llm_log or find(os.path.join(args.out, "llm")))]
    for p in paths:
        if not os.path.isfile(p):
            raise SystemExit(f"error: --llm-log {p} does not exist")
    digest = hashlib.sha256()
    for p in paths:
        digest.update(open(p, "rb").read())
    return paths, digest.hexdigest()[:16]


#: Seconds each part took from an empty cache on 2 CPU cores (the full and the quick parameters).
_MEASURED_S = {"full": {"llm": 290, "other": 240}, "quick": {"llm": 50, "other": 30}}


def _expected_time(names: list[str], quick: bool, trains: bool) -> str:
    """What the run will cost, from :data:`_MEASURED_S` (cached numbers make it seconds); ``trains``:
    figure 8 trains its LLM runs (no metrics logs were given)."""
    cost = _MEASURED_S["quick" if quick else "full"]
    seconds = cost["other"] + (cost["llm"] if trains else 0)
    llm = f", of which about {cost['llm']} s train the LLM runs of figure 8" if trains else ""
    return (
        f"expected: about {seconds / 60:.0f} min on 2 CPU cores from an empty cache{llm}; "
        "seconds when the numbers are cached"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--figure",
        action="append",
        choices=["all", *FIGURES],
        help="a figure to draw (repeatable; default all)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small parameters: the whole run in about a minute"
    )
    parser.add_argument("--out", default="out", help="output folder (default out/)")
    parser.add_argument("--seed", type=int, default=0, help="seed for every random draw (default 0)")
    parser.add_argument("--recompute", action="store_true", help="ignore cached numbers")
    parser.add_argument(
        "--llm-log", action="append", help="metrics log(s) for the LLM figure (default: OUT/llm/*.jsonl)"
    )
    parser.add_argument(
        "--no-llm-training",
        action="store_true",
        help="without metrics logs, leave the LLM figure undrawn instead of training on the CPU",
    )
    parser.add_argument("--list", action="store_true", help="list the figures and exit")
    args = parser.parse_args(argv)
    if args.list:
        for i, fig in enumerate(FIGURES.values(), 1):
            print(f"{i}. {fig.name}: {fig.shows}")
        return 0
    names = list(FIGURES) if not args.figure or "all" in args.figure else list(dict.fromkeys(args.figure))
    trains = "llm" in names and not args.llm_log and not args.no_llm_training
    print(_expected_time(names, args.quick, trains), flush=True)
    os.makedirs(args.out, exist_ok=True)
    cache = os.path.join(args.out, "cache")
    start = time.perf_counter()
    sections, failures = [], []
    trained = None  # (runs, seconds) of figure 8's CPU comparison, when this run trained it

    if "llm" in names:  # check the logs before any long computation
        logs, digest = _llm_logs(args)
        read(logs)
        if not logs and not args.no_llm_training:
            tqdm.write(
                "llm: no metrics logs; training PMD-mean and GRPO over seeds on the embedded task (CPU), "
                "one run per core at a time",
                file=sys.stdout,
            )
            try:
                began = time.perf_counter()
                runs = run_comparison(os.path.join(args.out, "llm"), args.seed, args.quick)
                trained = (len(runs), time.perf_counter() - began)
            except ModuleNotFoundError as e:
                tqdm.write(
                    f"llm: cannot train ({e}); install the llm extra: pip install -e '.[llm]'",
                    file=sys.stdout,
                )
            logs, digest = _llm_logs(args)
    bar = tqdm(total=len(names) + 1, desc="propositions", unit="step", file=sys.stdout, dynamic_ncols=True)
    outcomes, verify_info = load_or_run_propositions(args.seed, cache, recompute=args.recompute)
    failures += [f"proposition {o.proposition.name}" for o in outcomes if not o.passed]
    bar.update()

    for number, name in ((list(FIGURES).index(n) + 1, n) for n in names):
        fig = FIGURES[name]
        bar.set_description(name)
        params = fig.params(args.quick)
        if name == "llm":
            params["logs"], params["digest"] = logs, digest
        data, info = load_or_compute(fig, params, args.seed, cache, recompute=args.recompute)
        reason = fig.missing(data)
        if reason:
            tqdm.write(f"{name}: not drawn: {reason}", file=sys.stdout)
            sections.append(
                {"number": number, "figure": fig, "missing": reason, "params": params, "info": info}
            )
            bar.update()
            continue
        claims = fig.claims(data, params)
        failures += [f"{name}: {c.statement}" for c in claims if c.kind == "check" and not c.passed]
        files = save(fig.plot(data, params), args.out, name)
        sections.append(
            {
                "number": number,
                "figure": fig,
                "claims": claims,
                "caption": fig.caption(data, params),
                "params": params,
                "info": info,
                "files": files,
            }
        )
        bar.update()
    bar.close()

    coverage = _coverage_section(args.quick)
    total = time.perf_counter() - start
    report = _report(args, argv, outcomes, verify_info, sections, total, trained, coverage)
    path = os.path.join(args.out, "REPORT.md")
    with open(path, "w") as f:
        f.write(report)
    drawn = sum("files" in s for s in sections)
    print(
        f"{drawn} figure(s) and {path} written in {total:.1f} s"
        + (" (quick parameters)" if args.quick else "")
    )
    for s in sections:
        if "missing" in s:
            print(f"  {s['figure'].name}: not drawn: {s['missing']}")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    return 0


def _coverage_section(quick: bool) -> list[str]:
    """How often the 95% intervals the report uses cover the true mean, by simulation
    (:func:`pmdlab.rl.stats.coverage_table`): normal and exponential values, n = 3, 5, 10."""
    from pmdlab.rl.stats import coverage_table

    trials, resamples = (1000, 1000) if quick else (4000, 2000)
    began = time.perf_counter()
    rows = coverage_table(trials, resamples)
    lines = [
        "## Intervals over few seeds",
        "",
        "Every interval in this report names its method: Student-t (a mean; paired t for a difference "
        "between methods run on the same seeds, Welch t otherwise) below 10 seeds, percentile bootstrap "
        "from 10 (`pmdlab.rl.stats`). Coverage of their 95% intervals of a mean over "
        f"{trials} simulated samples each (computed in {time.perf_counter() - began:.1f} s; "
        "`python -m pmdlab.rl.stats`):",
        "",
        "| values | n | Student-t | percentile bootstrap |",
        "|---|---|---|---|",
    ]
    lines += [f"| {name} | {n} | {t:.3f} | {b:.3f} |" for name, n, t, b in rows]
    return lines + [""]


def _report(args, argv, outcomes, verify_info, sections, total, trained=None, coverage=()) -> str:
    cmd = "python paper_repro.py" + (
        "" if not argv and len(sys.argv) < 2 else " " + " ".join(argv if argv is not None else sys.argv[1:])
    )
    passed = sum(o.passed for o in outcomes)
    lines = [
        "# Figures and verification report",
        "",
        f"Generated by `{cmd}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC in {total:.1f} s "
        f"({'quick' if args.quick else 'full'} parameters, seed {args.seed}).",
        "",
        "## Propositions",
        "",
        f"`python -m pmdlab.theory.verify --seed {args.seed}`: {passed} of {len(outcomes)} propositions pass "
        f"({'read from cache, computed' if verify_info['cached'] else 'computed'} "
        f"in {verify_info['seconds']:.1f} s).",
        "",
        format_table(outcomes, markdown=True),
        "",
        *coverage,
        "## Figures",
        "",
    ]
    for s in sections:
        fig = s["figure"]
        lines += [f"### {s['number']}. {fig.title} (`{fig.name}`)", "", fig.shows, ""]
        if "missing" in s:
            lines += [
                f"**Not drawn:** {s['missing']}. Train with `python -m pmdlab.llm.train` or pass "
                "`--llm-log PATH` to draw it.",
                "",
            ]
        else:
            lines += [
                f"![{fig.name}]({fig.name}.png)",
                "",
                s["caption"],
                "",
                "Claims checked against the numbers:",
                "",
            ]
            lines += [_claim_line(c) for c in s["claims"] if c.kind == "check"]
            lines.append("")
            found = [c for c in s["claims"] if c.kind == "finding"]
            if found:
                lines += ["What the logs show (findings over few seeds, not checks):", ""]
                lines += [_claim_line(c) for c in found] + [""]
            tested = [c for c in s["claims"] if c.kind == "paper"]
            if tested:
                lines += ["The paper's claims tested on these numbers:", ""]
                lines += [_claim_line(c) for c in tested] + [""]
        how = "read from cache, computed" if s["info"]["cached"] else "computed"
        lines += [f"Parameters: `{json.dumps(s['params'])}`; {how} in {s['info']['seconds']:.1f} s.", ""]
    lines += _paper_claims_section(sections)
    lines += _budget_section(sections, total, trained)
    lines += ["## Library versions", "", "| library | version |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in library_versions().items()]
    return "\n".join(lines) + "\n"


def _claim_line(c) -> str:
    """One claim as a report line: a check is ticked or FAILED; a paper claim reproduces or not."""
    detail = f" ({c.detail})" if c.detail else ""
    if c.kind == "paper":
        return f"- {'reproduced' if c.passed else '**not reproduced**'}: {c.statement}{detail}"
    if c.kind == "finding":
        return f"- {'holds' if c.passed else '**does not hold**'}: {c.statement}{detail}"
    return f"- [{'x' if c.passed else ' '}] {c.statement}{detail}" + ("" if c.passed else " **FAILED**")


def _paper_claims_section(sections) -> list[str]:
    """Every claim of the paper tested by a figure, with its verdict, then those this report cannot test."""
    lines = ["## The paper's claims", "", "Tested here, each with the figure whose numbers decide it:", ""]
    for s in sections:
        for c in s.get("claims", []):
            if c.kind == "paper":
                lines.append(f"{_claim_line(c)} [figure {s['number']}, `{s['figure'].name}`]")
    lines += ["", "Not tested here, and why:", ""]
    lines += [f"- {claim} — {why}" for claim, why in UNTESTED_CLAIMS]
    return lines + [""]


def _budget_section(sections, total, trained=None) -> list[str]:
    """What the numbers cost: seeds, steps and seconds per figure, and figure 8's training."""
    lines = [
        "## Budget",
        "",
        f"This report took {total:.0f} s on {os.cpu_count()} CPU core(s). Per figure (seconds of the "
        "computation that produced the cached numbers, whether or not this run recomputed them):",
        "",
        "| figure | seeds | steps | seconds |",
        "|---|---|---|---|",
    ]
    for s in sections:
        p = s["params"]
        seeds = "none (exact)" if s["figure"].name in EXACT_FIGURES else p.get("seeds", "see caption")
        lines.append(f"| {s['figure'].name} | {seeds} | {p.get('steps', '—')} | {s['info']['seconds']:.1f} |")
    if trained:
        lines += [
            "",
            f"Before these, figure 8's CPU comparison trained {trained[0]} runs in {trained[1]:.0f} s "
            "(its seeds and steps are in its caption).",
        ]
    return lines + [""]


if __name__ == "__main__":
    sys.exit(main())
