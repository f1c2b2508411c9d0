"""Imitation precision without rollouts: how far each policy's sampled action chunks are from held-out demos.

Collects ``--demos`` expert episodes (seed 0), holds out the last ``--holdout`` share of them,
trains every method (``--methods``; every recipe flag of ``bench_policy.py`` works here) on the
rest for one budget (``--epochs``) per training seed, and draws ``--samples`` chunks per
held-out window (``--windows`` of them) from ``predict_action``; each is scored on its
``n_action_steps`` (8) executed actions against the expert's at the same steps, in raw action
units (the flows' sampling noise is seeded by the training seed):

* **chunk MSE**: squared error per action dimension and in all, averaged over the samples. A
  sample from a multimodal expert is scored against the one mode the expert took, so a perfect
  sampler scores twice the expert's own variance, and a regressor that predicts the mean scores
  lower than any sampler: compare flows with flows.
* **energy score** of the executed chunk (flattened): ``mean_k |X_k - a| - 1/2 mean_{j != k}
  |X_j - X_k|``, a proper scoring rule (the expert's conditional distribution minimizes its
  expectation), so it rewards spread that the expert has and punishes spread it lacks; it is
  how a sampler and a regressor can be compared. Needs ``--samples`` >= 2 for the second term.
* **spread**: the variance of the samples per coordinate, averaged (0 for a regressor).

The paired difference between methods (same seed, same windows) is what these are for. Rollouts
decide success; this asks whether a method's chunks are less precise, which matters most where
success needs millimetres (Square).

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
from torchcfm_local.policy.cli import parse_bench_args
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


def chunk_scores(policy, obs: torch.Tensor, action: torch.Tensor, keys: list, dims: dict, seed: int,
                 samples: int = 1) -> dict:
    """Scores of ``samples`` sampled chunks per window against the expert's actions at the same
    steps (the ``n_action_steps`` executed ones, from the window's last observation on):
    ``mse_per_dim`` (array), ``mse``, ``energy`` (energy score; with one sample, the mean
    distance) and ``spread`` (sample variance per coordinate, averaged; 0 with one sample)."""
    parts = torch.split(obs, [dims[k] for k in keys], dim=2)
    obs_dict = {k: p.numpy() for k, p in zip(keys, parts)}
    gen = torch.Generator().manual_seed(seed)
    draws = np.stack([policy.predict_action(obs_dict, generator=gen)["action"].numpy() for _ in range(samples)])
    start = policy.n_obs_steps - 1  # the executed actions start at the window's last observation
    target = action[:, start:start + draws.shape[2]].numpy()
    err = ((draws - target[None]) ** 2).mean(axis=(0, 1, 2))
    flat = draws.reshape(samples, draws.shape[1], -1)
    to_expert = np.linalg.norm(flat - target.reshape(len(target), -1)[None], axis=-1).mean()
    between = 0.0
    if samples > 1:  # mean over ordered pairs j != k of |X_j - X_k|
        dist = np.linalg.norm(flat[:, None] - flat[None], axis=-1).mean(axis=-1)
        between = dist.sum() / (samples * (samples - 1))
    spread = float(draws.var(axis=0, ddof=1).mean()) if samples > 1 else 0.0
    return {"mse_per_dim": err, "mse": float(err.mean()), "energy": float(to_expert - 0.5 * between),
            "spread": spread}


def held_out_parser(doc: str, default_name: str) -> argparse.ArgumentParser:
    """The flags of a held-out-window benchmark (this script and ``policy_block_probe.py``): task,
    demos, the split, windows, samples per window, methods, seeds, output, and the recipe's;
    ``--name`` defaults to ``<default_name>_<task>``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--task", default="point", choices=sorted(TASKS))
    parser.add_argument("--demos", type=int, default=60)
    parser.add_argument("--demo-batch", type=int, default=25)
    parser.add_argument("--holdout", type=float, default=0.2, help="share of the episodes held out")
    parser.add_argument("--windows", type=int, default=400, help="held-out windows")
    parser.add_argument("--samples", type=int, default=4, help="draws per window (flows)")
    parser.add_argument("--methods", default="global,lfm")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--name", default=None, help=f"output name (default {default_name}_<task>)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    PolicyRecipe.add_arguments(parser)
    return parser


def parse_held_out(doc: str, default_name: str, methods, argv=None) -> tuple[argparse.Namespace, PolicyRecipe]:
    """``(args, recipe)`` of :func:`held_out_parser`'s flags, checked; ``args.name`` filled in."""
    args, recipe = parse_bench_args(held_out_parser(doc, default_name), argv, methods,
                                    ("demos", "demo_batch", "windows", "seeds", "samples"))
    args.name = args.name or f"{default_name}_{args.task}"
    return args, recipe


def held_out_windows(args) -> tuple[Demos, Demos, Demos, torch.Tensor, torch.Tensor]:
    """``args.demos`` expert episodes of ``args.task`` (seed 0) -> ``(demos, train, held, obs, action)``:
    the episodes, the training and held-out ones (:func:`split_episodes` with ``args.holdout``) and
    ``args.windows`` windows of the held-out episodes (a fixed draw), observations ``(W, 2, D)``
    and action chunks ``(W, 16, Da)``."""
    demos = collect_demos(args.task, args.demos, seed=0, batch=args.demo_batch)
    train, held = split_episodes(demos, args.holdout)
    obs, action = windows(held, list(demos.obs), 2, 16)
    pick = torch.randperm(len(obs), generator=torch.Generator().manual_seed(0))[:args.windows]
    return demos, train, held, obs[pick], action[pick]


def run(args, recipe: PolicyRecipe) -> tuple[list[dict], dict]:
    demos, train, held, obs, action = held_out_windows(args)
    keys = list(demos.obs)
    rows = []
    for seed in range(args.seeds):
        for method in args.methods:
            (ckpt,) = train_checkpoints(method, train, recipe, [recipe.epochs], seed)
            samples = 1 if method == "regression" else args.samples  # a regressor's chunks do not vary
            score = chunk_scores(ckpt.policy, obs, action, keys, demos.obs_dims, seed, samples)
            rows.append({"method": method, "seed": seed, **score, "mse_per_dim": score["mse_per_dim"].tolist()})
            print(f"seed {seed} {method}: chunk MSE {score['mse']:.4f}, energy score {score['energy']:.4f}, "
                  f"spread {score['spread']:.4f}", flush=True)
    meta = {"demos": demos.meta, "train_episodes": train.n_episodes, "held_out_episodes": held.n_episodes,
            "windows": int(len(obs))}
    return rows, meta


METRICS = (("mse", "chunk MSE"), ("energy", "energy score"), ("spread", "spread"))


def table(rows: list[dict], args, recipe: PolicyRecipe, meta: dict) -> tuple[str, dict]:
    """The markdown table and ``summary[metric][method]`` (and ``[f"{method} - global"]``, paired) as mean ± SE."""
    fmt = lambda s, sign="": "-" if s is None else (  # noqa: E731
        f"{s['mean']:{sign}.4f}" + ("" if s["se"] is None else f" ± {s['se']:.4f}"))
    ordered = sorted(rows, key=lambda r: r["seed"])
    summary = {}
    for key, _ in METRICS:
        per = {m: [r[key] for r in ordered if r["method"] == m] for m in args.methods}
        summary[key] = {m: mean_se(v) for m, v in per.items()}
        for m in args.methods:
            if m != "global" and "global" in per:
                summary[key][f"{m} - global"] = mean_se([a - b for a, b in zip(per[m], per["global"])])
    head = " | ".join(f"{label} | paired against global" for key, label in METRICS if key != "spread")
    lines = [f"## {args.task}: sampled action chunks against held-out demos, mean ± SE over {args.seeds} "
             f"training seed(s)", "", f"| method | {head} | spread |", "|---|---|---|---|---|---|"]
    for m in args.methods:
        cells = [f"{fmt(summary[key][m])} | {fmt(summary[key].get(f'{m} - global'), '+')}"
                 for key, _ in METRICS if key != "spread"]
        lines.append(f"| {m} | {' | '.join(cells)} | {fmt(summary['spread'][m])} |")
    lines += ["", f"Demos: {meta['train_episodes']} training and {meta['held_out_episodes']} held-out expert "
              f"episodes (seed 0); {meta['windows']} held-out windows, {args.samples} sampled chunk(s) each "
              f"(regression: 1); the 8 executed actions of each chunk against the expert's at the same steps, "
              f"raw action units. Lower is better for the MSE and the energy score; the MSE favours a regressor "
              f"on multimodal demos, the energy score does not. {recipe.epochs:g} epochs; recipe "
              f"`{recipe.to_dict()}`."]
    return "\n".join(lines), summary


def main(argv=None) -> int:
    args, recipe = parse_held_out(__doc__, "policy_chunk_error", METHODS, argv)
    rows, meta = run(args, recipe)
    text, summary = table(rows, args, recipe, meta)
    write_results(args.out, args.name,
                  {"args": vars(args), "recipe": recipe.to_dict(), **meta, "summary": summary, "runs": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
