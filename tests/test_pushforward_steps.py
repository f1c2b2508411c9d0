"""fit(pushforward_tol=...): RK4 steps of each block's pool pushforward chosen by measured error."""
import math

import pytest
import torch
from torchcfm.conditional_flow_matching import VariancePreservingConditionalFlowMatcher

import torchcfm_local as tl
from torchcfm_local.training import FitConfig
from torchcfm_local.training.config import PUSHFORWARD_TOL
from torchcfm_local.training.steps import CANDIDATE_STEPS, PROBE_ROWS, REFERENCE_STEPS, choose_steps, ou_noise_scale

FIT = dict(batches_per_block=60, batch_size=128, seed=0, progress=False)


def _data(n=1500, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    return centers[torch.randint(0, 3, (n,), generator=g)] + 0.3 * torch.randn(n, 2, generator=g)


def _model(matcher=None, cond_dim=None, seed=0):
    torch.manual_seed(seed)
    extra = 0 if cond_dim is None else cond_dim + 1
    return tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.5, 3), matcher=matcher, cond_dim=cond_dim,
                                velocity_factory=lambda n: tl.MLP(2, width=32, depth=2, cond_features=extra))


def test_ou_noise_scale():
    assert ou_noise_scale(float("inf")) == 1.0
    assert ou_noise_scale(0.3) == pytest.approx(math.sqrt(1 - math.exp(-0.6)))
    assert ou_noise_scale(1e-8) == pytest.approx(math.sqrt(2e-8), rel=1e-6)  # no cancellation for tiny steps


def test_choice_is_the_fewest_steps_within_tolerance_and_its_error_is_honest():
    x = _data()
    lfm = _model(VariancePreservingConditionalFlowMatcher(sigma=0.0))
    lfm.fit(x, **FIT, pushforward_tol=None)
    rows = x.clone()
    for tol in (0.05, 0.002):
        choice = choose_steps(lfm, 1, rows, None, tol, chunk_size=4096)
        assert choice.error <= tol and choice.tried[choice.steps] == choice.error
        smaller = [k for k in choice.tried if k < choice.steps]
        assert smaller == [k for k in CANDIDATE_STEPS if k < choice.steps]
        assert all(choice.tried[k] > tol for k in smaller)
        # the estimate against the reference RK4 steps agrees with the error against a tight adaptive solve
        probe = rows[torch.linspace(0, len(rows) - 1, PROBE_ROWS).round().long().unique()]
        pushed = lfm.transport(probe, [1], False, tl.ODEOptions(solver="rk4", steps=choice.steps), 4096)[0]
        exact = lfm.double().transport(probe.double(), [1], False, tl.ODEOptions(solver="dopri5", atol=1e-10, rtol=1e-10),
                                       4096)[0]
        lfm.float()
        true = float((pushed.double() - exact).pow(2).mean().sqrt()) / choice.noise_scale
        assert true == pytest.approx(choice.error, rel=0.2, abs=2e-5)
    assert choose_steps(lfm, 1, rows, None, 1e3, chunk_size=4096).steps == 1
    # no candidate reaches an unreachable tolerance: the reference itself, with an upper error estimate
    hopeless = choose_steps(lfm, 1, rows, None, 1e-12, chunk_size=4096)
    assert hopeless.steps == REFERENCE_STEPS and hopeless.error == hopeless.tried[CANDIDATE_STEPS[-1]] > 1e-12


def test_fit_records_the_chosen_steps_and_pushes_with_them():
    x = _data()
    report = _model().fit(x, **FIT)  # default tolerance
    pushed = [b for b in report.blocks if b.pushforward_seconds > 0]
    assert len(pushed) == 3  # blocks 1 and 2 for the next block, block 3 for the final pool report
    for b in pushed:
        assert b.pushforward_steps in CANDIDATE_STEPS + (REFERENCE_STEPS,)
        assert b.pushforward_nfe == 4 * b.pushforward_steps
        assert b.pushforward_error <= PUSHFORWARD_TOL or b.pushforward_steps == REFERENCE_STEPS
    assert "push steps (rel. err)" in report.summary()
    fixed = _model().fit(x, **FIT, pushforward_ode={"solver": "rk4", "steps": 3})  # an explicit solver wins
    assert [(b.pushforward_steps, b.pushforward_nfe) for b in fixed.blocks] == [(None, 12.0)] * 3


def test_chosen_steps_match_a_fixed_run_with_those_steps():
    """The pool a block trains on is the pushforward with the chosen steps: same weights as a run fixed at them."""
    x = _data(800)
    adaptive = _model()
    report = adaptive.fit(x, **FIT, pushforward_tol=0.05)
    steps = report.blocks[0].pushforward_steps
    fixed = _model()
    fixed.fit(x, **{**FIT, "batches_per_block": [60, 60, 1]}, pushforward_ode={"solver": "rk4", "steps": steps})
    assert torch.equal(adaptive.nets[1].net[0].weight, fixed.nets[1].net[0].weight)


def test_conditional_model_and_resume(tmp_path):
    x, cond = _data(600), torch.randn(600, 3)
    lfm = _model(cond_dim=3)
    report = lfm.fit(x, cond=cond, **FIT, checkpoint_dir=tmp_path)
    assert all(b.pushforward_steps is not None for b in report.blocks)
    again = _model(cond_dim=3)
    again.fit(x, cond=cond, **FIT, checkpoint_dir=tmp_path, resume=True)  # nothing left to train
    assert torch.equal(again.nets[2].net[0].weight, lfm.nets[2].net[0].weight)
    with pytest.raises(ValueError, match="pushforward_tol: 0.01 -> 0.1"):
        _model(cond_dim=3).fit(x, cond=cond, **FIT, checkpoint_dir=tmp_path, resume=True, pushforward_tol=0.1)


@pytest.mark.parametrize("bad", [0, -1e-3, float("nan"), float("inf"), "0.01", True])
def test_bad_tolerance(bad):
    with pytest.raises(ValueError, match="pushforward_tol must be a positive finite number"):
        FitConfig(pushforward_tol=bad)


def test_explicit_solver_turns_the_tolerance_off():
    assert FitConfig(pushforward_ode="dopri5").pushforward_tol is None
    assert FitConfig().pushforward_tol == PUSHFORWARD_TOL
    assert FitConfig(pushforward_tol=None).pushforward_ode.steps == 8
