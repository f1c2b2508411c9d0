"""Batched rollouts: many episodes stepped together, one policy call per action chunk for all of them."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from .tasks import make_env

__all__ = ["RolloutReport", "evaluate"]


@dataclass
class RolloutReport:
    """Outcome of :func:`evaluate`.

    Attributes:
        success_rate: successes / episodes.
        successes: per-episode success ``(n,)``.
        chunk_seconds: wall time of each ``predict_action`` call (one call serves all live episodes).
        chunk_batch: live episodes in each call.
        trace: observations per step ``{key: (steps + 1, n, D)}`` when ``record=True``.
        nonfinite: per episode ``(n,)``: ended as a failure because the policy returned NaN or Inf
            actions for it (they are never sent to the environment).
    """

    success_rate: float
    successes: np.ndarray = field(repr=False)
    chunk_seconds: list = field(repr=False)
    chunk_batch: list = field(repr=False)
    trace: Optional[dict] = field(default=None, repr=False)
    nonfinite: Optional[np.ndarray] = field(default=None, repr=False)

    @property
    def seconds_per_chunk(self) -> float:
        """Mean wall time of one policy call (a chunk for every live episode)."""
        return float(np.mean(self.chunk_seconds)) if self.chunk_seconds else float("nan")


def evaluate(policy, task, n_episodes: int = 50, seed: int = 0, record: bool = False,
             generator_seed: Optional[int] = None) -> RolloutReport:
    """Roll ``policy`` out on ``n_episodes`` episodes of ``task`` (a name or an environment object).

    Observation histories start by repeating the first observation (``n_obs_steps`` copies); each
    call's ``action`` chunk (Ta steps) is executed before the next call. ``seed`` fixes the initial
    states (for robosuite: the object placements; its arm's initial joint noise is unseeded);
    ``generator_seed`` (default ``seed``) fixes the policy's sampling noise. An episode whose chunk
    holds NaN or Inf (a diverged network) ends there as a failure, with a warning; the
    environment never receives those actions (``RolloutReport.nonfinite``).
    """
    env = make_env(task) if isinstance(task, str) else task
    to = policy.n_obs_steps
    obs = env.reset(n_episodes, seed=seed)
    hist = {k: np.repeat(obs[k][:, None], to, axis=1) for k in policy.obs_dims}
    gen = torch.Generator().manual_seed(seed if generator_seed is None else generator_seed)
    done = np.zeros(n_episodes, bool)
    success = np.zeros(n_episodes, bool)
    nonfinite = np.zeros(n_episodes, bool)  # ended here: the environment keeps them, holding still
    seconds, batch = [], []
    trace = {k: [obs[k].copy()] for k in obs} if record else None
    while not (done | nonfinite).all():
        live = np.flatnonzero(~(done | nonfinite))
        start = time.perf_counter()
        chunk = policy.predict_action({k: v[live] for k, v in hist.items()}, generator=gen)["action"].numpy()
        seconds.append(time.perf_counter() - start)
        batch.append(len(live))
        bad = ~np.isfinite(chunk).all(axis=(1, 2))
        nonfinite[live[bad]] = True
        actions = np.zeros((n_episodes, chunk.shape[1], chunk.shape[2]), dtype=np.float64)
        actions[live[~bad]] = chunk[~bad]
        for j in range(chunk.shape[1]):
            obs, done, success = env.step(actions[:, j])
            for k in hist:
                hist[k] = np.concatenate([hist[k][:, 1:], obs[k][:, None]], axis=1)
            if record:
                for k in obs:
                    trace[k].append(obs[k].copy())
            if (done | nonfinite).all():
                break
    if record:
        trace = {k: np.stack(v) for k, v in trace.items()}
    success = success & ~nonfinite
    if nonfinite.any():
        warnings.warn(f"{int(nonfinite.sum())} of {n_episodes} episodes ended as failures: the policy returned NaN or "
                      "Inf actions for them (a diverged network?)", RuntimeWarning, stacklevel=2)
    return RolloutReport(float(success.mean()), success, seconds, batch, trace, nonfinite)
