"""Memory-mapped pools and data-parallel fit (torch.distributed, gloo, spawned with torchrun)."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import torchcfm_local as tl
from torchcfm_local import composer
from torchcfm_local.training import TrainingPool
from torchcfm_local.training import fitting as training_fit
from torchcfm_local.distributed import DistContext, shard
from torchcfm_local.pool import MemmapPool, PoolDirError

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "distributed_fit.py"


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (7, 2), (2, 4), (1000, 7)])
def test_shards_partition_the_rows(n, world):
    parts = [shard(n, r, world) for r in range(world)]
    assert parts[0][0] == 0 and parts[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(parts, parts[1:]))
    sizes = [b - a for a, b in parts]
    assert max(sizes) - min(sizes) <= 1


def test_memmap_pool_round_trip(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(1000, 3, 2)
    pool = MemmapPool.create(tmp_path / "pool", x.shape, torch.float32, fingerprint=[1.0])
    assert pool.after_block is None
    target = pool.target()
    for i in range(0, 1000, 300):  # chunked writes, as the pushforward does
        target[i : i + 300] = x[i : i + 300]
    pool.commit(0)
    idx = torch.randint(0, 1000, (64,))
    assert torch.equal(pool[idx], x[idx]) and torch.equal(pool[250:731], x[250:731])
    assert pool.shape == (1000, 3, 2) and len(pool) == 1000 and pool.dtype == torch.float32
    again = MemmapPool.open(tmp_path / "pool")
    assert again.after_block == 0 and torch.equal(again[0:1000], x)
    assert np.array_equal(np.load(again.current_path), x.numpy())  # plain .npy files
    # the next write goes to the other buffer; the current one is untouched until commit
    again.target()[0:1000] = 2 * x
    assert torch.equal(again[0:1000], x)
    again.commit(1)
    assert torch.equal(MemmapPool.open(tmp_path / "pool")[0:1000], 2 * x)


def test_pool_dir_errors(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("keep me")
    with pytest.raises(PoolDirError, match="not a torchcfm_local pool directory"):
        MemmapPool.check_dir(foreign)
    (tmp_path / "file").write_text("")
    with pytest.raises(PoolDirError, match="is a file"):
        MemmapPool.check_dir(tmp_path / "file")
    pool = MemmapPool.create(tmp_path / "pool", (10, 2), torch.float32, [1.0])
    (tmp_path / "pool" / "pool.json").write_text("{not json")
    with pytest.raises(PoolDirError, match="not a readable pool description"):
        MemmapPool.open(tmp_path / "pool")
    pool._write_meta()
    (tmp_path / "pool" / "pool_b.npy").unlink()
    with pytest.raises(PoolDirError, match="missing or damaged"):
        MemmapPool.open(tmp_path / "pool")
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.5, 2), velocity_factory=lambda n: tl.MLP(2, width=8, depth=1))
    x = torch.randn(100, 2)
    with pytest.raises(PoolDirError, match="not a torchcfm_local pool"):
        lfm.fit(x, batches_per_block=2, batch_size=10, pool_dir=foreign, progress=False)
    assert (foreign / "thesis.tex").read_text() == "keep me"
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        lfm.fit(x, batches_per_block=2, batch_size=10, chunk_size=0, progress=False)


def _small_lfm(seed=0):
    torch.manual_seed(seed)
    return tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.5, 3), velocity_factory=lambda n: tl.MLP(2, width=16, depth=2))


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fit_with_memmap_pool_equals_in_memory_fit(tmp_path):
    x = tl.datasets.load("moons", n_train=600, n_val=10, n_test=10, seed=0).train
    kw = dict(batches_per_block=25, batch_size=64, seed=3, chunk_size=128, progress=False)
    ram, disk = _small_lfm(), _small_lfm()
    ram.fit(x, **kw)
    # the data itself from a read-only memory map, as for data larger than RAM
    np.save(tmp_path / "x.npy", x.numpy())
    report = disk.fit(np.load(tmp_path / "x.npy", mmap_mode="r"), pool_dir=tmp_path / "pool", **kw)
    assert torch.equal(_params(ram), _params(disk))
    assert report.blocks[-1].pool is not None
    meta = json.loads((tmp_path / "pool" / "pool.json").read_text())
    assert meta["after_block"] == 3  # encode_final_pool pushed it through every block


def test_resume_reuses_the_memmap_pool(tmp_path, monkeypatch):
    x = tl.datasets.load("moons", n_train=600, n_val=10, n_test=10, seed=0).train
    kw = dict(batches_per_block=25, batch_size=64, seed=3, chunk_size=128, progress=False, pool_dir=tmp_path / "pool")
    ref = _small_lfm()
    ref.fit(x, **kw)

    def crash(block, step, loss):
        if block == 3 and step == 5:
            raise KeyboardInterrupt

    run = _small_lfm()
    with pytest.raises(KeyboardInterrupt):
        run.fit(x, checkpoint_dir=tmp_path / "ckpt", callback=crash, **kw)
    assert json.loads((tmp_path / "pool" / "pool.json").read_text())["after_block"] == 2
    assert not (tmp_path / "ckpt" / "pool.pt").exists()  # the pool lives in pool_dir only
    pushes = []
    real_push = TrainingPool.push
    resumed = _small_lfm(seed=99)
    monkeypatch.setattr(TrainingPool, "push", lambda pool, model, n, *a, **k: (pushes.append(n), real_push(pool, model, n, *a, **k))[1])
    resumed.fit(x, checkpoint_dir=tmp_path / "ckpt", resume=True, **kw)
    assert pushes == [3]  # blocks 1-2 were not pushed again: the pool on disk was reused
    assert torch.equal(_params(ref), _params(resumed))


def test_crash_during_pushforward_keeps_the_previous_memmap_pool(tmp_path, monkeypatch):
    x = tl.datasets.load("moons", n_train=600, n_val=10, n_test=10, seed=0).train
    lfm = _small_lfm()
    blocks = lfm.train_blocks(x, pool_dir=tmp_path / "pool", chunk_size=100, progress=False)
    first = next(blocks)
    before = first.pool[0:600].clone()
    calls = {"n": 0}
    real = composer.integrate

    def die_on_third_chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(composer, "integrate", die_on_third_chunk)
    with pytest.raises(RuntimeError, match="killed"):
        next(blocks)  # pushes the pool through block 1; dies after two chunks were written
    pool = MemmapPool.open(tmp_path / "pool")
    assert pool.after_block == 0 and torch.equal(pool[0:600], before)


def test_ranks_must_agree_and_split_the_batch(monkeypatch):
    values = {"training data": [600.0, 1.0], "settings": {"lr": 1e-3}}

    class TwoRanks(DistContext):
        def gather_objects(self, obj):
            return [obj, {**obj, "training data": [600.0, 2.0]}]

    with pytest.raises(ValueError, match="differ in training data: rank 0: .*rank 1"):
        TwoRanks(0, 2).check_agree(values)
    DistContext().check_agree(values)  # one process: nothing to compare

    monkeypatch.setattr(training_fit, "dist_context", lambda *a, **k: DistContext(0, 3))
    with pytest.raises(ValueError, match="divisible by the number of ranks"):
        _small_lfm().fit(torch.randn(100, 2), batches_per_block=2, batch_size=64, progress=False)


# ---------------------------------------------------------------------- real 2-process runs
ARGS = ["--n-train", "2000", "--blocks", "3", "--batches-per-block", "40", "--batch-size", "128",
        "--width", "32", "--no-progress", "--seed", "1"]


def _torchrun(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(EXAMPLE), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _report(out):
    return json.loads((Path(out) / "report.json").read_text())


def test_two_gloo_processes_match_one_process_and_resume(tmp_path):
    main = runpy.run_path(str(EXAMPLE))["main"]
    main(["--out", str(tmp_path / "one"), *ARGS])
    _torchrun("--out", str(tmp_path / "two"), "--pool-dir", str(tmp_path / "pool"), *ARGS)
    one, two = _report(tmp_path / "one"), _report(tmp_path / "two")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    for a, b in zip(one["blocks"], two["blocks"]):  # the same global batches: equal up to float summation order
        np.testing.assert_allclose(a["losses"], b["losses"], rtol=1e-4, atol=1e-5)
    m1, m2 = (tl.LocalFlowMatching.load(tmp_path / d / "model.pt") for d in ("one", "two"))
    assert (_params(m1) - _params(m2)).abs().max() < 1e-4  # measured 2e-6

    # an interrupted 2-process run (in-memory pool this time), resumed from rank 0's files
    _torchrun("--out", str(tmp_path / "cut"), "--stop-after-block", "1", *ARGS)
    assert tl.LocalFlowMatching.load(tmp_path / "cut" / "model.pt").n_trained == 1
    with pytest.raises(ValueError, match=r"world_size: 2 -> 1 \(relaunch with torchrun --nproc_per_node=2\)"):
        main(["--out", str(tmp_path / "cut"), "--resume", *ARGS])
    _torchrun("--out", str(tmp_path / "cut"), "--resume", *ARGS)
    resumed = tl.LocalFlowMatching.load(tmp_path / "cut" / "model.pt")
    assert resumed.n_trained == 3
    assert (_params(resumed) - _params(m2)).abs().max() < 1e-6  # measured: identical
