"""LeRobot v3 dataset directories (the layout is described in :mod:`.formats`).

Columns become observation keys by dropping one leading ``observation.``: ``observation.state`` ->
``"state"``, ``observation.environment_state`` -> ``"environment_state"``; a column without the
prefix keeps its name. :func:`save_lerobot` does the reverse (obs key ``k`` -> ``observation.k``).
pyarrow is imported only here, when a LeRobot dataset is read or written.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .demos import Demos
from .formats import INSTALL, make_demos, numeric, reading

__all__ = ["load_lerobot", "save_lerobot", "obs_key_of_column"]

PREFIX = "observation."
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
_IMAGE_DTYPES = ("image", "video")


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.compute  # noqa: F401  (pa.compute)
        import pyarrow.parquet as pq
    except ImportError as err:
        raise ImportError(f"LeRobot datasets are read and written with pyarrow, which is not installed: {INSTALL}") \
            from err
    return pa, pq


def obs_key_of_column(column: str) -> str:
    """The observation key of a LeRobot column: ``observation.state`` -> ``state``."""
    return column[len(PREFIX):] if column.startswith(PREFIX) and len(column) > len(PREFIX) else column


# ---------------------------------------------------------------------------------- reading
def load_lerobot(root: "str | os.PathLike", state_keys: Sequence[str] = ("observation.state",),
                 action_key: str = "action") -> Demos:
    """The episodes of a LeRobot v3 dataset directory.

    Reads ``meta/info.json`` and every parquet file under ``data/`` (in sorted order), sorts the
    rows by ``(episode_index, frame_index)`` and makes one episode per ``episode_index``.

    Args:
        root: the dataset directory (the one holding ``meta/`` and ``data/``).
        state_keys: the columns that become observations (see :func:`obs_key_of_column` for their
            keys); a name that is not a column but is one after ``observation.`` (``"state"``) is
            accepted too.
        action_key: the column of the actions.

    Returns:
        ``Demos`` with ``meta = {"source": "lerobot", "codebase_version", "fps", "obs_columns"}``.

    Raises:
        FileNotFoundError, PermissionError: no directory, no ``meta/info.json``, unreadable files.
        ValueError: a codebase_version other than v3.x, damaged or foreign files, no parquet files,
            missing columns, image or video features, non-numeric, ragged or null values, NaN/Inf,
            missing or repeated frames, totals of ``info.json`` that disagree with the data, no
            frames; the message names the file (or the directory).
        ImportError: pyarrow is not installed.
    """
    pa, pq = _pyarrow()
    root = Path(root)
    info_path = root / "meta" / "info.json"
    info = _read_info(root, info_path)
    files = _data_files(root, info)
    with reading(files[0], "LeRobot parquet file", (pa.ArrowException,)):
        with open(files[0], "rb") as fh:
            names = pq.ParquetFile(fh, page_checksum_verification=True).schema_arrow.names
    obs_columns = _resolve(files[0], info_path, info, names, state_keys, action_key)
    wanted = [*obs_columns.values(), action_key, "episode_index", "frame_index"]
    parts = []
    for path in files:
        with reading(path, "LeRobot parquet file", (pa.ArrowException,)):
            parts.append(_read_file(pa, pq, path, wanted))
    columns = {c: _concatenate(parts, files, c) for c in wanted}
    source = np.concatenate([np.full(len(p["episode_index"]), i) for i, p in enumerate(parts)])
    order, lengths = _episodes(columns["episode_index"], columns["frame_index"], source, files)
    _check_totals(info, info_path, files, len(order), len(lengths))
    obs = {key: columns[col][order] for key, col in obs_columns.items()}
    meta = {"source": "lerobot", "codebase_version": info["codebase_version"], "fps": info["fps"],
            "obs_columns": dict(obs_columns)}
    return make_demos(root, obs, columns[action_key][order], lengths, meta)


def _read_info(root: Path, info_path: Path) -> dict:
    if not root.is_dir():
        raise FileNotFoundError(f"no LeRobot dataset directory at {root}")
    if not info_path.is_file():
        raise FileNotFoundError(f"{root} is not a LeRobot dataset: no file {info_path}")
    with reading(info_path, "LeRobot meta/info.json"):
        info = json.loads(info_path.read_text(encoding="utf-8"))
    if not isinstance(info, dict):
        raise ValueError(f"{info_path} is not a JSON object")
    version = info.get("codebase_version")
    if not isinstance(version, str) or not version.startswith("v3"):
        raise ValueError(f"{info_path} has codebase_version {version!r}: only LeRobot v3 datasets (v3.x) are read; "
                         f"convert older ones with LeRobot's conversion script to v3.0")
    fps = info.get("fps")
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not fps > 0:
        raise ValueError(f"{info_path}: 'fps' must be a positive number, got {fps!r}")
    for key in ("total_frames", "total_episodes"):
        value = info.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise ValueError(f"{info_path}: {key!r} must be a count, got {value!r}")
    if not isinstance(info.get("features", {}), dict):
        raise ValueError(f"{info_path}: 'features' must be a JSON object")
    return info


def _data_files(root: Path, info: dict) -> list:
    data = root / "data"
    entries = sorted(data.rglob("*.parquet")) if data.is_dir() else []
    for path in entries:
        if not path.is_file():
            raise ValueError(f"{path} is not a file (a LeRobot data file was expected there)")
    if not entries:
        raise ValueError(f"{root}: no parquet files under {data} (a LeRobot v3 dataset keeps its frames in "
                         f"{info.get('data_path', DATA_PATH)})")
    return entries


def _resolve(first: Path, info_path: Path, info: dict, names: list, state_keys: Sequence[str],
             action_key: str) -> dict:
    """``{obs key: column}`` for ``state_keys``, after checking that the columns exist in the first
    data file (whose column ``names`` are given) and are not images."""
    if isinstance(state_keys, str):
        state_keys = (state_keys,)
    if not state_keys:
        raise ValueError(f"{info_path.parent.parent}: give at least one state column (state_keys is empty)")
    features = info.get("features", {})
    columns = {}
    for key in [*state_keys, action_key]:
        column = key if key in names or key == action_key or PREFIX + key not in names else PREFIX + key
        feature = features.get(column)
        if isinstance(feature, dict) and feature.get("dtype") in _IMAGE_DTYPES:
            raise ValueError(f"{info_path}: {column!r} is a {feature['dtype']} feature; image observations are not "
                             f"supported by the MLP/UNet1D policies (use state columns)")
        if column not in names:
            raise ValueError(f"{first} has no column {column!r}; its columns: {names} (choose the "
                             f"observations with state_keys, or --obs-keys on the command line)")
        if key != action_key:
            columns[obs_key_of_column(column)] = column
    if len(columns) != len(state_keys):
        raise ValueError(f"{info_path.parent.parent}: state_keys {list(state_keys)} give repeated observation keys")
    for column in ("episode_index", "frame_index"):
        if column not in names:
            raise ValueError(f"{first} has no column {column!r}; its columns: {names}")
    return columns


def _read_file(pa, pq, path: Path, wanted: list) -> dict:
    with open(path, "rb") as fh:
        parquet = pq.ParquetFile(fh, page_checksum_verification=True)
        names = parquet.schema_arrow.names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise ValueError(f"{path} lacks the columns {missing}; it has {names}")
        table = parquet.read(columns=wanted)
    out = {c: _column(pa, table.column(c), f"{path}: column {c!r}") for c in wanted}
    for c in ("episode_index", "frame_index"):
        if out[c].shape[1] != 1 or out[c].dtype.kind not in "iu":
            raise ValueError(f"{path}: column {c!r} must hold one integer per row, got {out[c].dtype} "
                             f"x {out[c].shape[1]}")
        out[c] = out[c][:, 0].astype(np.int64)
    for c in wanted[:-2]:
        out[c] = numeric(out[c], f"{path}: column {c!r}")
    return out


def _column(pa, column, where: str) -> np.ndarray:
    """A column as ``(rows, D)``: lists (of lists ...) of numbers, all of one length, flattened."""
    array = column.combine_chunks()
    rows, width = len(array), 1
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or \
            pa.types.is_fixed_size_list(array.type):
        if array.null_count:
            raise ValueError(f"{where} has missing (null) values")
        if pa.types.is_fixed_size_list(array.type):
            size = array.type.list_size
        else:
            lengths = pa.compute.list_value_length(array).to_numpy(zero_copy_only=False)
            size = int(lengths[0]) if len(lengths) else 0
            if len(lengths) and (lengths != size).any():
                raise ValueError(f"{where} is ragged: its rows hold {lengths.min()} to {lengths.max()} values")
        width *= size
        array = array.flatten()
    if array.null_count:
        raise ValueError(f"{where} has missing (null) values")
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type) or pa.types.is_boolean(array.type)):
        raise ValueError(f"{where} holds {array.type} values, expected numbers (or lists of numbers)")
    return array.to_numpy(zero_copy_only=False).reshape(rows, width)


def _concatenate(parts: list, files: list, column: str) -> np.ndarray:
    widths = {p[column].shape[1:] for p in parts if len(p[column])}
    if len(widths) > 1:
        raise ValueError(f"column {column!r} has different widths {sorted(widths)} in {[str(f) for f in files]}")
    return np.concatenate([p[column] for p in parts])


def _episodes(episode: np.ndarray, frame: np.ndarray, source: np.ndarray, files: list) -> tuple:
    """The row order (by episode, then frame) and the episode lengths; frames must be 0, 1, ..."""
    order = np.lexsort((frame, episode))
    episode, frame = episode[order], frame[order]
    if len(order) == 0:
        raise ValueError(f"the data files {[str(f) for f in files]} hold no frames (0 rows)")
    starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
    lengths = np.diff(np.r_[starts, len(episode)])
    bad = np.flatnonzero(frame != np.arange(len(frame)) - np.repeat(starts, lengths))
    if bad.size:
        row = bad[0]
        raise ValueError(f"{files[source[order[row]]]}: episode {episode[row]} has frame_index {frame[row]} where "
                         f"{row - starts[np.searchsorted(starts, row, 'right') - 1]} was expected (frames must be "
                         f"0, 1, 2, ... in every episode: missing or repeated frames)")
    return order, lengths


def _check_totals(info: dict, info_path: Path, files: list, frames: int, episodes: int) -> None:
    for key, found in (("total_frames", frames), ("total_episodes", episodes)):
        expected = info.get(key)
        if expected is not None and expected != found:
            shown = [str(f) for f in files[:5]] + (["..."] if len(files) > 5 else [])
            raise ValueError(f"{info_path} says {key}={expected} but the data files {shown} hold {found} "
                             f"(missing or extra parquet files?)")


# ---------------------------------------------------------------------------------- writing
def save_lerobot(root: "str | os.PathLike", demos: Demos, fps: float = 10, task: Optional[str] = None) -> Path:
    """Write ``demos`` as a LeRobot v3 dataset directory (one chunk, one data file).

    Writes ``meta/info.json``, ``data/chunk-000/file-000.parquet`` (obs key ``k`` -> column
    ``observation.k``, fixed-size lists of float32; ``action``; ``timestamp = frame_index / fps``;
    ``frame_index``, ``episode_index``, ``index``, ``task_index`` = 0), ``meta/tasks.parquet``,
    ``meta/episodes/chunk-000/file-000.parquet`` and ``meta/stats.json`` (min, max, mean, std,
    count of the observation and action features). Parquet pages carry CRC checksums. The
    directory is built aside and moved into place; ``root`` must not exist or be empty.
    ``task`` defaults to ``demos.meta["task"]``.
    """
    pa, pq = _pyarrow()
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not an empty directory; choose a new output directory")
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps!r}")
    fps = int(fps) if float(fps).is_integer() else float(fps)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:12]}"  # mkdir honours the umask, mkdtemp does not
    tmp.mkdir()
    try:
        _write_dataset(pa, pq, tmp, demos, fps, str(task if task is not None else demos.meta.get("task", "unknown")))
        if root.exists():
            root.rmdir()
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def _write_dataset(pa, pq, root: Path, demos: Demos, fps: float, task: str) -> None:
    T, E = demos.action.shape[0], demos.n_episodes
    starts = np.concatenate([[0], demos.episode_ends[:-1]])
    lengths = demos.episode_ends - starts
    episode = np.repeat(np.arange(E), lengths)
    frame = np.arange(T) - np.repeat(starts, lengths)
    vectors = {PREFIX + k: v for k, v in demos.obs.items()}
    vectors["action"] = demos.action
    columns = {name: pa.FixedSizeListArray.from_arrays(pa.array(v.ravel(), pa.float32()), v.shape[1])
               for name, v in vectors.items()}
    columns.update(timestamp=pa.array((frame / fps).astype(np.float32)), frame_index=pa.array(frame),
                   episode_index=pa.array(episode), index=pa.array(np.arange(T)),
                   task_index=pa.array(np.zeros(T, np.int64)))
    _write_parquet(pq, pa.table(columns), root / DATA_PATH.format(chunk_index=0, file_index=0))
    episodes = {"episode_index": pa.array(np.arange(E)), "tasks": pa.array([[task]] * E),
                "length": pa.array(lengths), "data/chunk_index": pa.array(np.zeros(E, np.int64)),
                "data/file_index": pa.array(np.zeros(E, np.int64)), "dataset_from_index": pa.array(starts),
                "dataset_to_index": pa.array(demos.episode_ends),
                "meta/episodes/chunk_index": pa.array(np.zeros(E, np.int64)),
                "meta/episodes/file_index": pa.array(np.zeros(E, np.int64))}
    _write_parquet(pq, pa.table(episodes), root / EPISODES_PATH.format(chunk_index=0, file_index=0))
    _write_tasks(pa, pq, root / "meta/tasks.parquet", task)
    features = {name: {"dtype": "float32", "shape": [int(v.shape[1])], "names": None} for name, v in vectors.items()}
    features.update({name: {"dtype": dtype, "shape": [1], "names": None} for name, dtype in (
        ("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
        ("task_index", "int64"))})
    info = {"codebase_version": "v3.0", "robot_type": None, "total_episodes": int(E), "total_frames": int(T),
            "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 200,
            "fps": fps, "splits": {"train": f"0:{E}"}, "data_path": DATA_PATH, "video_path": None,
            "features": features}
    stats = {name: {"min": v.min(0).tolist(), "max": v.max(0).tolist(), "mean": v.mean(0).tolist(),
                    "std": v.std(0).tolist(), "count": [int(T)]} for name, v in vectors.items()}
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    (root / "meta" / "stats.json").write_text(json.dumps(stats, indent=4))


def _write_tasks(pa, pq, path: Path, task: str) -> None:
    """``meta/tasks.parquet``: LeRobot keeps the task strings as the pandas index of a ``task_index``
    table; without pandas the strings are a plain ``task`` column."""
    try:
        import pandas as pd
    except ImportError:
        table = pa.table({"task_index": pa.array([0]), "task": pa.array([task])})
    else:
        table = pa.Table.from_pandas(pd.DataFrame({"task_index": [0]}, index=pd.Index([task], name="task")))
    _write_parquet(pq, table, path)


def _write_parquet(pq, table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, write_page_checksum=True)
