import math

import pytest
import torch
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

import torchcfm_local as tl
from torchcfm_local.training import TrainingPool
from conftest import Crash, crash_at, small_mlp, two_gaussians


def make(n_blocks=3, **kw):
    torch.manual_seed(0)  # same initial weights for every model made here
    return tl.LocalFlowMatching(
        dim=2, schedule=tl.OUSchedule(h0=0.3, rho=1.5, n_blocks=n_blocks), velocity_factory=small_mlp, **kw
    )


# ---------------------------------------------------------------- training quality
def test_fit_report_and_encoded_pool_is_standard_normal(trained_2d):
    lfm, report, _ = trained_2d
    assert [b.block for b in report.blocks] == [1, 2, 3]
    assert all(b.batches == 1500 and len(b.losses) == 1500 for b in report.blocks)
    assert math.isinf(report.blocks[-1].h) and report.blocks[0].h == pytest.approx(0.3)
    final = report.blocks[-1].pool  # the training data pushed through all blocks
    assert final.mean_rms < 0.1, final
    assert final.cov_rms_err < 0.1, final
    assert final.gaussian_kl < 0.05, final
    # every block's pool moves toward N(0, I)
    kls = [b.pool.gaussian_kl for b in report.blocks]
    assert kls[0] > kls[1] > kls[2]
    assert "| 3 | free |" in report.summary()


def test_samples_match_held_out_data(trained_2d):
    lfm, _, _ = trained_2d
    test = two_gaussians(2000, seed=123)
    samples = lfm.sample(2000, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    ed_model = tl.energy_distance(samples, test)
    ed_ref = tl.energy_distance(two_gaussians(2000, seed=7), test)  # a fresh draw of the data itself
    ed_noise = tl.energy_distance(noise, test)
    # measured: model 0.0073, fresh data 0.0017, noise 0.50
    assert ed_model < 0.03 * ed_noise, (ed_model, ed_noise)
    assert ed_model < ed_ref + 0.01, (ed_model, ed_ref)
    stats = lfm.last_stats
    assert len(stats.nfe_per_block) == 3 and stats.nfe > 0 and stats.seconds > 0


@pytest.mark.parametrize("ode", [None, dict(solver="rk4", steps=16)])
def test_round_trips(trained_2d, ode):
    lfm, _, x = trained_2d
    x = x[:1000]
    z = lfm.encode(x, ode=ode)
    torch.testing.assert_close(lfm.decode(z, ode=ode), x, rtol=0, atol=1e-4)
    z = torch.randn(1000, 2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(lfm.encode(lfm.decode(z, ode=ode), ode=ode), z, rtol=0, atol=1e-4)


def test_partial_block_runs_compose(trained_2d):
    lfm, _, x = trained_2d
    ode = dict(solver="rk4", steps=8)
    full = lfm.encode(x[:100], ode=ode)
    mid = lfm.encode(x[:100], ode=ode, blocks=[1, 2])
    assert lfm.last_stats.blocks == (1, 2)
    torch.testing.assert_close(lfm.encode(mid, ode=ode, blocks=[3]), full, rtol=0, atol=1e-6)
    back = lfm.decode(full, ode=ode, blocks=[3, 2])  # runs 3 then 2
    torch.testing.assert_close(lfm.decode(back, ode=ode, blocks=[1]), lfm.decode(full, ode=ode), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="1..3"):
        lfm.encode(x[:5], blocks=[4])


def test_chunking_does_not_change_fixed_step_results(trained_2d):
    lfm, _, x = trained_2d
    ode = dict(solver="rk4", steps=4)
    # equal up to float32 rounding (BLAS kernels differ with the batch size)
    torch.testing.assert_close(lfm.encode(x[:300], ode=ode, chunk_size=7), lfm.encode(x[:300], ode=ode), rtol=0, atol=1e-5)


def test_one_block_model_is_plain_torchcfm_training():
    """A one-block LFM fit equals a plain torchcfm loop fed the same random numbers."""
    x = two_gaussians(1000, seed=1)
    fm = ConditionalFlowMatcher(sigma=0.0)
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule.global_flow(), fm, small_mlp)
    net = small_mlp(1)
    net.load_state_dict(lfm.nets[0].state_dict())
    lfm.fit(x, batches_per_block=30, batch_size=64, lr=1e-3, seed=5, progress=False, encode_final_pool=False)

    gen_idx, gen_noise = torch.Generator().manual_seed(5), torch.Generator().manual_seed(6)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(30):
        x1 = x[torch.randint(0, 1000, (64,), generator=gen_idx)]
        x0 = torch.randn(x1.shape, generator=gen_noise)
        t = torch.rand(64, generator=gen_noise)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1, t)
        loss = torch.mean((net(t, xt) - ut) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for a, b in zip(net.parameters(), lfm.nets[0].parameters()):
        assert torch.equal(a, b)


def test_custom_loop_with_train_blocks():
    x = two_gaussians(2000, seed=2)
    lfm = make(n_blocks=2)
    seen = []
    for block in lfm.train_blocks(x, progress=False):
        seen.append((block.block, block.pool.shape[0]))
        opt = torch.optim.Adam(block.model.parameters(), lr=1e-3)
        for _ in range(20):
            opt.zero_grad()
            block.loss(block.data(128)).backward()
            opt.step()
    assert seen == [(1, 2000), (2, 2000)]
    assert lfm.n_trained == 2
    assert lfm.sample(10).shape == (10, 2)


def test_shaped_data_through_blocks():
    x = torch.randn(200, 1, 3, 4)
    lfm = tl.LocalFlowMatching((1, 3, 4), tl.OUSchedule(0.2, 1.0, 2), velocity_factory=lambda n: tl.MLP(12, width=32, depth=1))
    lfm.fit(x, batches_per_block=5, batch_size=32, progress=False)
    z = lfm.encode(x[:10])
    assert z.shape == (10, 1, 3, 4)
    torch.testing.assert_close(lfm.decode(z), x[:10], rtol=0, atol=1e-4)
    assert lfm.sample(3).shape == (3, 1, 3, 4)


# ---------------------------------------------------------------- save / load
def test_save_load_round_trip(trained_2d, tmp_path):
    lfm, _, _ = trained_2d
    lfm.save(tmp_path / "m.pt")
    loaded = tl.LocalFlowMatching.load(tmp_path / "m.pt")
    assert loaded.n_trained == 3 and loaded.schedule == lfm.schedule
    assert type(loaded.matcher) is type(lfm.matcher)
    z = torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded.decode(z), lfm.decode(z))


def test_load_custom_network_needs_factory(tmp_path):
    from torchcfm.models import MLP as CfmMLP

    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.0, 2), velocity_factory=lambda n: CfmMLP(2, time_varying=True))
    lfm.save(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="velocity_factory"):
        tl.LocalFlowMatching.load(tmp_path / "m.pt")
    loaded = tl.LocalFlowMatching.load(tmp_path / "m.pt", velocity_factory=lambda n: CfmMLP(2, time_varying=True))
    assert loaded.n_trained == 0
    with pytest.raises(tl.CheckpointError, match="do not fit"):
        tl.LocalFlowMatching.load(tmp_path / "m.pt", velocity_factory=lambda n: CfmMLP(2, w=8, time_varying=True))


def test_load_rejects_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        tl.LocalFlowMatching.load(tmp_path / "missing.pt")
    lfm = make(n_blocks=2)
    good = tmp_path / "good.pt"
    lfm.save(good)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(tl.CheckpointError, match="corrupt"):
        tl.LocalFlowMatching.load(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(tl.CheckpointError, match="not written by torchcfm_local"):
        tl.LocalFlowMatching.load(foreign)
    state = torch.load(good, weights_only=True)
    state["version"] = 999
    future = tmp_path / "future.pt"
    torch.save(state, future)
    with pytest.raises(tl.CheckpointError, match="version 999"):
        tl.LocalFlowMatching.load(future)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "torchcfm_local", "obj": ConditionalFlowMatcher()}, pickled)
    with pytest.raises(tl.CheckpointError, match="not a safe torch file"):  # arbitrary objects are never unpickled
        tl.LocalFlowMatching.load(pickled)


# ---------------------------------------------------------------- checkpoints and resume
FIT = dict(batches_per_block=40, batch_size=64, seed=3, checkpoint_every=10, progress=False)


def test_resume_after_crash_reproduces_uninterrupted_run(tmp_path):
    x = two_gaussians(1500, seed=4)
    ref = make()
    ref.fit(x, **FIT)

    crashed = make()
    with pytest.raises(Crash):
        crashed.fit(x, checkpoint_dir=tmp_path, callback=crash_at(2, 25), **FIT)
    assert crashed.n_trained == 1  # block 1 survives in memory and on disk
    assert tl.LocalFlowMatching.load(tmp_path / "model.pt", velocity_factory=small_mlp).n_trained == 1

    resumed = make()  # a fresh process would start like this
    report = resumed.fit(x, checkpoint_dir=tmp_path, resume=True, **FIT)
    assert [b.block for b in report.blocks] == [2, 3]  # block 1 is not redone
    assert report.blocks[0].resumed_from == 20
    assert len(report.blocks[0].losses) == 40
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    z = torch.randn(20, 2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(ref.decode(z), resumed.decode(z))


def test_resume_recomputes_a_missing_pool(tmp_path):
    x = two_gaussians(800, seed=5)
    ref = make()
    ref.fit(x, **FIT)
    crashed = make()
    with pytest.raises(Crash):
        crashed.fit(x, checkpoint_dir=tmp_path, callback=crash_at(3, 5), **FIT)
    (tmp_path / "pool.pt").unlink()
    resumed = make()
    resumed.fit(x, checkpoint_dir=tmp_path, resume=True, **FIT)
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_kill_during_pushforward_keeps_the_trained_block(tmp_path, monkeypatch):
    x = two_gaussians(600, seed=8)
    ref = make()
    ref.fit(x, **FIT)
    crashed = make()

    def die(*args, **kwargs):
        raise Crash

    monkeypatch.setattr(TrainingPool, "push", die)
    with pytest.raises(Crash):
        crashed.fit(x, checkpoint_dir=tmp_path, **FIT)
    monkeypatch.undo()
    resumed = make()
    report = resumed.fit(x, checkpoint_dir=tmp_path, resume=True, **FIT)
    assert report.blocks[0].resumed_from == 40  # block 1's training was not redone
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_checkpoint_dir_guards(tmp_path):
    x = two_gaussians(500, seed=6)
    with pytest.raises(Crash):
        make().fit(x, checkpoint_dir=tmp_path, callback=crash_at(2, 1), **FIT)
    with pytest.raises(FileExistsError, match="resume=True"):
        make().fit(x, checkpoint_dir=tmp_path, **FIT)
    with pytest.raises(ValueError, match="batch_size"):
        make().fit(x, checkpoint_dir=tmp_path, resume=True, **{**FIT, "batch_size": 32})
    with pytest.raises(ValueError, match="other data"):
        make().fit(two_gaussians(500, seed=7), checkpoint_dir=tmp_path, resume=True, **FIT)
    with pytest.raises(ValueError, match=r"holds a run of shape .*; this model has shape"):
        tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.5, 4), velocity_factory=small_mlp).fit(
            x, checkpoint_dir=tmp_path, resume=True, **FIT
        )


def test_fit_twice_without_resume_is_refused(trained_2d):
    lfm, _, x = trained_2d
    with pytest.raises(RuntimeError, match="already trained"):
        lfm.fit(x, batches_per_block=1, progress=False)


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "data,err,match",
    [
        (torch.tensor([[0.0, float("nan")]] * 10), ValueError, "NaN"),
        (torch.tensor([[0.0, float("inf")]] * 10), ValueError, "NaN or Inf"),
        (torch.zeros(10, 3), ValueError, r"shape \(n, 2\)"),
        (torch.zeros(10), ValueError, "shape"),
        (torch.zeros(0, 2), ValueError, "at least 2"),
        (torch.zeros(1, 2), ValueError, "at least 2"),
        (torch.zeros(10, 2, dtype=torch.int64), TypeError, "floating-point"),
        ([[0.0, 1.0]], TypeError, "Tensor"),
    ],
)
def test_fit_rejects_bad_data(data, err, match):
    with pytest.raises(err, match=match):
        make().fit(data, batches_per_block=1, batch_size=1, progress=False)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(batch_size=11), "exceeds the 10 training samples"),
        (dict(batch_size=0), "batch_size"),
        (dict(batches_per_block=0), "batches_per_block"),
        (dict(batches_per_block=[1, 2]), "one int per block"),
        (dict(lr=-1.0), "lr"),
        (dict(lr_decay="step"), "lr_decay"),
        (dict(grad_clip=0.0), "grad_clip"),
    ],
)
def test_fit_rejects_bad_settings(kwargs, match):
    args = dict(batches_per_block=1, batch_size=4, progress=False)
    with pytest.raises(ValueError, match=match):
        make().fit(torch.randn(10, 2), **{**args, **kwargs})


class FirstCoordinate(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))

    def forward(self, t, x):
        return self.w * x[:, :1]


def test_bad_velocity_factories():
    with pytest.raises(ValueError, match=r"output \(2, 1\) differs from its input \(2, 2\)"):
        tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.0, 2), velocity_factory=lambda n: FirstCoordinate())
    with pytest.raises(ValueError, match="fails on input of shape"):
        tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.0, 2), velocity_factory=lambda n: tl.MLP(3))
    with pytest.raises(TypeError, match="nn.Module"):
        tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.0, 2), velocity_factory=lambda n: None)
    with pytest.raises(ValueError, match="warm_start"):
        tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.0, 2), velocity_factory=lambda n: tl.MLP(2, width=8 * n)).fit(
            torch.randn(10, 2), batches_per_block=1, batch_size=4, progress=False
        )


def test_default_model_needs_only_the_dimension():
    lfm = tl.LocalFlowMatching(2)
    assert lfm.schedule == tl.OUSchedule() and lfm.schedule.step_sizes == (0.25, 0.25, math.inf)
    # a few hundred batches make a model of a two-mode density better than the best single Gaussian
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    x = centres[torch.randint(0, 2, (3000,), generator=g)] + 0.3 * torch.randn(3000, 2, generator=g)
    torch.manual_seed(0)
    lfm.fit(x[:2500], batches_per_block=150, batch_size=256, progress=False)
    test = x[2500:]
    gauss = torch.distributions.MultivariateNormal(x[:2500].mean(0), torch.cov(x[:2500].T))
    assert -lfm.log_prob(test).mean() < -gauss.log_prob(test).mean() - 0.5


def test_bad_constructor_arguments():
    with pytest.raises(TypeError, match="schedule must be an OUSchedule"):
        tl.LocalFlowMatching(2, schedule=[0.1, 0.2])
    with pytest.raises(ValueError, match="dim must be a positive int"):
        tl.LocalFlowMatching(0, tl.OUSchedule(0.1, 1.0, 2))
    with pytest.raises(TypeError, match="matcher must be a torchcfm ConditionalFlowMatcher"):
        tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.0, 2), matcher="ot")


def test_untrained_model_cannot_sample_or_encode():
    lfm = make()
    with pytest.raises(RuntimeError, match="0 of 3 blocks"):
        lfm.sample(5)
    with pytest.raises(RuntimeError, match="call fit"):
        lfm.encode(torch.zeros(5, 2))


def test_sampling_input_checks(trained_2d):
    lfm, _, _ = trained_2d
    with pytest.raises(ValueError, match="n must be a positive int"):
        lfm.sample(0)
    with pytest.raises(ValueError, match="shape"):
        lfm.decode(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="chunk_size"):
        lfm.decode(torch.zeros(4, 2), chunk_size=0)


# ---------------------------------------------------------------- likelihood
def true_log_prob(x):
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    sq = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    return torch.logsumexp(-sq / (2 * 0.16), 1) - math.log(2) - math.log(2 * math.pi * 0.16)


def test_log_prob_integrates_to_one_and_is_close_to_truth(trained_2d):
    lfm, _, _ = trained_2d
    g = torch.linspace(-5, 5, 121)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    grid = torch.stack([xx.flatten(), yy.flatten()], 1)
    mass = (lfm.log_prob(grid).exp().sum() * (g[1] - g[0]) ** 2).item()
    assert mass == pytest.approx(1.0, abs=0.02)
    test = two_gaussians(2000, seed=9)
    nll = -lfm.log_prob(test).mean().item()
    true_nll = -true_log_prob(test).mean().item()  # 1.687
    assert true_nll < nll < true_nll + 0.15, (nll, true_nll)  # measured 1.752


def test_log_prob_terms_and_hutchinson(trained_2d):
    lfm, _, _ = trained_2d
    test = two_gaussians(2000, seed=10)
    exact = lfm.log_prob_terms(test)
    assert exact.divergence.shape == (3, 2000) and len(exact.nfe_per_block) == 3
    torch.testing.assert_close(exact.log_prob, exact.prior + exact.divergence.sum(0))
    z = lfm.encode(test)
    torch.testing.assert_close(exact.prior, -0.5 * (z.double() ** 2).sum(1) - math.log(2 * math.pi), atol=1e-4, rtol=0)
    hutch = lfm.log_prob_terms(test, estimator="hutchinson", generator=torch.Generator().manual_seed(0))
    diff = hutch.log_prob - exact.log_prob
    se = diff.std().item() / math.sqrt(len(diff))
    assert diff.std().item() > 0  # it is an estimate, not the exact value
    assert abs(diff.mean().item()) < 4 * se, (diff.mean().item(), se)


def test_log_prob_bad_input(trained_2d):
    lfm, _, _ = trained_2d
    with pytest.raises(ValueError, match="shape"):
        lfm.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="NaN"):
        lfm.log_prob(torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="estimator must be one of"):
        lfm.log_prob(torch.zeros(4, 2), estimator="skilling")
    with pytest.raises(RuntimeError, match="trained"):
        make().log_prob(torch.zeros(4, 2))


@pytest.mark.parametrize("activation", ["silu", "selu", "relu", "tanh", "elu", "gelu", "softplus20"])
def test_mlp_activations_build_and_round_trip(activation, tmp_path):
    net = tl.MLP(3, width=16, depth=2, n_freq=0, activation=activation)
    assert net.config["activation"] == activation and net.net[0].in_features == 3 + 1  # raw t only
    lfm = tl.LocalFlowMatching(3, tl.OUSchedule(0.2, 1.0, 2), velocity_factory=lambda n: tl.MLP(
        3, width=16, depth=2, n_freq=0, activation=activation))
    lfm.save(tmp_path / "m.pt")
    loaded = tl.LocalFlowMatching.load(tmp_path / "m.pt")
    x, t = torch.randn(5, 3), torch.rand(5)
    assert torch.equal(loaded.nets[1](t, x), lfm.nets[1](t, x))
    if activation == "softplus20":  # beta = 20: within log(2)/20 of a ReLU
        act = net.net[1]
        u = torch.linspace(-3, 3, 61)
        assert torch.all((act(u) - torch.relu(u)).abs() <= math.log(2) / 20 + 1e-6)


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*softplus20"):
        tl.MLP(2, activation="swish")


def test_bench_task_mlp_options_reach_both_sides():
    import dataclasses

    from torchcfm_local.bench.protocol import build_model, prepare
    from torchcfm_local.bench.registry import BUDGETS, TASKS
    from torchcfm_local.networks import count_parameters

    task = dataclasses.replace(TASKS["8gaussians"], mlp={"activation": "softplus20", "n_freq": 0})
    setup = prepare(task, "8gaussians", BUDGETS["smoke"], "smoke")
    lfm, glob = build_model("lfm-linear", setup, 0), build_model("global-linear", setup, 0)
    for model, params in ((lfm, setup.block_params), (glob, setup.global_params)):
        assert all(isinstance(n.net[1], tl.networks.Softplus20) and n.config["n_freq"] == 0 for n in model.nets)
        assert count_parameters(model.nets[0]) == params


def test_softplus20_matches_softplus_without_subnormals():
    """The clamp at -2 changes Softplus(beta=20) by less than float32 can see, and no output or slope
    is subnormal (CPU arithmetic on subnormals is many times slower)."""
    act = tl.networks.Softplus20()
    u = torch.linspace(-30, 30, 60001, dtype=torch.float32, requires_grad=True)
    y = act(u)
    (grad,) = torch.autograd.grad(y.sum(), u)
    ref = torch.nn.Softplus(beta=20.0)(u.double().detach())
    ref_grad = torch.sigmoid(20 * u.double().detach())
    assert (y.double() - ref).abs().max() < 1e-6 * ref.abs().clamp(min=1).max()
    assert (grad.double() - ref_grad).abs().max() < 1e-6
    tiny = torch.finfo(torch.float32).tiny  # smallest normal float32
    for values in (y, grad):
        nonzero = values[values != 0].abs()
        assert (nonzero >= tiny).all()
    plain = torch.nn.Softplus(beta=20.0)(u.detach())
    assert ((plain != 0) & (plain.abs() < tiny)).any()  # the plain module does produce subnormals here
    # in place (as in MLP): the same values and slopes; the input holds the clamped values afterwards
    v = u.detach().clone().requires_grad_(True)
    w = v * 1.0
    y2 = tl.networks.Softplus20(inplace=True)(w)
    (grad2,) = torch.autograd.grad(y2.sum(), v)
    assert torch.equal(y2, y) and torch.equal(grad2, grad) and w.min() == -2.0


def test_softplus20_fast_path_agrees_with_torch_under_every_transform():
    """The vectorized float32/float64 path: values within 1.3e-7 of torch's softplus, the same slope,
    and correct under vmap (forward and over ``autograd.grad``, as the exact divergence uses it),
    forward-mode AD and double backward; bfloat16 takes torch's kernel."""
    act = tl.networks.Softplus20()
    ref = lambda v: torch.nn.functional.softplus(v.clamp(min=-2.0), beta=20.0)
    u = torch.linspace(-3, 8, 20001)
    assert (act(u) - ref(u)).abs().max() < 1.3e-7
    exact = torch.logaddexp(20 * u.double().clamp(min=-2.0), torch.zeros(())) / 20  # torch's kernel drops
    assert (act(u.double()) - exact).abs().max() < 1e-14  # log1p(exp(-20 x)) / 20 above x = 1; we keep it
    x = torch.randn(6, 4, requires_grad=True)
    y, y_ref = act(x * 1.0), ref(x)
    basis = torch.eye(4).unsqueeze(1).expand(4, 6, 4).contiguous()
    vjps = torch.func.vmap(lambda v: torch.autograd.grad(y, x, v, retain_graph=True)[0])(basis)
    vjps_ref = torch.func.vmap(lambda v: torch.autograd.grad(y_ref, x, v, retain_graph=True)[0])(basis)
    assert torch.equal(vjps, vjps_ref)
    xs = torch.randn(3, 5, 4)
    assert torch.allclose(torch.func.vmap(act)(xs), ref(xs), atol=1.3e-7)
    x0 = torch.tensor([-3.0, -0.1, 0.0, 0.3, 5.0])
    tangent = torch.func.jvp(act, (x0,), (torch.ones(5),))[1]
    assert torch.allclose(tangent, torch.func.jvp(ref, (x0,), (torch.ones(5),))[1])
    xd = torch.randn(12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(tl.networks._Softplus20Fn.apply, (xd,))
    b = torch.linspace(-3, 3, 101, dtype=torch.bfloat16)
    assert act(b).dtype == torch.bfloat16 and torch.equal(act(b), ref(b))
