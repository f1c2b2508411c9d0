"""``lfm-policy``: generate demos, train a policy, evaluate it.

    lfm-policy demos --task point --episodes 200 --out demos/point.npz
    lfm-policy train --demos demos/point.npz --method lfm --epochs 100 --out policies/point_lfm.pt
    lfm-policy eval --task point --policy policies/point_lfm.pt --episodes 100
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .. import OUSchedule
from ..networks import count_parameters, width_for_parameters
from .demos import load_demos, save_demos
from .policy import FlowPolicy, RegressionPolicy, load_policy
from .rollout import evaluate
from .tasks import TASKS, collect_demos

METHODS = ("lfm", "global", "regression")


def build_policy(method: str, obs_dims: dict, action_dim: int, network: str = "mlp", width: int = 128,
                 lfm_blocks: int = 4) -> "FlowPolicy | RegressionPolicy":
    """A policy of ``method`` whose LFM blocks have ``width``; the global flow's one network is
    widened until its parameter count matches the LFM policy's (equal parameters)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method == "regression":
        return RegressionPolicy(obs_dims, action_dim, width=width)

    def make(schedule, w):
        config = ({"down_dims": [w // 4, w // 2, w], "kernel_size": 5, "n_groups": 8, "time_dim": 32}
                  if network == "unet" else {"width": w})
        return FlowPolicy(obs_dims, action_dim, schedule=schedule, network=network, network_config=config)

    lfm = make(OUSchedule(0.3, 1.1, lfm_blocks), width)
    if method == "lfm":
        return lfm
    step = 32 if network == "unet" else 1  # U-Net widths stay multiples of 4 * n_groups
    best = width_for_parameters(lambda w: make(OUSchedule.global_flow(), w), count_parameters(lfm), step=step,
                                start=width)
    return make(OUSchedule.global_flow(), best)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lfm-policy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demos", help="run a task's scripted expert and save its successful episodes")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("train", help="train a policy on a demo file")
    p.add_argument("--demos", required=True)
    p.add_argument("--method", default="lfm", choices=METHODS)
    p.add_argument("--network", default="mlp", choices=("mlp", "unet"))
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--epochs", type=float, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("eval", help="roll a saved policy out and print its success rate")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--policy", required=True)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=1000)
    args = parser.parse_args(argv)

    if args.command == "demos":
        demos = collect_demos(args.task, args.episodes, seed=args.seed)
        save_demos(args.out, demos)
        print(json.dumps({**demos.meta, "steps": int(demos.action.shape[0]), "file": args.out}))
    elif args.command == "train":
        demos = load_demos(args.demos)
        torch.manual_seed(args.seed)
        policy = build_policy(args.method, demos.obs_dims, demos.action.shape[1], args.network, args.width)
        policy.fit(demos, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        policy.save(args.out)
        print(json.dumps({"method": args.method, "parameters": policy.n_parameters(), "file": args.out}))
    else:
        policy = load_policy(args.policy)
        report = evaluate(policy, args.task, args.episodes, seed=args.seed)
        print(json.dumps({"task": args.task, "episodes": args.episodes, "success_rate": report.success_rate,
                          "seconds_per_chunk": report.seconds_per_chunk}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
