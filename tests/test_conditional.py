"""Conditional LFM: conditions ride along every block; condition dropout and classifier-free guidance."""
import pytest
import torch
from torch import nn
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher

import torchcfm_local as tl

CENTER = torch.tensor([2.0, 1.0])


def two_class_data(n, seed=0):
    """x | c ~ N(c * CENTER, 0.3^2 I) with c = +-1 (the condition is c itself)."""
    g = torch.Generator().manual_seed(seed)
    c = (torch.randint(0, 2, (n, 1), generator=g) * 2 - 1).float()
    return c * CENTER + 0.3 * torch.randn(n, 2, generator=g), c


@pytest.fixture(scope="module")
def cond_model():
    torch.manual_seed(0)
    x, c = two_class_data(4000)
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.5, 3), ConditionalFlowMatcher(sigma=0.0), cond_dim=1,
                               velocity_factory=lambda n: tl.MLP(2, width=64, depth=2, cond_features=2))
    lfm.fit(x, cond=c, cond_dropout=0.2, batches_per_block=400, batch_size=256, seed=1, progress=False)
    return lfm


def test_samples_follow_their_condition(cond_model):
    g = torch.Generator().manual_seed(0)
    for sign in (1.0, -1.0):
        x = cond_model.sample(1000, cond=torch.full((1000, 1), sign), generator=g)
        assert torch.allclose(x.mean(0), sign * CENTER, atol=0.15), (sign, x.mean(0))
        assert (x @ CENTER * sign > 0).float().mean() > 0.97


def test_guidance_zero_is_unconditional_and_larger_guidance_extrapolates(cond_model):
    z = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1))
    plus = torch.ones(2000, 1)
    null = cond_model.decode(z, cond=plus, guidance=0.0)  # v(null): the marginal, both classes
    share = (null @ CENTER > 0).float().mean()
    assert 0.35 < share < 0.65, share
    proj = [float((cond_model.decode(z, cond=plus, guidance=s) @ CENTER).mean()) for s in (1.0, 2.0)]
    assert proj[1] > proj[0] > 0, proj  # s > 1 pushes past the conditional mean, away from the null


def test_conditional_round_trip_and_likelihood(cond_model):
    x, c = two_class_data(300, seed=5)
    z = cond_model.encode(x, cond=c)
    assert (cond_model.decode(z, cond=c) - x).abs().max() < 1e-3
    right = cond_model.log_prob(x, cond=c)
    wrong = cond_model.log_prob(x, cond=-c)
    assert (right > wrong).float().mean() > 0.95


def test_guided_field_formula():
    class Linear(nn.Module):
        def forward(self, t, x, cond):
            return x * cond[:, :1] + cond[:, 1:]

    field = tl.VelocityField(Linear())
    x = torch.randn(4, 1)
    field.cond = torch.tensor([[2.0, 1.0]]).expand(4, 2)
    field.guidance = 3.0
    v_cond, v_null = 2 * x + 1, torch.zeros_like(x)
    assert torch.allclose(field(torch.tensor(0.3), x), v_null + 3.0 * (v_cond - v_null))
    assert field.nfe == 1  # one network call on the doubled batch


def test_save_load_keeps_the_condition(cond_model, tmp_path):
    cond_model.save(tmp_path / "m.pt")
    again = tl.LocalFlowMatching.load(tmp_path / "m.pt")
    assert again.cond_dim == 1
    z, c = torch.randn(50, 2), torch.ones(50, 1)
    assert torch.equal(again.decode(z, cond=c), cond_model.decode(z, cond=c))


def test_conditional_bad_input(cond_model):
    x, c = two_class_data(100)
    z = torch.randn(10, 2)
    with pytest.raises(ValueError, match=r"conditional \(cond_dim=1\); pass cond of shape \(n, 1\)"):
        cond_model.decode(z)
    with pytest.raises(ValueError, match=r"cond must have shape \(10, 1\)"):
        cond_model.decode(z, cond=torch.ones(9, 1))
    with pytest.raises(ValueError, match="NaN"):
        cond_model.decode(z, cond=torch.full((10, 1), float("nan")))
    with pytest.raises(TypeError, match="floating-point"):
        cond_model.decode(z, cond=torch.ones(10, 1, dtype=torch.long))
    plain = tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.5, 2), velocity_factory=lambda n: tl.MLP(2, width=8, depth=1))
    with pytest.raises(ValueError, match="unconditional"):
        plain.fit(x, cond=c, batches_per_block=2, batch_size=10, progress=False)
    with pytest.raises(ValueError, match="cond_dropout needs a conditional model"):
        plain.fit(x, cond_dropout=0.1, batches_per_block=2, batch_size=10, progress=False)
    ot = tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.5, 2), ExactOptimalTransportConditionalFlowMatcher(sigma=0.0),
                              cond_dim=1)
    with pytest.raises(ValueError, match="separate actions from their conditions"):
        ot.fit(x, cond=c, batches_per_block=2, batch_size=10, progress=False)
    with pytest.raises(ValueError, match=r"cond of shape \(2, 4\)"):
        tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.5, 2), cond_dim=3, velocity_factory=lambda n: tl.MLP(2, cond_features=2))
    with pytest.raises(ValueError, match="cond_dim must be a positive int"):
        tl.LocalFlowMatching(2, tl.OUSchedule(0.2, 1.5, 2), cond_dim=0)
