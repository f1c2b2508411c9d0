"""robosuite Lift: the scripted expert, the batched task and a policy rollout (needs the [robot] extra)."""

import numpy as np
import pytest
import torch

from robot import require_robosuite

require_robosuite()

from torchcfm_local.policy import collect_demos, evaluate, load_demos, make_env, save_demos  # noqa: E402
from torchcfm_local.policy.cli import build_policy  # noqa: E402
from torchcfm_local.policy.robosuite_tasks import OBS_KEYS  # noqa: E402


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
    task = make_env("lift")
    report = evaluate(policy, task, 2, seed=5, record=True)
    assert 0.0 <= report.success_rate <= 1.0 and len(report.chunk_seconds) >= 1
    assert all(b <= 2 for b in report.chunk_batch)
    # a fixed seed fixes the placements and the policy's noise: the same rollout again, step for step
    repeat = evaluate(policy, task, 2, seed=5, record=True)
    assert np.array_equal(repeat.successes, report.successes) and repeat.chunk_batch == report.chunk_batch
    assert all(np.array_equal(repeat.trace[k], report.trace[k]) for k in report.trace)
    assert not np.array_equal(task.reset(2, seed=6)["object-state"], report.trace["object-state"][0])


class _ExpertAsPolicy:
    """The scripted expert behind the policy interface: it acts on the observations the rollout
    runner hands it (the newest of each history), so a runner that mixes up episodes or steps fails."""

    n_obs_steps = 2

    def __init__(self, task, seed):
        self.task, self.seed, self.expert = task, seed, None
        self.obs_dims = {k: 1 for k in OBS_KEYS}

    def predict_action(self, obs, generator=None):
        live = np.flatnonzero(~self.task.done)
        if self.expert is None:
            self.expert = self.task.expert(self.seed)
        full = self.task._stack(self.task.raw)
        for k in obs:
            assert obs[k].shape[:2] == (len(live), self.n_obs_steps)
            full[k][live] = obs[k][:, -1]
        return {"action": torch.from_numpy(self.expert.act(full)[live][:, None])}


class _ConstantPolicy:
    """Zero (or, with ``noise``, uniform random) actions in chunks of 8: it never lifts the cube."""

    n_obs_steps, obs_dims = 1, {"robot0_eef_pos": 3}

    def __init__(self, noise=False):
        self.noise = noise

    def predict_action(self, obs, generator=None):
        shape = (len(obs["robot0_eef_pos"]), 8, 7)
        if self.noise:
            return {"action": torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1}
        return {"action": torch.zeros(shape, dtype=torch.float64)}


def test_lift_rollout_scores_the_expert_and_wrong_policies():
    task = make_env("lift")
    report = evaluate(_ExpertAsPolicy(task, seed=5), task, 4, seed=5)
    assert report.success_rate == 1.0  # measured: 4/4 at seeds 5 and 6 (the expert: 200/200 at seed 0)
    # finished episodes leave the batch: one call per step, serving fewer episodes once some succeed
    assert report.chunk_batch[0] == 4 and report.chunk_batch[-1] < 4
    assert all(a >= b for a, b in zip(report.chunk_batch, report.chunk_batch[1:]))
    assert len(report.chunk_batch) < task.max_steps
    for noise in (False, True):
        wrong = evaluate(_ConstantPolicy(noise), task, 2, seed=5)
        assert wrong.success_rate == 0.0 and not wrong.successes.any()
        # nobody succeeds: every call serves both episodes until the step limit (150 steps, chunks of 8)
        assert wrong.chunk_batch == [2] * -(-task.max_steps // 8)


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
    # fixed seeds fix the can's placement too (robosuite's composite sampler is reseeded)
    first = [r["Can_pos"].copy() for r in task.raw]
    task.reset(6, seed=0)
    assert all(np.array_equal(a, r["Can_pos"]) for a, r in zip(first, task.raw))
