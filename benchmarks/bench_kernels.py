"""Per-step costs of the default network on the CPU: the activation, and the optimizer's GPU check.

``tl.MLP``'s default activation is ``Softplus(beta=20)`` on inputs clamped at -2
(:class:`torchcfm_local.networks.Softplus20`), which evaluates float32/float64 inputs with
vectorized in-place ``exp``/``log`` passes instead of PyTorch's CPU softplus kernel (whose speed
depends on the values). This script times both, interleaved, best of several rounds:

* the activation alone on ``(rows, 256)`` inputs: pre-activation-like values ``N(0, 0.5^2)``,
  values in ``[4.4, 5.2]`` (where ``exp(-20 x)`` would be subnormal without the clamp at 2) and a
  mix of both (10% in the band);
* the default ``MLP(2)`` (256 x 3) after 300 training batches of block 1 on the 2D tree: a
  ``no_grad`` forward pass (8192 rows: the pushforward's chunk), a forward pass with the exact
  divergence (4096 rows: ``log_prob``'s chunk), and a training step (batch 2000, forward +
  backward + Adam) with each activation, with and without the optimizer's per-step CUDA-graph
  check (see :meth:`torchcfm_local.training.loop.OptimConfig.optimizer`; the check is timed
  after importing torchdyn, as in any fit).

    python benchmarks/bench_kernels.py            # writes benchmarks/results/kernels.{json,md}
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

import torchcfm_local as tl
from torchcfm_local import exact_trace, networks
from torchcfm_local.bench.report import write_results
from torchcfm_local.training.loop import OptimConfig

RESULTS = Path(__file__).resolve().parent / "results"


def torch_kernel(self, x: torch.Tensor) -> torch.Tensor:
    """``Softplus20.forward`` as it was: the clamp at -2, then PyTorch's softplus kernel."""
    x = x.clamp_(min=-2.0) if self.inplace else x.clamp(min=-2.0)
    return torch.nn.functional.softplus(x, beta=20.0)


IMPLEMENTATIONS = {"torch kernel": torch_kernel, "vectorized (default)": networks.Softplus20.forward}


def best_of(fns: dict, rounds: int, round_seconds: float = 0.05) -> dict:
    """Best seconds per call of each ``fns[name]()`` over ``rounds`` interleaved rounds; a round calls a
    function as often as fits in about ``round_seconds`` (measured on a warm-up call)."""
    calls = {}
    for name, fn in fns.items():
        start = time.perf_counter()
        fn()
        calls[name] = max(1, int(round_seconds / max(time.perf_counter() - start, 1e-6)))
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls[name])
    return best


def with_impl(impl, fn):
    def run():
        saved = networks.Softplus20.forward
        networks.Softplus20.forward = impl
        try:
            fn()
        finally:
            networks.Softplus20.forward = saved
    return run


def activation_rows(rounds: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in (2000, 8192):
        normal = 0.5 * torch.randn(n, 256, generator=gen)
        band = 4.4 + 0.8 * torch.rand(n, 256, generator=gen)
        inputs = {"N(0, 0.5^2)": normal, "[4.4, 5.2]": band,
                  "mix, 10% in the band": torch.where(torch.rand(n, 256, generator=gen) < 0.1, band, normal)}
        act = networks.Softplus20()
        for kind, x in inputs.items():
            fns = {name: with_impl(impl, lambda x=x: act(x)) for name, impl in IMPLEMENTATIONS.items()}
            for name, sec in best_of(fns, rounds).items():
                rows.append({"case": f"activation, {n} x 256, {kind}", "implementation": name, "ms": 1e3 * sec})
    return rows


def trained_block(batches: int = 300):
    """Block 1 of the default LFM on the tree after ``batches`` training batches (realistic
    pre-activations), and ``step(opt)``: one training step of batch 2000 with optimizer ``opt``."""
    torch.manual_seed(0)
    data = tl.datasets.load("tree", n_train=200_000, n_test=10_000)
    lfm = tl.LocalFlowMatching(2)
    trainer = next(lfm.train_blocks(data.train, progress=False))

    def step(opt):
        loss = trainer.loss(trainer.data(2000))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    opt = OptimConfig(lr=1e-3).optimizer(trainer.model.parameters())
    for _ in range(batches):
        step(opt)
    return trainer, step


def network_rows(rounds: int) -> list[dict]:
    import torchdyn.core  # noqa: F401  (imports pytorch_lightning, which turns on NVML-based GPU checks)

    trainer, step = trained_block()
    net, field = trainer.model, trainer.field
    x_push, t_push = trainer.data(8192), torch.rand(8192)
    x_div = trainer.data(4096)

    def forward():
        with torch.no_grad():
            net(t_push, x_push)

    def divergence():
        xg = x_div.detach().requires_grad_(True)
        y = field(torch.tensor(0.5), xg)
        exact_trace.exact_divergence(y, xg, {"exact": exact_trace.FIRST})

    rows = []
    for case, fn, n in (("no_grad forward, 8192 rows", forward, 8192),
                        ("forward + exact divergence, 4096 rows", divergence, 4096)):
        fns = {name: with_impl(impl, fn) for name, impl in IMPLEMENTATIONS.items()}
        for name, sec in best_of(fns, rounds).items():
            rows.append({"case": case, "implementation": name, "ms": 1e3 * sec, "rows_per_s": n / sec})
    with_check = torch.optim.Adam(trainer.model.parameters(), lr=1e-3)  # torch's own, check on every step
    without = OptimConfig(lr=1e-3).optimizer(trainer.model.parameters())
    fns = {f"{name}, {label}": with_impl(impl, lambda opt=opt: step(opt))
           for name, impl in IMPLEMENTATIONS.items()
           for label, opt in (("GPU check", with_check), ("no GPU check", without))}
    for name, sec in best_of(fns, rounds).items():
        impl, check = name.split(", ")
        rows.append({"case": f"training step, batch 2000, {check}", "implementation": impl, "ms": 1e3 * sec})
    return rows


def table(rows: list[dict]) -> str:
    cases = list(dict.fromkeys(r["case"] for r in rows))
    by = {(r["case"], r["implementation"]): r for r in rows}
    lines = ["| case | torch kernel ms | vectorized ms | speed-up |", "|---|---|---|---|"]
    for case in cases:
        old, new = by[(case, "torch kernel")]["ms"], by[(case, "vectorized (default)")]["ms"]
        lines.append(f"| {case} | {old:.3f} | {new:.3f} | {old / new:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (best of)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default="kernels")
    args = parser.parse_args(argv)
    rows = activation_rows(args.rounds) + network_rows(args.rounds)
    md = ("# Per-step costs on the CPU: PyTorch's softplus kernel against `Softplus20`'s vectorized path, "
          "and the optimizer's GPU check\n\n"
          f"Milliseconds per call, best of {args.rounds} interleaved rounds of about 50 ms each, CPU, {torch.get_num_threads()} threads. The network cases "
          "use the default `MLP(2)` (256 x 3) of block 1 on the 2D tree after 300 training batches; a training "
          "step is forward + backward + Adam on 2000 rows, with torch's Adam (`GPU check`: it asks whether a GPU is "
          "available on every step) or the one `fit` builds for CPU parameters (`no GPU check`).\n\n" + table(rows))
    write_results(args.out, args.name, {"rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
