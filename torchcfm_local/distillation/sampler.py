"""The result of a distillation: :class:`DistilledSampler` (the students run in order), its
per-stage records (:class:`StageReport`, :class:`DistillReport`), and its checkpoint file."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .._checks import positive_int
from ..checkpoint import CheckpointError, atomic_save, header, safe_load
from ..networks import NETWORKS, network_spec
from ..reports import IntegrationStats, tail_mean
from ..standardize import Standardizer
from .plan import Segment
from .students import OneStepMap

__all__ = ["DistilledSampler", "StageReport", "DistillReport"]

_KIND = "distilled"


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
    """Per-stage records of one :func:`~torchcfm_local.distill` call.

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


class DistilledSampler(nn.Module):
    """Noise -> data in ``S`` network evaluations: the students of :func:`~torchcfm_local.distill`, run in order.

    Args:
        shape: sample shape (``teacher.shape``).
        students: ``S`` :class:`OneStepMap`, in sampling order.
        stages: the teacher segments each student replaces (same order), for the record.
        teacher_blocks: the teacher's number of blocks N.
        standardizer: the teacher's data map (:attr:`LocalFlowMatching.standardizer
            <torchcfm_local.LocalFlowMatching.standardizer>`): the students work in the blocks'
            space and the last stage's output is mapped back to data units. Default: identity.

    Attributes:
        report: the :class:`DistillReport` of the call that made it (``None`` after :meth:`load`).
        last_stats: :class:`IntegrationStats` of the last call, with ``blocks`` = stage numbers
            ``(1..S)`` and one network evaluation per stage.
    """

    def __init__(self, shape: Sequence[int], students: Sequence[OneStepMap], stages: Sequence[Sequence[Segment]],
                 teacher_blocks: int, standardizer: Optional[Standardizer] = None):
        super().__init__()
        if len(students) != len(stages) or not students:
            raise ValueError(f"need one student per stage, got {len(students)} students for {len(stages)} stages")
        self.shape = tuple(int(s) for s in shape)
        self.students = nn.ModuleList(students)
        self.stages = [tuple(Segment(*seg) for seg in chain) for chain in stages]
        self.teacher_blocks = int(teacher_blocks)
        self.standardizer = Standardizer() if standardizer is None else standardizer
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

    def _stage_numbers(self, stages: Optional[Sequence[int]]) -> list[int]:
        run = list(range(1, self.nfe + 1)) if stages is None else [int(s) for s in stages]
        if not run or run != list(range(run[0], run[0] + len(run))) or run[0] < 1 or run[-1] > self.nfe:
            raise ValueError(f"stages must be consecutive stage numbers in 1..{self.nfe}, got {stages!r}")
        return run

    @torch.no_grad()
    def decode(self, z, *, stages: Optional[Sequence[int]] = None, chunk_size: Optional[int] = None) -> torch.Tensor:
        """Run the students on ``z`` (``(B, *shape)``), stage 1 first; returns ``(B, *shape)``.

        Args:
            z: stage 1's input (N(0, I) noise), or the input of the first of ``stages``.
            stages: run only these consecutive stage numbers (e.g. ``[2, 3]``); default all.
            chunk_size: samples per forward pass (bounds memory); default: all at once up to 2^20 values.

        A one-step map has no solver and no accuracy setting, so there is nothing for a sampling
        preset to choose here (see :meth:`sample`).
        """
        z = self._check(z)
        run = self._stage_numbers(stages)
        chunk_size = positive_int(chunk_size, "chunk_size", allow_none=True) or max(1, 2**20 // int(np.prod(self.shape)))
        start = time.perf_counter()
        was_training = self.training
        self.eval()
        out = torch.empty_like(z)
        try:
            for i in range(0, z.shape[0], chunk_size):
                y = z[i : i + chunk_size].to(self.device, self.dtype)
                for s in run:
                    y = self.students[s - 1](y)
                if run[-1] == self.nfe:  # the last stage ends in data units
                    y = self.standardizer.invert(y)
                out[i : i + chunk_size] = y.to(out.device, out.dtype)
        finally:
            self.train(was_training)
        self.last_stats = IntegrationStats(tuple(run), (1.0,) * len(run), time.perf_counter() - start)
        return out

    def sample(self, n: int, *, generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None,
               preset: Optional[str] = None) -> torch.Tensor:
        """``n`` samples ``(n, *shape)``: ``z ~ N(0, I)`` (from ``generator``, a CPU generator, if
        given), then :meth:`decode`.

        ``preset``: a name of :data:`torchcfm_local.sampling.SAMPLING_PRESETS`, checked (an unknown
        name raises ``ValueError``); every preset selects the same single pass through the students.
        """
        if preset is not None:
            # imported here: torchcfm_local.sampling imports this module to dispatch on the sampler type
            from ..sampling import check_preset

            check_preset(preset)
        positive_int(n, "n")
        z = torch.randn((n, *self.shape), generator=generator, dtype=self.dtype)
        return self.decode(z, chunk_size=chunk_size)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Differentiable pass through all students (no chunking, no checks); ``(B, *shape)``."""
        for student in self.students:
            z = student(z)
        return self.standardizer.invert(z)

    # -------------------------------------------------------------- checkpoints
    def save(self, path: Union[str, Path]) -> None:
        """Write the sampler to ``path`` atomically (kind ``"distilled"``, tensors and plain data only)."""
        atomic_save({
            **header(_KIND),
            "shape": list(self.shape),
            "teacher_blocks": self.teacher_blocks,
            "standardize": self.standardizer.to_state(),
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
        students = [_load_student(path, s, rec, len(chain), student_factory)
                    for s, (rec, chain) in enumerate(zip(recs, stages), 1)]
        standardizer = Standardizer.from_state(state.get("standardize"), int(np.prod(shape)), str(path))
        return cls(shape, students, stages, teacher_blocks, standardizer)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, stages={self.nfe} (NFE {self.nfe}), teacher_blocks={self.teacher_blocks}"


def _load_student(path, s: int, rec: dict, k: int, student_factory) -> OneStepMap:
    """Stage ``s``'s student from its checkpoint record ``rec`` (``k`` segments)."""
    spec = rec.get("net")
    if student_factory is not None:
        net = student_factory(s, k)
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
        return OneStepMap(net, float(rec["t0"]), float(rec["alpha"]), float(rec["beta"]))
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: stage {s} lacks its step coefficients: {err}") from err
