"""Micro-benchmarks (pytest-benchmark); not part of the default test run.

    python -m pytest benchmarks/test_micro.py --benchmark-only
"""
import pytest
import torch
from torchcfm.conditional_flow_matching import VariancePreservingConditionalFlowMatcher

import torchcfm_local as tl

DIM, BATCH = 63, 256


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    pool = torch.randn(20_000, DIM)
    fm = VariancePreservingConditionalFlowMatcher(sigma=0.0)
    lfm = tl.LocalFlowMatching(DIM, tl.OUSchedule(0.25, 1.0, 2), fm, lambda n: tl.MLP(DIM, width=256, depth=3))
    lfm.fit(pool, batches_per_block=5, batch_size=BATCH, progress=False, encode_final_pool=False)
    return lfm, fm, pool


def _step(net, opt, loss):
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def test_plain_torchcfm_step(benchmark, setup):
    lfm, fm, pool = setup
    net = lfm.nets[0]
    opt = torch.optim.Adam(net.parameters(), lr=1e-5)

    def step():
        x1 = pool[torch.randint(0, len(pool), (BATCH,))]
        t, xt, ut = fm.sample_location_and_conditional_flow(torch.randn_like(x1), x1)
        _step(net, opt, torch.mean((net(t, xt) - ut) ** 2))

    benchmark(step)


def test_local_block_step(benchmark, setup):
    lfm, fm, pool = setup
    trainer = lfm._trainer(1, pool)
    opt = torch.optim.Adam(trainer.model.parameters(), lr=1e-5)
    gen = torch.Generator().manual_seed(0)

    def step():
        x1 = pool[torch.randint(0, len(pool), (BATCH,), generator=gen)]
        _step(trainer.model, opt, trainer.loss(x1, gen))

    benchmark(step)


def test_pushforward_one_block_10k(benchmark, setup):
    lfm, _, pool = setup
    benchmark.pedantic(lambda: lfm.encode(pool[:10_000], blocks=[1]), rounds=3)


def test_sampling_latency_1000(benchmark, setup):
    lfm, _, _ = setup
    benchmark.pedantic(lambda: lfm.sample(1000), rounds=3)


def test_log_prob_hutchinson_1000(benchmark, setup):
    lfm, _, pool = setup
    benchmark.pedantic(lambda: lfm.log_prob(pool[:1000], estimator="hutchinson"), rounds=2)
