"""Reflow: does retraining a flow on its own couplings straighten it, and what does that buy at few steps?

For each seed, on a 2-D dataset (default ``tree``):

* LFM: N blocks (default 4) of ``MLP(2, width, depth)``, ``OUSchedule(h0, rho, N)``, ``batches``
  steps per block; global flow: one block whose MLP width matches the LFM's parameter count,
  ``N * batches`` steps (equal parameters, equal batches), both on the trigonometric path (``--path
  linear``: the straight path, a control that separates the change of path from the new couplings);
* each model is reflowed (:func:`torchcfm_local.reflow`: ``n_pairs`` couplings decoded with dopri5
  at atol = rtol = 1e-5, every block retrained ``reflow_batches`` steps on the linear path, warm);
* original and reflowed model are measured on the same ``n_eval`` z: the NFE of dopri5 (1e-5) per
  sample, the energy distance (squared, U-statistic; lower is better) of their samples to held-out
  test data with dopri5 and with 1, 2, 4 Euler steps per block, and the reflow report's mean
  squared deviation of those Euler decodes from the dopri5 decode (blocks' space).

Mean ± standard error over seeds (SE = sample std / sqrt(n), ``bench.seeds.mean_se``); each seed
draws its own data, initializations, couplings and z. Writes ``benchmarks/results/reflow.json`` and
``reflow.md`` (``reflow_<budget>`` for budgets other than ``medium``, ``..._linear`` with ``--path
linear``) with the command, commit and machine.

    python benchmarks/bench_reflow.py --budget smoke --seeds 0       # < 1 min: checks that it runs
    python benchmarks/bench_reflow.py --budget medium --seeds 0,1,2  # the recorded run
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import torchcfm_local as tl
from torchcfm_local.bench.protocol import matched_width
from torchcfm_local.bench.report import write_results
from torchcfm_local.bench.seeds import mean_se, parse_seeds
from torchcfm_local.networks import count_parameters

RESULTS = Path(__file__).resolve().parent / "results"
ACCURATE = tl.ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)

#: name -> settings (``batches``: per LFM block; the global flow gets N times as many)
BUDGETS = {
    "smoke": dict(n_train=2000, n_eval=500, width=32, depth=2, batches=100, n_pairs=1000, reflow_batches=100),
    "quick": dict(n_train=10000, n_eval=2000, width=64, depth=3, batches=1000, n_pairs=10000, reflow_batches=1000),
    "medium": dict(n_train=20000, n_eval=4000, width=128, depth=3, batches=3000, n_pairs=20000, reflow_batches=2000),
}



def build_models(dim: int, args, cfg: dict):
    """The LFM and the global flow of equal parameter count (initialized under the current seed), on
    the path ``args.path``."""
    from torchcfm import conditional_flow_matching as cfm

    def matcher():
        return cfm.VariancePreservingConditionalFlowMatcher(sigma=0.0) if args.path == "trig" \
            else cfm.ConditionalFlowMatcher(sigma=0.0)

    lfm = tl.LocalFlowMatching(dim, tl.OUSchedule(args.h0, args.rho, args.blocks), matcher(),
                               velocity_factory=lambda n: tl.MLP(dim, width=cfg["width"], depth=cfg["depth"]))
    width = matched_width(dim, count_parameters(lfm), cfg["depth"])
    glob = tl.LocalFlowMatching(dim, tl.OUSchedule.global_flow(), matcher(),
                                velocity_factory=lambda n: tl.MLP(dim, width=width, depth=cfg["depth"]))
    return lfm, glob


def measure(model, z: torch.Tensor, test: torch.Tensor, euler: list[int]) -> dict:
    """dopri5 NFE and the energy distance to ``test`` with dopri5 and with each Euler step count per block."""
    x = model.decode(z, ode=ACCURATE)
    out = {"adaptive_nfe": model.last_stats.nfe, "ed_dopri5": tl.energy_distance(x, test)}
    for k in euler:
        out[f"ed_euler{k}"] = tl.energy_distance(model.decode(z, ode=tl.ODEOptions(solver="euler", steps=k)), test)
    return out


def run_seed(seed: int, args, cfg: dict) -> list[dict]:
    """Train, reflow and measure both models for one seed; one row per (model, original/reflowed)."""
    ds = tl.datasets.load(args.dataset, n_train=cfg["n_train"], n_val=100, n_test=cfg["n_eval"], seed=seed)
    torch.manual_seed(seed)
    lfm, glob = build_models(ds.dim, args, cfg)
    z = torch.randn(cfg["n_eval"], ds.dim, generator=torch.Generator().manual_seed(10_000 + seed))
    rows = []
    for family, model, batches in (("global", glob, args.blocks * cfg["batches"]), ("LFM", lfm, cfg["batches"])):
        tick = time.perf_counter()
        model.fit(ds.train, batches_per_block=batches, batch_size=args.batch_size, seed=seed, progress=False,
                  encode_final_pool=False)
        train_seconds = time.perf_counter() - tick
        new, report = tl.reflow(model, cfg["n_pairs"], batches_per_block=cfg["reflow_batches"],
                                batch_size=args.batch_size, lr=args.reflow_lr, n_eval=min(1000, cfg["n_eval"]),
                                euler_steps=args.euler, seed=seed)
        for stage, m, straight in (("original", model, report.before), ("reflowed", new, report.after)):
            row = {"seed": seed, "family": family, "stage": stage, "blocks": m.n_blocks, "params": count_parameters(m),
                   **measure(m, z, ds.test, args.euler),
                   **{f"euler{k}_mse": v for k, v in straight.euler_mse.items()}}
            row["seconds"] = train_seconds if stage == "original" else report.total_seconds
            rows.append(row)
            print(f"  seed {seed} {family:<6} {stage:<8} NFE {row['adaptive_nfe']:6.1f}  ED dopri5 "
                  f"{row['ed_dopri5']:.4f}  " + "  ".join(f"E{k} {row[f'ed_euler{k}']:.4f}" for k in args.euler),
                  flush=True)
    return rows


METRICS = ("adaptive_nfe", "ed_dopri5")


def aggregate(rows: list[dict], euler: list[int]) -> list[dict]:
    """Per (family, stage): mean ± SE over seeds of every metric."""
    names = list(METRICS) + [f"ed_euler{k}" for k in euler] + [f"euler{k}_mse" for k in euler] + ["seconds"]
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        for stage in ("original", "reflowed"):
            group = [r for r in rows if r["family"] == family and r["stage"] == stage]
            out.append({"family": family, "stage": stage, "blocks": group[0]["blocks"], "n_seeds": len(group),
                        **{n: mean_se([r[n] for r in group]) for n in names}})
    return out


def _pm(stat: dict, digits: int) -> str:
    return f"{stat['mean']:.{digits}f}" + ("" if stat["se"] is None else f" ± {stat['se']:.{digits}f}")


def markdown(agg: list[dict], args, cfg: dict) -> str:
    euler = args.euler
    lines = [f"## Reflow on {args.dataset}, {args.budget} budget, originals on the {args.path} path "
             f"({agg[0]['n_seeds']} seed(s): {args.seeds})", "",
             "Mean ± SE over seeds. NFE: dopri5 (atol = rtol = 1e-5) evaluations per sample. ED: energy distance "
             "(squared, U-statistic) of the samples to held-out test data, lower is better; Euler-k: k steps per "
             "block (k * blocks NFE). Euler-k dev.: mean squared deviation of the Euler-k decode from the dopri5 "
             "decode of the same z (blocks' space). s: training (original) or reflow (reflowed) seconds.", "",
             f"Settings: {cfg}, blocks={args.blocks}, h0={args.h0}, rho={args.rho}, batch_size={args.batch_size}, "
             f"reflow_lr={args.reflow_lr}.", "",
             "| model | | NFE | ED dopri5 | " + " | ".join(f"ED Euler-{k}" for k in euler) + " | "
             + " | ".join(f"Euler-{k} dev." for k in euler) + " | s |",
             "|---|---|---|---|" + "---|" * (2 * len(euler)) + "---|"]
    for r in agg:
        lines.append(f"| {r['family']} ({r['blocks']} block{'s' if r['blocks'] > 1 else ''}) | {r['stage']} "
                     f"| {_pm(r['adaptive_nfe'], 1)} | {_pm(r['ed_dopri5'], 4)} | "
                     + " | ".join(_pm(r[f"ed_euler{k}"], 4) for k in euler) + " | "
                     + " | ".join(_pm(r[f"euler{k}_mse"], 4) for k in euler) + f" | {_pm(r['seconds'], 1)} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", choices=sorted(BUDGETS), default="medium")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated ints >= 0")
    p.add_argument("--dataset", default="tree")
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--h0", type=float, default=0.1)
    p.add_argument("--rho", type=float, default=1.5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reflow-lr", type=float, default=1e-3)
    p.add_argument("--path", choices=("trig", "linear"), default="trig", help="path the original models are trained on")
    p.add_argument("--euler", default="1,2,4", help="Euler steps per block, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS), help="directory of the result files")
    args = p.parse_args(argv)
    seeds = parse_seeds(args.seeds)
    args.euler = sorted({int(k) for k in args.euler.split(",")})
    cfg = BUDGETS[args.budget]
    torch.set_num_threads(args.threads)
    start, rows = time.perf_counter(), []
    for seed in seeds:
        rows += run_seed(seed, args, cfg)
    agg = aggregate(rows, args.euler)
    md = markdown(agg, args, cfg)
    total = time.perf_counter() - start
    print(md)
    print(f"total {total:.0f} s")
    name = ("reflow" if args.budget == "medium" else f"reflow_{args.budget}") + ("" if args.path == "trig" else "_linear")
    write_results(Path(args.out), name, {"settings": {**vars(args), **cfg}, "seeds": seeds, "total_seconds": total,
                                         "rows": rows, "aggregate": agg}, md)
    return agg


if __name__ == "__main__":
    main()
