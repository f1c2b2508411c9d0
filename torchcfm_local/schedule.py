"""The Ornstein-Uhlenbeck step and the block schedule of Local Flow Matching."""
from __future__ import annotations

import math
from typing import Iterable, Optional

import torch

__all__ = ["OUSchedule", "ou_coefficients", "ou_step"]


def ou_coefficients(h: float) -> tuple[float, float]:
    r"""Coefficients ``(a, s)`` of an OU step of length ``h``: ``x' = a x + s z``.

    The process :math:`dX = -X\,dt + \sqrt{2}\,dW` run for time :math:`h` gives
    :math:`a = e^{-h}`, :math:`s = \sqrt{1 - e^{-2h}}`. ``h = inf`` is the
    *free* step: ``a = 0, s = 1``, i.e. ``x' = z`` independent of ``x``.
    """
    if math.isinf(h):
        return 0.0, 1.0
    return math.exp(-h), math.sqrt(-math.expm1(-2.0 * h))


def ou_step(x: torch.Tensor, h: float, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    r"""One OU step of length ``h``: :math:`x' = e^{-h} x + \sqrt{1 - e^{-2h}}\, z`.

    Args:
        x: samples, shape ``(B, *shape)``.
        h: step length, ``> 0``; ``float('inf')`` returns ``noise`` itself (the free block).
        noise: ``z`` with the shape of ``x``; drawn from N(0, I) when ``None``.

    Returns:
        ``x'`` with the shape of ``x``. For ``x ~ N(m, s^2)``: mean ``e^{-h} m``, variance
        ``e^{-2h} s^2 + 1 - e^{-2h}``.
    """
    if noise is None:
        noise = torch.randn_like(x)
    a, s = ou_coefficients(h)
    if a == 0.0:
        return noise
    return a * x + s * noise


def _check_step(h, where: str) -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float)):
        raise TypeError(f"{where} must be a number, got {type(h).__name__}")
    h = float(h)
    if not math.isfinite(h) or h <= 0:
        raise ValueError(f"{where} must be a finite number > 0, got {h!r}")
    return h


class OUSchedule:
    r"""Step sizes of the OU chain that defines the blocks of an LFM model (paper eq. 25).

    Block ``n`` (1-based, block 1 touches the data) pairs its data side ``x_{n-1}`` with
    ``x_n = e^{-h_n} x_{n-1} + \sqrt{1-e^{-2h_n}} z``. The first ``N-1`` blocks have finite steps
    :math:`h_n = h_0 \rho^{n-1}`; the last block is *free*: its noise side is N(0, I) drawn
    independently of its data side, which is an OU step of infinite length. The free block is a
    first-class member of :attr:`step_sizes` (``float('inf')``), not a sentinel.

    Construct it as ``OUSchedule(h0, rho, n_blocks)``, from explicit steps with
    ``OUSchedule.from_steps([0.15, 0.2, 0.26])`` (the free block is appended: 4 blocks), or as the
    global flow ``OUSchedule.global_flow()`` (one free block).

    ``OUSchedule()`` is the default of :class:`~torchcfm_local.LocalFlowMatching`: two coupled
    blocks with steps 0.25 and the free block (total OU time 0.5, that of the paper's 2D
    schedule, in three blocks instead of nine). It was chosen by a three-seed screen of
    schedules at equal parameters and batches over six density tasks (2D, image patches,
    tabular; ``benchmarks/results/schedule_quick.md``), where it was the best or close to it
    with the default path on all but the smallest dataset. The policies' recipe
    (:class:`~torchcfm_local.policy.PolicyRecipe`) uses it too.

    Args:
        h0: first step size, ``> 0`` (unused when ``n_blocks == 1``).
        rho: growth factor of the step sizes, ``> 0``.
        n_blocks: total number of blocks ``N >= 1``, the free block included.
    """

    def __init__(self, h0: float = 0.25, rho: float = 1.0, n_blocks: int = 3):
        if isinstance(n_blocks, bool) or not isinstance(n_blocks, int):
            raise TypeError(f"n_blocks must be an int, got {type(n_blocks).__name__}")
        if n_blocks < 1:
            raise ValueError(f"n_blocks must be >= 1, got {n_blocks}")
        h0 = _check_step(h0, "h0")
        rho = _check_step(rho, "rho")
        try:
            self._steps = tuple(h0 * rho**k for k in range(n_blocks - 1))
        except OverflowError:
            raise ValueError(f"h0 * rho^(n-1) overflows for h0={h0}, rho={rho}, n_blocks={n_blocks}") from None
        for n, h in enumerate(self._steps, start=1):
            if not math.isfinite(h) or h <= 0:
                raise ValueError(f"h0 * rho^{n - 1} = {h!r} for block {n} is not a finite number > 0")

    @classmethod
    def from_steps(cls, steps: Iterable[float]) -> "OUSchedule":
        """A schedule from the finite steps of the coupled blocks; the free block is appended."""
        if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
            raise TypeError(f"steps must be a sequence of numbers, got {type(steps).__name__}")
        checked = tuple(_check_step(h, f"step size of block {n}") for n, h in enumerate(steps, 1))
        schedule = cls.__new__(cls)
        schedule._steps = checked
        return schedule

    @classmethod
    def global_flow(cls) -> "OUSchedule":
        """The one-block schedule: a single free block, i.e. plain (global) flow matching."""
        return cls.from_steps([])

    @property
    def n_blocks(self) -> int:
        return len(self._steps) + 1

    @property
    def coupled_steps(self) -> tuple[float, ...]:
        """The finite steps ``h_1 .. h_{N-1}``."""
        return self._steps

    @property
    def step_sizes(self) -> tuple[float, ...]:
        """``(h_1, ..., h_{N-1}, inf)``: one entry per block, the free block last."""
        return self._steps + (math.inf,)

    def step(self, n: int) -> float:
        """Step size of block ``n`` (1-based); ``inf`` for the free block."""
        if not 1 <= n <= self.n_blocks:
            raise IndexError(f"block {n} is outside 1..{self.n_blocks}")
        return self.step_sizes[n - 1]

    def time_before(self, n: int) -> float:
        """OU time from the data to block ``n``'s data side: ``T_{n-1} = h_1 + ... + h_{n-1}`` (0 for block 1).

        In the OU chain that defines the blocks, block n's data side is the data carried by the OU
        process for this time: ``ou_step(x, T_{n-1})`` in law. Finite for every block, the free one included.
        """
        if not 1 <= n <= self.n_blocks:
            raise IndexError(f"block {n} is outside 1..{self.n_blocks}")
        return math.fsum(self._steps[: n - 1])

    def is_free(self, n: int) -> bool:
        return math.isinf(self.step(n))

    def to_list(self) -> list[float]:
        """Finite steps as a list (what :meth:`from_steps` takes; JSON- and checkpoint-safe)."""
        return list(self._steps)

    def __eq__(self, other) -> bool:
        return isinstance(other, OUSchedule) and self._steps == other._steps

    def __hash__(self) -> int:
        return hash(self._steps)

    def __len__(self) -> int:
        return self.n_blocks

    def __repr__(self) -> str:
        steps = ", ".join(f"{h:.4g}" for h in self._steps)
        return f"OUSchedule.from_steps([{steps}])  # {self.n_blocks} blocks, last one free"
