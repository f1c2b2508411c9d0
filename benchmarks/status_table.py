"""Status of the density targets, built from multi-seed ``lfm-bench run`` outputs only.

For each task, the better global flow is the one with the lower mean test NLL over seeds. Every
LFM method is held against it on three targets:

- NLL: LFM's mean test NLL is at or below that global flow's (the paired difference, same seed =
  same data subsets, is shown with its standard error);
- batches: LFM's mean learning curve reaches that global flow's final mean curve NLL within half
  of the global flow's batches (linear interpolation between curve points; ``<=`` when the first
  point is already below, so the true number may be smaller);
- energy distance: the paired difference LFM - global is at most 2 standard errors above zero.

    python benchmarks/status_table.py benchmarks/results/quick3 --budget quick \\
        --tasks tree,rose,patches3x3,bsds300_patches --name status_quick

reads ``<dir>/<task>_<budget>/results.json`` (the aggregate of ``lfm-bench run --seeds ...``; with
several directories, from the one that holds that task) and writes ``<out>/<name>.{json,md}``. A
task run with fit options for every method (``lfm-bench run --standardize``) is labelled with them. A one-seed result is refused: a status claim needs seeds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torchcfm_local.bench.report import compare_to_reference, format_reach, write_results

ROOT = Path(__file__).resolve().parent.parent
BATCH_TARGET = 0.5  # at most this fraction of the global flow's batches
ED_SE = 2.0  # energy distance: paired difference at most this many standard errors above zero


def read_record(directories: list, task: str, budget: str) -> dict:
    """The multi-seed record of ``<directory>/<task>_<budget>/results.json`` in the one of
    ``directories`` that has it; ValueError if none or several do, or if it holds one seed."""
    found = [d / f"{task}_{budget}" / "results.json" for d in directories
             if (d / f"{task}_{budget}" / "results.json").exists()]
    if not found:
        raise ValueError(f"no {task}_{budget}/results.json in {', '.join(map(str, directories))}; run "
                         f"`lfm-bench run {task} --budget {budget} --seeds 0,1,2` first")
    if len(found) > 1:
        raise ValueError(f"{task}_{budget} is in several directories ({', '.join(map(str, found))}); pass one")
    path = found[0]
    record = json.loads(path.read_text())["results"]
    if "aggregate" not in record or record["aggregate"]["n_seeds"] < 2:
        raise ValueError(f"{path} holds one seed; the status table needs a multi-seed run (--seeds 0,1,2)")
    return record


def task_rows(record: dict) -> list[dict]:
    """One row per LFM method of a task: its numbers against the better global flow and the three targets."""
    agg = record["aggregate"]
    methods = {row["method"]: row for row in agg["methods"]}
    globals_ = [row for name, row in methods.items() if name.startswith("global")]
    if not globals_:
        raise ValueError(f"{record['task']['dataset']}: the run has no global flow to compare with")
    best = min(globals_, key=lambda row: row["test_nll"]["mean"])
    paired = {p["method"]: p for p in agg["paired"] if p["kind"] == "best global"}
    rows = []
    for name, lfm in methods.items():
        if not name.startswith("lfm"):
            continue
        reach = {key: lfm[key] for key in ("method", "batches", "curve")}
        compare_to_reference(reach, agg["methods"], reference=best["method"])
        ratio = reach["batch_ratio_to_reference"]
        d_nll, d_ed = paired[name]["test_nll"], paired[name]["energy_distance"]
        fit = record["task"].get("fit") or {}
        rows.append({
            "task": record["task"]["dataset"] + "".join(f" ({k}={v})" for k, v in fit.items()), "dim": record["dim"], "n_seeds": agg["n_seeds"],
            "global": best["method"], "global_test_nll": best["test_nll"], "method": name,
            "test_nll": lfm["test_nll"], "paired_test_nll": d_nll, "paired_energy_distance": d_ed,
            "batches_to_global_nll": reach["batches_to_reference_nll"], "batch_ratio": ratio,
            "batch_ratio_is_upper_bound": reach["batches_to_reference_is_upper_bound"], "batches_cell": format_reach(reach),
            "nll_met": lfm["test_nll"]["mean"] <= best["test_nll"]["mean"],
            "batches_met": ratio is not None and ratio <= BATCH_TARGET,
            "energy_met": d_ed["mean"] <= ED_SE * (d_ed["se"] or 0.0),
        })
    return rows


def _pm(stat: dict, digits: int, sign: bool = False) -> str:
    fmt = f"{'+' if sign else ''}.{digits}f"
    return f"{stat['mean']:{fmt}} ± {stat['se']:.{digits}f}"


def _digits(row: dict) -> int:
    return 3 if abs(row["global_test_nll"]["mean"]) < 20 else 2


def table(rows: list[dict], budget: str) -> str:
    """The markdown status table of :func:`task_rows`' rows."""
    lines = [f"### Density targets, {budget} budget (mean ± SE over seeds; paired: same seed, LFM - global)\n",
             "| task | d | seeds | better global: NLL | LFM | LFM NLL | Δ NLL (paired) | batches to the global's "
             f"final NLL | Δ energy dist. (paired) | NLL / batches <= {BATCH_TARGET}x / ED met? |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        k = _digits(r)
        met = " / ".join("yes" if r[key] else "no" for key in ("nll_met", "batches_met", "energy_met"))
        lines.append(f"| {r['task']} | {r['dim']} | {r['n_seeds']} | {r['global']}: {_pm(r['global_test_nll'], k)} "
                     f"| {r['method']} | {_pm(r['test_nll'], k)} | {_pm(r['paired_test_nll'], k, sign=True)} "
                     f"| {r['batches_cell']} | {_pm(r['paired_energy_distance'], 4, sign=True)} | {met} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, nargs="+",
                        help="the --out directories of the lfm-bench runs (each task is read from the one that has it)")
    parser.add_argument("--budget", default="quick")
    parser.add_argument("--tasks", default="tree,rose,patches3x3,bsds300_patches")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default=None, help="output file stem (default: status_<budget>)")
    args = parser.parse_args(argv)
    try:
        rows = [row for task in args.tasks.split(",") for row in task_rows(read_record(args.directory, task, args.budget))]
    except ValueError as err:
        print(f"status_table: error: {err}", file=sys.stderr)
        return 2
    text = table(rows, args.budget)
    write_results(args.out, args.name or f"status_{args.budget}", {"budget": args.budget, "rows": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
