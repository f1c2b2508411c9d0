r"""The plan of a distillation: which pieces of the teacher's path each student replaces.

The teacher (an N-block :class:`~torchcfm_local.LocalFlowMatching`; the global flow is the same
class with N = 1) maps noise to data by integrating its blocks N, ..., 1, each over block time
t: 0 -> 1. A :class:`Segment` ``(block, t_start, t_end)`` is one piece of that path; a *stage* is a
run of consecutive segments that one student replaces (paper Algorithm A.1: LFM with group size k
has stages of k whole blocks; the M-step global flow has M stages of 1/M of its single block).

:func:`step_coefficients` fixes the parametrization
:math:`S_\theta(x) = \alpha\, x + \beta\, f_\theta(t_0, x)` of a stage's student.
"""
from __future__ import annotations

import math
from typing import Iterable, NamedTuple, Optional, Sequence

from .._checks import is_int, positive_int

__all__ = ["Segment", "distill_plan", "check_stages", "step_coefficients"]


class Segment(NamedTuple):
    """The teacher's ODE of ``block`` integrated over block time ``t_start -> t_end`` (noise side at 0)."""

    block: int
    t_start: float
    t_end: float

    @property
    def length(self) -> float:
        """Block time covered, ``t_end - t_start`` (1 for a whole block)."""
        return self.t_end - self.t_start


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def distill_plan(n_blocks: int, k: int = 1, splits: int = 1) -> list[tuple[Segment, ...]]:
    """The stages of a distillation: ``N * splits / k`` tuples of ``k`` segments, in sampling order.

    The teacher path is blocks ``N, ..., 1``; block ``n`` is cut into ``splits`` equal segments
    ``(n, j/splits, (j+1)/splits)``; consecutive runs of ``k`` segments form the stages, so stage 1
    takes ``z ~ N(0, I)`` and the last stage returns data.

    Examples::

        distill_plan(4, k=2)        # [((4,0,1), (3,0,1)), ((2,0,1), (1,0,1))]: 2 students
        distill_plan(1, splits=4)   # [((1,0,.25),), ((1,.25,.5),), ((1,.5,.75),), ((1,.75,1),)]

    Raises:
        ValueError: ``n_blocks``, ``k`` or ``splits`` not a positive int, or ``k`` not dividing
            ``N * splits`` (the message lists the valid ``k``).
    """
    positive_int(n_blocks, "n_blocks")
    positive_int(splits, "splits")
    total = n_blocks * splits
    what = (f"the number of blocks N = {n_blocks}" if splits == 1
            else f"N * splits = {n_blocks} * {splits} = {total} segments")
    if not is_int(k) or k < 1 or total % k:
        raise ValueError(f"k must be a positive int dividing {what}; valid k: {_divisors(total)}, got {k!r}")
    path = [Segment(n, j / splits, (j + 1) / splits) for n in range(n_blocks, 0, -1) for j in range(splits)]
    return [tuple(path[i : i + k]) for i in range(0, total, k)]


def _as_chains(stages: Iterable) -> list[tuple[Segment, ...]]:
    """``stages`` as a non-empty list of non-empty tuples of :class:`Segment` (types only)."""
    out = []
    try:
        for s, chain in enumerate(stages, 1):
            chain = tuple(Segment(int(b), float(a), float(e)) for b, a, e in chain)
            if not chain:
                raise ValueError(f"stage {s} has no segments")
            out.append(chain)
    except (TypeError, ValueError) as err:
        raise ValueError(f"stages must be a list of non-empty lists of (block, t_start, t_end): {err}") from None
    if not out:
        raise ValueError("stages must hold at least one stage")
    return out


def _joins(prev: Optional[Segment], seg: Segment) -> bool:
    """Whether ``seg`` starts where ``prev`` ends on the teacher path (blocks N..1, t = 0 -> 1 each)."""
    return (prev is None or (seg.block == prev.block and seg.t_start == prev.t_end)
            or (seg.block == prev.block - 1 and prev.t_end == 1.0 and seg.t_start == 0.0))


def check_stages(stages, n_blocks: int) -> list[tuple[Segment, ...]]:
    """Validate user-given stages: non-empty chains of in-range segments that join up and cover
    the whole teacher path, from block N at t = 0 to block 1 at t = 1.

    Returns:
        The stages as tuples of :class:`Segment`, in sampling order.

    Raises:
        ValueError: naming the stage and segment that is out of range or does not join.
    """
    out = _as_chains(stages)
    prev = None
    for s, chain in enumerate(out, 1):
        for seg in chain:
            if not 1 <= seg.block <= n_blocks or not 0.0 <= seg.t_start < seg.t_end <= 1.0:
                raise ValueError(
                    f"stage {s}: segment {tuple(seg)} must have block in 1..{n_blocks} and 0 <= t_start < t_end <= 1"
                )
            if not _joins(prev, seg):
                raise ValueError(
                    f"stage {s}: segment {tuple(seg)} does not start where {tuple(prev)} ends; the teacher path runs "
                    "blocks N..1, each over t = 0 -> 1"
                )
            prev = seg
    first, last = out[0][0], out[-1][-1]
    if (first.block, first.t_start) != (n_blocks, 0.0) or (last.block, last.t_end) != (1, 1.0):
        raise ValueError(
            f"stages must cover the whole teacher path, from block {n_blocks} at t = 0 (the noise) to block 1 at "
            f"t = 1 (the data); got {tuple(first)} ... {tuple(last)}"
        )
    return out


def _path_kind(matcher) -> Optional[str]:
    """``"trig"`` or ``"linear"`` for torchcfm matchers whose mean path is known, else ``None``."""
    from torchcfm.conditional_flow_matching import (
        ConditionalFlowMatcher,
        VariancePreservingConditionalFlowMatcher,
    )

    if isinstance(matcher, VariancePreservingConditionalFlowMatcher):
        return "trig"
    if isinstance(matcher, ConditionalFlowMatcher):
        return "linear"
    return None


def step_coefficients(matcher, chain: Sequence[Segment]) -> tuple[float, float]:
    r"""``(alpha, beta)`` of the student of ``chain`` so that, with the teacher's velocity as ``f``,
    the student is one exact-path ("DDIM-style") step of the teacher's interpolant.

    For a stage inside one block, from ``t_0`` to ``t_1`` (conditional path :math:`x_t = a_t x_0 + b_t x_1`):

    * linear path (``ConditionalFlowMatcher`` and subclasses, :math:`x_t = (1-t)x_0 + t x_1`):
      :math:`S(x) = x + (t_1 - t_0)\, v(t_0, x)`, i.e. ``(1, t1 - t0)`` (one Euler step);
    * trigonometric path (``VariancePreservingConditionalFlowMatcher``,
      :math:`x_t = \cos(\tfrac{\pi t}{2}) x_0 + \sin(\tfrac{\pi t}{2}) x_1`): the path is a rotation in
      the plane of :math:`(x_t, \tfrac{2}{\pi} u_t)`, so with :math:`\theta = \tfrac{\pi}{2}(t_1 - t_0)`,
      :math:`S(x) = \cos\theta\, x + \tfrac{2}{\pi}\sin\theta\, v(t_0, x)` (a whole block: ``(0, 2/pi)``,
      the teacher's prediction of the data side :math:`E[x_1 | x_0]`).

    Stages spanning several blocks, or other matchers: ``(1, L)`` with ``L`` the summed segment
    lengths (a residual map). These coefficients only fix the parametrization; the student is
    trained to the teacher's map either way.
    """
    kind = _path_kind(matcher)
    one_block = all(seg.block == chain[0].block for seg in chain)
    length = sum(seg.length for seg in chain)
    if one_block and kind == "trig":
        theta = 0.5 * math.pi * length
        return (0.0 if length == 1.0 else math.cos(theta)), 2.0 / math.pi * math.sin(theta)
    return 1.0, length
