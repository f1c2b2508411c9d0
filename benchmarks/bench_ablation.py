"""Which part of the LFM recipe decides how it compares with a global flow? One-factor ablations.

Every variant changes one thing in a task's LFM recipe (``lfm-bench``'s tasks, with the paper's schedules where it gives one;
linear path by default, ``--method lfm-trig`` for the trigonometric one) and keeps the protocol of
``lfm-bench``: the same data, the same total parameter count
(block widths are re-matched when the number of blocks changes), the same total training batches,
independent LFM runs at the budget's fractions for the learning curve, and the same evaluation
(test NLL by dopri5 at 1e-5, energy distance to test data). The references are the global flows
with the linear and trigonometric paths, trained once at the same parameters and batches.

Variants (the paper's 2D recipe is N = 9 blocks, OU steps h_n = 0.025 * 1.25^(n-1), warm start,
uniform t, equal batches per block; for other tasks "paper" is the task's own recipe):

* ``paper``: the recipe as is;
* ``no-warm-start``: every block starts from a fresh initialization;
* ``t-beta``: training times from Beta(1.5, 1) on the noise(0) -> data(1) axis, more weight near data;
* ``free-half``: the free (last) block gets half of all batches, the coupled blocks share the rest;
* ``N=5`` / ``N=3`` / ``N=2``: other numbers of blocks, wider or narrower to keep the parameters;
  geometric steps (ratio 1.25) rescaled to the recipe's total OU time (the sum of its finite
  steps, 0.496 for the 2D recipe);
* ``2x-ou-time``: every step doubled (2D: h0 = 0.05), so the local blocks carry more of the way to
  noise and the free block starts from a smoother density.

    python benchmarks/bench_ablation.py --task tree --budget quick    # ~10 min on 2 CPU cores
    python benchmarks/bench_ablation.py --task rose --budget quick --variants paper,N=3

    python benchmarks/bench_ablation.py --task tree --budget medium --variants N=5 \
        --reference benchmarks/results/tree_medium/results.json       # reuse lfm-bench's global flows

Writes ``<out>/ablation_<task>_<budget>[_seedS][_lfm-trig].{json,md,png}``. ``--reference`` takes the two
global flows from an ``lfm-bench run`` of the same task, budget and seed instead of training them
again (the settings are checked, and the file is named in the output): the ``results.json`` of a
one-seed run, or ``seed<k>/results.json`` of a run over several seeds.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from torchcfm_local.bench.protocol import matched_width, mlp_params, run_task, with_steps
from torchcfm_local.bench.registry import BUDGETS, TASKS, Budget, Task
from torchcfm_local.bench.report import first_crossing as _crossing, write_results
from torchcfm_local.schedule import OUSchedule

RESULTS = Path(__file__).resolve().parent / "results"


def _rescaled_steps(steps: tuple, n_blocks: int, rho: float = 1.25) -> tuple:
    """``n_blocks - 1`` geometric steps (ratio ``rho``) with the same sum as ``steps``."""
    shape = OUSchedule(1.0, rho, n_blocks).coupled_steps
    return tuple(h * sum(steps) / sum(shape) for h in shape)


def variants(base: Task, budget: Budget, dim: int) -> dict:
    """name -> (Task, Budget): one change each, equal total parameters and total batches."""
    n_base = len(base.steps) + 1
    out = {
        "paper": (base, budget),
        "no-warm-start": (dataclasses.replace(base, warm_start=False), budget),
        "t-beta": (dataclasses.replace(base, t_beta=(1.5, 1.0)), budget),
        "free-half": (dataclasses.replace(base, block_weights=(1.0,) * (n_base - 1) + (n_base - 1.0,)), budget),
        "2x-ou-time": (dataclasses.replace(base, steps=tuple(2 * h for h in base.steps)), budget),
    }
    for n in (5, 3, 2):  # equal batches per block; totals differ by less than n when n does not divide
        out[f"N={n}"] = with_steps(base, budget, dim, _rescaled_steps(base.steps, n))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="tree", choices=sorted(TASKS))
    parser.add_argument("--budget", default="quick", choices=sorted(BUDGETS))
    parser.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--root", default=None, help="directory with MAF files, for the real tabular tasks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", default="lfm-linear", choices=["lfm-linear", "lfm-trig"])
    parser.add_argument("--reference", default=None, help="results.json of `lfm-bench run TASK --budget BUDGET`")
    args = parser.parse_args(argv)

    from torchcfm_local import datasets

    budget = BUDGETS[args.budget]
    # widths are given explicitly below, so the budget's width scale is folded into the task
    base = dataclasses.replace(TASKS[args.task], width=max(8, int(round(TASKS[args.task].width * budget.width_scale))))
    budget = dataclasses.replace(budget, width_scale=1.0)
    dim = datasets.load(base.dataset, root=args.root).dim
    table = variants(base, budget, dim)
    chosen = list(table) if args.variants is None else [v.strip() for v in args.variants.split(",")]
    unknown = [v for v in chosen if v not in table]
    if unknown:
        parser.error(f"unknown variant(s) {unknown}; expected names from {list(table)}")

    log = lambda msg: print(msg, flush=True)  # noqa: E731
    tick = time.perf_counter()
    if args.reference:
        reference = load_reference(args.reference, args, base, dim)
    else:
        reference = run_task(base, budget, ["global-linear", "global-trig"], root=args.root, seed=args.seed,
                             progress=False, log=log).result
    rows = [dict(row, variant=row["method"]) for row in reference["summary"] if row["method"].startswith("global")]
    targets = {row["method"]: row["curve"][-1][1] for row in rows}
    for name in chosen:
        task, bud = table[name]
        run = run_task(task, bud, [args.method], root=args.root, seed=args.seed, progress=False, log=log)
        row = dict(run.result["summary"][0], variant=name, n_blocks=run.result["n_blocks"],
                   block_width=run.result["lfm_width"], steps=list(task.steps), warm_start=task.warm_start,
                   t_beta=task.t_beta, block_weights=task.block_weights)
        for ref, target in targets.items():
            reached = _crossing(row["curve"], target)
            row[f"batches_to_{ref}"] = reached
            row[f"upper_bound_{ref}"] = reached is not None and reached == row["curve"][0][0]
        rows.append(row)
        log(f"  {name}: test NLL {row['test_nll']:.4f}")

    result = {"task": args.task, "budget": args.budget, "seed": args.seed, "method": args.method, "dim": dim,
              "base_task": dataclasses.asdict(base), "budget_settings": dataclasses.asdict(budget),
              "total_batches": reference["total_batches"], "reference_file": args.reference,
              "reference_curve_targets": targets, "rows": rows, "seconds": time.perf_counter() - tick}
    text = markdown(result)
    name = (f"ablation_{args.task}_{args.budget}" + (f"_seed{args.seed}" if args.seed else "")
            + ("" if args.method == "lfm-linear" else f"_{args.method}"))
    write_results(args.out, name, result, text)
    figure(result, Path(args.out) / f"{name}.png")
    print(text)
    return 0


def load_reference(path: str, args, base: Task, dim: int) -> dict:
    """The global flows of an ``lfm-bench run`` whose data, batches and widths match this ablation."""
    import json

    ref = json.loads(Path(path).read_text())["results"]
    n_blocks = len(base.steps) + 1
    expected = {"budget": args.budget, "seed": args.seed, "dim": dim, "n_blocks": n_blocks,
                "global_width": matched_width(dim, n_blocks * mlp_params(dim, base.width, base.depth), base.depth),
                "total_batches": n_blocks * BUDGETS[args.budget].per_block}
    found = {k: ref.get(k) for k in expected}
    if ref["task"]["dataset"] != base.dataset or found != expected:
        raise ValueError(f"{path} is not a global-flow run of this ablation: expected {base.dataset} with "
                         f"{expected}, found {ref['task']['dataset']} with {found}")
    return ref


def _reach(row: dict, ref: str) -> str:
    reached = row.get(f"batches_to_{ref}", "-")
    if reached in ("-", None):
        return "-" if reached == "-" else "not reached"
    bound = "<= " if row[f"upper_bound_{ref}"] else ""
    return f"{bound}{reached:.0f} ({bound}{reached / row['batches']:.2f}x)"


def markdown(result: dict) -> str:
    source = f"; global flows from `{result['reference_file']}`" if result.get("reference_file") else ""
    lines = [f"### {result['method']} ablations on {result['task']} ({result['budget']} budget, seed {result['seed']}): "
             f"d={result['dim']}, {result['total_batches']} batches per method, equal parameters; NLL in nats on "
             f"test data{source}\n",
             "| variant | blocks x width | params | test NLL | val NLL | energy dist. | NFE/sample | total s "
             "| batches to global-linear NLL | to global-trig NLL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        shape = f"{r['n_blocks']} x {r['block_width']}" if "n_blocks" in r else "1 (global)"
        lines.append(f"| {r['variant']} | {shape} | {r['params']} | {r['test_nll']:.4f} | {r['val_nll']:.4f} | "
                     f"{r['energy_distance']:.4f} | {r['sample_nfe']:.0f} | {r['total_seconds']:.0f} | "
                     f"{_reach(r, 'global-linear')} | {_reach(r, 'global-trig')} |")
    lines.append("")
    lines.append("Learning curves (batches: NLL on the held-out curve subset): " + "; ".join(
        f"{r['variant']}: " + ", ".join(f"{b}: {v:.3f}" for b, v in r["curve"]) for r in result["rows"]))
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    from torchcfm_local.bench.plots import require_matplotlib as _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for r in result["rows"]:
        xs, ys = zip(*r["curve"])
        ax.plot(xs, ys, "--s" if "n_blocks" not in r else "-o", label=r["variant"], lw=2 if "n_blocks" not in r else 1)
    ax.set_xlabel("training batches (all blocks)")
    ax.set_ylabel("NLL (nats), held-out subset")
    ax.set_title(f"{result['task']}: {result['method']} variants vs global flows ({result['budget']} budget)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
