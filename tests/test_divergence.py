"""Exact divergence: every batching mode against a brute-force Jacobian trace, fallbacks, NFE, NaN."""
import math

import pytest
import torch

import torchcfm_local.exact_trace as et
from torchcfm_local.likelihood import flow_divergence, log_prob
from torchcfm_local.networks import MLP
from torchcfm_local.solvers import ODEOptions, VelocityField

from test_likelihood import SquareNoVmap  # a backward no vmap can run


def brute_force_trace(field, t, x):
    """Per-sample trace of d field / dx from the full (D, B, D) Jacobian of the batch sum."""
    batch, dim = x.shape[0], x[0].numel()
    with torch.enable_grad():
        jac = torch.autograd.functional.jacobian(
            lambda flat: field(t, flat.reshape(x.shape)).reshape(batch, dim).sum(0), x.reshape(batch, dim))
    return jac.diagonal(dim1=0, dim2=2).sum(-1)


def divergence_in_mode(field, t, x, mode):
    """``(divergence, mode at the end)`` of ``et.exact_divergence`` started in ``mode``."""
    state = {"exact": mode}
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        y = field(t, xg)
        div = et.exact_divergence(y, xg, state)
    return div, state["exact"]


@pytest.mark.parametrize("activation", ["softplus20", "silu"])
@pytest.mark.parametrize("dim", [2, 5, 9, 16])
@pytest.mark.parametrize("rows", [et.CPU_ROWS, 7, 40, 60])
def test_every_mode_matches_the_brute_force_trace(activation, dim, rows, monkeypatch):
    """Default-style MLP (in-place clamped softplus and SiLU), float32; ``rows`` changes the vmap group
    size: all unit vectors in one group, one per group (7 < B), groups of 2 (40 // 20) and of
    at most 3 (60 // 20: 3 + 2 for D = 5)."""
    monkeypatch.setattr(et, "CPU_ROWS", rows)
    torch.manual_seed(dim)
    field = VelocityField(MLP(dim, width=32, depth=2, activation=activation))
    x = torch.randn(20, dim)
    t = torch.tensor(0.37)
    expected = brute_force_trace(field, t, x)
    assert expected.abs().max() > 1e-2  # a non-trivial trace
    for mode in et.MODES:
        got, end_mode = divergence_in_mode(field, t, x, mode)
        assert end_mode == mode  # no fallback for this network
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_shaped_samples_and_a_conditioned_guided_field():
    """(B, C, H, W)-shaped samples, and a field whose condition rows are bound to the batch."""
    torch.manual_seed(0)

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, t, x):
            return torch.tanh(self.conv(x)) * (1 + t)

    x = torch.randn(4, 2, 3, 3, dtype=torch.float64)
    field = Conv().double()
    t = torch.tensor(0.2, dtype=torch.float64)
    for mode in et.MODES:
        torch.testing.assert_close(divergence_in_mode(field, t, x, mode)[0], brute_force_trace(field, t, x),
                                   rtol=0, atol=1e-10)
    net = MLP(3, width=16, depth=2, cond_features=2).double()
    guided = VelocityField(net).bind(torch.randn(5, 2, dtype=torch.float64), guidance=1.5)
    x = torch.randn(5, 3, dtype=torch.float64)
    for mode in et.MODES:
        torch.testing.assert_close(divergence_in_mode(guided, t, x, mode)[0], brute_force_trace(guided, t, x),
                                   rtol=0, atol=1e-10)


@pytest.mark.parametrize("dim", [2, 3, 9])
def test_log_prob_is_unchanged_from_the_batched_path(dim, monkeypatch):
    """New default (vmap) against the previous path (is_grads_batched first), dopri5 at 1e-5."""
    torch.manual_seed(dim)
    field = VelocityField(MLP(dim, width=32, depth=2))
    x = torch.randn(64, dim)
    ode = ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)
    new = log_prob(field, x, options=ode)
    monkeypatch.setattr(et, "FIRST", "batched")
    old = log_prob(field, x, options=ode)
    torch.testing.assert_close(new, old, rtol=0, atol=1e-5)


def test_field_is_called_once_per_evaluation():
    torch.manual_seed(0)
    field = VelocityField(MLP(4, width=16, depth=2))
    x = torch.randn(10, 4)
    res = flow_divergence(field, x, t0=1.0, t1=0.0, options=ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5))
    assert res.nfe > 0 and field.nfe == res.nfe
    field = field.bind()
    res = flow_divergence(field, x, t0=1.0, t1=0.0, options=ODEOptions(solver="rk4", steps=3))
    assert res.nfe == field.nfe == 12


def test_fallback_chain_for_a_backward_that_cannot_be_vmapped(monkeypatch):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 4, generator=g, dtype=torch.float64) * 2 - 1
    t = torch.tensor(0.0, dtype=torch.float64)
    field = lambda t, x: SquareNoVmap.apply(x)  # noqa: E731
    div, mode = divergence_in_mode(field, t, x, "vmap")
    assert mode == "loop"  # vmap failed, then is_grads_batched failed
    torch.testing.assert_close(div, 2 * x.sum(1), rtol=0, atol=1e-12)
    modes = []
    real = et.unit_vjps
    monkeypatch.setattr(et, "unit_vjps", lambda *a: modes.append(a[-1]) or real(*a))
    res = flow_divergence(field, x, t0=0.0, t1=0.5, options=ODEOptions(solver="dopri5", atol=1e-10, rtol=1e-10))
    torch.testing.assert_close(res.div_integral, -2 * torch.log1p(-0.5 * x).sum(1), rtol=0, atol=1e-7)
    # one failed attempt in each batched mode, then unit vectors one at a time for the rest of the solve
    assert modes[:2] == ["vmap", "batched"] and set(modes[2:]) == {"loop"}
    assert len(modes) == 2 + 4 * res.nfe


def test_fallback_from_vmap_to_is_grads_batched(monkeypatch):
    """A failure only under torch.func.vmap falls back to the previous batched path."""

    def broken_vmap(*args, **kwargs):
        raise RuntimeError("no vmap here")

    monkeypatch.setattr(torch.func, "vmap", broken_vmap)
    torch.manual_seed(1)
    field = VelocityField(MLP(3, width=16, depth=2)).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    t = torch.tensor(0.5, dtype=torch.float64)
    div, mode = divergence_in_mode(field, t, x, "vmap")
    assert mode == "batched"
    torch.testing.assert_close(div, brute_force_trace(field, t, x), rtol=0, atol=1e-10)


def test_group_sizes():
    cpu = torch.device("cpu")
    rows = et.CPU_ROWS
    assert et.group_size("vmap", 100, 9, cpu) == 9
    assert et.group_size("vmap", rows // 4, 9, cpu) == 3  # at most 4: 3 groups of 3
    assert et.group_size("vmap", rows // 8, 9, cpu) == 5  # at most 8: 5 + 4
    assert et.group_size("vmap", rows // 8, 63, cpu) == 8  # 8 groups: 7 x 8 + 7
    assert et.group_size("vmap", rows, 2, cpu) == 1
    assert et.group_size("loop", 10, 9, cpu) == 1
    assert et.group_size("batched", rows, 2, cpu) == 2  # the previous rule: element budget only
    big = et.BATCH_ELEMENTS // 63 // 10
    assert et.group_size("batched", big, 63, cpu) == 10
    assert et.group_size("vmap", 50, 63, torch.device("meta")) == 63  # other devices: element budget only


@pytest.mark.parametrize("first", ["vmap", "batched"])
def test_nonfinite_velocity_stops_an_adaptive_solve(first, monkeypatch):
    monkeypatch.setattr(et, "FIRST", first)
    torch.manual_seed(0)
    net = MLP(2, width=8, depth=1)
    with torch.no_grad():
        net.net[0].weight.fill_(math.nan)
    with pytest.raises(FloatingPointError, match="NaN/Inf during an adaptive ODE solve"):
        flow_divergence(VelocityField(net), torch.randn(5, 2), t0=1.0, t1=0.0,
                        options=ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5))


def test_benchmark_script_runs_small(tmp_path, monkeypatch):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_divergence.py"
    spec = importlib.util.spec_from_file_location("bench_divergence", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    threads = torch.get_num_threads()
    try:
        bench.main(["--cases", "softplus20:2:16,silu:3:8", "--repeats", "1", "--min-seconds", "0", "--e2e-points", "",
                    "--e2e-random", "3:8", "--e2e-repeats", "1", "--name", "smoke"])
    finally:
        torch.set_num_threads(threads)  # the script sets its own thread count
    table = (tmp_path / "smoke.md").read_text()
    assert "| softplus20 | 2 | 16 | vmap-vjp (new) |" in table and "| 3 | 8 | vmap-vjp (new) |" in table
    assert et.FIRST == "vmap" and et.CPU_ROWS == 8192  # the benchmark restored the settings
