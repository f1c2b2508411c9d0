"""Datasets for the LFM benchmarks: every loader returns train / val / test tensors.

>>> from torchcfm_local import datasets
>>> ds = datasets.load("tree", n_train=1000, seed=0)
>>> ds.train.shape, ds.dim
(torch.Size([1000, 2]), 2)

Three families, one registry (:data:`REGISTRY`, name -> loader):

* 2-D procedural densities (:mod:`.toy2d`): ``tree``, ``rose``, ``8gaussians``, ``moons``,
  ``checkerboard``, ``pinwheel``, ``2spirals``, ``rings``, ``mixture_unequal`` (7 Gaussians of known,
  unequal weights, listed in ``info["modes"]``); any size, defaults 100k / 10k / 10k.
* MAF tabular benchmarks read from files under ``root`` (:mod:`.tabular`): ``power`` (6-d), ``gas``
  (8), ``miniboone`` (43), ``bsds300`` (63), ``hepmass`` (21); full standard splits by default.
* Offline stand-ins from scikit-learn's bundled data (:mod:`.offline`): ``bsds300_patches`` (63),
  ``patches4x4`` (15), ``patches3x3`` (8), ``digits61`` (61), ``breast_cancer`` (30).

Adding a dataset = writing a loader with the keyword signature of :func:`load` (minus ``name``) and
adding one entry to :data:`REGISTRY`.  Importing this module pulls in numpy and torch only;
scikit-learn, pandas and h5py are imported by the loaders that need them.
"""
from __future__ import annotations

import functools
import os
from typing import Callable

import torch

from . import offline, tabular, toy2d
from ._common import DatasetSplits

__all__ = ["DatasetSplits", "REGISTRY", "available", "load"]

Loader = Callable[..., DatasetSplits]

REGISTRY: dict[str, Loader] = {
    # 2-D procedural densities
    **{name: functools.partial(toy2d.load_toy2d, name) for name in toy2d.SAMPLERS},
    # MAF tabular files under root
    "power": tabular.load_power,
    "gas": tabular.load_gas,
    "miniboone": tabular.load_miniboone,
    "bsds300": tabular.load_bsds300,
    "hepmass": tabular.load_hepmass,
    # offline stand-ins from scikit-learn's bundled data
    "bsds300_patches": functools.partial(offline.load_patches, "bsds300_patches", 8),
    "patches4x4": functools.partial(offline.load_patches, "patches4x4", 4),
    "patches3x3": functools.partial(offline.load_patches, "patches3x3", 3),
    "digits61": offline.load_digits61,
    "breast_cancer": offline.load_breast_cancer,
}
"""Dataset name -> loader ``(*, root, n_train, n_val, n_test, seed, dtype) -> DatasetSplits``."""


def available() -> list[str]:
    """All dataset names accepted by :func:`load`, in registry order."""
    return list(REGISTRY)


def load(name: str, *, root: str | os.PathLike | None = None, n_train: int | None = None,
         n_val: int | None = None, n_test: int | None = None, seed: int = 0,
         dtype: torch.dtype = torch.float32, **options) -> DatasetSplits:
    """Load dataset ``name`` as train / val / test tensors of shape ``(n_split, d)``.

    Args:
        name: one of :func:`available`.
        root: directory holding the data files; needed by the file-based datasets (``power``, ``gas``,
            ``miniboone``, ``bsds300``, ``hepmass``), ignored by the others.
        n_train, n_val, n_test: split sizes (positive ints).  ``None`` means the dataset's default: the
            full split for fixed tables, 100,000 / 10,000 / 10,000 for sampled ones (2-D densities and
            patches).  For fixed tables an int selects a seeded subset of the split and must not exceed
            its size.
        seed: non-negative int; all randomness (sampling, splitting, dequantisation, subsets) derives
            from it through ``numpy.random.SeedSequence``; global RNG state is never touched.
        dtype: floating torch dtype of the returned tensors.
        **options: options of one loader, e.g. ``trust_pickle=True`` for ``gas``
            (:func:`~torchcfm_local.datasets.tabular.load_gas`).

    Returns:
        :class:`DatasetSplits` with ``train``, ``val``, ``test`` and the recipe in ``info``.

    Raises:
        ValueError: unknown ``name`` (the message lists the available ones), or invalid ``n_*`` / ``seed``.
        TypeError: ``dtype`` is not a floating torch dtype.
        FileNotFoundError: a file-based dataset with ``root=None`` or missing files (the message names
            the expected paths and where the standard files come from).
        PermissionError: a data file that cannot be read.
        ValueError: a data file that is damaged (truncated, garbled) or not the expected table; the
            message names it. Raw ``.npy`` / CSV / HDF5 files carry no checksum: a changed number
            inside an intact file reads as that number.
    """
    try:
        loader = REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(available())}") from None
    return loader(root=root, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, dtype=dtype, **options)
