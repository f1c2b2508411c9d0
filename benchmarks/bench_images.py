"""Global flow vs LFM with U-Net blocks on images, at equal parameters and equal training batches.

Writes ``benchmarks/results/images_<dataset>.{json,md}`` with sample grids and LFM's block-by-block
trajectory.

    python benchmarks/bench_images.py                          # digits (8x8, offline), CPU
    python benchmarks/bench_images.py --dataset cifar10 --root DIR --config cifar10 \\
        --batches-per-block 100000 --device cuda --amp          # the paper's CIFAR-10 setting (GPU)

Protocol: the same dequantized training images; LFM: ``config.n_blocks`` U-Nets for
``--batches-per-block`` batches each; global: one U-Net of the same total parameter count (width
a multiple of 32) for ``n_blocks x`` as many batches; Adam with the config's learning rate,
warm-up, EMA and gradient clipping. Evaluation: the Frechet distance of ``--samples`` samples to
the training images (the FID Inception network when available, else a labelled proxy CNN trained
on the same images), bits/dim of test images (Hutchinson, one dequantization draw), both with
RK4 at ``--ode-steps`` steps summed over all blocks (equal NFE for both methods).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from torchcfm_local.images import to_model_space
from torchcfm_local.images.train import (CONFIGS, build_model, evaluate, fit_model, load_images, make_extractor, save_grid,
                                         summary_row, trajectory_figure)
from torchcfm_local.bench.report import write_results
from torchcfm_local.solvers import ODEOptions

ROOT = Path(__file__).resolve().parent.parent


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "cifar10"))
    parser.add_argument("--root", default=None)
    parser.add_argument("--config", default="digits")
    parser.add_argument("--batches-per-block", type=int, default=500)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--bpd-images", type=int, default=300)
    parser.add_argument("--ode-steps", type=int, default=64)
    parser.add_argument("--features", default="auto", choices=("auto", "inception", "proxy"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = parser.parse_args()

    config = CONFIGS[args.config]
    train, labels = load_images(args.dataset, args.root, "train")
    test, _ = load_images(args.dataset, args.root, "test")
    x = to_model_space(train, generator=torch.Generator().manual_seed(args.seed))
    extractor = make_extractor(train, labels, args.dataset, args.features, device=args.device)
    out = Path(args.out)
    name = f"images_{args.dataset}"
    rows = []
    for method in ("global", "lfm"):
        torch.manual_seed(args.seed)
        model = build_model(tuple(train.shape[1:]), config, method).to(args.device)
        report = fit_model(model, x, config, args.batches_per_block, amp=args.amp, seed=args.seed)
        ode = ODEOptions("rk4", steps=max(1, args.ode_steps // model.n_blocks))
        result = evaluate(model, train, test, extractor=extractor, n_samples=args.samples, n_bpd=args.bpd_images,
                          ode=ode, seed=args.seed)
        save_grid(result.samples, out / f"{name}_{method}_samples.png", title=f"{method}: {result.metric} {result.distance:.2f}")
        if method == "lfm":
            trajectory_figure(model, out / f"{name}_lfm_trajectory.png", ode=ode)
        rows.append(summary_row(method, model, report, result))
    save_grid(train[: 256], out / f"{name}_data.png", title="training images")
    metric = rows[0]["metric"]
    lines = [f"## {args.dataset}: global flow vs LFM (U-Net blocks), equal parameters and batches", "",
             f"| method | parameters | batches | {metric} (lower is better) | bits/dim (test) | NFE/sample | train s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['parameters']} | {r['batches']} | {r['distance']:.2f} | {r['bits_per_dim']:.3f} | "
                     f"{r['nfe_per_sample']:.0f} | {r['train_seconds']:.0f} |")
    lines += ["", f"Config `{args.config}`: {config}.", f"Samples: {args.samples}; bits/dim on {args.bpd_images} test images.",
              f"Figures: `{name}_{{global,lfm}}_samples.png`, `{name}_data.png`, `{name}_lfm_trajectory.png`."]
    write_results(out, name, {"rows": rows, "args": vars(args)}, "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
