"""Image data and evaluation for LFM on images.

* :mod:`.data` -- CIFAR-10 python batches (safe unpickling), image folders, scikit-learn digits as
  images, and the dequantization map ``to_model_space`` / ``to_uint8``.
* :mod:`.unet` -- torchcfm's U-Net as a rebuildable block network, with the paper's CIFAR-10 size.
* :mod:`.fid` -- Frechet distance, cached :class:`FeatureStats`, the FID Inception-v3 features
  (offline weights only) and a clearly labelled proxy CNN extractor.

The function ``fid`` is deliberately not re-exported here: binding it as
``torchcfm_local.images.fid`` would hide the submodule of the same name (``import
torchcfm_local.images.fid as m`` would then give the function).  Use
``from torchcfm_local.images.fid import fid``.
"""
from .data import (
    digits_images,
    load_cifar10,
    load_image_folder,
    to_model_space,
    to_uint8,
    write_cifar10_like,
)
from .unet import CIFAR10_PAPER, CIFAR10_TORCHCFM, UNetVelocity
from .fid import (
    FeatureStats,
    InceptionFeatures,
    InceptionWeightsUnavailable,
    ProxyFeatures,
    feature_stats,
    fid_from_stats,
    fid_helper_weights_path,
    frechet_distance,
    metric_label,
)

__all__ = [
    "UNetVelocity",
    "CIFAR10_PAPER",
    "CIFAR10_TORCHCFM",
    "digits_images",
    "load_cifar10",
    "load_image_folder",
    "to_model_space",
    "to_uint8",
    "write_cifar10_like",
    "FeatureStats",
    "InceptionFeatures",
    "InceptionWeightsUnavailable",
    "ProxyFeatures",
    "feature_stats",
    "fid_from_stats",
    "fid_helper_weights_path",
    "frechet_distance",
    "metric_label",
]
