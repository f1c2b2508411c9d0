"""Training pairs of a distillation: the teacher's states at every stage boundary, chained from z.

Stage 1's input is ``z ~ N(0, I)``; stage s+1's input is the teacher's output of stage s, so the
students see exactly the states the teacher visits on its own path (paper Algorithm A.1).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .._checks import positive_int
from ..solvers import ODEOptions, integrate
from .plan import Segment

__all__ = ["teacher_pairs", "run_segment", "segment_options"]


def segment_options(ode: ODEOptions, seg: Segment) -> ODEOptions:
    """Fixed-step solvers keep their step size: ``ceil(steps * length)`` steps on a partial segment,
    so cutting a block into equal segments reproduces the whole-block solve step for step."""
    if ode.adaptive or seg.length == 1.0:
        return ode
    return ode.with_(steps=max(1, math.ceil(ode.steps * seg.length - 1e-9)))


@torch.no_grad()
def run_segment(teacher, x: torch.Tensor, seg: Segment, ode: ODEOptions) -> tuple[torch.Tensor, int]:
    """The teacher's ODE of ``seg`` applied to ``x`` ``(B, *shape)`` (on the teacher's device and dtype).

    Every segment integrates a fresh ``teacher.field(block).bind()`` view over ``[t_start, t_end]``
    (so the count of evaluations belongs to this call alone) in the blocks' space: a teacher's data
    standardization is not undone here but by the sampler after its last stage.

    Returns:
        ``(y, nfe)``: ``y`` of shape ``(B, *shape)`` and the network evaluations per sample.
    """
    field = teacher.field(seg.block).bind()
    y = integrate(field, x, seg.t_start, seg.t_end, segment_options(ode, seg))
    return y, field.nfe


@torch.no_grad()
def teacher_pairs(teacher, stages: Sequence[Sequence[Segment]], z: torch.Tensor, *, ode=None,
                  chunk_size: int = 8192, progress: bool = False) -> tuple[torch.Tensor, list[float]]:
    """The teacher's states at every stage boundary, chained from ``z``.

    Args:
        teacher: a trained :class:`~torchcfm_local.LocalFlowMatching`.
        stages: from :func:`~torchcfm_local.distillation.distill_plan` (sampling order).
        z: ``(B, *shape)`` stage 1 inputs (N(0, I) samples).
        ode: teacher ODE options (default: the teacher's).
        chunk_size: samples integrated at once.
        progress: show a progress bar over the chunks.

    Returns:
        ``(states, nfe)``: ``states`` of shape ``(S + 1, B, *shape)`` on the CPU with
        ``states[0] = z`` and ``states[s]`` the teacher's output of stage s (so stage s's pairs are
        ``(states[s-1], states[s])``); ``nfe[s-1]`` the teacher NFE per sample of stage s.

    Raises:
        FloatingPointError: the teacher produced NaN/Inf.
    """
    from tqdm.auto import tqdm

    ode = ODEOptions.coerce(ode, teacher.ode)
    chunk_size = positive_int(chunk_size, "chunk_size")
    states = torch.empty((len(stages) + 1, *z.shape), dtype=teacher.dtype)
    states[0] = z
    nfe = [0.0] * len(stages)
    n_chunks = math.ceil(z.shape[0] / chunk_size)
    for i in tqdm(range(0, z.shape[0], chunk_size), desc="teacher pairs", disable=not progress, leave=False):
        y = z[i : i + chunk_size].to(teacher.device, teacher.dtype)
        for s, chain in enumerate(stages, 1):
            for seg in chain:
                y, used = run_segment(teacher, y, seg, ode)
                nfe[s - 1] += used / n_chunks
            states[s, i : i + chunk_size] = y.cpu()
    if not torch.isfinite(states).all():
        raise FloatingPointError("the teacher produced NaN/Inf while generating pairs; check the teacher and its ODE options")
    return states, nfe
