"""Safe checkpoint files: atomic writes, ``weights_only`` reads, clear errors."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "FORMAT_VERSION", "atomic_save", "safe_load", "CheckpointError"]

FORMAT = "torchcfm_local"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, foreign, or from an incompatible version."""


def atomic_save(obj: Any, path: "str | os.PathLike") -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def safe_load(path: "str | os.PathLike", kind: str, map_location="cpu") -> dict:
    """Load a file written by :func:`atomic_save` with a ``{"format", "kind", "version"}`` header.

    Only tensors and plain containers are unpickled (``weights_only=True``).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: unreadable (corrupt/truncated), not ours, another kind of file, or a newer
            format version.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or not a safe torch file): {err}"
        ) from err
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} was not written by torchcfm_local (found {keys}); expected a {kind} file")
    if obj.get("kind") != kind:
        raise CheckpointError(f"{path} holds a torchcfm_local {obj.get('kind')!r} file, expected {kind!r}")
    version = obj.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format version {version!r}; this torchcfm_local reads versions <= {FORMAT_VERSION}. "
            "Upgrade torchcfm-local to read it."
        )
    return obj


def header(kind: str) -> dict:
    from . import __version__

    return {"format": FORMAT, "kind": kind, "version": FORMAT_VERSION, "library_version": __version__}
