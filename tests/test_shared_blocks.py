"""One network for all LFM blocks (torchcfm_local.shared) and their joint fit (training/joint.py)."""
import io

import pytest
import torch
from torch import nn

import torchcfm_local as tl
from conftest import Crash, two_gaussians
from torchcfm_local.networks import count_parameters
from torchcfm_local.shared import SharedBlock, SharedVelocity, shared_network, shared_width_for_parameters
from torchcfm_local.training import joint
from torchcfm_local.training.joint import block_rows

SCHEDULE = (0.3, 1.5, 3)
FIT = dict(pool="ou", batches_per_block=20, batch_size=60, seed=1, progress=False, checkpoint_every=8)


def _model(width=24, seed=0, cond_dim=None, embed_dim=None):
    torch.manual_seed(seed)
    shared = SharedVelocity.mlp(2, 3, width=width, depth=2, embed_dim=embed_dim, cond_dim=cond_dim)
    return tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE), velocity_factory=shared.block, cond_dim=cond_dim)


@pytest.fixture(scope="module")
def data():
    return two_gaussians(1500, seed=0)


@pytest.fixture(scope="module")
def trained(data):
    lfm = _model()
    report = lfm.fit(data, **{**FIT, "batches_per_block": 60})
    return lfm, report


def test_one_network_serves_all_blocks():
    lfm = _model(width=24)
    shared = shared_network(lfm)
    assert isinstance(shared, SharedVelocity) and shared.embed_dim == 3  # default: one dimension per block
    assert all(isinstance(net, SharedBlock) and net.shared is shared and net.block == n
               for n, net in enumerate(lfm.nets, 1))
    assert count_parameters(lfm) == count_parameters(shared.core) + 3 * 3 == count_parameters(shared)
    # an MLP core with the embedding as its conditioning input: (2 + 3 time features + 3) -> 24 -> 24 -> 2
    assert count_parameters(shared.core) == (8 * 24 + 24) + (24 * 24 + 24) + (24 * 2 + 2)
    assert shared_network(tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE))) is None
    # the blocks differ only by their embedding rows
    x, t = torch.randn(5, 2), torch.rand(5)
    with torch.no_grad():
        assert not torch.allclose(lfm.nets[0](t, x), lfm.nets[1](t, x))
        shared.embedding.weight[1] = shared.embedding.weight[0]
        assert torch.equal(lfm.nets[0](t, x), lfm.nets[1](t, x))
        rows = shared(t, x, torch.tensor([1, 2, 3, 1, 3]))  # several blocks in one call
        assert torch.allclose(rows[2], lfm.nets[2](t[2:3], x[2:3])[0])


def test_to_converts_the_shared_weights_once():
    lfm = _model().to(torch.float64)
    shared = shared_network(lfm)
    assert lfm.dtype == torch.float64 and all(p.dtype == torch.float64 for p in shared.parameters())
    assert all(net.shared is shared for net in lfm.nets) and count_parameters(lfm) == count_parameters(shared)
    lfm.n_trained = 3
    z = torch.randn(4, 2, dtype=torch.float64)
    assert lfm.decode(z).dtype == torch.float64


def test_joint_fit_splits_every_batch_and_trains_every_block(data, monkeypatch):
    assert block_rows([20, 20, 20], 60) == [20, 20, 20] and block_rows([2, 1, 1], 40) == [20, 10, 10]
    assert block_rows([1, 1, 1], 64) == [21, 21, 22]
    lfm = _model()
    shared = shared_network(lfm)
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    times, calls = [], []
    ou = joint.ou_marginal
    monkeypatch.setattr(joint, "ou_marginal", lambda x, t, *a: times.append((x.shape[0], t)) or ou(x, t, *a))
    shared.register_forward_hook(lambda mod, args, out: calls.append(args[2]))
    losses = []
    report = lfm.fit(data, callback=lambda block, step, loss: losses.append(loss),
                     **{**FIT, "batches_per_block": [10, 5, 5], "batch_size": 40})
    # sum(batches_per_block) steps of batch_size, block n's share in proportion to its batches
    assert len(calls) == 20 and all(torch.equal(c, torch.tensor([1] * 20 + [2] * 10 + [3] * 10)) for c in calls)
    schedule = lfm.schedule
    assert times[:3] == [(20, 0.0), (10, schedule.time_before(2)), (10, schedule.time_before(3))]
    assert lfm.n_trained == 3 and [b.block for b in report.blocks] == [1, 2, 3]
    assert all(b.batches == 20 and len(b.losses) == 20 for b in report.blocks)
    after = shared.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)  # every weight tensor moved
    assert all(not torch.equal(before["embedding.weight"][n], after["embedding.weight"][n]) for n in range(3))
    # the joint loss is the mean over the batch's rows: the blocks' losses weighted by their shares
    for step, loss in enumerate(losses):
        by_block = [b.losses[step] for b in report.blocks]
        assert loss == pytest.approx(0.5 * by_block[0] + 0.25 * by_block[1] + 0.25 * by_block[2], rel=1e-5)
    rep2 = _model().fit(data, **{**FIT, "batches_per_block": [10, 5, 5], "batch_size": 40})
    assert [b.losses for b in rep2.blocks] == [b.losses for b in report.blocks]  # seeded: reproducible


def test_pushforward_and_block_by_block_training_are_refused(data, trained):
    lfm = _model()
    with pytest.raises(ValueError, match="need pool='ou'.*move the shared weights"):
        lfm.fit(data, **{**FIT, "pool": "pushforward"})
    with pytest.raises(ValueError, match="need pool='ou'"):
        lfm.fit(data, batches_per_block=2, progress=False)  # the default pool is the pushforward
    with pytest.raises(ValueError, match="share one network.*fit\\(x, pool='ou'\\)"):
        next(iter(lfm.train_blocks(data)))
    with pytest.raises(ValueError, match="share one network"):
        tl.reflow(trained[0], n_pairs=64, batch_size=32, batches_per_block=1)
    with pytest.raises(ValueError, match="leaves block\\(s\\) \\[1\\] without rows"):
        lfm.fit(data, **{**FIT, "batch_size": 2})


def test_bad_shared_setups_give_clear_errors(data):
    shared4 = SharedVelocity.mlp(2, 4, width=8, depth=1)
    with pytest.raises(ValueError, match="built for 4 blocks but the model has 3"):
        tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE), velocity_factory=shared4.block).fit(data, **FIT)
    small = SharedVelocity.mlp(2, 2, width=8, depth=1)
    with pytest.raises(IndexError, match="block 3 is outside the blocks 1..2"):
        tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE), velocity_factory=small.block)
    other = tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE),
                                 velocity_factory=lambda n: SharedVelocity.mlp(2, 3, width=8, depth=1).block(n))
    with pytest.raises(ValueError, match="blocks \\[2, 3\\] are views of another SharedVelocity"):
        other.fit(data, **FIT)
    mixed = tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE),
                                 velocity_factory=lambda n: shared4.block(n) if n < 3 else tl.MLP(2, width=8))
    with pytest.raises(ValueError, match="blocks \\[1, 2\\] are views .* blocks \\[3\\] are not"):
        mixed.save(io.BytesIO())
    swapped = tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE), velocity_factory=lambda n: shared4.block(4 - n))
    with pytest.raises(ValueError, match="block 1 is the view of block 3"):
        swapped.fit(data, **FIT)
    with pytest.raises(ValueError, match="conditioning input of 0 features.*got 3"):
        tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE), cond_dim=2,
                             velocity_factory=SharedVelocity.mlp(2, 3, width=8).block)
    with pytest.raises(ValueError, match="embed_dim must be a positive int"):
        SharedVelocity.mlp(2, 3, embed_dim=0)
    with pytest.raises(ValueError, match="fewer than embed_dim=4"):
        SharedVelocity(tl.MLP(2, cond_features=2), 3, 4)
    with pytest.raises(ValueError, match="core must be an nn.Module or a spec"):
        SharedVelocity({"type": "Nope", "config": {}}, 3, 2)
    with pytest.raises(IndexError, match="block 0 is outside"):
        shared4(torch.rand(2), torch.randn(2, 2), 0)
    with pytest.raises(ValueError, match="integer tensor"):
        shared4(torch.rand(2), torch.randn(2, 2), torch.tensor([1.0, 2.0]))
    lfm = _model()
    lfm.n_trained = 1
    with pytest.raises(RuntimeError, match="1 of the 3 shared blocks are marked trained"):
        lfm.fit(data, **FIT)


def test_interrupted_joint_run_resumes_where_it_stopped(data, tmp_path):
    ref = _model()
    ref_report = ref.fit(data, **FIT)

    def crash(block, step, loss):
        assert block == 0  # the joint loop reports all blocks at once
        if step == 19:
            raise Crash

    with pytest.raises(Crash):
        _model().fit(data, checkpoint_dir=tmp_path / "run", callback=crash, **FIT)
    assert (tmp_path / "run" / "progress.pt").exists()
    resumed = _model(seed=5)  # other initial weights: everything comes from the checkpoint
    report = resumed.fit(data, checkpoint_dir=tmp_path / "run", resume=True, **FIT)
    assert all(b.resumed_from == 16 and b.batches == 60 for b in report.blocks)  # continued, not restarted
    assert [b.losses for b in report.blocks] == [b.losses for b in ref_report.blocks]
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), resumed.parameters()))
    assert not (tmp_path / "run" / "progress.pt").exists()
    done = tl.LocalFlowMatching.load(tmp_path / "run" / "model.pt")
    assert done.n_trained == 3 and shared_network(done) is not None
    again = _model(seed=6)
    assert again.fit(data, checkpoint_dir=tmp_path / "run", resume=True, **FIT).blocks == []  # nothing left
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), again.parameters()))
    # a run of separate blocks is not continued by a shared model, nor the other way round
    tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE), velocity_factory=lambda n: tl.MLP(2, width=8, depth=1)).fit(
        data, checkpoint_dir=tmp_path / "separate", **FIT)
    with pytest.raises(ValueError, match="separate/model.pt holds a separate network per block, but .* views of one"):
        _model().fit(data, checkpoint_dir=tmp_path / "separate", resume=True, **FIT)
    with pytest.raises(ValueError, match="shared_blocks: True -> False"):
        tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE)).fit(data, checkpoint_dir=tmp_path / "run", resume=True,
                                                              **FIT)


def test_save_load_stores_the_shared_network_once(trained, data, tmp_path):
    lfm, _ = trained
    shared = shared_network(lfm)
    lfm.save(tmp_path / "shared.pt")
    state = torch.load(tmp_path / "shared.pt", weights_only=True)
    assert state["weights"] == [{}, {}, {}] and set(state["shared"]["weights"]) == set(shared.state_dict())
    # torch's own state_dict lists the shared tensors under every block's name (same storage)
    assert len(lfm.state_dict()) == 3 * len(shared.state_dict())
    separate = tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE), velocity_factory=lambda n: tl.MLP(2, width=24, depth=2))
    separate.save(tmp_path / "separate.pt")
    size, separate_size = (tmp_path / "shared.pt").stat().st_size, (tmp_path / "separate.pt").stat().st_size
    assert size < 0.5 * separate_size  # not N copies
    loaded = tl.LocalFlowMatching.load(tmp_path / "shared.pt")  # rebuilt from the file, no factory
    again = shared_network(loaded)
    assert again is not None and again is not shared and count_parameters(loaded) == count_parameters(lfm)
    z = torch.randn(64, 2)
    assert torch.equal(loaded.decode(z), lfm.decode(z)) and loaded.n_trained == 3
    # a factory of a live shared network is copied, not written into
    live = SharedVelocity.mlp(2, 3, width=24, depth=2)
    kept = {k: v.clone() for k, v in live.state_dict().items()}
    from_live = tl.LocalFlowMatching.load(tmp_path / "shared.pt", velocity_factory=live.block)
    assert all(torch.equal(kept[k], v) for k, v in live.state_dict().items())
    assert torch.equal(from_live.decode(z), lfm.decode(z))
    with pytest.raises(ValueError, match="holds one network shared by all blocks, but velocity_factory builds separate"):
        tl.LocalFlowMatching.load(tmp_path / "shared.pt", velocity_factory=lambda n: tl.MLP(2, width=24, depth=2))
    with pytest.raises(ValueError, match="holds a separate network per block, but velocity_factory builds views"):
        tl.LocalFlowMatching.load(tmp_path / "separate.pt", velocity_factory=live.block)
    # damaged entries
    for entry, match in (("junk", "stored as str, not a dict"),
                         ({"spec": {"type": "MLP", "config": {"dim": 2}}, "weights": {}}, "is a MLP, not a SharedVelocity"),
                         ({"spec": state["shared"]["spec"], "weights": {}}, "weights do not fit")):
        with pytest.raises(tl.CheckpointError, match=match):
            tl.LocalFlowMatching.from_state({**state, "shared": entry})


class Core(nn.Module):
    """A custom core (not in NETWORKS): a linear map of [x, t, c]."""

    def __init__(self, extra: int):
        super().__init__()
        self.lin = nn.Linear(3 + extra, 2)

    def forward(self, t, x, c):
        return self.lin(torch.cat([x, t.reshape(-1, 1).expand(x.shape[0], 1), c], 1))


def test_custom_core_needs_its_factory_to_load(data, tmp_path):
    torch.manual_seed(0)
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(*SCHEDULE), velocity_factory=SharedVelocity(Core(4), 3, 4).block)
    lfm.fit(data, **{**FIT, "batches_per_block": 2})
    lfm.save(tmp_path / "custom.pt")
    with pytest.raises(ValueError, match="shares one custom network.*SharedVelocity\\(core, n_blocks, embed_dim\\)"):
        tl.LocalFlowMatching.load(tmp_path / "custom.pt")
    loaded = tl.LocalFlowMatching.load(tmp_path / "custom.pt", velocity_factory=SharedVelocity(Core(4), 3, 4).block)
    z = torch.randn(8, 2)
    assert torch.equal(loaded.decode(z), lfm.decode(z))


def test_encode_decode_and_log_prob(trained, data):
    lfm, report = trained
    x = data[:200]
    z = lfm.encode(x)
    assert (lfm.decode(z) - x).abs().max() < 1e-3
    log_p = lfm.log_prob(x)
    assert log_p.shape == (200,) and torch.isfinite(log_p).all()
    terms = lfm.log_prob_terms(x)
    assert terms.divergence.shape == (3, 200)
    # a briefly trained model is still far better than N(0, I) on the two Gaussians
    assert float(log_p.mean()) > float(tl.standard_normal_log_prob(x).mean()) + 0.5
    losses = report.blocks[0].losses  # one noisy batch each: compare the first and the last six
    assert sum(losses[-6:]) < sum(losses[:6])


def test_distill_a_shared_model(trained, tmp_path):
    lfm, _ = trained
    sampler = tl.distill(lfm, k=3, n_pairs=256, n_val=64, batches=10, batch_size=64, seed=0, progress=False)
    student = sampler.students[0].net
    assert isinstance(student, SharedBlock) and student.shared is not shared_network(lfm)  # a copy of its own
    x = sampler.sample(32, generator=torch.Generator().manual_seed(0))
    assert x.shape == (32, 2) and torch.isfinite(x).all()
    sampler.save(tmp_path / "distilled.pt")
    loaded = tl.DistilledSampler.load(tmp_path / "distilled.pt")
    z = torch.randn(16, 2)
    assert torch.equal(loaded.decode(z), sampler.decode(z))


def test_conditional_shared_model(tmp_path):
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(800, 2, generator=g)
    x = cond + 0.3 * torch.randn(800, 2, generator=g)
    lfm = _model(cond_dim=2)
    assert shared_network(lfm).cond_features == 3  # cond_dim + the presence flag
    report = lfm.fit(x, cond=cond, cond_dropout=0.2, standardize="diagonal", pool_dir=tmp_path / "pool", **FIT)
    assert lfm.n_trained == 3 and len(report.blocks) == 3 and lfm.standardizer.mode == "diagonal"
    c = cond[:16]
    samples = lfm.sample(16, cond=c, guidance=1.5, generator=torch.Generator().manual_seed(1))
    assert samples.shape == (16, 2) and torch.isfinite(samples).all()
    assert torch.isfinite(lfm.log_prob(x[:16], cond=c)).all()
    lfm.save(tmp_path / "cond.pt")
    loaded = tl.LocalFlowMatching.load(tmp_path / "cond.pt")
    z = torch.randn(16, 2)
    assert loaded.cond_dim == 2 and torch.equal(loaded.decode(z, cond=c), lfm.decode(z, cond=c))
    with pytest.raises(ValueError, match="this model is conditional"):
        lfm.fit(x, **FIT)


def test_width_for_a_parameter_budget():
    separate = 3 * count_parameters(tl.MLP(2, width=24, depth=2))
    width = shared_width_for_parameters(2, 3, separate, depth=2)
    count = count_parameters(SharedVelocity.mlp(2, 3, width=width, depth=2))
    below = count_parameters(SharedVelocity.mlp(2, 3, width=width - 1, depth=2))
    above = count_parameters(SharedVelocity.mlp(2, 3, width=width + 1, depth=2))
    assert abs(count - separate) <= min(abs(below - separate), abs(above - separate))
    assert abs(count - separate) / separate < 0.05
