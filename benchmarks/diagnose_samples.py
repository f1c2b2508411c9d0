"""Where do a flow's samples differ from the data? Scale diagnostics behind the NLL / energy-distance split.

On the image-patch tasks LFM wins on NLL by a wide margin and loses on energy distance. This
script trains the methods of one ``lfm-bench`` task (same protocol, ``run_task``) and compares,
for each model:

* the distribution of sample norms with the test data's (quantiles 10/50/90/99%);
* the per-dimension standard deviation of samples over the test data's (median ratio);
* the per-dimension standard deviation of ``encode(test)``, which is 1 for a calibrated model
  (above 1: test data sit in the model's tails, the model is too concentrated);
* the mean NLL of the model's own samples (an estimate of its entropy) next to its test NLL.

    python benchmarks/diagnose_samples.py --task bsds300_patches --budget quick

Writes ``<out>/diagnose_<task>_<budget>.{json,md}``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torchcfm_local.bench.protocol import EVAL_ODE, run_task
from torchcfm_local.bench.registry import BUDGETS, METHODS, TASKS
from torchcfm_local.bench.report import write_results

RESULTS = Path(__file__).resolve().parent / "results"
QUANTILES = (0.1, 0.5, 0.9, 0.99)


def diagnose(model, samples: torch.Tensor, test: torch.Tensor, n: int, seed: int) -> dict:
    test, samples = test[:n], samples[:n]
    q = torch.tensor(QUANTILES)
    estimator = "exact" if test.shape[1] <= 16 else "hutchinson"

    def nll(x):
        gen = torch.Generator().manual_seed(seed)
        return float(-model.log_prob(x, ode=EVAL_ODE, estimator=estimator, generator=gen).mean())

    z = model.encode(test, ode=EVAL_ODE)
    return {  # the test NLL itself is the benchmark's (on all test points), not recomputed here
        "sample_norm_quantiles": torch.quantile(samples.norm(dim=1), q).tolist(),
        "test_norm_quantiles": torch.quantile(test.norm(dim=1), q).tolist(),
        "std_ratio_median": float((samples.std(0) / test.std(0)).median()),
        "encoded_test_std_median": float(z.std(0).median()),
        "nll_own_samples": nll(samples),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="bsds300_patches", choices=sorted(TASKS))
    parser.add_argument("--budget", default="quick", choices=sorted(BUDGETS))
    parser.add_argument("--methods", default="global-linear,lfm-linear")
    parser.add_argument("--n", type=int, default=1000, help="test points and samples per diagnostic")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; expected names from {sorted(METHODS)}")

    run = run_task(args.task, args.budget, methods, seed=args.seed, progress=False)
    rows = []
    for summary in run.result["summary"]:
        method = summary["method"]
        row = {"method": method, "test_nll": summary["test_nll"], "energy_distance": summary["energy_distance"]}
        row.update(diagnose(run.models[method], run.samples[method], run.test, args.n, args.seed))
        rows.append(row)
    result = {"task": args.task, "budget": args.budget, "seed": args.seed, "n": args.n, "quantiles": QUANTILES,
              "rows": rows, "bench": run.result}
    lines = [f"### Sample diagnostics, {args.task} ({args.budget} budget, seed {args.seed}, {args.n} points)\n",
             "| method | test NLL | energy dist. | sample norm q10/50/90/99 | test norm q10/50/90/99 "
             "| sample/test std (median dim) | std of encode(test) (median dim) | NLL of own samples |",
             "|---|---|---|---|---|---|---|---|"]
    def fmt(values):
        return "/".join(f"{x:.3f}" for x in values)

    for r in rows:
        lines.append(f"| {r['method']} | {r['test_nll']:.2f} | {r['energy_distance']:.4f} | "
                     f"{fmt(r['sample_norm_quantiles'])} | {fmt(r['test_norm_quantiles'])} | "
                     f"{r['std_ratio_median']:.3f} | {r['encoded_test_std_median']:.3f} | {r['nll_own_samples']:.2f} |")
    text = "\n".join(lines)
    write_results(args.out, f"diagnose_{args.task}_{args.budget}", result, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
