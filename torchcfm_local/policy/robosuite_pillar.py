"""Lift's table and Panda arm with a fixed pillar between the robot and a goal (imports robosuite).

Two environments, registered with robosuite when this module is imported (``suite.make(...)``;
:mod:`.robosuite_tasks` imports it when it builds one):

* ``LiftPillar`` (task ``pillar``): carry the cube past the pillar and set it down on the goal;
  scripted expert :class:`PillarExpert`.
* ``ReachPillar`` (task ``pillar-reach``): the same scene with a narrower pillar and the cube
  fixed in place; move the gripper itself past the pillar to a point over the goal; scripted
  expert :class:`ReachExpert`. No per-episode detail (a grasp, a cube pose, the arm's initial
  tilt) survives into the observations at the choice of side, so they cannot tell the two modes
  apart, as on ``point``.
"""
from __future__ import annotations

import numpy as np
from robosuite.environments.manipulation.lift import Lift
from robosuite.models.objects import BoxObject
from robosuite.utils.mjcf_utils import array_to_string
from robosuite.utils.placement_samplers import UniformRandomSampler

from .robosuite_tasks import RobosuiteTask, _CubeExpert, _pose_action, _quat_to_mat, _rot_z, _wrap, _yaw

__all__ = ["LiftPillar", "PillarExpert", "ReachPillar", "ReachExpert", "passed_side", "PILLAR_CENTER", "PILLAR_HALF",
           "START", "GOAL", "GOAL_RADIUS", "REACH_GOAL", "REACH_RADIUS"]

TABLE_Z = 0.8  #: height of the table's top (Lift's table_offset)
#: the pillar: a box fixed on the table (no joint), its half sizes and centre (m): 6 x 10 cm, 10.5 cm tall
PILLAR_HALF = np.array([0.03, 0.05, 0.0525])
PILLAR_CENTER = np.array([0.0, 0.0, TABLE_Z + PILLAR_HALF[2]])
#: the cube's start (its centre is placed within +-0.02 m of it in x and y, any yaw) and its goal (x, y)
START = np.array([-0.16, 0.0])
GOAL = np.array([0.18, 0.0])
#: success: the cube's centre within this distance (m) of the goal in x and y, ...
GOAL_RADIUS = 0.05
GOAL_MAX_Z = TABLE_Z + 0.04  #: ... and below this height: on the table or held just above it
#: ``pillar-reach``: the gripper's target, over the goal at the carry height, and the success radius (m)
REACH_GOAL = np.array([*GOAL, 0.9])
REACH_RADIUS = 0.03


def passed_side(cube_path: np.ndarray) -> int:
    """The side of the pillar a cube path ``(T, >= 2)`` (x, y, ...) passed on: the sign of the cube's
    mean y while its x is within the pillar's depth (+1 left, -1 right), or 0 if it never got there."""
    beside = np.abs(cube_path[:, 0] - PILLAR_CENTER[0]) < PILLAR_HALF[0]
    return int(np.sign(cube_path[beside, 1].mean())) if beside.any() else 0


class LiftPillar(Lift):
    """Lift's table, Panda arm and cube (same sizes, same observations) plus a pillar between the
    cube and its goal: the cube starts at :data:`START` (+-2 cm, any yaw), 16 cm in front of the
    pillar's centre, and must be set down on the goal, :data:`GOAL`, 18 cm behind it. Robot
    frame: x points away from the robot's base (at x = -0.56), y to its left.

    The pillar is a physical, static box (no joint) on the table at :data:`PILLAR_CENTER`, 6 cm
    deep (x), 10 cm wide (y) and 10.5 cm tall (:data:`PILLAR_HALF`). Every MuJoCo contact between
    the pillar and a movable body (a link of the arm, the gripper, the cube) counts as touching it;
    contacts are read at every physics step (25 per control step), so a graze between two control
    steps counts too. ``touched`` stays True until the next reset, and :meth:`_check_failure`
    reports it (:class:`~torchcfm_local.policy.robosuite_tasks.RobosuiteTask` ends the episode).

    Success (:meth:`_check_success`): the pillar has not been touched, and the cube's centre is
    within :data:`GOAL_RADIUS` (5 cm) of the goal in x and y and below :data:`GOAL_MAX_Z` (on the
    table, or held less than 2 cm above it).

    Geometry: carried at the expert's height (gripper at z = 0.9), the cube and the fingertips are
    level with the pillar and the hand (20 cm across) clears its top by 1.5 cm. Cube and fingers
    pass it with the gripper at |y| >= 0.10-0.12 m; the straight line from the start to the goal
    (y = 0) runs into it. Lifting the cube 3 cm higher would also clear it (the expert never does).
    The arm's links pass above the pillar when the cube is on the goal, but lowering the cube
    with the gripper at x < ~0.08 brings the hand down onto the pillar.
    """

    pillar_half = PILLAR_HALF  #: the pillar's half sizes (x, y, z); its centre is over (0, 0)

    def __init__(self, *args, **kwargs):
        self.touched = False
        super().__init__(*args, **kwargs)

    def _load_model(self):
        super()._load_model()
        self.pillar = BoxObject(name="pillar", size=list(self.pillar_half), rgba=[0.3, 0.3, 0.8, 1], joints=None)
        self.pillar.get_obj().set("pos", array_to_string([0.0, 0.0, TABLE_Z + self.pillar_half[2]]))
        self.goal_marker = BoxObject(name="goal", size=[GOAL_RADIUS, GOAL_RADIUS, 0.001], rgba=[0, 1, 0, 0.5],
                                     obj_type="visual", joints=None)
        self.goal_marker.get_obj().set("pos", array_to_string([*GOAL, TABLE_Z + 0.001]))
        self.model.merge_objects([self.pillar, self.goal_marker])
        self.placement_initializer = UniformRandomSampler(
            name="ObjectSampler", mujoco_objects=self.cube, x_range=[-0.02, 0.02], y_range=[-0.02, 0.02],
            rotation=None, ensure_object_boundary_in_range=False, ensure_valid_placement=True,
            reference_pos=np.array([*START, TABLE_Z]), z_offset=0.01, rng=self.rng,
        )

    def _setup_references(self):
        super()._setup_references()
        model = self.sim.model
        self._pillar_geoms = {model.geom_name2id(g) for g in self.pillar.contact_geoms}
        # static geoms (the table, the floor) touch the pillar without counting
        self._moving_geom = model.body_weldid[model.geom_bodyid] != 0

    def _touching(self) -> bool:
        data = self.sim.data
        for k in range(data.ncon):
            c = data.contact[k]
            g1, g2 = int(c.geom1), int(c.geom2)
            if g1 in self._pillar_geoms and self._moving_geom[g2] or g2 in self._pillar_geoms and self._moving_geom[g1]:
                return True
        return False

    def _reset_internal(self):
        super()._reset_internal()
        self.touched = False

    def _pre_action(self, action, policy_step=False):
        # called at every physics step, after the collision detection of that step
        self.touched = self.touched or self._touching()
        super()._pre_action(action, policy_step)

    def _post_action(self, action):
        self.touched = self.touched or self._touching()
        return super()._post_action(action)

    def _check_failure(self) -> bool:
        return bool(self.touched)

    def _check_success(self) -> bool:
        if self.touched:
            return False
        cube = self.sim.data.body_xpos[self.cube_body_id]
        return bool(np.linalg.norm(cube[:2] - GOAL) < GOAL_RADIUS and cube[2] < GOAL_MAX_Z)


class PillarExpert(_CubeExpert):
    """The scripted expert for :class:`LiftPillar`: grasp the cube as :class:`LiftExpert` does (the fingers
    across two of the cube's faces, on the grasp axis nearest the gripper's yaw 0); lift it to the
    carry height over a fixed staging point, turning the gripper to yaw 0; head for a via-point
    beside the pillar at y = ``side`` * 0.2 m (sideways and forward at once, forward at 0.6 of the
    usual gain), then one past it, then over the goal; lower the cube onto the goal. ``side`` (-1
    or +1) is drawn at random per episode: the two modes, left and right of the pillar. Every
    episode leaves the staging point in about the same state, the two modes with the same forward
    action and opposite sideways ones, so their average heads straight into the pillar (the
    expert with ``side`` = 0 touches it every time). Position actions get N(0, 0.05^2) noise.
    """

    CARRY_Z = 0.9  #: eef height while carrying: the pillar's top (0.905) is between the fingertips and the hand
    STAGE = np.array([-0.16, 0.0])  #: xy of the staging point, over the cube's mean start
    SIDE_Y = 0.2  #: |y| of the via-points: fingers and cube (within 5 cm of the eef) clear the pillar (y 0.05) by 10 cm
    BESIDE_X, PAST_X = -0.04, 0.07  #: x of the via-points (the pillar spans x = -0.03 .. 0.03)
    FORWARD_GAIN = 0.6  #: scales the forward part of the position action towards the first via-point

    def __init__(self, task: RobosuiteTask, seed: int = 0):
        super().__init__(task, seed + 170_881)
        self.goal, self.table_z = GOAL, TABLE_Z
        self.side = self.rng.choice([-1.0, 1.0], size=len(task.active))

    def act(self, obs: dict) -> np.ndarray:
        n = len(self.phase)
        out = np.zeros((n, 7))
        for i in range(n):
            eef, m, cube, cube_yaw = self._view(obs, i)
            want = _wrap(cube_yaw, np.pi / 2)  # the grasp axis nearest yaw 0 (a cube repeats every quarter turn)
            carry, side = self.CARRY_Z, self.side[i]
            if self.phase[i] >= 3:  # holding: the gripper at yaw 0
                want = 0.0
            target, grip = self._grasp(i, eef, m, cube, want)
            if self.phase[i] == 3:  # lift, over the staging point, turning to yaw 0
                target = np.array([*self.STAGE, carry])
                if np.linalg.norm(target - eef) < 0.01 and abs(_wrap(_yaw(m))) < 0.05:
                    self.phase[i] = 4
            if self.phase[i] == 4:  # beside the pillar: the multimodal choice
                target = np.array([self.BESIDE_X, side * self.SIDE_Y, carry])
                if np.linalg.norm(target - eef) < 0.03:
                    self.phase[i] = 5
                else:  # sideways faster than forward
                    target = eef + np.array([self.FORWARD_GAIN, 1.0, 1.0]) * (target - eef)
            if self.phase[i] == 5:  # past it
                target = np.array([self.PAST_X, side * self.SIDE_Y, carry])
                if np.linalg.norm(target - eef) < 0.03:
                    self.phase[i] = 6
            if self.phase[i] == 6:  # over the goal
                target = np.array([*self.goal, carry])
                if np.linalg.norm((target - eef)[:2]) < 0.01:
                    self.phase[i] = 7
            if self.phase[i] == 7:  # down onto the goal
                target = np.array([*self.goal, self.table_z + 0.015])
            out[i] = _pose_action(self.rng, eef, m, target, _rot_z(want) @ self.down[i], grip)
        return out


class ReachPillar(LiftPillar):
    """:class:`LiftPillar` without the carrying: the cube sits fixed at :data:`START` (no random
    placement, yaw 0), and the gripper itself must reach a point over the goal past the pillar.

    Success (:meth:`_check_success`): the pillar has not been touched and the gripper's site (the
    point between its fingertips, ``robot0_eef_pos``) is within :data:`REACH_RADIUS` of
    :data:`REACH_GOAL`. Touching the pillar fails the episode as in :class:`LiftPillar`. The pillar
    is 4 cm wide here (:attr:`pillar_half`); at the expert's height the closed fingertips are level
    with it, so a gripper that passes close to its centre line touches it. The
    only per-episode randomness is robosuite's noise on the arm's initial joint angles: the cube's
    observations are the same in every episode, to within 5 mm as it settles (tested).
    """

    pillar_half = np.array([0.03, 0.02, 0.0525])  #: a narrower pillar than LiftPillar's: 4 cm wide (y)

    def _load_model(self):
        super()._load_model()
        self.placement_initializer = UniformRandomSampler(
            name="ObjectSampler", mujoco_objects=self.cube, x_range=[0.0, 0.0], y_range=[0.0, 0.0],
            rotation=0.0, ensure_object_boundary_in_range=False, ensure_valid_placement=True,
            reference_pos=np.array([*START, TABLE_Z]), z_offset=0.01, rng=self.rng,
        )

    def _check_success(self) -> bool:
        if self.touched:
            return False
        eef = self.sim.data.site_xpos[self.robots[0].eef_site_id["right"]]
        return bool(np.linalg.norm(eef - REACH_GOAL) < REACH_RADIUS)


class ReachExpert(PillarExpert):
    """The scripted expert for :class:`ReachPillar`, gripper closed and empty: to a start point
    behind the pillar on its centre line (:attr:`APPROACH`, turning the gripper to yaw 0), then
    straight at the pillar at full speed; at :attr:`BRANCH_X` it swerves to a via-point beside the
    pillar on a side drawn at random per episode (``side``, -1 or +1), then one past it, then over
    the goal, where the episode succeeds. Both modes share the approach, so nothing observed tells
    them apart before the swerve, and their average keeps going straight into the pillar: it
    touches it within one executed chunk of a policy (8 steps) of the swerve. The expert passes the
    pillar more than 5 cm off its centre line (both checked in ``tests/test_robosuite_pillar.py``).
    Its target orientation is exactly "down, yaw 0", not (as :class:`PillarExpert`'s) the arm's
    initial orientation with the yaw removed: that one keeps each episode's initial tilt in the
    observed orientation, a per-episode signature from which a regressor trained on 100 demos
    learned to pick a side (measured while building this task: ``benchmarks/results/README.md``,
    section "pillar-reach")."""

    APPROACH = np.array([-0.25, 0.0])  #: xy of the start of the straight approach
    BRANCH_X = -0.13  #: gripper x at which the expert swerves
    BESIDE_X, SIDE_Y, PAST_X = 0.0, 0.15, 0.07

    def __init__(self, task: RobosuiteTask, seed: int = 0):
        super().__init__(task, seed + 57_637)
        # exactly "gripper down, yaw 0" (the nearest signed axes), not the arm's initial tilt: no
        # trace of an episode's initial joint noise stays in the observed orientation
        self.down = [np.round(d) for d in self.down]

    def act(self, obs: dict) -> np.ndarray:
        n = len(self.phase)
        out = np.zeros((n, 7))
        for i in range(n):
            eef, m = obs["robot0_eef_pos"][i].astype(float), _quat_to_mat(obs["robot0_eef_quat"][i].astype(float))
            z, side = self.CARRY_Z, self.side[i]
            if self.phase[i] == 0:  # to the start of the approach, turning to yaw 0
                target = np.array([*self.APPROACH, z])
                if np.linalg.norm(target - eef) < 0.01 and abs(_wrap(_yaw(m))) < 0.05:
                    self.phase[i] = 1
            if self.phase[i] == 1:  # straight at the pillar, full speed
                target = np.array([eef[0] + 0.2, 0.0, z])
                if eef[0] >= self.BRANCH_X:
                    self.phase[i] = 2
            if self.phase[i] == 2:  # swerve: the multimodal choice
                target = np.array([self.BESIDE_X, side * self.SIDE_Y, z])
                if np.linalg.norm(target - eef) < 0.03:
                    self.phase[i] = 3
            if self.phase[i] == 3:  # past it
                target = np.array([self.PAST_X, side * self.SIDE_Y, z])
                if np.linalg.norm(target - eef) < 0.03:
                    self.phase[i] = 4
            if self.phase[i] == 4:  # over the goal
                target = REACH_GOAL
            out[i] = _pose_action(self.rng, eef, m, target, self.down[i], 1.0)
        return out
