"""Check every proposition numerically: ``python -m pmdlab.theory.verify``.

Prints one row per proposition (what was checked, on how many instances,
the worst error against its tolerance) and exits with status 1 if any fails.
"""

from __future__ import annotations

import argparse
import sys
import time

from .propositions import PROPOSITIONS, Outcome, run

__all__ = ["format_table", "main"]


def format_table(outcomes: list[Outcome], markdown: bool = False) -> str:
    """The outcomes as a fixed-width text table, or as a Markdown table."""
    header = ["proposition", "checked", "instances", "worst error", "tolerance", "result"]
    rows = [
        [
            o.proposition.name,
            o.proposition.checked,
            str(o.instances),
            f"{o.worst:.2e}",
            f"{o.tolerance:.2e}",
            "pass" if o.passed else "FAIL",
        ]
        for o in outcomes
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    widths[1] = min(widths[1], 70)

    def fmt(row):
        cells = [row[0].ljust(widths[0]), _clip(row[1], widths[1]).ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(row[2:], widths[2:])]
        return "  ".join(cells)

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows])


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pmdlab.theory.verify", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random instances (default 0)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these propositions")
    parser.add_argument("--list", action="store_true", help="list the propositions and their statements")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    if args.list:
        for p in PROPOSITIONS:
            print(f"{p.name}: {p.statement}")
        return 0
    t0 = time.perf_counter()
    outcomes = run(seed=args.seed, names=args.only)
    print(format_table(outcomes, markdown=args.markdown))
    failed = [o.proposition.name for o in outcomes if not o.passed]
    elapsed = time.perf_counter() - t0
    print(
        f"\n{len(outcomes) - len(failed)} of {len(outcomes)} propositions pass "
        f"({elapsed:.1f} s, seed {args.seed})"
    )
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
