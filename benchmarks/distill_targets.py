"""The few-step targets of the distillation benchmark in one table, with paired differences over seeds.

Reads one or more ``bench_distill.py`` result files (``distill*.json``) and, for every dataset and
every NFE in ``--nfe`` (default 1, 2, 4), picks the best few-step sampler of each flow: the one with
the lowest mean energy distance among all fixed-step samplers at that NFE with the same parameter
budget (teachers with Euler/midpoint/RK4, distilled, reflowed, reflowed + distilled; not the
adaptive dopri5 rows and not the "unequal params" extra row). The table gives both means ± SE and
the paired difference LFM - global over the seeds both ran (the same seed draws the same data,
test set and noise), for the energy distance and, on data with known modes, the mode TV. A
negative difference favours LFM. Picking the best of several samplers by its mean favours the
picked one a little on its own seeds; the SE does not include that.

    python benchmarks/distill_targets.py benchmarks/results/distill_mixture_unequal.json \\
        benchmarks/results/distill_tree_rose.json benchmarks/results/distill_patches3x3.json \\
        benchmarks/results/distill_digits61.json
    # writes benchmarks/results/distill_targets.{json,md}
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from torchcfm_local.bench.report import write_results
from torchcfm_local.bench.seeds import mean_se

RESULTS = Path(__file__).resolve().parent / "results"


def _few_step(row: dict) -> bool:
    return row["group"] not in ("unequal", "reference") and row["kind"] != "adaptive"


def _flow(row: dict) -> str:
    return "LFM" if row["family"].startswith("LFM") else "global"


def best_pairs(rows: list[dict], nfes) -> list[dict]:
    """Per (dataset, NFE): the best few-step sampler of each flow and their paired differences.

    ``rows`` are a ``bench_distill`` run's per-seed rows (``per_seed_rows``).
    """
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for nfe in nfes:
            cands = [r for r in rows if r["dataset"] == dataset and _few_step(r) and r["nfe"] == nfe]
            best = {}
            for flow in ("LFM", "global"):
                by_method: dict[str, list[dict]] = {}
                for r in cands:
                    if _flow(r) == flow:
                        by_method.setdefault(r["method"], []).append(r)
                if by_method:
                    best[flow] = min(by_method.values(), key=lambda rs: mean_se([r["energy_distance"] for r in rs])["mean"])
            if len(best) < 2:
                continue
            entry = {"dataset": dataset, "nfe": nfe}
            lfm, glob = ({r["seed"]: r for r in best[f]} for f in ("LFM", "global"))
            seeds = sorted(set(lfm) & set(glob))
            for flow, by_seed in (("lfm", lfm), ("global", glob)):
                entry[f"{flow}_method"] = next(iter(by_seed.values()))["method"]
                entry[f"{flow}_params"] = next(iter(by_seed.values()))["params"]
            for stat in ("energy_distance", "mode_tv"):
                if lfm[seeds[0]][stat] is None:
                    entry[stat] = None
                    continue
                entry[stat] = {"lfm": mean_se([lfm[s][stat] for s in seeds]),
                               "global": mean_se([glob[s][stat] for s in seeds]),
                               "diff": mean_se([lfm[s][stat] - glob[s][stat] for s in seeds])}
            entry["seeds"] = seeds
            out.append(entry)
    return out


def _pm(stat: dict, digits: int, signed: bool = False) -> str:
    se = "" if stat["se"] is None else f" ± {stat['se']:.{digits}f}"
    return f"{stat['mean']:{'+' if signed else ''}.{digits}f}{se}"


def markdown(entries: list[dict], sources: list[str]) -> str:
    lines = ["# Best few-step sampler of each flow at equal NFE and parameters, paired over seeds", "",
             "Energy distance (squared, to held-out test data) and mode TV, lower is better; mean ± SE over "
             "the seeds in the last column. LFM - global: paired difference (same seed), negative favours LFM. "
             "Sources: " + ", ".join(f"`{s}`" for s in sources) + ".", "",
             "| dataset | NFE | best LFM sampler | ED | best global sampler | ED | ED, LFM - global "
             "| mode TV, LFM / global | mode TV, LFM - global | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        ed, tv = e["energy_distance"], e["mode_tv"]
        tv_cells = "- | -" if tv is None else (f"{tv['lfm']['mean']:.3f} / {tv['global']['mean']:.3f} "
                                               f"| {_pm(tv['diff'], 3, signed=True)}")
        lines.append(f"| {e['dataset']} | {e['nfe']} | {e['lfm_method']} | {_pm(ed['lfm'], 5)} "
                     f"| {e['global_method']} | {_pm(ed['global'], 5)} | {_pm(ed['diff'], 5, signed=True)} | {tv_cells} "
                     f"| {len(e['seeds'])} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("files", nargs="+", type=Path, help="bench_distill.py result files (distill*.json)")
    p.add_argument("--nfe", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default="distill_targets")
    args = p.parse_args(argv)
    entries, sources = [], []
    for path in args.files:
        results = json.loads(path.read_text())["results"]
        if "per_seed_rows" not in results:
            raise SystemExit(f"{path} has no per-seed rows (written by an older bench_distill.py?)")
        entries += best_pairs(results["per_seed_rows"], args.nfe)
        sources.append(path.name)
    md = markdown(entries, sources)
    print(md)
    write_results(args.out, args.name, {"nfe": args.nfe, "sources": sources, "entries": entries}, md)
    return entries


if __name__ == "__main__":
    main()
