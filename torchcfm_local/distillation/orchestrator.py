r""":func:`distill`: a trained flow into ``N * splits / k`` one-step students (paper Algorithm A.1).

The steps, each a function below: plan the stages (:func:`~.plan.distill_plan` or checked explicit
stages), check the settings, generate the teacher's pairs chained from one set of z
(:func:`~.pairs.teacher_pairs`), then per stage build a student (:class:`~.students.OneStepMap`,
warm-started from the teacher block when the architectures match) and fit it with the one
optimizer loop of the package (:class:`~torchcfm_local.training.loop.StepLoop`) on

.. math::
    \mathcal{L}(\theta) = \mathbb{E}_{(x_{in}, x_{out})}\, \tfrac{1}{D}\,\| S_\theta(x_{in}) - x_{out} \|^2,

over the stage's fixed pair set (the "distillation" step of rectified flow, Liu et al. 2022, which
Algorithm A.1 of the LFM paper follows).

Every network evaluation made here goes through a fresh ``field.bind()`` view, so ``distill`` never
reads or resets a counter that another caller shares.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from .._checks import per_item_ints, positive_int
from ..solvers import ODEOptions
from ..training.loop import OptimConfig, StepLoop
from .pairs import teacher_pairs
from .plan import Segment, check_stages, distill_plan, step_coefficients
from .sampler import DistilledSampler, DistillReport, StageReport
from .students import OneStepMap, default_student, same_architecture

__all__ = ["distill"]


@dataclass(frozen=True)
class _Settings:
    """The checked training settings shared by all stages."""

    n_pairs: int
    n_val: int
    batches: list[int]  # optimizer steps, one entry per stage
    batch_size: int
    optim: OptimConfig
    student_factory: Optional[Callable[[int, int], nn.Module]]
    warm_start: bool
    seed: int
    progress: bool
    callback: Optional[Callable[[int, int, float], None]]


class _Pairs(NamedTuple):
    """Teacher states at the stage boundaries, ``(S + 1, n, *shape)`` each, and their cost."""

    train: torch.Tensor
    val: torch.Tensor
    teacher_nfe: list[float]
    seconds: float


def _resolve_plan(teacher, k, splits, stages) -> tuple[list[tuple[Segment, ...]], Optional[int], Optional[int]]:
    """``(plan, k, splits)`` to record; ``k`` and ``splits`` are ``None`` for explicit ``stages``."""
    if stages is None:
        plan, rec = distill_plan(teacher.n_blocks, k, splits), (k, splits)
    else:
        plan, rec = check_stages(stages, teacher.n_blocks), (None, None)
    if teacher.n_trained < teacher.n_blocks:
        raise RuntimeError(
            f"distill needs a fully trained teacher; {teacher.n_trained} of {teacher.n_blocks} blocks are trained")
    return plan, *rec


def _mse(fn, x_in: torch.Tensor, x_out: torch.Tensor, device, dtype, chunk: int = 65536) -> float:
    """``mean (fn(x_in) - x_out)^2`` over all coordinates, in chunks moved to ``device``/``dtype``."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, x_in.shape[0], chunk):
            a = x_in[i : i + chunk].to(device, dtype)
            b = x_out[i : i + chunk].to(device, dtype)
            total += float(((fn(a) - b) ** 2).double().sum())
    return total / x_out.numel()


def _viewed(students: Sequence[OneStepMap]) -> Callable[[torch.Tensor], torch.Tensor]:
    """The students chained, each evaluated through a fresh view of its field."""
    views = [st.field.bind() for st in students]

    def run(x: torch.Tensor) -> torch.Tensor:
        for st, view in zip(students, views):
            x = st.apply(x, view)
        return x

    return run


def _make_pairs(teacher, plan, cfg: _Settings, ode: ODEOptions, chunk_size: int) -> _Pairs:
    """Train and held-out pairs of every stage, chained from ``n_pairs + n_val`` z drawn with ``seed``."""
    tick = time.perf_counter()
    gen = torch.Generator().manual_seed(cfg.seed)
    z = torch.randn((cfg.n_pairs + cfg.n_val, *teacher.shape), generator=gen, dtype=teacher.dtype)
    states, nfe = teacher_pairs(teacher, plan, z, ode=ode, chunk_size=chunk_size, progress=cfg.progress)
    return _Pairs(states[:, : cfg.n_pairs], states[:, cfg.n_pairs :], nfe, time.perf_counter() - tick)


def _build_student(teacher, s: int, chain: Sequence[Segment], cfg: _Settings) -> tuple[OneStepMap, bool]:
    """Stage ``s``'s untrained student on the teacher's device and dtype, and whether it is warm-started."""
    first = chain[0]
    teacher_net = teacher.nets[first.block - 1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed + 1000 + s)
        if cfg.student_factory is None:
            net = default_student(teacher_net, sum(seg.length for seg in chain))
        else:
            net = cfg.student_factory(s, len(chain))
    if not isinstance(net, nn.Module):
        raise TypeError(f"student_factory({s}, {len(chain)}) must return an nn.Module, got {type(net).__name__}")
    warm = bool(cfg.warm_start) and same_architecture(net, teacher_net)
    if warm:
        net.load_state_dict(teacher_net.state_dict())
    alpha, beta = step_coefficients(teacher.matcher, chain)
    return OneStepMap(net.to(teacher.device, teacher.dtype), first.t_start, alpha, beta), warm


def _train_student(student: OneStepMap, x_in: torch.Tensor, x_out: torch.Tensor, s: int, n_stages: int,
                   cfg: _Settings, gen: torch.Generator, device, dtype) -> StepLoop:
    """Fit ``student`` to the pairs ``(x_in, x_out)`` (``(n_pairs, *shape)`` each, moved to
    ``device``/``dtype`` per batch) with :class:`StepLoop`: each step draws ``batch_size`` pairs with
    replacement (from ``gen``) and takes the per-coordinate MSE. Returns the finished loop."""
    view = student.field.bind()

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, x_in.shape[0], (cfg.batch_size,), generator=gen)
        a, b = x_in[idx].to(device, dtype), x_out[idx].to(device, dtype)
        return torch.mean((student.apply(a, view) - b) ** 2)

    def after_step(done: int, loss: float) -> None:
        if cfg.callback is not None:
            cfg.callback(s, done, loss)

    loop = StepLoop(student, cfg.batches[s - 1], cfg.optim, desc=f"distill stage {s}/{n_stages}",
                    progress=cfg.progress, error_hint="; lower lr")
    loop.run(loss_fn, after_step)
    student.eval()
    return loop


def _distill_stage(teacher, s: int, chain, pairs: _Pairs, cfg: _Settings, n_stages: int,
                   gen: torch.Generator) -> tuple[OneStepMap, StageReport]:
    """Build, fit and evaluate stage ``s``'s student on its pairs ``(states[s-1], states[s])``."""
    student, warm = _build_student(teacher, s, chain, cfg)
    v_in, v_out = pairs.val[s - 1], pairs.val[s]
    device, dtype = teacher.device, teacher.dtype
    init_mse = _mse(_viewed([student]), v_in, v_out, device, dtype)
    identity_mse = _mse(lambda a: a, v_in, v_out, device, dtype)
    loop = _train_student(student, pairs.train[s - 1], pairs.train[s], s, n_stages, cfg, gen, device, dtype)
    report = StageReport(
        stage=s, segments=[tuple(seg) for seg in chain], pairs=cfg.n_pairs, val_pairs=cfg.n_val,
        batches=loop.total, losses=loop.losses, teacher_nfe=pairs.teacher_nfe[s - 1], warm_started=warm,
        init_mse=init_mse, val_mse=_mse(_viewed([student]), v_in, v_out, device, dtype),
        identity_mse=identity_mse, student_params=sum(p.numel() for p in loop.params),
        train_seconds=loop.elapsed,
    )
    return student, report


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

    1. Plan: :func:`~.plan.distill_plan` ``(N, k, splits)``, or explicit ``stages``.
    2. Pairs: ``z ~ N(0, I)`` (``n_pairs`` for training, ``n_val`` held out), pushed through the
       teacher stage by stage (:func:`~.pairs.teacher_pairs`, chunked, with ``teacher_ode``).
    3. Students: for each stage, a :class:`~.students.OneStepMap` around
       ``student_factory(stage, k)`` (default :func:`~.students.default_student`: the stage's first
       block network, width grown by ``sqrt(stage length in blocks)``), warm-started from that
       block network when ``warm_start`` and the architectures match; trained with Adam for
       ``batches`` steps on minibatches drawn with replacement from the stage's pairs, loss
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
        n_pairs, n_val: training and held-out pairs per stage (chained from the same z; ``n_val >= 2``).
        batches: optimizer steps per student (an int, or one per stage).
        batch_size, lr: Adam settings; ``lr_decay``: ``"cosine"`` (to 0) or ``None``.
        teacher_ode: ODE options of the teacher while making pairs (default: the teacher's;
            fixed-step solvers keep their step size on partial segments).
        student_factory: ``(stage, k) -> nn.Module`` velocity-shaped network; stage is 1-based in
            sampling order. Saved samplers rebuild it from :data:`~torchcfm_local.networks.NETWORKS`,
            else need it again.
        warm_start: start a student from the teacher block network of its first segment when the
            architectures match (always true for k = 1 with the default student).
        seed: seeds z, minibatches and student initialisation (``None``: drawn from torch's RNG).
        chunk_size: samples per teacher integration chunk.
        progress: progress bars; ``callback(stage, batch, loss)`` after every optimizer step.

    Returns:
        :class:`~.sampler.DistilledSampler` with its :class:`~.sampler.DistillReport` in ``.report``.

    Raises:
        RuntimeError: the teacher is not fully trained.
        ValueError: bad ``k``/``splits``/``stages`` or training settings.
        FloatingPointError: a student's loss became NaN/Inf.
    """
    start_time = time.perf_counter()
    plan, rec_k, rec_splits = _resolve_plan(teacher, k, splits, stages)
    cfg = _Settings(
        n_pairs=positive_int(n_pairs, "n_pairs"), n_val=positive_int(n_val, "n_val", minimum=2),
        batches=per_item_ints(batches, len(plan), "batches", "stage"),
        batch_size=positive_int(batch_size, "batch_size"), optim=OptimConfig(lr=lr, lr_decay=lr_decay),
        student_factory=student_factory, warm_start=warm_start,
        seed=int(torch.randint(0, 2**31 - 1, (1,))) if seed is None else seed,
        progress=progress, callback=callback,
    )
    ode = ODEOptions.coerce(teacher_ode, teacher.ode)
    pairs = _make_pairs(teacher, plan, cfg, ode, chunk_size)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    students, reports = [], []
    for s, chain in enumerate(plan, 1):
        student, report = _distill_stage(teacher, s, chain, pairs, cfg, len(plan), gen)
        students.append(student)
        reports.append(report)
    sampler = DistilledSampler(teacher.shape, students, plan, teacher.n_blocks, teacher.standardizer)
    end_mse = _mse(_viewed(students), pairs.val[0], pairs.val[-1], teacher.device, teacher.dtype)
    sampler.report = DistillReport(reports, rec_k, rec_splits, cfg.seed, pairs.seconds,
                                   time.perf_counter() - start_time, end_mse)
    return sampler
