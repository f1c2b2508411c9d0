"""robosuite NutAssemblySquare: the task, its scripted expert and its demos (needs the [robot] extra)."""
import json

import numpy as np
import pytest

from robot import require_robosuite

require_robosuite()

from torchcfm_local.policy import TASKS, collect_demos, load_demos, make_env  # noqa: E402
from torchcfm_local.policy import tasks as tasks_module  # noqa: E402
from torchcfm_local.policy.cli import main as cli_main  # noqa: E402
from torchcfm_local.policy.robosuite_tasks import OBS_KEYS, SquareExpert, _square_plan, _wrap  # noqa: E402

#: object-state: nut position relative to the eef (3), its orientation relative to the eef (4),
#: the nut's position (3) and orientation (4, x y z w)
SQUARE_DIMS = {"object-state": 14, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2}


@pytest.fixture(scope="module")
def square_demos():
    return collect_demos("square", 2, seed=0, batch=2)


def test_square_env_observations_and_fixed_initial_states():
    task = make_env("square")
    assert task.env_name == "NutAssemblySquare" and task.max_steps == 400 and task.action_dim == 7
    obs = task.reset(2, seed=3)
    assert set(obs) == set(OBS_KEYS) and task.obs_dims == SQUARE_DIMS
    for key, value in obs.items():
        assert value.shape == (2, SQUARE_DIMS[key]) and value.dtype == np.float32 and np.isfinite(value).all()
    assert np.allclose(obs["object-state"][:, 7:10], [r["SquareNut_pos"] for r in task.raw])  # the layout above
    obs, done, success = task.step(np.zeros((2, 7)))
    assert all(v.shape == (2, SQUARE_DIMS[k]) and np.isfinite(v).all() for k, v in obs.items())
    assert not done.any() and not success.any()  # robosuite's own check: the nut is not on its peg
    # a fixed seed fixes the nut's placement (robosuite's composite sampler is reseeded too), another seed moves it
    again = task.reset(2, seed=3)["object-state"][:, 7:]
    assert np.array_equal(again, task.reset(2, seed=3)["object-state"][:, 7:])
    assert not np.allclose(again, task.reset(2, seed=4)["object-state"][:, 7:])
    assert isinstance(task.expert(0), SquareExpert)


def test_square_plan_keeps_the_gripper_in_reach():
    for nut_yaw in np.linspace(-np.pi, np.pi, 73):
        grasp, goal = _square_plan(nut_yaw)
        assert abs(_wrap(grasp - nut_yaw, np.pi)) < 1e-9  # fingers across the handle
        assert goal in (np.pi / 2, np.pi, -np.pi / 2)  # the handle never points away from the robot
        turn = _wrap(goal - nut_yaw)
        assert abs(turn) <= np.pi / 2 + 1e-9
        assert np.radians(-95) <= grasp <= np.radians(185) and np.radians(-95) <= grasp + turn <= np.radians(185)


def test_square_expert_succeeds_and_demos_keep_successes(square_demos):
    demos = square_demos
    assert demos.meta == {"task": "square", "seed": 0, "episodes_attempted": 2, "episodes_kept": 2,
                          "expert_success_rate": 1.0}  # measured: 100/100 at seed 0 and at seed 1 (batch 20)
    assert demos.obs_dims == SQUARE_DIMS and demos.action.shape[1] == 7 and np.abs(demos.action).max() <= 1.0
    lengths = np.diff(np.concatenate([[0], demos.episode_ends]))
    assert (lengths < TASKS["square"]().max_steps).all()  # about 170 steps (134 .. 229 over 200 episodes)
    task = make_env("square")
    task.reset(2, seed=0)
    assert set(task.expert(0).side) == {-1.0, 1.0}  # the multimodal choice: both via-point sides occur


def test_square_demos_drop_failed_episodes(square_demos, monkeypatch):
    """With the horizon cut to the shorter episode's length the longer one fails, and only the
    shorter one is kept (fixed seeds replay the same episodes step for step)."""
    lengths = np.diff(np.concatenate([[0], square_demos.episode_ends]))
    assert lengths[0] != lengths[1]
    short, square = int(lengths.min()), TASKS["square"]
    monkeypatch.setitem(tasks_module.TASKS, "square", lambda **kw: square(**{"max_steps": short, **kw}))
    cut = collect_demos("square", 2, seed=0, batch=2)
    assert cut.meta["episodes_kept"] == 1 and cut.meta["expert_success_rate"] == 0.5
    keep = int(np.argmin(lengths))
    start = 0 if keep == 0 else int(square_demos.episode_ends[0])
    assert np.array_equal(cut.action, square_demos.action[start:start + short])
    monkeypatch.setitem(tasks_module.TASKS, "square", lambda **kw: square(**{"max_steps": 20, **kw}))
    with pytest.raises(RuntimeError, match="succeeded in none of 2 episodes"):
        collect_demos("square", 2, seed=0, batch=2)


def test_square_through_lfm_policy_demos(tmp_path, capsys):
    out = tmp_path / "square.npz"
    assert cli_main(["demos", "--task", "square", "--episodes", "1", "--seed", "0", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["task"] == "square" and printed["episodes_kept"] == 1
    assert load_demos(out).obs_dims == SQUARE_DIMS
