r"""Steps chosen by measured error: the pushforward's (``fit(pushforward_tol=...)``) and sampling's.

After block n is trained, its pool is pushed through it (data -> noise) with RK4. How many steps
that needs depends on the block: a short block on the linear path is nearly straight, a curved
(trigonometric) or long block is not. :func:`choose_steps` measures it instead of fixing a count:
on a fixed probe of pool rows it integrates the block with ``k = 1, 2, 4, ...`` RK4 steps and
compares each result with a reference of :data:`REFERENCE_STEPS` steps (an estimate against
``2k`` steps, Richardson style, was tried: it overestimated the error of few steps about
threefold on a test model, where RK4 is not yet in its asymptotic regime). It keeps the smallest
``k`` whose root-mean-square error per coordinate is at most ``tol`` times the block's OU noise
scale :math:`\sigma_n = \sqrt{1 - e^{-2 h_n}}` (1 for the free block).

Why relative to :math:`\sigma_n`: block n + 1 is trained on the pushed pool, whose law is the data
side of block n + 1 smoothed by OU noise of that scale; shifting a Gaussian of scale
:math:`\sigma` by :math:`\delta` costs :math:`\delta^2 / (2 \sigma^2)` nats of KL divergence per
coordinate, so ``tol = 0.01`` bounds the pool's error at about :math:`5 \cdot 10^{-5}` nats per
coordinate in that sense, far below seed-to-seed spread.

:func:`choose_sampling_steps` applies the same measurement to sampling (noise -> data): each block
on the inputs it meets when decoding, the steps per block returned as ``ODEOptions(block_steps=...)``.
There the error feeds the next block down (or is the sample, for block 1) rather than a training
pool, so its tolerance was set by what keeps the policies' success, not by the argument above.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from .._checks import positive_float
from ..solvers import ODEOptions

__all__ = ["StepChoice", "choose_steps", "choose_sampling_steps", "rk4", "ou_noise_scale", "CANDIDATE_STEPS",
           "REFERENCE_STEPS", "PROBE_ROWS", "SAMPLING_TOL"]

#: RK4 step counts tried, smallest first.
CANDIDATE_STEPS = (1, 2, 4, 8, 16)
#: RK4 steps of the reference solution the candidates are compared with (RK4's error falls 16-fold
#: per doubling, so the reference is far more accurate than the last candidate).
REFERENCE_STEPS = 32
#: Pool rows the error is measured on (evenly spaced through the pool, so every rank picks the same).
PROBE_ROWS = 256
#: Default tolerance of :func:`choose_sampling_steps` (relative to each block's OU noise scale): the
#: largest one tried that kept the policies' success, LFM and global flow, on point and Lift
#: (``benchmarks/results/policy_nfe_sampling_steps/``; 0.1 cost the global flow on Lift).
SAMPLING_TOL = 0.03


def rk4(steps: int) -> ODEOptions:
    """Fixed-step RK4 with ``steps`` steps."""
    return ODEOptions(solver="rk4", steps=int(steps))


def ou_noise_scale(h: float) -> float:
    """Standard deviation of the noise one OU step of length ``h`` adds: ``sqrt(1 - e^{-2h})`` (1 for ``h = inf``)."""
    return 1.0 if math.isinf(h) else math.sqrt(-math.expm1(-2.0 * h))


@dataclass
class StepChoice:
    """The RK4 step count picked for one block's pushforward (or, by :func:`choose_sampling_steps`,
    for sampling it).

    Attributes:
        steps: the chosen count.
        error: estimated RMS error per coordinate of the pushforward with ``steps`` steps,
            relative to the block's OU noise scale, against the reference (for the reference
            itself: its difference to the largest candidate, an upper estimate).
        noise_scale: the block's OU noise scale :math:`\\sigma_n`.
        tried: relative error of every count tried, ``{steps: error}``.
        seconds: wall time of the measurement.
    """

    steps: int
    error: float
    noise_scale: float
    tried: dict = field(default_factory=dict)
    seconds: float = 0.0


def _rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean().sqrt())


def choose_steps(model, n: int, rows, cond: Optional[torch.Tensor], tol: float, chunk_size: int) -> StepChoice:
    """The smallest RK4 step count in :data:`CANDIDATE_STEPS` whose pushforward of block ``n`` has a
    relative RMS error ``<= tol``; :data:`REFERENCE_STEPS` if none has.

    Args:
        model: the :class:`~torchcfm_local.LocalFlowMatching` whose block ``n`` is trained.
        rows: block n's data side, ``(P, *shape)`` tensor or :class:`~torchcfm_local.MemmapPool`
            (in the blocks' space, as in the training pool).
        cond: ``(P, cond_dim)`` conditions of the rows, or ``None``.
        tol: tolerance relative to the block's OU noise scale (> 0).
        chunk_size: rows integrated at once.
    """
    total = rows.shape[0]
    idx = _probe_index(total)
    probe = torch.as_tensor(rows[idx]).to(model.dtype)
    probe_cond = None if cond is None else cond[idx]

    def push(steps: int) -> torch.Tensor:
        return model.transport(probe, [n], False, rk4(steps), chunk_size, cond=probe_cond)[0]

    return _smallest_steps(push, ou_noise_scale(model.schedule.step(n)), tol)[0]


def choose_sampling_steps(model, tol: float = SAMPLING_TOL, cond: Optional[torch.Tensor] = None,
                          seed: int = 0) -> tuple[ODEOptions, list[StepChoice]]:
    """RK4 steps per block for sampling (noise -> data), each picked as :func:`choose_steps` picks
    the pushforward's: the smallest count in :data:`CANDIDATE_STEPS` whose result differs from a
    :data:`REFERENCE_STEPS`-step solve by an RMS of at most ``tol`` times the block's OU noise scale.

    The probe: :data:`PROBE_ROWS` noise rows (seeded by ``seed``) decoded block by block from the
    free block down, each block's input being the reference output of the block above, so every
    block is measured on the inputs it meets when sampling. Errors are per block, in the blocks'
    space (a fitted standardizer is not undone).

    Args:
        model: a trained :class:`~torchcfm_local.LocalFlowMatching`.
        tol: tolerance relative to each block's OU noise scale (> 0).
        cond: conditions ``(P, cond_dim)`` of a conditional model (e.g. the training conditions);
            :data:`PROBE_ROWS` of them, evenly spaced, condition the probe. Required for a
            conditional model, refused for an unconditional one.
        seed: seed of the probe's noise.

    Returns:
        ``(ode, choices)``: RK4 :class:`~torchcfm_local.solvers.ODEOptions` with ``block_steps``
        (block 1 first; pass it as ``decode(..., ode=ode)`` or set ``model.ode``), and one
        :class:`StepChoice` per block, block 1 first.
    """
    positive_float(tol, "tol")
    model._require_trained("choose sampling steps")
    if (cond is None) != (model.cond_dim is None):
        raise ValueError("cond must be given for a conditional model and only for one "
                         f"(this model's cond_dim: {model.cond_dim})")
    probe_cond = None if cond is None else cond[_probe_index(cond.shape[0])].to(model.dtype)
    rows = PROBE_ROWS if cond is None else probe_cond.shape[0]
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((rows, *model.shape), generator=generator, dtype=model.dtype)
    choices = {}
    for n in range(model.n_blocks, 0, -1):
        def push(steps: int, x=x, n=n) -> torch.Tensor:
            return model.transport(x, [n], True, rk4(steps), rows, cond=probe_cond)[0]

        choices[n], x = _smallest_steps(push, ou_noise_scale(model.schedule.step(n)), tol)
    ordered = [choices[n] for n in range(1, model.n_blocks + 1)]
    steps = tuple(c.steps for c in ordered)
    return ODEOptions(solver="rk4", steps=max(steps), block_steps=steps), ordered


def _probe_index(total: int) -> torch.Tensor:
    """:data:`PROBE_ROWS` row indices evenly spaced through ``total`` rows (all of them if fewer)."""
    return torch.linspace(0, total - 1, min(PROBE_ROWS, total)).round().long().unique()


def _smallest_steps(push, scale: float, tol: float) -> tuple[StepChoice, torch.Tensor]:
    """The smallest count in :data:`CANDIDATE_STEPS` for which ``push(steps)`` is within ``tol *
    scale`` (RMS) of ``push(REFERENCE_STEPS)``, as a :class:`StepChoice`, and that reference."""
    start = time.perf_counter()
    reference = push(REFERENCE_STEPS)
    tried = {}
    for steps in CANDIDATE_STEPS:
        tried[steps] = _rms(push(steps), reference) / scale
        if tried[steps] <= tol:
            return StepChoice(steps, tried[steps], scale, tried, time.perf_counter() - start), reference
    # none passed: use the reference itself; its distance to the last candidate bounds its error from above
    return StepChoice(REFERENCE_STEPS, tried[CANDIDATE_STEPS[-1]], scale, tried, time.perf_counter() - start), reference
