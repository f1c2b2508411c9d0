"""Quality vs NFE at equal parameters: teacher LFM and global flow, distilled, reflowed, and both.

For each dataset (default: tree and rose in 2-D, the 7-mode ``mixture_unequal`` with weights 0.4 ...
0.02, the 8-d patches3x3 and the 61-d digits61) and each seed:

* teacher LFM: N blocks of ``MLP(d, width, depth)``, ``OUSchedule(h0, rho, N)``, trained with
  ``batches`` steps per block; teacher global flow: one block whose MLP width is chosen so that its
  parameter count equals the sum over the LFM blocks, trained with ``N * batches`` steps (equal
  parameters, equal batches);
* teachers sampled with dopri5 (atol = rtol = 1e-5, the "quality" preset), Euler, midpoint (the
  "fast" preset) and RK4 at several steps per block;
* distilled LFM: ``distill(lfm, k)`` for every k dividing N: N/k NFE, N/k students of the default
  width ``round(width * sqrt(k))``;
* distilled global flow, **equal parameters at equal NFE** (the main comparison):
  ``distill(global, splits=M, student_factory=...)`` for M in ``--global-steps`` that is also an
  LFM NFE, with M students of the width (``networks.width_for_parameters``) whose M students
  together have the parameter count of the LFM distilled sampler with M NFE. With the same MLP
  configuration that is the LFM student's width, so the counts agree exactly. These students are
  narrower than the global teacher, so they cannot warm start from its weights (``distill`` warm
  starts only matching architectures) and train from a fresh initialization; the table's "warm"
  column says which students did;
* the unequal variant kept as an extra row: the global flow's default students (the teacher's
  width, "unequal params (M x teacher)": M times the teacher's parameters);
* reflow: each teacher retrained on ``--reflow-pairs`` of its own couplings (``tl.reflow``,
  ``--reflow-batches`` per LFM block, N times as many for the global flow's block), sampled with
  dopri5 and with Euler at 1, 2 steps per block (LFM: N, 2N NFE) or 1, 2, 4, 2N steps (global), and
  then distilled as above (``--no-reflow-distill`` skips that).

Per sampler: energy distance (squared, U-statistic, lower is better) between ``n_eval`` samples
and held-out test data; for datasets with known modes (``info["modes"]``) the mode TV
(``metrics.mode_weight_error``: every sample to its nearest centre, total variation between those
frequencies and the true weights); wall clock per 1000 samples (median of ``--timing-reps`` runs);
the total parameter count of the sampler; the compute that made it: optimizer samples (batches x
batch size of the teacher, then of the reflow and the students) and the teacher's network
evaluations spent on distillation pairs and reflow couplings (and those times the evaluated
network's parameters, since one global evaluation costs about N LFM-block evaluations).
Mean ± SE over ``--seeds`` (``bench.seeds.mean_se``). Writes ``distill.json`` / ``distill.md``
(with the command, commit and machine) and the figures ``distill_quality_vs_nfe.png``,
``distill_samples_<dataset>.png`` to ``--out`` (default ``benchmarks/results``).

    python benchmarks/bench_distill.py                # the recorded run: 3 seeds x 5 datasets, hours on 2 CPU cores
                                                      # (one seed of the earlier version without the mixture, the
                                                      # equal-parameter and the reflow rows took 55 min)
    python benchmarks/bench_distill.py --quick        # a smoke run (< 2 min, nothing written)
    python benchmarks/bench_distill.py --quick --out /tmp/d   # a smoke run that writes its files
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distill_rows  # noqa: E402  (the helper module next to this script)

from torchcfm_local.bench.report import write_results  # noqa: E402
from torchcfm_local.bench.seeds import mean_se, parse_seeds  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

FULL = dict(datasets=["tree", "rose", "mixture_unequal", "patches3x3", "digits61"], seeds="0,1,2", n_train=20000,
            n_eval=4000, width=128, depth=3, batches=1500, n_pairs=20000, distill_batches=1500, reflow_pairs=20000,
            reflow_batches=1500, timing_n=1000, timing_reps=3)
QUICK = dict(datasets=["mixture_unequal", "tree"], seeds="0", n_train=2000, n_eval=500, width=32, depth=2, batches=100,
             n_pairs=600, distill_batches=100, reflow_pairs=600, reflow_batches=50, timing_n=200, timing_reps=1)
STATS = ("nfe", "energy_distance", "mode_tv", "sec_per_1000", "train_samples", "pair_nfe", "pair_cost")
SECTIONS = (("equal", "Equal parameters at equal NFE: distilled LFM vs distilled global flow "
                      "(M students of equal total parameters; cold-started global students)"),
            ("reflow", "Reflow: each teacher reflowed, sampled with dopri5 / Euler, and reflowed then distilled "
                       "(equal parameters at equal NFE)"),
            ("teacher", "Teachers with ODE solvers"),
            ("unequal", "Extra: distilled global flow with the teacher's width, unequal params (M x teacher)"))


def aggregate(rows: list[dict]) -> list[dict]:
    """One row per (dataset, method): mean ± SE over seeds of :data:`STATS` (mode TV: None without modes)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    out = []
    for (dataset, method), rs in groups.items():
        first = rs[0]
        agg = {k: first[k] for k in ("dataset", "method", "family", "kind", "group", "params", "warm")}
        agg["seeds"] = [r["seed"] for r in rs]
        if len({r["params"] for r in rs}) != 1 or len({r["warm"] for r in rs}) != 1:
            agg["params_per_seed"], agg["warm"] = [r["params"] for r in rs], "/".join(r["warm"] for r in rs)
        for k in STATS:
            agg[k] = None if first[k] is None else mean_se([r[k] for r in rs])
        out.append(agg)
    return out


def _pm(stat, digits: int) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.{digits}f}" + ("" if stat["se"] is None else f" ± {stat['se']:.{digits}f}")


def section_table(agg: list[dict], group: str) -> str:
    rows = [r for r in agg if r["group"] == group or (group == "equal" and r["group"] == "reference")]
    if group == "equal":  # by dataset, then NFE, the reference first
        order = {d: i for i, d in enumerate(dict.fromkeys(r["dataset"] for r in agg))}
        rows.sort(key=lambda r: (order[r["dataset"]], r["group"] != "reference", r["nfe"]["mean"],
                                 r["family"] != "LFM distilled"))
    out = ["| dataset | sampler | NFE | energy distance | mode TV | ms / 1000 | params | warm start "
           "| train samples (k) | teacher NFE on pairs (M) | pair cost (G param-evals) |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['dataset']} | {r['method']} | {r['nfe']['mean']:.1f} | {_pm(r['energy_distance'], 5)} "
                   f"| {_pm(r['mode_tv'], 3)} | {r['sec_per_1000']['mean'] * 1e3:.1f} | {r['params']} | {r['warm']} "
                   f"| {r['train_samples']['mean'] / 1e3:.0f} | {r['pair_nfe']['mean'] / 1e6:.2f} "
                   f"| {r['pair_cost']['mean'] / 1e9:.2f} |")
    return "\n".join(out)


def markdown(agg: list[dict], args) -> str:
    seeds = sorted({s for r in agg for s in r["seeds"]})
    lines = [f"## Distillation and reflow: quality vs NFE at equal parameters ({len(seeds)} seed(s): "
             f"{', '.join(map(str, seeds))})", "",
             "Mean ± SE over seeds (SE = sample std / sqrt(n)). Energy distance: squared, U-statistic, to held-out "
             "test data, lower is better. Mode TV: nearest-centre mode frequencies vs the true weights (total "
             "variation; only for datasets with known modes; the data row is its sampling-noise floor). params: "
             "all parameters of the sampler (teachers: all blocks; distilled: all students). warm start: whether "
             "the students started from the teacher block's weights, possible only for the teacher's architecture "
             "(the equal-parameter global students are narrower than the global teacher and start cold). Train "
             "samples: optimizer batches x batch size of everything that made the sampler (teacher training, "
             "reflow, students). Teacher NFE on pairs: network evaluations on distillation pairs and reflow "
             "couplings; pair cost: the same weighted by the evaluated network's parameters.", "",
             f"Settings: N={args.blocks} blocks, h0={args.h0}, rho={args.rho}, "
             f"LFM block MLP({args.width}x{args.depth}), batches/block={args.batches}, batch={args.batch_size}, "
             f"n_train={args.n_train}, n_eval={args.n_eval}, "
             f"n_pairs={args.n_pairs}, distill_batches={args.distill_batches}, reflow_pairs={args.reflow_pairs}, "
             f"reflow_batches/block={args.reflow_batches}."]
    for group, title in SECTIONS:
        if any(r["group"] == group for r in agg):
            lines += ["", f"### {title}", "", section_table(agg, group)]
    return "\n".join(lines)


def figures(agg: list[dict], extras: dict, datasets: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    styles = {"LFM teacher": ("C0", "o", ":"), "global teacher": ("C1", "o", ":"), "LFM distilled": ("C0", "s", "-"),
              "global distilled": ("C1", "s", "-"), "LFM reflow": ("C2", "^", ":"), "global reflow": ("C3", "^", ":")}
    for ax, name in zip(axes[0], datasets):
        sub = [r for r in agg if r["dataset"] == name and r["group"] != "unequal"]
        for fam, (color, marker, ls) in styles.items():
            pts = sorted((r["nfe"]["mean"], r["energy_distance"]["mean"]) for r in sub
                         if r["family"] == fam and r["kind"] in ("euler", "distilled"))
            if pts:
                label = fam + ("" if "distilled" in fam else " (euler)")
                ax.plot(*zip(*pts), color=color, marker=marker, ls=ls, label=label)
            for r in sub:
                if r["family"] == fam and r["kind"] == "adaptive":
                    ax.axhline(r["energy_distance"]["mean"], color=color, ls="--", lw=1,
                               label=f"{fam} dopri5 ({r['nfe']['mean']:.0f} NFE)")
        floor = [r for r in sub if r["kind"] == "reference"]
        if floor:
            ax.axhline(floor[0]["energy_distance"]["mean"], color="gray", lw=1, label="data vs data")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set(xlabel="NFE per sample", ylabel="energy distance to test data (lower is better)", title=name)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(out / "distill_quality_vs_nfe.png", dpi=120)
    plt.close(fig)
    for name in datasets:
        grids = extras[name]["grids"]
        lo, hi = (float(v) for v in torch.quantile(grids["data"][:, :2].flatten(), torch.tensor([0.005, 0.995])))
        cols = (len(grids) + 1) // 2
        fig, axes = plt.subplots(2, cols, figsize=(3 * cols, 6), squeeze=False)
        for ax, (title, x) in zip(axes.flat, grids.items()):
            x = x[:3000].numpy()
            ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5)
            ax.set(xlim=(lo, hi), ylim=(lo, hi), xticks=[], yticks=[])  # first two coordinates
            ax.set_title(title, fontsize=8)
        for ax in list(axes.flat)[len(grids):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(out / f"distill_samples_{name}.png", dpi=110)
        plt.close(fig)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", help=f"default {FULL['datasets']} ({QUICK['datasets']} with --quick)")
    p.add_argument("--seeds", help="comma-separated ints >= 0; default 0,1,2 (0 with --quick)")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-eval", type=int)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--h0", type=float, default=0.1)
    p.add_argument("--rho", type=float, default=1.5)
    p.add_argument("--width", type=int, help="LFM block MLP width")
    p.add_argument("--depth", type=int)
    p.add_argument("--batches", type=int, help="teacher batches per LFM block (global: N times)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-pairs", type=int, help="distillation pairs per stage")
    p.add_argument("--distill-batches", type=int, help="optimizer steps per student")
    p.add_argument("--distill-lr", type=float, default=1e-3)
    p.add_argument("--global-steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--reflow-pairs", type=int, help="reflow couplings (0: no reflow rows)")
    p.add_argument("--reflow-batches", type=int, help="reflow steps per LFM block (global: N times)")
    p.add_argument("--reflow-lr", type=float, default=1e-3)
    p.add_argument("--no-reflow-distill", dest="reflow_distill", action="store_false",
                   help="skip distilling the reflowed teachers")
    p.add_argument("--timing-n", type=int, help="samples per timing run")
    p.add_argument("--timing-reps", type=int, help="timing runs (median)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/results; with --quick: none, "
                                            "nothing is written unless --out is given)")
    p.add_argument("--no-figures", dest="figures", action="store_false")
    p.add_argument("--quick", action="store_true", help="tiny-budget smoke run (< 2 min); explicit options win")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.seeds = parse_seeds(args.seeds)
    if args.out is None and not args.quick:
        args.out = RESULTS
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, extras = [], {}
    for seed in args.seeds:
        for name in args.datasets:
            r, e = distill_rows.run_dataset(name, seed, args)
            rows += r
            extras.setdefault(name, e)  # the first seed's sample grids
            extras[name].setdefault("info_per_seed", []).append(e["info"])
    total = time.perf_counter() - start
    agg = aggregate(rows)
    md = markdown(agg, args)
    print(md)
    print(f"total {total:.0f} s")
    if args.out is not None:
        settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        write_results(args.out, "distill", {"settings": settings, "total_seconds": total, "rows": agg,
                                            "per_seed_rows": rows,
                                            "info": {n: e["info_per_seed"] for n, e in extras.items()}}, md)
        if args.figures:
            figures(agg, extras, args.datasets, args.out)
    return agg


if __name__ == "__main__":
    main()
