"""One network for all LFM blocks against one network per block and a global flow, at equal parameters and samples.

On a 2D task of ``lfm-bench`` (``tree`` or ``rose``: the paper's 9-block schedule
``h_n = 0.025 * 1.25**(n-1)``), one seed, every model trained with the same total number of
training samples (``N * per_block`` batches of ``batch_size``) and the same total parameter count
(N block MLPs of ``--width``; the other networks' widths are solved to match their sum):

* ``separate``: LFM, N block MLPs, ``pool="ou"`` (block after block, each on the OU marginal);
* ``shared``: LFM, one :class:`~torchcfm_local.SharedVelocity` MLP with a block embedding,
  ``pool="ou"``, all blocks trained jointly (``N * per_block`` steps of ``batch_size`` rows, each
  batch split evenly across the blocks);
* ``global``: one-block flow matching (the ``global-<path>`` method of ``lfm-bench``);
* ``push`` (optional, ``--methods``): LFM with N block MLPs and the paper's pushforward pool.

Each row gives the test NLL (``lfm.log_prob``, dopri5 at atol = rtol = 1e-5, exact divergence), its
NFE per sample, the parameter count and the seconds of training (pushforward included) and
evaluation. The task's recipe (learning rate, warm start, time sampling) is used for every model.

    python benchmarks/bench_shared.py --task tree --per-block 250 --width 64
    # writes benchmarks/results/shared_tree.{json,md}
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import torchcfm_local as tl
from torchcfm_local.bench.protocol import EVAL_ODE, matched_width
from torchcfm_local.bench.registry import METHODS, TASKS
from torchcfm_local.bench.report import write_results
from torchcfm_local.networks import count_parameters
from torchcfm_local.shared import SharedVelocity, shared_width_for_parameters

RESULTS = Path(__file__).resolve().parent / "results"
METHOD_NAMES = ("separate", "shared", "global", "push")


def build(method: str, args, n_blocks: int, widths: dict) -> tuple[tl.LocalFlowMatching, dict]:
    """A fresh model of ``method`` (seeded) and the fit options that differ between methods."""
    task, dim = TASKS[args.task], 2
    matcher = METHODS[f"lfm-{args.path}"].matcher()
    torch.manual_seed(args.seed)
    mlp = dict(depth=args.depth, **task.mlp)
    if method == "global":
        model = tl.LocalFlowMatching(dim, tl.OUSchedule.global_flow(), matcher,
                                     lambda n: tl.MLP(dim, width=widths["global"], **mlp), t_beta=task.t_beta)
        return model, {"batches_per_block": n_blocks * args.per_block}
    schedule = tl.OUSchedule.from_steps(task.steps)
    if method == "shared":
        shared = SharedVelocity.mlp(dim, n_blocks, width=widths["shared"], **mlp)
        model = tl.LocalFlowMatching(dim, schedule, matcher, shared.block, t_beta=task.t_beta)
        return model, {"batches_per_block": args.per_block, "pool": "ou"}
    model = tl.LocalFlowMatching(dim, schedule, matcher, lambda n: tl.MLP(dim, width=args.width, **mlp),
                                 t_beta=task.t_beta)
    return model, {"batches_per_block": args.per_block, "pool": "pushforward" if method == "push" else "ou",
                   "warm_start": task.warm_start}


def run_one(method: str, data, args, n_blocks: int, widths: dict) -> dict:
    model, options = build(method, args, n_blocks, widths)
    start = time.perf_counter()
    report = model.fit(data.train, batch_size=args.batch_size, lr=TASKS[args.task].lr, lr_decay=args.lr_decay,
                       seed=args.seed, progress=False, encode_final_pool=False, **options)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    terms = model.log_prob_terms(data.test, ode=EVAL_ODE)
    eval_s = time.perf_counter() - start
    steps = report.blocks[0].batches if method == "shared" else sum(b.batches for b in report.blocks)
    return {"method": method, "test_nll": -float(terms.log_prob.mean()), "params": count_parameters(model),
            "steps": steps, "samples": steps * args.batch_size, "nfe": float(sum(terms.nfe_per_block)),
            "fit_s": fit_s, "push_s": sum(b.pushforward_seconds for b in report.blocks), "eval_s": eval_s,
            "final_losses": [b.final_loss for b in report.blocks], "prior": float(terms.prior.mean()),
            "block_divergence": terms.divergence.mean(1).tolist()}


def markdown(rows: list[dict], args, n_blocks: int, widths: dict) -> str:
    lines = [f"# One network for all LFM blocks ({args.task}, {args.path} path, seed {args.seed})", "",
             f"{args.n_train} train / {args.n_test} test points; {n_blocks} blocks; every model trained on "
             f"{n_blocks * args.per_block} batches of {args.batch_size} samples and sized to {n_blocks} block MLPs of "
             f"width {args.width} x {args.depth} (shared MLP width {widths['shared']}, global MLP width "
             f"{widths['global']}); learning rate {TASKS[args.task].lr}, {args.lr_decay or 'constant'}.", "",
             "Test NLL in nats (lower is better) by dopri5 at 1e-5 with the exact divergence, and its terms (means "
             "over the test points): NLL = -(prior + coupled + free), where prior is log N(x_N; 0, I) of the encoded "
             "points, coupled the divergence integrals of blocks 1..N-1 and free the last block's. NFE per sample in "
             "that evaluation; fit seconds include any pushforward.", "",
             "| method | test NLL | prior | coupled | free | params | training samples | NFE | fit s | push s | eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        div = r["block_divergence"]
        lines.append(f"| {r['method']} | {r['test_nll']:.4f} | {r['prior']:.4f} | {sum(div[:-1]):.4f} | {div[-1]:.4f} "
                     f"| {r['params']} | {r['samples']} | {r['nfe']:.0f} | {r['fit_s']:.1f} | {r['push_s']:.1f} "
                     f"| {r['eval_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="tree", choices=("tree", "rose"))
    parser.add_argument("--path", default="trig", choices=("trig", "linear"))
    parser.add_argument("--methods", default="separate,shared,global")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--width", type=int, default=64, help="width of each separate block MLP")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--per-block", type=int, default=250, help="batches per block (the others get N times as many)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr-decay", default=None, choices=(None, "cosine"), help="for every method")
    parser.add_argument("--name", default=None, help="result file name (default shared_<task>)")
    args = parser.parse_args(argv)
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; expected names from {METHOD_NAMES}")
    task = TASKS[args.task]
    n_blocks, mlp = task.n_blocks, dict(depth=args.depth, **task.mlp)
    target = n_blocks * count_parameters(tl.MLP(2, width=args.width, **mlp))
    widths = {"shared": shared_width_for_parameters(2, n_blocks, target, **mlp),
              "global": matched_width(2, target, **mlp)}
    data = tl.datasets.load(task.dataset, n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    rows = []
    for method in methods:
        rows.append(run_one(method, data, args, n_blocks, widths))
        r = rows[-1]
        print(f"{method}: test NLL {r['test_nll']:.4f}, {r['params']} params, fit {r['fit_s']:.0f}s, "
              f"eval {r['eval_s']:.0f}s (NFE {r['nfe']:.0f})", flush=True)
        write_results(RESULTS, args.name or f"shared_{args.task}",
                      {"rows": rows, "args": vars(args), "widths": widths, "target_params": target,
                       "n_blocks": n_blocks}, markdown(rows, args, n_blocks, widths))


if __name__ == "__main__":
    main()
