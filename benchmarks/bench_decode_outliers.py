"""Do briefly trained LFM chains decode noise to samples far outside the data? By MLP variant.

An LFM chain decodes through N blocks; a block whose field is wrong away from its training pool can
push a sample outward, and the next block, which never saw such points, pushes further. This
counts, per MLP variant (activation x time input), training length and seed, the samples of
``decode(z)`` farther from the origin than 1.5 times the farthest test point, their largest norm,
and the energy distance to test data. Setting: 8gaussians (not in the recipe screen), the 2D
schedule of ``lfm-bench`` (9 blocks), trigonometric path, MLP 64 x 3, 4000 training points,
batches of 256, default sampling ODE.

    python benchmarks/bench_decode_outliers.py     # writes benchmarks/results/decode_outliers.{json,md}
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torchcfm.conditional_flow_matching import VariancePreservingConditionalFlowMatcher

import torchcfm_local as tl
from torchcfm_local.bench.registry import TASKS
from torchcfm_local.bench.report import write_results

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {"silu-fourier": ("silu", 4), "silu-raw": ("silu", 0), "softplus20-fourier": ("softplus20", 4),
            "softplus20-raw": ("softplus20", 0), "softplus20-f1": ("softplus20", 1), "softplus20-f2": ("softplus20", 2)}


def run_one(data, activation: str, n_freq: int, batches: int, seed: int) -> dict:
    torch.manual_seed(seed)
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule.from_steps(TASKS["tree"].steps),
                               VariancePreservingConditionalFlowMatcher(sigma=0.0),
                               lambda n: tl.MLP(2, width=64, depth=3, activation=activation, n_freq=n_freq))
    lfm.fit(data.train[:4000], batches_per_block=batches, batch_size=256, lr=1e-3, seed=seed, progress=False)
    samples = lfm.decode(torch.randn(2000, 2, generator=torch.Generator().manual_seed(1)))
    norms, limit = samples.norm(dim=1), 1.5 * float(data.test.norm(dim=1).max())
    return {"beyond": int((norms > limit).sum()), "max_norm": float(norms.max()), "limit": limit,
            "energy_distance": float(tl.energy_distance(samples, data.test[:2000]))}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="100,250", help="batches per block")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args(argv)
    data = tl.datasets.load("8gaussians", seed=0)
    rows = []
    lines = ["# Decoded samples far outside the data (8gaussians, 9-block LFM, trig path, MLP 64x3)", "",
             "Samples (of 2000) beyond 1.5 x the farthest test point's norm, the largest norm, and the energy "
             "distance (ED) to test data, per seed.", "",
             "| variant | batches per block | beyond (per seed) | max norm (per seed) | ED (per seed) |", "|---|---|---|---|---|"]
    for name, (activation, n_freq) in VARIANTS.items():
        for batches in [int(b) for b in args.batches.split(",")]:
            runs = [run_one(data, activation, n_freq, batches, int(s)) for s in args.seeds.split(",")]
            rows.append({"variant": name, "batches_per_block": batches, "seeds": args.seeds, "runs": runs})
            beyond = ", ".join(str(r["beyond"]) for r in runs)
            largest = ", ".join(f"{r['max_norm']:.1f}" for r in runs)
            ed = ", ".join(f"{r['energy_distance']:.4f}" for r in runs)
            lines.append(f"| {name} | {batches} | {beyond} | {largest} | {ed} |")
            print(lines[-1], flush=True)
    write_results(RESULTS, "decode_outliers", {"rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
