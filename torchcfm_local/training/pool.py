"""The training pool of Algorithm 1: the data pushed through the blocks trained so far.

:class:`TrainingPool` is one object for the three things that happen to it (fill it with the
data, push it through a finished block, commit the push so every rank sees every row), in memory
or in memory-mapped files (:class:`~torchcfm_local.pool.MemmapPool`), sharded across ranks.
The pool holds the data as the blocks see it: after the model's standardization, if any.

:func:`ou_marginal` draws block n's data side without a pool push (``fit(..., pool="ou")``).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..distributed import DistContext, shard
from ..pool import MemmapPool, PoolDirError
from ..reports import PoolStats, pool_stats
from ..schedule import ou_step
from ..solvers import ODEOptions
from .steps import StepChoice, choose_steps, rk4

__all__ = ["TrainingPool", "fingerprint", "ou_marginal"]


def fingerprint(x: torch.Tensor, chunk: int = 65536) -> list[float]:
    """Cheap identity of a training set (size, sum, sum of squares, strided sum), to refuse resuming on other data."""
    total = squares = 0.0
    for part in x.reshape(x.shape[0], -1).split(chunk):
        part = part.double()
        total += float(part.sum())
        squares += float((part * part).sum())
    strided = float(x[:: max(1, x.shape[0] // 97)].double().sum())
    return [float(x.shape[0]), total, squares, strided]


def ou_marginal(x: torch.Tensor, t: float, generator: Optional[torch.Generator] = None,
                batch_size: Optional[int] = None, rows: Optional[tuple[int, int]] = None) -> torch.Tensor:
    r"""Samples of the OU marginal at time ``t`` started at the rows of ``x``: :math:`e^{-t} x + \sqrt{1 - e^{-2t}}\, \epsilon`.

    For data ``x ~ p`` this is the exact law of the OU chain's block n data side when
    ``t = schedule.time_before(n)``; e.g. ``N(m, s^2)`` becomes ``N(e^{-t} m, e^{-2t} s^2 + 1 - e^{-2t})``.

    Args:
        x: ``(B, *shape)`` data rows (for a rank: its ``rows`` of the global batch).
        t: OU time ``>= 0``; ``0`` returns ``x`` itself and draws nothing.
        generator: source of ``eps`` ~ N(0, I) (on ``x``'s device).
        batch_size, rows: draw ``eps`` for the whole global batch of ``batch_size`` rows and keep
            ``rows = (lo, hi)``, so every rank draws alike and takes its share (default: ``x`` is the batch).
    """
    if not (t >= 0 and math.isfinite(t)):
        raise ValueError(f"OU time must be a finite number >= 0, got {t!r}")
    if t == 0:
        return x
    batch_size = x.shape[0] if batch_size is None else batch_size
    lo, hi = (0, batch_size) if rows is None else rows
    eps = torch.randn((batch_size, *x.shape[1:]), generator=generator, device=x.device, dtype=x.dtype)[lo:hi]
    return ou_step(x, t, eps)


class TrainingPool:
    """``X_{n}``: the training rows pushed through blocks ``1..after_block``, with their conditions.

    Args:
        rows: ``(n, *shape)`` tensor (pushed in place) or :class:`MemmapPool` (pushed into its
            other buffer, then switched by :meth:`commit`).
        cond: ``(n, cond_dim)`` conditions of the rows (they never change), or ``None``.
        dist: this process's rank and world; each rank pushes its shard of the rows.
        chunk_size: rows integrated at once.
    """

    def __init__(self, rows: Union[torch.Tensor, MemmapPool], cond: Optional[torch.Tensor], dist: DistContext,
                 chunk_size: int):
        self.rows, self.cond, self.dist, self.chunk_size = rows, cond, dist, chunk_size

    @property
    def in_memory(self) -> bool:
        return not isinstance(self.rows, MemmapPool)

    @property
    def shape(self) -> torch.Size:
        return self.rows.shape

    @classmethod
    def initial(cls, model, x: torch.Tensor, cond, dist: DistContext, chunk_size: int, ode: ODEOptions, *,
                pool_dir=None, data_id: Optional[list] = None, run_id: Optional[str] = None,
                push: bool = True, tol: Optional[float] = None) -> "TrainingPool":
        """The data (standardized by ``model.standardizer``) pushed through the blocks ``model``
        already has (none unless ``push``): a private tensor copy of ``x``, or a :class:`MemmapPool`
        in ``pool_dir`` (reused when it holds ``x``, or ``x`` pushed through some of the trained
        blocks by the same run ``run_id``). ``x`` is already checked; ``data_id`` identifies ``x``
        and the standardization (default: computed here); ``tol``: as in :meth:`push`."""
        through = model.n_trained if push else 0
        if pool_dir is None:
            pool, done = cls(_standardized_copy(model, x, chunk_size), cond, dist, chunk_size), 0
        else:
            data_id = data_id or fingerprint(x) + model.standardizer.fingerprint()
            rows = _open_memmap(model, Path(pool_dir), x, chunk_size, dist, data_id, run_id, through)
            pool, done = cls(rows, cond, dist, chunk_size), rows.after_block
        for n in range(done + 1, through + 1):  # block by block, as during training: same chunks, same result
            pool.push(model, n, ode, progress=False, stats=False, tol=tol)
        return pool

    def push(self, model, n: int, ode: ODEOptions, progress: bool = False, stats: bool = True,
             tol: Optional[float] = None) -> tuple[float, float, Optional[PoolStats], Optional[StepChoice]]:
        """Push the rows through block ``n`` (data -> noise), each rank its shard, then :meth:`commit`.

        ``tol``: instead of ``ode``, RK4 with the step count :func:`~.steps.choose_steps` picks for
        this block on these rows (the same on every rank: rank 0's choice is broadcast).

        Returns:
            ``(seconds, NFE per row, PoolStats of the result or None, the StepChoice or None)``.
        """
        start = time.perf_counter()
        choice = None
        if tol is not None:
            choice = choose_steps(model, n, self.rows, self.cond, tol, self.chunk_size) if self.dist.is_main else None
            choice = self.dist.broadcast_object(choice)
            ode = rk4(choice.steps)
        desc = f"block {n}/{model.n_blocks} pushforward" if progress and self.dist.is_main else None
        out = self.rows if self.in_memory else self.rows.target()
        _, nfe = model.transport(
            self.rows, [n], False, ode, self.chunk_size, out=out, progress=desc,
            rows=shard(self.shape[0], self.dist.rank, self.dist.world), cond=self.cond,
            nonfinite_error=f"pushing the pool through block {n} produced NaN/Inf; the block's training diverged "
            "(lower the learning rate or the step size h)",
        )
        self.commit(n)
        summary = self.dist.broadcast_object(pool_stats(self.rows) if stats and self.dist.is_main else None)
        return time.perf_counter() - start, nfe[0], summary, choice

    def commit(self, after_block: int):
        """Finish a sharded write: every rank sees every row afterwards."""
        if self.in_memory:
            self.dist.share_rows(self.rows, self.chunk_size)
        else:
            self.dist.barrier()  # all rows are in the file
            self.rows.commit(after_block, write_meta=self.dist.is_main)
            self.dist.barrier()


def _standardized_copy(model, x: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """A private copy of ``x`` in the model's dtype, standardized chunk by chunk."""
    if model.standardizer.is_identity:
        return x.to(dtype=model.dtype, copy=True)
    rows = torch.empty(x.shape, dtype=model.dtype)
    for i in range(0, x.shape[0], chunk_size):
        rows[i : i + chunk_size] = model.standardizer.apply(x[i : i + chunk_size])
    return rows


def _open_memmap(model, pool_dir: Path, x: torch.Tensor, chunk_size: int, dist: DistContext,
                 data_id: list, run_id: Optional[str], through: int) -> MemmapPool:
    """Open the pool in ``pool_dir`` if it holds ``x`` (or ``x`` pushed through at most ``through``
    of the trained blocks by run ``run_id``), else fill a new one with ``x`` (standardized). Rank 0
    decides; every rank checks that it sees the same directory."""
    token, shape = dist.new_token(), (x.shape[0], *model.shape)
    reuse, pool = False, None
    if dist.is_main:
        MemmapPool.check_dir(pool_dir)
        try:
            pool = MemmapPool.open(pool_dir)
        except PoolDirError:
            pass  # absent or damaged: our own scratch directory, rebuilt below
        saved_id = pool.meta["fingerprint"] if pool is not None else []
        reuse = (pool is not None and pool.shape == shape and pool.dtype == model.dtype
                 and len(saved_id) == len(data_id) and np.allclose(saved_id, data_id, rtol=1e-9, atol=1e-6)
                 and (pool.after_block == 0 or (
                     run_id is not None and pool.meta.get("run") == run_id
                     and pool.after_block is not None and pool.after_block <= through)))
        if reuse:
            pool.meta.update(token=token, run=run_id)
            pool._write_meta()
        else:
            pool = MemmapPool.create(pool_dir, shape, model.dtype, data_id, token, run_id)
    reuse = dist.broadcast_object(reuse)
    dist.barrier()
    if not dist.is_main:
        pool = _open_as_other_rank(pool_dir, dist, token)
    if not reuse:
        start, stop = shard(x.shape[0], dist.rank, dist.world)
        target = pool.target()
        for i in range(start, stop, chunk_size):
            j = min(i + chunk_size, stop)
            target[i:j] = model.standardizer.apply(x[i:j])
        TrainingPool(pool, None, dist, chunk_size).commit(0)
    return pool


def _open_as_other_rank(pool_dir: Path, dist: DistContext, token: str) -> MemmapPool:
    try:
        pool = MemmapPool.open(pool_dir)
    except PoolDirError as err:
        raise PoolDirError(f"rank {dist.rank} cannot read the pool rank 0 wrote: {err}") from err
    if pool.meta.get("token") != token:
        raise PoolDirError(
            f"rank {dist.rank} sees another pool in {pool_dir} than rank 0: pool_dir must be one "
            "directory shared by all ranks (one machine, or a shared filesystem)"
        )
    return pool
