"""Where a fit's time goes on the paper's 2D tree setting, and what measured pushforward steps save.

One run per (pushforward mode, path, seed) on ``tl.datasets.load("tree")`` at 200k training / 10k
test points, the 2D schedule of ``lfm-bench`` (9 blocks, ``h_n = 0.025 * 1.25**(n-1)``), MLP 256 x 3,
500 batches of 2000 per block. Modes:

* ``fixed8``: the pushforward with 8 RK4 steps per block (the default before ``pushforward_tol``);
* ``tol``: ``fit``'s default, RK4 steps chosen per block by measured error (``pushforward_tol``);
* ``ou``: ``pool="ou"``, no pushforward at all;
* ``global``: not LFM but the one-block (global) flow with the same path, its MLP widened to the
  parameter count of the 9 blocks together, trained on as many batches (9 x 500 of 2000): the
  equal-parameter, equal-batch comparison, with its wall time.

Per run it records the seconds of training steps, pushforward and test-NLL evaluation (dopri5 at
1e-5, exact divergence) and their shares of the total, the steps chosen per block with their
estimated error, the pushforward's pace against a bare forward pass of the same block networks
(see :func:`push_vs_bare`), and the test NLL, so that a speed-up that costs accuracy shows.

``--wide`` adds the same pace check on 63-d data (``bsds300_patches``, its 4-block schedule and
512-wide MLP, a short fit: the pace of a pass does not depend on how long the network trained).

    python benchmarks/bench_speed.py --modes fixed8,tol --paths linear,trig --seeds 0,1,2 --wide
    # writes benchmarks/results/speed.{json,md}
    python benchmarks/bench_speed.py --seeds 2 --include benchmarks/results/speed.json --name speed_3seeds
    # adds seed 2 to the runs of an earlier file (same settings) in one table
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import torch

import torchcfm_local as tl
from torchcfm_local.bench.protocol import EVAL_ODE
from torchcfm_local.bench.registry import METHODS, TASKS
from torchcfm_local.bench.report import write_results
from torchcfm_local.bench.seeds import mean_se

RESULTS = Path(__file__).resolve().parent / "results"
MODES = {"fixed8": {"pushforward_tol": None}, "tol": {}, "ou": {"pool": "ou"}, "global": {}}


def minor_faults() -> int:
    """Minor page faults of this process so far (0 where the ``resource`` module is missing). Large
    temporary tensors that the allocator maps afresh each time fault on every new page."""
    try:
        import resource
    except ImportError:
        return 0
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def bare_forward_rate(net: torch.nn.Module, dim: int, rows: int, chunk: int, repeats: int = 3) -> float:
    """Network evaluations per second of a plain ``no_grad`` forward pass over ``rows`` points in chunks."""
    x, t = torch.randn(rows, dim), torch.rand(chunk)
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, rows, chunk):
                part = x[i : i + chunk]
                net(t[: part.shape[0]], part)
            best = min(best, time.perf_counter() - start)
    return rows / best


def push_vs_bare(lfm, report, n_rows: int, dim: int, bare_rows: int = 65536) -> tuple[float, list[float]]:
    """The pushforward's pace over a bare forward pass of the same networks; and each block's bare rate.

    Each block n's bare rate r_n (:func:`bare_forward_rate`, at the pushforward's chunk, the model's
    default) gives the time its pushforward would take at that rate, ``NFE_n * rows / r_n``; the
    ratio is the sum of those times over the measured pushforward seconds (step probing excluded).
    Blocks differ in pace (their pre-activations differ), so one block's rate is not a fair
    yardstick for all of them.
    """
    rates, ideal, actual = [], 0.0, 0.0
    for n, block in enumerate(report.blocks, start=1):
        rate = bare_forward_rate(lfm.nets[n - 1], dim, bare_rows, lfm.default_chunk())
        rates.append(rate)
        if block.pushforward_seconds > 0:
            ideal += block.pushforward_nfe * n_rows / rate
            actual += block.pushforward_seconds - block.pushforward_probe_seconds
    return (ideal / actual if actual else None), rates


def wide_pace(args) -> dict:
    """Pushforward pace on 63-d data: a short 4-block fit on ``bsds300_patches`` (default ``fit`` options)."""
    task, seed = TASKS["bsds300_patches"], 0
    data = tl.datasets.load("bsds300_patches")
    torch.manual_seed(seed)
    lfm = tl.LocalFlowMatching(63, tl.OUSchedule.from_steps(task.steps), METHODS["lfm-linear"].matcher(),
                               lambda n: tl.MLP(63, width=task.width, depth=3))
    report = lfm.fit(data.train, batches_per_block=args.wide_batches, batch_size=500, seed=seed, progress=False)
    ratio, rates = push_vs_bare(lfm, report, data.train.shape[0], 63)
    return {"rows": data.train.shape[0], "push_s": sum(b.pushforward_seconds for b in report.blocks),
            "probe_s": sum(b.pushforward_probe_seconds for b in report.blocks),
            "push_steps": [b.pushforward_steps for b in report.blocks], "bare_rates": rates, "push_vs_bare": ratio}


def build(mode: str, path: str, args) -> tuple[tl.LocalFlowMatching, int]:
    """The model of a run and its batches per block: LFM with the tree task's 9 blocks, or (``global``)
    one block whose MLP has the parameters of all 9 together, trained on as many batches."""
    schedule = tl.OUSchedule.from_steps(TASKS["tree"].steps)
    if mode != "global":
        return tl.LocalFlowMatching(2, schedule, METHODS[f"lfm-{path}"].matcher(),
                                    lambda n: tl.MLP(2, width=args.width, depth=3)), args.batches
    target = schedule.n_blocks * tl.networks.count_parameters(tl.MLP(2, width=args.width, depth=3))
    width = tl.networks.width_for_parameters(lambda w: tl.MLP(2, width=w, depth=3), target, start=3 * args.width)
    return (tl.LocalFlowMatching(2, tl.OUSchedule.global_flow(), METHODS[f"global-{path}"].matcher(),
                                 lambda n: tl.MLP(2, width=width, depth=3)), schedule.n_blocks * args.batches)


def run_one(data, mode: str, path: str, seed: int, args) -> dict:
    torch.manual_seed(seed)
    lfm, batches = build(mode, path, args)
    start = time.perf_counter()
    report = lfm.fit(data.train, batches_per_block=batches, batch_size=args.batch_size, seed=seed,
                     progress=False, **MODES[mode])
    fit_s = time.perf_counter() - start
    faults, start = minor_faults(), time.perf_counter()
    nll = -float(lfm.log_prob(data.test, ode=EVAL_ODE).mean())
    eval_s, eval_faults = time.perf_counter() - start, minor_faults() - faults
    train_s = sum(b.train_seconds for b in report.blocks)
    push_s = sum(b.pushforward_seconds for b in report.blocks)
    push_evals = sum(b.pushforward_nfe for b in report.blocks) * data.train.shape[0]
    probe_s = sum(b.pushforward_probe_seconds for b in report.blocks)
    total = fit_s + eval_s
    row = {"mode": mode, "path": path, "seed": seed, "test_nll": nll, "total_s": total, "train_s": train_s,
           "push_s": push_s, "eval_s": eval_s, "eval_page_faults": eval_faults,
           "push_eval_share": (push_s + eval_s) / total,
           "push_steps": [b.pushforward_steps for b in report.blocks],
           "push_error": [b.pushforward_error for b in report.blocks],
           "probe_s": probe_s, "push_rate": push_evals / (push_s - probe_s) if push_s else None,
           "params": sum(tl.networks.count_parameters(net) for net in lfm.nets)}
    row["push_vs_bare"], row["bare_rates"] = push_vs_bare(lfm, report, data.train.shape[0], 2)
    return row


def _fmt(stat: dict, digits: int) -> str:
    return f"{stat['mean']:.{digits}f}" + ("" if stat["se"] is None else f" ± {stat['se']:.{digits}f}")


def markdown(rows: list[dict], args, wide: Optional[dict] = None) -> str:
    lines = [f"# Fit time on the tree setting ({args.n_train} train / {args.n_test} test, 9 blocks, MLP {args.width}x3, "
             f"{args.batches} batches of {args.batch_size} per block)", "",
             "Seconds and test NLL: mean ± SE over seeds (n in the last column). push+eval share: pushforward and "
             "test-NLL evaluation as a share of the total. push/bare: the pushforward's pace over a bare forward pass "
             "of each block's network at the same chunk (the model's default), without the time spent choosing the steps "
             "(included in push s). Modes: `tol` fit's default (RK4 steps per block by measured error), `fixed8` 8 "
             "RK4 steps per block, `ou` no pushforward (`pool=\"ou\"`), `global` the one-block flow with the same path, "
             "its MLP widened to the 9 blocks' parameter count, on as many batches.", "",
             "| mode | path | test NLL | total s | train s | push s | eval s | push+eval share | push/bare | n |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["mode"], r["path"]), []).append(r)
    for (mode, path), group in groups.items():
        s = {k: mean_se([g[k] for g in group]) for k in ("test_nll", "total_s", "train_s", "push_s", "eval_s",
                                                        "push_eval_share")}
        ratio = [g["push_vs_bare"] for g in group if g["push_vs_bare"] is not None]
        lines.append(f"| {mode} | {path} | {_fmt(s['test_nll'], 4)} | {_fmt(s['total_s'], 1)} | {_fmt(s['train_s'], 1)} "
                     f"| {_fmt(s['push_s'], 1)} | {_fmt(s['eval_s'], 1)} | {_fmt(s['push_eval_share'], 2)} "
                     f"| {(sum(ratio) / len(ratio)) if ratio else float('nan'):.2f} | {len(group)} |")
    lines += ["", "Per run: RK4 steps chosen per block (block 1 first) and the largest estimated RMS error relative "
              "to a block's OU noise scale; the test-NLL evaluation's seconds and minor page faults (fresh memory "
              "pages the process touched; '-' in runs recorded before they were counted):", "",
              "| mode | path | seed | steps | max rel. error | eval s | eval page faults |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        pushed = any(s is not None for s in r["push_steps"])
        steps = ", ".join(str(s) for s in r["push_steps"]) if pushed else "-"
        error = f"{max(e for e in r['push_error'] if e is not None):.2g}" if pushed else "-"
        faults = r.get("eval_page_faults")
        lines.append(f"| {r['mode']} | {r['path']} | {r['seed']} | {steps} | {error} | {r['eval_s']:.1f} "
                     f"| {'-' if faults is None else f'{faults:,}'} |")
    if wide:
        lines += ["", f"Pushforward pace on 63-d data (bsds300_patches, {wide['rows']} rows, 4 blocks, MLP 512x3, "
                  f"{args.wide_batches} batches of 500 per block): push/bare {wide['push_vs_bare']:.2f}, RK4 steps "
                  f"{', '.join(str(s) for s in wide['push_steps'])}, pushforward {wide['push_s']:.1f} s "
                  f"(of which choosing steps {wide['probe_s']:.1f} s)."]
    return "\n".join(lines)


SETTINGS = ("n_train", "n_test", "width", "batches", "batch_size")


def earlier_runs(args) -> tuple[list[dict], Optional[dict]]:
    """The runs of the ``--include`` files, refused unless they used the same settings, and the last
    63-d pace check among them. Runs written before the pace was measured per block (no
    ``bare_rates``) keep their times and NLL but not their push/bare ratio (it was measured against
    block 1 alone)."""
    rows, wide = [], None
    for name in filter(None, args.include.split(",")):
        results = json.loads(Path(name).read_text())["results"]
        differ = [k for k in SETTINGS if results["args"][k] != getattr(args, k)]
        if differ:
            raise SystemExit(f"{name} used other settings ({', '.join(differ)}); its runs cannot join this table")
        for row in results["rows"]:
            rows.append(row if "bare_rates" in row else {**row, "push_vs_bare": None})
        wide = results.get("wide") or wide
    return rows, wide


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="fixed8,tol")
    parser.add_argument("--paths", default="linear,trig")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--n-train", type=int, default=200_000)
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--batches", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--name", default="speed")
    parser.add_argument("--wide", action="store_true", help="also the pushforward pace on 63-d data")
    parser.add_argument("--wide-batches", type=int, default=200)
    parser.add_argument("--include", default="", help="comma-separated earlier result JSONs (same settings) whose "
                        "runs join this table, e.g. to add seeds")
    args = parser.parse_args(argv)
    rows, wide = earlier_runs(args)
    if args.wide:
        wide = wide_pace(args)
        print(f"63-d pushforward pace: push/bare {wide['push_vs_bare']:.2f}, steps {wide['push_steps']}", flush=True)
    data = tl.datasets.load("tree", n_train=args.n_train, n_test=args.n_test, seed=0)
    for seed in (int(s) for s in args.seeds.split(",")):
        for path in args.paths.split(","):
            for mode in args.modes.split(","):
                rows.append(run_one(data, mode, path, seed, args))
                r = rows[-1]
                print(f"{mode} {path} seed {seed}: nll {r['test_nll']:.4f} total {r['total_s']:.0f}s "
                      f"push {r['push_s']:.0f}s eval {r['eval_s']:.0f}s steps {r['push_steps']}", flush=True)
                write_results(RESULTS, args.name, {"rows": rows, "wide": wide, "args": vars(args)},
                              markdown(rows, args, wide))


if __name__ == "__main__":
    main()
