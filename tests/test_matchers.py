import math

import numpy as np
import pytest
import torch
from torchcfm.conditional_flow_matching import (
    ConditionalFlowMatcher,
    ExactOptimalTransportConditionalFlowMatcher,
    VariancePreservingConditionalFlowMatcher,
)

import torchcfm_local as tl

MATCHERS = {
    "linear": ConditionalFlowMatcher,
    "trig": VariancePreservingConditionalFlowMatcher,
    "ot": ExactOptimalTransportConditionalFlowMatcher,
}


def reference_path(kind, x0, x1, t):
    """The linear and trigonometric interpolants, written out again in float64."""
    tt = t.reshape(-1, *([1] * (x0.dim() - 1)))
    if kind == "trig":
        c, s = torch.cos(math.pi * tt / 2), torch.sin(math.pi * tt / 2)
        return c * x0 + s * x1, math.pi / 2 * (c * x1 - s * x0)
    return (1 - tt) * x0 + tt * x1, x1 - x0


@pytest.mark.parametrize("kind", ["linear", "trig"])
@pytest.mark.parametrize("shape", [(2,), (3, 4)])
@pytest.mark.parametrize("h", [0.05, 0.7, math.inf])
def test_matcher_matches_independent_derivation(kind, shape, h):
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(16, *shape, generator=g, dtype=torch.float64) * 2 + 1
    z = torch.randn(16, *shape, generator=g, dtype=torch.float64)
    t = torch.rand(16, generator=g, dtype=torch.float64)
    local = tl.LocalBlockMatcher(MATCHERS[kind](sigma=0.0), h)
    t_out, xt, ut = local.sample_location_and_conditional_flow(z, x1, t)
    x0 = z if math.isinf(h) else math.exp(-h) * x1 + math.sqrt(1 - math.exp(-2 * h)) * z
    ref_xt, ref_ut = reference_path(kind, x0, x1, t)
    assert torch.equal(t_out, t)
    torch.testing.assert_close(xt, ref_xt, rtol=0, atol=1e-13)
    torch.testing.assert_close(ut, ref_ut, rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape", [(2,), (3, 4)])
@pytest.mark.parametrize("h", [0.05, 0.7, math.inf])
def test_exact_ot_matcher_is_an_optimal_permutation(shape, h):
    import ot

    g = torch.Generator().manual_seed(2)
    B = 24
    x1 = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    z = torch.randn(B, *shape, generator=g, dtype=torch.float64)
    t = torch.rand(B, generator=g, dtype=torch.float64)
    local = tl.LocalBlockMatcher(ExactOptimalTransportConditionalFlowMatcher(sigma=0.0), h)
    _, xt, ut = local.sample_location_and_conditional_flow(z, x1, t)
    tt = t.reshape(-1, *([1] * len(shape)))
    x0 = z if math.isinf(h) else math.exp(-h) * x1 + math.sqrt(1 - math.exp(-2 * h)) * z
    torch.testing.assert_close(xt - tt * ut, x0, rtol=0, atol=1e-12)  # noise side kept in order
    x1_paired = xt + (1 - tt) * ut
    # a permutation of x1: every data sample used exactly once (torchcfm's sampler duplicates)
    dist = torch.cdist(x1_paired.reshape(B, -1), x1.reshape(B, -1))
    perm = dist.argmin(1)
    assert dist.min(1).values.max() < 1e-10
    assert sorted(perm.tolist()) == list(range(B))
    # and optimal: its cost equals the exact OT cost from POT
    cost = ((x0 - x1_paired) ** 2).reshape(B, -1).sum(1).mean().item()
    M = torch.cdist(x0.reshape(B, -1), x1.reshape(B, -1)).pow(2).numpy()
    assert cost == pytest.approx(ot.emd2(np.full(B, 1 / B), np.full(B, 1 / B), M), rel=1e-9)


def test_exact_ot_is_reproducible_under_torch_seed_only():
    x1 = torch.randn(64, 3, generator=torch.Generator().manual_seed(3))
    local = tl.LocalBlockMatcher(ExactOptimalTransportConditionalFlowMatcher(sigma=0.0), 0.3)
    outs = []
    for np_seed in (0, 1):
        np.random.seed(np_seed)  # torchcfm's sampler would depend on this
        torch.manual_seed(7)
        outs.append(local.sample_location_and_conditional_flow(None, x1))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["linear", "trig"])
def test_free_block_is_plain_torchcfm(kind):
    x0 = torch.randn(32, 2, generator=torch.Generator().manual_seed(4))
    x1 = torch.randn(32, 2, generator=torch.Generator().manual_seed(5)) + 3
    fm = MATCHERS[kind](sigma=0.0)
    torch.manual_seed(11)
    ours = tl.LocalBlockMatcher(fm, math.inf).sample_location_and_conditional_flow(x0, x1)
    torch.manual_seed(11)
    theirs = fm.sample_location_and_conditional_flow(x0, x1)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)


def test_free_block_noise_is_independent_and_coupled_block_is_not():
    torch.manual_seed(0)
    x1 = torch.randn(20000, 1) * 3
    t = torch.zeros(20000)  # x_t at t = 0 is the noise side itself
    for h, expected in ((math.inf, 0.0), (0.2, None)):
        local = tl.LocalBlockMatcher(ConditionalFlowMatcher(sigma=0.0), h)
        _, x0, _ = local.sample_location_and_conditional_flow(None, x1, t)
        corr = torch.corrcoef(torch.stack([x0[:, 0], x1[:, 0]]))[0, 1].item()
        if expected is None:
            a, s = math.exp(-h), math.sqrt(1 - math.exp(-2 * h))
            assert corr == pytest.approx(a * 3 / math.sqrt(a**2 * 9 + s**2), abs=0.02)
        else:
            assert abs(corr) < 0.03
            assert x0.std().item() == pytest.approx(1.0, abs=0.03)


def test_beta_time_sampling_moments_and_use():
    local = tl.LocalBlockMatcher(ConditionalFlowMatcher(sigma=0.0), 0.1, t_beta=(2.0, 5.0))
    like = torch.zeros(1)
    t = local.sample_time(200_000, like, torch.Generator().manual_seed(0))
    assert t.mean().item() == pytest.approx(2 / 7, abs=0.003)
    assert t.var().item() == pytest.approx(2 * 5 / (49 * 8), abs=0.002)
    torch.manual_seed(0)
    t_drawn, _, _ = local.sample_location_and_conditional_flow(None, torch.zeros(50_000, 2))
    assert t_drawn.mean().item() == pytest.approx(2 / 7, abs=0.005)


@pytest.mark.parametrize("bad", [(0.0, 1.0), (1.0,), "ab", (1.0, float("inf"))])
def test_bad_beta(bad):
    with pytest.raises(ValueError, match=r"t_beta must be a pair \(a, b\) of positive"):
        tl.LocalBlockMatcher(ConditionalFlowMatcher(), 0.1, t_beta=bad)


def test_bad_matcher_and_shapes():
    with pytest.raises(TypeError, match="matcher must be a torchcfm ConditionalFlowMatcher"):
        tl.LocalBlockMatcher(object(), 0.1)
    with pytest.raises(ValueError, match="OU step h must be > 0"):
        tl.LocalBlockMatcher(ConditionalFlowMatcher(), 0.0)
    local = tl.LocalBlockMatcher(ConditionalFlowMatcher(), 0.1)
    with pytest.raises(ValueError, match=r"x0 \(noise\) and x1 \(data\) must have the same shape"):
        local.sample_location_and_conditional_flow(torch.zeros(4, 2), torch.zeros(4, 3))


def test_delegates_torchcfm_attributes():
    fm = ConditionalFlowMatcher(sigma=0.25)
    local = tl.LocalBlockMatcher(fm, 0.1)
    assert local.sigma == 0.25
    x0, x1, t = torch.zeros(3, 2), torch.ones(3, 2), torch.full((3,), 0.5)
    torch.testing.assert_close(local.compute_mu_t(x0, x1, t), fm.compute_mu_t(x0, x1, t))
