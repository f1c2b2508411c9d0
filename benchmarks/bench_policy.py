"""Global FM policy vs LFM policy at equal parameters and equal epochs, on a task's expert demos.

Writes ``benchmarks/results/policy_<task>.{json,md}`` and two figures: success rate against
training epochs, and sampled action chunks from one start state (both expert modes should show).

    python benchmarks/bench_policy.py                       # point task, MLP networks, 3 seeds
    python benchmarks/bench_policy.py --network unet        # the 1D temporal U-Net
    python benchmarks/bench_policy.py --quick               # one seed, short (a pipeline check)
    python benchmarks/bench_policy.py --task lift --width 256 --epochs 50 100 200 --seeds 1 --episodes 50
                                                            # robosuite Lift (needs the [robot] extra)

Protocol: one demo set (200 expert episodes, seed 0); for every method, seed and epoch budget an
independent training run (LFM cannot be evaluated before its last block is trained); rollouts on
the same initial states (``--episodes`` per number, evaluation seed 1000); the regression
baseline is an MLP trained with MSE. Latency is the mean wall time of one ``predict_action``
call for all live episodes, after one warm-up call.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from torchcfm_local.policy import collect_demos, evaluate, make_env
from torchcfm_local.policy.cli import build_policy
from torchcfm_local.bench.report import write_results

ROOT = Path(__file__).resolve().parent.parent


def run(method, demos, env, network, width, epochs, seed, episodes, lr):
    torch.manual_seed(seed)
    policy = build_policy(method, demos.obs_dims, demos.action.shape[1], network, width)
    start = time.perf_counter()
    policy.fit(demos, epochs=epochs, lr=lr, seed=seed, progress=False)
    train_seconds = time.perf_counter() - start
    evaluate(policy, env, 2, seed=999)  # warm-up (lazy imports, first solver build)
    report = evaluate(policy, env, episodes, seed=1000, generator_seed=seed)
    return policy, {"method": method, "epochs": epochs, "seed": seed, "success_rate": report.success_rate,
                    "train_seconds": train_seconds, "seconds_per_chunk": report.seconds_per_chunk,
                    "parameters": policy.n_parameters()}


def chunk_figure(policies, demos, path):
    """Point task: 64 chunks sampled at the start state, integrated into paths, next to the demos."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(policies) + 1, figsize=(4 * (len(policies) + 1), 4), sharex=True, sharey=True)
    for start, stop in demos.episodes()[:60]:
        axes[0].plot(*demos.obs["pos"][start:stop].T, color="0.5", lw=0.6)
    axes[0].set_title("expert demos")
    start_obs = {"pos": np.tile(np.array([[0.0, -1.0]], dtype=np.float32), (64, 2, 1))}
    for ax, (name, policy) in zip(axes[1:], policies.items()):
        chunk = policy.predict_action(start_obs, generator=torch.Generator().manual_seed(0))["action_pred"].numpy()
        path_xy = np.array([0.0, -1.0]) + 0.1 * np.cumsum(chunk, axis=1)  # the chunk integrated from the start
        for p in path_xy:
            ax.plot(p[:, 0], p[:, 1], lw=0.7, alpha=0.7)
        ax.set_title(f"{name}: 64 sampled chunks (H=16)")
    for ax in axes:
        ax.add_patch(plt.Circle((0, 0), 0.4, color="tab:red", alpha=0.3))
        ax.plot(0, 1, "g*", ms=12)
        ax.set_aspect("equal")
        ax.set_xlim(-1.2, 1.2)
        ax.set_ylim(-1.2, 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_figure(rows, methods, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in methods:
        epochs = sorted({r["epochs"] for r in rows if r["method"] == method})
        rates = [[r["success_rate"] for r in rows if r["method"] == method and r["epochs"] == e] for e in epochs]
        mean = np.array([np.mean(v) for v in rates])
        ax.plot(epochs, mean, "o-", label=method)
        if max(len(v) for v in rates) > 1:
            ax.fill_between(epochs, [min(v) for v in rates], [max(v) for v in rates], alpha=0.2)
    ax.set_xscale("log")
    ax.set_xlabel("training epochs")
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="point", choices=("point", "lift", "can"))
    parser.add_argument("--demos", type=int, default=200, help="expert episodes")
    parser.add_argument("--network", default="mlp", choices=("mlp", "unet"))
    parser.add_argument("--width", type=int, default=128, help="LFM block width (the global network is widened to match)")
    parser.add_argument("--epochs", type=float, nargs="+", default=[25, 50, 100, 200])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.seeds, args.episodes = [5, 10], 1, 20
    demos = collect_demos(args.task, args.demos, seed=0)
    env = make_env(args.task)
    methods = ["global", "lfm", "regression"]
    rows, last = [], {}
    from tqdm.auto import tqdm

    jobs = [(m, e, s) for s in range(args.seeds) for e in args.epochs for m in methods]
    for method, epochs, seed in tqdm(jobs, desc="policies"):
        policy, row = run(method, demos, env, args.network, args.width, epochs, seed, args.episodes, args.lr)
        rows.append(row)
        if seed == 0 and epochs == max(args.epochs):
            last[method] = policy
    name = f"policy_{args.task}_{args.network}" + ("_quick" if args.quick else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curve_figure(rows, methods, out / f"{name}_success.png")
    if args.task == "point":
        chunk_figure({m: last[m] for m in ("global", "lfm", "regression")}, demos, out / f"{name}_chunks.png")

    lines = [f"## {args.task} task ({args.network} networks): success rate over {args.episodes} rollouts, "
             f"mean (min-max) over {args.seeds} seed(s)", "",
             "| method | parameters | " + " | ".join(f"{e:g} epochs" for e in args.epochs) + " | ms per chunk |",
             "|---|---|" + "---|" * len(args.epochs) + "---|"]
    for method in methods:
        mine = [r for r in rows if r["method"] == method]
        cells = []
        for e in args.epochs:
            v = [r["success_rate"] for r in mine if r["epochs"] == e]
            cells.append(f"{np.mean(v):.2f} ({min(v):.2f}-{max(v):.2f})" if len(v) > 1 else f"{v[0]:.2f}")
        latency = 1e3 * np.mean([r["seconds_per_chunk"] for r in mine])
        lines.append(f"| {method} | {mine[0]['parameters']} | " + " | ".join(cells) + f" | {latency:.1f} |")
    lines += ["", f"Demos: {args.demos} expert episodes (expert success {demos.meta['expert_success_rate']:.2f}), "
              f"{demos.action.shape[0]} steps. Policies: To=2, H=16, Ta=8; LFM: 4 blocks, OUSchedule(0.3, 1.1, 4); "
              "sampling: RK4 with 16 steps over all blocks (64 network evaluations per chunk for both flows).",
              f"Figures: `{name}_success.png`" + (f", `{name}_chunks.png`." if args.task == "point" else ".")]
    write_results(out, name, {"rows": rows, "args": vars(args), "demos": demos.meta}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
