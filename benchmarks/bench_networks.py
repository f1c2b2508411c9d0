"""Which velocity network should the MLP default be? A screen over activations and time inputs.

Runs ``lfm-bench``'s protocol (all four methods: global and LFM, trigonometric and linear path,
equal parameters and batches) for several MLP variants, tasks and seeds, and writes per variant
and method the mean and standard error over seeds of the test NLL, the energy distance and the
number of function evaluations (NFE) the adaptive solver needed to sample (a measure of how hard
the learned field is to integrate). Both sides of every comparison use the same variant.

    python benchmarks/bench_networks.py --tasks tree,rose,patches3x3 --seeds 0,1,2 --budget quick
    # writes benchmarks/results/networks_<budget>.{json,md}

Every finished (task, variant, seed) is written at once, so an interrupted screen keeps its runs
and ``--resume`` skips them.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

from torchcfm_local.bench.protocol import run_task
from torchcfm_local.bench.registry import METHODS, TASKS
from torchcfm_local.bench.report import write_results

RESULTS = Path(__file__).resolve().parent / "results"

#: name -> MLP keyword arguments
VARIANTS = {
    "silu-fourier": {"activation": "silu", "n_freq": 4},
    "silu-raw": {"activation": "silu", "n_freq": 0},
    "softplus20-raw": {"activation": "softplus20", "n_freq": 0},
    "softplus20-fourier": {"activation": "softplus20", "n_freq": 4},
    "relu-raw": {"activation": "relu", "n_freq": 0},
    "gelu-raw": {"activation": "gelu", "n_freq": 0},
}

METRICS = ("test_nll", "energy_distance", "sample_nfe")


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error (sample std with ddof=1 over sqrt(n); nan for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def final_runs(result: dict) -> dict:
    """method -> the full-budget run's record."""
    top = max(r["fraction"] for r in result["runs"])
    return {r["method"]: r for r in result["runs"] if r["fraction"] == top}


def aggregate(records: list[dict]) -> dict:
    """(task, variant, method) -> {metric: (mean, se, n)} over seeds."""
    groups: dict = {}
    for rec in records:
        for method, run in rec["final"].items():
            groups.setdefault((rec["task"], rec["variant"], method), []).append(run)
    return {key: {m: (*mean_se([r[m] for r in runs]), len(runs)) for m in METRICS} for key, runs in groups.items()}


def _cell(stat: tuple, digits: int) -> str:
    mean, se, n = stat
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {se:.{digits}f}"


def markdown(records: list[dict], budget: str) -> str:
    stats = aggregate(records)
    tasks = list(dict.fromkeys(r["task"] for r in records))
    lines = [f"# MLP variants, {budget} budget", "",
             "Mean ± standard error over seeds (n in the last column) of the test NLL (nats), the energy "
             "distance (ED) and the sampling NFE (dopri5 at 1e-5). Lower is better for all three.", ""]
    for task in tasks:
        lines += [f"## {task}", "", "| variant | method | test NLL | ED | sample NFE | n |", "|---|---|---|---|---|---|"]
        for (t, variant, method), s in stats.items():
            if t == task:
                lines.append(f"| {variant} | {method} | {_cell(s['test_nll'], 4)} | {_cell(s['energy_distance'], 4)} "
                             f"| {_cell(s['sample_nfe'], 0)} | {s['test_nll'][2]} |")
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
    args = parser.parse_args(argv)
    name = f"networks_{args.budget}"
    path = RESULTS / f"{name}.json"
    records = json.loads(path.read_text())["results"]["records"] if args.resume and path.exists() else []
    done = {(r["task"], r["variant"], r["seed"]) for r in records}
    methods = args.methods.split(",")
    for seed in [int(s) for s in args.seeds.split(",")]:  # seeds outermost: an early stop still covers every variant
        for task in args.tasks.split(","):
            for variant in args.variants.split(","):
                if (task, variant, seed) in done:
                    continue
                print(f"== {task} / {variant} / seed {seed}", flush=True)
                run = run_task(replace(TASKS[task], mlp=VARIANTS[variant]), args.budget, methods, seed=seed,
                               progress=False, log=lambda *a: None)
                records.append({"task": task, "variant": variant, "seed": seed, "mlp": VARIANTS[variant],
                                "final": final_runs(run.result)})
                write_results(RESULTS, name, {"budget": args.budget, "records": records}, markdown(records, args.budget))


if __name__ == "__main__":
    main()
