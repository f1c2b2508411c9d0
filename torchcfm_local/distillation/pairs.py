"""Training pairs of a distillation: the teacher's states at every stage boundary, chained from z.

Stage 1's input is ``z ~ N(0, I)``; stage s+1's input is the teacher's output of stage s, so the
students see exactly the states the teacher visits on its own path (paper Algorithm A.1). Reflow
(:mod:`.reflow`) reads the same chain, one stage per block, as its fixed couplings.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from .._checks import positive_int
from ..inputs import cond_input
from ..solvers import ODEOptions, integrate
from .plan import Segment

__all__ = ["teacher_pairs", "run_segment", "segment_options"]

_NONFINITE = "the teacher produced NaN/Inf while generating pairs; check the teacher and its ODE options"


def segment_options(ode: ODEOptions, seg: Segment) -> ODEOptions:
    """Fixed-step solvers keep their step size: ``ceil(steps * length)`` steps on a partial segment,
    so cutting a block into equal segments reproduces the whole-block solve step for step."""
    if ode.adaptive or seg.length == 1.0:
        return ode
    return ode.with_(steps=max(1, math.ceil(ode.steps * seg.length - 1e-9)))


@torch.no_grad()
def run_segment(teacher, x: torch.Tensor, seg: Segment, ode: ODEOptions,
                cond: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
    """The teacher's ODE of ``seg`` applied to ``x`` ``(B, *shape)`` (on the teacher's device and dtype).

    Every segment integrates a fresh ``teacher.field(block).bind(cond)`` view over ``[t_start, t_end]``
    (so the count of evaluations belongs to this call alone) in the blocks' space: a teacher's data
    standardization is not undone here but by the sampler after its last stage. ``cond``: the
    networks' conditioning input ``(B, cond_dim + 1)`` (:func:`~torchcfm_local.inputs.cond_input`)
    of a conditional teacher.

    Returns:
        ``(y, nfe)``: ``y`` of shape ``(B, *shape)`` and the network evaluations per sample.

    Raises:
        FloatingPointError: an adaptive solve met a NaN/Inf velocity.
    """
    field = teacher.field(seg.block).bind(cond)
    y = integrate(field, x, seg.t_start, seg.t_end, segment_options(ode.for_block(seg.block, teacher.n_blocks), seg))
    return y, field.nfe


@torch.no_grad()
def teacher_pairs(teacher, stages: Sequence[Sequence[Segment]], z: torch.Tensor, *, ode=None,
                  chunk_size: int = 8192, progress: bool = False, cond=None) -> tuple[torch.Tensor, list[float]]:
    """The teacher's states at every stage boundary, chained from ``z``.

    Args:
        teacher: a trained :class:`~torchcfm_local.LocalFlowMatching`.
        stages: from :func:`~torchcfm_local.distillation.distill_plan` (sampling order).
        z: ``(B, *shape)`` stage 1 inputs (N(0, I) samples).
        ode: teacher ODE options (default: the teacher's).
        chunk_size: samples integrated at once.
        progress: show a progress bar over the chunks.
        cond: ``(B, cond_dim)`` conditions of the rows of ``z`` (conditional teachers only; required there).

    Returns:
        ``(states, nfe)``: ``states`` of shape ``(S + 1, B, *shape)`` on the CPU with
        ``states[0] = z`` and ``states[s]`` the teacher's output of stage s (so stage s's pairs are
        ``(states[s-1], states[s])``); ``nfe[s-1]`` the teacher NFE per sample of stage s.

    Raises:
        FloatingPointError: the teacher produced NaN/Inf.
        ValueError: ``cond`` missing for a conditional teacher, given to an unconditional one, or misshapen.
    """
    from tqdm.auto import tqdm

    if cond is not None or getattr(teacher, "cond_dim", None) is not None:
        cond = teacher.check_cond(cond, z.shape[0])
    ode = ODEOptions.coerce(ode, teacher.ode)
    chunk_size = positive_int(chunk_size, "chunk_size")
    states = torch.empty((len(stages) + 1, *z.shape), dtype=teacher.dtype)
    states[0] = z
    nfe = [0.0] * len(stages)
    n_chunks = math.ceil(z.shape[0] / chunk_size)
    for i in tqdm(range(0, z.shape[0], chunk_size), desc="teacher pairs", disable=not progress, leave=False):
        y = z[i : i + chunk_size].to(teacher.device, teacher.dtype)
        c = None if cond is None else cond_input(cond[i : i + chunk_size].to(teacher.device, teacher.dtype))
        for s, chain in enumerate(stages, 1):
            for seg in chain:
                try:
                    y, used = run_segment(teacher, y, seg, ode, c)
                except FloatingPointError:
                    raise FloatingPointError(_NONFINITE) from None
                nfe[s - 1] += used / n_chunks
            states[s, i : i + chunk_size] = y.cpu()
    if not torch.isfinite(states).all():
        raise FloatingPointError(_NONFINITE)
    return states, nfe
