"""LFM against the global flow at equal training compute (FLOPs) and at equal training seconds.

``bench_policy.py`` compares the methods at equal epochs. At equal epochs and parameters an LFM
policy spends far fewer FLOPs (each training row goes through one block network, a third of the
global network with three blocks), so this reads the global flow at the compute each LFM
checkpoint took. Give it ``bench_policy.py`` result files of one task, demo set, recipe (the
epochs aside) and test states: typically an LFM run and a global run on a finer grid of early
checkpoints, e.g.

    python benchmarks/bench_policy.py --task can --methods lfm --epochs 200 --eval-every 100 --out A
    python benchmarks/bench_policy.py --task can --methods global --epochs 100 --eval-every 10 --out B
    python benchmarks/policy_equal_compute.py A/policy_can.json B/policy_can.json --out DIR

Per training seed and LFM checkpoint, the global run's success is interpolated linearly between
its checkpoints at the LFM checkpoint's training FLOPs (``train_flops`` of the records,
:mod:`torchcfm_local.policy.flops`), and the paired difference LFM - global is given as mean ± SE
over the seeds; a checkpoint outside the global run's range on any seed gets no difference (runs
are not extrapolated). The same at equal training seconds (``train_seconds``; they depend on the
machine and its load, the FLOPs do not). Writes ``<name>.{json,md,png}``: the table and success
against training FLOPs per method (mean ± SE over seeds).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_policy  # noqa: E402  (figure and run files, next to this script)
from policy_screen_table import success_at as value_at  # noqa: E402  (linear between checkpoints, next to this script)

from torchcfm_local.bench.report import write_results  # noqa: E402
from torchcfm_local.bench.seeds import mean_se  # noqa: E402

#: what the runs must share: the protocol (its checkpoints and seeds aside) and the recipe (its epochs aside)
SHARED = ("episodes", "eval_seed", "demos", "task")
AXES = {"flops": "train_flops", "seconds": "train_seconds"}


def pooled_records(runs: list[dict]) -> tuple[list[dict], dict]:
    """Every record of ``runs`` (loaded json files) and the first run's results, after checking that
    they can be compared seed by seed; a (method, seed, epochs) in two runs is refused."""
    bench_policy.check_comparable(runs, SHARED, ignore=("epochs",))
    records = [r for run in runs for r in run["results"]["records"]]
    keys = [(r["method"], r["seed"], r["epochs"]) for r in records]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"checkpoints in more than one run: {twice[:3]}")
    missing = sorted({r["method"] for r in records if r.get("train_flops") is None})
    if missing:
        raise ValueError(f"records of {missing} lack train_flops (written before bench_policy recorded compute)")
    return records, runs[0]["results"]


def compare(records: list[dict], axis: str) -> list[dict]:
    """Per LFM checkpoint: LFM's compute on ``axis`` and success, the global flow's success and
    epochs at that compute (per seed, interpolated), and the paired LFM - global."""
    key = AXES[axis]
    by = {(r["method"], r["seed"], r["epochs"]): r for r in records}
    seeds = sorted({s for m, s, _ in by if m == "lfm"})
    curves = {s: sorted((g[key], g["success_rate"], g["epochs"]) for (m, gs, _), g in by.items()
                        if m == "global" and gs == s) for s in seeds}  # each seed's global run on ``axis``
    rows = []
    for epochs in sorted({e for m, _, e in by if m == "lfm"}):
        lfm = [by[("lfm", s, epochs)] for s in seeds]
        glob_success, glob_epochs = [], []
        for s, r in zip(seeds, lfm):
            curve = curves[s]
            glob_success.append(value_at([(x, y) for x, y, _ in curve], r[key]) if curve else None)
            glob_epochs.append(value_at([(x, e) for x, _, e in curve], r[key]) if curve else None)
        complete = None not in glob_success
        rows.append({"epochs": epochs, "seeds": seeds, axis: mean_se([r[key] for r in lfm]),
                     "lfm": mean_se([r["success_rate"] for r in lfm]),
                     "global": mean_se(glob_success) if complete else None,
                     "global_epochs": mean_se(glob_epochs) if complete else None,
                     "lfm - global": mean_se([r["success_rate"] - g for r, g in zip(lfm, glob_success)])
                     if complete else None})
    return rows


def _pm(stat, digits=2) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:+.{digits}f}" if stat["se"] is None else f"{stat['mean']:+.{digits}f} ± {stat['se']:.{digits}f}"


def _plain(stat, digits=2) -> str:
    return "-" if stat is None else _pm(stat, digits).lstrip("+")


def table(results: dict) -> str:
    lines = [f"## {results['task']}: LFM against the global flow at equal training compute", ""]
    for axis, unit in (("flops", "GFLOPs"), ("seconds", "s")):
        scale = 1e-9 if axis == "flops" else 1.0
        lines += [f"### At equal training {axis}", "",
                  f"| LFM epochs | LFM training {unit} | LFM | global at LFM's {axis} | global's epochs there "
                  "| LFM - global (paired) |", "|---|---|---|---|---|---|"]
        for row in results[axis]:
            spent = {k: (v * scale if isinstance(v, float) else v) for k, v in row[axis].items() if k != "values"}
            lines.append(f"| {row['epochs']:g} | {_plain(spent, 1)} | {_plain(row['lfm'])} | {_plain(row['global'])} "
                         f"| {_plain(row['global_epochs'], 0)} | {_pm(row['lfm - global'])} |")
        lines.append("")
    seeds = results["flops"][0]["seeds"] if results["flops"] else []
    lines += [f"Mean ± SE over {len(seeds)} training seed(s) ({', '.join(map(str, seeds))}); the global flow read "
              "per seed at LFM's compute, linear between its checkpoints; `-`: outside the global run's "
              "checkpoints on some seed. FLOPs: matrix multiplications and convolutions of training (forward "
              "and backward) and of LFM's pushforwards (torchcfm_local.policy.flops); seconds: wall time of the "
              "training as measured in the runs.", "",
              "Sources: " + "; ".join(f"`{s['file']}` (commit {str(s['commit'])[:7]})" for s in results["sources"]),
              f"Figure: `{results['name']}.png`."]
    return "\n".join(lines)


def figure(records: list[dict], path: Path, title: str) -> None:
    """Success against training GFLOPs per method, mean ± SE over seeds per checkpoint."""
    curves = {}
    for method in dict.fromkeys(r["method"] for r in records):
        for epochs in sorted({r["epochs"] for r in records if r["method"] == method}):
            mine = [r for r in records if r["method"] == method and r["epochs"] == epochs]
            curves.setdefault(method, []).append((1e-9 * float(np.mean([r["train_flops"] for r in mine])),
                                                  mean_se([r["success_rate"] for r in mine])))
    bench_policy.band_figure(curves, path, title, "training GFLOPs (LFM: pushforwards included)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="bench_policy.py json files")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", default=None, help="output name (default: policy_<task>_equal_compute)")
    args = parser.parse_args(argv)
    runs = bench_policy.read_runs(parser, args.runs)
    try:
        records, first = pooled_records(runs)
    except (ValueError, KeyError) as err:
        parser.error(f"cannot compare: {err}")
    methods = {r["method"] for r in records}
    if not {"lfm", "global"} <= methods:
        parser.error(f"the runs hold {sorted(methods)}; need both lfm and global")
    task = first["protocol"]["task"]
    name = args.name or f"policy_{task}_equal_compute"
    results = {"task": task, "name": name, "flops": compare(records, "flops"), "seconds": compare(records, "seconds"),
               "sources": [{"file": str(p), "commit": run["provenance"].get("commit")} for p, run in zip(args.runs, runs)]}
    args.out.mkdir(parents=True, exist_ok=True)
    figure([r for r in records if r["method"] in ("lfm", "global")], args.out / f"{name}.png",
           f"{task}: success against training compute, mean ± SE over seeds")
    text = table(results)
    write_results(args.out, name, results, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
