"""Reporting of measurements: per-method summaries, markdown tables, files and provenance.

:func:`summarize` and :func:`markdown_table` turn an ``lfm-bench`` result (see
:func:`~torchcfm_local.bench.protocol.run_task`) into rows and a table; :func:`write_run` writes a
one-seed run's files (the aggregate over several seeds is in :mod:`~torchcfm_local.bench.seeds`).
:func:`provenance` and :func:`write_results` record where any measurement of the
package's benchmarks came from (command line, git commit, versions, machine); the scripts in
``benchmarks/`` use them too.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

__all__ = ["first_crossing", "train_gflops", "compare_to_reference", "summarize", "run_heading", "format_reach", "markdown_table",
           "write_run", "provenance", "write_results"]


def first_crossing(curve: list[tuple[float, float]], target: float) -> Optional[float]:
    """Smallest x where the piecewise-linear curve (x ascending) reaches ``<= target``; None if never.

    ``curve`` is ``[(batches, NLL), ...]``; the answer is interpolated linearly between the two
    points around the crossing, or the first x when the curve starts at or below ``target``.
    """
    for i, (x, y) in enumerate(curve):
        if y <= target:
            if i == 0:
                return x
            (x0, y0) = curve[i - 1]
            return x0 + (x - x0) * (y0 - target) / (y0 - y)
    return None


def train_gflops(params_per_batch: int, batch_size: int, batches: int) -> float:
    """Training compute in GFLOPs: about 6 FLOPs per parameter and sample for a forward and backward pass.

    ``params_per_batch``: the parameters one batch goes through: one block's for LFM (each batch
    trains one block), the whole network for the global flow. At equal batches and equal total
    parameters an N-block LFM therefore spends 1/N of the global flow's training compute (its
    pushforward, counted in seconds, not here, comes on top).
    """
    return 6.0 * params_per_batch * batch_size * batches / 1e9


def _method_row(runs: list[dict], n_blocks: int, batch_size: int) -> dict:
    """Summary of one method from its runs: the full-budget numbers and its learning curve."""
    mine = sorted(runs, key=lambda r: r["batches"])
    final = mine[-1]
    row = {k: final[k] for k in ("method", "params", "batches", "test_nll", "val_nll", "energy_distance",
                                 "sample_nfe", "sample_seconds_per_1000")}
    row["train_seconds"] = final["train_seconds"]
    row["pushforward_seconds"] = final["pushforward_seconds"]
    row["total_seconds"] = final["train_seconds"] + final["pushforward_seconds"] + (final["eval_seconds"] or 0)
    per_batch = final["params"] // n_blocks if row["method"].startswith("lfm") else final["params"]
    row["train_gflops"] = train_gflops(per_batch, batch_size, final["batches"])
    row["curve"] = [(r["batches"], r["curve_nll"]) for r in mine]
    row["curve_seconds"] = [r["train_seconds"] + r["pushforward_seconds"] for r in mine]
    return row


def compare_to_reference(row: dict, rows: list[dict], reference: Optional[str] = None) -> None:
    """Add to an LFM row the batches, and the seconds, it needed to reach the final curve NLL of the
    global flow on its path (or of the row of ``rows`` named ``reference``).

    A row needs ``method``, ``batches``, ``curve`` (``[(batches, NLL), ...]``, batches ascending)
    and ``curve_seconds`` (training + pushforward seconds of each curve point); the keys added are
    ``reference``, ``batches_to_reference_nll``, ``batches_to_reference_is_upper_bound``,
    ``batch_ratio_to_reference`` and the same three for seconds (``seconds_to_reference_nll``,
    ``seconds_to_reference_is_upper_bound``, ``seconds_ratio_to_reference``: against the global
    flow's training seconds, the equal-wall-clock view). Nothing is added when ``rows`` has no
    ``global-<path>`` (or ``reference``) row.
    """
    ref_name = reference or "global-" + row["method"].split("-", 1)[1]
    ref = next((r for r in rows if r["method"] == ref_name), None)
    if ref is None:
        return
    target = ref["curve"][-1][1]
    row["reference"] = ref_name
    for unit, xs, ref_total in (("batches", [b for b, _ in row["curve"]], ref["batches"]),
                                ("seconds", row.get("curve_seconds"), (ref.get("curve_seconds") or [None])[-1])):
        if xs is None or ref_total is None:
            continue
        reached = first_crossing(list(zip(xs, (v for _, v in row["curve"]))), target)
        row[f"{unit}_to_reference_nll"] = reached
        # reached at the first measured point: the true number may be smaller
        row[f"{unit}_to_reference_is_upper_bound"] = reached is not None and reached == xs[0]
        row[f"{'batch' if unit == 'batches' else unit}_ratio_to_reference"] = (
            None if reached is None else reached / ref_total)


def summarize(result: dict) -> list[dict]:
    """One row per method: final numbers, wall-clock and batches-to-target against the global flow.

    ``result["runs"]`` holds the :class:`~torchcfm_local.bench.protocol.RunResult` dicts. An
    ``lfm-<path>`` row is compared with ``global-<path>`` when that method ran: the batches at which
    its learning curve reaches the global flow's final curve NLL (nats), and their ratio to the
    global flow's batches.
    """
    runs = result["runs"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    rows = [_method_row([r for r in runs if r["method"] == m], result["n_blocks"], result["batch_size"]) for m in methods]
    for row in rows:
        if row["method"].startswith("lfm"):
            compare_to_reference(row, rows)
    return rows


def run_heading(result: dict, seeds_note: str) -> str:
    """The markdown heading of a task run: dataset, budget, ``seeds_note``, sizes and the evaluation."""
    return (f"### {result['task']['dataset']} ({result['budget']} budget, {seeds_note}): d={result['dim']}, "
            f"{result['n_train']} train points, {result['total_batches']} batches of {result['batch_size']} per "
            f"method, LFM {result['n_blocks']} blocks x MLP({result['lfm_width']}x{result['depth']}), global "
            f"MLP({result['global_width']}x{result['depth']}); NLL in nats ({result['estimator']} divergence, "
            f"dopri5 1e-5); energy distance to {result['n_test']} test points{_fit_note(result)}\n")


def _fit_note(result: dict) -> str:
    """The task's fit options that every method used (e.g. standardization), for the heading, with
    the data map ``standardize="auto"`` chose."""
    fit = result["task"].get("fit") or {}
    chosen = result.get("data_maps")
    note = "" if not fit else "; every method fits with " + ", ".join(f"{k}={v!r}" for k, v in fit.items())
    return note + (f" (data map: {', '.join(chosen)})" if fit.get("standardize") == "auto" and chosen else "")


def format_reach(row: dict, unit: str = "batches") -> str:
    """The "batches (or seconds) to global NLL" cell of a row (``-`` for rows without a reference)."""
    ratio_key = f"{'batch' if unit == 'batches' else unit}_ratio_to_reference"
    if ratio_key not in row:
        return "-"
    ratio = row[ratio_key]
    bound = "<= " if row[f"{unit}_to_reference_is_upper_bound"] else ""
    return "not reached" if ratio is None else f"{bound}{row[f'{unit}_to_reference_nll']:.0f} ({bound}{ratio:.2f}x)"


def markdown_table(result: dict) -> str:
    """The summary of a one-seed task run as a markdown heading, table and learning-curve line."""
    rows = result["summary"]
    lines = [run_heading(result, f"one seed: {result.get('seed')}"),
             "| method | params | test NLL | val NLL | energy dist. | NFE/sample | train s | push s | total s | train GFLOPs "
             "| batches to global NLL | seconds to global NLL |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['params']} | {r['test_nll']:.4f} | {r['val_nll']:.4f} | {r['energy_distance']:.4f} "
                     f"| {r['sample_nfe']:.0f} | {r['train_seconds']:.1f} | {r['pushforward_seconds']:.1f} "
                     f"| {r['total_seconds']:.1f} | {r['train_gflops']:.3g} | {format_reach(r)} | {format_reach(r, 'seconds')} |")
    lines.append("")
    lines.append("Learning curves (batches: NLL on the held-out curve subset): " + "; ".join(
        f"{r['method']}: " + ", ".join(f"{b}: {v:.3f}" for b, v in r["curve"]) for r in rows))
    return "\n".join(lines)


def write_run(run, directory: "str | os.PathLike", figures: bool = True) -> str:
    """Write a :class:`~torchcfm_local.bench.protocol.BenchRun` to ``directory``; returns its markdown table.

    Files: ``results.json`` (every number and the provenance), ``results.md`` (the table) and, with
    ``figures``, ``curves.png``, ``samples.png`` and for 2D data ``density.png`` (needs matplotlib).
    """
    from . import plots

    directory = Path(directory)
    table = markdown_table(run.result)
    directory.mkdir(parents=True, exist_ok=True)
    if figures:
        plots.learning_curves(run.result, directory / "curves.png")
        plots.samples_vs_data(run, directory / "samples.png")
        if run.result["dim"] == 2:
            plots.density_maps(run, directory / "density.png")
    write_results(directory, "results", run.result, table)
    return table


def _git_commit() -> Optional[str]:
    """``HEAD``'s commit of the checkout this package runs from (wherever the process was started),
    with ``+dirty`` when tracked files are modified; None for an installed copy outside a checkout."""
    where = {"cwd": str(Path(__file__).resolve().parent), "capture_output": True, "text": True, "timeout": 5}
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], check=True, **where)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **where)
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _command() -> str:
    """The command line as typed: ``python -m pkg ...``, ``python script.py ...`` or ``console-script ...``."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:  # python -m
        head = "python -m " + spec.name.removesuffix(".__main__")
    elif sys.argv[0].endswith(".py"):
        head = "python " + sys.argv[0]
    else:
        head = Path(sys.argv[0]).name
    return " ".join([head] + sys.argv[1:])


def provenance() -> dict:
    """Command line, git commit, date, versions and machine of the current process."""
    import torch

    from .. import __version__

    return {
        "command": _command(),
        "commit": _git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torchcfm_local": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }


def write_results(directory: "str | os.PathLike", name: str, results: dict, table: str) -> tuple[Path, Path]:
    """Write ``name.json`` (results + provenance) and ``name.md`` (table + provenance) to ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    json_path = directory / f"{name}.json"
    json_path.write_text(json.dumps({"provenance": prov, "results": results}, indent=2, default=float) + "\n")
    md_path = directory / f"{name}.md"
    md_path.write_text(
        f"{table}\n\nCommand: `{prov['command']}`  \nCommit: `{prov['commit']}`  \n"
        f"Date: {prov['date']}  \nMachine: {prov['machine']['platform']}, {prov['machine']['cpu_count']} CPUs, "
        f"torch {prov['torch']} ({prov['machine']['torch_threads']} threads), GPU: {prov['machine']['cuda']}\n"
    )
    return json_path, md_path
