"""Core measurements: training-step overhead, pushforward throughput and memory, round-trip errors.

Writes ``benchmarks/results/core.json`` and ``core.md``.

    python benchmarks/bench_core.py                  # full: 10^6 x 63 pool
    python benchmarks/bench_core.py --pool-size 20000 --quick
"""
from __future__ import annotations

import argparse
import math
import resource
import statistics
import time

import torch
from torchcfm.conditional_flow_matching import VariancePreservingConditionalFlowMatcher

import torchcfm_local as tl
from torchcfm_local.training import PUSHFORWARD_ODE
from torchcfm_local.bench.report import write_results


def step_overhead(dim: int, batch_size: int = 256, steps: int = 300, rounds: int = 7) -> dict:
    """Seconds per optimizer step: plain torchcfm vs the LFM block trainer (same net, same batch)."""
    torch.manual_seed(0)
    pool = torch.randn(50_000, dim)
    fm = VariancePreservingConditionalFlowMatcher(sigma=0.0)
    lfm = tl.LocalFlowMatching(dim, tl.OUSchedule(0.1, 1.0, 2), fm, lambda n: tl.MLP(dim, width=256, depth=3))
    trainer = lfm._trainer(1, pool)
    net = trainer.model
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)

    def plain_step():
        x1 = pool[torch.randint(0, pool.shape[0], (batch_size,), generator=gen)]
        x0 = torch.randn_like(x1)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        loss = torch.mean((net(t, xt) - ut) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def local_step():  # the body of LocalFlowMatching.fit's loop
        x1 = pool[torch.randint(0, pool.shape[0], (batch_size,), generator=gen)]
        loss = trainer.loss(x1, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    times = {"plain": [], "local": []}
    for _ in range(rounds):  # interleaved, so drifts in machine load hit both
        for name, fn in (("plain", plain_step), ("local", local_step)):
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    plain, local = statistics.median(times["plain"]), statistics.median(times["local"])
    return {"dim": dim, "batch_size": batch_size, "plain_ms": 1e3 * plain, "local_ms": 1e3 * local, "ratio": local / plain}


def pushforward(pool_size: int, dim: int = 63) -> dict:
    """Throughput and peak memory of pushing a (pool_size, dim) pool through one trained block."""
    torch.manual_seed(0)
    x = torch.randn(pool_size, dim)
    lfm = tl.LocalFlowMatching(dim, tl.OUSchedule(0.1, 1.0, 2), velocity_factory=lambda n: tl.MLP(dim, width=256, depth=3))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    report = lfm.fit(x, batches_per_block=[50, 1], batch_size=256, progress=True, encode_final_pool=False)
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    block = report.blocks[0]
    return {
        "pool": [pool_size, dim],
        "pool_mib": x.numel() * 4 / 2**20,
        "solver": f"{PUSHFORWARD_ODE.solver} x {PUSHFORWARD_ODE.steps} steps",
        "nfe": block.pushforward_nfe,
        "seconds": block.pushforward_seconds,
        "samples_per_second": pool_size / block.pushforward_seconds,
        "peak_rss_mib": rss_after,
        "peak_rss_increase_mib": rss_after - rss_before,
    }


SOLVER_GRID = [
    dict(solver="euler", steps=64),
    dict(solver="midpoint", steps=16),
    dict(solver="midpoint", steps=64),
    dict(solver="rk4", steps=4),
    dict(solver="rk4", steps=8),
    dict(solver="rk4", steps=16),
    dict(solver="rk4", steps=32),
    dict(solver="dopri5", atol=1e-5, rtol=1e-5),
    dict(solver="dopri5", atol=1e-6, rtol=1e-6),
    dict(solver="dopri5", atol=1e-7, rtol=1e-7),
    dict(solver="tsit5", atol=1e-6, rtol=1e-6),
]


def trained_2d(batches: int):
    """A 3-block LFM on two Gaussians (the model of tests/conftest.py)."""
    g = torch.Generator().manual_seed(0)
    sign = torch.randint(0, 2, (6000, 1), generator=g) * 2.0 - 1.0
    x = torch.cat([2.0 * sign, torch.zeros(6000, 1)], 1) + 0.4 * torch.randn(6000, 2, generator=g)
    torch.manual_seed(0)
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(0.3, 1.5, 3), velocity_factory=lambda n: tl.MLP(2, width=64, depth=2))
    lfm.fit(x, batches_per_block=batches, batch_size=256, seed=0, progress=False)
    return lfm, x, g


def pushforward_accuracy(lfm, x) -> list[dict]:
    """Error of the one-block pushforward per fixed-step solver against dopri5 at 1e-9, per block.

    The error matters relative to the noise the block's OU step adds, sqrt(1 - exp(-2h)).
    """
    rows = []
    pool = x[:2000].double()
    lfm.double()
    for n in range(1, lfm.n_blocks):
        ref = lfm.encode(pool, blocks=[n], ode=dict(solver="dopri5", atol=1e-9, rtol=1e-9))
        h = lfm.schedule.step(n)
        for steps in (1, 2, 4, 8, 16):
            out = lfm.encode(pool, blocks=[n], ode=dict(solver="rk4", steps=steps))
            err = (out - ref).norm(dim=1)
            rows.append({"block": n, "h": h, "ou_noise_std": math.sqrt(1 - math.exp(-2 * h)), "solver": f"rk4 x {steps}",
                         "nfe": 4 * steps, "max_err": float(err.max()), "rms_err": float(err.pow(2).mean().sqrt())})
        pool = ref
    lfm.float()
    return rows


def round_trips(lfm, x, g) -> list[dict]:
    """decode(encode(x)) and encode(decode(z)) errors per solver on a trained 3-block 2D model."""
    x, z = x[:1000], torch.randn(1000, 2, generator=g)
    rows = []
    for opts in SOLVER_GRID:
        start = time.perf_counter()
        enc = lfm.encode(x, ode=opts)
        nfe = lfm.last_stats.nfe
        back = lfm.decode(enc, ode=opts)
        nfe += lfm.last_stats.nfe
        z_back = lfm.encode(lfm.decode(z, ode=opts), ode=opts)
        rows.append({
            "ode": opts,
            "x_max_err": float((back - x).abs().max()),
            "x_mean_err": float((back - x).abs().mean()),
            "z_max_err": float((z_back - z).abs().max()),
            "nfe_round_trip": nfe,
            "seconds": time.perf_counter() - start,
        })
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool-size", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds and training batches")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    overhead = [step_overhead(d, rounds=3 if args.quick else 7) for d in (2, 63)]
    lfm, x, g = trained_2d(300 if args.quick else 1500)
    trips = round_trips(lfm, x, g)
    accuracy = pushforward_accuracy(lfm, x)
    push = pushforward(args.pool_size)

    lines = ["## Training-step overhead (same MLP 256x3, batch 256, trigonometric path)", "",
             "| dim | plain torchcfm ms/step | LFM block ms/step | ratio |", "|---|---|---|---|"]
    lines += [f"| {o['dim']} | {o['plain_ms']:.3f} | {o['local_ms']:.3f} | {o['ratio']:.3f} |" for o in overhead]
    lines += ["", f"## Pushforward of a {push['pool'][0]} x {push['pool'][1]} pool through one block (MLP 256x3)", "",
              "| solver | NFE | seconds | samples/s | pool MiB | peak RSS MiB | peak RSS increase MiB |", "|---|---|---|---|---|---|---|",
              f"| {push['solver']} | {push['nfe']:.0f} | {push['seconds']:.1f} | {push['samples_per_second']:.0f} "
              f"| {push['pool_mib']:.0f} | {push['peak_rss_mib']:.0f} | {push['peak_rss_increase_mib']:.0f} |"]
    lines += ["", "## Round trips on a trained 3-block 2D model (1000 points)", "",
              "| ODE options | max abs err decode(encode(x)) | mean abs err | max abs err encode(decode(z)) | NFE (round trip) | seconds |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['ode']} | {r['x_max_err']:.2e} | {r['x_mean_err']:.2e} | {r['z_max_err']:.2e} | {r['nfe_round_trip']:.0f} | {r['seconds']:.2f} |" for r in trips]
    lines += ["", "## Pushforward error of one block vs dopri5 at 1e-9 (same trained 2D model, 2000 points, float64)", "",
              "| block | h | OU noise std | solver | NFE | max error | RMS error |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['block']} | {r['h']:.3g} | {r['ou_noise_std']:.3f} | {r['solver']} | {r['nfe']} | {r['max_err']:.2e} | {r['rms_err']:.2e} |"
              for r in accuracy]
    table = "\n".join(lines)
    write_results(args.out, "core", {"step_overhead": overhead, "pushforward": push, "round_trips": trips,
                                     "pushforward_accuracy": accuracy}, table)
    print(table)


if __name__ == "__main__":
    main()
