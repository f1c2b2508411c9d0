"""fit's training options for large models: learning-rate warm-up, EMA of weights, AMP guard."""
import math

import pytest
import torch

import torchcfm_local as tl
from torchcfm_local.training import FitConfig, OptimConfig, StepLoop, lr_factor


def test_lr_factor_warmup_and_cosine():
    assert [lr_factor(s, 100, None, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_factor(0, 100, "cosine", 0) == 1.0
    assert lr_factor(50, 100, "cosine", 0) == pytest.approx(0.5)
    assert lr_factor(1, 100, "cosine", 4) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi / 100)))
    assert lr_factor(7, 100, None, 0) == 1.0


def _model(seed=0):
    torch.manual_seed(seed)
    return tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.5, 2), velocity_factory=lambda n: tl.MLP(2, width=16, depth=1))


def test_ema_weights_become_the_block():
    x = torch.randn(500, 2)
    lfm = _model()
    weight = lfm.nets[0].net[0].weight
    ema, decay = weight.detach().clone(), 0.9
    seen = []

    def record(block, step, loss):
        if block == 1:
            seen.append(weight.detach().clone())  # raw weights after each optimizer step

    lfm.fit(x, batches_per_block=20, batch_size=50, seed=0, ema_decay=decay, callback=record, progress=False)
    for step, w in enumerate(seen):
        d = min(decay, (1 + step) / (10 + step))  # the warmed-up decay
        ema = d * ema + (1 - d) * w
    assert len(seen) == 20
    assert torch.allclose(lfm.nets[0].net[0].weight, ema, atol=1e-6)
    assert not torch.allclose(lfm.nets[0].net[0].weight, seen[-1], atol=1e-4)  # not the raw weights


def test_resume_with_ema_and_warmup_is_exact(tmp_path):
    x = torch.randn(500, 2)
    kw = dict(batches_per_block=20, batch_size=50, seed=0, ema_decay=0.9, warmup=5, progress=False)
    ref = _model()
    ref.fit(x, **kw)

    def crash(block, step, loss):
        if block == 2 and step == 13:
            raise KeyboardInterrupt

    run = _model()
    with pytest.raises(KeyboardInterrupt):
        run.fit(x, checkpoint_dir=tmp_path, checkpoint_every=4, callback=crash, **kw)
    resumed = _model(seed=1)
    resumed.fit(x, checkpoint_dir=tmp_path, resume=True, **kw)
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="ema_decay: 0.9 -> 0.99"):
        _model().fit(x, checkpoint_dir=tmp_path, resume=True, **{**kw, "ema_decay": 0.99})


def test_training_option_errors():
    x = torch.randn(100, 2)
    with pytest.raises(ValueError, match="amp=True needs a model on a CUDA device"):
        _model().fit(x, batches_per_block=2, batch_size=10, amp=True, progress=False)
    with pytest.raises(ValueError, match="ema_decay must be a float in"):
        _model().fit(x, batches_per_block=2, batch_size=10, ema_decay=1.0, progress=False)
    with pytest.raises(ValueError, match="warmup must be an int"):
        _model().fit(x, batches_per_block=2, batch_size=10, warmup=-1, progress=False)


# ---------------------------------------------------------------------- the shared step loop and FitConfig
def _loop_run(total, stop=None, state=None, seed=0):
    """A StepLoop on a tiny regression, with every option that has state (warm-up, cosine, EMA)."""
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    if state is not None:
        net.load_state_dict(state["net"])
    config = OptimConfig(lr=0.05, lr_decay="cosine", warmup=3, ema_decay=0.8, grad_clip=1.0)
    loop = StepLoop(net, total, config, progress=False, state=state)
    seen_lr = []

    def loss_fn(step):
        seen_lr.append(loop.opt.param_groups[0]["lr"])
        g = torch.Generator().manual_seed(100 + step)  # the batch depends on the step only
        x = torch.randn(8, 3, generator=g)
        return ((net(x) - x[:, :2].flip(1)) ** 2).mean()

    def after_step(step, loss):
        if step == stop:
            raise KeyboardInterrupt

    try:
        loop.run(loss_fn, after_step)
    except KeyboardInterrupt:
        return loop.state_dict(), seen_lr, net
    return None, seen_lr, net


def test_step_loop_resumes_bit_identically_with_schedule_and_ema():
    _, lr_ref, ref = _loop_run(12)
    state, lr_a, _ = _loop_run(12, stop=5)
    assert state["step"] == 5 and len(state["losses"]) == 5
    _, lr_b, resumed = _loop_run(12, state=state, seed=7)  # other init: everything comes from the state
    assert lr_a + lr_b == lr_ref
    # linear warm-up over 3 batches times the cosine decay over 12, written out again
    assert lr_ref == pytest.approx([0.05 * min(1, (s + 1) / 3) * 0.5 * (1 + math.cos(math.pi * s / 12))
                                    for s in range(12)])
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_step_loop_stops_on_a_non_finite_loss_before_stepping():
    net = torch.nn.Linear(2, 2)
    before = [p.detach().clone() for p in net.parameters()]
    loop = StepLoop(net, 5, OptimConfig(), desc="stage 2/3", progress=False, error_hint="; kept")
    with pytest.raises(FloatingPointError, match=r"stage 2/3: loss became nan at batch 1; kept"):
        loop.run(lambda step: net(torch.ones(1, 2)).sum() * float("nan"))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_a_diverging_block_keeps_the_finished_ones(tmp_path):
    x = torch.randn(300, 2)
    nets = {}

    def factory(n):
        nets[n] = tl.MLP(2, width=8, depth=1)
        return nets[n]

    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.5, 3), velocity_factory=factory)
    with torch.no_grad():
        nets[2].net[-1].bias.fill_(float("nan"))  # block 2's output is NaN from the first batch
    with pytest.raises(FloatingPointError, match="block 2/3: loss became nan at batch 1; finished blocks are kept in"):
        lfm.fit(x, batches_per_block=5, batch_size=50, warm_start=False, checkpoint_dir=tmp_path, progress=False)
    saved = tl.LocalFlowMatching.load(tmp_path / "model.pt")
    assert saved.n_trained == 1
    assert torch.equal(saved.nets[0].net[0].weight, lfm.nets[0].net[0].weight)


def test_fit_config_declares_each_option_once():
    with pytest.raises(TypeError, match="unexpected keyword argument 'batch_szie'"):
        _model().fit(torch.randn(100, 2), batch_szie=10)
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        FitConfig(lr=float("inf"))
    with pytest.raises(ValueError, match="cond_dropout must be in"):
        FitConfig(cond_dropout=1.0)
    settings = FitConfig(batches_per_block=7, lr=2e-3).run_settings(n_blocks=3, chunk_size=64, world_size=1)
    assert settings["batches_per_block"] == [7, 7, 7] and settings["lr"] == 2e-3
    assert settings["pushforward_ode"] == {"solver": "rk4", "atol": 1e-6, "rtol": 1e-6, "steps": 8}
    assert "progress" not in settings and "checkpoint_dir" not in settings  # not part of a run's identity
    # a checkpoint written before warm-up, EMA, AMP, ranks and dict-shaped ODE options existed
    old = {k: v for k, v in settings.items() if k not in ("warmup", "ema_decay", "amp", "world_size", "cond_dropout")}
    old["pushforward_ode"] = ["rk4", 1e-6, 1e-6, 8]
    assert FitConfig.saved_settings(old) == settings


def test_bound_fields_do_not_share_state():
    net = tl.MLP(2, width=8, depth=1, cond_features=3)
    field = tl.VelocityField(net)
    x, t = torch.randn(4, 2), torch.rand(4)
    c1, c2 = torch.randn(4, 3), torch.randn(4, 3)
    a, b = field.bind(c1), field.bind(c2, guidance=2.0)
    interleaved = [a(t, x), b(t, x), a(t, x)]
    assert torch.equal(interleaved[0], net(t, x, c1)) and torch.equal(interleaved[2], net(t, x, c1))
    v_null = net(t, x, torch.zeros_like(c2))
    assert torch.allclose(interleaved[1], v_null + 2.0 * (net(t, x, c2) - v_null), atol=1e-6)
    assert (a.nfe, b.nfe, field.nfe, field.cond) == (2, 1, 0, None)


def test_cpu_optimizer_skips_the_per_step_gpu_check(monkeypatch):
    """Adam's step asks torch.accelerator whether a GPU is available (slow once pytorch_lightning set
    PYTORCH_NVML_BASED_CUDA_CHECK); the optimizer built for CPU parameters does not ask, and steps
    exactly like torch's own."""
    from torchcfm_local.training.loop import OptimConfig

    torch.manual_seed(0)
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    ours, plain = OptimConfig(lr=0.1).optimizer(a.parameters()), torch.optim.Adam(b.parameters(), lr=0.1)
    calls = []
    real = torch.accelerator.current_accelerator
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(5, 3)
    asked = []
    for opt, net in ((ours, a), (plain, b)):
        for _ in range(3):
            opt.zero_grad()
            net(x).pow(2).sum().backward()
            opt.step()
        asked.append(len(calls))
    assert asked[0] == 0 and asked[1] >= 3  # torch's Adam asked on each of its steps, ours never
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    weighted = OptimConfig(lr=0.1, weight_decay=0.01).optimizer(torch.nn.Linear(3, 2).parameters())
    assert isinstance(weighted, torch.optim.AdamW) and "_accelerator_graph_capture_health_check" in vars(weighted)


class _ExplodesAfterTraining(torch.nn.Module):
    """A velocity MLP that returns Inf once ``explode`` is set (by the fit's callback after its last step)."""

    def __init__(self):
        super().__init__()
        self.net, self.explode = tl.MLP(2, width=8, depth=1), False

    def forward(self, t, x):
        v = self.net(t, x)
        return v * float("inf") if self.explode else v


def test_a_failed_report_push_through_the_last_block_keeps_the_trained_model(tmp_path):
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.0, 2), velocity_factory=lambda n: _ExplodesAfterTraining())

    def callback(block, step, loss):  # after block 2's last step, its encode gives Inf
        if block == 2 and step == 5:
            lfm.nets[1].explode = True

    with pytest.warns(RuntimeWarning, match="report left out"):
        result = lfm.fit(torch.randn(200, 2), batches_per_block=5, batch_size=32, progress=False, callback=callback,
                         checkpoint_dir=tmp_path / "run")
    assert lfm.n_trained == 2 and result.blocks[-1].pool is None
    saved = tl.LocalFlowMatching.load(tmp_path / "run" / "model.pt", velocity_factory=lambda n: _ExplodesAfterTraining())
    assert saved.n_trained == 2  # saved, not lost
    # a block before the last one feeds the next block's pool: there the same failure still stops the fit
    lfm2 = tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.0, 2), velocity_factory=lambda n: _ExplodesAfterTraining())

    def first(block, step, loss):
        if block == 1 and step == 5:
            lfm2.nets[0].explode = True

    with pytest.raises(FloatingPointError, match="block 1"):
        lfm2.fit(torch.randn(200, 2), batches_per_block=5, batch_size=32, progress=False, callback=first)
