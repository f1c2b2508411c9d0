"""Reflow (torchcfm_local.distillation.reflow): a trained flow retrained on its own couplings along straight lines.

Every model here is tiny (2-D data, MLP width 32, a few hundred batches) so that the file runs in
seconds; the claims tested are the ones that hold even for such briefly trained models: reflow
keeps the sampled distribution and the invertibility, and straightens the paths (fewer Euler steps
are needed for the same accuracy).
"""
import copy
import json
import math

import pytest
import torch
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, VariancePreservingConditionalFlowMatcher

import torchcfm_local as tl
from conftest import two_gaussians
from torchcfm_local.distillation import ReflowReport, distill_plan, reflow, reflow_policy, step_coefficients, teacher_pairs

#: The accurate solver of the assertions (the reflow default, and the "quality" sampling preset).
ACCURATE = tl.ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)
FAST = dict(batch_size=256, n_eval=400, seed=0)
SHIFT, SCALE = torch.tensor([5.0, -3.0]), torch.tensor([1.0, 3.0])


def mlp(n):
    return tl.MLP(2, width=32, depth=2)


def cond_mlp(n):
    return tl.MLP(2, width=32, depth=2, cond_features=2)


def z_batch(n=1000, seed=5):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def far_data(n, seed):
    """Two Gaussians stretched and moved away from the origin (so that standardization matters)."""
    return two_gaussians(n, seed) * SCALE + SHIFT


def cond_data(n, seed):
    """``x`` near ``(2 c, 0)`` for a condition ``c`` in {-1, +1}: the condition picks the mode."""
    g = torch.Generator().manual_seed(seed)
    c = torch.randint(0, 2, (n, 1), generator=g) * 2.0 - 1.0
    return torch.cat([2 * c, torch.zeros(n, 1)], 1) + 0.4 * torch.randn(n, 2, generator=g), c


@pytest.fixture(scope="module")
def glob():
    """A global flow (trigonometric path) fitted briefly on two Gaussians: its paths bend to split
    the noise between the modes. (Measured energy distance to held-out data 0.008; a Gaussian with
    the data's moments: 0.16.)"""
    torch.manual_seed(0)
    model = tl.LocalFlowMatching(2, tl.OUSchedule.global_flow(), VariancePreservingConditionalFlowMatcher(sigma=0.0),
                                 velocity_factory=mlp)
    model.fit(two_gaussians(3000, 0), batches_per_block=600, batch_size=256, lr=3e-3, seed=0, progress=False,
              encode_final_pool=False)
    return model


@pytest.fixture(scope="module")
def glob_reflowed(glob):
    return reflow(glob, 2000, batches_per_block=300, **FAST)


@pytest.fixture(scope="module")
def lfm3():
    """A 3-block LFM behind a diagonal standardization, fitted briefly, and its reflow. (Measured energy
    distance to held-out data 0.022; a Gaussian with the data's moments: 0.09. With fewer batches the
    model stays near that Gaussian, and a reflow with its couplings reversed could not be told apart.)"""
    torch.manual_seed(0)
    model = tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.5, 3), velocity_factory=mlp)
    model.fit(far_data(3000, 0), batches_per_block=400, batch_size=256, seed=0, progress=False,
              encode_final_pool=False, standardize="diagonal")
    return model, *reflow(model, 2000, batches_per_block=300, **FAST)


@pytest.fixture(scope="module")
def conditional():
    torch.manual_seed(0)
    x, c = cond_data(3000, 1)
    model = tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.5, 2), velocity_factory=cond_mlp, cond_dim=1)
    model.fit(x, cond=c, batches_per_block=150, batch_size=256, seed=0, progress=False, encode_final_pool=False)
    return model, c, *reflow(model, 2000, cond=c, batches_per_block=300, **FAST)


def same_distribution(original, new, cond=None, shift=0.5):
    """``(ED(new, original), ED(original shifted, original))`` on samples from different z.

    The shift moves the original's samples by ``shift`` along x, a clearly different distribution
    whose distance sets the scale (a reflow that drifted by that much would fail the comparison)."""
    ref = original.decode(z_batch(1000, 1), ode=ACCURATE, cond=cond)
    ours = new.decode(z_batch(1000, 2), ode=ACCURATE, cond=cond)
    moved = original.decode(z_batch(1000, 2), ode=ACCURATE, cond=cond) + torch.tensor([shift, 0.0])
    return tl.energy_distance(ours, ref), tl.energy_distance(moved, ref)


def round_trip_error(model, cond=None):
    """``max |encode(decode(z)) - z|`` over 500 z, with dopri5 at 1e-5."""
    z = z_batch(500)
    c = None if cond is None else cond.expand(500, -1)
    return float((model.encode(model.decode(z, ode=ACCURATE, cond=c), ode=ACCURATE, cond=c) - z).abs().max())


def assert_inverts(original, new, cond=None):
    """The reflowed model inverts at least about as well as the model it came from.

    With the same solver the round trip of a trained model is off by the solver's error, amplified
    by how the field stretches space (measured: 4e-4 to 1e-2 for the originals here, on values of
    size ~1-3; a reflowed global flow measured 1.5e-3 against its original's 7e-4). The reflowed
    model must stay within twice the original's error or below 1e-2 (the size of the solver error
    measured here); a decode that encode does not undo (e.g. blocks out of order) is off by O(1).
    """
    before, after = round_trip_error(original, cond), round_trip_error(new, cond)
    assert after < max(2 * before, 1e-2), (before, after)


# ---------------------------------------------------------------- global flow
def test_global_reflow_straightens_the_paths(glob, glob_reflowed):
    """On a briefly trained two-mode global flow, Euler decodes of the reflowed model are closer to
    its exact decode than the original's are to its own (measured: Euler-2 0.034 -> 0.011)."""
    _, report = glob_reflowed
    before, after = report.before.euler_mse, report.after.euler_mse
    assert sorted(before) == [1, 2, 4]
    assert after[2] < 0.6 * before[2], (before, after)
    assert after[1] < 0.6 * before[1], (before, after)
    assert report.before.adaptive_nfe > 0 and report.after.adaptive_nfe > 0
    assert len(report.blocks) == 1 and report.blocks[0].batches == 300
    assert report.blocks[0].final_loss < report.blocks[0].first_loss


def test_reflowed_copy_records_the_linear_path_and_leaves_the_original(glob, glob_reflowed):
    new, report = glob_reflowed
    assert type(new) is tl.LocalFlowMatching and new is not glob
    assert type(new.matcher) is ConditionalFlowMatcher and new.matcher.sigma == 0
    assert isinstance(glob.matcher, VariancePreservingConditionalFlowMatcher)
    assert report.original_path == "trig"
    assert new.schedule.to_list() == glob.schedule.to_list() and new.n_trained == glob.n_trained
    assert not any(torch.equal(a, b) for a, b in zip(new.nets[0].parameters(), glob.nets[0].parameters()))
    # distillation reads the path kind: one Euler step for the linear path, the trig rotation for the original
    seg = distill_plan(1, splits=2)[0]
    assert step_coefficients(new.matcher, seg) == (1.0, 0.5)
    assert step_coefficients(glob.matcher, seg) != (1.0, 0.5)


def test_global_reflow_keeps_the_distribution_and_inverts(glob, glob_reflowed):
    new, _ = glob_reflowed
    drift, scale = same_distribution(glob, new)
    assert drift < 0.25 * scale, (drift, scale)
    assert_inverts(glob, new)


def test_report_is_json_and_summarizes_the_curves(glob_reflowed):
    _, report = glob_reflowed
    assert isinstance(report, ReflowReport) and isinstance(report, tl.ReflowReport)
    data = json.loads(json.dumps(report.to_dict()))
    block = data["blocks"][0]
    assert "losses" not in block and block["batches"] == 300 and len(block["curve"]) == 20
    assert block["curve"][-1][0] == 300 and math.isclose(block["final_loss"], report.blocks[0].final_loss)
    assert set(data["before"]["euler_mse"]) == {"1", "2", "4"}
    assert data["ode"]["solver"] == "dopri5" and data["n_pairs"] == 2000
    assert "Euler-2 MSE" in report.summary()


def test_reflowed_model_saves_and_loads(glob_reflowed, tmp_path):
    new, _ = glob_reflowed
    new.save(tmp_path / "reflowed.pt")
    loaded = tl.LocalFlowMatching.load(tmp_path / "reflowed.pt")
    assert type(loaded.matcher) is ConditionalFlowMatcher
    z = z_batch(200)
    assert torch.equal(loaded.decode(z), new.decode(z))


def test_reflow_is_reproducible(glob):
    a, ra = reflow(glob, 300, batches_per_block=20, batch_size=100, n_eval=50, seed=3)
    b, rb = reflow(glob, 300, batches_per_block=20, batch_size=100, n_eval=50, seed=3)
    assert ra.blocks[0].losses == rb.blocks[0].losses
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---------------------------------------------------------------- LFM with a standardizer
def test_lfm_reflow_keeps_the_model_normal(lfm3):
    model, new, report = lfm3
    assert len(report.blocks) == 3 and [b.block for b in report.blocks] == [1, 2, 3]
    assert new.standardizer == model.standardizer and not new.standardizer.is_identity
    assert report.after.euler_mse[2] < report.before.euler_mse[2]
    drift, scale = same_distribution(model, new)
    assert drift < 0.25 * scale, (drift, scale)
    assert_inverts(model, new)
    # the log-density moves per point (measured ~0.1 nats) but not on average
    x = far_data(200, 9)
    lp_old, lp_new = model.log_prob(x, ode=ACCURATE), new.log_prob(x, ode=ACCURATE)
    assert torch.isfinite(lp_new).all() and abs(float(lp_new.mean() - lp_old.mean())) < 0.2


def test_lfm_couplings_are_the_chain_between_blocks(lfm3):
    """Block n's pairs are (x_n, x_{n-1}) of one chain: the standardized decode of z, block by block."""
    model, _, _ = lfm3
    z = z_batch(100)
    states, nfe = teacher_pairs(model, distill_plan(3), z, ode=ACCURATE)
    assert states.shape == (4, 100, 2) and len(nfe) == 3
    x2 = model.decode(z, blocks=[3], ode=ACCURATE)
    assert torch.allclose(states[1], x2, atol=1e-4)
    assert torch.allclose(model.standardizer.invert(states[-1]), model.decode(z, ode=ACCURATE), atol=1e-3)


# ---------------------------------------------------------------- conditional
def test_conditional_reflow_follows_the_condition(conditional):
    model, _, new, report = conditional
    assert len(report.blocks) == 2 and report.after.euler_mse[2] < report.before.euler_mse[2]
    for sign in (-1.0, 1.0):
        c = torch.full((1000, 1), sign)
        x = new.decode(z_batch(1000), ode=ACCURATE, cond=c)
        assert abs(float(x[:, 0].mean()) - 2 * sign) < 0.4, (sign, float(x[:, 0].mean()))
        drift, scale = same_distribution(model, new, cond=c)
        assert drift < 0.25 * scale, (sign, drift, scale)
    assert_inverts(model, new, torch.ones(1, 1))


def test_conditional_reflow_needs_well_shaped_conditions(conditional):
    model, c, _, _ = conditional
    few = dict(batches_per_block=2, batch_size=8, n_eval=8)
    with pytest.raises(ValueError, match="conditional.*needs cond"):
        reflow(model, 16, **few)
    with pytest.raises(ValueError, match=r"cond must have shape \(10, 1\)"):
        reflow(model, 16, cond=torch.ones(10, 2), **few)
    with pytest.raises(ValueError, match=r"cond must have shape \(m, 1\)"):
        reflow(model, 16, cond=torch.tensor(1.0), **few)
    with pytest.raises(TypeError, match="floating-point"):
        reflow(model, 16, cond=torch.ones(10, 1, dtype=torch.long), **few)
    with pytest.raises(ValueError, match="NaN"):
        reflow(model, 16, cond=torch.full((10, 1), math.nan), **few)
    # n_pairs rows (used in order), fewer rows (drawn from) and (m,) for cond_dim = 1 (as in fit) all work
    _, rep = reflow(model, 16, cond=c[:16], **few)
    assert rep.n_pairs == 16
    _, rep = reflow(model, 16, cond=c[:5, 0].numpy(), **few)
    assert len(rep.blocks) == 2


def test_unconditional_model_refuses_a_condition(glob):
    with pytest.raises(ValueError, match="unconditional"):
        reflow(glob, 16, cond=torch.ones(16, 1), batches_per_block=2, batch_size=8, n_eval=8)


# ---------------------------------------------------------------- errors
def test_reflow_refuses_bad_models_and_sizes(glob):
    untrained = tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.5, 2), velocity_factory=mlp)
    with pytest.raises(RuntimeError, match="fully trained"):
        reflow(untrained, 100)
    with pytest.raises(TypeError, match="LocalFlowMatching"):
        reflow(torch.nn.Linear(2, 2), 100)
    with pytest.raises(ValueError, match=r"n_pairs \(100\) must be at least batch_size \(256\)"):
        reflow(glob, 100)
    with pytest.raises(ValueError, match="n_pairs must be an int >= 2"):
        reflow(glob, 1, batch_size=1)
    with pytest.raises(ValueError, match="batches_per_block"):
        reflow(glob, 300, batches_per_block=[10, 10])
    with pytest.raises(ValueError, match="lr"):
        reflow(glob, 300, lr=-1.0)


def test_diverged_teacher_is_reported_not_hung(glob):
    """NaN velocities make dopri5 shrink its step forever; the couplings' solve stops and says why."""
    broken = copy.deepcopy(glob)
    with torch.no_grad():
        next(broken.nets[0].parameters()).fill_(math.nan)
    with pytest.raises(FloatingPointError, match="diverged"):
        reflow(broken, 300, batches_per_block=2, n_eval=8)


# ---------------------------------------------------------------- policies
def test_reflow_policy_returns_a_working_policy(tmp_path):
    from torchcfm_local.policy import FlowPolicy, collect_demos, load_policy

    demos = collect_demos("point", 20, seed=0)
    torch.manual_seed(0)
    policy = FlowPolicy(demos.obs_dims, 2, horizon=4, n_action_steps=2, schedule=tl.OUSchedule(0.3, 1.5, 2),
                        network="mlp", network_config={"width": 32, "depth": 2})
    policy.fit(demos, batches_per_block=60, lr=1e-3, seed=0, progress=False)
    new, report = reflow_policy(policy, demos, n_pairs=256, batches_per_block=30, batch_size=128, n_eval=64)
    assert len(report.blocks) == 2 and new is not policy and new.flow is not policy.flow
    obs = {k: torch.as_tensor(demos.obs[k][:6]).reshape(3, 2, -1) for k in demos.obs_dims}
    out = new.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert out["action"].shape == (3, 2, 2) and torch.isfinite(out["action_pred"]).all()
    new.save(tmp_path / "policy.pt")
    loaded = load_policy(tmp_path / "policy.pt")
    again = loaded.predict_action(obs, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again["action_pred"], out["action_pred"])
    policy.guidance = 2.0
    with pytest.raises(ValueError, match="guidance"):
        reflow_policy(policy, demos, n_pairs=256)
