"""Join ``bench_policy.py`` runs of one protocol that trained different seeds or methods into one result.

Robot tasks at real budgets take longer per seed than one session or machine allows, so a
protocol's seeds can run in separate invocations (``bench_policy.py --seeds 1 --first-seed S``),
and its methods in parallel ones (``--methods lfm`` beside ``--methods global,regression``).
This reads their json files, checks that they ran the same recipe, task, demos, checkpoints and
test states and that no method trained one seed twice, and writes ``<name>.{json,md,png}`` to
``--out`` as one ``bench_policy.py`` run over all their seeds and methods would: the same summary
(mean ± SE over seeds), table and figure. The json lists every source file with its own
provenance (command, commit).

    python benchmarks/policy_merge_runs.py RUN.json RUN.json ... --out DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_policy  # noqa: E402  (the table and figure of a run, next to this script)

from torchcfm_local.bench.report import write_results  # noqa: E402
from torchcfm_local.policy.protocol import summarize  # noqa: E402
from torchcfm_local.policy.recipe import PolicyRecipe  # noqa: E402

#: what the runs must share (the protocol's fields but its seeds; the demos' metadata)
SHARED = ("checkpoint_epochs", "episodes", "eval_seed", "last", "demos", "task")


def merge(runs: list[dict]) -> dict:
    """The ``results`` of one run over the union of ``runs``' seeds (each a loaded json file).

    Raises:
        ValueError: fewer than two runs, or runs that differ in recipe, protocol or demos, or share a seed.
    """
    if len(runs) < 2:
        raise ValueError(f"give at least two runs to merge, got {len(runs)}")
    bench_policy.check_comparable(runs, SHARED)
    first = runs[0]["results"]
    recipe = PolicyRecipe.from_dict(first["recipe"]).to_dict()  # fields an older run lacks: what it trained with
    for i, run in enumerate(runs[1:], start=2):
        if run["results"]["demos"].get("expert_success_rate") != first["demos"].get("expert_success_rate"):
            raise ValueError(f"run {i} trained on other demos than run 1 (expert success differs)")
    trained = [sorted({(r["method"], r["seed"]) for r in run["results"]["records"]}) for run in runs]
    pairs = [pair for run in trained for pair in run]
    twice = sorted({pair for pair in pairs if pairs.count(pair) > 1})
    if twice:
        raise ValueError(f"(method, seed) pairs {twice} appear in more than one run")
    records = [r for run in runs for r in run["results"]["records"]]
    methods = list(dict.fromkeys(r["method"] for r in records))
    seeds = {s for run in runs for s in run["results"]["protocol"]["seeds"]}
    protocol = {**first["protocol"], "seeds": sorted(seeds)}
    demo_meta = next((run["results"]["demos"] for run in runs if "steps" in run["results"]["demos"]),
                     first["demos"])
    return {"recipe": recipe, "protocol": protocol,
            "summary": summarize(records, protocol["last"], methods), "records": records, "demos": demo_meta}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench_policy.py json files")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged json, md and png")
    args = parser.parse_args(argv)
    runs = bench_policy.read_runs(parser, args.runs)
    try:
        results = merge(runs)
    except (ValueError, KeyError) as err:
        parser.error(f"cannot merge: {err}")
    name = args.runs[0].stem
    results["sources"] = [{"file": str(p), "seeds": run["results"]["protocol"]["seeds"],
                           "provenance": run["provenance"]} for p, run in zip(args.runs, runs)]
    protocol, summary = results["protocol"], results["summary"]
    args.out.mkdir(parents=True, exist_ok=True)
    bench_policy.curve_figure(summary, args.out / f"{name}.png", f"{protocol['task']}: mean ± SE over "
                              f"{len(protocol['seeds'])} seed(s), {protocol['episodes']} test states")
    text = bench_policy.table(protocol, PolicyRecipe.from_dict(results["recipe"]), summary, results["records"],
                              results["demos"], name,
                              with_chunks=False)  # the chunk figure is one run's
    text += "\n\nMerged from: " + "; ".join(
        f"`{s['file']}` (seeds {s['seeds']}, commit {str(s['provenance'].get('commit'))[:7]})" for s in results["sources"])
    write_results(args.out, name, results, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
