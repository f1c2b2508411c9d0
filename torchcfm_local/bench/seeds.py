"""Several seeds of one ``lfm-bench`` task: the runs, their mean ± standard error and paired differences.

:func:`run_seeds` runs :func:`~torchcfm_local.bench.protocol.run_task` once per seed (each seed
draws its own data subsets and initializations); :func:`aggregate` turns the per-seed results into
per-method means and standard errors (SE = sample standard deviation, ddof = 1, over sqrt(n)),
paired differences LFM - global over seeds (the same seed is the same data subset), and mean
learning curves, on which the batches LFM needs to reach the global flow's final NLL are found
with the one-seed logic (:func:`~torchcfm_local.bench.report.compare_to_reference`).
:func:`write_seeds` writes the aggregate ``results.json``, ``results.md`` and ``curves.png``.
"""
from __future__ import annotations

import json
import math
import os
import re
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional, Sequence

from .report import compare_to_reference, format_reach, run_heading, write_results

__all__ = ["METRICS", "default_seeds", "check_seeds", "parse_seeds", "read_finished_seed", "run_seeds", "mean_se",
           "aggregate", "seeds_record", "seeds_table", "write_seeds"]

#: per-method numbers that are averaged over seeds (``train_push_seconds``: training + LFM pushforward)
METRICS = ("test_nll", "val_nll", "energy_distance", "sample_nfe", "train_push_seconds")
#: numbers of which the paired differences LFM - global are reported
PAIRED_METRICS = ("test_nll", "energy_distance")


def default_seeds(budget_name: str) -> list[int]:
    """``[0, 1, 2]`` for the ``medium`` and ``full`` budgets, ``[0]`` for the others (smoke, quick, custom)."""
    return [0, 1, 2] if budget_name in ("medium", "full") else [0]


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """``seeds`` as a list after checking it: at least one, each an int >= 0, no repeats; else ValueError."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seeds must be ints >= 0, got {seed!r}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"seeds must be distinct; repeated: {', '.join(map(str, repeated))}")
    return seeds


def parse_seeds(text: str) -> list[int]:
    """Seeds from the command line: ``"0,1,2"`` -> ``[0, 1, 2]``; ValueError for anything else."""
    parts = [p.strip() for p in text.split(",")]
    bad = [p for p in parts if not re.fullmatch(r"[0-9]+", p)]
    if bad:
        raise ValueError(f"--seeds takes comma-separated ints >= 0 such as 0,1,2; got {text!r}")
    return check_seeds([int(p) for p in parts])


def _json_ready(value):
    """``value`` as it reads back from JSON (tuples become lists), for comparing settings with a file's."""
    return json.loads(json.dumps(value, default=float))


def read_finished_seed(path: "str | os.PathLike", task, budget, methods: Sequence[str], seed: int) -> Optional[dict]:
    """The result of an earlier run of this seed read from its ``results.json``, or None when there is none.

    ``task`` and ``budget`` are the :class:`~.registry.Task` and :class:`~.registry.Budget` about to
    run and ``methods`` their method names. Returns ``{"result": ..., "provenance": ...}`` as
    :func:`~torchcfm_local.bench.report.write_results` wrote them. Raises ValueError when the file
    cannot be read or holds a different seed, recipe, budget or method list (reusing it would mix
    two experiments in one table).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        result, prov = data["results"], data["provenance"]
        found = {"seed": result["seed"], "task": result["task"], "budget": result["budget_settings"],
                 "methods": [row["method"] for row in result["summary"]]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a readable lfm-bench result of one seed ({err!r}); move it away or "
                         "drop --resume") from None
    expected = {"seed": seed, "task": _json_ready(asdict(task)), "budget": _json_ready(asdict(budget)),
                "methods": list(methods)}
    differ = [key for key in expected if found[key] != expected[key]]
    if differ:
        raise ValueError(f"{path} holds a run with a different {', '.join(differ)} than this one; use another --out "
                         "or drop --resume")
    return {"result": result, "provenance": prov}


def run_seeds(task_name, budget_name="quick", methods=None, *, seeds: Optional[Sequence[int]] = None, root=None,
              progress: bool = True, log=print, on_run: Optional[Callable] = None,
              finished: Optional[dict] = None) -> list[dict]:
    """Run :func:`~torchcfm_local.bench.protocol.run_task` once per seed; returns each seed's result dict.

    Arguments as for ``run_task``; ``seeds`` defaults to :func:`default_seeds` of the budget. The
    seeds are checked before anything runs. ``on_run(run)`` receives each seed's
    :class:`~torchcfm_local.bench.protocol.BenchRun` (with its models and samples) as soon as it
    finishes, for example to write its files; only the JSON-ready ``run.result`` dicts are kept and
    returned, in seed order (pass them to :func:`aggregate` or :func:`write_seeds`). ``finished``
    maps seeds to result dicts of earlier runs (:func:`read_finished_seed`): those seeds are not
    run again and their results are returned in their place.
    """
    from .protocol import resolve, run_task

    _, task_label, _, budget_label, _ = resolve(task_name, budget_name, methods)
    seeds = default_seeds(budget_label) if seeds is None else check_seeds(seeds)
    finished = finished or {}
    results = []
    for i, seed in enumerate(seeds):
        if seed in finished:
            log(f"[{task_label}/{budget_label}] seed {seed} ({i + 1} of {len(seeds)}): finished earlier, reused")
            results.append(finished[seed])
            continue
        log(f"[{task_label}/{budget_label}] seed {seed} ({i + 1} of {len(seeds)})")
        run = run_task(task_name, budget_name, methods, root=root, seed=seed, progress=progress, log=log)
        if on_run is not None:
            on_run(run)
        results.append(run.result)
    return results


def mean_se(values: Sequence[float]) -> dict:
    """``{"mean", "se", "values"}``: SE is the sample standard deviation (ddof 1) over sqrt(n); None for one value."""
    values = [float(v) for v in values]
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None
    return {"mean": statistics.fmean(values), "se": se, "values": values}


def _check_comparable(results: list[dict]) -> None:
    """ValueError unless the results are distinct seeds of the same task, budget, methods and curve batches."""
    if not results:
        raise ValueError("aggregate needs at least one seed's result")
    first = results[0]

    def key(r):
        return (r["task"]["dataset"], r["budget"], r["total_batches"], r["n_blocks"],
                [(row["method"], [b for b, _ in row["curve"]]) for row in r["summary"]])

    for r in results[1:]:
        if key(r) != key(first):
            raise ValueError(f"seed {r['seed']} is not the same task, budget, methods and batches as seed {first['seed']}")
    check_seeds([r["seed"] for r in results])


def _method_row(method: str, results: list[dict]) -> dict:
    """One method over seeds: mean ± SE of :data:`METRICS` and the mean learning curve (with SE and seconds)."""
    rows = [next(row for row in r["summary"] if row["method"] == method) for r in results]
    out = {"method": method, "params": rows[0]["params"], "batches": rows[0]["batches"], "n_seeds": len(rows),
           "train_gflops": rows[0].get("train_gflops")}  # the same for every seed
    for name in METRICS:
        if name == "train_push_seconds":
            out[name] = mean_se([row["train_seconds"] + row["pushforward_seconds"] for row in rows])
        else:
            out[name] = mean_se([row[name] for row in rows])
    points = [mean_se([row["curve"][i][1] for row in rows]) for i in range(len(rows[0]["curve"]))]
    batches = [b for b, _ in rows[0]["curve"]]
    out["curve"] = [(b, p["mean"]) for b, p in zip(batches, points)]  # the shape compare_to_reference reads
    out["curve_se"] = [p["se"] for p in points]
    seconds = []
    for b in batches:
        runs = [next(x for x in r["runs"] if x["method"] == method and x["batches"] == b) for r in results]
        seconds.append(statistics.fmean(x["train_seconds"] + x["pushforward_seconds"] for x in runs))
    out["curve_seconds"] = seconds
    return out


def _paired(rows: list[dict], results: list[dict]) -> list[dict]:
    """LFM - global per seed, then mean ± SE: against the global flow on the same path and the best global."""
    names = [row["method"] for row in rows]
    globals_ = [row for row in rows if not row["method"].startswith("lfm")]
    best = min(globals_, key=lambda row: row["test_nll"]["mean"])["method"] if globals_ else None
    per_seed = [{row["method"]: row for row in r["summary"]} for r in results]
    paired = []
    for name in names:
        if not name.startswith("lfm"):
            continue
        for kind, ref in (("same path", "global-" + name.split("-", 1)[1]), ("best global", best)):
            if ref not in names:
                continue
            entry = {"method": name, "reference": ref, "kind": kind, "n_seeds": len(results)}
            for metric in PAIRED_METRICS:
                entry[metric] = mean_se([s[name][metric] - s[ref][metric] for s in per_seed])
            paired.append(entry)
    return paired


def aggregate(results: list[dict]) -> dict:
    """Per-method mean ± SE over seeds, paired differences and batches-to-global-NLL on the mean curves.

    ``results`` are one :func:`~torchcfm_local.bench.protocol.run_task` result per seed (as
    :func:`run_seeds` returns them or as read from each seed's ``results.json``). Returns
    ``{"seeds", "n_seeds", "methods": [...], "paired": [...]}``: each ``methods`` row has
    ``{"mean", "se", "values"}`` for every name in :data:`METRICS`, the mean ``curve``
    (``[(batches, mean NLL), ...]``) with ``curve_se`` and ``curve_seconds``, and for an LFM method
    the keys of :func:`~torchcfm_local.bench.report.compare_to_reference` computed on the mean
    curves; each ``paired`` row is ``{"method", "reference", "kind"}`` (``"same path"`` or
    ``"best global"``, the global flow with the lowest mean test NLL) with mean ± SE over seeds
    of the per-seed differences LFM - reference in test NLL and energy distance.
    """
    _check_comparable(results)
    rows = [_method_row(row["method"], results) for row in results[0]["summary"]]
    for row in rows:
        if row["method"].startswith("lfm"):
            compare_to_reference(row, rows)
    return {"seeds": [r["seed"] for r in results], "n_seeds": len(results), "methods": rows,
            "paired": _paired(rows, results)}


def seeds_record(results: list[dict], reused: Optional[dict] = None) -> dict:
    """The JSON-ready record of a multi-seed run: the settings, the seeds, each seed's summary, the aggregate.

    ``reused`` maps the seeds read from earlier runs to those runs' provenance; the record keeps
    their command, commit and date under ``"reused"``.
    """
    record = {k: v for k, v in results[0].items() if k not in ("seed", "runs", "summary")}
    record["seeds"] = [r["seed"] for r in results]
    record["per_seed"] = [{"seed": r["seed"], "summary": r["summary"]} for r in results]
    record["aggregate"] = aggregate(results)
    record["reused"] = [{"seed": seed, **{k: prov.get(k) for k in ("command", "commit", "date")}}
                        for seed, prov in sorted((reused or {}).items())]
    return record


def _pm(stat: dict, digits: int) -> str:
    se = "n/a" if stat["se"] is None else f"{stat['se']:.{digits}f}"
    return f"{stat['mean']:.{digits}f} ± {se}"


def seeds_table(record: dict) -> str:
    """The markdown of a :func:`seeds_record`: heading, per-method table, paired differences, mean curves."""
    agg = record["aggregate"]
    n, seeds = agg["n_seeds"], ", ".join(map(str, agg["seeds"]))
    lines = [run_heading(record, f"{n} seeds: {seeds}"),
             f"Mean ± standard error over {n} seeds (SE = sample std / sqrt({n})); each seed draws its own data "
             "subsets and initializations. Batches and seconds (training + pushforward) to global NLL: on the mean "
             "learning curves; train GFLOPs: 6 x parameters per batch x batch size x batches.\n",
             "| method | params | seeds | test NLL | val NLL | energy dist. | NFE/sample | train+push s "
             "| train GFLOPs | batches to global NLL | seconds to global NLL |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in agg["methods"]:
        flops = "-" if r.get("train_gflops") is None else f"{r['train_gflops']:.3g}"
        lines.append(f"| {r['method']} | {r['params']} | {r['n_seeds']} | {_pm(r['test_nll'], 4)} "
                     f"| {_pm(r['val_nll'], 4)} | {_pm(r['energy_distance'], 4)} | {_pm(r['sample_nfe'], 1)} "
                     f"| {_pm(r['train_push_seconds'], 1)} | {flops} | {format_reach(r)} | {format_reach(r, 'seconds')} |")
    for old in record.get("reused", []):
        lines.append(f"\nSeed {old['seed']} was read from an earlier run (`--resume`): commit `{old['commit']}`, "
                     f"{old['date']}, command `{old['command']}`.")
    if agg["paired"]:
        lines += ["", "Paired differences over seeds (same seed = same data subsets; negative: LFM is better):", "",
                  "| LFM - global | test NLL | energy dist. | seeds |", "|---|---|---|---|"]
        for p in agg["paired"]:
            lines.append(f"| {p['method']} - {p['reference']} ({p['kind']}) | {_pm(p['test_nll'], 4)} "
                         f"| {_pm(p['energy_distance'], 4)} | {p['n_seeds']} |")
    lines.append("")
    lines.append("Mean learning curves (batches: mean NLL ± SE on the held-out curve subset): " + "; ".join(
        f"{r['method']}: " + ", ".join(f"{b}: {_pm({'mean': v, 'se': se}, 3)}" for (b, v), se in zip(r["curve"], r["curve_se"]))
        for r in agg["methods"]))
    return "\n".join(lines)


def write_seeds(results: list[dict], directory: "str | os.PathLike", figures: bool = True,
                reused: Optional[dict] = None) -> str:
    """Write the aggregate of several seeds to ``directory``; returns its markdown.

    Files: ``results.json`` (:func:`seeds_record` and the provenance), ``results.md`` and, with
    ``figures``, ``curves.png`` (mean learning curves with ± SE bands). Each seed's own files are
    written by :func:`~torchcfm_local.bench.report.write_run`. ``reused``: as for :func:`seeds_record`.
    """
    directory = Path(directory)
    record = seeds_record(results, reused)
    table = seeds_table(record)
    directory.mkdir(parents=True, exist_ok=True)
    if figures:
        from . import plots

        plots.mean_learning_curves(record, directory / "curves.png")
    write_results(directory, "results", record, table)
    return table
