r"""Distillation of a trained flow into a few one-step maps (paper Algorithm A.1), and sampling presets.

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

Sampling presets (:data:`SAMPLING_PRESETS`, :func:`preset_options`, :func:`sample`) give every
sampler a ``"fast"`` and a ``"quality"`` setting; every sampler reports its NFE.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_save, header, safe_load
from .networks import MLP, NETWORKS, network_spec
from .reports import IntegrationStats, tail_mean
from .solvers import ODEOptions, VelocityField, integrate

__all__ = [
    "Segment",
    "distill_plan",
    "OneStepMap",
    "step_coefficients",
    "DistilledSampler",
    "StageReport",
    "DistillReport",
    "distill",
    "teacher_pairs",
    "SAMPLING_PRESETS",
    "preset_options",
    "sample",
]

_KIND = "distilled"


# ---------------------------------------------------------------------------------------------- plan
class Segment(NamedTuple):
    """The teacher's ODE of ``block`` integrated over block time ``t_start -> t_end`` (noise side at 0)."""

    block: int
    t_start: float
    t_end: float

    @property
    def length(self) -> float:
        return self.t_end - self.t_start


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def distill_plan(n_blocks: int, k: int = 1, splits: int = 1) -> list[tuple[Segment, ...]]:
    """The stages of a distillation: ``N * splits / k`` tuples of ``k`` segments, in sampling order.

    The teacher path is blocks ``N, ..., 1``; block ``n`` is cut into ``splits`` equal segments
    ``(n, j/splits, (j+1)/splits)``; consecutive runs of ``k`` segments form the stages.

    Examples::

        distill_plan(4, k=2)        # [((4,0,1), (3,0,1)), ((2,0,1), (1,0,1))]: 2 students
        distill_plan(1, splits=4)   # [((1,0,.25),), ((1,.25,.5),), ((1,.5,.75),), ((1,.75,1),)]

    Raises:
        ValueError: ``k`` or ``splits`` not a positive int, or ``k`` not dividing ``N * splits``
            (the message lists the valid ``k``).
    """
    for name, value in (("n_blocks", n_blocks), ("splits", splits)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    total = n_blocks * splits
    what = f"the number of blocks N = {n_blocks}" if splits == 1 else f"N * splits = {n_blocks} * {splits} = {total} segments"
    if isinstance(k, bool) or not isinstance(k, int) or k < 1 or total % k:
        raise ValueError(f"k must be a positive int dividing {what}; valid k: {_divisors(total)}, got {k!r}")
    path = [Segment(n, j / splits, (j + 1) / splits) for n in range(n_blocks, 0, -1) for j in range(splits)]
    return [tuple(path[i : i + k]) for i in range(0, total, k)]


def _check_stages(stages, n_blocks: int) -> list[tuple[Segment, ...]]:
    """Validate user-given stages: non-empty chains of in-range segments that join up."""
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
    prev = None
    for s, chain in enumerate(out, 1):
        for seg in chain:
            if not 1 <= seg.block <= n_blocks or not 0.0 <= seg.t_start < seg.t_end <= 1.0:
                raise ValueError(
                    f"stage {s}: segment {tuple(seg)} must have block in 1..{n_blocks} and 0 <= t_start < t_end <= 1"
                )
            joins = prev is None or (seg.block == prev.block and seg.t_start == prev.t_end) or (
                seg.block == prev.block - 1 and prev.t_end == 1.0 and seg.t_start == 0.0)
            if not joins:
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


# ---------------------------------------------------------------------------------------------- student
class OneStepMap(nn.Module):
    r"""One student: :math:`S(x) = \alpha\, x + \beta\, f(t_0, x)`, one network evaluation.

    Args:
        net: a velocity-shaped network, called through :class:`VelocityField` (``net(t, x)`` with
            ``t`` of shape ``(B,)``, or torchcfm's ``net(cat([x, t[:, None]]))``).
        t0: the fixed time fed to ``net`` (the stage's first ``t_start``).
        alpha, beta: the fixed coefficients (see :func:`step_coefficients`).

    ``forward(x)``: ``x`` of shape ``(B, *shape)`` -> same shape. ``self.field.nfe`` counts calls.
    """

    def __init__(self, net: nn.Module, t0: float = 0.0, alpha: float = 1.0, beta: float = 1.0):
        super().__init__()
        self.field = VelocityField(net)
        self.t0 = float(t0)
        self.alpha = float(alpha)
        self.beta = float(beta)

    @property
    def net(self) -> nn.Module:
        return self.field.net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = self.field(torch.tensor(self.t0), x)
        return v * self.beta if self.alpha == 0.0 else self.alpha * x + self.beta * v

    def extra_repr(self) -> str:
        return f"t0={self.t0:g}, alpha={self.alpha:.6g}, beta={self.beta:.6g}"


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
      :math:`x_t = \cos(	frac{\pi t}{2}) x_0 + \sin(	frac{\pi t}{2}) x_1`): the path is a rotation in
      the plane of :math:`(x_t, 	frac{2}{\pi} u_t)`, so with :math:`	heta = 	frac{\pi}{2}(t_1 - t_0)`,
      :math:`S(x) = \cos	heta\, x + 	frac{2}{\pi}\sin	heta\, v(t_0, x)` (a whole block: ``(0, 2/pi)``,
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


def default_student(teacher_net: nn.Module, growth: float) -> nn.Module:
    r"""The default student network for a stage covering ``growth`` blocks' worth of time.

    For a teacher block that is a :class:`~torchcfm_local.MLP`: the same MLP with
    ``width' = round(width * sqrt(max(1, growth)))``. The parameter count of a deep MLP grows like
    ``width^2``, so a student replacing k whole blocks has about k blocks' parameters; a student of
    one block (or of a fraction of one block, as in the M-step global flow) keeps the block's size.
    Other networks are deep-copied (size kept); pass ``student_factory`` to grow them.
    """
    spec = network_spec(teacher_net)
    if spec is not None and spec["type"] == "MLP":
        cfg = dict(spec["config"])
        cfg["width"] = max(1, int(round(cfg["width"] * math.sqrt(max(1.0, growth)))))
        return MLP(**cfg)
    return copy.deepcopy(teacher_net)


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


# ---------------------------------------------------------------------------------------------- reports
@dataclass
class StageReport:
    """What happened while distilling one stage.

    Attributes:
        stage: stage number (1 = takes z).
        segments: the teacher segments the student replaces, ``(block, t_start, t_end)`` each.
        pairs: training pairs; ``val_pairs``: held-out pairs (same chained generation, other z).
        batches: optimizer steps; ``losses``: MSE of every batch.
        teacher_nfe: teacher network evaluations per sample path for this stage's pairs.
        warm_started: whether the student started from the teacher block's weights.
        init_mse, val_mse: held-out output MSE (per coordinate) before and after training.
        identity_mse: held-out ``mean |x_in - x_out|^2``, the MSE of doing nothing (a scale).
        student_params: parameters of the student network.
        train_seconds: wall time of the optimizer steps.
    """

    stage: int
    segments: list[tuple[int, float, float]]
    pairs: int
    val_pairs: int
    batches: int
    losses: list[float] = field(repr=False)
    teacher_nfe: float
    warm_started: bool
    init_mse: float
    val_mse: float
    identity_mse: float
    student_params: int
    train_seconds: float

    @property
    def final_loss(self) -> float:
        """Mean training loss over the last 10% of batches (at least one)."""
        return tail_mean(self.losses)


@dataclass
class DistillReport:
    """Per-stage records of one :func:`distill` call.

    Attributes:
        stages: one :class:`StageReport` per student, in sampling order.
        k, splits: the plan (``None`` when explicit ``stages`` were given).
        seed: the seed of pairs, batches and student initialisation.
        pair_seconds: wall time of generating all pairs with the teacher.
        total_seconds: wall time of the call.
        end_mse: held-out MSE between the students chained from z (the sampler) and the teacher's
            final output: the error that reaches the data side.
    """

    stages: list[StageReport]
    k: Optional[int]
    splits: Optional[int]
    seed: int
    pair_seconds: float
    total_seconds: float
    end_mse: float

    def to_dict(self) -> dict:
        out = asdict(self)
        for rec, st in zip(out["stages"], self.stages):
            rec["final_loss"] = st.final_loss
        return out

    def summary(self) -> str:
        """A markdown table, one row per stage."""
        rows = [
            "| stage | segments | pairs | batches | params | final loss | held-out MSE (init -> final) | identity MSE | train s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for st in self.stages:
            segs = " ".join(f"{b}[{a:g},{e:g}]" for b, a, e in st.segments)
            rows.append(
                f"| {st.stage} | {segs} | {st.pairs} | {st.batches} | {st.student_params} | {st.final_loss:.3g} "
                f"| {st.init_mse:.3g} -> {st.val_mse:.3g} | {st.identity_mse:.3g} | {st.train_seconds:.1f} |"
            )
        rows.append(f"\nEnd-to-end held-out MSE (students chained vs teacher): {self.end_mse:.3g}")
        return "\n".join(rows)


# ---------------------------------------------------------------------------------------------- sampler
def _as_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class DistilledSampler(nn.Module):
    """Noise -> data in ``S`` network evaluations: the students of :func:`distill`, run in order.

    Args:
        shape: sample shape (``teacher.shape``).
        students: ``S`` :class:`OneStepMap`, in sampling order.
        stages: the teacher segments each student replaces (same order), for the record.
        teacher_blocks: the teacher's number of blocks N.

    Attributes:
        report: the :class:`DistillReport` of the call that made it (``None`` after :meth:`load`).
        last_stats: :class:`IntegrationStats` of the last call, with ``blocks`` = stage numbers
            ``(1..S)`` and one network evaluation per stage.
    """

    def __init__(self, shape: Sequence[int], students: Sequence[OneStepMap], stages: Sequence[Sequence[Segment]],
                 teacher_blocks: int):
        super().__init__()
        if len(students) != len(stages) or not students:
            raise ValueError(f"need one student per stage, got {len(students)} students for {len(stages)} stages")
        self.shape = tuple(int(s) for s in shape)
        self.students = nn.ModuleList(students)
        self.stages = [tuple(Segment(*seg) for seg in chain) for chain in stages]
        self.teacher_blocks = int(teacher_blocks)
        self.report: Optional[DistillReport] = None
        self.last_stats: Optional[IntegrationStats] = None

    @property
    def nfe(self) -> int:
        """Network evaluations per sample: the number of students."""
        return len(self.students)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _check(self, z) -> torch.Tensor:
        if isinstance(z, np.ndarray):
            z = torch.from_numpy(z)
        if not isinstance(z, torch.Tensor) or not z.is_floating_point():
            raise TypeError(f"z must be a floating-point torch.Tensor, got {type(z).__name__}"
                            + (f" of dtype {z.dtype}" if isinstance(z, torch.Tensor) else ""))
        if tuple(z.shape[1:]) != self.shape or z.shape[0] < 1:
            raise ValueError(f"z must have shape (n, {', '.join(map(str, self.shape))}), got {tuple(z.shape)}")
        if not torch.isfinite(z).all():
            raise ValueError("z contains NaN or Inf")
        return z

    @torch.no_grad()
    def decode(self, z, *, stages: Optional[Sequence[int]] = None, chunk_size: Optional[int] = None,
               preset: Optional[str] = None) -> torch.Tensor:
        """Run the students on ``z`` (``(B, *shape)``), stage 1 first; returns ``(B, *shape)``.

        Args:
            z: stage 1's input (N(0, I) noise), or the input of the first of ``stages``.
            stages: run only these consecutive stage numbers (e.g. ``[2, 3]``); default all.
            chunk_size: samples per forward pass (bounds memory); default: all at once up to 2^20 values.
            preset: ``"fast"`` or ``"quality"``; both are the students' single pass (a one-step
                map has no accuracy knob), accepted so every sampler takes the same presets.
        """
        if preset is not None:
            _check_preset(preset)
        z = self._check(z)
        run = list(range(1, self.nfe + 1)) if stages is None else [int(s) for s in stages]
        if not run or run != list(range(run[0], run[0] + len(run))) or run[0] < 1 or run[-1] > self.nfe:
            raise ValueError(f"stages must be consecutive stage numbers in 1..{self.nfe}, got {stages!r}")
        dim = int(np.prod(self.shape))
        chunk_size = max(1, 2**20 // dim) if chunk_size is None else _as_positive_int(chunk_size, "chunk_size")
        start = time.perf_counter()
        was_training = self.training
        self.eval()
        out = torch.empty_like(z)
        try:
            for i in range(0, z.shape[0], chunk_size):
                y = z[i : i + chunk_size].to(self.device, self.dtype)
                for s in run:
                    y = self.students[s - 1](y)
                out[i : i + chunk_size] = y.to(out.device, out.dtype)
        finally:
            self.train(was_training)
        self.last_stats = IntegrationStats(tuple(run), (1.0,) * len(run), time.perf_counter() - start)
        return out

    def sample(self, n: int, *, generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None,
               preset: Optional[str] = None) -> torch.Tensor:
        """``n`` samples: ``z ~ N(0, I)`` (from ``generator``, a CPU generator, if given), then :meth:`decode`."""
        _as_positive_int(n, "n")
        z = torch.randn((n, *self.shape), generator=generator, dtype=self.dtype)
        return self.decode(z, chunk_size=chunk_size, preset=preset)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Differentiable pass through all students (no chunking, no checks); ``(B, *shape)``."""
        for student in self.students:
            z = student(z)
        return z

    # -------------------------------------------------------------- checkpoints
    def save(self, path: Union[str, Path]) -> None:
        """Write the sampler to ``path`` atomically (kind ``"distilled"``, tensors and plain data only)."""
        atomic_save({
            **header(_KIND),
            "shape": list(self.shape),
            "teacher_blocks": self.teacher_blocks,
            "stages": [[list(seg) for seg in chain] for chain in self.stages],
            "students": [
                {"net": network_spec(st.net), "t0": st.t0, "alpha": st.alpha, "beta": st.beta, "weights": st.net.state_dict()}
                for st in self.students
            ],
        }, path)

    @classmethod
    def load(cls, path: Union[str, Path], *, student_factory: Optional[Callable[[int, int], nn.Module]] = None,
             map_location="cpu") -> "DistilledSampler":
        """Read a sampler written by :meth:`save` (``weights_only=True``).

        Students built from :data:`torchcfm_local.networks.NETWORKS` are rebuilt from the file;
        for custom networks pass the ``student_factory(stage, k)`` used when distilling.

        Raises:
            FileNotFoundError: no file.
            CheckpointError (a ValueError): corrupt, foreign, another kind of file, missing fields,
                or weights that do not fit the rebuilt networks.
            ValueError: custom student networks and no ``student_factory``.
        """
        state = safe_load(path, _KIND, map_location)
        try:
            shape, stages, recs = state["shape"], state["stages"], state["students"]
            teacher_blocks = int(state["teacher_blocks"])
            stages = [tuple(Segment(int(b), float(a), float(e)) for b, a, e in chain) for chain in stages]
            if len(stages) != len(recs):
                raise ValueError(f"{len(stages)} stages but {len(recs)} students")
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path} is a torchcfm_local distilled file with missing or bad fields: {err}") from err
        students = []
        for s, (rec, chain) in enumerate(zip(recs, stages), 1):
            spec = rec.get("net")
            if student_factory is not None:
                net = student_factory(s, len(chain))
            elif spec is None:
                raise ValueError(f"{path}: stage {s} uses a custom student network; pass the student_factory used in distill()")
            elif spec.get("type") not in NETWORKS:
                raise CheckpointError(f"{path}: stage {s} names unknown network type {spec.get('type')!r}")
            else:
                net = NETWORKS[spec["type"]](**spec["config"])
            try:
                net.load_state_dict(rec["weights"])
            except (RuntimeError, KeyError) as err:
                raise CheckpointError(f"{path}: stage {s}'s weights do not fit its network: {err}") from err
            try:
                students.append(OneStepMap(net, float(rec["t0"]), float(rec["alpha"]), float(rec["beta"])))
            except (KeyError, TypeError, ValueError) as err:
                raise CheckpointError(f"{path}: stage {s} lacks its step coefficients: {err}") from err
        return cls(shape, students, stages, teacher_blocks)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, stages={self.nfe} (NFE {self.nfe}), teacher_blocks={self.teacher_blocks}"


# ---------------------------------------------------------------------------------------------- pairs
def _segment_options(ode: ODEOptions, seg: Segment) -> ODEOptions:
    """Fixed-step solvers keep their step size: ``ceil(steps * length)`` steps on a partial segment,
    so cutting a block into equal segments reproduces the whole-block solve step for step."""
    if ode.adaptive or seg.length == 1.0:
        return ode
    return ode.with_(steps=max(1, math.ceil(ode.steps * seg.length - 1e-9)))


@torch.no_grad()
def _run_segment(teacher, x: torch.Tensor, seg: Segment, ode: ODEOptions) -> tuple[torch.Tensor, int]:
    """Teacher segment on ``x`` (on the teacher's device/dtype); returns (result, NFE per sample)."""
    if seg.t_start == 0.0 and seg.t_end == 1.0:
        y = teacher.decode(x, blocks=[seg.block], ode=ode, chunk_size=x.shape[0])
        return y, int(round(teacher.last_stats.nfe))
    # A partial block: integrate the block's field over [t_start, t_end].
    fld = teacher.field(seg.block)
    fld.nfe = 0
    y = integrate(fld, x, seg.t_start, seg.t_end, _segment_options(ode, seg))
    return y, fld.nfe


@torch.no_grad()
def teacher_pairs(teacher, stages: Sequence[Sequence[Segment]], z: torch.Tensor, *, ode=None,
                  chunk_size: int = 8192, progress: bool = False) -> tuple[torch.Tensor, list[float]]:
    """The teacher's states at every stage boundary, chained from ``z``.

    Args:
        teacher: a trained :class:`~torchcfm_local.LocalFlowMatching`.
        stages: from :func:`distill_plan` (sampling order).
        z: ``(B, *shape)`` stage 1 inputs (N(0, I) samples).
        ode: teacher ODE options (default: the teacher's).
        chunk_size: samples integrated at once.

    Returns:
        ``(states, nfe)``: ``states`` of shape ``(S + 1, B, *shape)`` on the CPU with
        ``states[0] = z`` and ``states[s]`` the teacher's output of stage s (so stage s's pairs are
        ``(states[s-1], states[s])``); ``nfe[s-1]`` the teacher NFE per sample of stage s.
    """
    from tqdm.auto import tqdm

    ode = ODEOptions.coerce(ode, teacher.ode)
    chunk_size = _as_positive_int(chunk_size, "chunk_size")
    states = torch.empty((len(stages) + 1, *z.shape), dtype=teacher.dtype)
    states[0] = z
    nfe = [0.0] * len(stages)
    n_chunks = math.ceil(z.shape[0] / chunk_size)
    for i in tqdm(range(0, z.shape[0], chunk_size), desc="teacher pairs", disable=not progress, leave=False):
        y = z[i : i + chunk_size].to(teacher.device, teacher.dtype)
        for s, chain in enumerate(stages, 1):
            for seg in chain:
                y, used = _run_segment(teacher, y, seg, ode)
                nfe[s - 1] += used / n_chunks
            states[s, i : i + chunk_size] = y.cpu()
    if not torch.isfinite(states).all():
        raise FloatingPointError("the teacher produced NaN/Inf while generating pairs; check the teacher and its ODE options")
    return states, nfe


# ---------------------------------------------------------------------------------------------- distill
@torch.no_grad()
def _mse(fn, x_in: torch.Tensor, x_out: torch.Tensor, device, dtype, chunk: int = 65536) -> float:
    total = 0.0
    for i in range(0, x_in.shape[0], chunk):
        a = x_in[i : i + chunk].to(device, dtype)
        b = x_out[i : i + chunk].to(device, dtype)
        total += float(((fn(a) - b) ** 2).double().sum())
    return total / x_out.numel()


def distill(
    teacher,
    k: int = 1,
    *,
    splits: int = 1,
    stages: Optional[Sequence[Sequence[tuple[int, float, float]]]] = None,
    n_pairs: int = 20000,
    n_val: int = 2000,
    batches: Union[int, Sequence[int]] = 2000,
    batch_size: int = 512,
    lr: float = 1e-3,
    lr_decay: Optional[str] = "cosine",
    teacher_ode=None,
    student_factory: Optional[Callable[[int, int], nn.Module]] = None,
    warm_start: bool = True,
    seed: Optional[int] = None,
    chunk_size: int = 8192,
    progress: bool = True,
    callback: Optional[Callable[[int, int, float], None]] = None,
) -> DistilledSampler:
    r"""Distill a trained LFM (or global flow) into ``N * splits / k`` one-step students.

    1. Plan: :func:`distill_plan` ``(N, k, splits)``, or explicit ``stages``.
    2. Pairs: ``z ~ N(0, I)`` (``n_pairs`` for training, ``n_val`` held out), pushed through the
       teacher stage by stage (:func:`teacher_pairs`, chunked, with ``teacher_ode``).
    3. Students: for each stage, a :class:`OneStepMap` around ``student_factory(stage, k)`` (default
       :func:`default_student`: the stage's first block network, width grown by
       ``sqrt(stage length in blocks)``), warm-started from that block network when
       ``warm_start`` and the architectures match; trained with Adam for ``batches`` steps on
       minibatches drawn with replacement from the stage's pairs, loss
       :math:`\mathrm{mean}\,(S_\theta(x_{in}) - x_{out})^2` (per coordinate), cosine learning-rate
       decay by default.

    Args:
        teacher: a fully trained :class:`~torchcfm_local.LocalFlowMatching` (N blocks).
        k: segments per student; with ``splits = 1`` the number of blocks one student replaces.
            Must divide ``N * splits`` (``ValueError`` lists the valid values).
        splits: equal time segments per block; ``distill(global_flow, splits=M)`` gives the
            M-step distilled global flow.
        stages: explicit plan instead of ``k``/``splits``: a list (sampling order) of lists of
            ``(block, t_start, t_end)`` covering the teacher path from ``(N, 0, .)`` to ``(1, ., 1)``
            without gaps (e.g. uneven cuts of a global flow: ``[[(1, 0, .7)], [(1, .7, 1)]]``).
        n_pairs, n_val: training and held-out pairs per stage (chained from the same z).
        batches: optimizer steps per student (an int, or one per stage).
        batch_size, lr: Adam settings; ``lr_decay``: ``"cosine"`` (to 0) or ``None``.
        teacher_ode: ODE options of the teacher while making pairs (default: the teacher's;
            fixed-step solvers keep their step size on partial segments).
        student_factory: ``(stage, k) -> nn.Module`` velocity-shaped network; stage is 1-based in
            sampling order. Saved samplers rebuild it from :data:`NETWORKS`, else need it again.
        warm_start: start a student from the teacher block network of its first segment when the
            architectures match (always true for k = 1 with the default student).
        seed: seeds z, minibatches and student initialisation (``None``: drawn from torch's RNG).
        chunk_size: samples per teacher integration chunk.
        progress: tqdm bars; ``callback(stage, batch, loss)`` after every optimizer step.

    Returns:
        :class:`DistilledSampler` with its :class:`DistillReport` in ``.report``.

    Raises:
        RuntimeError: the teacher is not fully trained.
        ValueError: bad ``k``/``splits``/``stages`` or training settings.
    """
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    if stages is None:
        plan = distill_plan(teacher.n_blocks, k, splits)
        rec_k, rec_splits = k, splits
    else:
        plan = _check_stages(stages, teacher.n_blocks)
        rec_k = rec_splits = None
    if teacher.n_trained < teacher.n_blocks:
        raise RuntimeError(f"distill needs a fully trained teacher; {teacher.n_trained} of {teacher.n_blocks} blocks are trained")
    S = len(plan)
    for name, value in (("n_pairs", n_pairs), ("n_val", n_val), ("batch_size", batch_size)):
        _as_positive_int(value, name)
    if n_val < 2:
        raise ValueError(f"n_val must be >= 2, got {n_val}")
    per_stage = [batches] * S if isinstance(batches, int) and not isinstance(batches, bool) else list(batches)
    if len(per_stage) != S or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in per_stage):
        raise ValueError(f"batches must be a positive int or {S} positive ints (one per stage), got {batches!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if lr_decay not in (None, "cosine"):
        raise ValueError(f"lr_decay must be None or 'cosine', got {lr_decay!r}")
    ode = ODEOptions.coerce(teacher_ode, teacher.ode)
    if seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
    device, dtype = teacher.device, teacher.dtype

    # ---- pairs, chained from the same z
    tick = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((n_pairs + n_val, *teacher.shape), generator=gen, dtype=dtype)
    states, teacher_nfe = teacher_pairs(teacher, plan, z, ode=ode, chunk_size=chunk_size, progress=progress)
    train_states, val_states = states[:, :n_pairs], states[:, n_pairs:]
    pair_seconds = time.perf_counter() - tick

    # ---- students
    students, reports = [], []
    gen_idx = torch.Generator().manual_seed(seed + 1)
    for s, chain in enumerate(plan, 1):
        first = chain[0]
        length = sum(seg.length for seg in chain)
        teacher_net = teacher.nets[first.block - 1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1000 + s)
            net = default_student(teacher_net, length) if student_factory is None else student_factory(s, len(chain))
        if not isinstance(net, nn.Module):
            raise TypeError(f"student_factory({s}, {len(chain)}) must return an nn.Module, got {type(net).__name__}")
        warm = bool(warm_start) and _same_architecture(net, teacher_net)
        if warm:
            net.load_state_dict(teacher_net.state_dict())
        alpha, beta = step_coefficients(teacher.matcher, chain)
        student = OneStepMap(net.to(device, dtype), first.t_start, alpha, beta)
        x_in, x_out = train_states[s - 1], train_states[s]
        v_in, v_out = val_states[s - 1], val_states[s]
        init_mse = _mse(student, v_in, v_out, device, dtype)
        identity_mse = _mse(lambda a: a, v_in, v_out, device, dtype)

        params = list(student.parameters())
        opt = torch.optim.Adam(params, lr=lr)
        total, losses = per_stage[s - 1], []
        student.train()
        tick = time.perf_counter()
        bar = tqdm(total=total, desc=f"stage {s}/{S} distill", disable=not progress, leave=False, dynamic_ncols=True)
        try:
            for step in range(total):
                if lr_decay == "cosine":
                    for group in opt.param_groups:
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                idx = torch.randint(0, n_pairs, (batch_size,), generator=gen_idx)
                a, b = x_in[idx].to(device, dtype), x_out[idx].to(device, dtype)
                loss = torch.mean((student(a) - b) ** 2)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"stage {s}: loss became {loss.item()} at batch {step + 1}; lower lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
                bar.update(1)
                if (step + 1) % 50 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3g}")
                if callback is not None:
                    callback(s, step + 1, losses[-1])
        finally:
            bar.close()
        train_seconds = time.perf_counter() - tick
        student.eval()
        student.field.nfe = 0
        reports.append(StageReport(
            stage=s, segments=[tuple(seg) for seg in chain], pairs=n_pairs, val_pairs=n_val, batches=total,
            losses=losses, teacher_nfe=teacher_nfe[s - 1], warm_started=warm, init_mse=init_mse,
            val_mse=_mse(student, v_in, v_out, device, dtype), identity_mse=identity_mse,
            student_params=sum(p.numel() for p in params), train_seconds=train_seconds,
        ))
        students.append(student)

    sampler = DistilledSampler(teacher.shape, students, plan, teacher.n_blocks)
    end_mse = _mse(sampler.forward, val_states[0], val_states[-1], device, dtype)
    sampler.report = DistillReport(reports, rec_k, rec_splits, seed, pair_seconds, time.perf_counter() - start_time, end_mse)
    return sampler


# ---------------------------------------------------------------------------------------------- presets
#: Named sampling settings for a :class:`~torchcfm_local.LocalFlowMatching` (per block):
#:
#: * ``"quality"``: adaptive dopri5 at atol = rtol = 1e-5 in every block.
#: * ``"fast"``: 4 midpoint steps per block (8 NFE per block). Chosen on the 2-D benchmark
#:   (``benchmarks/bench_distill.py``, tree): the cheapest fixed-step setting within the sampling
#:   noise of dopri5 for both a 4-block LFM (32 NFE: energy distance 0.0048 vs 0.0057 for dopri5 at
#:   188 NFE; 2 midpoint steps: 0.016, 1 RK4 step: 0.011) and the global flow (8 NFE: 0.0041 vs
#:   0.0045 at 74 NFE). The trigonometric path is curved even in a short local block, so
#:   first-order Euler needs many more steps (0.15 at 8 steps per block).
#:
#: A :class:`DistilledSampler` maps both names to its single pass through the students.
SAMPLING_PRESETS: dict[str, ODEOptions] = {
    "quality": ODEOptions(solver="dopri5", atol=1e-5, rtol=1e-5),
    "fast": ODEOptions(solver="midpoint", steps=4),
}


def _check_preset(name: str) -> None:
    if name not in SAMPLING_PRESETS:
        raise ValueError(f"unknown sampling preset {name!r}; expected one of {sorted(SAMPLING_PRESETS)}")


def preset_options(model, preset: str) -> ODEOptions:
    """The :class:`ODEOptions` of ``preset`` (``"fast"`` / ``"quality"``, see :data:`SAMPLING_PRESETS`).

    ``model`` is accepted so that presets may later depend on the model (e.g. its number of blocks).
    """
    _check_preset(preset)
    return SAMPLING_PRESETS[preset]


def sample(model, n: int, *, preset: Union[str, ODEOptions, dict] = "fast",
           generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, IntegrationStats]:
    """``n`` samples from any sampler with a named preset or explicit ODE options, and their cost.

    Args:
        model: a :class:`~torchcfm_local.LocalFlowMatching` or a :class:`DistilledSampler`.
        n: number of samples.
        preset: ``"fast"``, ``"quality"`` (see :data:`SAMPLING_PRESETS`), or for an LFM explicit
            :class:`ODEOptions` / solver name / dict.
        generator: CPU generator of z.

    Returns:
        ``(samples (n, *shape), stats)``; ``stats.nfe`` is the network evaluations per sample.
    """
    if isinstance(model, DistilledSampler):
        if not isinstance(preset, str):
            raise TypeError("a DistilledSampler takes preset 'fast' or 'quality' only (it has no ODE)")
        x = model.sample(n, generator=generator, preset=preset)
        return x, model.last_stats
    ode = preset_options(model, preset) if isinstance(preset, str) and preset in SAMPLING_PRESETS else preset
    if isinstance(preset, str) and preset not in SAMPLING_PRESETS and preset not in _solver_names():
        _check_preset(preset)
    x = model.sample(n, ode=ode, generator=generator)
    return x, model.last_stats


def _solver_names() -> list[str]:
    from .solvers import SOLVERS

    return list(SOLVERS)
