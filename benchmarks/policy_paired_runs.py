"""Paired differences between two ``bench_policy.py`` runs that share demos, seeds and test states.

Two runs of the same task and protocol that differ in one recipe knob (e.g. ``--prediction``)
can be compared seed by seed: same demos, same training seed, same test initial states. For
every method in both and every checkpoint in both, this prints the success of each run and
the paired difference ``new - base`` (mean ± SE over the seeds the two share), and also the
base run's LFM against the new run's global flow (each method at the recipe it ran with).

    python benchmarks/policy_paired_runs.py NEW.json BASE.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torchcfm_local.bench.seeds import mean_se


def records(path: Path) -> dict:
    """``(method, seed, epochs) -> success rate`` of a ``bench_policy.py`` results file."""
    return {(r["method"], r["seed"], r["epochs"]): r["success_rate"]
            for r in json.loads(Path(path).read_text())["results"]["records"]}


def paired(new: dict, base: dict, new_method: str, base_method: str) -> list[tuple]:
    """``(epochs, mean new, mean base, mean_se(new - base))`` per checkpoint both runs have, over shared seeds."""
    out = []
    for epochs in sorted({e for (m, _, e) in new if m == new_method}):
        seeds = sorted(s for (m, s, e) in new if m == new_method and e == epochs and (base_method, s, e) in base)
        if not seeds:
            continue
        a = [new[(new_method, s, epochs)] for s in seeds]
        b = [base[(base_method, s, epochs)] for s in seeds]
        out.append((epochs, sum(a) / len(a), sum(b) / len(b), mean_se([x - y for x, y in zip(a, b)]), seeds))
    return out


def fmt(stats: dict) -> str:
    return f"{stats['mean']:+.2f}" + ("" if stats["se"] is None else f" ± {stats['se']:.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("new", type=Path)
    parser.add_argument("base", type=Path)
    args = parser.parse_args(argv)
    new, base = records(args.new), records(args.base)
    lines = [f"new: `{args.new}`; base: `{args.base}`", "", "| new | base | epochs | seeds | new | base | new - base |",
             "|---|---|---|---|---|---|---|"]
    pairs = [(m, m) for m in ("global", "lfm", "regression")] + [("global", "lfm")]
    for new_method, base_method in pairs:
        for epochs, a, b, diff, seeds in paired(new, base, new_method, base_method):
            lines.append(f"| {new_method} | {base_method} | {epochs:g} | {len(seeds)} | {a:.2f} | {b:.2f} | {fmt(diff)} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
