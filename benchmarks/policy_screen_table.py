"""One table for a policy recipe screen: several ``bench_policy.py`` runs, one recipe variant each.

Reads ``<dir>/<variant>/policy_*.json`` (each written by ``benchmarks/bench_policy.py --out
<dir>/<variant> ...`` with the same task, seeds, checkpoints and test states) and writes
``<dir>/screen.{json,md}``, ``<dir>/screen.png`` and ``<dir>/screen_seconds.png``: per variant and method, the success rate at
every checkpoint (mean ± SE over training seeds), the paired difference LFM - global per
checkpoint (same seed, same test states), the same difference at equal training seconds (the
global flow's success at the wall time LFM's checkpoint took, interpolated along the global run's
checkpoints; only where both methods ran in the same invocation, so under similar load), and the recipe fields that differ from the base
variant's (``--base``, default the first by name; it comes first in the table). A variant run without the global flow (``--methods lfm``) borrows the global flow of a
variant whose recipe is the same once ``pool``, ``shared``, ``free_share``, ``h0``, ``rho`` and ``block_batch`` are
reset to their defaults: those knobs do not change the global policy, so its runs are the same. Recipes written
before a knob existed get the value those runs used (``PolicyRecipe.from_dict``).

    python benchmarks/policy_screen_table.py benchmarks/results/policy_screen --base lr1e-3
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from torchcfm_local.bench.report import write_results
from torchcfm_local.bench.seeds import mean_se
from torchcfm_local.policy.recipe import PolicyRecipe

#: recipe knobs that change the LFM policy alone (``blocks`` is not one: it sets the global flow's width)
LFM_ONLY = ("pool", "shared", "free_share", "h0", "rho", "block_batch")


def load(directory: Path, base: str = None) -> dict:
    """variant name -> the bench's ``results`` dict (plus its provenance): ``base`` first, then by name."""
    runs = {}
    for path in sorted(directory.glob("*/policy_*.json")):
        data = json.loads(path.read_text())
        results = dict(data["results"])
        # files from before a knob existed lack it; from_dict fills in what those runs did
        results["recipe"] = PolicyRecipe.from_dict(results["recipe"]).to_dict()
        runs[path.parent.name] = {**results, "provenance": data["provenance"]}
    if not runs:
        raise SystemExit(f"no <variant>/policy_*.json under {directory}")
    if base is not None:
        if base not in runs:
            raise SystemExit(f"--base {base!r} is not a variant under {directory}: {sorted(runs)}")
        runs = {base: runs[base], **{k: v for k, v in runs.items() if k != base}}
    protocols = {json.dumps({k: v for k, v in r["protocol"].items() if k != "demo_batch"}, sort_keys=True)
                 for r in runs.values()}
    if len(protocols) != 1:
        raise SystemExit(f"the runs under {directory} differ in their protocol (task, seeds, checkpoints, "
                         f"test states): {sorted(protocols)}")
    return runs


def _per_seed(records: list, method: str) -> dict:
    """(seed, epochs) -> success rate of ``method``."""
    return {(r["seed"], r["epochs"]): r["success_rate"] for r in records if r["method"] == method}


def _seconds(records: list, method: str) -> dict:
    """(seed, epochs) -> training seconds of ``method`` (LFM's pushforwards included); empty for runs
    written before the bench recorded them."""
    return {(r["seed"], r["epochs"]): r["train_seconds"] for r in records
            if r["method"] == method and r.get("train_seconds") is not None}


def success_at(curve: list[tuple[float, float]], seconds: float):
    """Success of a run with checkpoints ``[(train seconds, success), ...]`` (ascending) at ``seconds``,
    interpolated linearly; None outside the checkpoints (a run is not extrapolated). Any ascending
    measure of training works in place of seconds (``policy_equal_compute.py``: FLOPs)."""
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if x0 <= seconds <= x1:
            return y0 + (y1 - y0) * (seconds - x0) / (x1 - x0)
    return curve[0][1] if len(curve) == 1 and seconds == curve[0][0] else None


def equal_time(lfm: dict, glob: dict, lfm_s: dict, glob_s: dict, seeds: list, epochs: list) -> dict:
    """Mean ± SE training seconds per checkpoint of both methods, and per LFM checkpoint the paired
    LFM - global success with the global flow read at LFM's seconds (None where that falls outside
    a global run's checkpoints on any seed)."""
    out = {"lfm seconds": [mean_se([lfm_s[(s, e)] for s in seeds]) for e in epochs],
           "global seconds": [mean_se([glob_s[(s, e)] for s in seeds]) for e in epochs], "lfm - global": []}
    for e in epochs:
        diffs = [None if (g := success_at([(glob_s[(s, k)], glob[(s, k)]) for k in epochs], lfm_s[(s, e)])) is None
                 else lfm[(s, e)] - g for s in seeds]
        out["lfm - global"].append(None if None in diffs else mean_se(diffs))
    return out


def _global_records(name: str, runs: dict) -> tuple[list, str]:
    """The global flow's records for variant ``name`` and the variant they come from."""
    if any(r["method"] == "global" for r in runs[name]["records"]):
        return runs[name]["records"], name
    key = {**runs[name]["recipe"], **{k: PolicyRecipe().to_dict()[k] for k in LFM_ONLY}}
    for other, run in runs.items():
        if {**run["recipe"], **{k: key[k] for k in LFM_ONLY}} == key and \
                any(r["method"] == "global" for r in run["records"]):
            return run["records"], other
    return [], ""


def screen(runs: dict) -> dict:
    """Per variant: the recipe changes from the first (the base), the mean ± SE curves per method
    and the paired LFM - global curve."""
    first = next(iter(runs.values()))
    epochs, seeds = first["protocol"]["checkpoint_epochs"], first["protocol"]["seeds"]
    base = first["recipe"]
    out = {}
    for name, run in runs.items():
        changes = {k: v for k, v in run["recipe"].items() if base.get(k) != v}
        lfm = _per_seed(run["records"], "lfm")
        global_records, source = _global_records(name, runs)
        glob = _per_seed(global_records, "global")
        row = {"changes": changes, "global_from": source, "curves": {}}
        for method, values in (("lfm", lfm), ("global", glob)):
            if values:
                row["curves"][method] = [mean_se([values[(s, e)] for s in seeds]) for e in epochs]
        if lfm and glob:
            row["curves"]["lfm - global"] = [mean_se([lfm[(s, e)] - glob[(s, e)] for s in seeds]) for e in epochs]
            lfm_s, glob_s = _seconds(run["records"], "lfm"), _seconds(global_records, "global")
            if source == name and len(lfm_s) == len(lfm) and len(glob_s) == len(glob):  # timed in the same run
                row["equal_time"] = equal_time(lfm, glob, lfm_s, glob_s, seeds, epochs)
        out[name] = row
    return {"epochs": epochs, "seeds": seeds, "task": first["protocol"]["task"],
            "episodes": first["protocol"]["episodes"], "base_recipe": base, "variants": out}


def _pm(stat: dict, signed: bool = False) -> str:
    return f"{stat['mean']:{'+' if signed else ''}.2f}" + ("" if stat["se"] is None else f" ± {stat['se']:.2f}")


def markdown(result: dict, runs: dict) -> str:
    epochs = result["epochs"]
    lines = [f"## Policy recipe screen, {result['task']} task: success rate over {result['episodes']} fixed test "
             f"states, mean ± SE over {len(result['seeds'])} training seeds", "",
             "| variant | changes from the base | method | " + " | ".join(f"{e:g} ep" for e in epochs) + " |",
             "|---|---|---|" + "---|" * len(epochs)]
    for name, row in result["variants"].items():
        changes = ", ".join(f"{k}={v}" for k, v in row["changes"].items()) or "-"
        for i, (method, curve) in enumerate(row["curves"].items()):
            label = method + (f" (runs of `{row['global_from']}`)" if method == "global" and
                              row["global_from"] != name else "")
            lines.append(f"| {name if i == 0 else ''} | {changes if i == 0 else ''} | {label} | "
                         + " | ".join(_pm(s, signed=method == "lfm - global") for s in curve) + " |")
    timed = {name: row["equal_time"] for name, row in result["variants"].items() if "equal_time" in row}
    if timed:
        lines += ["", "### At equal training seconds", "",
                  "| variant | | " + " | ".join(f"{e:g} ep" for e in epochs) + " |", "|---|---|" + "---|" * len(epochs)]
        for name, row in timed.items():
            lines.append(f"| {name} | train s: lfm / global | " + " | ".join(
                f"{a['mean']:.1f} / {b['mean']:.1f}" for a, b in zip(row["lfm seconds"], row["global seconds"])) + " |")
            lines.append("| | lfm - global at LFM's seconds | " + " | ".join(
                "-" if d is None else _pm(d, signed=True) for d in row["lfm - global"]) + " |")
    lines += ["", f"Base variant: `{next(iter(runs))}`, recipe `{result['base_recipe']}`.",
              "`lfm - global`: per seed, LFM's success minus the global flow's at the same checkpoint (the same "
              "seed trains both on the same demos), then mean ± SE over seeds.",
              "At equal training seconds: per seed, LFM's success at a checkpoint minus the global flow's at the "
              "training seconds that checkpoint took (linear between the global run's checkpoints; `-` where "
              "that is before its first or after its last checkpoint on some seed). Seconds are wall time of "
              "each run's training, so they carry the machine's load at that moment.",
              "Runs: " + "; ".join(f"`{n}`: `{r['provenance']['command']}` at {r['provenance']['commit'][:7]}"
                                   for n, r in runs.items()) + "."]
    return "\n".join(lines)


def figure(result: dict, path: Path, by: str = "epochs") -> None:
    """Success against epochs (``by="epochs"``) or against mean training seconds (``"seconds"``,
    variants with timed runs only), one panel per variant, bands of ± SE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n, row in result["variants"].items() if by == "epochs" or "equal_time" in row]
    if not names:
        return
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        row = result["variants"][name]
        for method, color in (("global", "tab:blue"), ("lfm", "tab:orange")):
            curve = row["curves"].get(method)
            if curve is None:
                continue
            x = result["epochs"] if by == "epochs" else [s["mean"] for s in row["equal_time"][f"{method} seconds"]]
            mean = np.array([s["mean"] for s in curve])
            se = np.array([s["se"] or 0.0 for s in curve])
            ax.plot(x, mean, "o-", color=color, label=method)
            ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.25)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("epochs" if by == "epochs" else "training seconds")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("success rate")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{result['task']}: mean ± SE over {len(result['seeds'])} seeds", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--base", default=None, help="the variant the others are compared with (default: first by name)")
    args = parser.parse_args(argv)
    runs = load(args.directory, args.base)
    result = screen(runs)
    text = markdown(result, runs)
    write_results(args.directory, "screen", result, text)
    figure(result, args.directory / "screen.png")
    figure(result, args.directory / "screen_seconds.png", by="seconds")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
