"""Diffusion Policy's evaluation protocol, with a checkpoint definition that also holds for LFM.

Diffusion Policy (Chi et al., 2023) trains every method once per training seed, evaluates its
checkpoints every k epochs on the same fixed test initial states, and reports per method the
maximum success rate over the checkpoints and the mean of the last few, each averaged over the
training seeds. :func:`run_protocol` does that and :func:`summarize` computes the numbers:
max over checkpoints and mean of the last ``last`` (3) checkpoints per training seed, then mean
± SE over the seeds (:func:`~torchcfm_local.bench.seeds.mean_se`), and the mean ± SE curve.

**The checkpoint "at epoch e"** of a method and training seed is *the policy that training with
a total budget of e epochs produces*: e epochs spread evenly over the blocks (e / N per LFM
block), from the same seed (the same initial weights and batch order) and the same recipe. LFM
trains its blocks one after the other, each on what the blocks before it produce, so part-way
through an LFM run there is no policy to evaluate (the later blocks are untrained), and a run
whose last block is trained cannot be continued. Hence:

* ``"snapshot"``: one run per seed serves every checkpoint where the policy of budget e is a
  snapshot of the longer run after e epochs' batches, i.e. for a single network (the global flow,
  the regression baseline, a one-block LFM) without learning-rate decay (warm-up and EMA are fine:
  the EMA weights are snapshotted by replaying the same average).
* ``"run"``: every other case is one training run per checkpoint: LFM with N > 1 blocks, and any
  method with ``lr_decay="cosine"`` (the rate at epoch e depends on the total budget). An LFM
  curve thus costs the sum of its budgets, e.g. 300 epochs for checkpoints every 20 up to 100.

Both kinds give the same policy for the same budget (``tests/test_policy_protocol.py`` checks that
a snapshot equals the run of its budget), so every method is measured on one definition.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from ..bench.seeds import mean_se
from ..training.loop import EMA
from .demos import Demos
from .flops import chunk_flops, fit_flops, network_flops, steps_flops
from .policy import FlowPolicy, _block_batch_size
from .recipe import PolicyRecipe
from .rollout import evaluate

__all__ = ["Checkpoint", "checkpoint_epochs", "shares_one_run", "train_checkpoints", "run_protocol", "summarize"]


@dataclass
class Checkpoint:
    """A policy at one epoch budget: ``kind`` is ``"snapshot"`` (of one longer run) or ``"run"`` (its own run);
    ``train_seconds``: wall time of the training that produced it (LFM's pushforwards included);
    ``train_flops``: its compute; ``costs``: its networks' FLOPs per sample
    (:func:`~torchcfm_local.policy.flops.network_flops`)."""

    epochs: float
    policy: object
    train_seconds: float
    kind: str
    train_flops: Optional[float] = None
    costs: Optional[list] = None


def checkpoint_epochs(total: float, every: float) -> list[float]:
    """``[every, 2 every, ...]`` up to ``total``, with ``total`` itself always the last checkpoint."""
    if not (total > 0 and every > 0 and math.isfinite(total) and math.isfinite(every)):
        raise ValueError(f"epochs and eval-every must be positive and finite, got {total} and {every}")
    grid = [every * k for k in range(1, int(math.floor(total / every + 1e-9)) + 1)]
    if not grid or not math.isclose(grid[-1], total):
        grid.append(float(total))
    return [float(e) for e in grid]


def shares_one_run(policy, recipe: PolicyRecipe) -> bool:
    """Whether one run gives every checkpoint of ``policy`` as a snapshot (see the module docstring)."""
    return policy.n_blocks == 1 and recipe.lr_decay == "none"


def _build(method, demos, recipe, seed):
    from .cli import build_policy  # the CLI module imports this package's modules, not the reverse

    torch.manual_seed(seed)
    return build_policy(method, demos.obs_dims, demos.action.shape[1], recipe=recipe)


def train_checkpoints(method: str, demos, recipe: PolicyRecipe, epochs: Sequence[float], seed: int,
                      progress: bool = False) -> Iterator[Checkpoint]:
    """The checkpoints of ``method`` at the epoch budgets ``epochs`` (ascending), one at a time.

    A snapshot checkpoint's policy is the same object with the next snapshot's weights loaded:
    evaluate it before asking for the next one.
    """
    epochs = sorted(float(e) for e in epochs)
    policy = _build(method, demos, recipe, seed)
    costs, batch, rows = network_flops(policy), _batch_size(policy, demos, recipe), int(demos.action.shape[0])
    if shares_one_run(policy, recipe):
        yield from _snapshots(policy, demos, recipe, epochs, seed, progress, costs, batch)
        return
    for i, budget in enumerate(epochs):
        if i:
            policy = _build(method, demos, recipe, seed)
        start = time.perf_counter()
        report = policy.fit(demos, **{**recipe.fit_options(), "epochs": budget}, seed=seed, progress=progress)
        seconds = time.perf_counter() - start
        flops = (fit_flops(costs, report, batch, rows) if isinstance(policy, FlowPolicy)
                 else steps_flops(costs, [len(report)], batch))  # regression: the loss of every step
        yield Checkpoint(budget, policy, seconds, "run", flops, costs)


def _batch_size(policy, demos, recipe: PolicyRecipe) -> int:
    """Rows per optimizer step of each of ``policy``'s networks when it trains on ``demos`` with ``recipe``."""
    n_blocks = policy.n_blocks if isinstance(policy, FlowPolicy) else 1
    return _block_batch_size(recipe.batch_size, int(demos.action.shape[0]), n_blocks, recipe.block_batch)


def _snapshots(policy, demos, recipe: PolicyRecipe, epochs: list, seed: int, progress: bool, costs: list,
               batch: int) -> Iterator[Checkpoint]:
    """One run to ``max(epochs)``; the weights (EMA weights with an EMA) after each budget's batches."""
    module = policy.flow.nets[0] if isinstance(policy, FlowPolicy) else policy.net
    targets = [(policy.batches_per_block(demos, e, recipe.batch_size, recipe.block_batch), e) for e in epochs]
    # the trainer's EMA starts from the initial weights and is updated after every step: so is this one
    ema = None if recipe.ema_decay is None else EMA(module, float(recipe.ema_decay))
    saved, start = [], time.perf_counter()

    def record(step: int):  # step: optimizer steps done
        if ema is not None:
            ema.update(step - 1)
        for _ in [e for s, e in targets if s == step]:
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            if ema is not None:
                state.update({k: v.detach().clone() for k, v in ema.state.items()})
            saved.append((state, time.perf_counter() - start))

    if isinstance(policy, FlowPolicy):
        def callback(block, step, loss):
            record(step)
    else:
        def callback(step, loss):
            record(step)
    policy.fit(demos, **{**recipe.fit_options(), "epochs": epochs[-1]}, seed=seed, progress=progress,
               callback=callback)
    if len(saved) != len(epochs):
        raise RuntimeError(f"took {len(saved)} snapshots for {len(epochs)} checkpoints: the batch counts disagree")
    for (state, seconds), (steps, budget) in zip(saved, targets):
        module.load_state_dict(state)
        yield Checkpoint(budget, policy, seconds, "snapshot", steps_flops(costs, [steps], batch), costs)


def _nfe(policy) -> float:
    """Network evaluations per chunk of the last ``predict_action`` call (1 for regression)."""
    return float(policy.flow.last_stats.nfe) if isinstance(policy, FlowPolicy) else 1.0


def run_protocol(methods: Sequence[str], demos, env, recipe: PolicyRecipe, epochs: Sequence[float],
                 seeds: Sequence[int], episodes: int = 50, eval_seed: int = 1000, progress: bool = True,
                 on_checkpoint=None) -> list[dict]:
    """Train every method once per training seed and evaluate each checkpoint on the same
    ``episodes`` initial states (``eval_seed``); the policy's sampling noise is seeded with the
    training seed. Latency is measured after a two-episode warm-up of the first checkpoint.
    ``on_checkpoint(method, seed, checkpoint)`` sees each checkpoint right after its evaluation.
    Returns one record per (method, seed, checkpoint)."""
    from tqdm.auto import tqdm

    _warm_up(methods, demos, recipe)
    records = []
    jobs = [(seed, method) for seed in seeds for method in methods]
    for seed, method in tqdm(jobs, desc="policies", disable=not progress):
        for i, ckpt in enumerate(train_checkpoints(method, demos, recipe, epochs, seed)):
            if i == 0:
                evaluate(ckpt.policy, env, 2, seed=eval_seed - 1)  # warm-up: lazy imports, first solver build
            report = evaluate(ckpt.policy, env, episodes, seed=eval_seed, generator_seed=seed)
            records.append({"method": method, "seed": seed, "epochs": ckpt.epochs, "checkpoint": ckpt.kind,
                            "success_rate": report.success_rate, "train_seconds": ckpt.train_seconds,
                            "seconds_per_chunk": report.seconds_per_chunk, "nfe_per_chunk": _nfe(ckpt.policy),
                            "parameters": ckpt.policy.n_parameters(), "nonfinite_episodes": int(report.nonfinite.sum()),
                            "train_flops": ckpt.train_flops,
                            "flops_per_chunk": chunk_flops(ckpt.costs, _nfe(ckpt.policy))})
            if on_checkpoint is not None:
                on_checkpoint(method, seed, ckpt)
    return records


def _warm_up(methods: Sequence[str], demos, recipe: PolicyRecipe) -> None:
    """One short fit per method on the first demo episode, before anything is timed: the first fit
    of a process pays one-time imports (the optimizer's, the ODE solver's, about 2 s), which would
    otherwise land in the training seconds of the first checkpoint."""
    stop = int(demos.episode_ends[0])
    first = Demos({k: v[:stop] for k, v in demos.obs.items()}, demos.action[:stop], [stop])
    for method in methods:
        next(train_checkpoints(method, first, recipe.replace(epochs=1.0), [1.0], seed=0))


def summarize(records: Sequence[dict], last: int = 3, methods: Optional[Sequence[str]] = None) -> dict:
    """Per method: ``max`` (over checkpoints) and ``last`` (mean of the last ``last`` checkpoints),
    each computed per training seed and then given as mean ± SE over the seeds; ``curve`` (mean ±
    SE of the success rate at every checkpoint); latency (per seed, the mean over its checkpoints)
    and NFE per chunk; parameters; training FLOPs per checkpoint and sampling FLOPs per chunk
    (``None`` for records that lack them).

    Raises:
        ValueError: no records for a method, or seeds that were evaluated at different epochs.
    """
    methods = list(dict.fromkeys(r["method"] for r in records)) if methods is None else list(methods)
    out = {}
    for method in methods:
        mine = [r for r in records if r["method"] == method]
        if not mine:
            raise ValueError(f"no records of method {method!r}")
        seeds = sorted({r["seed"] for r in mine})
        per_seed = {s: sorted((r for r in mine if r["seed"] == s), key=lambda r: r["epochs"]) for s in seeds}
        grid = [r["epochs"] for r in per_seed[seeds[0]]]
        for s in seeds:
            if [r["epochs"] for r in per_seed[s]] != grid:
                raise ValueError(f"{method}: seed {s} was evaluated at other epochs than seed {seeds[0]}")
        rates = {s: [r["success_rate"] for r in per_seed[s]] for s in seeds}
        out[method] = {
            "seeds": seeds, "epochs": grid, "last_k": min(last, len(grid)),
            "max": mean_se([max(rates[s]) for s in seeds]),
            "last": mean_se([statistics.fmean(rates[s][-last:]) for s in seeds]),
            "curve": [{"epochs": e, **mean_se([rates[s][i] for s in seeds])} for i, e in enumerate(grid)],
            "seconds_per_chunk": mean_se([statistics.fmean(r["seconds_per_chunk"] for r in per_seed[s]) for s in seeds]),
            "nfe_per_chunk": statistics.fmean(r["nfe_per_chunk"] for r in mine),
            "parameters": mine[0]["parameters"],
            "checkpoint": mine[0]["checkpoint"],
            # compute (records written before it was recorded lack it): training FLOPs per checkpoint
            # (mean over seeds: LFM's pushforward steps may differ by seed) and sampling FLOPs per chunk
            "train_flops": None if any(r.get("train_flops") is None for r in mine) else
            [statistics.fmean(per_seed[s][i]["train_flops"] for s in seeds) for i in range(len(grid))],
            "flops_per_chunk": None if any(r.get("flops_per_chunk") is None for r in mine) else
            statistics.fmean(r["flops_per_chunk"] for r in mine),
        }
    return out
