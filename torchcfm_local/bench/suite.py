"""Global flow vs Local Flow Matching on one dataset, at equal parameters and equal batches.

A *task* is a dataset (from :mod:`torchcfm_local.datasets`) plus its LFM schedule and network size
(:data:`TASKS`); a *method* is a way to build the model (:data:`METHODS`); a *budget* scales data
size, batches and evaluation size (:data:`BUDGETS`). Adding a dataset adds one entry to ``TASKS``.

Protocol, per method:

* the same total number of training batches: LFM spends ``N * per_block``, the global flow the
  same number on its single block;
* the same total parameter count: the global MLP's width is solved so that its parameters match
  the sum over the N LFM blocks (both counts are recorded);
* constant learning rate, so that a global run evaluated at intermediate batches equals a shorter
  run; LFM cannot be evaluated before its last block exists, so its learning curve comes from
  independent runs at fractions of the budget;
* one evaluation for all: test NLL in nats by the instantaneous change of variables with dopri5 at
  atol = rtol = 1e-5 (exact divergence up to 16 dimensions, Hutchinson above), and the energy
  distance between model samples and held-out test data (no likelihood needed);
* wall-clock of everything: training, LFM pushforward, evaluation.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Optional, Union

import torch

from .. import datasets
from ..composer import LocalFlowMatching
from ..likelihood import log_prob as field_log_prob
from ..metrics import energy_distance
from ..networks import MLP
from ..schedule import OUSchedule
from ..solvers import ODEOptions

EVAL_ODE = ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)


@dataclass(frozen=True)
class Task:
    """A dataset with its LFM settings (paper values where they exist, DESIGN.md section 2)."""

    dataset: str
    steps: tuple[float, ...]  # finite OU steps; the free block is appended
    width: int  # LFM block width
    depth: int = 3
    lr: float = 1e-3
    warm_start: bool = True
    t_beta: Optional[tuple[float, float]] = None
    # relative share of the LFM batches per block (one per block, free block last); None: equal
    block_weights: Optional[tuple[float, ...]] = None
    note: str = ""


def _geometric(h0: float, rho: float, n_blocks: int) -> tuple[float, ...]:
    return OUSchedule(h0, rho, n_blocks).coupled_steps


TASKS: dict[str, Task] = {
    "tree": Task("tree", _geometric(0.025, 1.25, 9), width=256, note="paper 2D config: h0=0.025, rho=1.25, N=9"),
    "rose": Task("rose", _geometric(0.025, 1.25, 9), width=256, note="paper 2D config: h0=0.025, rho=1.25, N=9"),
    "8gaussians": Task("8gaussians", _geometric(0.025, 1.25, 9), width=256, note="2D config of tree/rose"),
    "power": Task("power", (0.15, 0.2, 0.26), width=256, note="paper POWER: N=4"),
    "gas": Task("gas", (0.05,), width=256, note="paper GAS: N=2 (the paper also uses Beta time sampling)"),
    "miniboone": Task("miniboone", (0.35,), width=256, note="paper MINIBOONE: N=2"),
    "bsds300": Task("bsds300", (0.25, 0.25, 0.25), width=512, warm_start=False, note="paper BSDS300: N=4"),
    "bsds300_patches": Task("bsds300_patches", (0.25, 0.25, 0.25), width=512, warm_start=False,
                            note="offline stand-in; schedule of BSDS300"),
    "patches3x3": Task("patches3x3", (0.15, 0.2, 0.26), width=256, note="offline stand-in; schedule of POWER"),
    "digits61": Task("digits61", (0.25, 0.25, 0.25), width=256, note="offline stand-in; schedule of BSDS300"),
    "breast_cancer": Task("breast_cancer", (0.35,), width=128, note="offline stand-in; schedule of MINIBOONE"),
}


@dataclass(frozen=True)
class Budget:
    n_train: Optional[int]  # None: the dataset's full training split
    per_block: int  # LFM batches per block (the global flow gets N times as many)
    batch_size: int
    n_eval: int  # test points for the NLL and energy distance
    n_curve: int  # held-out points for learning curves
    fractions: tuple[float, ...]  # learning-curve points, as fractions of the budget
    width_scale: float = 1.0  # multiplies the task's block width


BUDGETS: dict[str, Budget] = {
    "smoke": Budget(n_train=2000, per_block=20, batch_size=256, n_eval=300, n_curve=200,
                    fractions=(0.5, 1.0), width_scale=0.125),  # seconds; for tests and pipeline checks
    "quick": Budget(n_train=20_000, per_block=250, batch_size=512, n_eval=2000, n_curve=1000,
                    fractions=(0.25, 0.5, 1.0), width_scale=0.5),
    "medium": Budget(n_train=100_000, per_block=1000, batch_size=1000, n_eval=10_000, n_curve=2000,
                     fractions=(0.125, 0.25, 0.5, 1.0)),
    "full": Budget(n_train=None, per_block=4000, batch_size=1000, n_eval=10_000, n_curve=2000,
                   fractions=(0.125, 0.25, 0.5, 1.0)),
}

#: method name -> (local?, torchcfm matcher class name)
METHODS: dict[str, tuple[bool, str]] = {
    "global-trig": (False, "VariancePreservingConditionalFlowMatcher"),
    "global-linear": (False, "ConditionalFlowMatcher"),
    "lfm-trig": (True, "VariancePreservingConditionalFlowMatcher"),
    "lfm-linear": (True, "ConditionalFlowMatcher"),
}


def mlp_params(dim: int, width: int, depth: int) -> int:
    return sum(p.numel() for p in MLP(dim, width=width, depth=depth).parameters())


def matched_width(dim: int, target: int, depth: int) -> int:
    """Width whose MLP parameter count is closest to ``target``."""
    lo, hi = 1, 1
    while mlp_params(dim, hi, depth) < target:
        hi *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if mlp_params(dim, mid, depth) < target else (lo, mid)
    return min((lo, hi), key=lambda w: abs(mlp_params(dim, w, depth) - target))


@dataclass
class RunResult:
    """One trained model of one method at one budget fraction."""

    method: str
    fraction: float
    batches: int
    params: int
    train_seconds: float  # optimizer steps
    pushforward_seconds: float  # LFM pool pushforward (0 for global)
    curve_nll: float  # NLL on the learning-curve subset
    test_nll: Optional[float] = None
    val_nll: Optional[float] = None
    energy_distance: Optional[float] = None
    sample_nfe: Optional[float] = None
    sample_seconds_per_1000: Optional[float] = None
    eval_seconds: Optional[float] = None
    block_final_losses: list = field(default_factory=list)


def _nll(model: LocalFlowMatching, x: torch.Tensor, estimator: str, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    return float(-model.log_prob(x, ode=EVAL_ODE, estimator=estimator, generator=gen).mean())


def block_batches(task: Task, per_block: int) -> list[int]:
    """LFM batches of each block: ``N * per_block`` shared by ``task.block_weights`` (equal by default)."""
    n_blocks = len(task.steps) + 1
    total = n_blocks * per_block
    weights = task.block_weights or (1.0,) * n_blocks
    if len(weights) != n_blocks or min(weights) <= 0:
        raise ValueError(f"block_weights must be {n_blocks} positive numbers (one per block), got {weights}")
    edges = [round(total * sum(weights[:i]) / sum(weights)) for i in range(n_blocks + 1)]
    counts = [b - a for a, b in zip(edges, edges[1:])]
    if min(counts) < 1:
        raise ValueError(f"{total} batches split by {weights} leave a block without batches")
    return counts


def run_task(task_name: Union[str, Task], budget_name: Union[str, Budget] = "quick", methods=None, *, root=None,
             seed: int = 0, progress: bool = True, log=print) -> "BenchRun":
    """Train and evaluate every method on one task (see the module docstring for the protocol).

    ``task_name`` and ``budget_name`` are keys of :data:`TASKS` and :data:`BUDGETS`, or
    :class:`Task` / :class:`Budget` objects for variants (``dataclasses.replace(TASKS["tree"], ...)``).
    """
    if isinstance(task_name, Task):
        task, task_name = task_name, task_name.dataset
    elif task_name in TASKS:
        task = TASKS[task_name]
    else:
        raise ValueError(f"unknown task {task_name!r}; expected one of {sorted(TASKS)}")
    if isinstance(budget_name, Budget):
        budget, budget_name = budget_name, "custom"
    elif budget_name in BUDGETS:
        budget = BUDGETS[budget_name]
    else:
        raise ValueError(f"unknown budget {budget_name!r}; expected one of {sorted(BUDGETS)}")
    methods = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected names from {sorted(METHODS)}")
    data = datasets.load(task.dataset, root=root, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    train = data.train
    if budget.n_train is not None and budget.n_train < len(train):  # a seeded random subset
        train = train[torch.randperm(len(train), generator=g)[: budget.n_train]]
    dim = data.dim
    estimator = "exact" if dim <= 16 else "hutchinson"
    n_blocks = len(task.steps) + 1
    width = max(8, int(round(task.width * budget.width_scale)))
    block_params = mlp_params(dim, width, task.depth)
    global_width = matched_width(dim, n_blocks * block_params, task.depth)
    total_batches = n_blocks * budget.per_block
    if min(budget.fractions) * budget.per_block < 1:
        raise ValueError(f"budget {budget_name!r} is too small for a learning curve: "
                         f"{min(budget.fractions)} x {budget.per_block} batches per block < 1")
    block_batches(task, max(1, round(min(budget.fractions) * budget.per_block)))  # each curve point splits
    test = data.test[torch.randperm(len(data.test), generator=g)[: budget.n_eval]]
    curve_set = data.val[torch.randperm(len(data.val), generator=g)[: budget.n_curve]]
    val = data.val[: budget.n_eval]
    batch_size = min(budget.batch_size, len(train))
    log(f"[{task_name}/{budget_name}] {len(train)} train points, d={dim}, LFM {n_blocks} x MLP({width}x{task.depth}) "
        f"= {n_blocks * block_params} params vs global MLP({global_width}x{task.depth}) = "
        f"{mlp_params(dim, global_width, task.depth)} params; {total_batches} batches of {batch_size}")

    runs: list[RunResult] = []
    models: dict[str, LocalFlowMatching] = {}
    for method in methods:
        local, matcher_name = METHODS[method]
        from torchcfm import conditional_flow_matching as cfm

        def build():
            torch.manual_seed(seed)
            schedule = OUSchedule.from_steps(task.steps) if local else OUSchedule.global_flow()
            w = width if local else global_width
            return LocalFlowMatching(dim, schedule, getattr(cfm, matcher_name)(sigma=0.0),
                                     lambda n: MLP(dim, width=w, depth=task.depth), t_beta=task.t_beta)

        if local:  # independent runs at each budget fraction
            for frac in budget.fractions:
                model = build()
                per_block = block_batches(task, max(1, int(round(frac * budget.per_block))))
                log(f"  {method}: {per_block} batches per block ({frac:.3g} of the budget)")
                rep = model.fit(train, batches_per_block=per_block, batch_size=batch_size, lr=task.lr,
                                warm_start=task.warm_start, seed=seed, progress=progress, encode_final_pool=False)
                runs.append(RunResult(
                    method, frac, sum(per_block), n_blocks * block_params,
                    sum(b.train_seconds for b in rep.blocks), sum(b.pushforward_seconds for b in rep.blocks),
                    _nll(model, curve_set, estimator, seed), block_final_losses=[b.final_loss for b in rep.blocks]))
            models[method] = model
        else:  # one run, evaluated along the way (constant LR: same as shorter runs)
            model = build()
            marks = {max(1, int(round(f * total_batches))): f for f in budget.fractions}
            pending: list[RunResult] = []
            clock = {"start": time.perf_counter(), "eval": 0.0}

            def callback(block, step, loss, model=model, marks=marks, pending=pending, clock=clock, method=method):
                if step not in marks:
                    return
                tick = time.perf_counter()
                train_seconds = tick - clock["start"] - clock["eval"]
                gen = torch.Generator().manual_seed(seed)
                nll = float(-field_log_prob(model.field(1), curve_set, options=EVAL_ODE, estimator=estimator,
                                            generator=gen).mean())
                clock["eval"] += time.perf_counter() - tick
                pending.append(RunResult(method, marks[step], step, mlp_params(dim, global_width, task.depth),
                                         train_seconds, 0.0, nll))

            log(f"  {method}: {total_batches} batches, NLL on the curve set at {sorted(marks)}")
            rep = model.fit(train, batches_per_block=total_batches, batch_size=batch_size, lr=task.lr,
                            seed=seed, progress=progress, encode_final_pool=False, callback=callback)
            pending[-1].block_final_losses = [rep.blocks[0].final_loss]
            runs.extend(pending)
            models[method] = model

    # final evaluation of each method's full-budget model
    samples = {}
    for method, model in models.items():
        final = next(r for r in runs if r.method == method and r.fraction == max(budget.fractions))
        tick = time.perf_counter()
        final.test_nll = _nll(model, test, estimator, seed)
        final.val_nll = _nll(model, val, estimator, seed)
        gen = torch.Generator().manual_seed(seed + 2)
        start = time.perf_counter()
        samples[method] = model.sample(len(test), ode=EVAL_ODE, generator=gen)
        final.sample_seconds_per_1000 = (time.perf_counter() - start) * 1000 / len(test)
        final.sample_nfe = model.last_stats.nfe
        final.energy_distance = energy_distance(samples[method], test)
        final.eval_seconds = time.perf_counter() - tick
        log(f"  {method}: test NLL {final.test_nll:.4f}, val NLL {final.val_nll:.4f}, "
            f"energy distance {final.energy_distance:.4f}")

    result = {
        "task": asdict(task), "budget": budget_name, "budget_settings": asdict(budget), "dataset_info": data.info,
        "dim": dim, "n_train": len(train), "n_test": len(test), "n_val": len(val), "n_blocks": n_blocks, "lfm_width": width, "global_width": global_width,
        "depth": task.depth, "batch_size": batch_size, "total_batches": total_batches, "estimator": estimator,
        "eval_ode": asdict(EVAL_ODE), "seed": seed, "runs": [asdict(r) for r in runs],
    }
    result["summary"] = summarize(result)
    return BenchRun(result, models, samples, test)


@dataclass
class BenchRun:
    """Everything one task run produced: the JSON-ready numbers, the full-budget models, their samples."""

    result: dict
    models: dict
    samples: dict
    test: torch.Tensor


def _crossing(curve: list[tuple[float, float]], target: float) -> Optional[float]:
    """Smallest x where the piecewise-linear curve (x ascending) reaches ``<= target``; None if never."""
    for i, (x, y) in enumerate(curve):
        if y <= target:
            if i == 0:
                return x
            (x0, y0) = curve[i - 1]
            return x0 + (x - x0) * (y0 - target) / (y0 - y)
    return None


def summarize(result: dict) -> list[dict]:
    """One row per method: final numbers, wall-clock and batches-to-target against the global flow."""
    runs = result["runs"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    rows = []
    for m in methods:
        mine = sorted((r for r in runs if r["method"] == m), key=lambda r: r["batches"])
        final = mine[-1]
        row = {k: final[k] for k in ("method", "params", "batches", "test_nll", "val_nll", "energy_distance",
                                     "sample_nfe", "sample_seconds_per_1000")}
        row["train_seconds"] = final["train_seconds"]
        row["pushforward_seconds"] = final["pushforward_seconds"]
        row["total_seconds"] = final["train_seconds"] + final["pushforward_seconds"] + (final["eval_seconds"] or 0)
        row["curve"] = [(r["batches"], r["curve_nll"]) for r in mine]
        rows.append(row)
    for row in rows:
        if not row["method"].startswith("lfm"):
            continue
        ref_name = "global-" + row["method"].split("-", 1)[1]
        ref = next((r for r in rows if r["method"] == ref_name), None)
        if ref is None:
            continue
        target = ref["curve"][-1][1]
        reached = _crossing(row["curve"], target)
        row["reference"] = ref_name
        row["batches_to_reference_nll"] = reached
        # reached at the first measured point: the true number may be smaller
        row["batches_to_reference_is_upper_bound"] = reached is not None and reached == row["curve"][0][0]
        row["batch_ratio_to_reference"] = None if reached is None else reached / ref["batches"]
    return rows


def markdown_table(result: dict) -> str:
    rows = result["summary"]
    head = (f"### {result['task']['dataset']} ({result['budget']} budget): d={result['dim']}, {result['n_train']} train points, "
            f"{result['total_batches']} batches of {result['batch_size']} per method, LFM {result['n_blocks']} blocks x "
            f"MLP({result['lfm_width']}x{result['depth']}), global MLP({result['global_width']}x{result['depth']}); "
            f"NLL in nats ({result['estimator']} divergence, dopri5 1e-5); energy distance to "
            f"{result['n_test']} test points\n")
    lines = [head,
             "| method | params | test NLL | val NLL | energy dist. | NFE/sample | train s | push s | total s | batches to global NLL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "batch_ratio_to_reference" in r:
            ratio = r["batch_ratio_to_reference"]
            bound = "<= " if r["batches_to_reference_is_upper_bound"] else ""
            reach = "not reached" if ratio is None else f"{bound}{r['batches_to_reference_nll']:.0f} ({bound}{ratio:.2f}x)"
        else:
            reach = "-"
        lines.append(f"| {r['method']} | {r['params']} | {r['test_nll']:.4f} | {r['val_nll']:.4f} | {r['energy_distance']:.4f} "
                     f"| {r['sample_nfe']:.0f} | {r['train_seconds']:.1f} | {r['pushforward_seconds']:.1f} "
                     f"| {r['total_seconds']:.1f} | {reach} |")
    lines.append("")
    lines.append("Learning curves (batches: NLL on the held-out curve subset): " + "; ".join(
        f"{r['method']}: " + ", ".join(f"{b}: {v:.3f}" for b, v in r["curve"]) for r in rows))
    return "\n".join(lines)
