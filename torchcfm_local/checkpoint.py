"""Safe checkpoint files: atomic writes, ``weights_only`` reads, a checksum, clear errors.

Every file the package writes with :func:`atomic_save` (models, fit checkpoints, policies,
distilled samplers) is a dict with a ``{"format", "kind", "version"}`` header, to which
:func:`atomic_save` adds ``"checksum"``: the SHA-256 of the dict's contents (every tensor's dtype,
shape and bytes, every plain value). :func:`safe_load` recomputes it, so a bit flip in a tensor's
bytes, which ``torch.load`` itself reads without complaint (the zip records carry no checked
CRC), is reported instead of loaded. Files written before the checksum existed load unchecked.
The checksum guards against damage (disks, copies, truncated transfers), not against someone who
edits a file on purpose: they can recompute it.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "FORMAT_VERSION", "atomic_save", "safe_load", "CheckpointError", "checksum"]

FORMAT = "torchcfm_local"
FORMAT_VERSION = 1
_CHECKSUM = "checksum"
_PLAIN = (str, bytes, bool, int, float, complex, type(None), torch.dtype, torch.device)


class CheckpointError(ValueError):
    """A checkpoint file is corrupt, foreign, or from an incompatible version."""


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    """Hash ``obj`` into ``h``: a type tag, then the value (containers recursively, in order)."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        try:
            t = t.to_dense() if t.layout != torch.strided else t
            h.update(t.resolve_conj().resolve_neg().contiguous().reshape(-1).view(torch.uint8).numpy())
        except (RuntimeError, TypeError):  # exotic tensors (quantized, ...): dtype and shape only
            h.update(b"?")
    elif isinstance(obj, Mapping):
        h.update(f"M{len(obj)}:".encode())
        for key, value in obj.items():
            _feed(h, key)
            _feed(h, value)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}:".encode())
        for value in obj:
            _feed(h, value)
    else:  # plain values by repr (exact for floats); anything else by its type name only
        text = repr(obj) if isinstance(obj, _PLAIN) else ""
        h.update(f"{type(obj).__name__}{len(text)}:{text}".encode())


def checksum(state: Mapping) -> str:
    """``"sha256:<hex>"`` of a checkpoint dict's contents, its own ``"checksum"`` entry left out."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != _CHECKSUM})
    return "sha256:" + h.hexdigest()


def atomic_save(obj: Any, path: "str | os.PathLike") -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a half-written file.

    A dict with our header gets its :func:`checksum`, which :func:`safe_load` verifies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = {**obj, _CHECKSUM: checksum(obj)}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _read(path: Path, map_location) -> Any:
    if path.is_dir():
        raise FileNotFoundError(f"no checkpoint file at {path}: that is a directory")
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    with open(path, "rb") as f:  # PermissionError (names the path) passes through: the file is fine
        try:
            return torch.load(f, map_location=map_location, weights_only=True)
        except Exception as err:  # torch raises several types for damaged files
            raise CheckpointError(
                f"{path} is not a readable checkpoint (corrupt, truncated, or not a safe torch file): {err}"
            ) from err


def safe_load(path: "str | os.PathLike", kind: str, map_location="cpu") -> dict:
    """Load a file written by :func:`atomic_save` with a ``{"format", "kind", "version"}`` header.

    Only tensors and plain containers are unpickled (``weights_only=True``); the checksum, when
    the file has one, must match its contents.

    Raises:
        FileNotFoundError: no file at ``path`` (nothing, or a directory).
        PermissionError: the file exists but cannot be read.
        CheckpointError: unreadable (corrupt/truncated), not ours, another kind of file, a newer
            format version, or contents that differ from those written (checksum mismatch).
    """
    path = Path(path)
    obj = _read(path, map_location)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path} was not written by torchcfm_local (found {keys}); expected a {kind} file")
    if obj.get("kind") != kind:
        raise CheckpointError(f"{path} holds a torchcfm_local {obj.get('kind')!r} file, expected {kind!r}")
    version = obj.get("version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format version {version!r}; this torchcfm_local reads versions <= {FORMAT_VERSION}. "
            "Upgrade torchcfm-local to read it."
        )
    saved = obj.get(_CHECKSUM)
    if saved is None and any(isinstance(v, str) and v.startswith("sha256:") for v in obj.values()):
        raise CheckpointError(f"{path} is damaged: the name of its checksum entry changed")
    if saved is not None and saved != checksum(obj):
        raise CheckpointError(
            f"{path} is damaged: its contents do not match the checksum written with it (a changed byte "
            "in the file); use another copy"
        )
    return obj


def header(kind: str) -> dict:
    from . import __version__

    return {"format": FORMAT, "kind": kind, "version": FORMAT_VERSION, "library_version": __version__}
