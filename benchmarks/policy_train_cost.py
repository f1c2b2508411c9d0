"""Training cost of LFM and global flow policies at equal parameters: FLOPs against wall time, by width.

At equal parameters and epochs an LFM policy does a fraction of the global flow's arithmetic (each
training row goes through one block network), but with split batches it takes N times the
optimizer steps, each small; where per-step overhead rather than arithmetic sets the wall time
(small networks, a CPU) the FLOP saving does not show in seconds. This fits both flows of the
policy recipe on the point task's demos at several widths and reports, per width, the parameters,
the training FLOPs (:mod:`torchcfm_local.policy.flops`) and the wall time of each method, and
the LFM / global ratios. No rollouts: the trained policies are not evaluated.

    python benchmarks/policy_train_cost.py --widths 64,128,256,512 --epochs 10

Wall times are of one fit per method and width, alternating the methods, after a warm-up fit of
each (the first fit of a process pays one-time imports), with the torch threads the process has;
run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from torchcfm_local.bench.report import write_results
from torchcfm_local.policy import collect_demos
from torchcfm_local.policy.cli import build_policy
from torchcfm_local.policy.flops import fit_flops, network_flops
from torchcfm_local.policy.protocol import _batch_size
from torchcfm_local.policy.recipe import PolicyRecipe

ROOT = Path(__file__).resolve().parent.parent


def measure(method: str, demos, recipe: PolicyRecipe) -> dict:
    """One fit of ``method``: its parameters, training FLOPs and wall seconds."""
    torch.manual_seed(0)
    policy = build_policy(method, demos.obs_dims, demos.action.shape[1], recipe=recipe)
    costs = network_flops(policy)
    start = time.perf_counter()
    report = policy.fit(demos, **recipe.fit_options(), seed=0, progress=False)
    seconds = time.perf_counter() - start
    flops = fit_flops(costs, report, _batch_size(policy, demos, recipe), int(demos.action.shape[0]))
    return {"parameters": policy.n_parameters(), "flops": flops, "seconds": seconds,
            "steps": sum(b.batches for b in report.blocks)}


def table(rows: list[dict], args) -> str:
    lines = [f"## Training cost at equal parameters, point task ({args.demos} demos, {args.epochs:g} epochs)", "",
             "| LFM block width | parameters | GFLOPs: global / LFM | LFM / global | optimizer steps: global / LFM "
             "| seconds: global / LFM | LFM / global |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        g, lfm = r["global"], r["lfm"]
        lines.append(f"| {r['width']} | {lfm['parameters']} | {g['flops'] / 1e9:.1f} / {lfm['flops'] / 1e9:.1f} "
                     f"| {lfm['flops'] / g['flops']:.2f} | {g['steps']} / {lfm['steps']} "
                     f"| {g['seconds']:.1f} / {lfm['seconds']:.1f} | {lfm['seconds'] / g['seconds']:.2f} |")
    lines += ["", f"The default policy recipe otherwise; torch threads: {torch.get_num_threads()}. LFM's FLOPs "
              "include its pushforwards; the global network is widened to LFM's parameters."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="64,128,256,512", help="comma-separated LFM block widths")
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--demos", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    try:
        widths = [int(w) for w in args.widths.split(",")]
        if any(w < 1 for w in widths) or args.epochs <= 0 or args.demos < 1:
            raise ValueError
    except ValueError:
        parser.error("--widths takes positive ints separated by commas; --epochs and --demos must be positive")
    demos = collect_demos("point", args.demos, seed=0)
    for method in ("global", "lfm"):  # warm-up: the first fit of a process pays one-time imports (optimizer, ODE)
        measure(method, collect_demos("point", 5, seed=0), PolicyRecipe(width=8, epochs=1.0))
    rows = []
    for width in widths:
        recipe = PolicyRecipe(width=width, epochs=args.epochs)
        rows.append({"width": width, **{m: measure(m, demos, recipe) for m in ("global", "lfm")}})
        print(rows[-1], flush=True)
    text = table(rows, args)
    write_results(args.out, "policy_train_cost", {"epochs": args.epochs, "demos": args.demos, "rows": rows,
                                                  "torch_threads": torch.get_num_threads()}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
