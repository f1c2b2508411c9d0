"""Distill a 4-block LFM on the 2-D ``tree`` density into 4 and 2 one-step students.

Trains a small LFM teacher, distills it with k = 1 (one student per block: 4 network evaluations
per sample) and k = 2 (one student per two blocks: 2 evaluations), and prints the energy distance
to held-out data and the NFE of the teacher (adaptive "quality" preset and the "fast" preset) and
of both students.

Run: ``python examples/distill_2d.py --size small`` (about a minute on 2 CPU cores;
``--size tiny`` takes seconds and is what the tests run; ``--size full`` a few minutes).
"""
import argparse

import torch

import torchcfm_local as tl
from torchcfm_local.distillation import distill
from torchcfm_local.sampling import sample

SIZES = {  # n_train, teacher batches per block, MLP width, distillation pairs, distillation batches
    "tiny": dict(n_train=3000, batches=150, width=48, n_pairs=3000, distill_batches=150),
    "small": dict(n_train=20000, batches=800, width=96, n_pairs=10000, distill_batches=800),
    "full": dict(n_train=50000, batches=2000, width=128, n_pairs=30000, distill_batches=2000),
}


def main(size: str = "small", seed: int = 0, progress: bool = False) -> list[dict]:
    cfg = SIZES[size]
    data = tl.datasets.load("tree", n_train=cfg["n_train"], n_val=1000, n_test=2000, seed=seed)
    torch.manual_seed(seed)
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(h0=0.1, rho=1.5, n_blocks=4),
                               velocity_factory=lambda n: tl.MLP(2, width=cfg["width"], depth=3))
    lfm.fit(data.train, batches_per_block=cfg["batches"], batch_size=256, seed=seed, progress=progress)

    samplers = {"teacher (quality)": (lfm, "quality"), "teacher (fast)": (lfm, "fast")}
    for k in (1, 2):
        students = distill(lfm, k=k, n_pairs=cfg["n_pairs"], batches=cfg["distill_batches"], batch_size=256,
                           seed=seed, progress=progress)
        samplers[f"distilled k={k}"] = (students, "fast")

    rows = []
    gen = torch.Generator().manual_seed(seed + 1)
    noise = torch.randn(2000, 2, generator=gen)
    rows.append({"name": "N(0, I) noise", "nfe": 0.0, "energy_distance": tl.energy_distance(noise, data.test)})
    for name, (model, preset) in samplers.items():
        x, stats = sample(model, 2000, preset=preset, generator=torch.Generator().manual_seed(seed + 2))
        rows.append({"name": name, "nfe": stats.nfe, "energy_distance": tl.energy_distance(x, data.test)})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"{'sampler':<20} {'NFE':>6}  energy distance to held-out data (lower is better)")
    for row in main(args.size, args.seed, progress=True):
        print(f"{row['name']:<20} {row['nfe']:6.0f}  {row['energy_distance']:.4f}")
