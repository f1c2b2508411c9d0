"""Global flow vs Local Flow Matching on one task, at equal parameters and equal batches.

A task, budget and method come from :mod:`torchcfm_local.bench.registry`. Protocol, per method:

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

:func:`run_task` runs these steps in order: :func:`prepare` (data splits, widths),
:func:`build_model`, :func:`fit_lfm_curve` or :func:`fit_global_curve` (training with the learning
curve), :func:`evaluate_final` (test NLL, energy distance, NFE) and :func:`collect_result`.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Optional, Sequence, Union

import torch

from .. import LocalFlowMatching, ODEOptions, OUSchedule, datasets, energy_distance
from .. import log_prob as field_log_prob
from .._checks import positive_int
from ..networks import MLP, count_parameters, width_for_parameters
from .registry import BUDGETS, METHODS, TASKS, Budget, Task
from .report import summarize

__all__ = ["EVAL_ODE", "RunResult", "BenchRun", "Setup", "mlp_params", "matched_width", "with_steps", "block_batches",
           "resolve", "prepare", "build_model", "fit_lfm_curve", "fit_global_curve", "evaluate_final",
           "collect_result", "run_task"]

#: ODE settings of every likelihood and sample in the evaluation
EVAL_ODE = ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5)


def mlp_params(dim: int, width: int, depth: int, **mlp) -> int:
    """Parameters of ``MLP(dim, width=width, depth=depth, **mlp)`` (the benchmark's velocity network)."""
    return count_parameters(MLP(dim, width=width, depth=depth, **mlp))


def matched_width(dim: int, target: int, depth: int, **mlp) -> int:
    """Width whose MLP parameter count is closest to ``target`` (the smaller width on a tie)."""
    return width_for_parameters(lambda width: MLP(dim, width=width, depth=depth, **mlp), target)


def with_steps(task: Task, budget: Budget, dim: int, steps: Sequence[float]) -> tuple[Task, Budget]:
    """``task`` with the finite OU ``steps`` instead of its own, at equal total parameters and batches.

    With another number of blocks the block width is re-matched so that all blocks together keep the
    parameter count of ``task``'s blocks at ``budget``'s width scale, and the batches per block are
    rescaled to keep the total (equal to within ``n_blocks`` batches when it does not divide). The
    width scale is folded into the returned task's width (the returned budget has ``width_scale=1``).
    """
    width = max(8, int(round(task.width * budget.width_scale)))
    total_params = task.n_blocks * mlp_params(dim, width, task.depth, **task.mlp)
    total_batches = task.n_blocks * budget.per_block
    new = replace(task, steps=tuple(float(h) for h in steps), width=width)
    if new.n_blocks != task.n_blocks:
        if task.block_weights is not None:
            raise ValueError("with_steps cannot carry block_weights over to another number of blocks")
        new = replace(new, width=matched_width(dim, total_params // new.n_blocks, task.depth, **task.mlp))
    return new, replace(budget, width_scale=1.0, per_block=max(1, round(total_batches / new.n_blocks)))


@dataclass
class RunResult:
    """One trained model of one method at one budget fraction (seconds are wall-clock, NLL in nats)."""

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
    standardize: Optional[str] = None  # the model's data map after fit (what "auto" chose), final runs only


@dataclass
class BenchRun:
    """Everything one task run produced: the JSON-ready numbers, the full-budget models, their samples.

    ``models`` and ``samples`` (``(n_test, dim)``) are keyed by method name; ``test`` is the
    ``(n_test, dim)`` test subset the samples are compared with.
    """

    result: dict
    models: dict
    samples: dict
    test: torch.Tensor


@dataclass
class Setup:
    """A task and budget made concrete: data subsets (``(n, dim)`` tensors) and network sizes."""

    task: Task
    task_name: str
    budget: Budget
    budget_name: str
    dataset_info: dict
    dim: int  # data dimension
    train: torch.Tensor
    test: torch.Tensor  # final test NLL and energy distance
    curve_set: torch.Tensor  # learning-curve NLL (validation points)
    val: torch.Tensor  # final validation NLL
    estimator: str  # divergence estimator of the NLL: "exact" or "hutchinson"
    width: int  # LFM block width
    global_width: int  # global MLP width, matched to the LFM blocks' total parameters
    block_params: int  # parameters of one LFM block's MLP
    global_params: int  # parameters of the global MLP
    batch_size: int

    @property
    def n_blocks(self) -> int:
        return self.task.n_blocks

    @property
    def total_batches(self) -> int:
        """Training batches of every method: ``N * per_block``."""
        return self.n_blocks * self.budget.per_block


def block_batches(task: Task, per_block: int) -> list[int]:
    """LFM batches of each block: ``N * per_block`` shared by ``task.block_weights`` (equal by default)."""
    positive_int(per_block, "per_block")
    n_blocks = task.n_blocks
    total = n_blocks * per_block
    weights = task.block_weights or (1.0,) * n_blocks
    if len(weights) != n_blocks or min(weights) <= 0:
        raise ValueError(f"block_weights must be {n_blocks} positive numbers (one per block), got {weights}")
    edges = [round(total * sum(weights[:i]) / sum(weights)) for i in range(n_blocks + 1)]
    counts = [b - a for a, b in zip(edges, edges[1:])]
    if min(counts) < 1:
        raise ValueError(f"{total} batches split by {weights} leave a block without batches")
    return counts


def resolve(task: Union[str, Task], budget: Union[str, Budget], methods: Optional[Sequence[str]]):
    """``(task, task_name, budget, budget_name, methods)`` from names or objects; raises ValueError on unknown names."""
    if isinstance(task, Task):
        task_name = task.dataset
    elif task in TASKS:
        task, task_name = TASKS[task], task
    else:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    if isinstance(budget, Budget):
        budget_name = "custom"
    elif budget in BUDGETS:
        budget, budget_name = BUDGETS[budget], budget
    else:
        raise ValueError(f"unknown budget {budget!r}; expected one of {sorted(BUDGETS)}")
    methods = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; expected names from {sorted(METHODS)}")
    return task, task_name, budget, budget_name, methods


def prepare(task: Task, task_name: str, budget: Budget, budget_name: str, *, root=None, seed: int = 0) -> Setup:
    """Load the data, draw the seeded subsets and solve the global width (see :class:`Setup`)."""
    data = datasets.load(task.dataset, root=root, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    train = data.train
    if budget.n_train is not None and budget.n_train < len(train):  # a seeded random subset
        train = train[torch.randperm(len(train), generator=g)[: budget.n_train]]
    width = max(8, int(round(task.width * budget.width_scale)))
    block_params = mlp_params(data.dim, width, task.depth, **task.mlp)
    global_width = matched_width(data.dim, task.n_blocks * block_params, task.depth, **task.mlp)
    if min(budget.fractions) * budget.per_block < 1:
        raise ValueError(f"budget {budget_name!r} is too small for a learning curve: "
                         f"{min(budget.fractions)} x {budget.per_block} batches per block < 1")
    block_batches(task, max(1, round(min(budget.fractions) * budget.per_block)))  # each curve point splits
    test = data.test[torch.randperm(len(data.test), generator=g)[: budget.n_eval]]
    curve_set = data.val[torch.randperm(len(data.val), generator=g)[: budget.n_curve]]
    return Setup(task=task, task_name=task_name, budget=budget, budget_name=budget_name, dataset_info=data.info,
                 dim=data.dim, train=train, test=test, curve_set=curve_set, val=data.val[: budget.n_eval],
                 estimator="exact" if data.dim <= 16 else "hutchinson", width=width, global_width=global_width,
                 block_params=block_params, global_params=mlp_params(data.dim, global_width, task.depth, **task.mlp),
                 batch_size=min(budget.batch_size, len(train)))


def build_model(method: str, setup: Setup, seed: int) -> LocalFlowMatching:
    """A fresh model of ``method`` (LFM blocks at the block width, or the matched global MLP), seeded by ``seed``."""
    spec, task = METHODS[method], setup.task
    torch.manual_seed(seed)
    schedule = OUSchedule.from_steps(task.steps) if spec.local else OUSchedule.global_flow()
    width = setup.width if spec.local else setup.global_width
    return LocalFlowMatching(setup.dim, schedule, spec.matcher(),
                             lambda n: MLP(setup.dim, width=width, depth=task.depth, **task.mlp), t_beta=task.t_beta)


def _nll(model: LocalFlowMatching, x: torch.Tensor, estimator: str, seed: int) -> float:
    """Mean negative log-likelihood of ``x`` ``(n, dim)`` in nats."""
    gen = torch.Generator().manual_seed(seed)
    return float(-model.log_prob(x, ode=EVAL_ODE, estimator=estimator, generator=gen).mean())


def fit_lfm_curve(method: str, setup: Setup, *, seed: int, progress: bool,
                  log: Callable) -> tuple[LocalFlowMatching, list[RunResult]]:
    """Independent LFM runs at each budget fraction; returns the full-budget model and one result per fraction."""
    task, budget = setup.task, setup.budget
    runs = []
    for frac in budget.fractions:
        model = build_model(method, setup, seed)
        per_block = block_batches(task, max(1, int(round(frac * budget.per_block))))
        log(f"  {method}: {per_block} batches per block ({frac:.3g} of the budget)")
        rep = model.fit(setup.train, batches_per_block=per_block, batch_size=setup.batch_size, lr=task.lr,
                        warm_start=task.warm_start, seed=seed, progress=progress, encode_final_pool=False, **task.fit)
        runs.append(RunResult(
            method, frac, sum(per_block), setup.n_blocks * setup.block_params,
            sum(b.train_seconds for b in rep.blocks), sum(b.pushforward_seconds for b in rep.blocks),
            _nll(model, setup.curve_set, setup.estimator, seed), block_final_losses=[b.final_loss for b in rep.blocks]))
    return model, runs


def fit_global_curve(method: str, setup: Setup, *, seed: int, progress: bool,
                     log: Callable) -> tuple[LocalFlowMatching, list[RunResult]]:
    """One global run, its curve-set NLL measured at each budget fraction during training (constant
    learning rate: the same as shorter runs); evaluation time is left out of ``train_seconds``."""
    model = build_model(method, setup, seed)
    total = setup.total_batches
    marks = {max(1, int(round(f * total))): f for f in setup.budget.fractions}
    runs: list[RunResult] = []
    start, eval_seconds = time.perf_counter(), 0.0

    def callback(block, step, loss):
        nonlocal eval_seconds
        if step not in marks:
            return
        tick = time.perf_counter()
        train_seconds = tick - start - eval_seconds
        gen = torch.Generator().manual_seed(seed)
        data_map = model.standardizer  # the block is not marked trained yet: apply the data map by hand
        log_p = field_log_prob(model.field(1), data_map.apply(setup.curve_set), options=EVAL_ODE,
                               estimator=setup.estimator, generator=gen) + data_map.log_det()
        nll = float(-log_p.mean())
        eval_seconds += time.perf_counter() - tick
        runs.append(RunResult(method, marks[step], step, setup.global_params, train_seconds, 0.0, nll))

    log(f"  {method}: {total} batches, NLL on the curve set at {sorted(marks)}")
    rep = model.fit(setup.train, batches_per_block=total, batch_size=setup.batch_size, lr=setup.task.lr,
                    seed=seed, progress=progress, encode_final_pool=False, callback=callback, **setup.task.fit)
    runs[-1].block_final_losses = [rep.blocks[0].final_loss]
    return model, runs


def evaluate_final(method: str, model: LocalFlowMatching, final: RunResult, setup: Setup, *, seed: int,
                   log: Callable) -> torch.Tensor:
    """Fill ``final``'s test/val NLL, energy distance, NFE and timings; returns the ``(n_test, dim)`` samples."""
    tick = time.perf_counter()
    final.test_nll = _nll(model, setup.test, setup.estimator, seed)
    final.val_nll = _nll(model, setup.val, setup.estimator, seed)
    gen = torch.Generator().manual_seed(seed + 2)
    start = time.perf_counter()
    samples = model.sample(len(setup.test), ode=EVAL_ODE, generator=gen)
    final.sample_seconds_per_1000 = (time.perf_counter() - start) * 1000 / len(setup.test)
    final.sample_nfe = model.last_stats.nfe
    final.energy_distance = energy_distance(samples, setup.test)
    final.eval_seconds = time.perf_counter() - tick
    final.standardize = model.standardizer.mode or "none"
    log(f"  {method}: test NLL {final.test_nll:.4f}, val NLL {final.val_nll:.4f}, "
        f"energy distance {final.energy_distance:.4f}")
    return samples


def collect_result(setup: Setup, runs: list[RunResult], seed: int) -> dict:
    """The JSON-ready record of a task run: settings, sizes, every run and the per-method summary."""
    task = setup.task
    result = {
        "task": asdict(task), "budget": setup.budget_name, "budget_settings": asdict(setup.budget),
        "dataset_info": setup.dataset_info, "dim": setup.dim, "n_train": len(setup.train), "n_test": len(setup.test),
        "n_val": len(setup.val), "n_blocks": setup.n_blocks, "lfm_width": setup.width,
        "global_width": setup.global_width, "depth": task.depth, "batch_size": setup.batch_size,
        "total_batches": setup.total_batches, "estimator": setup.estimator, "eval_ode": asdict(EVAL_ODE),
        "seed": seed, "runs": [asdict(r) for r in runs],
        "data_maps": sorted({r.standardize for r in runs if r.standardize}),  # what standardize="auto" chose
    }
    result["summary"] = summarize(result)
    return result


def run_task(task_name: Union[str, Task], budget_name: Union[str, Budget] = "quick", methods=None, *, root=None,
             seed: int = 0, progress: bool = True, log=print) -> BenchRun:
    """Train and evaluate every method on one task (see the module docstring for the protocol).

    ``task_name`` and ``budget_name`` are keys of :data:`~.registry.TASKS` and
    :data:`~.registry.BUDGETS`, or :class:`~.registry.Task` / :class:`~.registry.Budget` objects
    for variants (``dataclasses.replace(TASKS["tree"], ...)``, reported as budget ``"custom"``);
    ``methods`` are keys of :data:`~.registry.METHODS` (default: all). ``log`` receives progress lines.
    """
    positive_int(seed, "seed", minimum=0)
    task, task_name, budget, budget_name, methods = resolve(task_name, budget_name, methods)
    setup = prepare(task, task_name, budget, budget_name, root=root, seed=seed)
    log(f"[{task_name}/{budget_name}] {len(setup.train)} train points, d={setup.dim}, LFM {setup.n_blocks} x "
        f"MLP({setup.width}x{task.depth}) = {setup.n_blocks * setup.block_params} params vs global "
        f"MLP({setup.global_width}x{task.depth}) = {setup.global_params} params; "
        f"{setup.total_batches} batches of {setup.batch_size}")

    runs: list[RunResult] = []
    models: dict[str, LocalFlowMatching] = {}
    for method in methods:
        fit = fit_lfm_curve if METHODS[method].local else fit_global_curve
        models[method], method_runs = fit(method, setup, seed=seed, progress=progress, log=log)
        runs.extend(method_runs)

    samples = {}  # final evaluation of each method's full-budget model, after all training
    for method, model in models.items():
        final = next(r for r in runs if r.method == method and r.fraction == max(budget.fractions))
        samples[method] = evaluate_final(method, model, final, setup, seed=seed, log=log)
    return BenchRun(collect_result(setup, runs, seed), models, samples, setup.test)
