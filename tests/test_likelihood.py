"""Likelihoods of flow fields: closed-form ODEs, normalization, Hutchinson, torchcfm interop."""
import math

import pytest
import torch

from torchcfm_local.likelihood import (
    FlowDivergence,
    bits_per_dim,
    flow_divergence,
    log_prob,
    standard_normal_log_prob,
)
from torchcfm_local.solvers import ODEOptions, VelocityField

TIGHT = ODEOptions(solver="dopri5", atol=1e-10, rtol=1e-10)


class Affine(torch.nn.Module):
    """f(t, x) = A x + b, with a guard that t is a scalar."""

    def __init__(self, A, b):
        super().__init__()
        self.A, self.b = A, b

    def forward(self, t, x):
        assert t.dim() == 0, t.shape
        return x @ self.A.T + self.b


class LinearInTime(torch.nn.Module):
    """f(t, x) = a(t) x with a(t) = 1 + t, for x of any shape (B, *shape)."""

    def forward(self, t, x):
        assert t.dim() == 0, t.shape
        return (1 + t) * x


def a_integral(t0, t1):
    """int_{t0}^{t1} (1 + t) dt."""
    return (t1 - t0) + (t1**2 - t0**2) / 2


class TimeMLP(torch.nn.Module):
    """A small MLP in the (t, x) convention that refuses a non-scalar t."""

    def __init__(self, dim, width=32):
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim + 1, width), torch.nn.Tanh(),
            torch.nn.Linear(width, width), torch.nn.Tanh(),
            torch.nn.Linear(width, dim),
        )

    def forward(self, t, x):
        assert t.dim() == 0, t.shape
        return self.net(torch.cat([x, t.expand(x.shape[0], 1)], dim=1))


def normal_log_prob(z):
    """log N(z; 0, I), written again independently of the library."""
    d = z.shape[1]
    return -0.5 * (z**2).sum(1) - 0.5 * d * math.log(2 * math.pi)


def affine_flow(A, b, x, dt):
    """x(t0 + dt) for dx/dt = A x + b, by the exponential of the augmented matrix [[A, b], [0, 0]]."""
    d = A.shape[0]
    M = torch.zeros(d + 1, d + 1, dtype=A.dtype)
    M[:d, :d], M[:d, d] = A, b
    E = torch.linalg.matrix_exp(M * dt)
    return x @ E[:d, :d].T + E[:d, d]


# ---------------------------------------------------------------------------------------------
# exact answers


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (1.0, 0.0), (0.25, -0.6)])
def test_affine_field_endpoint_and_divergence(d, t0, t1):
    g = torch.Generator().manual_seed(d)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(7, d, generator=g, dtype=torch.float64)
    res = flow_divergence(Affine(A, b), x, t0=t0, t1=t1, options=TIGHT)
    assert isinstance(res, FlowDivergence) and res.nfe > 0
    assert res.x.shape == x.shape and res.div_integral.shape == (7,)
    torch.testing.assert_close(res.x, affine_flow(A, b, x, t1 - t0), rtol=0, atol=1e-6)
    expected = torch.full((7,), float(torch.trace(A)) * (t1 - t0), dtype=torch.float64)
    torch.testing.assert_close(res.div_integral, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("options", [TIGHT, ODEOptions(solver="rk4", steps=40)], ids=["dopri5", "rk4"])
def test_affine_field_log_prob(d, options):
    g = torch.Generator().manual_seed(10 + d)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(11, d, generator=g, dtype=torch.float64)
    # data at t = 1, noise at t = 0: z = x carried back over dt = -1
    z = affine_flow(A, b, x, -1.0)
    expected = normal_log_prob(z) + float(torch.trace(A)) * (0.0 - 1.0)
    got = log_prob(Affine(A, b), x, options=options)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)
    # swapped roles: data at t = 0.2, noise at t = 0.9
    z = affine_flow(A, b, x, 0.7)
    expected = normal_log_prob(z) + float(torch.trace(A)) * 0.7
    got = log_prob(Affine(A, b), x, t_data=0.2, t_noise=0.9, options=options)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("t0,t1", [(0.0, 1.0), (1.0, 0.3)])
@pytest.mark.parametrize("shape", [(2,), (2, 3)])
def test_time_dependent_linear_field(t0, t1, shape):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    d = math.prod(shape)
    for options in (TIGHT, ODEOptions(solver="rk4", steps=32)):
        res = flow_divergence(LinearInTime(), x, t0=t0, t1=t1, options=options)
        torch.testing.assert_close(res.x, x * math.exp(a_integral(t0, t1)), rtol=1e-6, atol=0)
        torch.testing.assert_close(
            res.div_integral, torch.full((5,), d * a_integral(t0, t1), dtype=torch.float64), rtol=1e-6, atol=0
        )
    # log p(x) = log N(z) + int_{t_data}^{t_noise} d a(t) dt, z = x exp(int_{t_data}^{t_noise} a)
    z = x * math.exp(a_integral(1.0, 0.0))
    expected = normal_log_prob(z.flatten(1)) + d * a_integral(1.0, 0.0)
    torch.testing.assert_close(log_prob(LinearInTime(), x, options=TIGHT), expected, rtol=0, atol=1e-8)


def test_fixed_step_nfe_and_chunking_do_not_change_the_answer():
    torch.manual_seed(0)
    field = TimeMLP(2).double()
    x = torch.randn(23, 2, dtype=torch.float64)
    res = flow_divergence(field, x, t0=1.0, t1=0.0, options=ODEOptions(solver="rk4", steps=10))
    assert res.nfe == 40
    assert flow_divergence(field, x, t0=1.0, t1=0.0, options=ODEOptions(solver="euler", steps=7)).nfe == 7
    whole = log_prob(field, x, options=ODEOptions(solver="rk4", steps=10))
    chunked = log_prob(field, x, options=ODEOptions(solver="rk4", steps=10), chunk_size=4)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-12)
    # empty interval: identity, zero integral, no evaluations
    same = flow_divergence(field, x, t0=0.5, t1=0.5)
    assert same.nfe == 0 and torch.equal(same.x, x) and torch.equal(same.div_integral, torch.zeros(23, dtype=x.dtype))


def test_outputs_are_detached_and_no_graph_is_required():
    torch.manual_seed(0)
    field = TimeMLP(2)
    x = torch.randn(4, 2, requires_grad=True)
    res = flow_divergence(field, x, t0=0.0, t1=1.0)
    assert not res.x.requires_grad and not res.div_integral.requires_grad
    assert not log_prob(field, x).requires_grad
    with torch.no_grad():  # works inside a caller's no_grad block
        lp = log_prob(field, x.detach())
    torch.testing.assert_close(lp, log_prob(field, x.detach()))


def test_standard_normal_log_prob():
    z = torch.tensor([[0.0, 0.0], [1.0, -2.0]], dtype=torch.float64)
    expected = torch.tensor([-math.log(2 * math.pi), -2.5 - math.log(2 * math.pi)], dtype=torch.float64)
    torch.testing.assert_close(standard_normal_log_prob(z), expected, rtol=0, atol=1e-14)
    img = torch.zeros(3, 1, 2, 2)
    torch.testing.assert_close(standard_normal_log_prob(img), torch.full((3,), -2 * math.log(2 * math.pi)))


class SquareNoVmap(torch.autograd.Function):
    """y = x^2 elementwise, with a backward that reads a value (.item()), which vmap refuses."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**2

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        assert grad.abs().sum().item() >= 0
        return 2 * x * grad


def test_exact_divergence_falls_back_when_backward_cannot_be_batched():
    """dx/dt = x^2: x(t) = x0 / (1 - x0 t), int_0^t div = -2 sum_i log(1 - x0_i t)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 4, generator=g, dtype=torch.float64) * 2 - 1
    res = flow_divergence(lambda t, x: SquareNoVmap.apply(x), x, t0=0.0, t1=0.5, options=TIGHT)
    torch.testing.assert_close(res.x, x / (1 - 0.5 * x), rtol=0, atol=1e-7)
    torch.testing.assert_close(res.div_integral, -2 * torch.log1p(-0.5 * x).sum(1), rtol=0, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# normalization of a random flow


def test_random_mlp_density_integrates_to_one():
    torch.manual_seed(0)
    field = TimeMLP(2)
    n = 200
    axis = torch.linspace(-6, 6, n + 1)
    centers = (axis[:-1] + axis[1:]) / 2
    grid = torch.stack(torch.meshgrid(centers, centers, indexing="ij"), -1).reshape(-1, 2)
    lp = log_prob(field, grid, options=ODEOptions(solver="rk4", steps=8), chunk_size=20000)
    cell = (12.0 / n) ** 2
    mass = float(lp.exp().sum() * cell)
    assert abs(mass - 1.0) < 0.02, mass
    # and the flow does move the density: it is not the prior itself
    assert (lp - standard_normal_log_prob(grid)).abs().max() > 0.05


# ---------------------------------------------------------------------------------------------
# Hutchinson


def test_hutchinson_is_exact_quadratic_form_for_affine_field():
    """For f = A x + b the integral is (t1 - t0) eps^T A eps with the documented probe draw."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(9, 4, generator=g, dtype=torch.float64)
    res = flow_divergence(
        Affine(A, torch.zeros(4, dtype=torch.float64)), x, t0=0.0, t1=-0.8,
        options=ODEOptions(solver="rk4", steps=4), estimator="hutchinson", generator=torch.Generator().manual_seed(5),
    )
    eps = (2 * torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(5)) - 1).to(x.dtype)
    expected = -0.8 * torch.einsum("bi,ij,bj->b", eps, A, eps)
    torch.testing.assert_close(res.div_integral, expected, rtol=0, atol=1e-12)
    # the state itself does not depend on the estimator
    exact = flow_divergence(Affine(A, torch.zeros(4, dtype=torch.float64)), x, t0=0.0, t1=-0.8,
                            options=ODEOptions(solver="rk4", steps=4))
    torch.testing.assert_close(res.x, exact.x, rtol=0, atol=1e-14)


def test_hutchinson_agrees_with_exact_within_standard_errors():
    torch.manual_seed(1)
    d, n_points, n_probes = 5, 4, 2000
    field = TimeMLP(d, width=64).double()
    points = torch.randn(n_points, d, dtype=torch.float64)
    x = points.repeat_interleave(n_probes, dim=0)
    options = ODEOptions(solver="rk4", steps=8)  # fixed steps: same trajectory for both estimators
    exact = flow_divergence(field, points, t0=1.0, t1=0.0, options=options).div_integral
    est = flow_divergence(
        field, x, t0=1.0, t1=0.0, options=options, estimator="hutchinson", generator=torch.Generator().manual_seed(2)
    ).div_integral.reshape(n_points, n_probes)
    mean, se = est.mean(1), est.std(1) / math.sqrt(n_probes)
    assert (se > 0).all()  # a real estimator with variance, not the exact trace
    assert ((mean - exact).abs() < 4 * se).all(), (mean, exact, se)
    # unbiased in aggregate: the mean error over all points is within 4 standard errors of 0
    err = (est - exact[:, None]).reshape(-1)
    assert abs(float(err.mean())) < 4 * float(err.std()) / math.sqrt(err.numel())
    # log_prob with Hutchinson: same statistics through the chunked path
    lp_h = log_prob(field, x, options=options, estimator="hutchinson", chunk_size=3000,
                    generator=torch.Generator().manual_seed(3)).reshape(n_points, n_probes)
    lp_e = log_prob(field, points, options=options)
    assert ((lp_h.mean(1) - lp_e).abs() < 4 * lp_h.std(1) / math.sqrt(n_probes)).all()


def test_hutchinson_is_reproducible_with_a_generator():
    torch.manual_seed(0)
    field = TimeMLP(3)
    x = torch.randn(6, 3)
    runs = [
        log_prob(field, x, estimator="hutchinson", generator=torch.Generator().manual_seed(7)) for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# torchcfm interop


class TXWrapper(torch.nn.Module):
    """The same torchcfm MLP in the (t, x) convention, written independently of torch_wrapper."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, t, x):
        assert t.dim() == 0
        return self.model(torch.cat([x, torch.full_like(x[:, :1], float(t))], dim=1))


@pytest.mark.parametrize("solver", ["rk4", "dopri5"])
def test_torchcfm_torch_wrapper(solver):
    from torchcfm.models import MLP
    from torchcfm.utils import torch_wrapper

    torch.manual_seed(0)
    model = MLP(dim=2, time_varying=True)
    x = torch.randn(50, 2)
    options = ODEOptions(solver=solver, atol=1e-5, rtol=1e-5)
    lp = log_prob(torch_wrapper(model), x, options=options)
    assert lp.shape == (50,) and torch.isfinite(lp).all()
    torch.testing.assert_close(lp, log_prob(TXWrapper(model), x, options=options), rtol=0, atol=1e-5)
    # the package's own VelocityField over the same weights, and its NFE counter
    vf = VelocityField(model)
    res = flow_divergence(vf, x, t0=1.0, t1=0.0, options=options)
    assert vf.nfe == res.nfe
    torch.testing.assert_close(res.div_integral + standard_normal_log_prob(res.x), lp, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# validation


def test_bad_inputs_raise_clear_errors():
    field = LinearInTime()
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="finite"):
        log_prob(field, torch.tensor([[0.0, float("nan")]]))
    with pytest.raises(ValueError, match="finite"):
        flow_divergence(field, torch.tensor([[float("inf"), 0.0]]), t0=0.0, t1=1.0)
    with pytest.raises(TypeError, match="floating"):
        log_prob(field, torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="Tensor"):
        log_prob(field, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="at least 2 dims"):
        log_prob(field, torch.randn(4))
    with pytest.raises(ValueError, match="estimator"):
        log_prob(field, x, estimator="skilling")
    with pytest.raises(ValueError, match="chunk_size"):
        log_prob(field, x, chunk_size=0)
    with pytest.raises(ValueError, match="t1"):
        flow_divergence(field, x, t0=0.0, t1=float("nan"))
    with pytest.raises(ValueError, match="unknown solver"):
        log_prob(field, x, options="rk45")
    with pytest.raises(TypeError, match="callable"):
        log_prob("field", x)
    with pytest.raises(TypeError, match="Generator"):
        log_prob(field, x, estimator="hutchinson", generator=3)
    with pytest.raises(ValueError, match="shaped like x"):
        log_prob(lambda t, x: x[:, :1], x)


def test_exact_divergence_warns_in_high_dimension():
    x = torch.randn(2, 600)
    with pytest.warns(UserWarning, match="hutchinson"):
        res = flow_divergence(LinearInTime(), x, t0=0.0, t1=0.1, options=ODEOptions(solver="euler", steps=1))
    torch.testing.assert_close(res.div_integral, torch.full((2,), 600 * 0.1))


# ---------------------------------------------------------------------------------------------
# bits per dimension


def test_bits_per_dim_known_cases():
    D = 12
    # uniform on [0, 1)^D, data in [0, 1): log p = 0 -> log2(256) = 8 bits
    torch.testing.assert_close(bits_per_dim(torch.zeros(3), D), torch.full((3,), 8.0))
    # uniform on [-1, 1)^D with scale 2: log p = -D log 2 -> still 8 bits
    torch.testing.assert_close(bits_per_dim(torch.full((1,), -D * math.log(2)), D, scale=2.0), torch.tensor([8.0]))
    # uniform on one bin [0, 1/256)^D: log p = D log 256 -> 0 bits
    torch.testing.assert_close(bits_per_dim(torch.full((1,), D * math.log(256)), D), torch.tensor([0.0]), atol=1e-6, rtol=0)
    # 5-bit data (32 bins), uniform: 5 bits
    torch.testing.assert_close(bits_per_dim(torch.zeros(1), D, n_bins=32), torch.tensor([5.0]))
    # N(0, I) density at the origin with scale 2: bpd = log2(2 pi)/2 - 1 + 8 (hand computation)
    lp = standard_normal_log_prob(torch.zeros(1, D, dtype=torch.float64))
    expected = 0.5 * math.log2(2 * math.pi) - 1.0 + 8.0
    torch.testing.assert_close(bits_per_dim(lp, D, scale=2.0), torch.tensor([expected], dtype=torch.float64))
    with pytest.raises(ValueError, match="scale"):
        bits_per_dim(torch.zeros(1), D, scale=0.0)
    with pytest.raises(ValueError, match="dim"):
        bits_per_dim(torch.zeros(1), 0)


def test_bits_per_dim_matches_a_discrete_model():
    """A product of 1-D densities, piecewise constant on the bins, puts exactly P(k) on bin k:
    then -log2 P(k) / D equals bits_per_dim of its density at any point of the bin."""
    g = torch.Generator().manual_seed(0)
    K, D = 8, 3
    probs = torch.rand(D, K, generator=g, dtype=torch.float64)
    probs /= probs.sum(1, keepdim=True)
    k = torch.randint(0, K, (5, D), generator=g)
    u = torch.rand(5, D, generator=g, dtype=torch.float64)
    x = 2 * (k + u) / K - 1  # data in [-1, 1)
    # density of x: P(bin) / (bin width in x units) = probs * K / 2 per dimension
    log_px = torch.log(probs.gather(1, k.T).T * K / 2).sum(1)
    discrete_bits = -torch.log2(probs.gather(1, k.T).T).sum(1) / D
    torch.testing.assert_close(bits_per_dim(log_px, D, n_bins=K, scale=2.0), discrete_bits)
    assert x.min() >= -1 and x.max() < 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_cuda_inputs_with_a_cpu_generator(estimator):
    torch.manual_seed(0)
    field = TimeMLP(3).cuda()
    x = torch.randn(8, 3)
    gen = torch.Generator().manual_seed(0)
    on_gpu = log_prob(field, x.cuda(), estimator=estimator, generator=gen)
    assert on_gpu.device.type == "cuda"
    on_cpu = log_prob(field.cpu(), x, estimator=estimator, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=0, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# the example script, at reduced size


def test_example_log_prob_torchcfm_runs_small():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "log_prob_torchcfm.py"
    spec = importlib.util.spec_from_file_location("log_prob_torchcfm", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = example.main(steps=50, n_test=500)
    assert abs(out["mass"] - 1.0) < 0.02, out
    assert out["nll"] < out["nll_prior"], out  # 50 steps already beat the untrained prior


@pytest.mark.parametrize("dim,rows", [(2, 2048), (63, 2048), (3072, 42)])
def test_log_prob_default_chunk_is_the_models_chunk_bounded_for_gradients(monkeypatch, dim, rows):
    """Low-dimensional data no longer goes through log_prob in one huge chunk (2^17 / D rows: 65,536 for
    D = 2), whose temporaries the CPU allocator maps afresh and faults on; wide data keeps ~2^17
    numbers per chunk."""
    import torchcfm_local as tl
    import torchcfm_local.likelihood as lk

    seen = []
    monkeypatch.setattr(lk, "chain_log_prob_terms", lambda *a, chunk_size, **kw: seen.append(chunk_size))
    lfm = tl.LocalFlowMatching(dim, tl.OUSchedule(0.5, 1.0, 2))
    lfm.n_trained = lfm.n_blocks
    lfm.log_prob_terms(torch.randn(3, dim))
    lfm.log_prob_terms(torch.randn(3, dim), chunk_size=7)
    assert seen == [rows, 7]
