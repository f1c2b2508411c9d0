"""Demonstrations in other projects' formats: Robomimic HDF5 files and LeRobot v3 directories.

The readers return :class:`~.demos.Demos` (episodes concatenated along time, one ``(T, D)`` float32
array per observation key, ``(T, Da)`` actions, exclusive ``episode_ends``); the writers export
``Demos`` so that scripted demos can be used by those projects' tools (and the readers tested).

**Robomimic** keeps a whole dataset in one HDF5 file. A group ``data`` carries two attributes,
``total`` (the number of steps of all demonstrations) and ``env_args`` (a JSON description of the
environment). Every demonstration is a subgroup ``data/demo_<i>``: its attribute ``num_samples``
is its length ``T_i``; it holds ``actions`` ``(T_i, Da)``, ``dones`` and ``rewards`` ``(T_i,)``,
optionally the simulator ``states``, and one dataset per observation under ``obs/`` (``(T_i, D)``
for vectors, ``(T_i, H, W, C)`` for camera images). Splits such as ``train`` / ``valid`` are
datasets ``mask/<name>`` listing demonstration names as byte strings. :func:`load_robomimic` reads
the demonstrations in the order of their number, keeps the low-dimensional observations (a vector
or a single number per step; images are refused, the MLP and UNet1D policies cannot use them) and
ignores ``dones``, ``rewards`` and ``states``. Our own metadata travel in the attribute
``data.attrs["torchcfm_local_meta"]`` (JSON), which other tools ignore.

**LeRobot** (format v3) keeps a dataset in a directory: ``meta/info.json`` describes it (the
``codebase_version``, ``fps``, the ``features`` with their dtype and shape, the totals of episodes
and frames, the template of the data file names) and the frames are the rows of parquet files
``data/chunk-<c>/file-<f>.parquet``, many episodes to a file, one column per feature (a vector per
row for ``observation.state`` and ``action``) plus the bookkeeping columns ``episode_index``,
``frame_index`` (the step within the episode), ``index`` (the step in the dataset), ``timestamp``
and ``task_index``. Per-episode metadata, task strings and statistics live in ``meta/episodes/``,
``meta/tasks.parquet`` and ``meta/stats.json``; the reader needs only ``info.json`` and ``data/``
(see :mod:`.formats_lerobot`).

:func:`load_any_demos` picks the reader from the path: ``.npz`` (our format, :func:`~.demos.load_demos`),
``.hdf5`` / ``.h5`` (Robomimic), or a directory with ``meta/info.json`` (LeRobot).
"""
from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np

from .demos import Demos, load_demos

__all__ = ["load_robomimic", "save_robomimic", "load_any_demos", "FORMATS"]  # and, lazily, load_lerobot, save_lerobot

FORMATS = ("npz (torchcfm_local demos)", "hdf5/h5 (Robomimic)", "directory with meta/info.json (LeRobot v3)")
INSTALL = 'pip install "torchcfm-local[formats]"'
META_ATTR = "torchcfm_local_meta"
_DEMO = re.compile(r"demo_(\d+)")
_DAMAGE = (OSError, KeyError, IndexError, TypeError, RuntimeError, EOFError, AttributeError, OverflowError)
"""What h5py and pyarrow raise for damaged or foreign files (besides ValueError): OSError for bad
signatures, checksums and truncation, KeyError / RuntimeError for broken metadata, ..."""


# ---------------------------------------------------------------------------------- shared helpers
@contextmanager
def reading(path: Path, what: str, extra: tuple = ()) -> Iterator[None]:
    """Errors raised while reading ``path`` become a ValueError that names it (FileNotFoundError and
    PermissionError pass unchanged; so does a ValueError whose message already names the path)."""
    try:
        yield
    except (FileNotFoundError, PermissionError):
        raise
    except ValueError as err:
        if str(path) in str(err):
            raise
        raise ValueError(f"{path} is not a readable {what}: {err}") from err
    except _DAMAGE + tuple(extra) as err:
        raise ValueError(f"{path} is not a readable {what} ({type(err).__name__}: {err})") from err


def existing_file(path: "str | os.PathLike", what: str) -> Path:
    """``path`` as a Path, after checking that it is a file we may read (PermissionError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no {what} at {path}" + (" (it is a directory)" if path.is_dir() else ""))
    with open(path, "rb"):  # a clear PermissionError naming the file, before a library's own message
        pass
    return path


def numeric(array: np.ndarray, where: str) -> np.ndarray:
    """``array`` (float32) after checking that it holds finite numbers; ``where`` names it in errors."""
    array = np.asarray(array)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{where} holds {array.dtype} values, expected numbers")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{where} contains NaN or Inf")
    return array


def make_demos(path: Path, obs: dict, action: np.ndarray, lengths: Sequence[int], meta: dict) -> Demos:
    """A :class:`Demos`, whose construction errors name ``path``."""
    if len(lengths) == 0 or sum(lengths) == 0:
        raise ValueError(f"{path} holds no demonstrations (0 episodes with steps)")
    try:
        return Demos(obs, action, np.cumsum(lengths), meta)
    except ValueError as err:
        raise ValueError(f"{path} does not hold valid demos: {err}") from err


def _h5py():
    try:
        import h5py
    except ImportError as err:
        raise ImportError(f"Robomimic files are read and written with h5py, which is not installed: {INSTALL}") from err
    return h5py


# ---------------------------------------------------------------------------------- Robomimic
def load_robomimic(path: "str | os.PathLike", obs_keys: Optional[Sequence[str]] = None,
                   filter_key: Optional[str] = None) -> Demos:
    """The demonstrations of a Robomimic HDF5 file.

    Args:
        path: the ``.hdf5`` file.
        obs_keys: the observations to read, in this order (default: every low-dimensional one of
            the first demonstration, i.e. ``(T,)`` or ``(T, D)`` arrays, in the file's order).
            ``(T, ...)`` arrays become ``(T, D)``; image observations are refused.
        filter_key: read only the demonstrations listed in ``mask/<filter_key>`` (e.g. ``"train"``).

    Returns:
        ``Demos`` with one episode per demonstration, in the order of their number. ``meta`` is what
        :func:`save_robomimic` stored, or ``{"source": "robomimic", "env_args": ...}`` for other files
        (plus ``"filter_key"`` when one is given).

    Raises:
        FileNotFoundError, PermissionError: no file, or an unreadable one.
        ValueError: a damaged or foreign file, no ``data`` group, a demonstration without ``actions``,
            missing or image observation keys, lengths that disagree (``num_samples``, observations vs
            actions), NaN/Inf, no demonstrations; the message names ``path``.
        ImportError: h5py is not installed.
    """
    path = existing_file(path, "Robomimic .hdf5 file")
    h5py = _h5py()
    obs_keys = [obs_keys] if isinstance(obs_keys, str) else obs_keys
    with reading(path, "Robomimic HDF5 file"):
        with h5py.File(path, "r") as f:
            names = _demo_names(f, path, filter_key)
            data = f["data"]
            keys = _obs_keys(_group(data, names[0], path, "data/"), path, names[0], obs_keys)
            obs, actions, lengths = {k: [] for k in keys}, [], []
            for name in names:
                demo_obs, demo_actions = _read_demo(_group(data, name, path, "data/"), path, name, keys)
                for k in keys:
                    obs[k].append(demo_obs[k])
                actions.append(demo_actions)
                lengths.append(len(demo_actions))
            meta = _robomimic_meta(data.attrs, path)
        _same_widths(path, names, {**obs, "actions": actions})
        obs = {k: np.concatenate(v) for k, v in obs.items()}
        if filter_key is not None:
            meta["filter_key"] = filter_key
        return make_demos(path, obs, np.concatenate(actions), lengths, meta)


def _group(parent, name: str, path: Path, prefix: str):
    item = parent.get(name)
    if item is None or not hasattr(item, "keys"):
        raise ValueError(f"{path}: {prefix}{name} is not a group")
    return item


def _demo_names(f, path: Path, filter_key: Optional[str]) -> list:
    if "data" not in f or not hasattr(f["data"], "keys"):
        raise ValueError(f"{path} has no 'data' group: a Robomimic file keeps its demonstrations in data/demo_<i> "
                         f"(top-level entries: {sorted(f)[:10]})")
    present = {k for k in f["data"] if _DEMO.fullmatch(k)}
    names = present
    if filter_key is not None:
        masks = f["mask"] if "mask" in f and hasattr(f["mask"], "keys") else {}
        if filter_key not in masks:
            raise ValueError(f"{path} has no filter mask/{filter_key}; its filters: {sorted(masks)}")
        listed = np.asarray(masks[filter_key][()]).ravel()
        names = {n.decode() if isinstance(n, bytes) else str(n) for n in listed}
        unknown = sorted(n for n in names if n not in present)
        if unknown:
            raise ValueError(f"{path}: mask/{filter_key} lists {unknown[:5]}, which are not demonstrations in data/")
    if not names:
        raise ValueError(f"{path} holds no demonstrations (no data/demo_<i> groups"
                         + (f" listed in mask/{filter_key})" if filter_key is not None else ")"))
    return sorted(names, key=lambda n: int(_DEMO.fullmatch(n).group(1)))


def _is_image(dataset) -> bool:
    return len(dataset.shape) > 2


def _obs_keys(demo, path: Path, name: str, obs_keys: Optional[Sequence[str]]) -> list:
    """The observation keys to read, checked against the first demonstration."""
    obs = _group(demo, "obs", path, f"data/{name}/")
    shapes = {k: tuple(obs[k].shape) for k in obs if hasattr(obs[k], "shape")}
    low_dim = [k for k, s in shapes.items() if 1 <= len(s) <= 2]
    hint = "image observations are not supported by the MLP/UNet1D policies; use low-dimensional keys"
    if obs_keys is None:
        if not low_dim:
            raise ValueError(f"{path}: data/{name}/obs has no low-dimensional observations ({hint}; its "
                             f"observations: {shapes})")
        return low_dim
    obs_keys = list(obs_keys)
    missing = [k for k in obs_keys if k not in shapes]
    if missing:
        raise ValueError(f"{path}: observation keys {missing} are not in data/{name}/obs; available: {sorted(shapes)}")
    images = {k: shapes[k] for k in obs_keys if len(shapes[k]) > 2}
    if images:
        raise ValueError(f"{path}: observations {images} are images; {hint} such as {low_dim}")
    if len(set(obs_keys)) != len(obs_keys):
        raise ValueError(f"{path}: observation keys {obs_keys} repeat a key")
    return obs_keys


def _read_demo(demo, path: Path, name: str, keys: list) -> tuple[dict, np.ndarray]:
    """One demonstration's observations ``{key: (T, D)}`` and actions ``(T, Da)``, checked."""
    where = f"{path}: data/{name}"
    if "actions" not in demo:
        raise ValueError(f"{where} has no 'actions' dataset (a Robomimic demonstration holds actions, dones, "
                         f"rewards and obs/<key>; it has {sorted(demo)})")
    actions = numeric(demo["actions"][()], f"{where}/actions")
    if actions.ndim != 2:
        raise ValueError(f"{where}/actions has shape {actions.shape}, expected (T, action_dim)")
    steps = len(actions)
    n = demo.attrs.get("num_samples")
    if n is not None and int(np.asarray(n).ravel()[0]) != steps:
        raise ValueError(f"{where} has num_samples={int(np.asarray(n).ravel()[0])} but {steps} actions")
    if steps == 0:
        raise ValueError(f"{where} is empty (0 steps)")
    obs_group = _group(demo, "obs", path, f"data/{name}/")
    obs = {}
    for key in keys:
        if key not in obs_group or not hasattr(obs_group[key], "shape"):
            raise ValueError(f"{where}/obs lacks {key!r} (the first demonstration has it); here: {sorted(obs_group)}")
        if _is_image(obs_group[key]):
            raise ValueError(f"{where}/obs/{key} has shape {obs_group[key].shape}: image observations are not "
                             f"supported by the MLP/UNet1D policies")
        value = numeric(obs_group[key][()], f"{where}/obs/{key}")
        if value.ndim == 0 or value.shape[0] != steps:
            raise ValueError(f"{where} is ragged: obs/{key} has shape {value.shape} but there are {steps} actions")
        obs[key] = value.reshape(steps, -1)
    return obs, actions


def _same_widths(path: Path, names: list, arrays: dict) -> None:
    for key, values in arrays.items():
        widths = [v.shape[1] for v in values]
        bad = [i for i, w in enumerate(widths) if w != widths[0]]
        if bad:
            raise ValueError(f"{path}: {key} has {widths[bad[0]]} numbers per step in data/{names[bad[0]]} but "
                             f"{widths[0]} in data/{names[0]}")


def _text(value) -> str:
    if isinstance(value, np.ndarray):
        value = value.ravel()[0] if value.size else b""
    return value.decode() if isinstance(value, (bytes, np.bytes_)) else str(value)


def _robomimic_meta(attrs, path: Path) -> dict:
    if META_ATTR in attrs:
        meta = json.loads(_text(attrs[META_ATTR]))
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: data.attrs[{META_ATTR!r}] is not a JSON object")
        return meta
    env_args = attrs.get("env_args")
    if env_args is not None:
        try:
            env_args = json.loads(_text(env_args))
        except ValueError:
            env_args = _text(env_args)
    return {"source": "robomimic", "env_args": env_args}


def save_robomimic(path: "str | os.PathLike", demos: Demos, env_args: Optional[dict] = None,
                   masks: Optional[dict] = None) -> Path:
    """Write ``demos`` as a Robomimic HDF5 file (one ``data/demo_<i>`` per episode), atomically.

    ``env_args``: the environment description Robomimic stores (default: the task name of
    ``demos.meta``, which Robomimic cannot instantiate). ``masks``: ``{filter: [episode indices]}``
    written as ``mask/<filter>``. ``dones`` and ``rewards`` are 1 at the last step of every episode
    and 0 elsewhere (our demos keep successful episodes). ``demos.meta`` is stored as JSON in the
    attribute ``data.attrs["torchcfm_local_meta"]``. Written with HDF5 1.10 object headers, whose
    metadata carry checksums (readable by h5py built on HDF5 >= 1.10).
    """
    h5py = _h5py()
    bad = [k for k in demos.obs if not k or "/" in k or k in (".", "..")]
    if bad:
        raise ValueError(f"observation keys {bad} cannot be HDF5 dataset names")
    masks = {name: [int(i) for i in idx] for name, idx in (masks or {}).items()}
    for name, idx in masks.items():
        if not name or "/" in name or any(not 0 <= i < demos.n_episodes for i in idx):
            raise ValueError(f"mask {name!r} must list episode indices in [0, {demos.n_episodes}), got {idx[:10]}")
    env_args = env_args if env_args is not None else {"env_name": str(demos.meta.get("task", "unknown")),
                                                      "env_kwargs": {}, "source": "torchcfm_local"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        _write_robomimic(h5py, tmp, demos, env_args, masks)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_robomimic(h5py, tmp: Path, demos: Demos, env_args: dict, masks: dict) -> None:
    with h5py.File(tmp, "w", libver=("v110", "latest")) as f:
        data = f.create_group("data")
        data.attrs["total"] = int(demos.action.shape[0])
        data.attrs["env_args"] = np.bytes_(json.dumps(env_args))  # fixed-length: kept in the checksummed header
        data.attrs[META_ATTR] = np.bytes_(json.dumps(demos.meta))
        for i, (start, stop) in enumerate(demos.episodes()):
            demo = data.create_group(f"demo_{i}")
            demo.attrs["num_samples"] = stop - start
            demo.create_dataset("actions", data=demos.action[start:stop])
            last = (np.arange(start, stop) == stop - 1)
            demo.create_dataset("dones", data=last.astype(np.int64))
            demo.create_dataset("rewards", data=last.astype(np.float64))
            obs = demo.create_group("obs", track_order=True)
            for key, value in demos.obs.items():
                obs.create_dataset(key, data=value[start:stop])
        if masks:
            group = f.create_group("mask")
            for name, idx in masks.items():
                group.create_dataset(name, data=np.array([f"demo_{i}" for i in idx], dtype="S"))


# ---------------------------------------------------------------------------------- any format
def load_any_demos(path: "str | os.PathLike", obs_keys: Optional[Sequence[str]] = None,
                   filter_key: Optional[str] = None, **kwargs) -> Demos:
    """Demos from any supported format, chosen from ``path``: ``.npz`` (ours), ``.hdf5`` / ``.h5``
    (Robomimic), a directory with ``meta/info.json`` (LeRobot v3).

    ``obs_keys`` selects observations: Robomimic observation names, LeRobot columns (``"pos"`` also
    finds ``"observation.pos"``), or keys of our ``.npz`` files. ``filter_key`` is a Robomimic mask.
    Other keywords go to the format's reader (e.g. ``action_key`` for LeRobot).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    obs_keys = [obs_keys] if isinstance(obs_keys, str) else obs_keys
    if path.is_dir() and (path / "meta" / "info.json").exists():
        _only_robomimic(filter_key, path)
        from .formats_lerobot import load_lerobot

        kwargs = {**kwargs, **({"state_keys": tuple(obs_keys)} if obs_keys is not None else {})}
        return load_lerobot(path, **kwargs)
    if suffix in (".hdf5", ".h5") and not path.is_dir():
        return load_robomimic(path, obs_keys=obs_keys, filter_key=filter_key, **kwargs)
    if suffix == ".npz" and not path.is_dir():
        _only_robomimic(filter_key, path)
        if kwargs:
            raise TypeError(f"load_demos takes no options {sorted(kwargs)}")
        return _select(load_demos(path), obs_keys, path)
    accepted = "; ".join(FORMATS)
    if not path.exists():
        raise FileNotFoundError(f"no demos at {path}; accepted formats: {accepted}")
    raise ValueError(f"{path} is not a demo format we read; accepted formats: {accepted}")


def _only_robomimic(filter_key: Optional[str], path: Path) -> None:
    if filter_key is not None:
        raise ValueError(f"filter_key={filter_key!r} selects a Robomimic mask; {path} is not a Robomimic file")


def _select(demos: Demos, obs_keys: Optional[Sequence[str]], path: Path) -> Demos:
    if obs_keys is None:
        return demos
    missing = [k for k in obs_keys if k not in demos.obs]
    if missing:
        raise ValueError(f"{path}: observation keys {missing} are not in the demos; available: {sorted(demos.obs)}")
    return Demos({k: demos.obs[k] for k in obs_keys}, demos.action, demos.episode_ends, demos.meta)


def __getattr__(name: str):
    """``load_lerobot`` and ``save_lerobot`` live in :mod:`.formats_lerobot`, which imports this module."""
    if name in ("load_lerobot", "save_lerobot"):
        from . import formats_lerobot

        return getattr(formats_lerobot, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
