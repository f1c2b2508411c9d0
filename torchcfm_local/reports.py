"""Typed records returned by training and integration."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

__all__ = ["PoolStats", "BlockReport", "FitReport", "IntegrationStats", "LogProbTerms", "pool_stats"]


@dataclass(frozen=True)
class PoolStats:
    """How far a pool of samples is from N(0, I).

    Attributes:
        mean_rms: root mean square of the per-dimension means.
        cov_rms_err: root mean square of the entries of ``Cov - I``.
        gaussian_kl: ``KL(N(m, C) || N(0, I)) = (tr C + |m|^2 - d - log det C) / 2`` in nats;
            ``None`` when ``d > 4096`` (covariance not formed) or ``C`` is singular.
    """

    mean_rms: float
    cov_rms_err: Optional[float]
    gaussian_kl: Optional[float]


def pool_stats(pool: torch.Tensor, chunk_size: int = 65536, max_dim_for_cov: int = 4096) -> PoolStats:
    """Statistics of ``pool`` (``(n, *shape)``) against N(0, I), streamed over chunks in float64."""
    n = pool.shape[0]
    d = pool[0].numel()
    with_cov = d <= max_dim_for_cov
    total = torch.zeros(d, dtype=torch.float64)
    second = torch.zeros((d, d) if with_cov else (d,), dtype=torch.float64)
    for i in range(0, n, chunk_size):
        x = pool[i : i + chunk_size].reshape(-1, d).to("cpu", torch.float64)
        total += x.sum(0)
        second += x.T @ x if with_cov else (x * x).sum(0)
    mean = total / n
    mean_rms = float(mean.pow(2).mean().sqrt())
    if not with_cov:
        return PoolStats(mean_rms, None, None)
    cov = second / n - torch.outer(mean, mean)
    cov_err = float((cov - torch.eye(d, dtype=torch.float64)).pow(2).mean().sqrt())
    sign, logdet = torch.linalg.slogdet(cov)
    kl = None
    if sign > 0:
        kl = float(0.5 * (torch.trace(cov) + mean.pow(2).sum() - d - logdet))
    return PoolStats(mean_rms, cov_err, kl)


def tail_mean(losses: list[float]) -> float:
    """Mean of the last 10% of ``losses`` (at least one value); NaN when empty."""
    if not losses:
        return math.nan
    k = max(1, len(losses) // 10)
    return sum(losses[-k:]) / k


@dataclass
class BlockReport:
    """What happened while training one block.

    Attributes:
        block: block number (1 = next to the data).
        h: OU step (``inf`` for the free block).
        batches: optimizer steps taken.
        losses: flow-matching loss of every batch.
        train_seconds: wall time of the optimizer steps.
        pushforward_seconds: wall time of pushing the pool through the block (0 if not done).
        pushforward_nfe: network evaluations per sample path in that pushforward.
        pushforward_steps: RK4 steps chosen for the pushforward by ``pushforward_tol`` (``None``:
            the fixed ``pushforward_ode`` was used, or nothing was pushed).
        pushforward_error: estimated RMS error of that pushforward relative to the block's OU
            noise scale (``None`` when the steps were not chosen).
        pushforward_probe_seconds: the part of ``pushforward_seconds`` spent choosing the steps.
        pool: statistics of the pushed pool against N(0, I) (``None`` if not pushed).
        resumed_from: the batch this block resumed at (0 for a fresh start).
    """

    block: int
    h: float
    batches: int
    losses: list[float] = field(repr=False)
    train_seconds: float
    pushforward_seconds: float = 0.0
    pushforward_nfe: float = 0.0
    pool: Optional[PoolStats] = None
    resumed_from: int = 0
    pushforward_steps: Optional[int] = None
    pushforward_error: Optional[float] = None
    pushforward_probe_seconds: float = 0.0

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 10% of batches (at least one)."""
        return tail_mean(self.losses)


@dataclass
class FitReport:
    """Per-block records of one :meth:`LocalFlowMatching.fit` call."""

    blocks: list[BlockReport]
    seed: int
    total_seconds: float
    checkpoint_dir: Optional[str] = None

    def to_dict(self) -> dict:
        out = asdict(self)
        for rec, block in zip(out["blocks"], self.blocks):
            rec["final_loss"] = block.final_loss
        return out

    def summary(self) -> str:
        """A markdown table, one row per block."""
        rows = [
            "| block | h | batches | final loss | train s | push s | push NFE | push steps (rel. err) | pool mean rms "
            "| pool cov err | pool KL |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]

        def fmt(v, spec=".4f"):
            return "-" if v is None else format(v, spec)

        for b in self.blocks:
            p = b.pool
            steps = "-" if b.pushforward_steps is None else f"{b.pushforward_steps} ({b.pushforward_error:.2g})"
            rows.append(
                f"| {b.block} | {'free' if math.isinf(b.h) else format(b.h, '.4g')} | {b.batches} | {b.final_loss:.4f} "
                f"| {b.train_seconds:.1f} | {b.pushforward_seconds:.1f} | {b.pushforward_nfe:.1f} | {steps} "
                f"| {fmt(p and p.mean_rms)} | {fmt(p and p.cov_rms_err)} | {fmt(p and p.gaussian_kl)} |"
            )
        return "\n".join(rows)


@dataclass(frozen=True)
class IntegrationStats:
    """Cost of the last ``sample``/``encode``/``decode`` call.

    Attributes:
        blocks: the blocks run, ascending.
        nfe_per_block: network evaluations per sample path for each of ``blocks``.
        seconds: wall time of the call.
    """

    blocks: tuple[int, ...]
    nfe_per_block: tuple[float, ...]
    seconds: float

    @property
    def nfe(self) -> float:
        """Total network evaluations per sample path."""
        return float(sum(self.nfe_per_block))


@dataclass(frozen=True)
class LogProbTerms:
    """Log-density of a batch split into its terms (paper eq. 26), all in nats, float64.

    Attributes:
        log_prob: ``(B,)`` total, ``prior + divergence.sum(0) + standardize_log_det``.
        prior: ``(B,)`` ``log N(x_N; 0, I)`` of the fully encoded samples.
        divergence: ``(N, B)``; row ``n-1`` is block n's ``int_1^0 div v_n dt``.
        nfe_per_block: network evaluations per sample path in each block.
        standardize_log_det: ``log|det dA/dx|`` of the model's data standardization ``A`` (the
            same for every sample; 0 without one).
    """

    log_prob: torch.Tensor
    prior: torch.Tensor
    divergence: torch.Tensor
    nfe_per_block: tuple[float, ...]
    standardize_log_det: float = 0.0
