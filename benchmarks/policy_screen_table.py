"""One table for a policy recipe screen: several ``bench_policy.py`` runs, one recipe variant each.

Reads ``<dir>/<variant>/policy_*.json`` (each written by ``benchmarks/bench_policy.py --out
<dir>/<variant> ...`` with the same task, seeds, checkpoints and test states) and writes
``<dir>/screen.{json,md}`` and ``<dir>/screen.png``: per variant and method, the success rate at
every checkpoint (mean ± SE over training seeds), the paired difference LFM - global per
checkpoint (same seed, same test states), and the recipe fields that differ from the base
variant's (``--base``, default the first by name; it comes first in the table). A variant run without the global flow (``--methods lfm``) borrows the global flow of a
variant whose recipe is the same once ``pool``, ``shared``, ``free_share``, ``h0`` and ``rho`` are
reset to their defaults: those knobs do not change the global policy, so its runs are the same. Recipes written
before a knob existed get its default, which is what those runs did.

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
LFM_ONLY = ("pool", "shared", "free_share", "h0", "rho")


def load(directory: Path, base: str = None) -> dict:
    """variant name -> the bench's ``results`` dict (plus its provenance): ``base`` first, then by name."""
    runs = {}
    for path in sorted(directory.glob("*/policy_*.json")):
        data = json.loads(path.read_text())
        results = dict(data["results"])
        # files from before a knob existed lack it; its default is what those runs did
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
    lines += ["", f"Base variant: `{next(iter(runs))}`, recipe `{result['base_recipe']}`.",
              "`lfm - global`: per seed, LFM's success minus the global flow's at the same checkpoint (the same "
              "seed trains both on the same demos), then mean ± SE over seeds.",
              "Runs: " + "; ".join(f"`{n}`: `{r['provenance']['command']}` at {r['provenance']['commit'][:7]}"
                                   for n, r in runs.items()) + "."]
    return "\n".join(lines)


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["variants"])
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        for method, color in (("global", "tab:blue"), ("lfm", "tab:orange")):
            curve = result["variants"][name]["curves"].get(method)
            if curve is None:
                continue
            mean = np.array([s["mean"] for s in curve])
            se = np.array([s["se"] or 0.0 for s in curve])
            ax.plot(result["epochs"], mean, "o-", color=color, label=method)
            ax.fill_between(result["epochs"], mean - se, mean + se, color=color, alpha=0.25)
        ax.set_title(name, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("epochs")
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
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
