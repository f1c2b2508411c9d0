"""``lfm-bench``: global flow vs Local Flow Matching at equal parameters and equal batches.

    lfm-bench quick                       # tree at the quick budget, all four methods, seed 0
    lfm-bench quick --seeds 0,1,2         # the same over three seeds: mean ± standard error
    lfm-bench run rose --budget medium    # any task and budget (medium and full: seeds 0,1,2)
    lfm-bench run power --root ~/data/maf --budget full --seeds 0
    lfm-bench run patches3x3 --standardize none   # every method fits the raw data
    lfm-bench list                        # tasks, budgets and methods

``--seeds`` takes comma-separated ints >= 0 (``--seed N`` is the same as ``--seeds N``); the
default is ``0`` for the smoke and quick budgets and ``0,1,2`` for medium and full. Each seed
draws its own data subsets and initializations. ``--resume`` reads the seeds that already have a
``results.json`` in the output directory (same recipe, budget and methods) instead of running them
again, so a long multi-seed run can be finished in parts. Every method fits with fit's default
``standardize="auto"`` (:mod:`torchcfm_local.standardize`): data far from unit scale, such as the
image patch sets, is standardized per feature, other data is left as it is; ``--standardize
none|diagonal|full`` makes every method use that map instead. The tables' heading names the option
and the map it chose; NLL and energy distance stay in data units.

With one seed a run writes ``<out>/<task>_<budget>/``: ``results.json`` (every number, the command,
commit, versions and machine), ``results.md`` (the table, marked "one seed"), ``curves.png``,
``samples.png`` and, for 2D data, ``density.png``. With several seeds each seed's files go to
``<out>/<task>_<budget>/seed<k>/`` and ``<out>/<task>_<budget>/`` holds the aggregate:
``results.json`` (the seeds, each seed's summary, the aggregate and the provenance),
``results.md`` (per method mean ± SE over seeds of test NLL, val NLL, energy distance, NFE and
seconds; paired differences LFM - global per seed; batches to the global flow's NLL on the mean
learning curves) and ``curves.png`` (mean learning curves with ± SE bands).

Modules: :mod:`~torchcfm_local.bench.registry` (tasks, budgets, methods),
:mod:`~torchcfm_local.bench.protocol` (:func:`~torchcfm_local.bench.protocol.run_task`: one seed,
and the protocol), :mod:`~torchcfm_local.bench.seeds` (:func:`~torchcfm_local.bench.seeds.run_seeds`
and the aggregation over seeds), :mod:`~torchcfm_local.bench.report` (summaries, tables, files,
provenance) and :mod:`~torchcfm_local.bench.plots` (figures).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "run_and_report"]


def run_and_report(task, budget, out: str, methods=None, root=None, seeds=None,
                   progress: bool = True, figures: bool = True, resume: bool = False) -> Path:
    """Run a task for one or more seeds, write JSON, markdown tables and figures; returns the output directory.

    ``task`` and ``budget`` are names or :class:`~.registry.Task` / :class:`~.registry.Budget`
    objects (as for :func:`~.protocol.run_task`); ``seeds`` is an int, a sequence of ints or None
    (:func:`~.seeds.default_seeds` of the budget). One seed writes its files directly into
    ``<out>/<task>_<budget>/``; several write each seed's files into ``seed<k>/`` below it and the
    aggregate (mean ± SE, paired differences, mean curves) into it. With ``resume``, a seed whose
    ``results.json`` is already there (same recipe, budget and methods) is read instead of run
    again, so that a long multi-seed run can be finished in parts; the aggregate records which
    seeds were read and their commits.
    """
    from .protocol import resolve
    from .report import write_run
    from .seeds import check_seeds, default_seeds, read_finished_seed, run_seeds, write_seeds

    task_obj, task_name, budget_obj, budget_name, methods = resolve(task, budget, methods)
    if seeds is None:
        seeds = default_seeds(budget_name)
    seeds = check_seeds([seeds] if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds)
    directory = Path(out) / f"{task_name}_{budget_name}"
    tables, old = {}, {}

    def target(seed):
        return directory if len(seeds) == 1 else directory / f"seed{seed}"

    if resume:
        for seed in seeds:
            found = read_finished_seed(target(seed) / "results.json", task_obj, budget_obj, methods, seed)
            if found is not None:
                old[seed] = found
                tables[seed] = (target(seed) / "results.md").read_text() if len(seeds) == 1 else None

    def write_seed(run):
        seed = run.result["seed"]
        tables[seed] = write_run(run, target(seed), figures=figures)
        if len(seeds) > 1:
            print(f"{tables[seed]}\n\nseed {seed} written to {target(seed)}/\n")

    results = run_seeds(task, budget, methods, seeds=seeds, root=root, progress=progress, on_run=write_seed,
                        finished={seed: found["result"] for seed, found in old.items()})
    reused = {seed: found["provenance"] for seed, found in old.items()}
    table = tables[seeds[0]] if len(seeds) == 1 else write_seeds(results, directory, figures=figures, reused=reused)
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
    run.add_argument("--standardize", choices=("auto", "none", "diagonal", "full"), default=None,
                     help="every method fits with fit(standardize=...) (default: the task's, 'auto')")
    for p in (quick, run):
        p.add_argument("--out", default="lfm-bench-results", help="output directory (default: ./lfm-bench-results)")
        p.add_argument("--seeds", "--seed", dest="seeds", default=None,
                       help="comma-separated seeds, e.g. 0,1,2 (default: 0 for smoke and quick, 0,1,2 for medium and full)")
        p.add_argument("--no-progress", action="store_true", help="hide progress bars")
        p.add_argument("--no-figures", action="store_true", help="skip the matplotlib figures")
        p.add_argument("--resume", action="store_true",
                       help="read the seeds already finished in the output directory instead of running them again")
    sub.add_parser("list", help="list tasks, budgets and methods")
    args = parser.parse_args(argv)

    if args.command == "list":
        print("tasks:   " + ", ".join(f"{k} ({v.note})" for k, v in TASKS.items()))
        print("budgets: " + ", ".join(BUDGETS))
        print("methods: " + ", ".join(METHODS))
        return 0
    task, budget = ("tree", "quick") if args.command == "quick" else (args.task, args.budget)
    if getattr(args, "standardize", None) and task in TASKS:  # an unknown name is reported below
        task = dataclasses.replace(TASKS[task], fit={**TASKS[task].fit, "standardize": args.standardize})
    methods = None if args.command == "quick" else [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        from .seeds import parse_seeds

        seeds = None if args.seeds is None else parse_seeds(args.seeds)
        run_and_report(task, budget, args.out, methods, getattr(args, "root", None), seeds,
                       progress=not args.no_progress, figures=not args.no_figures, resume=args.resume)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"lfm-bench: error: {err}", file=sys.stderr)
        return 2
    return 0
