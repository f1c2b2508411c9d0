import math

import pytest
import torch

import torchcfm_local as tl


@pytest.mark.parametrize("h", [0.05, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("m,s", [(0.0, 1.0), (3.0, 0.5), (-2.0, 2.0)])
def test_ou_step_moments(h, m, s):
    torch.manual_seed(0)
    n = 400_000
    x = m + s * torch.randn(n, dtype=torch.float64)
    y = tl.ou_step(x, h)
    mean = math.exp(-h) * m
    var = math.exp(-2 * h) * s**2 + 1 - math.exp(-2 * h)
    # standard errors of the sample mean / variance, times 5
    assert abs(y.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(y.var().item() - var) < 5 * var * math.sqrt(2 / n)


def test_ou_step_with_given_noise_is_exact():
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    z = torch.tensor([[0.5, 0.25]], dtype=torch.float64)
    h = 0.4
    expected = math.exp(-h) * x + math.sqrt(1 - math.exp(-2 * h)) * z
    torch.testing.assert_close(tl.ou_step(x, h, z), expected, rtol=0, atol=1e-15)
    # the free step returns the noise itself
    assert torch.equal(tl.ou_step(x, math.inf, z), z)


def test_schedule_geometric_steps_and_free_last_block():
    sched = tl.OUSchedule(h0=0.025, rho=1.25, n_blocks=9)
    assert sched.n_blocks == 9
    assert len(sched.coupled_steps) == 8
    for n in range(1, 9):
        assert sched.step(n) == pytest.approx(0.025 * 1.25 ** (n - 1), rel=1e-12)
        assert not sched.is_free(n)
    assert sched.is_free(9) and math.isinf(sched.step(9))
    assert sched.step_sizes[-1] == math.inf


def test_schedule_from_steps_and_global_flow():
    sched = tl.OUSchedule.from_steps([0.15, 0.2, 0.26])
    assert sched.n_blocks == 4
    assert sched.step_sizes == (0.15, 0.2, 0.26, math.inf)
    assert sched == tl.OUSchedule.from_steps(sched.to_list())
    glob = tl.OUSchedule.global_flow()
    assert glob.n_blocks == 1 and glob.is_free(1)
    assert tl.OUSchedule(h0=0.3, rho=2.0, n_blocks=1) == glob


@pytest.mark.parametrize(
    "kwargs,err,match",
    [
        (dict(h0=0.0, rho=1.0, n_blocks=3), ValueError, "h0 must be a finite number > 0"),
        (dict(h0=-0.1, rho=1.0, n_blocks=3), ValueError, "h0 must be a finite number > 0"),
        (dict(h0=0.1, rho=0.0, n_blocks=3), ValueError, "rho must be a finite number > 0"),
        (dict(h0=0.1, rho=-1.0, n_blocks=3), ValueError, "rho must be a finite number > 0"),
        (dict(h0=0.1, rho=1.0, n_blocks=0), ValueError, "n_blocks must be >= 1"),
        (dict(h0=0.1, rho=1.0, n_blocks=2.5), TypeError, "n_blocks must be an int"),
        (dict(h0=float("nan"), rho=1.0, n_blocks=3), ValueError, "h0 must be a finite number > 0"),
        (dict(h0=0.1, rho=1e300, n_blocks=4), ValueError, r"h0 \* rho\^\(n-1\) overflows"),  # overflows to inf
        (dict(h0="0.1", rho=1.0, n_blocks=3), TypeError, "h0 must be a number"),
    ],
)
def test_schedule_rejects_bad_values(kwargs, err, match):
    with pytest.raises(err, match=match):
        tl.OUSchedule(**kwargs)


@pytest.mark.parametrize("steps,err,match", [
    ([0.1, 0.0], ValueError, "step size of block 2 must be a finite number > 0"),
    ([0.1, -0.2], ValueError, "step size of block 2 must be a finite number > 0"),
    ([float("inf")], ValueError, "step size of block 1 must be a finite number > 0"),
    ([float("nan")], ValueError, "step size of block 1 must be a finite number > 0"),
    ("0.1", TypeError, "steps must be a sequence of numbers"),
])
def test_from_steps_rejects_bad_entries(steps, err, match):
    with pytest.raises(err, match=match):
        tl.OUSchedule.from_steps(steps)


def test_block_index_out_of_range():
    with pytest.raises(IndexError, match=r"block 4 is outside 1\.\.3"):
        tl.OUSchedule(h0=0.1, rho=1.0, n_blocks=3).step(4)
