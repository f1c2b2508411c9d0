r"""Distillation of a trained flow into a few one-step maps (paper Algorithm A.1).

A trained teacher (an N-block :class:`~torchcfm_local.LocalFlowMatching`, or the global flow,
which is the same class with ``OUSchedule.global_flow()``, N = 1) maps noise to data by
integrating its blocks N, ..., 1, each over block time t: 0 -> 1. Distillation replaces
consecutive pieces of that path by one-step networks (students):

* A **segment** ``(block, t_start, t_end)`` is the teacher's ODE of ``block`` integrated from
  ``t_start`` to ``t_end`` (``0 <= t_start < t_end <= 1``, noise side at 0).
* The teacher's whole noise -> data path, cut into ``splits`` equal time segments per block, is the
  sequence of ``N * splits`` segments (highest block first). A **stage** is ``k`` consecutive
  segments; stage ``s = 1..S`` (``S = N * splits / k``) is run ``s``-th when sampling, so stage 1
  takes ``z ~ N(0, I)`` and stage S returns data.
* LFM with group size k: ``splits = 1``, stage = k whole blocks (N/k students, N/k NFE).
  The global flow with M steps: N = 1, ``splits = M``, ``k = 1``; stage i maps the teacher state
  at ``t_{i-1} = (i-1)/M`` to ``t_i = i/M``. Both are the same mechanism (:func:`distill_plan`).

For every stage the teacher generates pairs ``(x_in, x_out)`` *chained from the same z*:
``x_in`` of stage 1 is z; ``x_in`` of stage s+1 is the teacher's ``x_out`` of stage s. A student

.. math::
    S_\theta(x) = \alpha\, x + \beta\, f_\theta(t_0, x)

(:class:`OneStepMap`; ``t_0`` the stage's first ``t_start``, ``f_\theta`` any velocity-shaped
network, one evaluation; ``alpha, beta`` fixed by :func:`step_coefficients` so that ``f_\theta``
equal to the teacher's velocity makes ``S`` one exact-path step of the teacher's interpolant) is
fitted by the mean squared error on the outputs,

.. math::
    \mathcal{L}(\theta) = \mathbb{E}_{(x_{in}, x_{out})}\, \tfrac{1}{D}\,\| S_\theta(x_{in}) - x_{out} \|^2,

over a fixed pair set (the "distillation" step of rectified flow, Liu et al. 2022, which Algorithm
A.1 of the LFM paper follows). With ``warm_start`` and a student of the teacher block's
architecture, ``f_\theta`` starts from the block's velocity network, so the untrained student is
that one-step approximation of the teacher (a good start; training then removes its error).

Modules, one job each: :mod:`.plan` (segments, stages, step coefficients), :mod:`.students`
(the one-step maps), :mod:`.pairs` (teacher pairs), :mod:`.sampler` (the distilled sampler, its
reports and checkpoint file), :mod:`.orchestrator` (:func:`distill`), :mod:`.reflow` (:func:`reflow`:
the teacher retrained on its own couplings along straight lines, easier to integrate and to
distill). Sampling presets for every sampler live in :mod:`torchcfm_local.sampling`.
"""
from .orchestrator import distill
from .pairs import teacher_pairs
from .plan import Segment, distill_plan, step_coefficients
from .reflow import ReflowReport, reflow, reflow_policy
from .sampler import DistilledSampler, DistillReport, StageReport
from .students import OneStepMap, default_student

__all__ = [
    "Segment",
    "distill_plan",
    "step_coefficients",
    "OneStepMap",
    "default_student",
    "teacher_pairs",
    "DistilledSampler",
    "StageReport",
    "DistillReport",
    "distill",
    "reflow",
    "reflow_policy",
    "ReflowReport",
]
