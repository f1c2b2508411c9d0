"""A clearly labelled PROXY feature extractor for Frechet distances when no Inception network is available.

:class:`ProxyFeatures` trains a small CNN classifier deterministically on labelled images you give
it; its penultimate-layer features give a *proxy* Frechet distance named
``"proxy-cnn(<dataset>)"``.  Numbers from it are not FID and are not comparable with published
FIDs (:func:`~.features.metric_label` says so).
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import positive_float, positive_int
from .features import PROXY_PREFIX, as_uint8_images

__all__ = ["ProxyFeatures"]


class _ProxyCNN(nn.Module):
    """Classifier: float images ``(N, in_ch, H, W)`` -> logits ``(N, n_classes)``; ``body`` gives the
    features ``(N, feature_dim)``."""

    def __init__(self, in_ch: int, width: int, feature_dim: int, n_classes: int) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, w, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(8),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * w, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ProxyFeatures:
    """PROXY feature extractor: penultimate features of a small CNN trained on your labelled images.

    Use it only when no Inception network is available; Frechet distances in its feature space
    are *not* FID (different network, different data, different scale) and must be reported
    under its ``name``, ``"proxy-cnn(<dataset>)"`` (stored in :class:`~.fid.FeatureStats`;
    :func:`~.features.metric_label` gives ``"proxy-FD[proxy-cnn(digits)] (not FID)"``).

    Network: two 3x3 convs of ``width`` channels at the input resolution, adaptive average pool
    to 8 x 8, conv (2 ``width``), pool to 4 x 4, conv, pool to 2 x 2, linear to ``feature_dim``,
    SiLU (these activations are the features), linear classifier.  SiLU (not ReLU) so that no
    unit is identically zero, which keeps the feature covariance well conditioned.  Inputs are
    scaled as ``x / 127.5 - 1``.

    Training: cross-entropy, Adam(``lr``), ``steps`` minibatches of ``batch_size`` drawn as
    successive ``torch.randperm`` epochs from a ``torch.Generator`` seeded with ``seed``;
    parameters are initialised under ``torch.manual_seed(seed)`` inside
    :func:`torch.random.fork_rng` (the caller's global RNG state is left untouched).  On CPU the
    same data, seed and thread count give bitwise identical features (tested); across machines /
    thread counts expect float round-off differences only.  ``train_accuracy`` and
    ``final_loss`` (mean of the last 20 steps) are recorded.  Defaults train in a few seconds on
    digits (1438 images of 8 x 8); for 32 x 32 CIFAR expect roughly 40 s per 200 steps on one
    CPU thread.

    ``images``: uint8 ``(N, C, H, W)``; ``labels``: ``(N,)`` non-negative integer class indices.
    Calling it on images requires the training images' ``(C, H, W)``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        dataset: str,
        seed: int = 0,
        steps: int = 300,
        batch_size: int = 128,
        lr: float = 2e-3,
        width: int = 32,
        feature_dim: int = 64,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        images = as_uint8_images(images)
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be {images.shape[0]} integers, got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() == 0 or int(labels.min()) < 0:
            raise ValueError("labels must be non-negative class indices")
        if not dataset or not isinstance(dataset, str):
            raise ValueError("dataset must be a non-empty string (it goes into the extractor's name)")
        steps, batch_size = positive_int(steps, "steps"), positive_int(batch_size, "batch_size")
        width, feature_dim = positive_int(width, "width"), positive_int(feature_dim, "feature_dim")
        lr = positive_float(lr, "lr")
        self.dataset = dataset
        self.name = f"{PROXY_PREFIX}({dataset})"
        self.seed = int(seed)
        self.image_shape = tuple(images.shape[1:])
        self.n_classes = int(labels.max()) + 1
        self.feature_dim = int(feature_dim)
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = _ProxyCNN(images.shape[1], width, feature_dim, self.n_classes).to(self.device)
        self.final_loss, self.train_accuracy = self._train(images, labels.long(), steps, batch_size, lr)
        self.model.eval().requires_grad_(False)

    def _scale(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> float32 ``(N, C, H, W)`` in [-1, 1] on ``device``."""
        return images.to(self.device, torch.float32) / 127.5 - 1.0

    def _train(self, images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, lr: float) -> tuple[float, float]:
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        n = images.shape[0]
        bs = min(batch_size, n)
        order, pos, losses = torch.randperm(n, generator=g), 0, []
        self.model.train()
        for _ in range(steps):
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos : pos + bs]
            pos += bs
            loss = F.cross_entropy(self.model(self._scale(images[idx])), labels[idx].to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, n, 512):
                pred = self.model(self._scale(images[i : i + 512])).argmax(1).cpu()
                correct += int((pred == labels[i : i + 512]).sum())
        return float(np.mean(losses[-20:])), correct / n

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        """uint8 images ``(N, C, H, W)`` of the training images' ``(C, H, W)`` -> float64 features ``(N, feature_dim)``."""
        images = as_uint8_images(images)
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{self.name} was trained on images of shape {self.image_shape}, got {tuple(images.shape[1:])}"
            )
        return self.model.body(self._scale(images)).double().cpu().numpy()
