"""Why LFM loses on digits61: train and test NLL of global flows and LFM variants on a small dataset.

digits61 (61-d, 1259 training points) at ``lfm-bench``'s quick budget is the one suite task where
LFM is far behind the global flow (``quick3/digits61_quick``). This probe separates fitting from
generalizing: every variant reports the NLL of 1000 training points next to that of 1000 test
points (the ``lfm-bench`` evaluator: dopri5 at 1e-5, Hutchinson divergence), one seed, linear
path. Variants change one thing against the suite's recipe (LFM: N blocks of the task's block
width, B batches per block; global: one block widened to the same parameter count, N x B
batches): the width, the batches, where LFM's blocks get their data (``pool="ou"``), or fewer and
longer OU steps at equal parameters and batches.

    python benchmarks/probe_small_data.py          # writes benchmarks/results/small_data.{json,md}
    python benchmarks/probe_small_data.py --spacing tree,rose,digits61   # small_data_spacing.{json,md}

``--spacing`` measures how far apart the training points are against block 1's OU noise (see
:func:`spacing`), the quantity by which the suite's tasks where LFM wins differ from digits61.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch
from torchcfm import conditional_flow_matching as cfm

import torchcfm_local as tl
from torchcfm_local.bench import protocol
from torchcfm_local.bench.registry import BUDGETS, TASKS
from torchcfm_local.bench.report import write_results
from torchcfm_local.standardize import Standardizer

ROOT = Path(__file__).resolve().parent.parent

#: name -> (LFM?, width: the suite's "global" or LFM "block" width, batches as a multiple of the
#: budget's batches per block (a global flow's block gets N of them in the suite), fit options);
#: a fifth entry replaces the task's OU steps, with the block width matched to the suite's total
#: parameters and the batches per block to its total batches)
VARIANTS = {
    "global, global width (the suite's), N x B batches": (False, "global", "N", {}),
    "global, block width, N x B batches": (False, "block", "N", {}),
    "global, block width, B batches": (False, "block", 1, {}),
    "LFM, block width (the suite's), B batches per block": (True, "block", 1, {}),
    "LFM, block width, B / 4 batches per block": (True, "block", 0.25, {}),
    "LFM, block width, B per block, pool='ou'": (True, "block", 1, {"pool": "ou"}),
    "LFM, global width, B batches per block": (True, "global", 1, {}),
    "LFM, 2 blocks (OU step 0.75), equal parameters and batches": (True, "block", 1, {}, (0.75,)),
    "LFM, 2 blocks (OU step 1.5), equal parameters and batches": (True, "block", 1, {}, (1.5,)),
}


def probe(setup, local: bool, width: int, per_block: int, options: dict, seed: int, n_eval: int,
          steps=None) -> dict:
    """Fit one variant and return its train/test NLL, parameter count and seconds."""
    torch.manual_seed(seed)
    schedule = tl.OUSchedule.from_steps(steps or setup.task.steps) if local else tl.OUSchedule.global_flow()
    model = tl.LocalFlowMatching(setup.dim, schedule, cfm.ConditionalFlowMatcher(sigma=0.0),
                                 lambda n: tl.MLP(setup.dim, width=width, depth=setup.task.depth))
    start = time.perf_counter()
    pushes = options.get("pool", "pushforward") == "pushforward"
    model.fit(setup.train, batches_per_block=per_block, batch_size=setup.batch_size, lr=setup.task.lr, seed=seed,
              progress=False, encode_final_pool=False if pushes else None, **options)
    seconds = time.perf_counter() - start
    (train, train_prior), (test, test_prior) = (_nll_and_prior(model, x[:n_eval], setup.estimator, seed)
                                                for x in (setup.train, setup.test))
    params = sum(p.numel() for p in model.parameters())
    return {"train_nll": train, "test_nll": test, "gap": test - train, "train_prior": train_prior,
            "test_prior": test_prior, "params": params, "fit_seconds": seconds}


def _nll_and_prior(model, x, estimator: str, seed: int) -> tuple[float, float]:
    """Mean NLL of ``x`` and its prior part, ``-log N(x_N; 0, I)`` of the encoded points (the
    ``lfm-bench`` evaluator: the NLL equals ``protocol._nll``'s); the rest is the blocks' log-determinants."""
    terms = model.log_prob_terms(x, ode=protocol.EVAL_ODE, estimator=estimator,
                                 generator=torch.Generator().manual_seed(seed))
    return float(-terms.log_prob.mean()), float(-terms.prior.mean())


def spacing(tasks: list, budget: str, seed: int, queries: int = 2000) -> list:
    """Per task: the median distance from a training point to its nearest other one (``queries``
    points against the whole training set, in the units block 1 sees) and the log-likelihood ratio
    ``(e^{-h} d)^2 / (2 (1 - e^{-2h}))`` with which a draw from block 1's noise side
    ``e^{-h} x + sqrt(1 - e^{-2h}) z`` favours its own training point over a neighbour at that
    distance ``d`` (``h``: the task's first OU step)."""
    rows = []
    for name in tasks:
        task = TASKS[name]
        setup = protocol.prepare(task, name, BUDGETS[budget], budget, seed=seed)
        x = setup.train.reshape(len(setup.train), -1).double()
        mode = task.fit.get("standardize")
        if mode not in (None, "none"):  # the units block 1 sees: fit's own map
            x = Standardizer.fit(x, mode).apply(x)
        d = torch.cdist(x[:queries], x)
        d[torch.arange(min(queries, len(x))), torch.arange(min(queries, len(x)))] = float("inf")
        nearest = float(d.min(1).values.median())
        h = task.steps[0]
        ratio = (math.exp(-h) * nearest) ** 2 / (2 * (1 - math.exp(-2 * h)))
        rows.append({"task": name, "n_train": len(x), "dim": x.shape[1], "rms_std": float(x.std(0).pow(2).mean().sqrt()),
                     "median_nn": nearest, "h1": h, "ratio": ratio})
    return rows


def spacing_main(args) -> int:
    rows = spacing(args.spacing.split(","), args.budget, args.seed)
    lines = [f"### Training-point spacing against block 1's OU step ({args.budget} budget's training sets, seed {args.seed})\n",
             "| task | training points | d | RMS feature std | median nearest-neighbour distance | first OU step h | "
             "log-likelihood ratio, own point vs that neighbour |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['n_train']} | {r['dim']} | {r['rms_std']:.3f} | {r['median_nn']:.3f} | {r['h1']:g} "
              f"| {r['ratio']:.3g} |" for r in rows]
    text = "\n".join(lines)
    write_results(args.out, "small_data_spacing", {"budget": args.budget, "seed": args.seed, "rows": rows}, text)
    print(text)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits61")
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-eval", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--spacing", default=None, metavar="TASKS",
                        help="instead: the nearest-neighbour spacing table of these comma-separated tasks")
    args = parser.parse_args(argv)
    if args.spacing:
        return spacing_main(args)
    task = TASKS[args.task]
    setup = protocol.prepare(task, args.task, BUDGETS[args.budget], args.budget, seed=args.seed)
    rows = []
    per_block = setup.budget.per_block
    for name, (local, width, factor, options, *steps) in VARIANTS.items():
        width = setup.global_width if width == "global" else setup.width
        batches = per_block * task.n_blocks if factor == "N" else max(1, int(per_block * factor))
        steps = steps[0] if steps else None
        if steps is not None:  # equal total parameters and batches with len(steps) + 1 blocks
            n = len(steps) + 1
            width = protocol.matched_width(setup.dim, task.n_blocks * setup.block_params // n, task.depth, **task.mlp)
            batches = per_block * task.n_blocks // n
        row = {"variant": name, "width": width, "batches_per_block": batches, "steps": steps,
               **probe(setup, local, width, batches, options, args.seed, args.n_eval, steps)}
        print(f"{name}: train {row['train_nll']:.2f}, test {row['test_nll']:.2f}", flush=True)
        rows.append(row)
    lines = [f"### {args.task} ({args.budget} budget): train vs test NLL (nats), one seed ({args.seed}), linear path, "
             f"{len(setup.train)} training points, N = {task.n_blocks} blocks, B = {per_block} batches of "
             f"{setup.batch_size}\n",
             "| variant | width | batches per block | params | train NLL | test NLL | test - train | "
             "prior term train / test | fit s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['width']} | {r['batches_per_block']} | {r['params']} | {r['train_nll']:.2f} "
              f"| {r['test_nll']:.2f} | {r['gap']:.2f} | {r['train_prior']:.2f} / {r['test_prior']:.2f} "
              f"| {r['fit_seconds']:.1f} |" for r in rows]
    lines.append("\nPrior term: the mean of -log N(x_N; 0, I) over the encoded points; the NLL minus it is the "
                 "blocks' log-determinant part.")
    text = "\n".join(lines)
    write_results(args.out, "small_data", {"task": args.task, "budget": args.budget, "seed": args.seed, "rows": rows},
                  text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
