"""``lfm-policy``: generate demos, train a policy, evaluate it, export demos to other formats.

    lfm-policy demos --task point --episodes 200 --out demos/point.npz
    lfm-policy train --demos demos/point.npz --method lfm --epochs 100 --out policies/point_lfm.pt
    lfm-policy train --demos demos/point.npz --h0 0.2 --rho 1.25 --path linear --lr 1e-4 \
        --weight-decay 1e-6 --warmup 500 --lr-decay cosine --ema-decay 0.999 --out policies/point_dp.pt
    lfm-policy train --demos demos/point.npz --pool ou --shared --lr-decay cosine --out policies/point_shared.pt
    lfm-policy train --demos demos/point.npz --method global --prediction data --out policies/point_global_data.pt
    lfm-policy eval --task point --policy policies/point_lfm.pt --episodes 100
    lfm-policy export --demos demos/point.npz --to robomimic --out demos/point.hdf5

``--demos`` reads our ``.npz`` files, Robomimic ``.hdf5`` files (``--filter-key train`` reads a mask)
and LeRobot v3 directories; ``--obs-keys a,b`` picks observations (default: all low-dimensional
ones for Robomimic, ``observation.state`` for LeRobot, all for ``.npz``). ``train`` takes every
field of :class:`~torchcfm_local.policy.recipe.PolicyRecipe` as a flag (defaults there), prints the
recipe it used and stores it in the policy file. A flow policy then samples with the RK4 steps per
block that keep each block's measured error within ``--sampling-tol`` (default
:data:`~torchcfm_local.training.steps.SAMPLING_TOL`; ``none``: equal steps in every block).
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import torch

from ..networks import count_parameters, width_for_parameters
from ..solvers import ODEOptions
from ..training.steps import SAMPLING_TOL
from .demos import save_demos
from .formats import load_any_demos, save_robomimic
from .formats_lerobot import save_lerobot
from .policy import POLICY_RK4_STEPS, FlowPolicy, RegressionPolicy, load_policy
from .recipe import PolicyRecipe
from .rollout import evaluate
from .tasks import TASKS, collect_demos

METHODS = ("lfm", "global", "regression")
EXPORTS = ("robomimic", "lerobot", "npz")


def parse_methods(text: str, allowed=METHODS) -> list[str]:
    """A comma-separated list of policy methods (the benchmarks' ``--methods``), in the order given.

    Raises:
        ValueError: an empty list or a name not in ``allowed``.
    """
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods or any(m not in allowed for m in methods):
        raise ValueError(f"--methods takes a comma-separated subset of {','.join(allowed)}, got {text!r}")
    return methods


def parse_bench_args(parser: argparse.ArgumentParser, argv, methods, at_least_one=()) -> tuple:
    """Parse a policy benchmark's flags: ``(args, recipe)``.

    ``parser`` has a ``--methods`` flag and the recipe's (:meth:`PolicyRecipe.add_arguments`);
    ``args.methods`` becomes the list :func:`parse_methods` reads from it (within ``methods``),
    every flag named in ``at_least_one`` (``"demo_batch"`` for ``--demo-batch``) must be >= 1,
    and the recipe is checked; any bad value exits with argparse's usage message.
    """
    args = parser.parse_args(argv)
    try:
        args.methods = parse_methods(args.methods, methods)
    except ValueError as err:
        parser.error(str(err))
    low = [f"--{name.replace('_', '-')}" for name in at_least_one if getattr(args, name) < 1]
    if low:
        parser.error(f"{', '.join(low)} must be >= 1")
    return args, _recipe(parser, args)


def build_policy(method: str, obs_dims: dict, action_dim: int, network: "str | None" = None,
                 width: "int | None" = None, lfm_blocks: "int | None" = None, *,
                 recipe: "PolicyRecipe | None" = None) -> "FlowPolicy | RegressionPolicy":
    """A policy of ``method`` built as ``recipe`` says (default :class:`PolicyRecipe`).

    LFM: ``recipe.schedule("lfm")`` with blocks of ``recipe.width``; global: one block whose network
    is widened until its parameter count matches the LFM policy's (equal parameters); regression: an
    MLP of ``recipe.width``. Both flows use ``recipe.matcher()`` (the path). With ``recipe.shared``
    the LFM blocks share one network (``FlowPolicy(shared=True)``), widened until its parameter
    count (core and block embedding) matches that of N separate blocks of ``recipe.width``; the
    global network is widened to that same count, so separate LFM, shared LFM and global have equal
    parameters (to the nearest width; U-Net widths in steps of 32). Both flows sample with RK4 at
    equal NFE: ``blocks * ceil(16 / blocks)`` steps in all (LFM: that many per block over its
    blocks; global: all of them in its one block). ``network``, ``width``
    and ``lfm_blocks``, when given, override the recipe's ``network``, ``width`` and ``blocks``. The
    policy keeps the recipe (``policy.recipe``); train it with ``policy.fit(demos, **policy.recipe.fit_options())``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    overrides = {"network": network, "width": width, "blocks": lfm_blocks}
    recipe = (recipe or PolicyRecipe()).replace(**{k: v for k, v in overrides.items() if v is not None})
    if method == "regression":
        return RegressionPolicy(obs_dims, action_dim, width=recipe.width, recipe=recipe)

    total_steps = recipe.blocks * math.ceil(POLICY_RK4_STEPS / recipe.blocks)  # equal NFE for both flows

    def make(schedule, w, shared=False):
        config = ({"down_dims": [w // 4, w // 2, w], "kernel_size": 5, "n_groups": 8, "time_dim": 32}
                  if recipe.network == "unet" else {"width": w, "activation": recipe.activation, "n_freq": recipe.n_freq})
        ode = ODEOptions(solver="rk4", steps=total_steps // schedule.n_blocks)
        return FlowPolicy(obs_dims, action_dim, schedule=schedule, network=recipe.network, network_config=config,
                          matcher=recipe.matcher(), ode=ode, recipe=recipe, shared=shared,
                          prediction=recipe.prediction)

    def widened(schedule, shared=False):  # the network of the separate LFM blocks' parameter count
        step = 32 if recipe.network == "unet" else 1  # U-Net widths stay multiples of 4 * n_groups
        best = width_for_parameters(lambda w: make(schedule, w, shared), budget, step=step, start=recipe.width)
        return make(schedule, best, shared)

    lfm = make(recipe.schedule("lfm"), recipe.width)
    budget = count_parameters(lfm)
    if method == "lfm":
        return widened(recipe.schedule("lfm"), shared=True) if recipe.shared else lfm
    return widened(recipe.schedule("global"))


def _sampling_tol(text: str):
    """``--sampling-tol``: a tolerance > 0, or ``"none"`` for equal steps in every block."""
    if text.strip().lower() == "none":
        return "none"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a tolerance > 0 or 'none', got {text!r}")
    return value


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--demos", required=True, help="a .npz demo file, a Robomimic .hdf5 file or a LeRobot v3 directory")
    p.add_argument("--obs-keys", default=None, help="comma-separated observation keys (LeRobot: columns)")
    p.add_argument("--filter-key", default=None, help="Robomimic only: read the demos of mask/<filter-key>")


def _load(args):
    keys = [k.strip() for k in args.obs_keys.split(",") if k.strip()] if args.obs_keys else None
    return load_any_demos(args.demos, obs_keys=keys, filter_key=args.filter_key)


def _recipe(parser: argparse.ArgumentParser, args) -> PolicyRecipe:
    """The recipe of the parsed flags; a bad value exits with argparse's usage message."""
    try:
        return PolicyRecipe.from_args(args)
    except ValueError as err:
        parser.error(str(err))


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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--sampling-tol", type=_sampling_tol, default=None,
                   help="flows: after training, pick the RK4 steps of each block by measured error at this "
                        f"tolerance (FlowPolicy.choose_sampling_steps; default {SAMPLING_TOL}); 'none': equal "
                        "steps in every block, at the NFE both flows get (the benchmarks' setting)")
    PolicyRecipe.add_arguments(p)
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
        recipe = _recipe(parser, args)
        demos = _load(args)
        torch.manual_seed(args.seed)
        policy = build_policy(args.method, demos.obs_dims, demos.action.shape[1], recipe=recipe)
        if args.sampling_tol is not None and args.method == "regression":
            parser.error("--sampling-tol applies to the flows (global, lfm), not to regression")
        policy.fit(demos, **recipe.fit_options(), seed=args.seed)
        tol = SAMPLING_TOL if args.sampling_tol is None else args.sampling_tol
        if args.method != "regression" and tol != "none":
            policy.choose_sampling_steps(demos, tol)
        policy.save(args.out)
        print(json.dumps({"method": args.method, "parameters": policy.n_parameters(), "seed": args.seed,
                          "recipe": recipe.to_dict(), "file": args.out,
                          **({} if args.method == "regression" else {"sampling": policy.ode.to_dict()})}))
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
