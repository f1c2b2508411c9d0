"""RK4 steps per block for sampling: ``ODEOptions(block_steps=...)`` and ``choose_sampling_steps``."""
import pytest
import torch

import torchcfm_local as tl
from torchcfm_local.policy import Demos, FlowPolicy, collect_demos, load_policy
from torchcfm_local.training.steps import CANDIDATE_STEPS, REFERENCE_STEPS, choose_sampling_steps

FIT = dict(batches_per_block=60, batch_size=128, seed=0, progress=False)


def _data(n=1200, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    return centers[torch.randint(0, 3, (n,), generator=g)] + 0.3 * torch.randn(n, 2, generator=g)


def _model(cond_dim=None):
    torch.manual_seed(0)
    extra = 0 if cond_dim is None else cond_dim + 1
    return tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.5, 3), cond_dim=cond_dim,
                                velocity_factory=lambda n: tl.MLP(2, width=32, depth=2, cond_features=extra))


@pytest.fixture(scope="module")
def fitted():
    model = _model()
    model.fit(_data(), **FIT)
    return model


def test_block_steps_options_validate_and_round_trip():
    ode = tl.ODEOptions(block_steps=[2, 1, 1])
    assert ode.block_steps == (2, 1, 1)
    assert ode.for_block(1, 3).steps == 2 and ode.for_block(3, 3).steps == 1 and ode.for_block(2, 3).block_steps is None
    assert tl.ODEOptions.coerce(ode.to_dict(), tl.ODEOptions()) == ode
    assert "block_steps" not in tl.ODEOptions().to_dict()  # files without it read as before
    with pytest.raises(ValueError, match="2 entries, the model has 3 blocks"):
        tl.ODEOptions(block_steps=(1, 1)).for_block(1, 3)
    with pytest.raises(ValueError, match="fixed-step solver"):
        tl.ODEOptions(solver="dopri5", block_steps=(1, 1, 1))
    for bad in ((), "21", 3):
        with pytest.raises(ValueError, match="non-empty sequence"):
            tl.ODEOptions(block_steps=bad)
    for bad in ((1, 0, 1), (1, 1.5, 1), (1, True, 1)):
        with pytest.raises(ValueError, match="block_steps"):
            tl.ODEOptions(block_steps=bad)


def test_decode_and_log_prob_take_each_blocks_own_steps(fitted):
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1))
    mixed = fitted.decode(z, ode=tl.ODEOptions(block_steps=(3, 1, 2)))
    assert fitted.last_stats.nfe_per_block == (12.0, 4.0, 8.0)  # 4 evaluations per RK4 step, block 1 first
    by_hand = z
    for n, k in ((3, 2), (2, 1), (1, 3)):
        by_hand = fitted.decode(by_hand, blocks=[n], ode=tl.ODEOptions(steps=k))
    assert torch.equal(mixed, by_hand)
    terms = fitted.log_prob_terms(mixed, ode=tl.ODEOptions(block_steps=(3, 1, 2)))
    assert terms.nfe_per_block == (12.0, 4.0, 8.0)
    with pytest.raises(ValueError, match="block_steps has 2 entries"):
        fitted.decode(z, ode=tl.ODEOptions(block_steps=(1, 1)))


def test_chosen_steps_are_the_fewest_within_tolerance_per_block(fitted):
    for tol in (0.1, 0.003):
        ode, choices = choose_sampling_steps(fitted, tol)
        assert ode.solver == "rk4" and ode.block_steps == tuple(c.steps for c in choices) and len(choices) == 3
        for n, c in enumerate(choices, start=1):
            assert c.noise_scale == pytest.approx(tl.training.steps.ou_noise_scale(fitted.schedule.step(n)))
            assert c.error <= tol or c.steps == REFERENCE_STEPS
            assert all(c.tried[k] > tol for k in CANDIDATE_STEPS if k < c.steps)
    loose = choose_sampling_steps(fitted, 0.1)[0].block_steps
    tight = choose_sampling_steps(fitted, 0.003)[0].block_steps
    assert all(a <= b for a, b in zip(loose, tight)) and sum(tight) > sum(loose)
    assert choose_sampling_steps(fitted, 1e3)[0].block_steps == (1, 1, 1)
    # the probe's own claim, checked: each block's chosen solve of the probe's inputs against a tight
    # adaptive solve of the same inputs, relative to the block's noise scale
    ode, choices = choose_sampling_steps(fitted, 0.003)
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
    for n in (3, 2, 1):
        out = fitted.transport(x, [n], True, ode.for_block(n, 3), 256)[0]
        ref = fitted.transport(x, [n], True, tl.ODEOptions(steps=REFERENCE_STEPS), 256)[0]
        exact = fitted.double().transport(x.double(), [n], True, tl.ODEOptions("dopri5", 1e-10, 1e-10), 256)[0]
        fitted.float()
        true = float((out.double() - exact).pow(2).mean().sqrt()) / choices[n - 1].noise_scale
        assert true == pytest.approx(choices[n - 1].error, rel=0.2, abs=2e-5)
        x = ref


def test_choice_checks_its_inputs(fitted):
    with pytest.raises(ValueError, match="tol must be a positive finite number"):
        choose_sampling_steps(fitted, 0.0)
    with pytest.raises(ValueError, match="cond must be given for a conditional model"):
        choose_sampling_steps(fitted, 0.01, cond=torch.zeros(5, 3))
    with pytest.raises(RuntimeError, match="cannot choose sampling steps"):
        choose_sampling_steps(_model(), 0.01)
    conditional = _model(cond_dim=3)
    conditional.fit(_data(400), cond=torch.randn(400, 3), **{**FIT, "batches_per_block": 5})
    with pytest.raises(ValueError, match="cond must be given"):
        choose_sampling_steps(conditional, 0.01)
    ode, choices = choose_sampling_steps(conditional, 0.05, cond=torch.randn(400, 3))
    assert len(ode.block_steps) == 3


def test_policy_samples_with_chosen_steps_and_keeps_them(tmp_path):
    demos = collect_demos("point", 6, seed=0)
    policy = FlowPolicy(demos.obs_dims, 2, network="mlp", network_config={"width": 32})
    with pytest.raises(RuntimeError, match="not trained"):
        policy.choose_sampling_steps(demos)
    policy.fit(demos, epochs=2, progress=False)
    choices = policy.choose_sampling_steps(demos, tol=0.05)
    assert policy.ode.block_steps == tuple(c.steps for c in choices)
    obs = {"pos": torch.zeros(4, 2, 2)}
    policy.predict_action(obs)
    assert policy.flow.last_stats.nfe_per_block == tuple(4.0 * c.steps for c in choices)
    policy.save(tmp_path / "p.pt")
    again = load_policy(tmp_path / "p.pt")
    assert again.ode == policy.ode
    with pytest.raises(ValueError, match="lack observation key"):
        policy.choose_sampling_steps(Demos(obs={"other": demos.obs["pos"]}, action=demos.action,
                                           episode_ends=demos.episode_ends))
