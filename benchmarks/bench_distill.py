"""Quality vs NFE: teacher LFM and global flow with ODE solvers, and both distilled into one-step students.

For each dataset (default: tree and rose in 2-D, the 8-d patches3x3 and the 61-d digits61):

* teacher LFM: N blocks of ``MLP(d, width, depth)``, ``OUSchedule(h0, rho, N)``, trained with
  ``batches`` steps per block;
* teacher global flow: one block whose MLP width is chosen so that its parameter count equals the
  sum over the LFM blocks, trained with ``N * batches`` steps (equal parameters, equal batches);
* teachers sampled with dopri5 (atol = rtol = 1e-5, the "quality" preset), Euler at N, 2N, 4N
  total steps (and more for the global flow), midpoint (the "fast" preset) and RK4;
* distilled LFM: ``distill(lfm, k)`` for every k dividing N (N/k NFE);
* distilled global flow: ``distill(global, splits=M)`` for M in 1, 2, 4 (M NFE);

quality = energy distance (squared, U-statistic, larger is worse) between ``n_eval`` samples and
held-out test data; wall-clock per 1000 samples (median of 3). Writes
``benchmarks/results/distill.json`` / ``distill.md`` and the figures
``distill_quality_vs_nfe.png`` and ``distill_samples_<dataset>.png``.

    python benchmarks/bench_distill.py            # the recorded run (~10-15 min on 2 CPU cores)
    python benchmarks/bench_distill.py --quick    # a smoke run
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

import torchcfm_local as tl
from torchcfm_local.bench.protocol import matched_width
from torchcfm_local.bench.report import write_results
from torchcfm_local.distillation import distill
from torchcfm_local.sampling import preset_options

RESULTS = Path(__file__).resolve().parent / "results"
QUALITY = tl.ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def timed_samples(fn, n_eval: int, generator_seed: int):
    """(samples of size n_eval, NFE, seconds per 1000 samples (median of 3 runs of 1000))."""
    samples, nfe = fn(n_eval, torch.Generator().manual_seed(generator_seed))
    times = []
    for r in range(3):
        tick = time.perf_counter()
        fn(1000, torch.Generator().manual_seed(100 + r))
        times.append(time.perf_counter() - tick)
    return samples, nfe, statistics.median(times)


def evaluate(name, family, kind, fn, test, n_eval, params, extra=None):
    samples, nfe, sec = timed_samples(fn, n_eval, 0)
    row = {"method": name, "family": family, "kind": kind, "nfe": float(nfe),
           "energy_distance": tl.energy_distance(samples, test), "sec_per_1000": sec, "params": params}
    row.update(extra or {})
    print(f"  {name:<34} NFE {nfe:7.1f}  ED {row['energy_distance']:.5f}  {1e3 * sec:8.1f} ms/1000", flush=True)
    return row, samples


def teacher_sampler(model, ode):
    def fn(n, gen):
        x = model.sample(n, ode=ode, generator=gen)
        return x, model.last_stats.nfe
    return fn


def student_sampler(sampler):
    def fn(n, gen):
        return sampler.sample(n, generator=gen), sampler.last_stats.nfe
    return fn


def run_dataset(name: str, args) -> tuple[list[dict], dict]:
    ds = tl.datasets.load(name, seed=0)  # fixed-size tables (digits61) keep all their rows
    g = torch.Generator().manual_seed(0)
    train = ds.train[torch.randperm(len(ds.train), generator=g)[: args.n_train]]
    test = ds.test[torch.randperm(len(ds.test), generator=g)[: args.n_eval]]
    dim, N = ds.dim, args.blocks
    torch.manual_seed(0)
    lfm = tl.LocalFlowMatching(dim, tl.OUSchedule(args.h0, args.rho, N),
                               velocity_factory=lambda n: tl.MLP(dim, width=args.width, depth=args.depth))
    lfm_params = n_params(lfm)
    g_width = matched_width(dim, lfm_params, args.depth)
    torch.manual_seed(0)
    glob = tl.LocalFlowMatching(dim, tl.OUSchedule.global_flow(),
                                velocity_factory=lambda n: tl.MLP(dim, width=g_width, depth=args.depth))
    info = {"dataset": name, "dim": dim, "n_train": len(train), "n_test": len(test), "n_eval": args.n_eval, "lfm_params": lfm_params,
            "global_params": n_params(glob), "global_width": g_width, "schedule": list(lfm.schedule.step_sizes[:-1])}
    print(f"{name}: LFM {N} x MLP({args.width}x{args.depth}) = {lfm_params} params; "
          f"global MLP({g_width}x{args.depth}) = {info['global_params']} params", flush=True)

    tick = time.perf_counter()
    lfm.fit(train, batches_per_block=args.batches, batch_size=args.batch_size, seed=0, progress=False,
            encode_final_pool=False)
    info["lfm_train_seconds"] = time.perf_counter() - tick
    tick = time.perf_counter()
    glob.fit(train, batches_per_block=N * args.batches, batch_size=args.batch_size, seed=0, progress=False,
             encode_final_pool=False)
    info["global_train_seconds"] = time.perf_counter() - tick
    print(f"  trained: LFM {info['lfm_train_seconds']:.0f} s, global {info['global_train_seconds']:.0f} s", flush=True)

    rows, grids = [], {"data": ds.val}
    ref = tl.energy_distance(train[: len(test)], test)
    rows.append({"method": "data (train subset vs test)", "family": "reference", "kind": "reference", "nfe": 0.0,
                 "energy_distance": ref, "sec_per_1000": 0.0, "params": 0})
    print(f"  data floor ED {ref:.5f}", flush=True)

    # ---- teachers with ODE solvers
    solver_grid = {"LFM": [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("midpoint", 2), ("midpoint", 4),
                           ("rk4", 1), ("rk4", 2)],
                   "global": [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("euler", 16), ("midpoint", 4),
                              ("midpoint", 8), ("rk4", 1), ("rk4", 2), ("rk4", 4)]}
    for label, model, fam in (("LFM", lfm, "LFM teacher"), ("global", glob, "global teacher")):
        params = n_params(model)
        row, x = evaluate(f"{label} teacher dopri5 (quality)", fam, "adaptive", teacher_sampler(model, QUALITY),
                          test, len(test), params)
        rows.append(row)
        grids[f"{label} teacher dopri5"] = x
        fast = preset_options("fast")
        for solver, steps in solver_grid[label]:
            ode = tl.ODEOptions(solver=solver, steps=steps)
            tag = " (fast preset)" if ode == fast else ""
            row, _ = evaluate(f"{label} teacher {solver} x{steps}/block{tag}", fam, solver,
                              teacher_sampler(model, ode), test, len(test), params)
            rows.append(row)

    # ---- distilled
    common = dict(n_pairs=args.n_pairs, n_val=1000, batches=args.distill_batches, batch_size=args.batch_size,
                  lr=args.distill_lr, teacher_ode=QUALITY, seed=0, progress=False)
    plans = [("LFM", lfm, {"k": k}, N // k) for k in range(1, N + 1) if N % k == 0]
    plans += [("global", glob, {"splits": m}, m) for m in args.global_steps]
    for label, teacher, plan, nfe in plans:
        sampler = distill(teacher, **plan, **common)
        rep = sampler.report
        (key, value), = plan.items()
        name_ = f"{label} distilled {'k' if key == 'k' else 'M'}={value}"
        row, x = evaluate(name_, f"{label} distilled", "distilled", student_sampler(sampler), test,
                          len(test), n_params(sampler),
                          {key: value, "distill_seconds": rep.total_seconds, "end_mse": rep.end_mse,
                           "stage_val_mse": [s.val_mse for s in rep.stages]})
        rows.append(row)
        grids[f"{label} distilled {nfe} NFE"] = x
    for r in rows:
        r["dataset"] = name
    return rows, {"info": info, "grids": grids}


def table(rows: list[dict]) -> str:
    out = ["| dataset | method | NFE | energy distance | ms / 1000 samples | params |", "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['dataset']} | {r['method']} | {r['nfe']:.0f} | {r['energy_distance']:.5f} "
                   f"| {1e3 * r['sec_per_1000']:.1f} | {r['params']} |")
    return "\n".join(out)


def figures(rows: list[dict], extras: dict, datasets: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    styles = {"LFM teacher": ("C0", "o", ":"), "global teacher": ("C1", "o", ":"),
              "LFM distilled": ("C0", "s", "-"), "global distilled": ("C1", "s", "-")}
    for ax, name in zip(axes[0], datasets):
        sub = [r for r in rows if r["dataset"] == name]
        for fam, (color, marker, ls) in styles.items():
            pts = sorted((r["nfe"], r["energy_distance"]) for r in sub if r["family"] == fam and r["kind"] in ("euler", "distilled"))
            if pts:
                label = fam + (" (euler)" if "teacher" in fam else "")
                ax.plot(*zip(*pts), color=color, marker=marker, ls=ls, label=label)
            for r in sub:
                if r["family"] == fam and r["kind"] == "adaptive":
                    ax.axhline(r["energy_distance"], color=color, ls="--", lw=1, label=f"{fam} dopri5 ({r['nfe']:.0f} NFE)")
        floor = [r for r in sub if r["kind"] == "reference"]
        if floor:
            ax.axhline(floor[0]["energy_distance"], color="gray", lw=1, label="data vs data")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("NFE per sample")
        ax.set_ylabel("energy distance to test data (lower is better)")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(RESULTS / "distill_quality_vs_nfe.png", dpi=120)
    plt.close(fig)

    for name in datasets:
        grids = extras[name]["grids"]
        lo, hi = (float(v) for v in torch.quantile(grids["data"][:, :2].flatten(), torch.tensor([0.005, 0.995])))
        fig, axes = plt.subplots(2, (len(grids) + 1) // 2, figsize=(3 * ((len(grids) + 1) // 2), 6), squeeze=False)
        for ax, (title, x) in zip(axes.flat, grids.items()):
            x = x[:3000].numpy()
            ax.scatter(x[:, 0], x[:, 1], s=0.5, alpha=0.5)
            ax.set_title(title, fontsize=8)
            ax.set_xlim(lo, hi)  # first two coordinates
            ax.set_ylim(lo, hi)
            ax.set_xticks([])
            ax.set_yticks([])
        for ax in list(axes.flat)[len(grids):]:
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(RESULTS / f"distill_samples_{name}.png", dpi=110)
        plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["tree", "rose", "patches3x3", "digits61"])
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-eval", type=int, default=4000)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--h0", type=float, default=0.1)
    p.add_argument("--rho", type=float, default=1.5)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batches", type=int, default=1500, help="teacher batches per LFM block (global: N times)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--n-pairs", type=int, default=20000)
    p.add_argument("--distill-batches", type=int, default=1500)
    p.add_argument("--distill-lr", type=float, default=1e-3)
    p.add_argument("--global-steps", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny budget smoke run (results not written)")
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.n_eval, args.batches, args.n_pairs, args.distill_batches = 4000, 1000, 100, 2000, 100
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, extras = [], {}
    for name in args.datasets:
        r, e = run_dataset(name, args)
        rows += r
        extras[name] = e
    total = time.perf_counter() - start
    md = table(rows)
    print(md)
    print(f"total {total:.0f} s")
    if args.quick:
        return rows
    settings = {k: v for k, v in vars(args).items()}
    write_results(RESULTS, "distill", {"settings": settings, "total_seconds": total, "rows": rows,
                                       "info": {n: e["info"] for n, e in extras.items()}},
                  "## Distillation: quality vs NFE (energy distance to held-out test data; lower is better)\n\n" + md)
    figures(rows, extras, args.datasets)
    return rows


if __name__ == "__main__":
    main()
