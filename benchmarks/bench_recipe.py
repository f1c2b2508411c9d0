"""Which velocity network and which data preprocessing should be the defaults? A screen over recipes.

Runs ``lfm-bench``'s protocol (all four methods: global and LFM, trigonometric and linear path,
equal parameters and batches) for several recipe variants, tasks and seeds, and writes per variant
and method the mean and standard error over seeds of the test NLL, the energy distance and the
number of function evaluations (NFE) the adaptive solver needed to sample (a measure of how hard
the learned field is to integrate). A variant changes the MLP (activation, time input) and/or the
fit options (data standardization, pool mode) or replaces the task's OU schedule (``schedule``:
``OUSchedule(h0, rho, N)``, with the block width and batches per block re-matched so that the
total parameters and batches stay those of the task); both sides of every comparison get the same
variant (``pool`` and ``schedule`` only change LFM: a one-block global flow has nothing to push
and no schedule, and its width follows the LFM blocks' unchanged total).

    python benchmarks/bench_recipe.py --tasks tree,rose,patches3x3 --seeds 0,1,2 --budget quick --final-only
    # writes benchmarks/results/recipe_<budget>.{json,md}

Every finished (task, variant, seed) is written at once, so an interrupted screen keeps its runs
and ``--resume`` skips them (the file lists every invocation that added runs). ``--render`` only
rewrites the markdown table from the JSON file.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

from torchcfm_local import datasets
from torchcfm_local.bench.protocol import run_task, with_steps
from torchcfm_local.bench.registry import BUDGETS, METHODS, TASKS, Budget, Task
from torchcfm_local.bench.report import provenance, write_results
from torchcfm_local.bench.seeds import mean_se
from torchcfm_local.schedule import OUSchedule

RESULTS = Path(__file__).resolve().parent / "results"

_SILU, _SOFTPLUS = {"activation": "silu", "n_freq": 4}, {"activation": "softplus20", "n_freq": 0}

#: name -> the fields of the task that change (``mlp``: MLP keyword arguments, ``fit``: fit options;
#: without ``fit``, fit's defaults, ``standardize="auto"`` included: it standardizes the patch sets)
VARIANTS = {
    "silu-fourier": {"mlp": _SILU},
    "silu-raw": {"mlp": {"activation": "silu", "n_freq": 0}},
    "softplus20-raw": {"mlp": _SOFTPLUS},
    "softplus20-fourier": {"mlp": {"activation": "softplus20", "n_freq": 4}},
    "softplus20-f1": {"mlp": {"activation": "softplus20", "n_freq": 1}},
    "softplus20-f2": {"mlp": {"activation": "softplus20", "n_freq": 2}},
    "relu-raw": {"mlp": {"activation": "relu", "n_freq": 0}},
    "gelu-raw": {"mlp": {"activation": "gelu", "n_freq": 0}},
    "softplus20-raw+std": {"mlp": _SOFTPLUS, "fit": {"standardize": "diagonal"}},
    "softplus20-raw+ou": {"mlp": _SOFTPLUS, "fit": {"pool": "ou"}},
    "silu-fourier+std": {"mlp": _SILU, "fit": {"standardize": "diagonal"}},
    "std-diagonal": {"fit": {"standardize": "diagonal"}},  # the default network on standardized data
    "std-none": {"fit": {"standardize": "none"}},  # the default network on the data as the loader gives it
    # the task's own OU schedule with the default network; other schedules, ``(h0, rho, N)`` of
    # ``OUSchedule``, at the task's total parameters and batches
    "task-schedule": {},
    "ou-3x0.25": {"schedule": (0.25, 1.0, 3)},
    "ou-4x0.15": {"schedule": (0.15, 1.3, 4)},
    "ou-4x0.3": {"schedule": (0.3, 1.1, 4)},
    "ou-3x0.25+std": {"schedule": (0.25, 1.0, 3), "fit": {"standardize": "diagonal"}},
}

METRICS = ("test_nll", "energy_distance", "sample_nfe")


def variant_setup(task_name: str, budget: Budget, changes: dict) -> tuple[Task, Budget]:
    """The task and budget of one variant (see :data:`VARIANTS`)."""
    changes = dict(changes)
    schedule = changes.pop("schedule", None)
    task = replace(TASKS[task_name], **changes)
    if schedule is None:
        return task, budget
    return with_steps(task, budget, datasets.load(task.dataset).dim, OUSchedule(*schedule).coupled_steps)


def final_runs(result: dict) -> dict:
    """method -> the full-budget run's record."""
    top = max(r["fraction"] for r in result["runs"])
    return {r["method"]: r for r in result["runs"] if r["fraction"] == top}


def aggregate(records: list[dict]) -> dict:
    """(task, variant, method) -> {metric: {"mean", "se", "values"}} over seeds."""
    groups: dict = {}
    for rec in records:
        for method, run in rec["final"].items():
            groups.setdefault((rec["task"], rec["variant"], method), []).append(run)
    return {key: {m: mean_se([r[m] for r in runs]) for m in METRICS} for key, runs in groups.items()}


def _cell(stat: dict, digits: int) -> str:
    mean, se = stat["mean"], stat["se"]
    return f"{mean:.{digits}f}" if se is None else f"{mean:.{digits}f} ± {se:.{digits}f}"


def paired_nll(records: list[dict], task: str, variant: str, method: str, base: str) -> Optional[dict]:
    """Mean ± SE over the shared seeds of ``variant``'s test NLL minus ``base``'s (same task, method and seed)."""
    def by_seed(name):
        return {r["seed"]: r["final"][method]["test_nll"] for r in records
                if r["task"] == task and r["variant"] == name and method in r["final"]}

    mine, ref = by_seed(variant), by_seed(base)
    seeds = sorted(set(mine) & set(ref))
    return mean_se([mine[s] - ref[s] for s in seeds]) if seeds and variant != base else None


def markdown(records: list[dict], budget: str) -> str:
    stats = aggregate(records)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    lines = [f"# Recipe variants, {budget} budget", "",
             "Mean ± standard error over seeds (n in the last column) of the test NLL (nats), the energy "
             "distance (ED) and the sampling NFE (dopri5 at 1e-5). Lower is better for all three. The paired "
             "column is the test NLL minus that of the task's first variant, same method and seed.", ""]
    for task in tasks:
        base = next(r["variant"] for r in records if r["task"] == task)
        lines += [f"## {task}", "", f"| variant | method | test NLL | NLL - {base} (paired) | ED | sample NFE | n |",
                  "|---|---|---|---|---|---|---|"]
        for (t, variant, method), s in stats.items():
            if t == task:
                diff = paired_nll(records, task, variant, method, base)
                lines.append(f"| {variant} | {method} | {_cell(s['test_nll'], 4)} "
                             f"| {'-' if diff is None else _cell(diff, 4)} | {_cell(s['energy_distance'], 4)} "
                             f"| {_cell(s['sample_nfe'], 0)} | {len(s['test_nll']['values'])} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="tree,rose,patches3x3")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--resume", action="store_true", help="keep the runs already in the JSON file")
    parser.add_argument("--name", default=None, help="output file name (default: recipe_<budget>)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder (default benchmarks/results)")
    parser.add_argument("--final-only", action="store_true",
                        help="train only the full-budget models (no learning curve): LFM costs 1x instead of 1.75x")
    parser.add_argument("--render", action="store_true",
                        help="only rewrite the markdown table from the JSON file (after a change to the table)")
    args = parser.parse_args(argv)
    budget = replace(BUDGETS[args.budget], fractions=(1.0,)) if args.final_only else BUDGETS[args.budget]
    name = args.name or f"recipe_{args.budget}"
    path = args.out / f"{name}.json"
    old = json.loads(path.read_text()) if (args.resume or args.render) and path.exists() else None
    records = old["results"]["records"] if old else []
    # every invocation that added runs to the file: --resume keeps the earlier ones
    invocations = old["results"].get("invocations", [_invocation(old["provenance"])]) if old else []
    if args.render:
        if old is None:
            raise SystemExit(f"--render: no results file {path}")
        table = markdown(records, old["results"]["budget"]) + _runs_text(invocations)
        (args.out / f"{name}.md").write_text(f"{table}\n\nTable rendered by {_described(provenance())}.\n")
        return
    invocations.append(_invocation(provenance()))
    done = {(r["task"], r["variant"], r["seed"]) for r in records}
    methods = args.methods.split(",")
    for seed in [int(s) for s in args.seeds.split(",")]:  # seeds outermost: an early stop still covers every variant
        for task in args.tasks.split(","):
            for variant in args.variants.split(","):
                if (task, variant, seed) in done:
                    continue
                print(f"== {task} / {variant} / seed {seed}", flush=True)
                run = run_task(*variant_setup(task, budget, VARIANTS[variant]), methods, seed=seed,
                               progress=False, log=lambda *a: None)
                records.append({"task": task, "variant": variant, "seed": seed, "changes": VARIANTS[variant],
                                "final": final_runs(run.result)})
                results = {"budget": args.budget, "final_only": args.final_only, "records": records,
                           "invocations": invocations}
                write_results(args.out, name, results, markdown(records, args.budget) + _runs_text(invocations))


def _invocation(prov: dict) -> dict:
    return {k: prov[k] for k in ("command", "commit", "date")}


def _described(inv: dict) -> str:
    return f"`{inv['command']}` at `{inv['commit'][:7]}` ({inv['date']})"


def _runs_text(invocations: list[dict]) -> str:
    return "\n\nRuns in this file: " + "; ".join(map(_described, invocations)) + "."


if __name__ == "__main__":
    main()
