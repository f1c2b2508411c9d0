"""Hostile files: every reader of torchcfm_local against damaged, foreign and misplaced files.

A :class:`Reader` (the list is :data:`hostile_readers.READERS`) writes its pristine files into a
directory and reads them back with the package's loader; a corruption (:data:`CORRUPTIONS`)
damages the reader's *target* file; :func:`run_case` applies one corruption to one reader in a
fresh directory and returns an :class:`Outcome`: what the loader did and whether that is allowed.

Allowed: raising one of the reader's documented exception types with a message that names the
target file, or loading exactly what the pristine file holds (a flip in bytes the format ignores).
Loading *other* contents is allowed only where the format has no integrity check and the damage
lies in its data (the reader's ``payload`` byte ranges, or ``truncation_ok``): such a change is
undetectable without a checksum the file does not have. In every case the loader must leave the
directory as it was (sizes, modification times and SHA-256 of every file, and the set of entries).

Used by tests/test_hostile_files.py and benchmarks/reliability_table.py.
"""
from __future__ import annotations

import hashlib
import os
import random
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch

CORRUPTIONS = (
    "empty", "truncate-0", "truncate-1", "truncate-2", "flip-0", "flip-1", "flip-2", "flip-3",
    "other-format", "directory", "no-read-permission",
)
"""Corruption ids: truncations and single-bit flips at offsets drawn from ``random.Random(f"{reader}/{id}")``."""

Spans = list  # [(start, stop), ...] byte ranges of a file


@dataclass(frozen=True)
class Reader:
    """One file the package reads, how to make it, and how the package reads it.

    ``write(root)`` writes the pristine files under ``root``; ``read(root)`` calls the loader and
    returns what it loaded; ``summary(result)`` turns that into plain data to compare with the
    pristine read; ``raises``: the loader's documented exception types; ``other``: the name of
    another reader whose target file is put in place of this one's; ``payload(path)``: byte ranges
    of the pristine file whose flip the format cannot notice (no checksum); ``truncation_ok(data)``:
    whether a file cut to ``data`` is still a valid file of this format; ``not_applicable``:
    corruption id -> why it does not apply.
    """

    name: str
    target: str
    write: Callable[[Path], None]
    read: Callable[[Path], Any]
    summary: Callable[[Any], Any]
    raises: tuple
    other: str
    loader: str
    payload: Callable[[Path], Spans] = lambda path: []
    payload_doc: str = ""
    truncation_ok: Callable[[bytes], bool] = lambda data: False
    not_applicable: dict = field(default_factory=dict)


@dataclass
class Outcome:
    reader: str
    corruption: str
    detail: str = ""       # where the damage is (offset, bit)
    result: str = ""       # "raised CheckpointError", "loaded, identical", "loaded (payload flip, undetected)", ...
    ok: bool = True
    problem: str = ""      # why the outcome is not allowed
    message: str = ""      # the exception's message, shortened
    skipped: str = ""      # why the case was not run


# ---------------------------------------------------------------------------------- pristine files
_PRISTINE: dict[str, dict[str, bytes]] = {}
_SUMMARY: dict[str, bytes] = {}


def pristine(reader: Reader, scratch: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of the reader's pristine files (made once per process)."""
    if reader.name not in _PRISTINE:
        root = scratch / ("pristine-" + "".join(c if c.isalnum() else "_" for c in reader.name))
        root.mkdir(parents=True)
        reader.write(root)
        _PRISTINE[reader.name] = {p.relative_to(root).as_posix(): p.read_bytes()
                                  for p in sorted(root.rglob("*")) if p.is_file()}
        try:
            _SUMMARY[reader.name] = digest(reader.summary(reader.read(root)))
        except Exception as err:  # a reader that refuses even the pristine file (the untrusted GAS pickle)
            _SUMMARY[reader.name] = digest(f"raised {type(err).__name__}")
    return _PRISTINE[reader.name]


def materialize(files: dict[str, bytes], root: Path) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def digest(obj: Any) -> bytes:
    """A hash of plain data, tensors and arrays (what a loader returned, summarized)."""
    h = hashlib.sha256()

    def feed(x):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().contiguous().numpy()
        if isinstance(x, np.ndarray):
            h.update(f"A{x.dtype}{x.shape}".encode() + np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}".encode())
            for k, v in x.items():
                feed(k)
                feed(v)
        elif isinstance(x, (list, tuple)):
            h.update(f"L{len(x)}".encode())
            for v in x:
                feed(v)
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(obj)
    return h.digest()


# ---------------------------------------------------------------------------------- snapshots
def snapshot(root: Path) -> dict:
    """Every entry below ``root``: directories by name, files by size, mtime and SHA-256."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.stat(path)
            try:
                with open(path, "rb") as f:
                    sha = hashlib.sha256(f.read()).hexdigest()
            except PermissionError:
                sha = "unreadable"
            out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, sha)
    return out


def _changes(before: dict, after: dict) -> str:
    diff = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    return "" if not diff else "the loader changed the directory: " + ", ".join(
        f"{k} ({'added' if k not in before else 'removed' if k not in after else 'modified'})" for k in diff[:6])


# ---------------------------------------------------------------------------------- corruptions
def corrupt(reader: Reader, corruption: str, root: Path, scratch: Path) -> tuple[str, Optional[int]]:
    """Damage the target file in ``root``; return ``(detail, offset of the flip or the cut, or None)``."""
    path = root / reader.target
    data = path.read_bytes()
    rng = random.Random(f"{reader.name}/{corruption}")
    if corruption == "empty":
        path.write_bytes(b"")
        return f"0 of {len(data)} bytes", None
    if corruption.startswith("truncate"):
        cut = rng.randrange(1, len(data))
        path.write_bytes(data[:cut])
        return f"cut at byte {cut} of {len(data)}", cut
    if corruption.startswith("flip"):
        offset, bit = rng.randrange(len(data)), rng.randrange(8)
        damaged = bytearray(data)
        damaged[offset] ^= 1 << bit
        path.write_bytes(bytes(damaged))
        return f"bit {bit} of byte {offset} of {len(data)}", offset
    if corruption == "other-format":
        from hostile_readers import by_name

        other = by_name(reader.other)
        path.write_bytes(pristine(other, scratch)[other.target])
        return f"the {other.name} file", None
    if corruption == "directory":
        path.unlink()
        path.mkdir()
        return "an empty directory", None
    if corruption == "no-read-permission":
        path.chmod(0)
        return "mode 000", None
    raise ValueError(f"unknown corruption {corruption!r}")


# ---------------------------------------------------------------------------------- one case
def run_case(reader: Reader, corruption: str, workdir: Path, scratch: Path) -> Outcome:
    """Corrupt ``reader``'s target in ``workdir`` (a new, empty directory) and read it."""
    out = Outcome(reader.name, corruption)
    if corruption in reader.not_applicable:
        out.skipped = out.result = f"not applicable: {reader.not_applicable[corruption]}"
        return out
    if corruption == "no-read-permission" and os.geteuid() == 0:
        out.skipped = out.result = "skipped: running as root, which reads files without read permission"
        return out
    files = pristine(reader, scratch)
    materialize(files, workdir)
    out.detail, where = corrupt(reader, corruption, workdir, scratch)
    target = workdir / reader.target
    before = snapshot(workdir)
    try:
        try:
            result = reader.read(workdir)
        except Exception as err:  # what we judge: any exception a loader lets out
            _judge_error(out, reader, err, target)
        else:
            _judge_loaded(out, reader, result, corruption, where, files[reader.target], workdir)
        changed = _changes(before, snapshot(workdir))
    finally:
        if target.exists() and not target.is_dir():
            target.chmod(stat.S_IRUSR | stat.S_IWUSR)
    if changed:
        out.ok, out.problem = False, "; ".join(p for p in (out.problem, changed) if p)
    return out


def _judge_error(out: Outcome, reader: Reader, err: Exception, target: Path) -> None:
    out.result = f"raised {type(err).__name__}"
    out.message = " ".join(str(err).split())[:400]
    if not isinstance(err, reader.raises):
        out.ok = False
        out.problem = f"{type(err).__name__} is not a documented error of {reader.loader} " \
                      f"({', '.join(t.__name__ for t in reader.raises)})"
    elif str(target) not in str(err):
        out.ok = False
        out.problem = f"the message does not name {target}"


def _judge_loaded(out: Outcome, reader: Reader, result: Any, corruption: str, where: Optional[int],
                  original: bytes, workdir: Path) -> None:
    if digest(reader.summary(result)) == _SUMMARY[reader.name]:
        out.result = "loaded, identical (damage in bytes the format ignores)"
        return
    if corruption.startswith("flip"):
        probe = workdir.parent / (workdir.name + "-pristine")
        probe.mkdir(exist_ok=True)
        (probe / "file").write_bytes(original)
        if any(a <= where < b for a, b in reader.payload(probe / "file")):
            out.result = "loaded (payload flip, undetected)"
            return
    if corruption.startswith("truncate"):
        if reader.truncation_ok(original[:where]):
            out.result = "loaded (truncated at a record boundary, undetected)"
            return
    out.result = "loaded other contents"
    out.ok = False
    out.problem = "loaded contents that differ from the file written, with no error"


# ---------------------------------------------------------------------------------- payload spans
def npy_payload(path: Path) -> Spans:
    """The array data of an ``.npy`` file (after its header): no checksum covers it."""
    start = np.lib.format.open_memmap(path, mode="r").offset
    return [(start, path.stat().st_size)]


def pickle_payload(path: Path) -> Spans:
    """The values of a pickle (pickles carry no checksum): the argument bytes of its number and
    string opcodes, and its booleans (NEWTRUE / NEWFALSE: the opcode is the value; a flip between
    them turns e.g. a numpy array's C order into Fortran order)."""
    import pickletools

    data = path.read_bytes()
    ops = list(pickletools.genops(data))
    spans = []
    for (op, _, pos), (_, _, nxt) in zip(ops, ops[1:] + [(None, None, len(data))]):
        size = {"SHORT_BINBYTES": 1, "BINBYTES": 4, "BINBYTES8": 8, "BINFLOAT": 0, "BININT": 0,
                "BININT1": 0, "BININT2": 0, "LONG1": 1, "SHORT_BINUNICODE": 1, "BINUNICODE": 4}.get(op.name)
        if size is not None and nxt is not None:
            spans.append((pos + 1 + size, nxt))
        elif op.name in ("NEWTRUE", "NEWFALSE"):
            spans.append((pos, pos + 1))
    return spans


def json_value_payload(path: Path) -> Spans:
    """Inside JSON number and string *values* (not keys): a flip there can leave valid JSON."""
    import re

    text = path.read_bytes().decode()
    spans = []
    for m in re.finditer(r'"(?:[^"\\]|\\.)*"(\s*:)?|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?', text):
        if m.group(0).startswith('"'):
            if m.group(1) is None:  # a value, not a key
                spans.append((m.start() + 1, m.start() + len(m.group(0)) - 1))
        else:
            spans.append(m.span())
    return spans
