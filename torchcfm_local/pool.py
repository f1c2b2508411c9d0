"""Training pools kept on disk: memory-mapped ``.npy`` files for pools larger than RAM.

:meth:`LocalFlowMatching.fit` keeps the pool (the training data pushed through the blocks
trained so far) in memory by default. With ``pool_dir=...`` it lives here instead:

* ``pool.json``: what the directory holds (shape, dtype, which buffer is current, how many
  blocks the pool has been pushed through, a fingerprint of the training data);
* ``pool_a.npy`` and ``pool_b.npy``: two buffers of shape ``(n, *shape)``. The pushforward
  reads the current buffer and writes the other one, chunk by chunk, through short-lived
  mappings of one chunk each, so its memory is bounded by ``chunk_size`` whatever the pool
  size; ``pool.json`` switches buffers only when the whole pushforward is written. A crash
  mid-pushforward leaves the previous pool intact.

Training batches are read with fancy indexing from a read-only mapping of the current buffer;
the pages it touches are the operating system's file cache (shared between the processes of a
distributed run on one machine, and evictable), not process memory.

Both buffers are plain ``.npy`` files: ``numpy.load(path, mmap_mode="r")`` reads them.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

__all__ = ["MemmapPool", "PoolDirError"]

_META = "pool.json"
_FORMAT = "torchcfm_local.pool"
_VERSION = 1
_BUFFERS = ("pool_a.npy", "pool_b.npy")
_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


class PoolDirError(ValueError):
    """A pool directory that is not one (foreign files, a damaged ``pool.json``, missing buffers)."""


def _count(value, none_ok: bool = False) -> bool:
    return (value is None and none_ok) or (isinstance(value, int) and not isinstance(value, bool) and value >= 0)


_FIELDS = {  # what create() writes, checked on open: a damaged pool.json is refused, not half-used
    "format": lambda v: v == _FORMAT,
    "version": lambda v: v is None or (_count(v) and v <= _VERSION),  # None: files from before versions
    "shape": lambda v: isinstance(v, list) and len(v) >= 1 and all(map(_count, v)),
    "dtype": lambda v: v in ("float32", "float64", "float16"),
    "current": lambda v: v in _BUFFERS,
    "after_block": lambda v: _count(v, none_ok=True),
    "fingerprint": lambda v: isinstance(v, list) and all(type(f) in (int, float) for f in v),
    "token": lambda v: v is None or isinstance(v, str),
    "run": lambda v: v is None or isinstance(v, str),
}


def _read_meta(path: Path) -> dict:
    """``pool.json``, checked field by field; PoolDirError naming ``path`` otherwise."""
    if not path.exists():
        raise PoolDirError(f"{path.parent} holds no pool (no {_META})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:  # a directory, unreadable, not UTF-8, not JSON
        raise PoolDirError(f"{path} is not a readable pool description: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise PoolDirError(f"{path} is not a torchcfm_local pool description (format {found!r})")
    if isinstance(meta.get("version"), int) and meta["version"] > _VERSION:
        raise PoolDirError(f"{path} uses pool format version {meta['version']}; this version reads <= {_VERSION}")
    bad = sorted(set(meta) - set(_FIELDS)) + [key for key, ok in _FIELDS.items() if not ok(meta.get(key))]
    if bad:
        raise PoolDirError(f"{path} is damaged: missing, unknown or invalid fields {bad}")
    return meta


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # read-only mappings: we copy before anyone can write
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(np.ascontiguousarray(array))


class _Writer:
    """Row-slice assignment into one buffer through a mapping of just those rows."""

    device = torch.device("cpu")

    def __init__(self, pool: "MemmapPool", name: str):
        self.pool, self.path, self.dtype = pool, pool.directory / name, pool.dtype

    def __setitem__(self, rows: slice, value: torch.Tensor):
        start, stop, _ = rows.indices(self.pool.n)
        view = self.pool._map(self.path, start, stop, "r+")
        view[...] = value.detach().cpu().numpy().astype(view.dtype, copy=False)
        view.flush()
        del view


class MemmapPool:
    """A pool ``(n, *shape)`` in memory-mapped files (see the module docstring for the layout).

    Indexing returns torch tensors (copies): ``pool[idx]`` for a batch of row indices and
    ``pool[a:b]`` for a chunk. ``shape``, ``dtype`` and ``len`` behave as for a tensor.
    Create one with :meth:`create`, reopen one with :meth:`open`.
    """

    def __init__(self, directory: Path, meta: dict):
        self.directory = Path(directory)
        self.meta = meta
        self.shape = tuple(meta["shape"])
        self.dtype = getattr(torch, meta["dtype"])
        self._np_dtype = np.dtype(_DTYPES[self.dtype])
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self._np_dtype.itemsize
        self._reader: Optional[np.memmap] = None
        self._offset: Optional[int] = None  # .npy header size, the same for both buffers

    # ------------------------------------------------------------------ directory handling
    @staticmethod
    def check_dir(directory: Union[str, os.PathLike]) -> Path:
        """``directory`` as a Path if it is new, empty or a pool directory; else :class:`PoolDirError`."""
        directory = Path(directory)
        if directory.exists() and not directory.is_dir():
            raise PoolDirError(f"pool_dir {directory} is a file; pass a directory (new, empty, or an earlier pool)")
        if directory.is_dir() and any(directory.iterdir()) and not (directory / _META).exists():
            found = sorted(p.name for p in directory.iterdir())[:5]
            raise PoolDirError(
                f"pool_dir {directory} is not a torchcfm_local pool directory (no {_META}; found {found}); "
                "pass a new or empty directory so that no other files get overwritten"
            )
        return directory

    @classmethod
    def open(cls, directory: Union[str, os.PathLike]) -> "MemmapPool":
        """Reopen a pool directory written by :meth:`create`.

        Raises:
            PoolDirError: no ``pool.json``, or one that cannot be read, is not ours, is newer or has
                a damaged field; a buffer that is missing, damaged, or not the shape and dtype
                ``pool.json`` gives. The message names the file.
        """
        directory = cls.check_dir(directory)
        pool = cls(directory, _read_meta(directory / _META))
        for name in _BUFFERS:
            buffer = directory / name
            try:
                header = np.lib.format.open_memmap(buffer, mode="r")
            except Exception as err:  # numpy's header parser raises OSError, ValueError, SyntaxError, TokenError, ...
                raise PoolDirError(f"pool buffer {buffer} is missing or damaged: {type(err).__name__}: {err}") from err
            if header.shape != pool.shape or header.dtype != pool._np_dtype:
                raise PoolDirError(
                    f"pool buffer {buffer} has shape {header.shape} and dtype {header.dtype}; "
                    f"{directory / _META} says {pool.shape} and {pool._np_dtype}"
                )
            if buffer.stat().st_size != header.offset + header.nbytes:  # a damaged header length shifts the rows
                raise PoolDirError(f"pool buffer {buffer} holds {buffer.stat().st_size} bytes; its header "
                                   f"announces {header.offset + header.nbytes}")
            del header
        return pool

    @classmethod
    def create(cls, directory, shape, dtype: torch.dtype, fingerprint: list, token: str = "",
               run: Optional[str] = None) -> "MemmapPool":
        """Allocate both buffers (sparse files) and write ``pool.json`` with ``after_block=None``
        (no pool yet). An earlier pool in ``directory`` is replaced."""
        directory = cls.check_dir(directory)
        if dtype not in _DTYPES:
            raise TypeError(f"a memory-mapped pool stores float16/32/64, not {dtype}")
        directory.mkdir(parents=True, exist_ok=True)
        for name in _BUFFERS:
            np.lib.format.open_memmap(directory / name, mode="w+", dtype=_DTYPES[dtype], shape=tuple(shape)).flush()
        meta = {"format": _FORMAT, "version": _VERSION, "shape": list(shape), "dtype": str(dtype).split(".")[-1],
                "current": _BUFFERS[0], "after_block": None, "fingerprint": list(fingerprint), "token": token, "run": run}
        pool = cls(directory, meta)
        pool._write_meta()
        return pool

    def _write_meta(self):
        tmp = self.directory / (_META + ".tmp")
        tmp.write_text(json.dumps(self.meta, indent=1))
        os.replace(tmp, self.directory / _META)

    # ------------------------------------------------------------------ state
    @property
    def n(self) -> int:
        return self.shape[0]

    def __len__(self) -> int:
        return self.n

    @property
    def after_block(self) -> Optional[int]:
        """Blocks the current buffer has been pushed through (``None``: not filled yet)."""
        return self.meta["after_block"]

    @property
    def current_path(self) -> Path:
        return self.directory / self.meta["current"]

    def _other(self) -> str:
        return _BUFFERS[1 - _BUFFERS.index(self.meta["current"])]

    def _map(self, path: Path, start: int, stop: int, mode: str) -> np.memmap:
        if self._offset is None:
            header = np.lib.format.open_memmap(path, mode="r")
            self._offset = header.offset
            del header
        return np.memmap(path, dtype=self._np_dtype, mode=mode, offset=self._offset + start * self._row_bytes,
                         shape=(stop - start, *self.shape[1:]))

    # ------------------------------------------------------------------ reading and writing
    def __getitem__(self, index) -> torch.Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.n)
            if step != 1:
                raise IndexError("a memory-mapped pool takes contiguous slices only")
            if stop <= start:
                return torch.empty((0, *self.shape[1:]), dtype=self.dtype)
            view = self._map(self.current_path, start, stop, "r")
            out = _tensor(view)
            del view
            return out
        if self._reader is None:
            self._reader = np.lib.format.open_memmap(self.current_path, mode="r")
        idx = index.cpu().numpy() if isinstance(index, torch.Tensor) else np.asarray(index)
        return _tensor(self._reader[idx])

    def target(self) -> _Writer:
        """Writer into the non-current buffer: ``target()[a:b] = rows``; then :meth:`commit`."""
        return _Writer(self, self._other())

    def commit(self, after_block: int, write_meta: bool = True):
        """Make the buffer written through :meth:`target` current (the pool after ``after_block`` blocks).

        In a distributed run every rank swaps its view; only one (``write_meta``) rewrites ``pool.json``.
        """
        self.meta = {**self.meta, "current": self._other(), "after_block": int(after_block)}
        self._reader = None
        if write_meta:
            self._write_meta()

    def __repr__(self) -> str:
        return f"MemmapPool({str(self.directory)!r}, shape={self.shape}, dtype={self.dtype}, after_block={self.after_block})"
