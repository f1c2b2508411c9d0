"""Why policies fail on the pillar task: each rollout's outcome, the side it passed on, where it chose.

Trains every method (``--methods``, default regression, global, LFM) once per training seed with
the package's policy recipe (every recipe flag of ``bench_policy.py`` works here too) to one
budget (``--epochs``), rolls each policy out on the same ``--episodes`` test states as
``bench_policy.py`` (evaluation seed 1000), and classifies every episode from its recorded path:

* ``success``;
* ``touched, head-on``: the pillar was touched before the gripper got past it (gripper x below
  the pillar's back face, x = 0.03) and less than 5 cm off the centre line (y = 0), i.e. going
  straight at it, as the average of the two modes does;
* ``touched, beside``: touched before getting past it, further out (clipping its side or corner);
* ``touched, past it``: touched with the gripper past the pillar (on the way to the goal or
  lowering the cube onto it: the hand or the arm came down on the pillar);
* ``not lifted``: the cube never rose 3 cm above the table (the grasp failed);
* ``passed, not set down``: the cube got beside the pillar untouched but not onto the goal;
* ``stalled``: none of these before the step limit (the cube lifted, never beside the pillar).

Also per episode: the side the cube passed on (``passed_side``) and where the rollout chose a
side: the gripper's x when its |y| first exceeds 3 cm after the lift (the expert turns sideways
at the staging point, x = -0.16; the pillar's front face is at x = -0.03), and whether it switched
sides on the way (off the centre line on both sides before getting past the pillar). Writes
``benchmarks/results/pillar_outcomes.{json,md,png}`` (the figure: the gripper's paths, top view,
coloured by outcome, first training seed).

``--task pillar-reach`` does the same for the empty gripper (:class:`ReachPillar`): the gripper's
path stands in for the cube's, so nothing is "not lifted", "passed, not set down" means passed
but not over the goal, and the expert swerves at x = -0.13 after a straight approach.

    python benchmarks/pillar_outcomes.py --demos 100 --epochs 200 --seeds 3   # needs the [robot] extra
"""
from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import numpy as np

from torchcfm_local.bench.report import write_results
from torchcfm_local.bench.seeds import mean_se
from torchcfm_local.policy import collect_demos, make_env
from torchcfm_local.policy.cli import parse_bench_args
from torchcfm_local.policy.protocol import train_checkpoints
from torchcfm_local.policy.recipe import PolicyRecipe
from torchcfm_local.policy.rollout import evaluate
from torchcfm_local.policy.robosuite_pillar import (GOAL, GOAL_RADIUS, PILLAR_CENTER, PILLAR_HALF, REACH_RADIUS,
                                                    TABLE_Z, ReachExpert, ReachPillar, passed_side)

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("regression", "global", "lfm")
OUTCOMES = ("success", "touched, head-on", "touched, beside", "touched, past it", "not lifted",
            "passed, not set down", "stalled")
HEAD_ON_Y = 0.05  #: |gripper y| (m) under which a touch counts as head-on
LIFTED_Z = TABLE_Z + 0.05  #: the cube's centre (0.82 m at rest) 3 cm higher
CHOICE_Y = 0.03  #: |gripper y| (m) that marks the side chosen


def classify(cube: np.ndarray, eef: np.ndarray, touched: bool, success: bool) -> dict:
    """One episode's outcome from its cube and gripper paths ``(T, 3)`` (frames after the episode
    ended repeat its last state): ``outcome`` (one of :data:`OUTCOMES`), ``side`` (+1 left, -1
    right, 0 never beside the pillar), ``choice_x`` (the gripper's x when it first left the
    centre line by :data:`CHOICE_Y` after the lift; None if it never did) and ``switched``
    (after the lift and before its gripper got past the pillar, the rollout was more than
    :data:`CHOICE_Y` off the centre line on both sides: it changed its mode on the way)."""
    lifted = cube[:, 2] > LIFTED_Z
    side = passed_side(cube)
    after = np.flatnonzero(lifted)
    choice_x, switched = None, False
    if after.size:
        off = np.flatnonzero(np.abs(eef[after[0]:, 1]) > CHOICE_Y)
        choice_x = float(eef[after[0] + off[0], 0]) if off.size else None
        way = eef[after[0]:]
        way = way[way[:, 0] <= PILLAR_CENTER[0] + PILLAR_HALF[0]]
        switched = bool((way[:, 1] > CHOICE_Y).any() and (way[:, 1] < -CHOICE_Y).any())
    if success:
        outcome = "success"
    elif touched:
        if eef[-1, 0] > PILLAR_CENTER[0] + PILLAR_HALF[0]:
            outcome = "touched, past it"
        else:
            outcome = "touched, head-on" if abs(eef[-1, 1]) < HEAD_ON_Y else "touched, beside"
    elif not lifted.any():
        outcome = "not lifted"
    elif side != 0:
        outcome = "passed, not set down"
    else:
        outcome = "stalled"
    return {"outcome": outcome, "side": side, "choice_x": choice_x, "switched": switched}


def run(args, recipe: PolicyRecipe) -> tuple[list[dict], dict]:
    from tqdm.auto import tqdm

    demos = collect_demos(args.task, args.demos, seed=0, batch=args.demo_batch)
    env = make_env(args.task)
    rows, paths = [], {}
    jobs = [(seed, method) for seed in range(args.seeds) for method in args.methods]
    for seed, method in tqdm(jobs, desc="policies"):
        (ckpt,) = train_checkpoints(method, demos, recipe, [recipe.epochs], seed)
        report = evaluate(ckpt.policy, env, args.episodes, seed=args.eval_seed, generator_seed=seed, record=True)
        eef = report.trace["robot0_eef_pos"]
        cube = eef if args.task == "pillar-reach" else report.trace["object-state"][:, :, :3]
        for i in range(args.episodes):
            rows.append({"method": method, "seed": seed, "episode": i,
                         **classify(cube[:, i], eef[:, i], bool(env.failed[i]), bool(report.successes[i]))})
        if seed == 0:
            paths[method] = (eef[:, :, :2], [r["outcome"] for r in rows[-args.episodes:]])
        print(f"seed {seed} {method}: " + ", ".join(
            f"{k} {v}" for k, v in collections.Counter(r["outcome"] for r in rows[-args.episodes:]).items()), flush=True)
    return rows, {"demos": demos.meta, "paths": paths}


def _mean_se_or_none(values: list) -> dict:
    return mean_se(values) if values else {"mean": None, "se": None, "values": []}


def summarize(rows: list[dict], methods, seeds: int) -> dict:
    """Per method: each outcome's and each side's share of the episodes (mean ± SE over seeds) and
    the gripper's x at the side choice (mean ± SE over seeds of the per-seed mean)."""
    out = {}
    for method in methods:
        per_seed = [[r for r in rows if r["method"] == method and r["seed"] == s] for s in range(seeds)]
        share = lambda pred: mean_se([np.mean([pred(r) for r in rs]) for rs in per_seed])  # noqa: E731
        choices = [[r["choice_x"] for r in rs if r["choice_x"] is not None] for rs in per_seed]
        out[method] = {
            "outcomes": {o: share(lambda r, o=o: r["outcome"] == o) for o in OUTCOMES},
            "sides": {"left": share(lambda r: r["side"] == 1), "right": share(lambda r: r["side"] == -1)},
            "choice_x": _mean_se_or_none([float(np.mean(c)) for c in choices if c]),
            "no_choice": share(lambda r: r["choice_x"] is None),
            "switched": share(lambda r: r["switched"]),
            "touched": sum(r["outcome"].startswith("touched") for rs in per_seed for r in rs),
            "touched_switched": sum(r["outcome"].startswith("touched") and r["switched"] for rs in per_seed for r in rs),
        }
    return out


def path_figure(paths: dict, out: Path, task: str = "pillar") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = dict(zip(OUTCOMES, ["tab:green", "tab:red", "tab:orange", "tab:brown", "0.5", "tab:purple", "tab:blue"]))
    fig, axes = plt.subplots(1, len(paths), figsize=(4.2 * len(paths), 4), sharex=True, sharey=True, squeeze=False)
    for ax, (method, (xy, outcomes)) in zip(axes[0], paths.items()):
        for i, outcome in enumerate(outcomes):
            ax.plot(xy[:, i, 0], xy[:, i, 1], color=colours[outcome], lw=0.7, alpha=0.8)
        half, radius = (ReachPillar.pillar_half, REACH_RADIUS) if task == "pillar-reach" else (PILLAR_HALF, GOAL_RADIUS)
        x0, y0 = PILLAR_CENTER[:2] - half[:2]
        ax.add_patch(plt.Rectangle((x0, y0), 2 * half[0], 2 * half[1], color="k", alpha=0.4))
        ax.add_patch(plt.Circle(tuple(GOAL), radius, color="tab:green", alpha=0.3))
        ax.set_xlim(-0.3, 0.3)
        ax.set_ylim(-0.35, 0.35)
        ax.set_title(f"{method} (seed 0)")
        ax.set_xlabel("gripper x (m)")
        ax.set_aspect("equal")
    axes[0, 0].set_ylabel("gripper y (m)")
    for outcome, colour in colours.items():
        axes[0, -1].plot([], [], color=colour, label=outcome)
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _pm(stat) -> str:
    if stat["mean"] is None:
        return "-"
    return f"{stat['mean']:.2f}" + ("" if stat["se"] is None else f" ± {stat['se']:.2f}")


def table(summary: dict, args, recipe: PolicyRecipe, demos: dict) -> str:
    head = ["method", *OUTCOMES, "passed left", "passed right", "switched sides", "gripper x at side choice"]
    lines = [f"## {args.task} task: outcome of each rollout, share of {args.episodes} test states, mean ± SE over "
             f"{args.seeds} training seed(s)", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, row in summary.items():
        cells = [_pm(row["outcomes"][o]) for o in OUTCOMES] + [_pm(row["sides"]["left"]), _pm(row["sides"]["right"]),
                                                               _pm(row["switched"])]
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {_pm(row['choice_x'])} |")
    lines += ["", f"Training: {demos['episodes_kept']} expert demos (seed 0), {recipe.epochs:g} epochs, recipe "
              f"`{recipe.to_dict()}`. Head-on: touched before the gripper got past the pillar, within "
              f"{HEAD_ON_Y * 100:.0f} cm of y = 0; past it: touched with the gripper beyond the pillar's back face. "
              f"Side choice: the gripper's x when its |y| first exceeds {CHOICE_Y * 100:.0f} cm after the lift "
              + ("(the expert swerves at x = {:g} after a straight approach; ".format(ReachExpert.BRANCH_X)
                 if args.task == "pillar-reach" else "(the expert's staging point is x = -0.16; ")
              + "the pillar spans x = -0.03 .. 0.03). "
              f"Switched sides: more than {CHOICE_Y * 100:.0f} cm off y = 0 on both sides between the lift and "
              "the pillar's back face. Touched rollouts that had switched sides (all seeds): "
              + "; ".join(f"{m} {row['touched_switched']} of {row['touched']}" for m, row in summary.items())
              + f". Figure: `{args.name}.png`."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="pillar", choices=["pillar", "pillar-reach"])
    parser.add_argument("--demos", type=int, default=100)
    parser.add_argument("--demo-batch", type=int, default=20)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--eval-seed", type=int, default=1000)
    parser.add_argument("--name", default="pillar_outcomes")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    PolicyRecipe.add_arguments(parser)
    args, recipe = parse_bench_args(parser, argv, METHODS, ("demos", "demo_batch", "seeds", "episodes"))
    rows, extra = run(args, recipe)
    summary = summarize(rows, args.methods, args.seeds)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path_figure(extra["paths"], out / f"{args.name}.png", args.task)
    text = table(summary, args, recipe, extra["demos"])
    write_results(args.out, args.name, {"args": vars(args), "recipe": recipe.to_dict(), "demos": extra["demos"],
                                        "summary": summary, "episodes": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
