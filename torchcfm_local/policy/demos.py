"""Demonstrations: the file format and the windows a policy trains on.

A demo file is an uncompressed ``.npz`` (read with ``allow_pickle=False``) holding

* ``format`` = ``"torchcfm_local.demos"`` and ``version`` = 1;
* ``obs_keys``: the observation names; ``obs.<key>``: ``(T, D_key)`` float arrays;
* ``action``: ``(T, Da)``; ``episode_ends``: ``(E,)`` exclusive end index of each episode in the
  concatenated time axis (Diffusion Policy's replay-buffer convention);
* ``meta``: a JSON string (task, expert success rate, seed, ...).

Training windows follow Diffusion Policy: at step ``k`` of an episode the policy sees observations
``k - To + 1 .. k`` and predicts actions ``k - To + 1 .. k - To + H``; indices outside the
episode repeat its first or last step. The executed actions are ``action_pred[:, To - 1 : To - 1 + Ta]``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

__all__ = ["Demos", "save_demos", "load_demos", "windows"]

FORMAT, VERSION = "torchcfm_local.demos", 1


@dataclass
class Demos:
    """Episodes concatenated along time. ``obs[key]``: ``(T, D_key)``; ``action``: ``(T, Da)``."""

    obs: dict[str, np.ndarray]
    action: np.ndarray
    episode_ends: np.ndarray
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.action = np.asarray(self.action, dtype=np.float32)
        self.episode_ends = np.asarray(self.episode_ends, dtype=np.int64)
        self.obs = {k: np.asarray(v, dtype=np.float32) for k, v in self.obs.items()}
        T = self.action.shape[0]
        if self.action.ndim != 2 or T == 0:
            raise ValueError(f"action must be (T, Da) with T >= 1, got shape {self.action.shape}")
        if not self.obs:
            raise ValueError("demos need at least one observation key")
        for key, value in self.obs.items():
            if value.ndim != 2 or value.shape[0] != T:
                raise ValueError(f"obs[{key!r}] must be (T={T}, D), got shape {value.shape}")
        ends = self.episode_ends
        if ends.ndim != 1 or len(ends) == 0 or ends[-1] != T or np.any(np.diff(np.concatenate([[0], ends])) <= 0):
            raise ValueError(f"episode_ends must be increasing exclusive ends finishing at T={T}, got {ends[:10]}")
        for name, value in [("action", self.action), *self.obs.items()]:
            if not np.isfinite(value).all():
                raise ValueError(f"demo {name} contains NaN or Inf")

    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def obs_dims(self) -> dict[str, int]:
        return {k: v.shape[1] for k, v in self.obs.items()}

    def episodes(self):
        """``(start, stop)`` of every episode."""
        starts = np.concatenate([[0], self.episode_ends[:-1]])
        return list(zip(starts.tolist(), self.episode_ends.tolist()))


def save_demos(path: "str | os.PathLike", demos: Demos) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"format": np.array(FORMAT), "version": np.array(VERSION), "obs_keys": np.array(list(demos.obs)),
              "action": demos.action, "episode_ends": demos.episode_ends, "meta": np.array(json.dumps(demos.meta))}
    arrays.update({f"obs.{k}": v for k, v in demos.obs.items()})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_demos(path: "str | os.PathLike") -> Demos:
    """Read a demo file; clear errors for missing, foreign or newer files.

    Raises:
        FileNotFoundError: no file at ``path`` (nothing, or a directory).
        PermissionError: the file cannot be read.
        ValueError: damaged (the zip's CRC, truncation), not a demo file, a newer version, or
            arrays that do not make demos; the message names ``path``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no demo file at {path}; generate one with `lfm-policy demos --task TASK --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as data:
            contents = {k: data[k] for k in data.files}
    except PermissionError:
        raise
    except Exception as err:  # zipfile and numpy raise several types for damaged files
        raise ValueError(f"{path} is not a readable .npz demo file: {err}") from err
    if contents.get("format") is None or str(contents["format"]) != FORMAT:
        raise ValueError(f"{path} is not a torchcfm_local demo file (format {contents.get('format')!r}, keys {sorted(contents)[:6]})")
    try:
        version = int(contents.get("version", -1))
        if version > VERSION or version < 1:
            raise ValueError(f"{path} has demo format version {version}; this torchcfm_local reads version {VERSION}")
        keys = [str(k) for k in contents["obs_keys"]]
        obs = {k: contents[f"obs.{k}"] for k in keys}
        return Demos(obs, contents["action"], contents["episode_ends"], json.loads(str(contents["meta"])))
    except KeyError as err:
        raise ValueError(f"{path} lacks the array {err}") from err
    except (ValueError, TypeError) as err:  # bad shapes or values, a meta that is not JSON
        if str(path) in str(err):
            raise
        raise ValueError(f"{path} does not hold valid demos: {err}") from err


def windows(demos: Demos, obs_keys: list[str], n_obs_steps: int, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All training windows: observations ``(N, To, sum D_key)`` and actions ``(N, H, Da)``, one per demo step."""
    missing = [k for k in obs_keys if k not in demos.obs]
    if missing:
        raise ValueError(f"the demos lack observation keys {missing}; they have {sorted(demos.obs)}")
    obs = np.concatenate([demos.obs[k] for k in obs_keys], axis=1)
    obs_w, act_w = [], []
    for start, stop in demos.episodes():
        k = np.arange(start, stop)
        first = k[:, None] - n_obs_steps + 1
        obs_idx = np.clip(first + np.arange(n_obs_steps), start, stop - 1)
        act_idx = np.clip(first + np.arange(horizon), start, stop - 1)
        obs_w.append(obs[obs_idx])
        act_w.append(demos.action[act_idx])
    return torch.from_numpy(np.concatenate(obs_w)), torch.from_numpy(np.concatenate(act_w))
