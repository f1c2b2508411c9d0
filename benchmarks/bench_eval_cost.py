"""Where does the evaluation time of a trained flow go, by velocity network? (issue 13)

With ``Softplus(beta=20)`` and Fourier time features, ``lfm-bench quick`` spent minutes drawing its
density maps (exact log-density on a grid by dopri5 at 1e-5). This measures, per MLP variant
(activation x Fourier frequencies of the time input), the adaptive solver's effort per block
(network evaluations per path, NFE) and the seconds of ``log_prob`` on test points and on the grid
the density map uses (which reaches well outside the data), plus the sampling NFE and test NLL.
Setting: ``tree``, the 2D schedule of ``lfm-bench`` (9 blocks), MLP of the quick budget (128 x 3),
20k training points, 250 batches of 512 per block, linear path; the equal-parameter global flow
(one block, 9 x the batches) alongside.

    python benchmarks/bench_eval_cost.py --seeds 0     # writes benchmarks/results/eval_cost.{json,md}
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

import torchcfm_local as tl
from torchcfm_local.bench.plots import density_grid
from torchcfm_local.bench.protocol import EVAL_ODE
from torchcfm_local.bench.registry import TASKS
from torchcfm_local.bench.report import write_results
from torchcfm_local.networks import count_parameters, width_for_parameters

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"silu-f4": ("silu", 4), "softplus20-f4": ("softplus20", 4), "softplus20-f2": ("softplus20", 2),
            "softplus20-f1": ("softplus20", 1), "softplus20-raw": ("softplus20", 0)}


def _timed_log_prob(model, x: torch.Tensor) -> dict:
    start = time.perf_counter()
    terms = model.log_prob_terms(x, ode=EVAL_ODE)
    return {"seconds": time.perf_counter() - start, "nfe_per_block": [round(v, 1) for v in terms.nfe_per_block],
            "nfe": round(sum(terms.nfe_per_block), 1), "mean_log_prob": float(terms.log_prob.mean())}


def run_one(data, variant: str, local: bool, args, seed: int) -> dict:
    activation, n_freq = VARIANTS[variant]
    steps = TASKS["tree"].steps
    schedule = tl.OUSchedule.from_steps(steps) if local else tl.OUSchedule.global_flow()
    n_lfm = len(steps) + 1
    width = args.width
    if not local:
        target = n_lfm * count_parameters(tl.MLP(2, width=width, activation=activation, n_freq=n_freq))
        width = width_for_parameters(lambda w: tl.MLP(2, width=w, activation=activation, n_freq=n_freq), target,
                                     start=3 * width)
    torch.manual_seed(seed)
    model = tl.LocalFlowMatching(2, schedule, ConditionalFlowMatcher(sigma=0.0),
                                 lambda n: tl.MLP(2, width=width, activation=activation, n_freq=n_freq))
    start = time.perf_counter()
    model.fit(data.train[: args.n_train], batches_per_block=args.batches * (1 if local else n_lfm),
              batch_size=args.batch_size, lr=1e-3, seed=seed, progress=False)
    fit_s = time.perf_counter() - start
    test = data.test[: args.n_eval]
    on_test = _timed_log_prob(model, test)
    on_grid = _timed_log_prob(model, density_grid(data.test, args.resolution)[2])
    z = torch.randn(args.n_eval, 2, generator=torch.Generator().manual_seed(1))
    model.decode(z, ode=EVAL_ODE)
    return {"variant": variant, "method": "lfm-linear" if local else "global-linear", "seed": seed, "width": width,
            "fit_seconds": fit_s, "test_nll": -on_test["mean_log_prob"], "test": on_test, "grid": on_grid,
            "sample_nfe": sum(model.last_stats.nfe_per_block)}


def markdown(rows: list[dict], args) -> str:
    lines = ["# Evaluation cost by velocity network (tree, linear path, quick-budget sizes)", "",
             f"Exact log-density by dopri5 at 1e-5 on {args.n_eval} test points and on the density map's grid "
             f"({args.resolution}x{args.resolution} points, reaching 0.5 beyond the data); NFE = network evaluations "
             "per path summed over blocks (per block in the last column, block 1 first).", "",
             "| variant | method | seed | test NLL | NFE test | NFE grid | s test | s grid | sample NFE | grid NFE per block |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['method']} | {r['seed']} | {r['test_nll']:.3f} | {r['test']['nfe']:.0f} | "
                     f"{r['grid']['nfe']:.0f} | {r['test']['seconds']:.1f} | {r['grid']['seconds']:.1f} | "
                     f"{r['sample_nfe']:.0f} | {', '.join(f'{v:.0f}' for v in r['grid']['nfe_per_block'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default="lfm,global")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=250, help="LFM batches per block")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--n-eval", type=int, default=500)
    parser.add_argument("--resolution", type=int, default=24)
    parser.add_argument("--name", default="eval_cost")
    args = parser.parse_args(argv)
    data = tl.datasets.load("tree", seed=0)
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        for variant in args.variants.split(","):
            for method in args.methods.split(","):
                rows.append(run_one(data, variant, method == "lfm", args, seed))
                print(rows[-1]["variant"], rows[-1]["method"], seed, f"nll {rows[-1]['test_nll']:.3f}",
                      f"nfe test {rows[-1]['test']['nfe']:.0f} grid {rows[-1]['grid']['nfe']:.0f}", flush=True)
                write_results(RESULTS, args.name, {"rows": rows, "args": vars(args)}, markdown(rows, args))


if __name__ == "__main__":
    main()
