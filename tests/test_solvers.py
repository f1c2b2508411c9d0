import math

import pytest
import torch

import torchcfm_local as tl
from torchcfm_local.solvers import integrate


class Poly(torch.nn.Module):
    """dx/dt = 3 t^2 (x(1) - x(0) = 1): RK4 is exact on cubics in t."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, t, x):
        return self.scale * 3 * t[:, None] ** 2 * torch.ones_like(x)


class Rotation(torch.nn.Module):
    """dx/dt = w(t) J x with w(t) = 1 + 2t: x(t) = R(t + t^2) x(0)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, t, x):
        w = (1 + 2 * t)[:, None] * self.scale
        return w * torch.stack([-x[:, 1], x[:, 0]], dim=1)


def rotate(x, angle):
    c, s = math.cos(angle), math.sin(angle)
    return torch.stack([c * x[:, 0] - s * x[:, 1], s * x[:, 0] + c * x[:, 1]], dim=1)


def test_rk4_exact_on_cubic_in_time():
    field = tl.VelocityField(Poly()).double()
    x = torch.zeros(3, 2, dtype=torch.float64)
    out = integrate(field, x, 0.0, 1.0, tl.ODEOptions(solver="rk4", steps=3))
    torch.testing.assert_close(out, torch.ones_like(x), rtol=0, atol=1e-14)


def test_rk4_is_fourth_order_on_time_dependent_field():
    field = tl.VelocityField(Rotation()).double()
    x = torch.tensor([[1.0, 0.0], [0.3, -0.7]], dtype=torch.float64)
    exact = rotate(x, 1.0 + 1.0)
    errors = [
        (integrate(field, x, 0.0, 1.0, tl.ODEOptions(solver="rk4", steps=s)) - exact).abs().max().item()
        for s in (8, 16, 32)
    ]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    assert all(12 < r < 20 for r in ratios), (errors, ratios)  # 2^4 = 16


def test_torchdyn_rk4_is_only_first_order_which_is_why_we_replace_it():
    from torchdyn.numerics import odeint

    field = tl.VelocityField(Rotation()).double()
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    exact = rotate(x, 2.0)
    errs = []
    for s in (16, 32):
        _, traj = odeint(field, x, torch.linspace(0, 1, s + 1, dtype=torch.float64), solver="rk4")
        errs.append((traj[-1] - exact).abs().max().item())
    assert errs[0] / errs[1] < 3  # first order: halving the step only halves the error


@pytest.mark.parametrize("opts", [dict(solver="dopri5"), dict(solver="tsit5"), dict(solver="rk4", steps=32), dict(solver="midpoint", steps=1024)])
def test_forward_and_backward_integration(opts):
    field = tl.VelocityField(Rotation()).double()
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    o = tl.ODEOptions(**opts)
    fwd = integrate(field, x, 0.0, 1.0, o)
    torch.testing.assert_close(fwd, rotate(x, 2.0), rtol=0, atol=2e-5)
    back = integrate(field, fwd, 1.0, 0.0, o)
    torch.testing.assert_close(back, x, rtol=0, atol=4e-5)


def test_nfe_counts_fixed_step_evaluations():
    field = tl.VelocityField(Rotation()).double()
    x = torch.ones(4, 2, dtype=torch.float64)
    integrate(field, x, 0.0, 1.0, tl.ODEOptions(solver="rk4", steps=5))
    assert field.nfe == 20
    field.nfe = 0
    integrate(field, x, 0.0, 1.0, tl.ODEOptions(solver="euler", steps=7))
    assert field.nfe == 7


def test_concat_convention_network():
    from torchcfm.models import MLP

    net = MLP(dim=2, time_varying=True)
    field = tl.VelocityField(net)
    x = torch.randn(6, 2)
    t = torch.full((6,), 0.3)
    torch.testing.assert_close(field(torch.tensor(0.3), x), net(torch.cat([x, t[:, None]], 1)))


@pytest.mark.parametrize("bad,match", [
    (dict(solver="rk45"), "unknown solver 'rk45'; expected one of"),
    (dict(atol=0.0), "atol must be a positive finite number"),
    (dict(rtol=-1.0), "rtol must be a positive finite number"),
    (dict(steps=0), "steps must be a positive int"),
    (dict(steps=2.5), "steps must be a positive int"),
])
def test_ode_options_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        tl.ODEOptions(**bad)


def test_adaptive_solves_stop_on_nan_velocity():
    """dopri5 fed NaN shrinks its step without end; decode, encode and log_prob raise instead."""
    torch.manual_seed(0)
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.5, 2), velocity_factory=lambda n: tl.MLP(2, width=8, depth=1))
    lfm.n_trained = 2
    with torch.no_grad():
        lfm.nets[1].net[0].weight.fill_(math.nan)
    x = torch.randn(5, 2)
    ode = tl.ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)
    for call in (lambda: lfm.decode(x, ode=ode), lambda: lfm.encode(x, ode=ode), lambda: lfm.log_prob(x, ode=ode)):
        with pytest.raises(FloatingPointError, match="NaN/Inf during an adaptive ODE solve"):
            call()
    assert torch.isnan(lfm.decode(x, ode="rk4")).all()  # fixed-step solves end; their callers check the result
