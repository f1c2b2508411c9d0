"""Global FM policy vs LFM policy vs regression at equal parameters and epochs, by Diffusion Policy's protocol.

Writes ``benchmarks/results/policy_<task>.{json,md,png}`` (``policy_<task>_unet`` with U-Nets,
``_shared`` with shared LFM blocks, ``_ou`` with the OU pool and separate blocks, ``_quick`` with
``--quick``): per-checkpoint records, per-method summaries, the success rate against epochs
(mean ± SE bands over training seeds) and, on the point task,
``policy_<task>_chunks.png`` (chunks sampled from one start state: both expert modes should show).

    python benchmarks/bench_policy.py                       # point task, the default recipe, 3 seeds
    python benchmarks/bench_policy.py --h0 0.2 --rho 1.25 --path linear --ema-decay 0.999
    python benchmarks/bench_policy.py --network unet --width 256
    python benchmarks/bench_policy.py --pool ou --shared --lr-decay cosine # LFM blocks share one network
    python benchmarks/bench_policy.py --quick               # a pipeline check (minutes on a laptop)
    python benchmarks/bench_policy.py --task lift --width 256 --seeds 1 # robosuite: lift, can, square, pillar ([robot] extra)

Every recipe flag (``--h0 --rho --blocks --path --network --activation --n-freq --width --epochs
--batch-size --lr --weight-decay --warmup --lr-decay --ema-decay --pool --shared --free-share --block-batch``) and its default comes from
:class:`torchcfm_local.policy.recipe.PolicyRecipe`, as in ``lfm-policy train``.

Protocol (:mod:`torchcfm_local.policy.protocol`, Diffusion Policy's): one demo set (``--demos``
expert episodes, seed 0); for every method and training seed (``--seeds``, default 3, from
``--first-seed``, default 0) checkpoints
every ``--eval-every`` epochs up to ``--epochs``, each evaluated on the same ``--episodes`` (50)
initial states (evaluation seed ``--eval-seed``, 1000); per method the max over checkpoints and
the mean of the last 3, each as mean ± SE over training seeds. The checkpoint at epoch e is the
policy that a total budget of e epochs produces: snapshots of one run for the global flow and the
regression baseline (without lr decay), one run per checkpoint for LFM (its blocks train one after
the other; see the protocol module). Latency: mean wall time of one ``predict_action`` call for
all live episodes, after a warm-up, at equal NFE for both flows (RK4, 16 steps over all blocks,
rounded up to a multiple of the LFM blocks: 18 with the default 3). Compute: every checkpoint
records its training FLOPs and seconds, every method its sampling FLOPs per chunk
(:mod:`torchcfm_local.policy.flops`); ``policy_equal_compute.py`` compares two runs at equal FLOPs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from torchcfm_local.bench.report import write_results
from torchcfm_local.policy import TASKS, collect_demos, make_env
from torchcfm_local.policy.cli import parse_bench_args
from torchcfm_local.policy.policy import POLICY_RK4_STEPS
from torchcfm_local.policy.protocol import checkpoint_epochs, run_protocol, summarize
from torchcfm_local.policy.recipe import PolicyRecipe

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("global", "lfm", "regression")
#: what ``--quick`` changes (flags given on the command line win)
QUICK = {"demos": 20, "width": 32, "epochs": 4.0, "eval_every": 2.0, "seeds": 2, "episodes": 10}


def parse_args(argv=None) -> tuple[argparse.Namespace, PolicyRecipe]:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="point", choices=sorted(TASKS))
    parser.add_argument("--demos", type=int, default=200, help="expert episodes (demo seed 0)")
    parser.add_argument("--demo-batch", type=int, default=100,
                        help="expert episodes stepped together (robosuite: ~150 MB of memory each)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3, help="how many training seeds")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="the first training seed (seeds first..first+seeds-1), to split one protocol over runs")
    parser.add_argument("--eval-every", type=float, default=20, help="epochs between checkpoints")
    parser.add_argument("--last", type=int, default=3, help="checkpoints averaged at the end")
    parser.add_argument("--episodes", type=int, default=50, help="test initial states per checkpoint")
    parser.add_argument("--eval-seed", type=int, default=1000, help="seed of the test initial states")
    parser.add_argument("--quick", action="store_true", help="a short pipeline check: " + str(QUICK))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    PolicyRecipe.add_arguments(parser)
    if "--quick" in argv:
        parser.set_defaults(**QUICK)
    args, recipe = parse_bench_args(parser, argv, METHODS, ("seeds", "episodes", "last", "demos", "demo_batch"))
    if args.first_seed < 0:
        parser.error("--first-seed must be >= 0")
    return args, recipe


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


def curve_figure(summary, path, title):
    """Success rate against epochs per method: mean over training seeds with ± SE bands."""
    band_figure({method: [(p["epochs"], p) for p in row["curve"]] for method, row in summary.items()}, path, title,
                "training epochs (checkpoint = the policy of that total budget)")


def band_figure(curves: dict, path, title: str, xlabel: str) -> None:
    """``curves[method]`` = ``[(x, mean_se stat of the success rate), ...]``: one line per method,
    with ± SE bands where every point has an SE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for method, points in curves.items():
        x = np.array([px for px, _ in points])
        mean = np.array([stat["mean"] for _, stat in points])
        ax.plot(x, mean, "o-", label=method, ms=3)
        if all(stat["se"] is not None for _, stat in points):
            se = np.array([stat["se"] for _, stat in points])
            ax.fill_between(x, mean - se, mean + se, alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("success rate")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_runs(parser: argparse.ArgumentParser, paths: list) -> list[dict]:
    """The json files of ``bench_policy.py`` runs at ``paths`` (for the scripts that combine runs);
    a missing file is a usage error of ``parser``."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")
    return [json.loads(Path(p).read_text()) for p in paths]


def check_comparable(runs: list[dict], shared: tuple, ignore: tuple = ()) -> None:
    """Raise ``ValueError`` unless every run (a loaded json file) has run 1's recipe (fields an
    older run lacks: what it trained with; ``ignore``d fields aside) and run 1's values of the
    protocol fields ``shared``."""
    def recipe_of(results):
        return {k: v for k, v in PolicyRecipe.from_dict(results["recipe"]).to_dict().items() if k not in ignore}

    first = runs[0]["results"]
    recipe = recipe_of(first)
    for i, run in enumerate(runs[1:], start=2):
        other = recipe_of(results := run["results"])
        if other != recipe:
            raise ValueError(f"run {i} has another recipe than run 1 (fields {sorted(k for k in recipe if recipe[k] != other[k])})")
        for key in shared:
            if results["protocol"][key] != first["protocol"][key]:
                raise ValueError(f"run {i} has protocol {key}={results['protocol'][key]!r}, run 1 {first['protocol'][key]!r}")


def _pm(stat, digits=2):
    return f"{stat['mean']:.{digits}f}" + ("" if stat["se"] is None else f" ± {stat['se']:.{digits}f}")


def lfm_description(recipe) -> str:
    """How the table describes the LFM policy: blocks, schedule, path, and the pool and shared network when set."""
    text = (f"LFM: {recipe.blocks} blocks, OUSchedule(h0={recipe.h0:g}, rho={recipe.rho:g}, N={recipe.blocks}), "
            f"{recipe.path} path")
    if recipe.shared:
        text += ("; the blocks share one network with a learned block embedding (as many parameters as "
                 "separate blocks of the recipe's width), trained jointly on the OU pool")
    elif recipe.pool == "ou":
        text += "; each block trained on the OU pool (the exact OU marginal of the demos, no pushforward)"
    if recipe.free_share is not None:
        text += f"; the free block gets {recipe.free_share:g} of LFM's batches"
    if recipe.block_batch == "split":
        text += f"; each block takes batches of ceil({recipe.batch_size} / {recipe.blocks}) windows"
    return text


def table(protocol: dict, recipe, summary, records, demo_meta: dict, name: str, with_chunks: bool = True) -> str:
    """The markdown of a run (or of several runs merged): ``protocol``, ``records`` and ``demo_meta``
    as the json stores them; ``with_chunks``: name the point task's chunk figure."""
    grid, seeds, last = protocol["checkpoint_epochs"], protocol["seeds"], protocol["last"]
    lines = [f"## {protocol['task']} task: success rate over {protocol['episodes']} fixed test states, mean ± SE over "
             f"{len(seeds)} training seed(s) ({', '.join(map(str, seeds))})", "",
             f"| method | parameters | checkpoints | max over checkpoints | mean of last {min(last, len(grid))} "
             "| NFE per chunk | ms per chunk | MFLOPs per chunk | training GFLOPs (last checkpoint) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for method, row in summary.items():
        latency = {k: None if v is None else 1e3 * v for k, v in row["seconds_per_chunk"].items() if k != "values"}
        flops = [f"{v * scale:.{digits}f}" if v is not None else "-" for v, scale, digits in (
            (row.get("flops_per_chunk"), 1e-6, 2), ((row.get("train_flops") or [None])[-1], 1e-9, 1))]
        lines.append(f"| {method} | {row['parameters']} | {row['checkpoint']} | {_pm(row['max'])} | {_pm(row['last'])} "
                     f"| {row['nfe_per_chunk']:g} | {_pm(latency, 1)} | {flops[0]} | {flops[1]} |")
    lines += ["", "| method | " + " | ".join(f"{e:g} ep" for e in grid) + " |", "|---|" + "---|" * len(grid)]
    for method, row in summary.items():
        lines.append(f"| {method} | " + " | ".join(_pm(p) for p in row["curve"]) + " |")
    diverged = [f"{r['method']} seed {r['seed']} at {r['epochs']:g} ep: {r['nonfinite_episodes']}"
                for r in records if r.get("nonfinite_episodes")]
    if diverged:
        lines += ["", "Episodes ended as failures on NaN/Inf actions (a diverged network): " + "; ".join(diverged) + "."]
    steps = f", {demo_meta['steps']} steps" if "steps" in demo_meta else ""
    lines += ["", f"Recipe: `{recipe.to_dict()}`.",
              f"Demos: {protocol['demos']} expert episodes (expert success {demo_meta['expert_success_rate']:.2f})"
              f"{steps}. Policies: To=2, H=16, Ta=8; {lfm_description(recipe)}; the global "
              f"network is widened to LFM's parameters; sampling: RK4, "
              f"{recipe.blocks * math.ceil(POLICY_RK4_STEPS / recipe.blocks)} steps over all blocks for both flows.",
              "Checkpoint at epoch e = the policy a total budget of e epochs produces (from the same seed): "
              "`snapshot` = read off one run per seed, `run` = one training run per checkpoint (LFM has no "
              "usable policy before all its blocks are trained). "
              "Max and last-k are taken per seed, then mean ± SE over seeds.",
              f"Figures: `{name}.png`" + (f", `{name}_chunks.png`." if with_chunks and protocol["task"] == "point" else ".")]
    return "\n".join(lines)


def main(argv=None) -> int:
    args, recipe = parse_args(argv)
    grid = checkpoint_epochs(recipe.epochs, args.eval_every)
    demos = collect_demos(args.task, args.demos, seed=0, batch=args.demo_batch)
    env = make_env(args.task)
    final = {}

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))

    def keep_final(method, seed, ckpt):  # the chunk figure shows the first seed's final checkpoints
        if seed == seeds[0] and ckpt.epochs == grid[-1]:
            final[method] = ckpt.policy

    records = run_protocol(args.methods, demos, env, recipe, grid, seeds, args.episodes,
                           args.eval_seed, on_checkpoint=keep_final)
    summary = summarize(records, args.last, args.methods)
    name = f"policy_{args.task}" + ("" if recipe.network == "mlp" else f"_{recipe.network}") + \
        ("_shared" if recipe.shared else "_ou" if recipe.pool == "ou" else "") + ("_quick" if args.quick else "")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curve_figure(summary, out / f"{name}.png", f"{args.task}: mean ± SE over {args.seeds} seed(s), "
                                               f"{args.episodes} test states")
    if args.task == "point":
        chunk_figure(final, demos, out / f"{name}_chunks.png")
    protocol = {"checkpoint_epochs": grid, "seeds": seeds, "episodes": args.episodes,
                "eval_seed": args.eval_seed, "last": args.last, "demos": args.demos, "demo_batch": args.demo_batch,
                "task": args.task}
    demo_meta = {**demos.meta, "steps": int(demos.action.shape[0])}
    text = table(protocol, recipe, summary, records, demo_meta, name)
    write_results(out, name, {"recipe": recipe.to_dict(), "protocol": protocol, "summary": summary,
                              "records": records, "demos": demo_meta}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
