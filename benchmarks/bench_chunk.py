"""Throughput of the pool pushforward against the chunk size, next to the bare network.

For an MLP 256x3 block on 2-d and 63-d pools (the sizes of the paper's tree and BSDS300 settings,
scaled to this CPU), prints and writes:

* bare forward evaluations per second of the network under ``torch.no_grad()`` at several batch
  sizes (the ceiling a pushforward can reach);
* pushforward evaluations per second (rows x NFE / seconds) of ``LocalFlowMatching.transport``
  with ``--steps`` RK4 steps per block (default 2, what ``fit``'s measured-error rule picks for
  most linear-path blocks) at several chunk sizes, including the model's default chunk and the
  earlier default of 2^20 / d rows, and their ratio to the best bare rate.

Each number is the best of ``--repeats`` runs. Weights are untrained: speed does not depend on them.

    python benchmarks/bench_chunk.py            # writes benchmarks/results/chunk.{json,md}
    python benchmarks/bench_chunk.py --steps 8  # the fixed solver of pushforward_tol=None
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import torchcfm_local as tl
from torchcfm_local.bench.report import write_results
from torchcfm_local.training.steps import rk4

RESULTS = Path(__file__).resolve().parent / "results"


def best_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(dim: int, n: int, batches: list[int], chunks: list[int], repeats: int, steps: int) -> dict:
    torch.manual_seed(0)
    lfm = tl.LocalFlowMatching(dim, tl.OUSchedule(0.1, 1.5, 2),
                               velocity_factory=lambda k: tl.MLP(dim, width=256, depth=3))
    lfm.n_trained = lfm.n_blocks
    net, x, t = lfm.nets[0], torch.randn(n, dim), torch.rand(n)
    bare = {}
    with torch.no_grad():
        for b in batches:
            reps = max(1, 400_000 // b)
            bare[b] = reps * b / best_seconds(lambda: [net(t[:b], x[:b]) for _ in range(reps)], repeats)
    nfe, ode = 4 * steps, rk4(steps)  # RK4: 4 evaluations per step
    push = {}
    for chunk in sorted(set(chunks + [lfm.default_chunk(), max(256, 2**20 // dim)])):
        pool = x.clone()
        push[chunk] = n * nfe / best_seconds(lambda: lfm.transport(pool, [1], False, ode, chunk, out=pool), repeats)
    return {"dim": dim, "rows": n, "default_chunk": lfm.default_chunk(), "nfe_per_row": nfe, "rk4_steps": steps,
            "bare_evals_per_s": bare, "pushforward_evals_per_s": push, "best_bare": max(bare.values())}


def table(results: list[dict]) -> str:
    lines = [f"### Pushforward throughput against chunk size (MLP 256x3, RK4 x {results[0]['rk4_steps']} per block, "
             "untrained weights)", "",
             "| d | rows | what | batch / chunk | M evals/s | x best bare |", "|---|---|---|---|---|---|"]
    for r in results:
        for b, rate in r["bare_evals_per_s"].items():
            lines.append(f"| {r['dim']} | {r['rows']} | bare forward | {b} | {rate / 1e6:.3f} | {rate / r['best_bare']:.2f} |")
        for c, rate in r["pushforward_evals_per_s"].items():
            tag = " (default)" if c == r["default_chunk"] else " (2^20 / d rows: the earlier default)" \
                if c == max(256, 2**20 // r["dim"]) else ""
            lines.append(f"| {r['dim']} | {r['rows']} | pushforward | {c}{tag} | {rate / 1e6:.3f} | "
                         f"{rate / r['best_bare']:.2f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="RK4 steps per block (default 2)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--name", default="chunk", help="output file stem (default: chunk)")
    args = parser.parse_args(argv)
    batches = chunks = [1024, 2048, 4096, 8192, 16384, 65536]
    results = [measure(2, 200_000, batches + [200_000], chunks, args.repeats, args.steps),
               measure(63, 100_000, batches + [100_000], chunks, args.repeats, args.steps)]
    md = table(results)
    print(md)
    write_results(args.out, args.name, {"cases": results}, md)


if __name__ == "__main__":
    main()
