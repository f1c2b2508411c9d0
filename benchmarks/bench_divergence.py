"""Cost of one exact-divergence field evaluation by method, and of an exact log_prob end to end.

Issue "Evaluation cost": is exact-trace ``log_prob`` for small ``d`` faster in one vectorized
``torch.func`` pass than with the per-dimension VJPs? Per network evaluation (forward pass +
divergence of the whole batch) this times, for velocity MLPs (the default ``MLP(d)``: width 256,
depth 3, one time frequency, in-place clamped ``Softplus(beta=20)``; and the same with SiLU):

* ``forward``: the bare forward pass under ``torch.no_grad()`` (the unit of the ratio column);
* ``batched-vjp (old)``: one forward with autograd, ``D`` unit-vector VJPs through
  ``torch.autograd.grad(..., is_grads_batched=True)`` (the path before this benchmark);
* ``vmap-vjp (new)``: the same VJPs through ``torch.func.vmap`` over ``torch.autograd.grad``, in
  groups of ``k`` unit vectors by the library's rule (``k * B <= 8192`` on the CPU, groups of
  near-equal size; one plain VJP at a time from ``B = 8192``);
* ``vmap-vjp one group``: all ``D`` unit vectors in one vmap (no row rule);
* ``loop-vjp``: ``D`` plain ``torch.autograd.grad`` calls;
* ``jacrev per sample``: ``vmap`` over the batch of ``jacrev`` of the one-sample field, trace;
* ``jvp over basis``: forward mode, ``vmap`` over the ``D`` unit vectors of ``torch.func.jvp``
  of the batched field (one primal pass, ``D`` tangents);
* ``jacfwd per sample``: ``vmap`` over the batch of ``jacfwd`` of the one-sample field, trace;
* ``hutchinson (1 VJP)``: forward + one probe VJP, for scale.

Then the seconds of ``LocalFlowMatching.log_prob`` (dopri5 at 1e-5, exact trace) on test points
of a small LFM model trained on 2-d ``tree`` data, with the old and the new path, alternating; and
of ``likelihood.log_prob`` of one random default MLP field for D = 9 and 63.

Every number is the best of at least ``--repeats`` interleaved rounds (methods take turns; fast
cases repeat until the slowest method ran ``--min-seconds``, at most 25 rounds), single-threaded
by default (``--threads``); on a shared machine the absolute numbers move, the ranking less so.

    OMP_NUM_THREADS=1 python benchmarks/bench_divergence.py   # writes benchmarks/results/divergence.{json,md}
"""
from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch
from torch.func import jacfwd, jacrev, jvp, vmap

import torchcfm_local as tl
import torchcfm_local.exact_trace as et
import torchcfm_local.likelihood as lik
from torchcfm_local.bench.report import write_results

RESULTS = Path(__file__).resolve().parent / "results"

#: (activation, D, batch) cases: D = 2 (2-d data), 9 (3x3 patches), 16, 63 (BSDS300 width);
#: 2080 = the model's default log_prob chunk at D = 63 (2^17 // 63).
CASES = ("softplus20:2:1000,softplus20:2:10000,softplus20:9:1000,softplus20:9:10000,softplus20:16:1000,"
         "softplus20:16:10000,softplus20:63:1000,softplus20:63:2080,silu:2:1000,silu:2:10000,silu:9:1000,"
         "silu:9:10000,silu:63:1000")


# ------------------------------------------------------------------ methods: (field, t, x) -> (y, div)


def _forward(field, t, x):
    with torch.no_grad():
        return field(t, x), None


def _library(mode: str, rows: "int | None" = None):
    """The library's ``exact_trace.exact_divergence`` started in ``mode`` (``rows``: override the CPU row rule)."""

    def run(field, t, x):
        saved = et.CPU_ROWS
        if rows is not None:
            et.CPU_ROWS = rows
        try:
            state = {"exact": mode}
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True)
                y = field(t, xg)
                div = et.exact_divergence(y, xg, state)
            if state["exact"] != mode:
                raise RuntimeError(f"{mode} fell back to {state['exact']}")
            return y.detach(), div
        finally:
            et.CPU_ROWS = saved

    return run


def _one_sample(field, t):
    def f(xi):
        y = field(t, xi[None])[0]
        return y, y

    return f


def _jacrev_per_sample(field, t, x):
    jac, y = vmap(jacrev(_one_sample(field, t), has_aux=True))(x)
    return y, jac.reshape(x.shape[0], x[0].numel(), -1).diagonal(dim1=1, dim2=2).sum(-1)


def _jacfwd_per_sample(field, t, x):
    jac, y = vmap(jacfwd(_one_sample(field, t), has_aux=True))(x)
    return y, jac.reshape(x.shape[0], x[0].numel(), -1).diagonal(dim1=1, dim2=2).sum(-1)


def _jvp_basis(field, t, x):
    batch, dim = x.shape[0], x[0].numel()
    basis = torch.eye(dim, dtype=x.dtype, device=x.device).reshape(dim, 1, *x.shape[1:]).expand(dim, batch,
                                                                                                 *x.shape[1:])
    y, tangents = vmap(lambda v: jvp(lambda z: field(t, z), (x,), (v,)), out_dims=(None, 0))(basis)
    return y, tangents.reshape(dim, batch, dim).diagonal(dim1=0, dim2=2).sum(-1)


def _hutchinson(field, t, x):
    eps = torch.randint(0, 2, x.shape, generator=torch.Generator().manual_seed(0)).to(x.dtype) * 2 - 1
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        y = field(t, xg)
        (g,) = torch.autograd.grad(y, xg, eps)
    return y.detach(), (g * eps).flatten(1).sum(1)


METHODS = {
    "forward": _forward,
    "batched-vjp (old)": _library("batched"),
    "vmap-vjp (new)": _library("vmap"),
    "vmap-vjp one group": _library("vmap", rows=2**62),
    "loop-vjp": _library("loop"),
    "jacrev per sample": _jacrev_per_sample,
    "jvp over basis": _jvp_basis,
    "jacfwd per sample": _jacfwd_per_sample,
    "hutchinson (1 VJP)": _hutchinson,
}
EXACT = [m for m in METHODS if m not in ("forward", "hutchinson (1 VJP)")]


def time_case(activation: str, dim: int, batch: int, methods: list[str], repeats: int,
              min_seconds: float) -> list[dict]:
    torch.manual_seed(dim)
    field = tl.VelocityField(tl.MLP(dim, activation=activation))
    t = torch.tensor(0.37)
    # agreement with the old path on a small batch (float32)
    small = torch.randn(64, dim)
    with torch.no_grad():
        _, reference = METHODS["batched-vjp (old)"](field, t, small)
        errors = {m: float((METHODS[m](field, t, small)[1] - reference).abs().max()) for m in methods if m in EXACT}
    x = torch.randn(batch, dim)
    best = {m: float("inf") for m in methods}
    with torch.no_grad():
        rounds = 0
        # at least `repeats` rounds; fast cases repeat until the slowest method had `min_seconds`
        while rounds < repeats or (rounds < 25 and rounds * max(best.values()) < min_seconds):
            for m in methods:
                start = time.perf_counter()
                METHODS[m](field, t, x)
                best[m] = min(best[m], time.perf_counter() - start)
            rounds += 1
    base, old = best.get("forward"), best.get("batched-vjp (old)")
    group = et.group_size("vmap", batch, dim, x.device)
    return [{"activation": activation, "dim": dim, "batch": batch, "method": m, "ms": 1e3 * best[m],
             "x_forward": best[m] / base if base else None, "x_old": best[m] / old if old else None,
             "max_abs_diff_vs_old": errors.get(m), "vmap_group": group, "rounds": rounds} for m in methods]


# ------------------------------------------------------------------ end to end


def end_to_end(args) -> list[dict]:
    data = tl.datasets.load("tree", seed=0)
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    from torchcfm_local.bench.registry import TASKS

    torch.manual_seed(0)
    model = tl.LocalFlowMatching(2, tl.OUSchedule.from_steps(TASKS["tree"].steps), ConditionalFlowMatcher(sigma=0.0),
                                 lambda n: tl.MLP(2))
    start = time.perf_counter()
    model.fit(data.train[:20_000], batches_per_block=args.fit_batches, batch_size=512, lr=1e-3, seed=0, progress=False)
    fit_s = time.perf_counter() - start
    ode = tl.ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)
    rows = []
    for n in (int(v) for v in args.e2e_points.split(",")):
        x = data.test[:n]
        best, values, nfe = {}, {}, {}
        for _ in range(args.e2e_repeats):
            for label, first in (("batched-vjp (old)", "batched"), ("vmap-vjp (new)", "vmap")):
                et.FIRST = first
                try:
                    start = time.perf_counter()
                    terms = model.log_prob_terms(x, ode=ode)
                    seconds = time.perf_counter() - start
                finally:
                    et.FIRST = "vmap"
                best[label] = min(best.get(label, float("inf")), seconds)
                values[label], nfe[label] = terms.log_prob, sum(terms.nfe_per_block)
        diff = float((values["vmap-vjp (new)"] - values["batched-vjp (old)"]).abs().max())
        for label in best:
            rows.append({"points": n, "method": label, "seconds": best[label], "nfe": nfe[label],
                         "x_old": best[label] / best["batched-vjp (old)"], "max_abs_diff_log_prob": diff,
                         "mean_log_prob": float(values[label].mean()), "fit_seconds": fit_s,
                         "vmap_group": et.group_size("vmap", min(n, 2**17 // 2), 2, torch.device("cpu"))})
        print(f"e2e n={n}: " + ", ".join(f"{k} {v:.2f}s" for k, v in best.items()) + f", max |dlogp| {diff:.2e}",
              flush=True)
    return rows


def end_to_end_random(args) -> list[dict]:
    """``likelihood.log_prob`` of one random default-MLP field (no training) for larger ``D``."""
    rows = []
    ode = tl.ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)
    for case in args.e2e_random.split(","):
        dim, n = (int(v) for v in case.split(":"))
        torch.manual_seed(dim)
        field = tl.VelocityField(tl.MLP(dim))
        x = torch.randn(n, dim)
        best, values, nfe = {}, {}, {}
        for _ in range(args.e2e_repeats):
            for label, first in (("batched-vjp (old)", "batched"), ("vmap-vjp (new)", "vmap")):
                et.FIRST = first
                try:
                    f = field.bind()
                    start = time.perf_counter()
                    values[label] = lik.log_prob(f, x, options=ode)
                    seconds = time.perf_counter() - start
                finally:
                    et.FIRST = "vmap"
                best[label], nfe[label] = min(best.get(label, float("inf")), seconds), f.nfe
        diff = float((values["vmap-vjp (new)"] - values["batched-vjp (old)"]).abs().max())
        for label in best:
            rows.append({"dim": dim, "points": n, "method": label, "seconds": best[label], "nfe": nfe[label],
                         "x_old": best[label] / best["batched-vjp (old)"], "max_abs_diff_log_prob": diff,
                         "mean_log_prob": float(values[label].mean()),
                         "vmap_group": et.group_size("vmap", n, dim, torch.device("cpu"))})
        print(f"random D={dim} n={n}: " + ", ".join(f"{k} {v:.2f}s" for k, v in best.items()), flush=True)
    return rows


def markdown(rows: list[dict], e2e: list[dict], args, e2e_random: "list[dict] | None" = None) -> str:
    lines = ["# Exact divergence: cost per field evaluation by method", "",
             f"Velocity MLP(d) width 256, depth 3, one time frequency (default activation softplus20; silu for "
             f"comparison), float32, CPU, {torch.get_num_threads()} thread(s). ms = best of >= {args.repeats} "
             "interleaved rounds (fast cases up to 25, see `rounds` in the JSON) of one evaluation of the field "
             "on the whole batch plus its divergence; "
             "x forward = ratio to the bare forward pass (no autograd); x old = ratio to the previous path "
             "(`is_grads_batched` VJPs); k = unit vectors per vmapped group under the new rule "
             "(k * B <= 8192, groups of near-equal size; k = 1: plain VJPs one at a time). The machine is "
             "shared: absolute times move "
             "between runs.", "",
             "| net | D | batch | method | ms / evaluation | x forward | x old | k (new) | max abs diff vs old |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r['activation']} | {r['dim']} | {r['batch']} | {r['method']} | {r['ms']:.1f} | "
                     f"{fmt(r['x_forward'], '.1f')} | {fmt(r['x_old'], '.2f')} | {r['vmap_group']} | "
                     f"{fmt(r['max_abs_diff_vs_old'], '.1e')} |")
    if e2e:
        lines += ["", f"## End to end: `lfm.log_prob(x_test, ode=dopri5 1e-5)`, 2-d tree, 9 blocks of the default "
                      f"MLP, {args.fit_batches} batches of 512 per block; best of {args.e2e_repeats} alternating runs",
                  "", "| test points | method | seconds | x old | NFE (sum over blocks) | mean log p | "
                      "max abs diff log p (new - old) |", "|---|---|---|---|---|---|---|"]
        for r in e2e:
            lines.append(f"| {r['points']} | {r['method']} | {r['seconds']:.2f} | {r['x_old']:.2f} | {r['nfe']:.0f} | "
                         f"{r['mean_log_prob']:.4f} | {r['max_abs_diff_log_prob']:.1e} |")
    if e2e_random:
        lines += ["", "## End to end, larger D: `log_prob(VelocityField(MLP(D)), x ~ N(0, I), dopri5 1e-5)`, random "
                      f"(untrained) default MLP, one chunk; best of {args.e2e_repeats} alternating runs", "",
                  "| D | points | method | seconds | x old | NFE | k (new) | max abs diff log p (new - old) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in e2e_random:
            lines.append(f"| {r['dim']} | {r['points']} | {r['method']} | {r['seconds']:.2f} | {r['x_old']:.2f} | "
                         f"{r['nfe']} | {r['vmap_group']} | {r['max_abs_diff_log_prob']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=CASES, help="comma-separated activation:D:batch")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated names of METHODS")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.7,
                        help="fast cases repeat (up to 25 rounds) until the slowest method ran this long")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fit-batches", type=int, default=150, help="training batches per block (end to end)")
    parser.add_argument("--e2e-points", default="2000,5000", help="comma-separated test-point counts ('' to skip)")
    parser.add_argument("--e2e-random", default="9:2000,63:1000",
                        help="comma-separated D:points of random-field log_prob runs ('' to skip)")
    parser.add_argument("--e2e-repeats", type=int, default=3)
    parser.add_argument("--name", default="divergence")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    # torch.func's notice for ops it batches by a loop (Softplus20's in-place clamp per sample)
    warnings.filterwarnings("ignore", message=".*performance drop.*batching rule")
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; expected {list(METHODS)}")
    rows: list[dict] = []
    e2e: list[dict] = []
    e2e_random: list[dict] = []

    def save():
        write_results(RESULTS, args.name,
                      {"rows": rows, "end_to_end": e2e, "end_to_end_random": e2e_random, "args": vars(args)},
                      markdown(rows, e2e, args, e2e_random))

    for case in args.cases.split(","):
        activation, dim, batch = case.split(":")
        rows += time_case(activation, int(dim), int(batch), methods, args.repeats, args.min_seconds)
        print(f"{activation} D={dim} B={batch}: " + ", ".join(f"{r['method']} {r['ms']:.0f}ms" for r in rows[-len(methods):]),
              flush=True)
        save()
    if args.e2e_points:
        e2e = end_to_end(args)
        save()
    if args.e2e_random:
        e2e_random = end_to_end_random(args)
        save()


if __name__ == "__main__":
    main()
