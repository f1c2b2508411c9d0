"""The measurements of ``benchmarks/bench_distill.py`` for one dataset and one seed.

:func:`run_dataset` trains the two teachers (an N-block LFM and the global flow of equal parameter
count), then measures every sampler built from them (teachers with ODE solvers, distilled students,
reflowed models with Euler steps, reflowed then distilled students) and returns one row per sampler.
The parameter-matching rule of the equal-parameter comparison is :func:`equal_student_width`; the
compute of a sampler is counted by :func:`distill_compute` and :func:`reflow_compute`. Imported by the script
(which puts this folder on ``sys.path``); not part of the package.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

import torchcfm_local as tl
from torchcfm_local.bench.protocol import matched_width
from torchcfm_local.distillation import distill
from torchcfm_local.metrics import mode_weight_error
from torchcfm_local.networks import count_parameters, network_spec, width_for_parameters
from torchcfm_local.sampling import preset_options

QUALITY = tl.ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)

#: teacher solver rows: (solver, steps per block)
SOLVER_GRID = {"LFM": [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("midpoint", 2), ("midpoint", 4),
                       ("rk4", 1), ("rk4", 2)],
               "global": [("euler", 1), ("euler", 2), ("euler", 4), ("euler", 8), ("euler", 16), ("midpoint", 4),
                          ("midpoint", 8), ("rk4", 1), ("rk4", 2), ("rk4", 4)]}
#: the shorter grid of ``--quick``
QUICK_SOLVER_GRID = {"LFM": [("euler", 1), ("euler", 2), ("midpoint", 2)],
                     "global": [("euler", 1), ("euler", 2), ("euler", 4), ("midpoint", 4)]}


@dataclass
class Context:
    """One dataset at one seed: the data, its known modes (or None) and the rows measured so far."""

    name: str
    seed: int
    args: object
    train: torch.Tensor
    test: torch.Tensor
    modes: Optional[dict]
    rows: list = field(default_factory=list)
    grids: dict = field(default_factory=dict)

    def row(self, method: str, family: str, kind: str, group: str, nfe: float, samples: torch.Tensor,
            sec: float, params: int, **extra) -> dict:
        """Append and return the row of one sampler's ``samples`` (energy distance, mode TV, ...)."""
        tv = None if self.modes is None else mode_weight_error(samples, self.modes["centers"], self.modes["weights"])
        row = {"dataset": self.name, "seed": self.seed, "method": method, "family": family, "kind": kind,
               "group": group, "nfe": float(nfe), "energy_distance": tl.energy_distance(samples, self.test),
               "mode_tv": tv, "sec_per_1000": sec, "params": int(params), "train_samples": 0, "pair_nfe": 0.0,
               "pair_cost": 0.0, "warm": "-"}
        row.update(extra)
        self.rows.append(row)
        tv_text = "" if tv is None else f"  TV {tv:.3f}"
        print(f"  [{self.name} s{self.seed}] {method:<52} NFE {nfe:6.1f}  ED {row['energy_distance']:.5f}{tv_text}"
              f"  {1e3 * sec:7.1f} ms/1000  {params} params", flush=True)
        return row

    def evaluate(self, method: str, family: str, kind: str, group: str, fn: Callable, params: int,
                 **extra) -> torch.Tensor:
        """Draw ``len(test)`` samples with ``fn(n, generator) -> (samples, nfe)``, time it, add the row."""
        samples, nfe, sec = timed_samples(fn, len(self.test), 10_000 + self.seed, self.args)
        self.row(method, family, kind, group, nfe, samples, sec, params, **extra)
        return samples



def timed_samples(fn, n_eval: int, generator_seed: int, args):
    """(samples of size n_eval, NFE, seconds per 1000 samples: median of ``timing_reps`` runs of ``timing_n``)."""
    samples, nfe = fn(n_eval, torch.Generator().manual_seed(generator_seed))
    times = []
    for r in range(args.timing_reps):
        tick = time.perf_counter()
        fn(args.timing_n, torch.Generator().manual_seed(100 + r))
        times.append((time.perf_counter() - tick) * 1000 / args.timing_n)
    return samples, nfe, statistics.median(times)


def teacher_sampler(model, ode):
    def fn(n, gen):
        x = model.sample(n, ode=ode, generator=gen)
        return x, model.last_stats.nfe
    return fn


def student_sampler(sampler):
    def fn(n, gen):
        return sampler.sample(n, generator=gen), sampler.last_stats.nfe
    return fn


def mlp_builder(net: torch.nn.Module) -> Callable[[int], torch.nn.Module]:
    """``width -> MLP`` with ``net``'s configuration (an :class:`~torchcfm_local.MLP`) except the width."""
    spec = network_spec(net)
    if spec is None or spec["type"] != "MLP":
        raise TypeError(f"the equal-parameter students need MLP teacher blocks, got {type(net).__name__}")
    return lambda width: tl.MLP(**{**spec["config"], "width": width})


def equal_student_width(global_net: torch.nn.Module, target_params: int, m: int) -> int:
    """The width of each of the global flow's ``m`` students so that together they have ``target_params``
    (the parameter count of the LFM distilled sampler with ``m`` NFE): the width whose MLP (the global
    block's configuration) has the count closest to ``target_params / m``
    (:func:`~torchcfm_local.networks.width_for_parameters`)."""
    return width_for_parameters(mlp_builder(global_net), max(1, round(target_params / m)))


def warm_label(report) -> str:
    flags = [st.warm_started for st in report.stages]
    return "yes" if all(flags) else "no" if not any(flags) else "partial"


def distill_compute(report, batch_size: int, n_pairs: int, n_val: int, eval_params: int) -> dict:
    """Compute of one distillation: student optimizer samples (batches x batch size), the teacher's
    network evaluations on the pairs (NFE per z x z) and those weighted by the evaluated network's
    parameter count (a cost proxy: one global-flow evaluation costs about N LFM-block evaluations)."""
    nfe = sum(st.teacher_nfe for st in report.stages) * (n_pairs + n_val)
    return {"train_samples": sum(st.batches for st in report.stages) * batch_size, "pair_nfe": nfe,
            "pair_cost": nfe * eval_params}


def reflow_compute(report, batch_size: int, eval_params: int) -> dict:
    """As :func:`distill_compute` for :func:`~torchcfm_local.reflow`'s couplings and retraining
    (its straightness measurements are evaluation, not counted)."""
    nfe = sum(b.pair_nfe for b in report.blocks) * report.n_pairs
    return {"train_samples": sum(b.batches for b in report.blocks) * batch_size, "pair_nfe": nfe,
            "pair_cost": nfe * eval_params}


def add_compute(*parts: dict) -> dict:
    return {k: sum(p[k] for p in parts) for k in ("train_samples", "pair_nfe", "pair_cost")}


def build_teachers(dim: int, args, seed: int):
    """The N-block LFM and the global flow whose MLP width matches the LFM's parameter count."""
    torch.manual_seed(seed)
    lfm = tl.LocalFlowMatching(dim, tl.OUSchedule(args.h0, args.rho, args.blocks),
                               velocity_factory=lambda n: tl.MLP(dim, width=args.width, depth=args.depth))
    g_width = matched_width(dim, count_parameters(lfm), args.depth)
    torch.manual_seed(seed)
    glob = tl.LocalFlowMatching(dim, tl.OUSchedule.global_flow(),
                                velocity_factory=lambda n: tl.MLP(dim, width=g_width, depth=args.depth))
    return lfm, glob, g_width


def load_data(name: str, seed: int, args):
    ds = tl.datasets.load(name, seed=seed)  # fixed-size tables (digits61) keep all their rows
    g = torch.Generator().manual_seed(seed)
    train = ds.train[torch.randperm(len(ds.train), generator=g)[: args.n_train]]
    test = ds.test[torch.randperm(len(ds.test), generator=g)[: args.n_eval]]
    return ds, train, test


def teacher_rows(ctx: Context, teachers: dict) -> None:
    """The data floor, then each teacher with dopri5 and the solver grid."""
    args = ctx.args
    ref = ctx.train[: len(ctx.test)]
    ctx.row("data (train subset vs test)", "reference", "reference", "reference", 0.0, ref, 0.0, 0)
    grid = QUICK_SOLVER_GRID if args.quick else SOLVER_GRID
    fast = preset_options("fast")
    for label, (model, compute) in teachers.items():
        fam, params = f"{label} teacher", count_parameters(model)
        x = ctx.evaluate(f"{label} teacher dopri5 (quality)", fam, "adaptive", "teacher",
                         teacher_sampler(model, QUALITY), params, **compute)
        ctx.grids[f"{label} teacher dopri5"] = x
        for solver, steps in grid[label]:
            ode = tl.ODEOptions(solver=solver, steps=steps)
            tag = " (fast preset)" if ode == fast else ""
            ctx.evaluate(f"{label} teacher {solver} x{steps}/block{tag}", fam, solver, "teacher",
                         teacher_sampler(model, ode), params, **compute)


def distill_rows(ctx: Context, lfm, glob, base: dict, prefix: str = "", group: str = "equal",
                 unequal: bool = True) -> None:
    """Distilled LFM (every k dividing N) and distilled global flow (M in ``global_steps``): the
    equal-parameter global students (``M`` students of :func:`equal_student_width`, cold start) at
    every M that is an LFM NFE, and with ``unequal`` the global's default students (the teacher's
    width: M x its parameters) for M > 1. ``base``: the teachers' own compute per family."""
    args, N = ctx.args, lfm.n_blocks
    n_val = max(2, min(1000, args.n_pairs // 4))
    common = dict(n_pairs=args.n_pairs, n_val=n_val, batches=args.distill_batches, batch_size=args.batch_size,
                  lr=args.distill_lr, teacher_ode=QUALITY, seed=ctx.seed, progress=False)
    block_params = {"LFM": count_parameters(lfm.nets[0]), "global": count_parameters(glob.nets[0])}
    lfm_params_at = {}

    def one(label, teacher, method, plan, factory=None, group_=group):
        sampler = distill(teacher, **plan, **common, student_factory=factory)
        rep = sampler.report
        compute = add_compute(base[label], distill_compute(rep, args.batch_size, args.n_pairs, n_val,
                                                           block_params[label]))
        x = ctx.evaluate(method, f"{label} {prefix}distilled", "distilled", group_, student_sampler(sampler),
                         count_parameters(sampler), warm=warm_label(rep), **compute, **plan,
                         student_width=sampler.students[0].net.config["width"], end_mse=rep.end_mse,
                         stage_val_mse=[s.val_mse for s in rep.stages])
        return sampler, x

    for k in [k for k in range(N, 0, -1) if N % k == 0]:  # NFE 1, ..., N
        sampler, x = one("LFM", lfm, f"LFM {prefix}distilled k={k}", {"k": k})
        lfm_params_at[N // k] = count_parameters(sampler)
        if not prefix:  # the sample figure shows the distilled teachers only
            ctx.grids[f"LFM distilled {N // k} NFE"] = x
    for m in args.global_steps:
        if m in lfm_params_at:
            width = equal_student_width(glob.nets[0], lfm_params_at[m], m)
            build = mlp_builder(glob.nets[0])
            _, x = one("global", glob, f"global {prefix}distilled M={m}, equal params", {"splits": m},
                       factory=lambda s, k, w=width: build(w))
            if not prefix:
                ctx.grids[f"global distilled {m} NFE (equal params)"] = x
        if unequal and (m > 1 or m not in lfm_params_at):
            one("global", glob, f"global {prefix}distilled M={m}, unequal params (M x teacher)", {"splits": m},
                group_="unequal")


def reflow_rows(ctx: Context, lfm, glob, base: dict) -> None:
    """Each teacher reflowed (``reflow_pairs`` couplings; ``reflow_batches`` per LFM block, N times as
    many for the global flow's one block), sampled with dopri5 and Euler, and then distilled."""
    args, N = ctx.args, lfm.n_blocks
    euler = {"LFM": [1, 2], "global": sorted({*args.global_steps, 2 * N})}  # steps per block
    reflowed, rbase = {}, {}
    for label, model, batches in (("LFM", lfm, args.reflow_batches), ("global", glob, N * args.reflow_batches)):
        new, rep = tl.reflow(model, args.reflow_pairs, batches_per_block=batches, batch_size=args.batch_size,
                             lr=args.reflow_lr, n_eval=min(1000, args.n_eval), euler_steps=euler[label],
                             seed=ctx.seed)
        rbase[label] = add_compute(base[label], reflow_compute(rep, args.batch_size, count_parameters(model.nets[0])))
        reflowed[label] = new
        fam, params = f"{label} reflow", count_parameters(new)
        ctx.evaluate(f"{label} reflow, dopri5 (quality)", fam, "adaptive", "reflow", teacher_sampler(new, QUALITY),
                     params, **rbase[label])
        for steps in euler[label]:
            ctx.evaluate(f"{label} reflow, euler x{steps}/block", fam, "euler", "reflow",
                         teacher_sampler(new, tl.ODEOptions(solver="euler", steps=steps)), params, **rbase[label])
    if args.reflow_distill:
        distill_rows(ctx, reflowed["LFM"], reflowed["global"], rbase, prefix="reflow + ", group="reflow",
                     unequal=False)


def run_dataset(name: str, seed: int, args) -> tuple[list[dict], dict]:
    """All rows of one dataset at one seed, and ``{"info", "grids"}`` (sample grids for the figures)."""
    ds, train, test = load_data(name, seed, args)
    ctx = Context(name, seed, args, train, test, ds.info.get("modes"), grids={"data": ds.val})
    N = args.blocks
    lfm, glob, g_width = build_teachers(ds.dim, args, seed)
    info = {"dataset": name, "seed": seed, "dim": ds.dim, "n_train": len(train), "n_test": len(test),
            "lfm_params": count_parameters(lfm), "global_params": count_parameters(glob), "global_width": g_width,
            "schedule": list(lfm.schedule.step_sizes[:-1]), "modes": ctx.modes}
    print(f"{name} seed {seed}: LFM {N} x MLP({args.width}x{args.depth}) = {info['lfm_params']} params; "
          f"global MLP({g_width}x{args.depth}) = {info['global_params']} params", flush=True)
    base = {}
    for label, model, batches in (("LFM", lfm, args.batches), ("global", glob, N * args.batches)):
        tick = time.perf_counter()
        model.fit(train, batches_per_block=batches, batch_size=args.batch_size, seed=seed, progress=False,
                  encode_final_pool=False)
        info[f"{label}_train_seconds"] = time.perf_counter() - tick
        base[label] = {"train_samples": N * args.batches * args.batch_size, "pair_nfe": 0.0, "pair_cost": 0.0}
    teacher_rows(ctx, {"LFM": (lfm, base["LFM"]), "global": (glob, base["global"])})
    distill_rows(ctx, lfm, glob, base)
    if args.reflow_pairs > 0:
        reflow_rows(ctx, lfm, glob, base)
    return ctx.rows, {"info": info, "grids": ctx.grids}
