"""Tasks: batched environments with scripted, deliberately multimodal experts.

An environment steps ``n`` episodes at once (one process, batched policy inference):

* ``reset(n, seed) -> obs``: ``obs`` maps each observation key to an ``(n, D_key)`` array;
* ``step(action) -> (obs, done, success)``: ``action`` is ``(n, Da)``; finished episodes ignore
  their actions and keep their outcome; ``success`` is the task's own check;
* ``expert(seed)``: a scripted policy with ``act(obs) -> (n, Da)`` for the current batch.

Tasks: ``point`` (below), ``lift``, ``can`` and ``square`` (robosuite's Lift, PickPlaceCan and
NutAssemblySquare, :mod:`.robosuite_tasks`), ``pillar`` (robosuite's Lift with a fixed pillar
between the cube and its goal) and ``pillar-reach`` (the gripper itself past the pillar, the
robot counterpart of ``point``; both in :mod:`.robosuite_pillar`); the robosuite tasks need the
``[robot]`` extra.

``point`` is a pure-numpy toy task for tests and quick runs: a point must reach a goal behind a
round obstacle; the expert passes left or right with equal probability, so the average of its
actions (what a regression policy learns) drives straight into the obstacle.
"""
from __future__ import annotations

import numpy as np

from .demos import Demos

__all__ = ["PointObstacle", "TASKS", "make_env", "collect_demos"]


class PointObstacle:
    """A point at ``pos`` moves with velocity ``action`` (norm clipped to ``max_speed``) for ``dt``.

    Start: ``(0, -1)`` plus U(-0.05, 0.05) per coordinate; goal ``(0, 1)``; obstacle: the disk of
    radius 0.4 at the origin. Success: within 0.1 of the goal before ``max_steps``; touching the
    obstacle ends the episode as a failure.
    """

    obs_dims = {"pos": 2}
    action_dim = 2
    goal = np.array([0.0, 1.0])
    radius, reach, dt, max_speed = 0.4, 0.1, 0.1, 1.5

    def __init__(self, max_steps: int = 60):
        self.max_steps = max_steps

    def reset(self, n: int, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        self.pos = np.array([0.0, -1.0]) + rng.uniform(-0.05, 0.05, (n, 2))
        self.done = np.zeros(n, bool)
        self.success = np.zeros(n, bool)
        self.t = 0
        return self._obs()

    def _obs(self) -> dict:
        return {"pos": self.pos.astype(np.float32).copy()}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.pos.shape:
            raise ValueError(f"action must have shape {self.pos.shape} (n, {self.action_dim}), got {action.shape}")
        speed = np.linalg.norm(action, axis=1, keepdims=True)
        action = action * np.minimum(1.0, self.max_speed / np.maximum(speed, 1e-12))
        live = ~self.done
        self.pos[live] += self.dt * action[live]
        hit = live & (np.linalg.norm(self.pos, axis=1) < self.radius)
        arrived = live & ~hit & (np.linalg.norm(self.pos - self.goal, axis=1) < self.reach)
        self.t += 1
        self.success |= arrived
        self.done |= hit | arrived | (self.t >= self.max_steps)
        return self._obs(), self.done.copy(), self.success.copy()

    def expert(self, seed: int = 0) -> "PointExpert":
        return PointExpert(len(self.pos), seed)


class PointExpert:
    """Heads for a via-point at ``(side * 0.65, 0)``, side = -1 or +1 at random per episode, then for
    the goal, at speed 1 with N(0, 0.05^2) action noise."""

    def __init__(self, n: int, seed: int = 0):
        self.rng = np.random.default_rng(seed + 7919)
        self.side = self.rng.choice([-1.0, 1.0], size=n)
        self.passed = np.zeros(n, bool)

    def act(self, obs: dict) -> np.ndarray:
        pos = obs["pos"].astype(np.float64)
        via = np.stack([self.side * 0.65, np.zeros_like(self.side)], axis=1)
        self.passed |= np.linalg.norm(pos - via, axis=1) < 0.15
        target = np.where(self.passed[:, None], PointObstacle.goal, via)
        direction = target - pos
        direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-9)
        return direction + self.rng.normal(0.0, 0.05, direction.shape)


def _lift(**kwargs):
    from .robosuite_tasks import RobosuiteTask

    return RobosuiteTask("Lift", **{"max_steps": 150, **kwargs})


def _can(**kwargs):
    from .robosuite_tasks import RobosuiteTask

    return RobosuiteTask("PickPlaceCan", **{"max_steps": 300, **kwargs})


def _square(**kwargs):
    from .robosuite_tasks import RobosuiteTask

    return RobosuiteTask("NutAssemblySquare", **{"max_steps": 400, **kwargs})


def _pillar(**kwargs):
    from .robosuite_tasks import RobosuiteTask

    return RobosuiteTask("LiftPillar", **{"max_steps": 200, **kwargs})


def _pillar_reach(**kwargs):
    from .robosuite_tasks import RobosuiteTask

    return RobosuiteTask("ReachPillar", **{"max_steps": 150, **kwargs})


#: task name -> environment constructor; robosuite tasks need the ``[robot]`` extra.
TASKS = {"point": PointObstacle, "lift": _lift, "can": _can, "square": _square, "pillar": _pillar,
         "pillar-reach": _pillar_reach}


def make_env(name: str, **kwargs):
    """The environment of task ``name`` (see :data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; available: {sorted(TASKS)}")
    return TASKS[name](**kwargs)


def collect_demos(task: str, n_episodes: int, seed: int = 0, batch: int = 100) -> Demos:
    """Run the scripted expert on ``n_episodes`` episodes and keep the successful ones.

    ``meta`` records the task, the seed, the episodes attempted and the expert's success rate.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    env = make_env(task)
    obs_parts, actions, ends, total, wins = None, [], [], 0, 0
    for b, start in enumerate(range(0, n_episodes, batch)):
        n = min(batch, n_episodes - start)
        obs = env.reset(n, seed=seed * 1000 + b)
        obs_parts = obs_parts or {k: [] for k in obs}
        expert = env.expert(seed * 1000 + b)
        traj_obs, traj_act, alive = [], [], []
        done = np.zeros(n, bool)
        while not done.all():
            act = expert.act(obs)
            traj_obs.append(obs)
            traj_act.append(act)
            alive.append(~done)
            obs, done, success = env.step(act)
        for i in np.flatnonzero(success):
            steps = [s for s in range(len(alive)) if alive[s][i]]
            for k in obs_parts:
                obs_parts[k].append(np.stack([traj_obs[s][k][i] for s in steps]))
            actions.append(np.stack([traj_act[s][i] for s in steps]))
            total += len(steps)
            ends.append(total)
        wins += int(success.sum())
    if not ends:
        raise RuntimeError(f"the {task} expert succeeded in none of {n_episodes} episodes")
    meta = {"task": task, "seed": seed, "episodes_attempted": n_episodes, "episodes_kept": wins,
            "expert_success_rate": wins / n_episodes}
    return Demos({k: np.concatenate(v) for k, v in obs_parts.items()}, np.concatenate(actions), np.array(ends), meta)
