"""Policy success and per-chunk latency against the sampling NFE, global flow vs LFM.

Trains the default-recipe global and LFM policies (:class:`~torchcfm_local.policy.recipe.PolicyRecipe`,
equal parameters and epochs, one run per method and training seed), then samples each with RK4 at
several step counts: ``k`` steps per LFM block, and as many network evaluations per chunk (NFE) for
the global flow (``blocks * k`` steps in its one block). Per (method, NFE):

* success rate on the same ``--episodes`` test states (``--eval-seed``; sampling noise seeded by the
  training seed), mean ± SE over training seeds, and the paired change against the largest NFE;
* latency: the median wall time of one ``predict_action`` call for a single episode (one robot),
  over ``--latency-episodes`` rollouts, measured after all training and success rollouts so that
  nothing else of this script runs beside it. The load average at that moment is recorded: latency
  means "alone" only on an otherwise idle machine.

With ``--tols``, each trained policy is also sampled with RK4 steps per block picked by measured
error at each tolerance (:meth:`~torchcfm_local.policy.FlowPolicy.choose_sampling_steps`, probed on
the training demos; the global flow's one block is probed the same way), so the blocks need not
take equal steps; those rows give the chosen steps per seed and their mean NFE.

"Smallest NFE that keeps its success": the smallest NFE whose paired change against the largest
fixed NFE is at least minus one SE of that change (or zero), over the fixed and the chosen rows.

    python benchmarks/bench_policy_nfe.py          # point task, 3 seeds, 200 epochs
    # writes benchmarks/results/policy_nfe_point.{json,md}
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from torchcfm_local.bench.report import write_results
from torchcfm_local.bench.seeds import mean_se
from torchcfm_local.policy import TASKS, collect_demos, make_env
from torchcfm_local.policy.cli import build_policy
from torchcfm_local.policy.recipe import PolicyRecipe
from torchcfm_local.policy.rollout import evaluate
from torchcfm_local.solvers import ODEOptions

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ("global", "lfm")


def set_sampler(policy, method: str, setting: tuple, blocks: int, demos) -> list:
    """``("steps", k)``: RK4 with ``k`` steps per LFM block, or the same NFE in the global flow's one
    block; ``("tol", t)``: the steps per block that :meth:`choose_sampling_steps` picks at ``t``.
    Returns, for a tolerance, every block's measured relative error per step count tried."""
    kind, value = setting
    if kind == "tol":
        return [c.tried for c in policy.choose_sampling_steps(demos, value)]
    policy.ode = ODEOptions(solver="rk4", steps=value if method == "lfm" else value * blocks)
    return []


def label(setting: tuple) -> str:
    return f"{setting[0]}={setting[1]:g}"


def latency(policy, env, episodes: int, seed: int) -> float:
    """Median seconds of one ``predict_action`` call for one episode, over ``episodes`` single-episode rollouts."""
    calls = []
    for i in range(episodes):
        calls += evaluate(policy, env, 1, seed=seed + i).chunk_seconds
    return statistics.median(calls)


def keeps_success(change: dict) -> bool:
    return change["mean"] >= -(change["se"] or 0.0)


def summarize(records: list, settings: list, seeds: list) -> dict:
    """Per method and sampler setting: success and latency (mean ± SE over seeds), the NFE (mean
    over seeds), the paired change in success against the largest fixed NFE, and the smallest NFE
    that keeps the success."""
    out = {}
    largest = label(max(s for s in settings if s[0] == "steps"))
    for method in METHODS:
        by = {(r["seed"], r["setting"]): r for r in records if r["method"] == method}
        rows = []
        for setting in map(label, settings):
            rows.append({"setting": setting, "nfe": statistics.fmean(by[(s, setting)]["nfe"] for s in seeds),
                         "block_steps": [by[(s, setting)]["block_steps"] for s in seeds],
                         "success": mean_se([by[(s, setting)]["success"] for s in seeds]),
                         "change": mean_se([by[(s, setting)]["success"] - by[(s, largest)]["success"] for s in seeds]),
                         "latency_ms": mean_se([1e3 * by[(s, setting)]["latency_s"] for s in seeds])})
        kept = [r for r in rows if keeps_success(r["change"])]
        out[method] = {"rows": rows, "smallest_nfe_keeping": min(r["nfe"] for r in kept)}
    return out


def markdown(args, recipe, summary: dict, load: tuple) -> str:
    pm = lambda s, signed="": f"{s['mean']:{signed}.2f}" + ("" if s["se"] is None else f" ± {s['se']:.2f}")
    lines = [f"## {args.task}: success and latency against the sampling NFE ({args.seeds} training seeds, "
             f"{args.epochs:g} epochs, {args.episodes} test states)", "",
             "| method | RK4 steps | NFE per chunk | success | change vs largest NFE (paired) | ms per chunk, one episode |",
             "|---|---|---|---|---|---|"]
    for method, res in summary.items():
        for r in res["rows"]:
            lines.append(f"| {method} | {steps_cell(method, r, recipe.blocks)} | {r['nfe']:g} | {pm(r['success'])} "
                         f"| {pm(r['change'], '+')} | {pm(r['latency_ms'])} |")
    lines += ["", "Chosen steps are per block, block 1 (the data side) first, one tuple per training seed.",
              "Smallest NFE that keeps the success (paired change at least -1 SE): "
              + ", ".join(f"{m} {res['smallest_nfe_keeping']:g}" for m, res in summary.items()) + ".",
              f"Recipe: `{recipe.to_dict()}`; {args.demos} demos. Latency: median over the calls of "
              f"{args.latency_episodes} single-episode rollouts per policy, then mean ± SE over seeds; "
              f"load average (1, 5, 15 min) when it started: {', '.join(f'{x:.2f}' for x in load)}."]
    return "\n".join(lines)


def steps_cell(method: str, row: dict, blocks: int) -> str:
    kind, value = row["setting"].split("=")
    if kind == "tol":
        chosen = ", ".join("(" + ", ".join(map(str, b)) + ")" for b in row["block_steps"])
        return f"chosen at tol {value}: {chosen}"
    return str(int(value) * blocks) if method == "global" else f"{value} per block"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="point", choices=sorted(TASKS))
    parser.add_argument("--demos", type=int, default=200)
    parser.add_argument("--epochs", type=float, default=200.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--eval-seed", type=int, default=1000)
    parser.add_argument("--steps", default="1,2,4,6", help="RK4 steps per LFM block, ascending")
    parser.add_argument("--tols", default="", help="tolerances of choose_sampling_steps, e.g. 0.01,0.1 (none by default)")
    parser.add_argument("--latency-episodes", type=int, default=5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    settings = [("steps", k) for k in sorted(int(k) for k in args.steps.split(","))]
    settings += [("tol", t) for t in sorted(float(t) for t in args.tols.split(",") if t)]
    recipe = PolicyRecipe(epochs=args.epochs)
    demos = collect_demos(args.task, args.demos, seed=0)
    env = make_env(args.task)
    records, trained, samplers = [], [], {}
    for seed in range(args.seeds):
        for method in METHODS:
            policy = build_policy(method, demos.obs_dims, demos.action.shape[1], recipe=recipe)
            policy.fit(demos, **recipe.fit_options(), seed=seed, progress=False)
            trained.append((seed, method, policy))
            for setting in settings:
                errors = set_sampler(policy, method, setting, recipe.blocks, demos)
                samplers[(seed, method, setting)] = policy.ode
                report = evaluate(policy, env, args.episodes, seed=args.eval_seed, generator_seed=seed)
                block_steps = policy.ode.block_steps or (policy.ode.steps,) * policy.n_blocks
                records.append({"method": method, "seed": seed, "setting": label(setting), "block_steps": list(block_steps),
                                "block_errors": errors, "success": report.success_rate,
                                "nfe": float(policy.flow.last_stats.nfe)})
                print(f"{method} seed {seed}, {label(setting)} {block_steps}: success {report.success_rate:.2f}", flush=True)
    load = os.getloadavg()
    for seed, method, policy in trained:  # latency last, after everything else of this script
        for setting in settings:
            policy.ode = samplers[(seed, method, setting)]  # the sampler its success was measured with
            seconds = latency(policy, env, args.latency_episodes, args.eval_seed)
            next(r for r in records if (r["method"], r["seed"], r["setting"]) == (method, seed, label(setting)))["latency_s"] = seconds
    summary = summarize(records, settings, list(range(args.seeds)))
    text = markdown(args, recipe, summary, load)
    write_results(args.out, f"policy_nfe_{args.task}", {"recipe": recipe.to_dict(), "settings": [label(s) for s in settings],
                                                         "load": load, "summary": summary, "records": records}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
