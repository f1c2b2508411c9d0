"""Policies on the toy point task: demos, windows, normalization, training, rollouts, files, bad input."""
import json

import numpy as np
import pytest
import torch

import torchcfm_local as tl
from torchcfm_local.policy import (Demos, FlowPolicy, Normalizer, RegressionPolicy, collect_demos, evaluate,
                                   load_demos, load_policy, make_env, save_demos)
from torchcfm_local.policy.cli import build_policy, main as cli_main
from torchcfm_local.policy.demos import windows


@pytest.fixture(scope="module")
def demos():
    return collect_demos("point", 200, seed=0)


@pytest.fixture(scope="module")
def trained(demos):
    torch.manual_seed(0)
    flow = FlowPolicy(demos.obs_dims, 2, schedule=tl.OUSchedule.global_flow(), network="mlp",
                      network_config={"width": 128})
    flow.fit(demos, epochs=100, lr=1e-3, seed=0, progress=False)
    reg = RegressionPolicy(demos.obs_dims, 2, width=128)
    reg.fit(demos, epochs=50, seed=0, progress=False)
    return flow, reg


def test_expert_is_bimodal_and_always_succeeds(demos):
    assert demos.meta["expert_success_rate"] == 1.0 and demos.n_episodes == 200
    # the lateral position halfway up tells the side: both sides are used about equally
    sides = []
    for start, stop in demos.episodes():
        y = demos.obs["pos"][start:stop]
        sides.append(np.sign(y[np.argmin(np.abs(y[:, 1])), 0]))
    assert 0.35 < np.mean(np.array(sides) > 0) < 0.65


def test_generative_policy_beats_regression(trained):
    flow, reg = trained
    flow_rate = evaluate(flow, "point", 100, seed=1).success_rate
    reg_rate = evaluate(reg, "point", 100, seed=1).success_rate
    assert reg_rate <= 0.2, reg_rate  # it averages left and right and drives into the obstacle (measured 0.0)
    assert flow_rate >= 0.6, flow_rate  # measured 0.85


def test_rollout_trace_shows_both_modes(trained):
    report = evaluate(trained[0], "point", 60, seed=2, record=True)
    pos = report.trace["pos"]  # (steps + 1, n, 2)
    x_mid = pos[np.argmin(np.abs(pos[..., 1] - 0.0), axis=0), np.arange(pos.shape[1]), 0]
    assert (x_mid > 0.3).sum() >= 5 and (x_mid < -0.3).sum() >= 5
    assert len(report.chunk_seconds) == len(report.chunk_batch) and report.seconds_per_chunk > 0


class _ExpertOrNaN:
    """A stand-in policy: round the obstacle on the right (via (0.65, 0)) to the goal, except NaN
    for the episodes whose observation window starts left of x = 0 or, with ``late``, for every
    episode from the second call on."""

    n_obs_steps, obs_dims = 2, {"pos": 2}

    def __init__(self, late=False):
        self.calls, self.late = 0, late

    def predict_action(self, obs_dict, generator=None):
        pos = np.asarray(obs_dict["pos"][:, -1], np.float64)
        target = np.where(pos[:, 1:] < 0.0, [0.65, 0.0], [0.0, 1.0])  # round the obstacle on the right
        step = target - pos
        action = np.repeat((step / np.linalg.norm(step, axis=1, keepdims=True))[:, None], 8, axis=1)
        bad = obs_dict["pos"][:, 0, 0] < 0.0 if not self.late else np.full(len(pos), self.calls > 0)
        action[bad] = np.nan
        self.calls += 1
        return {"action": torch.from_numpy(action.astype(np.float32))}


def test_rollout_ends_episodes_with_nonfinite_actions_as_failures():
    env = make_env("point")
    sent = []
    step = env.step
    env.step = lambda action: (sent.append(np.asarray(action)), step(action))[1]
    with pytest.warns(RuntimeWarning, match="returned NaN or Inf"):
        report = evaluate(_ExpertOrNaN(), env, 40, seed=3)
    start_x = make_env("point").reset(40, seed=3)["pos"][:, 0]
    assert (report.nonfinite == (start_x < 0)).all() and 0 < report.nonfinite.sum() < 40
    assert not report.successes[report.nonfinite].any()
    assert report.successes[~report.nonfinite].all()  # the others ran on and arrived
    assert all(np.isfinite(a).all() for a in sent)  # no NaN ever reached the environment
    with pytest.warns(RuntimeWarning, match="40 of 40 episodes"):
        late = evaluate(_ExpertOrNaN(late=True), "point", 40, seed=3)
    assert late.success_rate == 0.0 and late.nonfinite.all() and len(late.chunk_seconds) == 2


def test_windows_follow_diffusion_policy_padding():
    obs = np.arange(5, dtype=np.float32)[:, None]
    act = 10 + np.arange(5, dtype=np.float32)[:, None]
    d = Demos({"o": obs}, act, [3, 5])
    ow, aw = windows(d, ["o"], n_obs_steps=2, horizon=4)
    assert ow.shape == (5, 2, 1) and aw.shape == (5, 4, 1)
    assert ow[0, :, 0].tolist() == [0, 0] and ow[1, :, 0].tolist() == [0, 1]  # first step repeated
    assert aw[2, :, 0].tolist() == [11, 12, 12, 12]  # last step of episode 1 repeated, episode 2 not used
    assert ow[3, :, 0].tolist() == [3, 3] and aw[3, :, 0].tolist() == [13, 13, 14, 14]


def test_normalizer_round_trip_and_constant_features():
    torch.manual_seed(0)
    data = torch.cat([torch.randn(100, 3) * 5 + 2, torch.full((100, 1), 7.0)], dim=1)
    norm = Normalizer.fit(data)
    y = norm.normalize(data)
    assert y[:, :3].min() >= -1 - 1e-6 and y[:, :3].max() <= 1 + 1e-6
    assert torch.allclose(y[:, :3].amin(0), torch.full((3,), -1.0)) and torch.all(y[:, 3] == 0)
    assert torch.allclose(norm.unnormalize(y), data, atol=1e-5)
    again = Normalizer.from_state(norm.state_dict())
    assert torch.equal(again.normalize(data), y)
    with pytest.raises(ValueError, match="last axis"):
        norm.normalize(torch.zeros(2, 3))


def test_policy_file_round_trip(trained, tmp_path):
    flow, reg = trained
    obs = {"pos": torch.randn(7, 2, 2) * 0.3}
    for policy in (flow, reg):
        policy.save(tmp_path / "p.pt")
        again = load_policy(tmp_path / "p.pt")
        a = policy.predict_action(obs, generator=torch.Generator().manual_seed(3))
        b = again.predict_action(obs, generator=torch.Generator().manual_seed(3))
        assert a["action"].shape == (7, 8, 2) and a["action_pred"].shape == (7, 16, 2)
        assert torch.equal(a["action"], b["action"])
        assert torch.equal(a["action"], a["action_pred"][:, 1:9])  # executed: steps To-1 .. To-1+Ta


def test_demo_file_round_trip_and_bad_files(demos, tmp_path):
    path = save_demos(tmp_path / "d.npz", demos)
    again = load_demos(path)
    assert np.array_equal(again.action, demos.action) and np.array_equal(again.episode_ends, demos.episode_ends)
    assert again.meta == demos.meta and np.array_equal(again.obs["pos"], demos.obs["pos"])
    with pytest.raises(FileNotFoundError, match="lfm-policy demos"):
        load_demos(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a torchcfm_local demo file"):
        load_demos(tmp_path / "other.npz")
    with np.load(path) as data:
        contents = {k: data[k] for k in data.files}
    np.savez(tmp_path / "newer.npz", **{**contents, "version": np.array(99)})
    with pytest.raises(ValueError, match="version 99"):
        load_demos(tmp_path / "newer.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable"):
        load_demos(tmp_path / "junk.npz")
    with pytest.raises(ValueError, match="episode_ends"):
        Demos({"o": np.zeros((4, 1))}, np.zeros((4, 1)), [2, 3])


def test_policy_bad_input(trained, demos):
    flow = trained[0]
    good = np.zeros((3, 2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"lacks keys \['pos'\]"):
        flow.predict_action({"position": good})
    with pytest.raises(ValueError, match=r"shape \(B, 2, 2\)"):
        flow.predict_action({"pos": np.zeros((3, 3, 2))})  # wrong observation horizon
    with pytest.raises(ValueError, match=r"shape \(B, 2, 2\)"):
        flow.predict_action({"pos": np.zeros((3, 2, 5))})  # wrong observation dim
    with pytest.raises(ValueError, match="NaN"):
        flow.predict_action({"pos": np.full((3, 2, 2), np.nan)})
    with pytest.raises(TypeError, match="dict"):
        flow.predict_action(good)
    with pytest.raises(RuntimeError, match="not trained"):
        FlowPolicy({"pos": 2}, 2, network="mlp").predict_action({"pos": good})
    with pytest.raises(ValueError, match="action_dim=3"):
        FlowPolicy({"pos": 2}, 3, network="mlp").fit(demos, epochs=1)
    with pytest.raises(ValueError, match="lack observation key 'vel'"):
        FlowPolicy({"vel": 2}, 2, network="mlp").fit(demos, epochs=1)
    with pytest.raises(ValueError, match="horizon=4 must cover"):
        FlowPolicy({"pos": 2}, 2, horizon=4, n_action_steps=8)
    with pytest.raises(ValueError, match="unknown task 'lift2'"):
        make_env("lift2")
    with pytest.raises(ValueError, match="shape"):
        env = make_env("point")
        env.reset(4)
        env.step(np.zeros((4, 3)))


def test_global_policy_gets_lfm_parameter_count(demos):
    lfm = build_policy("lfm", demos.obs_dims, 2, "mlp", 64)
    glob = build_policy("global", demos.obs_dims, 2, "mlp", 64)
    assert glob.flow.n_blocks == 1 and lfm.flow.n_blocks == 3
    assert abs(glob.n_parameters() - lfm.n_parameters()) / lfm.n_parameters() < 0.01
    # equal sampling cost: 16 RK4 steps over all blocks, rounded up to a multiple of the LFM blocks
    assert glob.ode.steps * glob.flow.n_blocks == lfm.ode.steps * lfm.flow.n_blocks == 18
    assert build_policy("global", demos.obs_dims, 2, "mlp", 64, lfm_blocks=4).ode.steps == 16
    # the same from a recipe: other blocks and path, still equal parameters
    from torchcfm_local.policy.recipe import PolicyRecipe

    recipe = PolicyRecipe(blocks=2, path="linear", width=64)
    lfm, glob = (build_policy(m, demos.obs_dims, 2, recipe=recipe) for m in ("lfm", "global"))
    assert lfm.flow.n_blocks == 2 and glob.flow.n_blocks == 1 and glob.recipe == lfm.recipe == recipe
    assert type(glob.flow.matcher).__name__ == type(lfm.flow.matcher).__name__ == "ConditionalFlowMatcher"
    assert abs(glob.n_parameters() - lfm.n_parameters()) / lfm.n_parameters() < 0.01


def test_cli_three_commands(tmp_path, capsys):
    d, p = str(tmp_path / "d.npz"), str(tmp_path / "p.pt")
    assert cli_main(["demos", "--task", "point", "--episodes", "20", "--out", d]) == 0
    assert cli_main(["train", "--demos", d, "--method", "lfm", "--epochs", "2", "--width", "32", "--out", p]) == 0
    assert cli_main(["eval", "--task", "point", "--policy", p, "--episodes", "5"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines[0]["episodes_kept"] == 20 and lines[1]["method"] == "lfm" and 0 <= lines[2]["success_rate"] <= 1
    assert lines[1]["recipe"]["width"] == 32 and lines[1]["recipe"]["epochs"] == 2 and load_policy(p).recipe.width == 32
    chosen = lines[1]["sampling"]  # by default the steps are picked per block at SAMPLING_TOL
    assert len(chosen["block_steps"]) == 3 and load_policy(p).ode.block_steps == tuple(chosen["block_steps"])
    q = str(tmp_path / "q.pt")
    assert cli_main(["train", "--demos", d, "--epochs", "2", "--width", "32", "--sampling-tol", "0.03", "--out", q]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sampling"] == chosen  # the default is 0.03
    assert cli_main(["train", "--demos", d, "--epochs", "2", "--width", "32", "--sampling-tol", "none", "--out", q]) == 0
    equal = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["sampling"]
    assert equal == {"solver": "rk4", "atol": 1e-6, "rtol": 1e-6, "steps": 6} and load_policy(q).ode.block_steps is None
    assert cli_main(["train", "--demos", d, "--method", "regression", "--epochs", "2", "--width", "32", "--out", q]) == 0
    for bad in (["--method", "regression", "--sampling-tol", "0.05"], ["--sampling-tol", "0"], ["--sampling-tol", "x"]):
        with pytest.raises(SystemExit):
            cli_main(["train", "--demos", d, *bad, "--out", q])


def test_mlp_policies_keep_their_measured_network():
    """An MLP policy builds POLICY_MLP (SiLU, Fourier time) whatever tl.MLP's default is; network_config overrides it."""
    from torchcfm_local.policy import POLICY_MLP

    net = FlowPolicy({"pos": 2}, 2, network="mlp").flow.nets[0]
    assert {k: net.config[k] for k in POLICY_MLP} == POLICY_MLP and isinstance(net.net[1], torch.nn.SiLU)
    net = FlowPolicy({"pos": 2}, 2, network="mlp", network_config={"activation": "softplus20"}).flow.nets[0]
    assert net.config["activation"] == "softplus20" and isinstance(net.net[1], tl.networks.Softplus20)


def test_flow_policy_learning_rate_defaults_to_the_recipe(demos, monkeypatch):
    seen = []
    monkeypatch.setattr(tl.LocalFlowMatching, "fit", lambda self, x, **kw: seen.append(kw["lr"]))
    plain = FlowPolicy(demos.obs_dims, 2, network="mlp", network_config={"width": 32})
    plain.fit(demos, batches_per_block=1)
    from torchcfm_local.policy.recipe import PolicyRecipe
    recipe = PolicyRecipe(lr=3e-4)
    built = FlowPolicy(demos.obs_dims, 2, network="mlp", network_config={"width": 32}, recipe=recipe)
    built.fit(demos, batches_per_block=1)
    built.fit(demos, batches_per_block=1, lr=5e-3)
    assert seen == [PolicyRecipe().lr, 3e-4, 5e-3]
