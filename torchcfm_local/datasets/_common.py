"""Shared pieces of :mod:`torchcfm_local.datasets`: the result type, argument checks, seeding.

Everything here is private to the package except :class:`DatasetSplits`, which ``datasets/__init__``
re-exports.  Only numpy and torch are imported at module load.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .._checks import positive_int

__all__ = ["DatasetSplits"]

MAF_SOURCE = (
    "The standard files come from the data release of the MAF paper (Papamakarios, Pavlakou & Murray 2017, "
    "'Masked Autoregressive Flow for Density Estimation'; https://zenodo.org/record/1161203, data.tar.gz). "
    "Extract it and pass root=<the extracted 'data' directory>, which holds power/, gas/, hepmass/, "
    "miniboone/ and BSDS300/."
)

BENCH_EXTRA = 'pip install "torchcfm-local[bench]"'


@dataclass(frozen=True)
class DatasetSplits:
    """Train / validation / test tensors of one dataset, plus the recipe that made them.

    Attributes:
        name: registry name of the dataset (``torchcfm_local.datasets.available()``).
        train: ``(n_train, d)`` tensor (``(n_train, *shape)`` for image-like data).
        val: ``(n_val, d)`` tensor, same trailing shape as ``train``.
        test: ``(n_test, d)`` tensor, same trailing shape as ``train``.
        info: recipe details: ``source``, ``preprocessing`` (list of steps), ``n`` per split, ``dim``,
            ``seed`` and any scaling statistics that were used (e.g. ``mean`` / ``std`` per feature).
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    info: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Number of features per sample: ``prod(train.shape[1:])`` (``d`` for tabular data)."""
        return int(math.prod(self.train.shape[1:]))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample, ``train.shape[1:]`` (``(d,)`` for tabular data)."""
        return tuple(self.train.shape[1:])


# ----------------------------------------------------------------------------------------------------
# argument checks
# ----------------------------------------------------------------------------------------------------


def check_n(arg: str, value: Any, default: int | None) -> int | None:
    """Return ``value`` as a positive int (``default`` when None); raise ValueError otherwise."""
    checked = positive_int(value, arg, allow_none=True)
    return default if checked is None else checked


def check_seed(seed: Any) -> int:
    """Return ``seed`` as a non-negative int; raise ValueError otherwise."""
    return positive_int(seed, "seed", minimum=0)


def check_dtype(dtype: Any) -> torch.dtype:
    """Return ``dtype`` if it is a floating torch dtype; raise TypeError otherwise."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.float32), got {dtype!r}")
    return dtype


# ----------------------------------------------------------------------------------------------------
# seeding
# ----------------------------------------------------------------------------------------------------


def split_rngs(seed: int, k: int = 3) -> list[np.random.Generator]:
    """``k`` statistically independent generators derived from ``seed`` (``SeedSequence.spawn``).

    The i-th generator is the same for a given ``seed`` whatever ``k`` is, so split i of a dataset does
    not change when another split is added.
    """
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(k)]


# ----------------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------------


def resolve_files(dataset: str, root: str | os.PathLike | None, rel_paths: Sequence[str],
                  source: str = MAF_SOURCE) -> list[Path]:
    """Absolute paths ``root / rel`` for ``rel_paths``; FileNotFoundError naming all missing ones.

    Raises:
        FileNotFoundError: ``root`` is None, or any of the files does not exist.  The message names the
            exact expected path(s) and where the standard files come from.
    """
    if root is None:
        expected = ", ".join(f"<root>/{r}" for r in rel_paths)
        raise FileNotFoundError(
            f"dataset {dataset!r} is read from files and needs root=<directory>; expected {expected}. "
            f"{source}"
        )
    base = Path(root).expanduser()
    paths = [base / r for r in rel_paths]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        names = ", ".join(str(p) for p in missing)
        raise FileNotFoundError(f"dataset {dataset!r}: expected file(s) not found: {names}. {source}")
    return paths


# ----------------------------------------------------------------------------------------------------
# subsets and packing
# ----------------------------------------------------------------------------------------------------


def take_subset(x: np.ndarray, n: int | None, rng: np.random.Generator, *, dataset: str,
                split: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``x`` to use for a fixed-size split: all of them (``n=None``) or a seeded subset.

    The subset is drawn without replacement and kept in file order.  Returns ``(x_sub, indices)``.

    Raises:
        ValueError: ``n`` is larger than the number of rows in the split.
    """
    total = x.shape[0]
    if n is None or n == total:
        return x, np.arange(total)
    if n > total:
        raise ValueError(
            f"dataset {dataset!r}: n_{split}={n} requested but the {split} split has only {total} rows; "
            f"pass n_{split}=None for all of them or a value <= {total}"
        )
    idx = np.sort(rng.choice(total, size=n, replace=False))
    return x[idx], idx


def pack(name: str, train: np.ndarray, val: np.ndarray, test: np.ndarray, info: dict,
         dtype: torch.dtype) -> DatasetSplits:
    """Convert the three arrays to ``dtype`` tensors and fill the common ``info`` keys (n, dim)."""
    tensors = [torch.as_tensor(np.ascontiguousarray(a)).to(dtype) for a in (train, val, test)]
    info = dict(info)
    info["n"] = {"train": int(tensors[0].shape[0]), "val": int(tensors[1].shape[0]),
                 "test": int(tensors[2].shape[0])}
    info["dim"] = int(math.prod(tensors[0].shape[1:]))
    return DatasetSplits(name=name, train=tensors[0], val=tensors[1], test=tensors[2], info=info)


def tail_split(data: np.ndarray, frac: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """MAF-style split: the last ``int(frac * N)`` rows are held out.  Returns ``(head, tail)``."""
    n_tail = int(frac * data.shape[0])
    if n_tail == 0:
        raise ValueError(f"need at least {math.ceil(1 / frac)} rows to hold out {frac:.0%}, got {data.shape[0]}")
    return data[:-n_tail], data[-n_tail:]


def min_value_repeats(column: np.ndarray) -> int:
    """How often the smallest value of ``column`` occurs.

    The MAF code (hepmass.py, and the commented recipe in miniboone.py) builds ``Counter(feature)``,
    sorts its items by *value* and takes the first count, i.e. the multiplicity of the minimum, and
    drops the feature when that is > 5.  Discrete features (and features clipped at a floor) have a
    repeated minimum; continuous ones do not.  We reproduce that rule exactly.
    """
    return int(np.count_nonzero(column == column.min()))
