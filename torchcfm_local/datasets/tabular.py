"""The MAF tabular benchmarks (POWER, GAS, MINIBOONE, BSDS300, HEPMASS) read from user-supplied files.

Files are the ones of the MAF data release (Papamakarios, Pavlakou & Murray 2017,
https://zenodo.org/record/1161203, ``data.tar.gz``); pass ``root=<the extracted data directory>``:

============  ===========================================  ====  ===========================
name          file(s) under ``root``                        d     train / val / test (full)
============  ===========================================  ====  ===========================
power         ``power/data.npy``                            6     1,659,917 / 184,435 / 204,928
gas           ``gas/ethylene_CO.pickle``                    8     852,174 / 94,685 / 105,206
miniboone     ``miniboone/data.npy``                        43    29,556 / 3,284 / 3,648
bsds300       ``BSDS300/BSDS300.hdf5``                      63    1,000,000 / 50,000 / 250,000
hepmass       ``hepmass/1000_train.csv``, ``1000_test.csv`` 21    315,123 / 35,013 / 174,987
============  ===========================================  ====  ===========================

(Split sizes as the recipes give them on the released files, matching the MAF paper's tables; the
files are not shipped here, so these numbers are not checked by the tests.)

Each ``preprocess_*`` function re-implements, in our own code, the preprocessing of the corresponding
file of the MAF code (``datasets/power.py``, ``gas.py``, ``miniboone.py``, ``bsds300.py``,
``hepmass.py``) on in-memory arrays, so the steps can be tested on small synthetic tables.  The
``load_*`` functions read the files, call those, and optionally subsample each split.

``seed`` only drives the optional subsampling (``n_train`` etc.; a seeded subset without replacement,
kept in file order); the recipes themselves are fixed (POWER's shuffle and tie-breaking noise use
``numpy.random.RandomState(42)`` exactly as the MAF code does), so ``n_*=None`` gives the standard
splits whatever ``seed`` is.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._common import DatasetSplits, min_value_repeats, resolve_files, tail_split
from ._maf import (
    FILES,
    REPEATED_MIN_THRESHOLD,
    as_2d_float,
    check_args,
    check_finite,
    finish,
    read_gas_npz,
    read_csv_table,
    read_gas_pickle,
    read_npy,
    reading,
    split_and_normalise,
)

__all__ = [
    "FILES",
    "load_bsds300",
    "load_gas",
    "convert_gas_pickle",
    "load_hepmass",
    "load_miniboone",
    "load_power",
    "preprocess_gas",
    "preprocess_hepmass",
    "preprocess_miniboone",
    "preprocess_power",
]

POWER_COLUMNS = (
    "global_active_power", "global_reactive_power", "voltage", "global_intensity",
    "sub_metering_1", "sub_metering_2", "sub_metering_3", "time",
)
POWER_DROPPED = (3, 1)  # deleted in this order, as in the MAF code
POWER_RECIPE_SEED = 42
GAS_DROPPED = ("Meth", "Eth", "Time")
GAS_CORR_THRESHOLD = 0.98
MINIBOONE_RAW_COLUMNS = 50


# ----------------------------------------------------------------------------------------------------
# POWER
# ----------------------------------------------------------------------------------------------------


def preprocess_power(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """MAF's POWER recipe on the ``(N, 8)`` array of ``power/data.npy``.

    The 8 columns of the release are (UCI "Individual household electric power consumption", date
    removed, time of day as a number): global active power, global reactive power, voltage, global
    intensity, sub-metering 1, 2, 3, time.  Steps (all randomness from one
    ``numpy.random.RandomState(42)``, drawn in this order):

    1. shuffle the rows in place (``rng.shuffle``);
    2. delete column 3 (global intensity), then column 1 (global reactive power); 6 columns remain:
       ``[active power, voltage, sub_1, sub_2, sub_3, time]``.  (The MAF code's commented-out noise
       terms for "global intensity" and "grp" confirm which two columns go.);
    3. add uniform tie-breaking noise: voltage ``0.01 * U(0,1)`` (drawn first), active power
       ``0.001 * U(0,1)``, each sub-metering ``U(0,1)`` (drawn as one ``(N, 3)`` block), time none;
    4. test = last ``int(0.1 N)`` rows; of the rest, val = last ``int(0.1 N_rest)`` rows; train = the
       remainder;
    5. normalise every split by the mean and (population, ``ddof=0``) std of train + val.

    Args:
        data: ``(N, 8)`` array; not modified.

    Returns:
        ``(train, val, test, info)``, each split ``(n_split, 6)`` float64; ``info`` holds ``mean``,
        ``std`` and ``columns``.
    """
    data = as_2d_float(data, "power", "power/data.npy").copy()
    if data.shape[1] != len(POWER_COLUMNS):
        raise ValueError(
            f"power: expected power/data.npy with {len(POWER_COLUMNS)} columns {POWER_COLUMNS}, "
            f"got shape {data.shape}"
        )
    rng = np.random.RandomState(POWER_RECIPE_SEED)  # local legacy generator: reproduces the MAF draws
    rng.shuffle(data)
    n = data.shape[0]
    kept = [i for i in range(len(POWER_COLUMNS)) if i not in POWER_DROPPED]
    for col in POWER_DROPPED:
        data = np.delete(data, col, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    data = data + np.hstack([gap_noise, voltage_noise, sm_noise, np.zeros((n, 1))])
    train, val, test, stats = split_and_normalise(data, "power")
    return train, val, test, {"columns": [POWER_COLUMNS[i] for i in kept], **stats}


def load_power(*, root: str | os.PathLike | None = None, n_train: int | None = None,
               n_val: int | None = None, n_test: int | None = None, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> DatasetSplits:
    """POWER (d = 6) from ``root/power/data.npy``; recipe in :func:`preprocess_power`."""
    n, seed, dtype = check_args(n_train, n_val, n_test, seed, dtype)
    (path,) = resolve_files("power", root, FILES["power"])
    with reading("power", path):
        train, val, test, extra = preprocess_power(read_npy(path))
    info = {
        "source": f"{path} (MAF release; UCI household electric power consumption)",
        "preprocessing": [
            "shuffle rows with numpy RandomState(42)",
            "delete column 3 (global intensity) then column 1 (global reactive power)",
            "add noise: voltage 0.01*U, active power 0.001*U, sub-meterings U, time 0 (same RandomState)",
            "test = last 10%, val = last 10% of the rest, train = remainder",
            "normalise by train+val mean and std (ddof=0)",
        ],
        **extra,
    }
    return finish("power", (train, val, test), info, n, seed, dtype)


# ----------------------------------------------------------------------------------------------------
# GAS
# ----------------------------------------------------------------------------------------------------


def preprocess_gas(frame: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """MAF's GAS recipe on the pandas DataFrame of ``gas/ethylene_CO.pickle``.

    Steps (no randomness; row order as in the file):

    1. drop the columns ``'Meth'``, ``'Eth'`` and ``'Time'`` (concentrations and time stamp);
    2. repeat: compute the Pearson correlation matrix ``C`` of the remaining columns
       (``DataFrame.corr()``), count per column ``B_j = #{i : C_ij > 0.98}`` (the column itself
       included), and while some ``B_j > 1`` drop the *first* such column;
    3. normalise by the mean and the sample (``ddof=1``, pandas default) std of the *whole* table
       (train, val and test together: this is what the MAF code does);
    4. test = last ``int(0.1 N)`` rows; of the rest, val = last ``int(0.1 N_rest)`` rows.

    On the real file this keeps 8 of the 16 sensor columns.

    Args:
        frame: ``pandas.DataFrame`` with at least the columns ``Meth``, ``Eth``, ``Time``; not modified.

    Returns:
        ``(train, val, test, info)``, float64 arrays ``(n_split, d)``; ``info`` holds the kept and
        dropped ``columns``, ``mean`` and ``std``.
    """
    missing = [c for c in GAS_DROPPED if c not in frame.columns]
    if missing:
        raise ValueError(
            f"gas: expected a DataFrame with columns {list(GAS_DROPPED)} plus the sensor columns, "
            f"missing {missing}; got columns {list(frame.columns)}"
        )
    data = frame.drop(columns=list(GAS_DROPPED)).astype(np.float64)
    dropped_corr = []
    while True:
        counts = (data.corr().to_numpy() > GAS_CORR_THRESHOLD).sum(axis=1)
        over = np.flatnonzero(counts > 1)
        if over.size == 0:
            break
        col = data.columns[over[0]]
        dropped_corr.append(str(col))
        data = data.drop(columns=[col])
    mu, s = data.mean(), data.std()  # pandas: ddof=1
    arr = ((data - mu) / s).to_numpy(dtype=np.float64)
    rest, test = tail_split(arr)
    train, val = tail_split(rest)
    check_finite("gas", {"train": train, "val": val, "test": test})
    info = {
        "columns": [str(c) for c in data.columns],
        "dropped_correlated": dropped_corr,
        "mean": mu.to_numpy().tolist(),
        "std": s.to_numpy().tolist(),
    }
    return train, val, test, info


GAS_SAFE_FILE = "gas/ethylene_CO.npz"
"""The GAS table in a format that holds only numbers and names (written by :func:`convert_gas_pickle`)."""


def convert_gas_pickle(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Write the GAS pickle ``src`` as ``.npz`` (column names + float64 values), which
    :func:`load_gas` reads without unpickling; default ``dst``: ``ethylene_CO.npz`` beside ``src``.

    This unpickles ``src``: run it once, on a file you trust (also as
    ``python -m torchcfm_local.datasets.convert_gas PATH``).
    """
    src = Path(src)
    frame = read_gas_pickle(src)
    dst = src.with_name(Path(GAS_SAFE_FILE).name) if dst is None else Path(dst)
    np.savez(dst, columns=np.array([str(c) for c in frame.columns]), values=frame.to_numpy(dtype=np.float64))
    return dst


def load_gas(*, root: str | os.PathLike | None = None, n_train: int | None = None,
             n_val: int | None = None, n_test: int | None = None, seed: int = 0,
             dtype: torch.dtype = torch.float32, trust_pickle: bool = False) -> DatasetSplits:
    """GAS (d = 8) from ``root/gas/ethylene_CO.npz`` or ``root/gas/ethylene_CO.pickle``; recipe in
    :func:`preprocess_gas`.

    The MAF release ships a pandas pickle, and unpickling a file runs whatever code it names, so a
    tampered download would run on your machine. The pickle is therefore read only with
    ``trust_pickle=True``; otherwise convert it once (:func:`convert_gas_pickle`, or
    ``python -m torchcfm_local.datasets.convert_gas root/gas/ethylene_CO.pickle``) and the ``.npz``
    beside it, which holds only names and numbers, is read instead. The release pickle was written
    by a 2017 pandas; if the installed pandas cannot unpickle it, the error says so.

    Raises:
        ValueError: only the pickle is there and ``trust_pickle`` is false (the message says how to
            convert it), or a file that is not the GAS table.
    """
    n, seed, dtype = check_args(n_train, n_val, n_test, seed, dtype)
    safe = None if root is None else Path(root).expanduser() / GAS_SAFE_FILE
    if safe is not None and safe.exists():
        path, frame = safe, read_gas_npz(safe)
    else:
        (path,) = resolve_files("gas", root, FILES["gas"])
        if not trust_pickle:
            raise ValueError(
                f"gas: refusing to unpickle {path}: unpickling runs code named in the file. If you trust it "
                f"(the MAF release), pass trust_pickle=True, or convert it once with `python -m "
                f"torchcfm_local.datasets.convert_gas {path}`, which writes {path.with_suffix('.npz')}; "
                "that file is read without unpickling"
            )
        frame = read_gas_pickle(path)
    with reading("gas", path):
        train, val, test, extra = preprocess_gas(frame)
    info = {
        "source": f"{path} (MAF release; UCI gas sensor array under dynamic gas mixtures, ethylene + CO)",
        "preprocessing": [
            "drop columns Meth, Eth, Time",
            "iteratively drop the first column with another column at Pearson correlation > 0.98",
            "normalise by the mean and std (ddof=1) of the whole table",
            "test = last 10%, val = last 10% of the rest, train = remainder (file order, no shuffle)",
        ],
        **extra,
    }
    return finish("gas", (train, val, test), info, n, seed, dtype)


# ----------------------------------------------------------------------------------------------------
# MINIBOONE
# ----------------------------------------------------------------------------------------------------


def _drop_repeated_min_features(data: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Drop features whose smallest value occurs more than 5 times (MAF's rule, see _common)."""
    removed = [j for j in range(data.shape[1]) if min_value_repeats(data[:, j]) > REPEATED_MIN_THRESHOLD]
    kept = [j for j in range(data.shape[1]) if j not in removed]
    return data[:, kept], removed


def preprocess_miniboone(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """MAF's MINIBOONE recipe on the array of ``miniboone/data.npy``.

    The released ``data.npy`` (``(36488, 43)``) is already cleaned; the MAF code keeps the cleaning as a
    comment.  When ``data`` has the 50 raw columns of the UCI file, that cleaning is applied first:

    0a. drop the outlier rows with ``data[:, 0] < -100`` (the UCI file marks missing values by -999);
    0b. drop every feature whose smallest value occurs more than 5 times (the MAF code's
        ``Counter``-based rule, which looks at the multiplicity of the minimum).

    Any other width is taken as already cleaned.  Then (no randomness, file order):

    1. test = last ``int(0.1 N)`` rows; of the rest, val = last ``int(0.1 N_rest)`` rows;
    2. normalise by the mean and (``ddof=0``) std of train + val.

    Returns:
        ``(train, val, test, info)``, float64 arrays ``(n_split, d)``; ``info`` holds ``mean``, ``std``,
        ``raw_cleaning`` (bool) and, when cleaned here, ``removed_features`` / ``removed_rows``.
    """
    data = as_2d_float(data, "miniboone", "miniboone/data.npy")
    info: dict = {"raw_cleaning": data.shape[1] == MINIBOONE_RAW_COLUMNS}
    if info["raw_cleaning"]:
        outliers = data[:, 0] < -100
        data = data[~outliers]
        data, removed = _drop_repeated_min_features(data)
        info.update(removed_rows=int(outliers.sum()), removed_features=removed)
    train, val, test, stats = split_and_normalise(data, "miniboone")
    return train, val, test, {**info, **stats}


def load_miniboone(*, root: str | os.PathLike | None = None, n_train: int | None = None,
                   n_val: int | None = None, n_test: int | None = None, seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> DatasetSplits:
    """MINIBOONE (d = 43) from ``root/miniboone/data.npy``; recipe in :func:`preprocess_miniboone`."""
    n, seed, dtype = check_args(n_train, n_val, n_test, seed, dtype)
    (path,) = resolve_files("miniboone", root, FILES["miniboone"])
    with reading("miniboone", path):
        train, val, test, extra = preprocess_miniboone(read_npy(path))
    steps = ["test = last 10%, val = last 10% of the rest, train = remainder (file order)",
             "normalise by train+val mean and std (ddof=0)"]
    if extra["raw_cleaning"]:
        steps = ["raw 50-column file: drop rows with column 0 < -100",
                 "drop features whose minimum value occurs more than 5 times"] + steps
    info = {"source": f"{path} (MAF release; UCI MiniBooNE particle identification, signal events)",
            "preprocessing": steps, **extra}
    return finish("miniboone", (train, val, test), info, n, seed, dtype)


# ----------------------------------------------------------------------------------------------------
# BSDS300
# ----------------------------------------------------------------------------------------------------


def load_bsds300(*, root: str | os.PathLike | None = None, n_train: int | None = None,
                 n_val: int | None = None, n_test: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> DatasetSplits:
    """BSDS300 patches (d = 63) from ``root/BSDS300/BSDS300.hdf5``.

    The HDF5 file holds the datasets ``'train'``, ``'validation'`` and ``'test'``, each ``(N, 63)``:
    8 x 8 grayscale patches, dequantised, scaled to [0, 1], with the patch mean subtracted and the
    last (bottom-right) pixel dropped.  All of that was done before release; the MAF code reads the
    three arrays as they are, and so do we (no further normalisation).

    Needs ``h5py`` (``pip install h5py``), imported only here.
    """
    n, seed, dtype = check_args(n_train, n_val, n_test, seed, dtype)
    (path,) = resolve_files("bsds300", root, FILES["bsds300"])
    try:
        import h5py
    except ImportError as err:
        raise ImportError(
            f"the bsds300 dataset reads {path} with h5py, which is not installed: pip install h5py"
        ) from err
    arrays = []
    with reading("bsds300", path):
        with h5py.File(path, "r") as f:
            for key in ("train", "validation", "test"):
                if key not in f:
                    raise ValueError(
                        f"bsds300: expected datasets 'train', 'validation', 'test' in {path}, got {sorted(f.keys())}"
                    )
                arrays.append(as_2d_float(f[key][:], "bsds300", f"{path}[{key!r}]"))
        dims = {a.shape[1] for a in arrays}
        if len(dims) != 1:
            raise ValueError(f"bsds300: train / validation / test widths differ in {path}: {[a.shape for a in arrays]}")
        check_finite("bsds300", dict(zip(("train", "val", "test"), arrays)))
    info = {
        "source": f"{path} (MAF release; 8x8 patches of BSDS300 images)",
        "preprocessing": ["none: the release already holds dequantised, [0,1]-scaled, mean-subtracted "
                          "8x8 patches with the last pixel dropped (datasets train / validation / test)"],
    }
    return finish("bsds300", tuple(arrays), info, n, seed, dtype)


# ----------------------------------------------------------------------------------------------------
# HEPMASS
# ----------------------------------------------------------------------------------------------------


def preprocess_hepmass(train_frame: Any, test_frame: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """MAF's HEPMASS recipe on the DataFrames of ``1000_train.csv`` and ``1000_test.csv``.

    Steps (no randomness, file order):

    1. keep the rows whose first column (the class label) equals 1 (signal), then drop that column,
       in both tables;
    2. drop the *last* column of the test table (the MAF code does this unconditionally, with the
       comment "Because the data set is messed up!");
    3. align the test columns to the train columns by name (the MAF code relies on pandas' name
       alignment in the normalisation); a train column the test table lacks is an error unless
       step 4 removes it;
    4. drop every feature whose smallest *train* value occurs more than 5 times (MAF's
       ``Counter``-based rule; on the real files it removes the discrete features and leaves 21);
    5. normalise train and test by the train mean and sample (``ddof=1``, pandas default) std;
    6. val = last ``int(0.1 N_train)`` rows of train.

    Uncertain: the MAF code applies rule 4 *after* normalising; we apply it to the raw values, which
    is the same whenever a column's std is non-zero (an affine map keeps ties) and avoids dividing a
    constant column by 0.  We have not checked the real files' header quirk that step 2 works around.

    Returns:
        ``(train, val, test, info)``, float64 arrays ``(n_split, d)``; ``info`` holds ``columns``,
        ``removed_features``, ``mean`` and ``std``.
    """
    if train_frame.shape[1] < 2 or test_frame.shape[1] < 3:
        raise ValueError(
            f"hepmass: expected a label column plus features in 1000_train.csv and one more column in "
            f"1000_test.csv, got {train_frame.shape[1]} and {test_frame.shape[1]} columns"
        )
    label_tr, label_te = train_frame.columns[0], test_frame.columns[0]
    train = train_frame[train_frame[label_tr] == 1].drop(columns=[label_tr])
    test = test_frame[test_frame[label_te] == 1].drop(columns=[label_te])
    test = test.drop(columns=[test.columns[-1]])
    extra_cols = [c for c in test.columns if c not in train.columns]
    if extra_cols:
        raise ValueError(
            f"hepmass: test columns {extra_cols} do not appear in the train table {list(train.columns)}; "
            "expected the 1000_train.csv / 1000_test.csv pair of the MAF release"
        )
    train_arr = train.to_numpy(dtype=np.float64)
    removed = [j for j in range(train_arr.shape[1])
               if min_value_repeats(train_arr[:, j]) > REPEATED_MIN_THRESHOLD]
    kept_cols = [c for j, c in enumerate(train.columns) if j not in removed]
    absent = [c for c in kept_cols if c not in test.columns]
    if absent:
        raise ValueError(f"hepmass: the test table lacks the kept feature column(s) {absent}")
    train_arr = train[kept_cols].to_numpy(dtype=np.float64)
    test_arr = test[kept_cols].to_numpy(dtype=np.float64)
    if train_arr.shape[0] < 2:
        raise ValueError(f"hepmass: need at least 2 signal rows (label 1) in 1000_train.csv, got {train_arr.shape[0]}")
    mu, s = train_arr.mean(axis=0), train_arr.std(axis=0, ddof=1)
    train_arr, test_arr = (train_arr - mu) / s, (test_arr - mu) / s
    train_arr, val_arr = tail_split(train_arr)
    check_finite("hepmass", {"train": train_arr, "val": val_arr, "test": test_arr})
    info = {
        "columns": [str(c) for c in kept_cols],
        "removed_features": [str(train.columns[j]) for j in removed],
        "mean": mu.tolist(),
        "std": s.tolist(),
    }
    return train_arr, val_arr, test_arr, info


def load_hepmass(*, root: str | os.PathLike | None = None, n_train: int | None = None,
                 n_val: int | None = None, n_test: int | None = None, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> DatasetSplits:
    """HEPMASS (d = 21) from ``root/hepmass/1000_train.csv`` and ``1000_test.csv``.

    Recipe in :func:`preprocess_hepmass`; reading the CSVs needs pandas (a torchcfm dependency).
    """
    n, seed, dtype = check_args(n_train, n_val, n_test, seed, dtype)
    path_tr, path_te = resolve_files("hepmass", root, FILES["hepmass"])
    train_frame, test_frame = read_csv_table("hepmass", path_tr), read_csv_table("hepmass", path_te)
    with reading("hepmass", path_tr, path_te):
        train, val, test, extra = preprocess_hepmass(train_frame, test_frame)
    info = {
        "source": f"{path_tr}, {path_te} (MAF release; UCI HEPMASS, mass-1000 files, signal only)",
        "preprocessing": [
            "keep rows with label (first column) == 1, drop the label column",
            "drop the last column of the test table (MAF workaround)",
            "drop features whose minimum train value occurs more than 5 times",
            "normalise train and test by the train mean and std (ddof=1)",
            "val = last 10% of train",
        ],
        **extra,
    }
    return finish("hepmass", (train, val, test), info, n, seed, dtype)

