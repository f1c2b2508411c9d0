"""The pillar experts (tasks ``pillar`` and ``pillar-reach``): success rate and the split between their two modes.

Writes ``benchmarks/results/<task>_expert.{json,md}``. Episodes are seeded as
:func:`torchcfm_local.policy.collect_demos` seeds them (batch b: environment and expert seed
``seed * 1000 + b``), so ``--episodes 100 --seed 0 --batch 20`` runs the episodes that
``collect_demos("pillar", 100, seed=0, batch=20)`` keeps demos from. A mode is read twice: the
side the expert drew (``side``) and the side of the pillar its cube (``pillar``) or its gripper
(``pillar-reach``) passed on (the mean y while beside the pillar); they agree on every episode
that passes it.

    python benchmarks/pillar_expert.py --episodes 100 --batch 20     # needs the [robot] extra
    python benchmarks/pillar_expert.py --task pillar-reach --episodes 100 --batch 25
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from torchcfm_local.bench.report import write_results
from torchcfm_local.policy import make_env
from torchcfm_local.policy.robosuite_pillar import passed_side

ROOT = Path(__file__).resolve().parent.parent


def run(env, episodes: int, seed: int, batch: int, key: str) -> list[dict]:
    """Every episode's drawn side, passed side (read off ``obs[key][:, :3]``), outcome and length."""
    rows = []
    for b, start in enumerate(range(0, episodes, batch)):
        n = min(batch, episodes - start)
        obs = env.reset(n, seed=seed * 1000 + b)
        expert = env.expert(seed * 1000 + b)
        paths, done, steps = [obs[key][:, :3]], np.zeros(n, bool), np.zeros(n, int)
        while not done.all():
            steps += ~done
            obs, done, success = env.step(expert.act(obs))
            paths.append(obs[key][:, :3])
        paths = np.stack(paths)
        for i in range(n):
            rows.append({"seed": seed * 1000 + b, "index": i, "side": int(expert.side[i]),
                         "passed": passed_side(paths[:, i]),
                         "success": bool(success[i]), "touched": bool(env.failed[i]), "steps": int(steps[i])})
        print(f"batch {b}: {int(success.sum())}/{n}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="pillar", choices=["pillar", "pillar-reach"])
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=20, help="episodes stepped together (~150 MB each)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args(argv)
    env = make_env(args.task)
    rows = run(env, args.episodes, args.seed, args.batch, "object-state" if args.task == "pillar" else "robot0_eef_pos")
    won = [r for r in rows if r["success"]]
    count = lambda rs, key, v: sum(r[key] == v for r in rs)  # noqa: E731
    lengths = [r["steps"] for r in won]
    summary = {
        "episodes": len(rows), "successes": len(won), "success_rate": len(won) / len(rows),
        "touched_pillar": count(rows, "touched", True),
        "drawn": {"left (+1)": count(rows, "side", 1), "right (-1)": count(rows, "side", -1)},
        "successes_passed": {"left (+1)": count(won, "passed", 1), "right (-1)": count(won, "passed", -1)},
        "passed_on_drawn_side": sum(r["passed"] == r["side"] for r in rows if r["passed"]),
        "steps_of_successes": {"min": min(lengths, default=None),
                               "median": float(np.median(lengths)) if lengths else None,
                               "max": max(lengths, default=None)},
    }
    text = "\n".join([
        f"## {args.task} expert: {len(won)}/{len(rows)} successes (seed {args.seed}, batches of {args.batch})", "",
        "| | left of the pillar (y > 0) | right (y < 0) |", "|---|---|---|",
        f"| side drawn | {summary['drawn']['left (+1)']} | {summary['drawn']['right (-1)']} |",
        f"| successes, by the side passed on | {summary['successes_passed']['left (+1)']} "
        f"| {summary['successes_passed']['right (-1)']} |", "",
        f"Pillar touched in {summary['touched_pillar']} episodes; {summary['passed_on_drawn_side']} episodes passed "
        f"on the side drawn. Steps of the successes: {summary['steps_of_successes']} (limit "
        f"{env.max_steps}).",
    ])
    write_results(args.out, f"{args.task}_expert", {"args": vars(args), "summary": summary, "episodes": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
