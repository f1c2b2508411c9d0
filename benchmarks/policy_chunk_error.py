"""Imitation precision without rollouts: how far each policy's sampled action chunks are from held-out demos.

Collects ``--demos`` expert episodes (seed 0), holds out the last ``--holdout`` share of them,
trains every method (``--methods``; every recipe flag of ``bench_policy.py`` works here) on the
rest for one budget (``--epochs``) per training seed, and measures on ``--windows`` held-out
windows the squared error between the first ``n_action_steps`` (8) actions that
``predict_action`` samples and the expert's, per action dimension and in all (raw action
units; the flows' sampling noise is seeded by the training seed). A sample from a multimodal
expert is scored against the one mode the expert took, so this is not zero even for a perfect
policy; the paired difference between methods (same seed, same windows) is what it is for.
Rollouts decide success; this asks whether a method's chunks are less precise, which matters
most where success needs millimetres (Square).

Writes ``benchmarks/results/<name>.{json,md}`` (default ``policy_chunk_error_<task>``).

    python benchmarks/policy_chunk_error.py --task square --demos 60 --width 256   # [robot] extra
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from torchcfm_local.bench.report import write_results
from torchcfm_local.bench.seeds import mean_se
from torchcfm_local.policy import TASKS, collect_demos
from torchcfm_local.policy.demos import Demos, windows
from torchcfm_local.policy.cli import parse_methods
from torchcfm_local.policy.protocol import train_checkpoints
from torchcfm_local.policy.recipe import PolicyRecipe

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("global", "lfm", "regression")


def split_episodes(demos: Demos, holdout: float) -> tuple[Demos, Demos]:
    """The first episodes for training and the last ``holdout`` share (at least one) held out."""
    n_out = max(1, int(round(demos.n_episodes * holdout)))
    if not 0 < holdout < 1 or n_out >= demos.n_episodes:
        raise ValueError(f"holdout must leave episodes on both sides, got {holdout} of {demos.n_episodes} episodes")
    cut = int(demos.episode_ends[demos.n_episodes - n_out - 1])

    def part(sl, ends):
        return Demos({k: v[sl] for k, v in demos.obs.items()}, demos.action[sl], ends, dict(demos.meta))

    return (part(slice(0, cut), demos.episode_ends[:-n_out]),
            part(slice(cut, None), demos.episode_ends[-n_out:] - cut))


def chunk_error(policy, obs: torch.Tensor, action: torch.Tensor, keys: list, dims: dict, seed: int) -> np.ndarray:
    """Per action dimension, the mean squared error of the executed part of the sampled chunks."""
    parts = torch.split(obs, [dims[k] for k in keys], dim=2)
    out = policy.predict_action({k: p.numpy() for k, p in zip(keys, parts)}, generator=torch.Generator().manual_seed(seed))
    executed = out["action"].numpy()
    return ((executed - action[:, :executed.shape[1]].numpy()) ** 2).mean(axis=(0, 1))


def run(args, recipe: PolicyRecipe) -> tuple[list[dict], dict]:
    demos = collect_demos(args.task, args.demos, seed=0, batch=args.demo_batch)
    train, held = split_episodes(demos, args.holdout)
    keys = list(demos.obs)
    obs, action = windows(held, keys, 2, 16)
    pick = torch.randperm(len(obs), generator=torch.Generator().manual_seed(0))[:args.windows]
    rows = []
    for seed in range(args.seeds):
        for method in args.methods:
            (ckpt,) = train_checkpoints(method, train, recipe, [recipe.epochs], seed)
            err = chunk_error(ckpt.policy, obs[pick], action[pick], keys, demos.obs_dims, seed)
            rows.append({"method": method, "seed": seed, "mse": float(err.mean()), "mse_per_dim": err.tolist()})
            print(f"seed {seed} {method}: chunk MSE {err.mean():.4f}", flush=True)
    meta = {"demos": demos.meta, "train_episodes": train.n_episodes, "held_out_episodes": held.n_episodes,
            "windows": int(len(pick))}
    return rows, meta


def table(rows: list[dict], args, recipe: PolicyRecipe, meta: dict) -> tuple[str, dict]:
    per = {m: [r["mse"] for r in sorted(rows, key=lambda r: r["seed"]) if r["method"] == m] for m in args.methods}
    summary = {m: mean_se(v) for m, v in per.items()}
    fmt = lambda s: f"{s['mean']:.4f}" + ("" if s["se"] is None else f" ± {s['se']:.4f}")  # noqa: E731
    lines = [f"## {args.task}: squared error of sampled action chunks against held-out demos, mean ± SE over "
             f"{args.seeds} training seed(s)", "", "| method | chunk MSE | paired against global |", "|---|---|---|"]
    for m in args.methods:
        paired = "-"
        if m != "global" and "global" in per:
            summary[f"{m} - global"] = mean_se([a - b for a, b in zip(per[m], per["global"])])
            diff = summary[f"{m} - global"]
            paired = f"{diff['mean']:+.4f}" + ("" if diff["se"] is None else f" ± {diff['se']:.4f}")
        lines.append(f"| {m} | {fmt(summary[m])} | {paired} |")
    lines += ["", f"Demos: {meta['train_episodes']} training and {meta['held_out_episodes']} held-out expert "
              f"episodes (seed 0); {meta['windows']} held-out windows; the first 8 actions of each sampled chunk. "
              f"{recipe.epochs:g} epochs; recipe `{recipe.to_dict()}`."]
    return "\n".join(lines), summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="point", choices=sorted(TASKS))
    parser.add_argument("--demos", type=int, default=60)
    parser.add_argument("--demo-batch", type=int, default=25)
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the episodes held out")
    parser.add_argument("--windows", type=int, default=400, help="held-out windows scored")
    parser.add_argument("--methods", default="global,lfm")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--name", default=None, help="output name (default policy_chunk_error_<task>)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    PolicyRecipe.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.methods = parse_methods(args.methods, METHODS)
    except ValueError as err:
        parser.error(str(err))
    if min(args.demos, args.demo_batch, args.windows, args.seeds) < 1:
        parser.error("--demos, --demo-batch, --windows and --seeds must be >= 1")
    recipe = PolicyRecipe.from_args(args)
    rows, meta = run(args, recipe)
    text, summary = table(rows, args, recipe, meta)
    write_results(args.out, args.name or f"policy_chunk_error_{args.task}",
                  {"args": vars(args), "recipe": recipe.to_dict(), **meta, "summary": summary, "runs": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
