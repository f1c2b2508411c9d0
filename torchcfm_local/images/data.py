"""Image data for LFM on images: readers, synthetic stand-ins and the dequantization map.

Everything here returns images as ``uint8`` tensors of shape ``(N, C, H, W)`` (pixel values
``0..255``); :func:`to_model_space` turns them into the float32 ``[-1, 1)`` tensors a flow is
trained on, and :func:`to_uint8` turns samples back.  Nothing is downloaded.

Readers
-------
* :func:`load_cifar10` -- the CIFAR-10 *python* batches (``cifar-10-batches-py``), unpickled with
  an allow-list (only numpy's array reconstruction globals), see :class:`_ArrayOnlyUnpickler`.
* :func:`write_cifar10_like` -- small synthetic files in exactly that format (tests, smoke runs).
* :func:`load_image_folder` -- a folder of image files (ImageNet-32 / Flowers style, any nesting).
* :func:`digits_images` -- scikit-learn's bundled 8 x 8 ``load_digits`` as 1-channel images.

Bits per dimension
------------------
A flow trained on ``y = to_model_space(x)`` gives a density :math:`p_Y` on :math:`[-1, 1)^D`.
``torchcfm_local.bits_per_dim(log_p_y, D, n_bins=256, scale=2.0)`` converts it to bits per
dimension of the 8-bit data (the derivation is in its docstring): ``(nll / D + log 128) / log 2``.
"""
from __future__ import annotations

import importlib
import io
import math
import os
import pickle
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from .._checks import positive_int

__all__ = [
    "CIFAR10_DIRNAME",
    "CIFAR10_TRAIN_FILES",
    "CIFAR10_TEST_FILES",
    "IMAGE_EXTENSIONS",
    "load_cifar10",
    "write_cifar10_like",
    "load_image_folder",
    "digits_images",
    "to_model_space",
    "to_uint8",
]

PathLike = Union[str, "os.PathLike[str]"]

CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch",)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_CIFAR_ROW = 3 * 32 * 32  # 3072 bytes per image: R plane, G plane, B plane, each 32 x 32 row-major
_CIFAR_CLASSES = 10

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm")



# --------------------------------------------------------------------------------------------
# CIFAR-10 (python version)
# --------------------------------------------------------------------------------------------


def _resolve_reconstruct():
    """numpy's ``_reconstruct`` (``numpy._core.multiarray`` in numpy 2, ``numpy.core`` before)."""
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(mod), "_reconstruct")
        except (ImportError, AttributeError):
            continue
    raise ImportError("cannot find numpy's multiarray._reconstruct")  # pragma: no cover


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals a pickled numpy array needs.

    Unpickling runs whatever callables the stream names, so an arbitrary pickle can execute
    arbitrary code.  The CIFAR-10 python batches contain a dict of bytes / lists / ints and
    numpy arrays; pickled arrays reference exactly three globals: ``_reconstruct`` from
    ``numpy.core.multiarray`` (``numpy._core.multiarray`` when written by numpy 2),
    ``numpy.ndarray`` and ``numpy.dtype``.  Every other global raises
    :class:`pickle.UnpicklingError`.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"global '{module}.{name}' is not allowed in a CIFAR-10 batch file "
                f"(allowed: {sorted('.'.join(a) for a in self._ALLOWED)})"
            )
        if name == "_reconstruct":
            return _resolve_reconstruct()
        return np.ndarray if name == "ndarray" else np.dtype


def _safe_unpickle(path: Path) -> object:
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise ValueError(f"{path}: not a valid CIFAR-10 python batch: {e}") from e
    except Exception as e:  # truncated / garbage streams raise EOFError, KeyError, TypeError, ...
        raise ValueError(
            f"{path}: not a valid CIFAR-10 python batch (unpickling failed: "
            f"{type(e).__name__}: {e})"
        ) from e


def _get(d: dict, key: str):
    """Look up ``key`` as bytes (files written by Python 2) or str (Python 3)."""
    if key.encode() in d:
        return d[key.encode()]
    return d.get(key)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    obj = _safe_unpickle(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    data, labels = _get(obj, "data"), _get(obj, "labels")
    if data is None or labels is None:
        keys = sorted(k.decode(errors="replace") if isinstance(k, bytes) else str(k) for k in obj)
        raise ValueError(f"{path}: expected keys b'data' and b'labels', found {keys}")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        desc = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' must be a uint8 array of shape (N, {_CIFAR_ROW}), got {desc}")
    if data.shape[1] != _CIFAR_ROW:
        raise ValueError(f"{path}: b'data' rows must have {_CIFAR_ROW} bytes (3 x 32 x 32), got {data.shape[1]}")
    try:
        lab = np.asarray(labels)
    except Exception as e:  # pragma: no cover - exotic objects
        raise ValueError(f"{path}: b'labels' is not a list of integers") from e
    if lab.ndim != 1 or lab.shape[0] != data.shape[0] or (lab.size and lab.dtype.kind not in "iu"):
        raise ValueError(
            f"{path}: b'labels' must be {data.shape[0]} integers (one per row of b'data'), "
            f"got {lab.dtype} array of shape {lab.shape}"
        )
    if lab.size and (lab.min() < 0 or lab.max() >= _CIFAR_CLASSES):
        raise ValueError(f"{path}: labels must lie in 0..{_CIFAR_CLASSES - 1}, got {lab.min()}..{lab.max()}")
    return data, lab.astype(np.int64)


def _cifar_dir_and_files(root: Path, split: str) -> tuple[Path, list[Path]]:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    names = CIFAR10_TRAIN_FILES if split == "train" else CIFAR10_TEST_FILES
    candidates = [root / CIFAR10_DIRNAME, root] if root.name != CIFAR10_DIRNAME else [root]
    for d in candidates:
        files = [d / n for n in names]
        if all(f.is_file() for f in files):
            return d, files
    expected = [str(d / n) for d in candidates for n in names]
    missing = [p for p in expected if not os.path.isfile(p)]
    raise FileNotFoundError(
        f"CIFAR-10 python batches for split={split!r} not found under {str(root)!r}. "
        f"Expected all of {list(names)} in one of {[str(d) for d in candidates]}, i.e. the files\n  "
        + "\n  ".join(expected)
        + f"\nmissing: {missing}\n"
        f"(the standard archive is {CIFAR10_URL}; nothing is downloaded automatically)"
    )


def _check_n(n: Optional[int], total: int, what: str) -> int:
    if n is None:
        return total
    positive_int(n, "n", allow_none=True)
    if n > total:
        raise ValueError(f"n={n} exceeds the {total} images available in {what}")
    return int(n)


def load_cifar10(
    root: PathLike, split: str = "train", n: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the CIFAR-10 python batches.

    Args:
        root: the ``cifar-10-batches-py`` directory itself, or a directory containing it.
        split: ``"train"`` (``data_batch_1`` .. ``data_batch_5``, 50000 images for the real data
            set) or ``"test"`` (``test_batch``, 10000 images).
        n: keep only the first ``n`` images in file order (only the batches needed are read).

    Each batch is a pickled dict whose ``b"data"`` is a ``uint8`` array ``(N, 3072)``: per row the
    red, green and blue 32 x 32 planes, each row-major, and whose ``b"labels"`` are ``N`` integers
    in ``0..9``.  Files are unpickled with ``encoding="bytes"`` through an allow-list that only
    resolves numpy's array reconstruction globals, so a file naming any other class is rejected
    instead of executed.

    Returns:
        ``(images, labels)``: ``uint8`` ``(N, 3, 32, 32)`` and ``int64`` ``(N,)``.

    Raises:
        FileNotFoundError: some batch file is missing; the message lists every expected path.
        ValueError: a file is truncated, is not a pickle, names a disallowed global, lacks the
            ``data`` / ``labels`` keys, or has wrong sizes / dtypes / label values.
    """
    d, files = _cifar_dir_and_files(Path(root), split)
    limit = None if n is None else _check_n(n, math.inf, "")  # validates n; the upper bound comes later
    images, labels, have = [], [], 0
    for f in files:
        data, lab = _read_cifar_batch(f)
        images.append(data)
        labels.append(lab)
        have += data.shape[0]
        if limit is not None and have >= limit:
            break
    x = np.concatenate(images, 0)
    y = np.concatenate(labels, 0)
    k = _check_n(n, x.shape[0], f"{d} (split={split!r})")
    x = np.ascontiguousarray(x[:k]).reshape(k, 3, 32, 32)
    return torch.from_numpy(x.copy()), torch.from_numpy(y[:k].copy())


def _synthetic_cifar_images(n: int, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Class-dependent smooth colour patterns plus noise, as ``(n, 3072)`` uint8 rows."""
    if n == 0:
        return np.zeros((0, _CIFAR_ROW), np.uint8)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64) / 31.0
    cls_color = np.linspace(40, 215, _CIFAR_CLASSES)
    out = np.empty((n, 3, 32, 32), np.float64)
    for c in range(3):
        phase = rng.uniform(0, 2 * np.pi, size=(n, 1, 1))
        freq = 1.0 + labels[:, None, None] * 0.5
        wave = np.sin(2 * np.pi * freq * (xx if c != 1 else yy)[None] + phase)
        base = np.roll(cls_color, c)[labels][:, None, None]
        out[:, c] = base + 35.0 * wave + rng.normal(0.0, 12.0, size=(n, 32, 32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(n, _CIFAR_ROW)


def write_cifar10_like(root: PathLike, n_train: int = 100, n_test: int = 20, seed: int = 0) -> str:
    """Write small synthetic CIFAR-10 python batches under ``root/cifar-10-batches-py``.

    The files have exactly the layout :func:`load_cifar10` reads (and the real files have): a
    pickled dict with ``b"batch_label"``, ``b"labels"`` (list of ints in 0..9), ``b"data"``
    (``uint8 (N, 3072)``) and ``b"filenames"``; the ``n_train`` training images are spread over
    ``data_batch_1..5`` (``np.array_split``; a batch may be empty when ``n_train < 5``), the test
    images go to ``test_batch``; ``batches.meta`` holds the class names.  Pickle protocol 3 is
    used (bytes keys and the same three numpy globals as the real files; protocol 5 would name
    ``numpy._core.numeric._frombuffer`` instead).  Images are class-dependent colour waves plus
    noise, deterministic in ``seed``.

    Returns:
        the ``cifar-10-batches-py`` directory (a str).
    """
    for name, v in (("n_train", n_train), ("n_test", n_test)):
        positive_int(v, name, minimum=0)
    rng = np.random.default_rng(seed)
    d = Path(root) / CIFAR10_DIRNAME
    d.mkdir(parents=True, exist_ok=True)

    def dump(path: Path, obj: dict) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=3)

    def batch(label: str, n: int, offset: int) -> dict:
        labels = rng.integers(0, _CIFAR_CLASSES, size=n)
        return {
            b"batch_label": label.encode(),
            b"labels": [int(v) for v in labels],
            b"data": _synthetic_cifar_images(n, labels, rng),
            b"filenames": [f"synthetic_{offset + i:06d}.png".encode() for i in range(n)],
        }

    offset = 0
    for i, idx in enumerate(np.array_split(np.arange(n_train), len(CIFAR10_TRAIN_FILES))):
        dump(d / CIFAR10_TRAIN_FILES[i], batch(f"training batch {i + 1} of 5 (synthetic)", len(idx), offset))
        offset += len(idx)
    dump(d / "test_batch", batch("testing batch 1 of 1 (synthetic)", n_test, offset))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    dump(d / "batches.meta", {b"label_names": [s.encode() for s in names], b"num_cases_per_batch": 10000, b"num_vis": _CIFAR_ROW})
    return str(d)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------


def _list_images(root: Path, extensions: Iterable[str]) -> list[Path]:
    exts = tuple(e.lower() for e in extensions)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def load_image_folder(
    root: PathLike,
    size: int,
    n: Optional[int] = None,
    *,
    resample: str = "bicubic",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> torch.Tensor:
    """Read every image file below ``root`` (any nesting) as ``uint8 (N, 3, size, size)``.

    Files are found recursively by extension (case-insensitive, :data:`IMAGE_EXTENSIONS`) and
    taken in sorted order of their path relative to ``root`` (so ``n`` selects a deterministic
    subset).  Each image is converted to RGB (grayscale / palette / alpha dropped), centre-cropped
    to a square of side ``min(width, height)`` (the crop box is
    ``((w - s) // 2, (h - s) // 2)`` plus ``s``), then resized to ``size x size`` with Pillow's
    filter ``resample`` (``"bicubic"`` default; ``"bilinear"``, ``"lanczos"``, ``"box"``,
    ``"nearest"``; Pillow's resize widens the filter when shrinking, i.e. it is antialiased).
    Loading ImageNet-32 / 64 (already square PNGs) this way is a no-op resize.

    Raises:
        FileNotFoundError: ``root`` does not exist / is not a directory.
        ValueError: no image file was found, or a file cannot be decoded (its path is named).
    """
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - Pillow comes with torchvision
        raise ImportError("load_image_folder needs Pillow: pip install pillow") from e
    filters = {
        "bicubic": Image.Resampling.BICUBIC,
        "bilinear": Image.Resampling.BILINEAR,
        "lanczos": Image.Resampling.LANCZOS,
        "box": Image.Resampling.BOX,
        "nearest": Image.Resampling.NEAREST,
    }
    if resample not in filters:
        raise ValueError(f"resample must be one of {sorted(filters)}, got {resample!r}")
    positive_int(size, "size")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {str(root)!r} does not exist or is not a directory")
    files = _list_images(root, extensions)
    if not files:
        raise ValueError(
            f"no image files found under {str(root)!r} (searched recursively for extensions {list(extensions)})"
        )
    k = _check_n(n, len(files), f"{root}")
    out = np.empty((k, size, size, 3), np.uint8)
    for i, path in enumerate(files[:k]):
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                w, h = im.size
                s = min(w, h)
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s))
                if s != size:
                    im = im.resize((size, size), resample=filters[resample])
                out[i] = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as e:  # Pillow raises SyntaxError for broken PNG chunks
            raise ValueError(f"cannot read image {str(path)!r}: {e}") from e
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------
# scikit-learn digits as images
# --------------------------------------------------------------------------------------------


def digits_images(
    split: str = "train", seed: int = 0, size: int = 8, test_fraction: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's bundled handwritten digits (1797 images, 8 x 8, values 0..16) as images.

    Choices (fixed, so results are comparable):

    * values: ``round(v * 255 / 16)`` -> ``uint8``, so 0 -> 0 and 16 -> 255 (17 grey levels);
    * 1 channel: shape ``(N, 1, size, size)``;
    * ``size=16``: nearest-neighbour 2x upsampling (every pixel becomes a 2 x 2 block), which adds
      no new grey levels; ``size=8`` keeps the originals;
    * split: a permutation from ``np.random.default_rng(seed)`` of all 1797 images; the last
      ``round(test_fraction * 1797)`` (359 for 0.2) are ``"test"``, the rest (1438) ``"train"``.
      The two splits are disjoint and together cover the data set; the same ``seed`` always gives
      the same split (independent of torch's global RNG).

    Returns:
        ``(images uint8 (N, 1, size, size), labels int64 (N,))`` with labels in ``0..9``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if size not in (8, 16):
        raise ValueError(f"size must be 8 or 16, got {size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - optional dependency
        raise ImportError(
            'digits_images needs scikit-learn: pip install "torchcfm-local[bench]"'
        ) from e
    ds = load_digits()
    x = np.rint(ds.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)  # (1797, 8, 8)
    y = ds.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    idx = perm[len(x) - n_test:] if split == "test" else perm[: len(x) - n_test]
    x, y = x[idx], y[idx]
    if size == 16:
        x = x.repeat(2, axis=1).repeat(2, axis=2)
    return torch.from_numpy(np.ascontiguousarray(x[:, None])), torch.from_numpy(y)


# --------------------------------------------------------------------------------------------
# Model space <-> uint8
# --------------------------------------------------------------------------------------------


def to_model_space(
    x_uint8: torch.Tensor, generator: Optional[torch.Generator] = None, dequantize: bool = True
) -> torch.Tensor:
    """Map ``uint8`` pixels ``k in {0..255}`` to float32 model space ``[-1, 1)``.

    With ``dequantize=True`` (training / likelihood evaluation)::

        y = 2 * (k + u) / 256 - 1,    u ~ U[0, 1) independently per pixel

    so ``y`` is uniform on the bin ``[k/128 - 1, (k+1)/128 - 1)``; ``generator`` (on ``x``'s
    device) makes ``u`` reproducible.  With ``dequantize=False`` the bin centre is used
    (``u = 1/2``: ``y = (2k + 1)/256 - 1``), which :func:`to_uint8` maps back exactly.
    Bits/dim of the data from a model-space log-density: ``bits_per_dim(..., n_bins=256, scale=2.0)``.
    """
    if not isinstance(x_uint8, torch.Tensor):
        x_uint8 = torch.as_tensor(np.asarray(x_uint8))
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"to_model_space expects a uint8 tensor, got {x_uint8.dtype}")
    x = x_uint8.to(torch.float32)
    if dequantize:
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    else:
        u = torch.full_like(x, 0.5)
    return (x + u) * (2.0 / 256.0) - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_model_space` for samples: float ``[-1, 1]`` -> ``uint8``.

    ``k = clamp(floor(128 * (clamp(y, -1, 1) + 1)), 0, 255)``: the index of the dequantization
    bin ``[k/128 - 1, (k+1)/128 - 1)`` containing ``y`` (the value 1.0 goes to 255).  This is
    rounding to the nearest bin centre ``(2k+1)/256 - 1``, so ``to_uint8(to_model_space(k))``
    is ``k`` with or without dequantization noise.  NaNs become 0.
    """
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    y = torch.nan_to_num(x.detach().to(torch.float32), nan=-1.0).clamp(-1.0, 1.0)
    k = torch.floor((y + 1.0) * 128.0).clamp(0, 255)
    return k.to(torch.uint8)
