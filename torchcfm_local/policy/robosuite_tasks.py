"""robosuite tasks (the simulator behind Robomimic) with scripted, multimodal experts.

Needs the ``[robot]`` extra (robosuite 1.5.2 with mujoco 3.3.7; see the README). Settings follow
Robomimic's low-dimensional setup: a Panda arm under OSC_POSE delta control at 20 Hz,
observations ``object-state``, ``robot0_eef_pos``, ``robot0_eef_quat``, ``robot0_gripper_qpos``,
no rendering, ``hard_reset=False`` (fast resets). ``n`` environments are kept and stepped one
after another in this process; the policy is queried once per step for all of them. An episode
ends at the task's success check, at the step limit, or (environments with ``_check_failure``,
i.e. LiftPillar and ReachPillar) at a failure.

Actions (7): position delta (x 0.05 m), axis-angle rotation delta in the base frame (x 0.5 rad),
gripper (-1 open, +1 close), each in [-1, 1].

Environments and experts: ``Lift`` (:class:`LiftExpert`), ``PickPlaceCan`` (:class:`CanExpert`),
``NutAssemblySquare`` (:class:`SquareExpert`: the square nut onto the square peg) and our
``LiftPillar`` and ``ReachPillar`` (:mod:`.robosuite_pillar` with ``PillarExpert`` and
``ReachExpert``: Lift's cube, or the empty gripper, past a fixed pillar to a goal, left or right of
it). The first three experts' modes are harmless to average (the MSE regression baseline succeeds
on Lift and Can); the pillar tasks are built so that the average of their expert's two modes runs
into the pillar, and touching the pillar ends the episode as a failure. The ``object-state`` (10)
of Lift and the pillar tasks is the cube's position (3) and quaternion
(4, x y z w), then its position relative to the gripper (3). Square's ``object-state`` (14) is the
nut's pose in the gripper's frame, position (3) and quaternion (4, x y z w), then in the world
(3 + 4); robosuite leaves the gripper-frame part zero in the first observation of an episode (its
observation cache is empty then).
"""
from __future__ import annotations

import logging

import numpy as np

__all__ = ["RobosuiteTask", "LiftExpert", "CanExpert", "SquareExpert", "OBS_KEYS"]

OBS_KEYS = ("object-state", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")


def _require_robosuite():
    try:
        import robosuite  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "robosuite tasks need the [robot] extra: pip install 'torchcfm-local[robot]' "
            "(robosuite 1.5.2, mujoco 3.3.7)"
        ) from err


def _quat_to_mat(q: np.ndarray) -> np.ndarray:
    """robosuite's (x, y, z, w) quaternion -> rotation matrix."""
    x, y, z, w = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _yaw(m: np.ndarray) -> float:
    return float(np.arctan2(m[1, 0], m[0, 0]))


def _axis_angle(m: np.ndarray) -> np.ndarray:
    """Rotation matrix -> axis * angle."""
    angle = np.arccos(np.clip((np.trace(m) - 1) / 2, -1.0, 1.0))
    if angle < 1e-8:
        return np.zeros(3)
    axis = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / (2 * np.sin(angle))
    return axis * angle


class RobosuiteTask:
    """``n`` robosuite environments of one task behind the batched interface of :mod:`.tasks`."""

    action_dim = 7

    def __init__(self, env_name: str, max_steps: int = 200):
        _require_robosuite()
        self.env_name, self.max_steps = env_name, max_steps
        self.envs: list = []
        self.obs_dims = None

    def _make(self, seed: int):
        import robosuite as suite
        from robosuite.controllers import load_composite_controller_config
        from robosuite.utils.log_utils import ROBOSUITE_DEFAULT_LOGGER

        if self.env_name in ("LiftPillar", "ReachPillar"):
            from . import robosuite_pillar  # noqa: F401  (defining the class registers it with robosuite)

        ROBOSUITE_DEFAULT_LOGGER.setLevel(logging.ERROR)  # per-env notes on unused controller parts

        return suite.make(
            self.env_name, robots="Panda", controller_configs=load_composite_controller_config(controller="BASIC"),
            has_renderer=False, has_offscreen_renderer=False, use_camera_obs=False, use_object_obs=True,
            control_freq=20, hard_reset=False, horizon=self.max_steps + 1, ignore_done=True, seed=seed,
        )

    def reset(self, n: int, seed: int = 0) -> dict:
        while len(self.envs) < n:
            self.envs.append(self._make(len(self.envs)))
        self.active = self.envs[:n]
        raw = []
        for i, env in enumerate(self.active):  # reseed every episode: fixed seeds give fixed initial states
            env.rng = np.random.default_rng(seed * 100_003 + i)
            sampler = getattr(env, "placement_initializer", None)
            if sampler is not None:  # composite samplers (Can, Square) draw from their parts' own generators
                for part in [sampler, *getattr(sampler, "samplers", {}).values()]:
                    part.rng = env.rng
            raw.append(env.reset())
        self.done = np.zeros(n, bool)
        self.success = np.zeros(n, bool)
        self.failed = np.zeros(n, bool)
        self.t = 0
        self.raw = raw
        obs = self._stack(raw)
        self.obs_dims = {k: v.shape[1] for k, v in obs.items()}
        return obs

    @staticmethod
    def _stack(raw: list) -> dict:
        return {k: np.stack([np.asarray(o[k], dtype=np.float32) for o in raw]) for k in OBS_KEYS}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (len(self.active), self.action_dim):
            raise ValueError(f"action must have shape ({len(self.active)}, {self.action_dim}), got {action.shape}")
        for i, env in enumerate(self.active):
            if not self.done[i]:
                self.raw[i], _, _, _ = env.step(np.clip(action[i], -1, 1))
                self.success[i] = bool(env._check_success())
                check_failure = getattr(env, "_check_failure", None)  # LiftPillar: the pillar was touched
                self.failed[i] = check_failure is not None and bool(check_failure())
        self.t += 1
        self.done |= self.success | self.failed | (self.t >= self.max_steps)
        return self._stack(self.raw), self.done.copy(), self.success.copy()

    def expert(self, seed: int = 0):
        if self.env_name in ("LiftPillar", "ReachPillar"):
            from .robosuite_pillar import PillarExpert, ReachExpert

            return (PillarExpert if self.env_name == "LiftPillar" else ReachExpert)(self, seed)
        experts = {"Lift": LiftExpert, "PickPlaceCan": CanExpert, "NutAssemblySquare": SquareExpert}
        if self.env_name not in experts:
            raise ValueError(f"no scripted expert for {self.env_name}")
        return experts[self.env_name](self, seed)


def _pose_action(rng, eef, m, target, rot, grip, noise=0.05) -> np.ndarray:
    """OSC_POSE delta action toward position ``target`` and orientation ``rot``."""
    out = np.zeros(7)
    out[:3] = np.clip(10 * (target - eef) + rng.normal(0, noise, 3), -1, 1)
    out[3:6] = np.clip(2 * _axis_angle(rot @ m.T), -1, 1)
    out[6] = grip
    return out


def _down_orientations(raw: list) -> list:
    """Per environment, the "gripper down" orientation at yaw 0, from its first observation."""
    out = []
    for o in raw:
        m = _quat_to_mat(o["robot0_eef_quat"])
        out.append(_rot_z(-_yaw(m)) @ m)
    return out


class _CubeExpert:
    """What the cube experts (Lift, LiftPillar) share: per-episode phase and clock, the "gripper
    down" orientations, and the grasp (phases 0-2)."""

    def __init__(self, task: RobosuiteTask, seed: int):
        self.rng = np.random.default_rng(seed)
        n = len(task.active)
        self.phase = np.zeros(n, int)
        self.clock = np.zeros(n, int)
        self.down = _down_orientations(task.raw)
        self.grasp_at = [None] * n

    @staticmethod
    def _view(obs: dict, i: int) -> tuple:
        """Episode ``i``'s eef position, eef orientation (matrix), cube position and cube yaw."""
        eef, cube = obs["robot0_eef_pos"][i].astype(float), obs["object-state"][i][:3].astype(float)
        m = _quat_to_mat(obs["robot0_eef_quat"][i].astype(float))
        return eef, m, cube, _yaw(_quat_to_mat(obs["object-state"][i][3:7].astype(float)))

    def _grasp(self, i: int, eef, m, cube, want: float) -> tuple:
        """Phases 0-2 for episode ``i``: above the cube with the gripper at yaw ``want``, down to it,
        then closed for 8 steps; the grasp position goes to ``grasp_at[i]`` and the phase to 3.
        Returns this step's (target, grip), or (None, 1.0), closed, once past these phases."""
        if self.phase[i] == 0:  # above the cube, turned
            target = cube + [0, 0, 0.08]
            if np.linalg.norm(target - eef) < 0.015 and abs(_wrap(_yaw(m) - want)) < 0.08:
                self.phase[i] = 1
            else:
                return target, -1.0
        if self.phase[i] == 1:  # down to the cube
            target = cube + [0, 0, -0.005]
            if abs(target[2] - eef[2]) >= 0.01:
                return target, -1.0
            self.phase[i], self.clock[i] = 2, 0
        if self.phase[i] == 2:  # close
            self.clock[i] += 1
            if self.clock[i] >= 8:
                self.phase[i], self.grasp_at[i] = 3, eef.copy()
            return cube + [0, 0, -0.005], 1.0
        return None, 1.0


class LiftExpert(_CubeExpert):
    """Above the cube (with the gripper's yaw turned to one of the cube's two grasp axes, chosen at
    random per episode: the multimodal choice), down, close, lift. Position actions get
    N(0, 0.05^2) noise."""

    def __init__(self, task: RobosuiteTask, seed: int = 0):
        super().__init__(task, seed + 104_729)
        self.axis = self.rng.integers(0, 2, len(task.active))

    def act(self, obs: dict) -> np.ndarray:
        n = len(self.phase)
        out = np.zeros((n, 7))
        for i in range(n):
            eef, m, cube, cube_yaw = self._view(obs, i)
            want = cube_yaw + self.axis[i] * np.pi / 2
            want += np.pi * np.round((_yaw(m) - want) / np.pi)  # the gripper is symmetric under a half turn
            target, grip = self._grasp(i, eef, m, cube, want)
            if self.phase[i] == 3:  # lift
                target = self.grasp_at[i] + [0, 0, 0.2]
            out[i] = _pose_action(self.rng, eef, m, target, _rot_z(want) @ self.down[i], grip)
        return out


class CanExpert:
    """PickPlaceCan: above the can, down, grasp, lift, then through a via-point on a side chosen at
    random per episode (the multimodal choice: left or right of the straight line), over the
    can's target compartment, down, release, back off."""

    def __init__(self, task: RobosuiteTask, seed: int = 0):
        self.task = task
        self.rng = np.random.default_rng(seed + 130_363)
        n = len(task.active)
        self.side = self.rng.choice([-1.0, 1.0], size=n)
        self.phase = np.zeros(n, int)
        self.clock = np.zeros(n, int)
        self.down = _down_orientations(task.raw)
        self.goal = [np.asarray(env.target_bin_placements[env.object_to_id["can"]], dtype=float) for env in task.active]
        self.hold = [None] * n

    def act(self, obs: dict) -> np.ndarray:
        n = len(self.phase)
        out = np.zeros((n, 7))
        for i in range(n):
            raw = self.task.raw[i]
            eef, can = raw["robot0_eef_pos"].astype(float), raw["Can_pos"].astype(float)
            m = _quat_to_mat(raw["robot0_eef_quat"].astype(float))
            goal, grip = self.goal[i], -1.0
            if self.phase[i] == 0:  # above the can
                target = can + [0, 0, 0.12]
                if np.linalg.norm(target - eef) < 0.015:
                    self.phase[i] = 1
            if self.phase[i] == 1:  # down (the fingertips reach the bin floor a little above the can's centre)
                target = can + [0, 0, 0.005]
                self.clock[i] += 1
                if abs(target[2] - eef[2]) < 0.012 or self.clock[i] > 25:
                    self.phase[i], self.clock[i] = 2, 0
            if self.phase[i] == 2:  # close
                target, grip = can + [0, 0, 0.005], 1.0
                self.clock[i] += 1
                if self.clock[i] >= 10:
                    self.phase[i], self.hold[i] = 3, eef.copy()
            if self.phase[i] == 3:  # lift
                target, grip = np.array([*self.hold[i][:2], 1.08]), 1.0
                if eef[2] > 1.05:
                    self.phase[i] = 4
            if self.phase[i] == 4:  # via-point on the chosen side
                mid = (self.hold[i] + goal) / 2
                target, grip = np.array([mid[0] + 0.13 * self.side[i], mid[1], 1.1]), 1.0
                if np.linalg.norm(target - eef) < 0.04:
                    self.phase[i] = 5
            if self.phase[i] == 5:  # over the target compartment
                target, grip = np.array([goal[0], goal[1], 1.05]), 1.0
                if np.linalg.norm((target - eef)[:2]) < 0.03:  # the compartment is ~0.2 x 0.24 m
                    self.phase[i] = 6
            if self.phase[i] == 6:  # lower
                target, grip = np.array([goal[0], goal[1], 0.93]), 1.0
                if abs(target[2] - eef[2]) < 0.015:
                    self.phase[i], self.clock[i] = 7, 0
            if self.phase[i] == 7:  # release
                target = np.array([goal[0], goal[1], 0.93])
                self.clock[i] += 1
                if self.clock[i] >= 8:
                    self.phase[i] = 8
            if self.phase[i] == 8:  # back off: robosuite counts the can as placed once the gripper has left it
                target = np.array([goal[0], goal[1], 1.05])
            out[i] = _pose_action(self.rng, eef, m, target, self.down[i], grip)
        return out


def _wrap(a: float, period: float = 2 * np.pi) -> float:
    """``a`` wrapped into [-period / 2, period / 2)."""
    return float((a + period / 2) % period - period / 2)


#: where the gripper takes the square nut's handle, in the nut's frame: on the handle (robosuite's
#: ``handle_site`` is at x = 0.054, the handle spans 0.029 .. 0.079), 6 mm out, so that fingers
#: that land a little short still clear the nut's wall (its outer face is at x = 0.044)
SQUARE_GRASP = np.array([0.06, 0.0, 0.0])


def _square_plan(nut_yaw: float) -> tuple[float, float]:
    """The gripper's yaw at the grasp and the nut's yaw over the peg, for a nut at ``nut_yaw``.

    The grasp yaw is the nut's yaw or that plus a half turn (the fingers close across the handle
    either way), taken in [-pi, pi) since the gripper turns there the short way from yaw 0. The
    nut is turned square to the peg with its handle towards the robot (yaw pi) or to one side
    (+-pi/2), never away from it: the arm would reach too far. The Panda's last joint turns the
    gripper to about +200 degrees of yaw but only to about -110, so plans whose grasp or final
    gripper yaw leave [-95, 185] degrees are out (one of the two grasps always fits); of the
    rest, the one turning least overall.
    """
    lo, hi = np.radians(-95), np.radians(185)
    best, best_cost = None, np.inf
    for grasp in (_wrap(nut_yaw), _wrap(nut_yaw + np.pi)):
        for goal in (np.pi / 2, np.pi, -np.pi / 2):
            turn = _wrap(goal - nut_yaw)
            if not (lo <= grasp <= hi and lo <= grasp + turn <= hi):
                continue
            cost = abs(grasp) + abs(turn)
            if cost < best_cost:
                best, best_cost = (grasp, goal), cost
    return best


class SquareExpert:
    """NutAssemblySquare: above the nut's handle with the fingers across it, down, grasp, lift;
    carry the nut through a via-point on a side chosen at random per episode (the multimodal
    choice) while turning it square to the peg (:func:`_square_plan`), until its centre is over
    the square peg; lower it onto the peg until robosuite counts it as placed (the nut's centre
    within 3 cm of the peg's axis and less than 5 cm above the table, the gripper at least
    4.2 cm from it: holding the handle is far enough), releasing it if it sticks.

    The targets follow the observed nut, so slip in the grasp is corrected, and an integral term
    removes the controller's steady-state offset (up to 2 cm close to the robot's base) where
    millimetres matter: over the handle and over the peg (the hole leaves 6.75 mm to each side).
    A missed or dropped nut sends the expert back to the start. Position actions get
    N(0, 0.05^2) noise, N(0, 0.02^2) while the nut is threaded onto the peg."""

    CARRY_Z = 1.0  # eef height while carrying: the nut's underside clears the peg's top (z 0.95)

    def __init__(self, task: RobosuiteTask, seed: int = 0):
        self.task = task
        self.rng = np.random.default_rng(seed + 155_921)
        n = len(task.active)
        self.side = self.rng.choice([-1.0, 1.0], size=n)
        self.phase = np.zeros(n, int)
        self.clock = np.zeros(n, int)
        self.peg = [np.array(env.sim.data.body_xpos[env.peg1_body_id], dtype=float) for env in task.active]
        self.hold = [None] * n
        self.plan = [None] * n  # (gripper yaw at the grasp, nut yaw over the peg), fixed at the descent
        self.bias = np.zeros((n, 3))  # integral of the xy position error
        self.low = np.full(n, np.inf)  # lowest eef height while threading (to notice a jam)

    def _goto(self, i: int, phase: int) -> None:
        self.phase[i], self.clock[i], self.bias[i] = phase, 0, 0.0

    def act(self, obs: dict) -> np.ndarray:
        n = len(self.phase)
        out = np.zeros((n, 7))
        down = np.diag([1.0, -1.0, -1.0])  # gripper pointing straight down at yaw 0
        for i in range(n):
            raw = self.task.raw[i]
            eef, nut = raw["robot0_eef_pos"].astype(float), raw["SquareNut_pos"].astype(float)
            m = _quat_to_mat(raw["robot0_eef_quat"].astype(float))
            nut_m = _quat_to_mat(raw["SquareNut_quat"].astype(float))
            nut_yaw, eef_yaw = _yaw(nut_m), _yaw(m)
            fingers = float(raw["robot0_gripper_qpos"][0])  # 0.04 open .. 0 closed on nothing
            grasp = nut + nut_m @ SQUARE_GRASP
            peg, grip, noise, fine = self.peg[i], -1.0, 0.05, False
            self.clock[i] += 1
            if self.phase[i] == 0:  # fixed from the descent on; the fingers close along the gripper's y axis
                self.plan[i] = _square_plan(nut_yaw)
            yaw = eef_yaw + _wrap(self.plan[i][0] - eef_yaw)
            if 3 <= self.phase[i] <= 6 and np.linalg.norm(grasp - eef) > 0.04:  # dropped the nut
                self._goto(i, 9)
            if self.phase[i] == 0:  # above the handle, turned
                target, fine = grasp + [0, 0, 0.05], True
                if (np.linalg.norm((target - eef)[:2]) < 0.005 and abs(target[2] - eef[2]) < 0.015
                        and abs(_wrap(yaw - eef_yaw)) < 0.06):
                    self.phase[i], self.clock[i] = 1, 0  # keeps the integral term
            if self.phase[i] == 1:  # down to the handle
                target, fine = grasp + [0, 0, -0.002], True
                if abs(target[2] - eef[2]) < 0.008 or self.clock[i] > 30:
                    self.phase[i], self.clock[i] = 2, 0
            if self.phase[i] == 2:  # close
                target, grip = grasp + [0, 0, -0.002], 1.0
                if self.clock[i] >= 10:
                    if fingers < 0.004:  # closed on nothing: try again
                        self._goto(i, 9)
                    else:
                        self._goto(i, 3)
                        self.hold[i] = eef.copy()
            if 3 <= self.phase[i] <= 6:  # holding: turn the nut to its yaw over the peg
                grip = 1.0
                yaw = eef_yaw + _wrap(self.plan[i][1] - nut_yaw)
                shift = np.array([*(peg[:2] - nut[:2]), 0.0])  # moves the nut's centre over the peg
            if self.phase[i] == 3:  # lift
                target = np.array([*self.hold[i][:2], self.CARRY_Z + 0.02])
                if eef[2] > self.CARRY_Z - 0.01:
                    self._goto(i, 4)
            if self.phase[i] == 4:  # via-point on the chosen side
                mid = (self.hold[i] + eef + shift) / 2
                target = np.array([mid[0], mid[1] + 0.08 * self.side[i], self.CARRY_Z + 0.02])
                if np.linalg.norm(target - eef) < 0.04:
                    self._goto(i, 5)
            if self.phase[i] == 5:  # the nut over the peg, square to it
                target, fine = eef + shift, True
                target[2] = self.CARRY_Z
                if np.linalg.norm(shift[:2]) < 0.003 and abs(_wrap(self.plan[i][1] - nut_yaw)) < 0.04:
                    self._goto(i, 6)
                    self.low[i] = eef[2]
            if self.phase[i] == 6:  # thread the nut onto the peg
                target, noise, fine = eef + shift, 0.02, True
                target[2] = eef[2] - 0.02
                if eef[2] < self.low[i] - 0.002:
                    self.low[i], self.clock[i] = eef[2], 0
                elif self.clock[i] > 10:  # stuck: let go, it may slide down
                    self._goto(i, 7)
            if self.phase[i] == 7:  # release, holding still
                target, yaw = eef.copy(), eef_yaw
                if fingers > 0.03 or self.clock[i] > 15:
                    self._goto(i, 8)
            if self.phase[i] == 8:  # back off
                target, yaw = np.array([eef[0], eef[1], 1.05]), eef_yaw
            if self.phase[i] == 9:  # missed or dropped: open, rise, start again
                target, yaw = np.array([eef[0], eef[1], max(eef[2], grasp[2] + 0.08)]), eef_yaw
                if self.clock[i] > 10:
                    self._goto(i, 0)
            error = (target - eef)[:2]
            if fine and np.linalg.norm(error) < 0.01:  # integrate near the target only (no wind-up in transients)
                self.bias[i, :2] = np.clip(self.bias[i, :2] + 0.15 * error, -0.02, 0.02)
            out[i] = _pose_action(self.rng, eef, m, target + self.bias[i], _rot_z(yaw) @ down, grip, noise)
        return out
