"""``lfm-bench``: global flow vs Local Flow Matching at equal parameters and equal batches.

    lfm-bench quick                       # tree at the quick budget, all four methods
    lfm-bench run rose --budget medium    # any task and budget
    lfm-bench run power --root ~/data/maf --budget full
    lfm-bench list                        # tasks, budgets and methods

Each run writes ``<out>/<task>_<budget>/``: ``results.json`` (every number, the command, commit,
versions and machine), ``results.md`` (the table), ``curves.png``, ``samples.png`` and, for 2D
data, ``density.png``.

Modules: :mod:`~torchcfm_local.bench.registry` (tasks, budgets, methods),
:mod:`~torchcfm_local.bench.protocol` (:func:`~torchcfm_local.bench.protocol.run_task` and the
protocol), :mod:`~torchcfm_local.bench.report` (summaries, tables, files, provenance) and
:mod:`~torchcfm_local.bench.plots` (figures).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "run_and_report"]


def run_and_report(task: str, budget: str, out: str, methods=None, root=None, seed: int = 0,
                   progress: bool = True, figures: bool = True) -> Path:
    """Run one task, write its JSON, markdown table and figures; returns the output directory."""
    from .protocol import run_task
    from .report import write_run

    run = run_task(task, budget, methods, root=root, seed=seed, progress=progress)
    directory = Path(out) / f"{task}_{budget}"
    table = write_run(run, directory, figures=figures)
    print(table)
    print(f"\nresults written to {directory}/")
    return directory


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .registry import BUDGETS, METHODS, TASKS

    parser = argparse.ArgumentParser(prog="lfm-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    quick = sub.add_parser("quick", help="tree at the quick budget, all four methods")
    run = sub.add_parser("run", help="one task at a chosen budget")
    run.add_argument("task", help=f"one of: {', '.join(TASKS)}")
    run.add_argument("--budget", default="quick", help=f"one of: {', '.join(BUDGETS)}")
    run.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of the methods")
    run.add_argument("--root", default=None, help="directory with the MAF dataset files (power, gas, ...)")
    for p in (quick, run):
        p.add_argument("--out", default="lfm-bench-results", help="output directory (default: ./lfm-bench-results)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        p.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
    sub.add_parser("list", help="list tasks, budgets and methods")
    args = parser.parse_args(argv)

    if args.command == "list":
        print("tasks:   " + ", ".join(f"{k} ({v.note})" for k, v in TASKS.items()))
        print("budgets: " + ", ".join(BUDGETS))
        print("methods: " + ", ".join(METHODS))
        return 0
    task, budget = ("tree", "quick") if args.command == "quick" else (args.task, args.budget)
    methods = None if args.command == "quick" else [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        run_and_report(task, budget, args.out, methods, getattr(args, "root", None), args.seed,
                       progress=not args.no_progress, figures=not args.no_figures)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"lfm-bench: error: {err}", file=sys.stderr)
        return 2
    return 0
