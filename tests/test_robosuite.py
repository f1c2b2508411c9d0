"""robosuite Lift: the scripted expert, the batched task and a policy rollout (needs the [robot] extra)."""
import os

import numpy as np
import pytest
import torch

if os.environ.get("TORCHCFM_LOCAL_REQUIRE_ROBOT"):  # CI's robot venv: a failed import must fail, not skip
    import robosuite  # noqa: F401
else:
    pytest.importorskip("robosuite", reason="robosuite tasks need the [robot] extra: pip install -e '.[robot]'")

from torchcfm_local.policy import collect_demos, evaluate, load_demos, make_env, save_demos  # noqa: E402
from torchcfm_local.policy.cli import build_policy  # noqa: E402


@pytest.fixture(scope="module")
def lift_demos():
    return collect_demos("lift", 6, seed=0, batch=6)


def test_lift_expert_succeeds_with_both_grasp_axes(lift_demos):
    assert lift_demos.meta["expert_success_rate"] == 1.0  # measured: 200/200 at seed 0
    assert lift_demos.obs_dims == {"object-state": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4,
                                   "robot0_gripper_qpos": 2}
    assert lift_demos.action.shape[1] == 7 and np.abs(lift_demos.action).max() <= 1.0
    task = make_env("lift")
    task.reset(6, seed=0)
    assert set(task.expert(0).axis) == {0, 1}  # the multimodal choice: both grasp axes occur


def test_lift_demo_file_and_policy_rollout(lift_demos, tmp_path):
    again = load_demos(save_demos(tmp_path / "lift.npz", lift_demos))
    assert np.array_equal(again.action, lift_demos.action)
    torch.manual_seed(0)
    policy = build_policy("lfm", again.obs_dims, 7, "mlp", 32)
    policy.fit(again, batches_per_block=5, progress=False, seed=0)
    report = evaluate(policy, "lift", 2, seed=5)
    assert 0.0 <= report.success_rate <= 1.0 and len(report.chunk_seconds) >= 1
    assert all(b <= 2 for b in report.chunk_batch)


def test_lift_bad_action_shape():
    task = make_env("lift")
    task.reset(2, seed=0)
    with pytest.raises(ValueError, match=r"action must have shape \(2, 7\)"):
        task.step(np.zeros((2, 6)))


def test_can_expert_places_the_can_on_both_sides():
    demos = collect_demos("can", 6, seed=0, batch=6)
    assert demos.meta["expert_success_rate"] == 1.0
    task = make_env("can")
    task.reset(6, seed=0)
    assert set(task.expert(0).side) == {-1.0, 1.0}
