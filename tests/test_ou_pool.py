"""fit(pool="ou"): block n trains on the exact OU marginal of the data, with no pool pushforward."""
import math
import os
import runpy
import subprocess
import sys
import textwrap

import pytest
import torch

import torchcfm_local as tl
from conftest import Crash, crash_at
from torchcfm_local.training import BlockTrainer, FitConfig, TrainingPool
from torchcfm_local.training.pool import ou_marginal

SCHEDULE = (0.3, 1.5, 3)
FIT = dict(batches_per_block=12, batch_size=64, seed=3, checkpoint_every=4, progress=False, pool="ou")
MEAN, STD = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 3.0])


def _gaussian(n, seed):
    return MEAN + STD * torch.randn(n, 2, generator=torch.Generator().manual_seed(seed))


def _model(seed=0, cond_dim=None):
    torch.manual_seed(seed)
    cond_features = 0 if cond_dim is None else cond_dim + 1
    return tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE), cond_dim=cond_dim,
                                velocity_factory=lambda n: tl.MLP(2, width=16, depth=1, cond_features=cond_features))


def _marginal(t):
    """Mean and variance of the OU marginal at time t of N(MEAN, STD^2)."""
    a = math.exp(-t)
    return a * MEAN, a * a * STD**2 + 1 - a * a


def test_time_before_sums_the_earlier_steps():
    schedule = tl.OUSchedule(*SCHEDULE)
    assert [schedule.time_before(n) for n in (1, 2, 3)] == [0.0, 0.3, pytest.approx(0.75)]
    assert tl.OUSchedule.global_flow().time_before(1) == 0.0
    with pytest.raises(IndexError, match="block 4 is outside 1..3"):
        schedule.time_before(4)


def test_ou_marginal_has_the_ou_mean_and_variance():
    x = _gaussian(200_000, seed=0)
    t = tl.OUSchedule(*SCHEDULE).time_before(3)
    y = ou_marginal(x, t, torch.Generator().manual_seed(1))
    mean, var = _marginal(t)
    torch.testing.assert_close(y.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(y.var(0), var, atol=0.0, rtol=0.02)
    assert ou_marginal(x, 0.0) is x  # block 1: the data itself, nothing drawn
    # a rank's share of the global batch gets the noise the whole batch would give its rows
    full = ou_marginal(x[:10], 0.4, torch.Generator().manual_seed(2))
    part = ou_marginal(x[3:7], 0.4, torch.Generator().manual_seed(2), batch_size=10, rows=(3, 7))
    assert torch.equal(part, full[3:7])
    with pytest.raises(ValueError, match="OU time must be a finite number >= 0"):
        ou_marginal(x, -1.0)


def _record_batches(monkeypatch):
    """Every (block, x1, cond) the block losses of fit see."""
    seen = []
    loss_at = BlockTrainer.loss_at

    def recording(self, x1, z, t, field=None, cond=None):
        seen.append((self.block, x1.detach().clone(), None if cond is None else cond.detach().clone()))
        return loss_at(self, x1, z, t, field, cond)

    monkeypatch.setattr(BlockTrainer, "loss_at", recording)
    return seen


def test_ou_fit_trains_on_the_ou_marginals_without_pushing(monkeypatch):
    def no_push(*args, **kwargs):
        raise AssertionError("pool='ou' must not push the pool")

    monkeypatch.setattr(TrainingPool, "push", no_push)
    seen = _record_batches(monkeypatch)
    lfm = _model()
    report = lfm.fit(_gaussian(3000, seed=1), **{**FIT, "batches_per_block": 40, "batch_size": 500})
    assert lfm.n_trained == 3 and [b.block for b in report.blocks] == [1, 2, 3]
    assert all(b.pushforward_seconds == 0 and b.pool is None for b in report.blocks)
    schedule = lfm.schedule
    for n in (1, 2, 3):
        batch = torch.cat([x1 for block, x1, _ in seen if block == n])
        assert batch.shape == (40 * 500, 2)
        mean, var = _marginal(schedule.time_before(n))
        torch.testing.assert_close(batch.mean(0), mean, atol=0.06, rtol=0)
        torch.testing.assert_close(batch.var(0), var, atol=0.0, rtol=0.06)
    monkeypatch.undo()
    samples = lfm.sample(200, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (200, 2) and torch.isfinite(samples).all()
    assert torch.isfinite(lfm.log_prob(samples[:20])).all()


def test_same_seed_same_weights():
    x = _gaussian(500, seed=2)
    a, b, c = _model(), _model(), _model()
    a.fit(x, **FIT)
    b.fit(x, **FIT)
    c.fit(x, **{**FIT, "seed": 4})
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


@pytest.mark.parametrize("memmap", [False, True])
def test_interrupted_ou_run_resumes_bit_identically(tmp_path, memmap):
    x = _gaussian(600, seed=3)
    opts = dict(FIT, standardize="diagonal", pool_dir=tmp_path / "pool" if memmap else None)
    ref = _model()
    ref.fit(x, **{**opts, "pool_dir": None})
    with pytest.raises(Crash):
        _model().fit(x, checkpoint_dir=tmp_path / "run", callback=crash_at(2, 7), **opts)
    assert not (tmp_path / "run" / "pool.pt").exists()  # the pool is the data: nothing to save
    with pytest.raises(ValueError, match="pool: 'ou' -> 'pushforward'"):
        _model().fit(x, checkpoint_dir=tmp_path / "run", resume=True, **{**opts, "pool": "pushforward"})
    resumed = _model(seed=9)
    report = resumed.fit(x, checkpoint_dir=tmp_path / "run", resume=True, **opts)
    assert [b.block for b in report.blocks] == [2, 3] and report.blocks[0].resumed_from == 4
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    if memmap:
        from torchcfm_local.pool import MemmapPool

        assert MemmapPool.open(tmp_path / "pool").after_block == 0  # never pushed


def test_conditional_rows_keep_their_conditions(monkeypatch):
    seen = _record_batches(monkeypatch)
    x = _gaussian(2000, seed=5)
    lfm = _model(cond_dim=2)
    lfm.fit(x, cond=x, **{**FIT, "batches_per_block": 20, "batch_size": 500})  # each row's condition is the row
    for n in (1, 2, 3):
        a = math.exp(-lfm.schedule.time_before(n))
        resid = torch.cat([x1 - a * c[:, :2] for block, x1, c in seen if block == n])  # the OU noise alone
        assert resid.mean(0).abs().max() < 0.05
        torch.testing.assert_close(resid.var(0), torch.full((2,), 1 - a * a), atol=0.05, rtol=0)
    monkeypatch.undo()
    assert torch.isfinite(lfm.sample(5, cond=x[:5])).all()


def test_pool_option_checks():
    with pytest.raises(ValueError, match=r"pool must be one of \('pushforward', 'ou'\), got 'ou_marginal'"):
        FitConfig(pool="ou_marginal")
    with pytest.raises(ValueError, match="encode_final_pool=True needs pool='pushforward'"):
        FitConfig(pool="ou", encode_final_pool=True)
    assert FitConfig(pool="ou").encode_final_pool is False and FitConfig().encode_final_pool is True
    assert FitConfig.saved_settings({"pushforward_ode": None})["pool"] == "pushforward"  # runs from before the option


SCRIPT = """
    import sys
    import torch
    import torchcfm_local as tl

    def main(out):
        x = torch.tensor([2.0, -1.0]) + torch.tensor([0.5, 3.0]) * torch.randn(800, 2, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(0)
        lfm = tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.5, 3), velocity_factory=lambda n: tl.MLP(2, width=16, depth=1))
        lfm.fit(x, batches_per_block=10, batch_size=64, seed=1, pool="ou", standardize="full", checkpoint_dir=out,
                progress=False)

    if __name__ == "__main__":
        main(sys.argv[1])
"""


def test_two_gloo_processes_match_one_process(tmp_path):
    script = tmp_path / "fit_ou.py"
    script.write_text(textwrap.dedent(SCRIPT))
    runpy.run_path(str(script))["main"](str(tmp_path / "one"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(tmp_path / "two")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    one, two = (tl.LocalFlowMatching.load(tmp_path / d / "model.pt") for d in ("one", "two"))
    assert one.standardizer == two.standardizer and one.n_trained == two.n_trained == 3
    for a, b in zip(one.parameters(), two.parameters()):  # the same global batches: equal up to summation order
        assert (a - b).abs().max() < 1e-4
