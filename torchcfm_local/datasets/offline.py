"""Offline stand-ins for the tabular benchmarks, built from data that scikit-learn ships (no download).

* ``bsds300_patches`` (d = 63), ``patches4x4`` (d = 15), ``patches3x3`` (d = 8): BSDS300-style patches
  cut from the two natural photographs of ``sklearn.datasets.load_sample_images()`` (china.jpg,
  flower.jpg, 427 x 640 RGB each); train / val / test come from disjoint horizontal bands of every
  image, so no pixel is shared between splits.  Recipe in :func:`sample_patches`.
* ``digits61`` (d = 61): the 8 x 8 handwritten digits of ``load_digits()`` as a density.
* ``breast_cancer`` (d = 30): the Wisconsin diagnostic breast-cancer table of ``load_breast_cancer()``.

scikit-learn (and Pillow, which ``load_sample_images`` uses) are optional: they are imported inside
the functions, and a missing one raises ImportError naming ``pip install "torchcfm-local[bench]"``.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable

import numpy as np
import torch

from ._common import (
    BENCH_EXTRA,
    DatasetSplits,
    check_dtype,
    check_n,
    check_seed,
    pack,
    split_rngs,
    take_subset,
)

__all__ = [
    "BAND_FRACTIONS",
    "gray_sample_images",
    "load_breast_cancer",
    "load_digits61",
    "load_patches",
    "patch_bands",
    "sample_patches",
]

DEFAULT_N_PATCHES = {"train": 100_000, "val": 10_000, "test": 10_000}
BAND_FRACTIONS = (0.70, 0.15, 0.15)
"""Fractions of every image's height given to the train, val and test bands (top to bottom)."""
LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601 weights, as in PIL's convert("L")
SPLITS = ("train", "val", "test")


def _sklearn_datasets() -> Any:
    try:
        import sklearn.datasets as skd
    except ImportError as err:
        raise ImportError(f"this dataset is built from scikit-learn's bundled data: {BENCH_EXTRA}") from err
    return skd


# ----------------------------------------------------------------------------------------------------
# patches
# ----------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _gray_images_cached() -> tuple[np.ndarray, tuple[str, ...]]:
    skd = _sklearn_datasets()
    try:
        bunch = skd.load_sample_images()
    except ImportError as err:  # sklearn needs Pillow to decode the JPEGs
        raise ImportError(f"load_sample_images needs Pillow to decode its JPEG files: {BENCH_EXTRA}") from err
    grays = []
    for img in bunch.images:
        g = np.clip(np.rint(np.asarray(img, dtype=np.float64) @ LUMA), 0, 255).astype(np.uint8)
        grays.append(g)
    shapes = {g.shape for g in grays}
    if len(shapes) != 1:  # pragma: no cover - the two sklearn images are both 427 x 640
        raise ValueError(f"expected sample images of one size, got {sorted(shapes)}")
    stack = np.stack(grays)
    stack.setflags(write=False)
    names = tuple(os.path.basename(f) for f in bunch.filenames)
    return stack, names


def gray_sample_images() -> tuple[np.ndarray, tuple[str, ...]]:
    """The sample photographs of scikit-learn in grayscale.

    Returns:
        ``(images, names)``: ``images`` is a read-only ``(2, 427, 640)`` uint8 array,
        ``round(0.299 R + 0.587 G + 0.114 B)``; ``names`` are the file names
        (``('china.jpg', 'flower.jpg')``).
    """
    return _gray_images_cached()


def patch_bands(height: int, fractions: tuple[float, float, float] = BAND_FRACTIONS) -> dict[str, tuple[int, int]]:
    """Disjoint row bands ``[start, stop)`` for train / val / test, top to bottom.

    Boundaries are ``round(height * cumsum(fractions))``; for ``height = 427``:
    train ``[0, 299)``, val ``[299, 363)``, test ``[363, 427)``.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    edges = [0] + [int(round(height * c)) for c in np.cumsum(fractions)[:-1]] + [height]
    return {s: (edges[i], edges[i + 1]) for i, s in enumerate(SPLITS)}


def sample_patches(images: np.ndarray, n: int, patch_size: int, rows: tuple[int, int],
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random BSDS300-style patches whose rows all lie inside the band ``rows = [start, stop)``.

    Recipe (Uria et al. 2013 / MAF's BSDS300, here on other images): pick an image uniformly, a top row
    ``r`` uniformly in ``[start, stop - p]`` and a left column uniformly in ``[0, W - p]`` (locations
    are drawn with replacement, so a location can repeat; the dequantisation noise is fresh for every
    draw); take the ``p x p`` integer intensities ``x``; dequantise and scale, ``(x + U(0, 1)) / 256``
    (values in ``(0, 1)``); subtract the patch mean; flatten row-major and drop the last
    (bottom-right) pixel, which is minus the sum of the others.

    Args:
        images: ``(k, H, W)`` integer intensities in ``0..255``.
        n: number of patches.
        patch_size: ``p``; each patch becomes ``p * p - 1`` features.
        rows: ``(start, stop)`` with ``stop - start >= p``.
        rng: numpy Generator.

    Returns:
        ``(patches, locations)``: ``(n, p*p - 1)`` float64 and ``(n, 3)`` int64 ``[image, top row, left
        column]``.
    """
    k, height, width = images.shape
    start, stop = rows
    if not (0 <= start and stop <= height and stop - start >= patch_size and patch_size <= width):
        raise ValueError(
            f"band rows {rows} cannot hold a {patch_size}x{patch_size} patch in images of shape {(height, width)}"
        )
    img = rng.integers(0, k, size=n)
    top = rng.integers(start, stop - patch_size + 1, size=n)
    left = rng.integers(0, width - patch_size + 1, size=n)
    off = np.arange(patch_size)
    x = images[img[:, None, None], top[:, None, None] + off[None, :, None], left[:, None, None] + off[None, None, :]]
    x = (x.astype(np.float64) + rng.random(x.shape)) / 256.0
    x = x - x.mean(axis=(1, 2), keepdims=True)
    patches = x.reshape(n, patch_size * patch_size)[:, :-1]
    return patches, np.stack([img, top, left], axis=1).astype(np.int64)


def load_patches(name: str, patch_size: int, *, root: str | os.PathLike | None = None,
                 n_train: int | None = None, n_val: int | None = None, n_test: int | None = None,
                 seed: int = 0, dtype: torch.dtype = torch.float32) -> DatasetSplits:
    """Patches of the scikit-learn sample images, ``(n_split, patch_size**2 - 1)`` per split.

    Split ``s`` is drawn by :func:`sample_patches` from band ``s`` of :func:`patch_bands` (train = top
    70% of the rows of each image, val = next 15%, test = bottom 15%) with the ``s``-th generator of
    ``SeedSequence(seed).spawn(3)``.  Defaults ``n_train=100_000``, ``n_val=10_000``, ``n_test=10_000``;
    any positive size works (locations are drawn with replacement).  No standardisation: the values
    are on the BSDS300 scale (entries within ``[-1, 1]``, typical std ~0.05-0.1).  ``root`` is ignored.
    ``info['bands']`` holds the row bands ``[start, stop)``.
    """
    seed = check_seed(seed)
    dtype = check_dtype(dtype)
    ns = [check_n(f"n_{s}", v, DEFAULT_N_PATCHES[s]) for s, v in zip(SPLITS, (n_train, n_val, n_test))]
    images, names = gray_sample_images()
    bands = patch_bands(images.shape[1])
    arrays = [sample_patches(images, n, patch_size, bands[s], rng)[0]
              for s, n, rng in zip(SPLITS, ns, split_rngs(seed, 3))]
    info = {
        "source": (f"scikit-learn load_sample_images(): {', '.join(names)} "
                   f"(grayscale, {images.shape[1]}x{images.shape[2]})"),
        "preprocessing": [
            "grayscale = round(0.299 R + 0.587 G + 0.114 B)",
            f"bands of rows per image: {bands} (train / val / test, disjoint)",
            f"random {patch_size}x{patch_size} patch locations inside the split's band, with replacement",
            "dequantise (x + U(0,1)) / 256, subtract the patch mean, drop the last pixel",
        ],
        "bands": {s: list(b) for s, b in bands.items()},
        "patch_size": patch_size,
        "images": list(names),
        "seed": seed,
    }
    return pack(name, *arrays, info=info, dtype=dtype)


# ----------------------------------------------------------------------------------------------------
# small real tables
# ----------------------------------------------------------------------------------------------------


def _permutation_split(n_rows: int, rng: np.random.Generator,
                       fractions: tuple[float, float] = (0.15, 0.15)) -> dict[str, np.ndarray]:
    """Seeded split of ``range(n_rows)``: val and test get ``int(f * n_rows)`` rows, train the rest."""
    perm = rng.permutation(n_rows)
    n_val, n_test = int(fractions[0] * n_rows), int(fractions[1] * n_rows)
    return {"train": np.sort(perm[n_val + n_test:]), "val": np.sort(perm[:n_val]),
            "test": np.sort(perm[n_val:n_val + n_test])}


def _table_splits(name: str, data: np.ndarray,
                  transform: Callable[[np.ndarray, dict[str, np.ndarray], np.random.Generator],
                                      tuple[np.ndarray, dict]],
                  info: dict, n: tuple[Any, Any, Any], seed: Any, dtype: Any) -> DatasetSplits:
    """Split rows 70/15/15 by seed, apply ``transform(data, split_idx, rng) -> (x, extra_info)``,
    standardise by train stats.

    Generators (``SeedSequence(seed).spawn(5)``): 0 = the split permutation, 1 = the transform's
    (dequantisation noise), 2..4 = subsampling of train / val / test.
    """
    seed = check_seed(seed)
    dtype = check_dtype(dtype)
    ns = [check_n(f"n_{s}", v, None) for s, v in zip(SPLITS, n)]
    rngs = split_rngs(seed, 5)
    idx = _permutation_split(data.shape[0], rngs[0])
    x, extra = transform(data, idx, rngs[1])
    train = x[idx["train"]]
    mu, sd = train.mean(axis=0), train.std(axis=0)
    if np.any(sd == 0):
        raise ValueError(f"{name}: a feature is constant on the train split; cannot standardise")
    out = []
    chosen = {}
    for s, n_s, rng in zip(SPLITS, ns, rngs[2:]):
        sub, pos = take_subset((x[idx[s]] - mu) / sd, n_s, rng, dataset=name, split=s)
        out.append(sub)
        chosen[s] = idx[s][pos].tolist()
    info = dict(info, **extra, mean=mu.tolist(), std=sd.tolist(), seed=seed, row_indices=chosen,
                n_full={s: int(len(idx[s])) for s in SPLITS})
    return pack(name, *out, info=info, dtype=dtype)


def load_digits61(*, root: str | os.PathLike | None = None, n_train: int | None = None,
                  n_val: int | None = None, n_test: int | None = None, seed: int = 0,
                  dtype: torch.dtype = torch.float32) -> DatasetSplits:
    """scikit-learn's 8 x 8 digits (1797 images, values 0..16) as a 61-d density.

    Recipe: drop the 3 pixels that are constant over the whole set (columns 0, 32, 39, always 0),
    leaving 61; split the rows with a seeded permutation, val = ``int(0.15 N)`` = 269, test = 269,
    train = 1259; dequantise every value, ``(x + U(0, 1)) / 17``; standardise with the train mean and
    (``ddof=0``) std.  ``n_*=None`` gives the full splits; an int gives a seeded subset of that split.
    ``info['row_indices']`` lists the rows of ``load_digits().data`` in each split.  ``root`` is ignored.
    """
    skd = _sklearn_datasets()
    data = skd.load_digits().data.astype(np.float64)
    constant = np.flatnonzero(data.min(axis=0) == data.max(axis=0))
    data = np.delete(data, constant, axis=1)

    def dequantise(x: np.ndarray, idx: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        return (x + rng.random(x.shape)) / 17.0, {}

    info = {
        "source": "scikit-learn load_digits() (UCI optical recognition of handwritten digits, 8x8, 0..16)",
        "preprocessing": [
            f"drop pixels constant over the whole set: {constant.tolist()}",
            "seeded 70/15/15 row split (val and test = int(0.15 N))",
            "dequantise (x + U(0,1)) / 17",
            "standardise by the train mean and std (ddof=0)",
        ],
        "dropped_pixels": constant.tolist(),
    }
    return _table_splits("digits61", data, dequantise, info, (n_train, n_val, n_test), seed, dtype)


def load_breast_cancer(*, root: str | os.PathLike | None = None, n_train: int | None = None,
                       n_val: int | None = None, n_test: int | None = None, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> DatasetSplits:
    """scikit-learn's Wisconsin diagnostic breast-cancer table (569 x 30, all features >= 0) as a density.

    Recipe: split the rows with a seeded permutation, val = test = ``int(0.15 N)`` = 85, train = 399;
    ``y = log(1 + x / m)`` per feature with ``m`` the feature's train median (all medians are > 0;
    the log tames the heavy right tails of the area / perimeter features, and ``log1p`` keeps the 13
    rows whose concavity features are exactly 0 finite and at 0); standardise with the train mean and
    (``ddof=0``) std; ``info['median']``, ``info['mean']``, ``info['std']`` invert it.  Both classes
    (malignant and benign) are kept; the label is not returned.
    ``root`` is ignored.
    """
    skd = _sklearn_datasets()
    data = skd.load_breast_cancer().data.astype(np.float64)

    def log_scale(x: np.ndarray, idx: dict, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        med = np.median(x[idx["train"]], axis=0)
        if np.any(med <= 0):
            raise ValueError("breast_cancer: a feature has train median <= 0; cannot log-scale")
        return np.log1p(x / med), {"median": med.tolist()}

    info = {
        "source": "scikit-learn load_breast_cancer() (UCI breast cancer Wisconsin diagnostic, 30 features)",
        "preprocessing": [
            "seeded 70/15/15 row split (val and test = int(0.15 N))",
            "y = log1p(x / train median) per feature",
            "standardise by the train mean and std (ddof=0)",
        ],
    }
    return _table_splits("breast_cancer", data, log_scale, info, (n_train, n_val, n_test), seed, dtype)
