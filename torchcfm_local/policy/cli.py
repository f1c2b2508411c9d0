"""``lfm-policy``: generate demos, train a policy, evaluate it, export demos to other formats.

    lfm-policy demos --task point --episodes 200 --out demos/point.npz
    lfm-policy train --demos demos/point.npz --method lfm --epochs 100 --out policies/point_lfm.pt
    lfm-policy eval --task point --policy policies/point_lfm.pt --episodes 100
    lfm-policy export --demos demos/point.npz --to robomimic --out demos/point.hdf5

``--demos`` reads our ``.npz`` files, Robomimic ``.hdf5`` files (``--filter-key train`` reads a mask)
and LeRobot v3 directories; ``--obs-keys a,b`` picks observations (default: all low-dimensional
ones for Robomimic, ``observation.state`` for LeRobot, all for ``.npz``).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from .. import OUSchedule
from ..networks import count_parameters, width_for_parameters
from .demos import save_demos
from .formats import load_any_demos, save_robomimic
from .formats_lerobot import save_lerobot
from .policy import FlowPolicy, RegressionPolicy, load_policy
from .rollout import evaluate
from .tasks import TASKS, collect_demos

METHODS = ("lfm", "global", "regression")
EXPORTS = ("robomimic", "lerobot", "npz")


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


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--demos", required=True, help="a .npz demo file, a Robomimic .hdf5 file or a LeRobot v3 directory")
    p.add_argument("--obs-keys", default=None, help="comma-separated observation keys (LeRobot: columns)")
    p.add_argument("--filter-key", default=None, help="Robomimic only: read the demos of mask/<filter-key>")


def _load(args):
    keys = [k.strip() for k in args.obs_keys.split(",") if k.strip()] if args.obs_keys else None
    return load_any_demos(args.demos, obs_keys=keys, filter_key=args.filter_key)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lfm-policy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demos", help="run a task's scripted expert and save its successful episodes")
    p.add_argument("--task", required=True, choices=sorted(TASKS))
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p = sub.add_parser("train", help="train a policy on demos (.npz, Robomimic .hdf5 or a LeRobot v3 directory)")
    _demo_arguments(p)
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
    p = sub.add_parser("export", help="write demos as a Robomimic .hdf5 file, a LeRobot v3 directory or our .npz")
    _demo_arguments(p)
    p.add_argument("--to", required=True, choices=EXPORTS)
    p.add_argument("--fps", type=float, default=10, help="frames per second written to a LeRobot dataset")
    p.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.command == "demos":
        demos = collect_demos(args.task, args.episodes, seed=args.seed)
        save_demos(args.out, demos)
        print(json.dumps({**demos.meta, "steps": int(demos.action.shape[0]), "file": args.out}))
    elif args.command == "train":
        demos = _load(args)
        torch.manual_seed(args.seed)
        policy = build_policy(args.method, demos.obs_dims, demos.action.shape[1], args.network, args.width)
        policy.fit(demos, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
        policy.save(args.out)
        print(json.dumps({"method": args.method, "parameters": policy.n_parameters(), "file": args.out}))
    elif args.command == "export":
        demos = _load(args)
        if args.to == "robomimic":
            save_robomimic(args.out, demos)
        elif args.to == "lerobot":
            save_lerobot(args.out, demos, fps=args.fps)
        else:
            save_demos(args.out, demos)
        print(json.dumps({"format": args.to, "episodes": demos.n_episodes, "steps": int(demos.action.shape[0]),
                          "obs_keys": list(demos.obs), "file": args.out}))
    else:
        policy = load_policy(args.policy)
        report = evaluate(policy, args.task, args.episodes, seed=args.seed)
        print(json.dumps({"task": args.task, "episodes": args.episodes, "success_rate": report.success_rate,
                          "seconds_per_chunk": report.seconds_per_chunk}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
