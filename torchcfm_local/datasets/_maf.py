"""What the MAF tabular loaders of :mod:`.tabular` share: the release's file layout, the steps its
recipes have in common, reading pandas tables (and the GAS files), errors that name the file, and
the final subsampling.

Private to the package; :data:`FILES` is re-exported by :mod:`.tabular`.
"""
from __future__ import annotations

import tokenize
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ._common import DatasetSplits, check_dtype, check_n, check_seed, pack, split_rngs, tail_split, take_subset

FILES: dict[str, tuple[str, ...]] = {
    "power": ("power/data.npy",),
    "gas": ("gas/ethylene_CO.pickle",),
    "miniboone": ("miniboone/data.npy",),
    "bsds300": ("BSDS300/BSDS300.hdf5",),
    "hepmass": ("hepmass/1000_train.csv", "hepmass/1000_test.csv"),
}
"""Dataset name -> expected file path(s) relative to ``root``."""

SPLITS = ("train", "val", "test")
REPEATED_MIN_THRESHOLD = 5


def check_args(n_train: Any, n_val: Any, n_test: Any, seed: Any, dtype: Any) -> tuple[tuple, int, torch.dtype]:
    """The loaders' common arguments, checked: ``((n_train, n_val, n_test), seed, dtype)``."""
    n = (check_n("n_train", n_train, None), check_n("n_val", n_val, None), check_n("n_test", n_test, None))
    return n, check_seed(seed), check_dtype(dtype)


def as_2d_float(data: Any, dataset: str, what: str) -> np.ndarray:
    """``data`` as a float64 ``(rows, columns)`` array; ValueError naming ``what`` otherwise."""
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{dataset}: expected {what} to be a 2-D table (rows, columns), got shape {arr.shape}")
    return arr


def check_finite(dataset: str, arrays: dict[str, np.ndarray]) -> None:
    """ValueError when a preprocessed split holds NaN or inf (e.g. a constant column scaled by std 0)."""
    for split, arr in arrays.items():
        if not np.all(np.isfinite(arr)):
            raise ValueError(
                f"{dataset}: the {split} split has non-finite values after preprocessing (a constant "
                "column gives std 0, or the file holds NaN/inf); check the input file"
            )


def split_and_normalise(data: np.ndarray, dataset: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The closing steps of the POWER and MINIBOONE recipes (no randomness, row order kept).

    test = last ``int(0.1 N)`` rows; of the rest, val = last ``int(0.1 N_rest)`` rows; every split is
    then normalised by the mean and (population, ``ddof=0``) std of train + val.

    Returns:
        ``(train, val, test, {"mean": [...], "std": [...]})``.
    """
    rest, test = tail_split(data)
    train, val = tail_split(rest)
    both = np.vstack([train, val])
    mu, s = both.mean(axis=0), both.std(axis=0)
    train, val, test = (train - mu) / s, (val - mu) / s, (test - mu) / s
    check_finite(dataset, dict(zip(SPLITS, (train, val, test))))
    return train, val, test, {"mean": mu.tolist(), "std": s.tolist()}


def pandas_for(dataset: str, what: str) -> Any:
    """The pandas module, or ImportError saying that ``dataset`` needs it to read ``what``."""
    try:
        import pandas as pd
    except ImportError as err:  # pragma: no cover - pandas comes with torchcfm
        raise ImportError(f"the {dataset} dataset needs pandas to read {what}: pip install pandas") from err
    return pd


_DAMAGE = (ValueError, OSError, EOFError, KeyError, IndexError, TypeError, RuntimeError, SyntaxError,
           tokenize.TokenError, zipfile.BadZipFile)
"""What numpy, pandas, zipfile and h5py raise for a damaged or foreign file: pandas' parser errors are
ValueErrors, numpy's ``.npy`` header parser lets SyntaxError and TokenError out, zipfile raises
NotImplementedError (a RuntimeError) for flags it does not know, h5py RuntimeError for broken metadata."""


@contextmanager
def reading(dataset: str, *paths: Path) -> Iterator[None]:
    """Errors raised while reading or preprocessing ``paths`` become a ValueError that names them.

    A truncated, damaged or foreign file makes numpy, pandas or h5py raise many types (EOFError,
    OSError, KeyError, ...), mostly without the path. FileNotFoundError and PermissionError pass
    unchanged (their messages name the file), and so does a ValueError that already names it.
    """
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except _DAMAGE as err:
        names = " and ".join(str(p) for p in paths)
        if isinstance(err, ValueError):
            if all(str(p) in str(err) for p in paths):
                raise
            raise ValueError(f"{err} (reading {names})") from err
        raise ValueError(f"{dataset}: cannot read {names} ({type(err).__name__}: {err})") from err


def read_npy(path: Path) -> np.ndarray:
    """The array of an ``.npy`` file, whose size must be what its header announces (numpy itself
    reads a file with a damaged header length, or extra bytes, as a shifted or partial array)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    if not isinstance(array, np.memmap):
        getattr(array, "close", lambda: None)()
        raise ValueError(f"{path} is not an .npy array file (found {type(array).__name__})")
    expected, size = array.offset + array.nbytes, path.stat().st_size
    if size != expected:
        raise ValueError(f"{path} holds {size} bytes but its .npy header announces {expected} (a damaged or cut file)")
    return np.array(array)


def read_csv_table(dataset: str, path: Path):
    """The pandas DataFrame of a CSV file; an empty field (a damaged or cut file) is an error.

    A CSV has no checksum: a file cut at a line break, or inside the last number, still reads.
    """
    pd = pandas_for(dataset, "its CSV files")
    with reading(dataset, path):
        frame = pd.read_csv(path, index_col=False)
        if frame.isna().to_numpy().any():
            raise ValueError(f"{dataset}: {path} has empty fields (a damaged or truncated file?)")
    return frame


def read_gas_pickle(path: Path):
    """The DataFrame in the GAS release pickle. Unpickling runs code the file names: trusted files only."""
    pd = pandas_for("gas", "its DataFrame pickle")
    try:
        frame = pd.read_pickle(path)
    except PermissionError:
        raise
    except Exception as err:
        raise ValueError(
            f"gas: could not unpickle {path} with pandas {pd.__version__} ({type(err).__name__}: {err}); "
            "expected the ethylene_CO.pickle DataFrame of the MAF release"
        ) from err
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"gas: expected {path} to hold a pandas DataFrame, got {type(frame).__name__}")
    return frame


def read_gas_npz(path: Path):
    """The GAS table of the ``.npz`` that ``convert_gas_pickle`` writes (no unpickling)."""
    pd = pandas_for("gas", "its table")
    try:
        with np.load(path, allow_pickle=False) as z:
            columns, values = [str(c) for c in z["columns"]], np.asarray(z["values"], dtype=np.float64)
    except PermissionError:
        raise
    except _DAMAGE as err:
        raise ValueError(f"gas: cannot read {path} ({type(err).__name__}: {err}); expected the .npz that "
                         "convert_gas_pickle writes (arrays 'columns' and 'values')") from err
    if values.ndim != 2 or values.shape[1] != len(columns):
        raise ValueError(f"gas: {path} holds values of shape {values.shape} for {len(columns)} columns")
    return pd.DataFrame(values, columns=columns)


def finish(name: str, arrays: tuple[np.ndarray, np.ndarray, np.ndarray], info: dict,
           n: tuple[int | None, int | None, int | None], seed: int, dtype: torch.dtype) -> DatasetSplits:
    """Subsample each split (if ``n`` is given) with the generators of ``SeedSequence(seed)``."""
    full = {s: int(a.shape[0]) for s, a in zip(SPLITS, arrays)}
    out = []
    for split, arr, n_s, rng in zip(SPLITS, arrays, n, split_rngs(seed, 3)):
        sub, _ = take_subset(arr, n_s, rng, dataset=name, split=split)
        out.append(sub)
    info = dict(info, n_full=full, seed=seed,
                subsampling="none" if all(v is None for v in n) else
                "seeded subset without replacement per split (SeedSequence(seed).spawn(3)), file order kept")
    return pack(name, *out, info=info, dtype=dtype)
