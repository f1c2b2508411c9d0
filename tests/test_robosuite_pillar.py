"""robosuite LiftPillar and ReachPillar (tasks ``pillar`` and ``pillar-reach``): past a pillar, left or right (needs the [robot] extra)."""

import json

import numpy as np
import pytest

from robot import require_robosuite
from bench_scripts import load_benchmark

require_robosuite()

from torchcfm_local.policy import TASKS, collect_demos, make_env  # noqa: E402
from torchcfm_local.policy.robosuite_pillar import (GOAL, PILLAR_CENTER, PILLAR_HALF, REACH_GOAL, REACH_RADIUS, START,  # noqa: E402
                                                    PillarExpert, ReachExpert, ReachPillar, passed_side)
from torchcfm_local.policy.robosuite_tasks import OBS_KEYS  # noqa: E402

#: object-state as Lift's: the cube's position (3), orientation (4, x y z w), position relative to the eef (3)
PILLAR_DIMS = {"object-state": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


@pytest.fixture(scope="module")
def task():
    return make_env("pillar")


def test_pillar_env_observations_and_layout(task):
    assert task.env_name == "LiftPillar" and task.max_steps == 200 and task.action_dim == 7
    obs = task.reset(2, seed=3)
    assert set(obs) == set(OBS_KEYS) and task.obs_dims == PILLAR_DIMS
    for key, value in obs.items():
        assert value.shape == (2, PILLAR_DIMS[key]) and value.dtype == np.float32 and np.isfinite(value).all()
    cube = obs["object-state"][:, :3]
    assert np.allclose(cube, [r["cube_pos"] for r in task.raw])
    assert (np.abs(cube[:, :2] - START) <= 0.02 + 1e-6).all()  # the cube starts on the robot's side of the pillar
    env = task.active[0]
    body = env.sim.model.body_name2id(env.pillar.root_body)
    assert np.allclose(env.sim.data.body_xpos[body], PILLAR_CENTER)  # a physical box, fixed on the table
    assert env.sim.model.body_weldid[body] == 0 and (env.sim.model.geom_contype[list(env._pillar_geoms)] > 0).all()
    assert START[0] < PILLAR_CENTER[0] - PILLAR_HALF[0] and GOAL[0] > PILLAR_CENTER[0] + PILLAR_HALF[0]
    obs, done, success = task.step(np.zeros((2, 7)))
    assert all(v.shape == (2, PILLAR_DIMS[k]) and np.isfinite(v).all() for k, v in obs.items())
    assert not done.any() and not success.any() and not task.failed.any()
    assert isinstance(task.expert(0), PillarExpert)


def _run_the_average(task, n: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Roll out the expert with side 0, the mean of its two modes (-1 and +1), on ``n`` episodes
    (seed 0) until all end; returns the steps taken, the final success flags, each episode's
    length and the expert's phase per step ``(steps, n)``."""
    task.reset(n, seed=0)
    expert = task.expert(0)
    expert.side[:] = 0.0
    obs, done, steps, lengths, phases = task._stack(task.raw), np.zeros(n, bool), 0, np.zeros(n, int), []
    while not done.all():
        lengths += ~done
        obs, done, success = task.step(expert.act(obs))
        phases.append(expert.phase.copy())
        steps += 1
    return steps, success, lengths, np.stack(phases)


def test_the_average_of_the_modes_hits_the_pillar(task):
    """The expert with side 0, the mean of its two modes (-1 and +1): straight from the start to the
    goal. It touches the pillar, which ends the episode as a failure, long before the step limit."""
    steps, success, _, _ = _run_the_average(task, 2)
    assert task.failed.all() and not success.any() and steps < 90  # the expert needs more than 100 steps to the goal
    assert all(env.touched for env in task.active) and not any(env._check_success() for env in task.active)


def test_pillar_expert_succeeds_in_both_modes():
    demos = collect_demos("pillar", 6, seed=0, batch=6)
    # the expert's success rate and side split over 100 episodes: benchmarks/results/pillar_expert.md
    assert demos.meta["expert_success_rate"] == 1.0 and demos.n_episodes == 6
    assert demos.obs_dims == PILLAR_DIMS and demos.action.shape[1] == 7 and np.abs(demos.action).max() <= 1.0
    lengths = np.diff(np.concatenate([[0], demos.episode_ends]))
    assert (lengths < TASKS["pillar"]().max_steps).all()
    # which side each episode passed on, read off the cube's path: its y while beside the pillar
    sides = []
    for start, stop in demos.episodes():
        cube = demos.obs["object-state"][start:stop, :3]
        beside = np.abs(cube[:, 0] - PILLAR_CENTER[0]) < PILLAR_HALF[0]
        assert beside.any() and (np.abs(cube[beside, 1]) > PILLAR_HALF[1] + 0.1).all()  # clear of it
        sides.append(passed_side(cube))
    assert set(sides) == {-1.0, 1.0}
    task = make_env("pillar")
    task.reset(6, seed=0)
    assert list(task.expert(0).side) == sides  # the expert's random choice is the side it passed on


def test_pillar_outcomes_classify_paths():
    classify = load_benchmark("pillar_outcomes").classify
    t = np.linspace(0, 1, 50)[:, None]
    rest = np.array([-0.16, 0.0, 0.82])
    # lifted, then straight at the pillar until it is touched: head-on, no side, never left the centre line
    lifted = rest + t * np.array([0.13, 0.0, 0.08])
    straight = classify(lifted, lifted + [0, 0, 0.02], touched=True, success=False)
    assert straight == {"outcome": "touched, head-on", "side": 0, "choice_x": None, "switched": False}
    # lifted, sideways at the staging point to y = -0.2, then past the pillar, not set down
    side = np.concatenate([rest + t * [0, -0.2, 0.08], rest + [0, -0.2, 0.08] + t * [0.3, 0, 0]])
    passed = classify(side, side, touched=False, success=False)
    assert passed["outcome"] == "passed, not set down" and passed["side"] == -1
    assert passed["choice_x"] == pytest.approx(-0.16) and not passed["switched"]
    # out to the left, back across the centre line to the right, then past the pillar: a switch
    zigzag = np.concatenate([rest + t * [0, 0.1, 0.08], rest + [0.05, 0.1, 0.08] + t * [0, -0.3, 0], side[50:]])
    assert classify(zigzag, zigzag, touched=False, success=False)["switched"]
    # a touch far off the centre line; a grasp that never lifts; a success wins over everything
    assert classify(side[:60], side[:60], touched=True, success=False)["outcome"] == "touched, beside"
    assert classify(side, side, touched=True, success=False)["outcome"] == "touched, past it"
    still = np.repeat(rest[None], 50, axis=0)
    assert classify(still, still, touched=False, success=False)["outcome"] == "not lifted"
    assert classify(side, side, touched=False, success=True)["outcome"] == "success"
    assert classify(lifted, lifted, touched=False, success=False)["outcome"] == "stalled"


def test_pillar_outcomes_refuses_bad_counts(capsys):
    with pytest.raises(SystemExit):
        load_benchmark("pillar_outcomes").main(["--episodes", "0"])
    assert "--episodes must be >= 1" in capsys.readouterr().err


@pytest.fixture(scope="module")
def reach():
    return make_env("pillar-reach")


def test_reach_env_has_a_fixed_cube_and_a_narrower_pillar(reach):
    assert reach.env_name == "ReachPillar" and reach.max_steps == 150
    obs = reach.reset(3, seed=4)
    assert reach.obs_dims == PILLAR_DIMS
    cube = obs["object-state"][:, :7]  # position and quaternion: the same in every episode, to within 5 mm
    assert np.allclose(cube, cube[0], atol=0.005) and np.allclose(cube[0, :2], START) and np.allclose(cube[0, 3:7], [0, 0, 0, 1])
    env = reach.active[0]
    size = env.sim.model.geom_size[list(env._pillar_geoms)[0]]
    assert np.allclose(size, ReachPillar.pillar_half) and ReachPillar.pillar_half[1] < PILLAR_HALF[1]
    assert not reach.step(np.zeros((3, 7)))[1].any()


def test_reach_modes_share_the_approach_and_their_average_hits_the_pillar(reach):
    reach.reset(6, seed=1)
    expert = reach.expert(1)
    assert isinstance(expert, ReachExpert) and set(expert.side) == {-1.0, 1.0}
    obs, done, eef, quat, phase = reach._stack(reach.raw), np.zeros(6, bool), [], [], []
    while not done.all():
        obs, done, success = reach.step(expert.act(obs))
        eef.append(obs["robot0_eef_pos"]), quat.append(obs["robot0_eef_quat"]), phase.append(expert.phase.copy())
    eef, quat, phase = np.stack(eef), np.stack(quat), np.stack(phase)
    assert success.all() and not reach.failed.any()
    branch = np.argmax(phase >= 2, axis=0)  # the step each episode swerved
    for i in range(6):
        assert passed_side(eef[:, i]) == expert.side[i]  # the side drawn is the side passed on
        approach = eef[branch[i] - 10:branch[i], i]
        assert (np.abs(approach[:, 1]) < 0.01).all()  # on the centre line up to the swerve, either mode
    # nothing observed at the swerve tells the episodes apart: the orientation no longer carries the
    # arm's initial joint noise, and every episode is on the centre line (checked above)
    at_branch = np.stack([quat[branch[i], i] for i in range(6)])
    assert at_branch.std(axis=0).max() < 0.005 and quat[0].std(axis=0).max() > 0.005
    # beside the pillar the gripper is more than 5 cm off its centre line (the pillar's half width is 2 cm)
    beside = np.abs(eef[:, :, 0]) < ReachPillar.pillar_half[0]
    assert beside.any(axis=0).all() and (np.abs(eef[:, :, 1])[beside] > 0.05).all()
    # the average of the two modes: straight into the pillar within one executed chunk (8 steps) of the swerve
    steps, success, lengths, phase = _run_the_average(reach, 6)
    assert reach.failed.all() and not success.any()
    assert ((lengths - np.argmax(phase >= 2, axis=0)) <= 8).all()


def test_reach_success_is_the_gripper_over_the_goal(reach):
    reach.reset(1, seed=0)
    env = reach.active[0]
    assert not env._check_success()
    site = env.sim.data.site_xpos[env.robots[0].eef_site_id["right"]]
    assert np.linalg.norm(site - REACH_GOAL) > REACH_RADIUS
    env.touched = True
    site[:] = REACH_GOAL  # the check reads the simulator's site position
    assert not env._check_success()  # a touch fails the episode even at the goal
    env.touched = False
    assert env._check_success()


def test_pillar_outcomes_on_the_reach_task(tmp_path):
    script = load_benchmark("pillar_outcomes")
    assert script.main(["--task", "pillar-reach", "--demos", "2", "--demo-batch", "2", "--epochs", "1", "--seeds", "1",
                        "--episodes", "2", "--methods", "regression", "--width", "16", "--out", str(tmp_path),
                        "--name", "reach"]) == 0
    out = json.loads((tmp_path / "reach.json").read_text())["results"]
    shares = out["summary"]["regression"]["outcomes"]
    assert sum(v["mean"] for v in shares.values()) == pytest.approx(1.0)
    assert shares["not lifted"]["mean"] == 0.0  # the gripper's own path: nothing to lift
    assert "pillar-reach task" in (tmp_path / "reach.md").read_text() and (tmp_path / "reach.png").exists()
