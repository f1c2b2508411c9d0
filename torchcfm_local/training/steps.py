r"""Pushforward steps chosen by measured error (``fit(pushforward_tol=...)``).

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
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..solvers import ODEOptions

__all__ = ["StepChoice", "choose_steps", "rk4", "ou_noise_scale", "CANDIDATE_STEPS", "REFERENCE_STEPS", "PROBE_ROWS"]

#: RK4 step counts tried, smallest first.
CANDIDATE_STEPS = (1, 2, 4, 8, 16)
#: RK4 steps of the reference solution the candidates are compared with (RK4's error falls 16-fold
#: per doubling, so the reference is far more accurate than the last candidate).
REFERENCE_STEPS = 32
#: Pool rows the error is measured on (evenly spaced through the pool, so every rank picks the same).
PROBE_ROWS = 256


def rk4(steps: int) -> ODEOptions:
    """Fixed-step RK4 with ``steps`` steps."""
    return ODEOptions(solver="rk4", steps=int(steps))


def ou_noise_scale(h: float) -> float:
    """Standard deviation of the noise one OU step of length ``h`` adds: ``sqrt(1 - e^{-2h})`` (1 for ``h = inf``)."""
    return 1.0 if math.isinf(h) else math.sqrt(-math.expm1(-2.0 * h))


@dataclass
class StepChoice:
    """The RK4 step count picked for one block's pushforward.

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
    start, total = time.perf_counter(), rows.shape[0]
    idx = torch.linspace(0, total - 1, min(PROBE_ROWS, total)).round().long().unique()
    probe = torch.as_tensor(rows[idx]).to(model.dtype)
    probe_cond = None if cond is None else cond[idx]
    scale = ou_noise_scale(model.schedule.step(n))

    def push(steps: int) -> torch.Tensor:
        return model.transport(probe, [n], False, rk4(steps), chunk_size, cond=probe_cond)[0]

    reference = push(REFERENCE_STEPS)
    tried = {}
    for steps in CANDIDATE_STEPS:
        tried[steps] = _rms(push(steps), reference) / scale
        if tried[steps] <= tol:
            return StepChoice(steps, tried[steps], scale, tried, time.perf_counter() - start)
    # none passed: use the reference itself; its distance to the last candidate bounds its error from above
    return StepChoice(REFERENCE_STEPS, tried[CANDIDATE_STEPS[-1]], scale, tried, time.perf_counter() - start)
