"""The interface shared by the feature extractors of :mod:`.fid` and :mod:`.proxy`, and its labels.

An extractor is a callable ``extractor(images) -> np.ndarray``: ``images`` a ``uint8`` tensor
``(N, C, H, W)``, the result float64 ``(N, F)``; ``extractor.name`` is a non-empty string that
is stored in :class:`~.fid.FeatureStats` and must appear in any report
(:func:`metric_label` turns it into the label of a Frechet distance).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["INCEPTION_PREFIX", "PROXY_PREFIX", "as_uint8_images", "extractor_name", "metric_label"]

INCEPTION_PREFIX = "inception-v3-pool3"
PROXY_PREFIX = "proxy-cnn"


def metric_label(extractor_name: str) -> str:
    """How to label a Frechet distance computed with ``extractor_name`` in a report.

    ``"FID"`` only for the Inception pool3 features with pytorch-fid's preprocessing;
    ``"FID[inception-v3-pool3(tf-legacy)]"`` for the other Inception preprocessing;
    ``"proxy-FD[proxy-cnn(digits)] (not FID)"`` for the proxy; ``"FD[<name>]"`` for anything else.
    """
    if extractor_name.startswith(INCEPTION_PREFIX):
        return "FID" if extractor_name == f"{INCEPTION_PREFIX}(pytorch-fid)" else f"FID[{extractor_name}]"
    if extractor_name.startswith(PROXY_PREFIX):
        return f"proxy-FD[{extractor_name}] (not FID)"
    return f"FD[{extractor_name}]"


def as_uint8_images(images) -> torch.Tensor:
    """``images`` (a uint8 tensor or array ``(N, C, H, W)``) as a tensor; anything else raises."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a uint8 tensor (N, C, H, W), got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    return images


def extractor_name(extractor) -> str:
    """``extractor.name``, which must be a non-empty str."""
    name = getattr(extractor, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError("a feature extractor must have a non-empty str attribute `name`")
    return name
