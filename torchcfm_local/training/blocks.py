"""One block's training handle, and block-wise training with a loop of your own."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Union

import torch
from torch import nn

from ..distributed import context as dist_context
from ..inputs import cond_input
from ..matchers import LocalBlockMatcher
from ..pool import MemmapPool
from ..shared import shared_network
from ..solvers import ODEOptions, VelocityField
from .config import PUSHFORWARD_ODE
from .pool import TrainingPool

__all__ = ["BlockTrainer", "train_blocks", "check_warm_start"]


def check_warm_start(nets) -> None:
    """Raise unless every block network has the architecture of the previous one (``warm_start`` copies weights)."""
    for n in range(2, len(nets) + 1):
        prev = {k: v.shape for k, v in nets[n - 2].state_dict().items()}
        cur = {k: v.shape for k, v in nets[n - 1].state_dict().items()}
        if prev != cur:
            raise ValueError(
                f"warm_start=True needs blocks with identical architectures, but blocks {n - 1} and {n} differ; "
                "pass warm_start=False"
            )


@dataclass
class BlockTrainer:
    """Handle on one block, yielded by :meth:`LocalFlowMatching.train_blocks` for custom loops.

    Attributes:
        block: block number (1 = next to the data).
        h: the block's OU step (``inf`` for the free block).
        model: the block's velocity network, as built by ``velocity_factory`` (train it).
        field: ``model`` seen as a torchdyn field ``f(t, x)``.
        matcher: the block's :class:`LocalBlockMatcher` (torchcfm's method names and returns).
        pool: the block's data-side samples ``X_{n-1}``, shape ``(n, *shape)``: a tensor, or a
            :class:`~torchcfm_local.pool.MemmapPool` (indexable the same way) with ``pool_dir``.
        cond: the pool rows' conditions ``(n, cond_dim)`` (conditional models), else ``None``.
    """

    block: int
    h: float
    model: nn.Module
    field: VelocityField
    matcher: LocalBlockMatcher
    pool: Union[torch.Tensor, MemmapPool]
    cond: Optional[torch.Tensor] = None

    @classmethod
    def of(cls, lfm, n: int, pool: TrainingPool) -> "BlockTrainer":
        """The handle of ``lfm``'s block ``n`` training on ``pool``."""
        return cls(n, lfm.schedule.step(n), lfm.nets[n - 1], lfm.field(n), lfm.block_matcher(n), pool.rows, pool.cond)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters(), torch.zeros(())).device

    def data(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """A batch of ``batch_size`` pool samples drawn uniformly with replacement, on the model's device."""
        return self.batch(batch_size, generator)[0]

    def batch(self, batch_size: int, generator: Optional[torch.Generator] = None):
        """``(x1, cond)``: as :meth:`data`, with the rows' conditions (``None`` when unconditional)."""
        idx = torch.randint(0, self.pool.shape[0], (batch_size,), generator=generator)
        cond = None if self.cond is None else self.cond[idx].to(self.device)
        return self.pool[idx].to(self.device), cond

    def loss(self, x1: torch.Tensor, generator: Optional[torch.Generator] = None, cond=None) -> torch.Tensor:
        """Flow-matching loss ``mean |v(t, x_t) - u_t|^2`` on a data-side batch ``x1``.

        ``z`` and ``t`` are drawn from ``generator`` (on ``x1``'s device) when given, else from
        torch's global RNG. ``cond``: the batch's conditions ``(B, cond_dim)`` (conditional models).
        """
        z, t = self.draw(x1.shape[0], x1, generator)
        return self.loss_at(x1, z, t, cond=None if cond is None else cond_input(cond))

    def draw(self, batch_size: int, like: torch.Tensor, generator: Optional[torch.Generator] = None):
        """The random inputs of a loss: ``z`` ``(batch_size, *shape)`` ~ N(0, I) and times ``t`` ``(batch_size,)``."""
        z = torch.randn((batch_size, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype)
        return z, self.matcher.sample_time(batch_size, like, generator)

    def loss_at(self, x1: torch.Tensor, z: torch.Tensor, t: torch.Tensor, field: Optional[VelocityField] = None,
                cond: Optional[torch.Tensor] = None):
        """The loss on ``x1`` with given ``z`` and ``t`` (see :meth:`draw`), through ``field`` (default:
        the block's); ``cond``: the networks' conditioning input ``(B, cond_dim + 1)``."""
        field = field or self.field
        if cond is not None:
            field = field.bind(cond)
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(z, x1, t)
        return torch.mean((field(t, xt) - ut) ** 2)


def train_blocks(lfm, x, *, pushforward_ode=None, chunk_size: Optional[int] = None, warm_start: bool = False,
                 progress: bool = True, pool_dir=None, cond=None) -> Iterator[BlockTrainer]:
    """The generator behind :meth:`LocalFlowMatching.train_blocks` (see there)."""
    ode = ODEOptions.coerce(pushforward_ode, PUSHFORWARD_ODE)
    chunk_size = lfm.default_chunk() if chunk_size is None else chunk_size
    dist = dist_context(lfm.device, init=False)
    if shared_network(lfm) is not None:
        raise ValueError("train_blocks trains block after block on the pushed pool, but this model's blocks share one "
                         "network: training block n would change blocks 1..n-1 after the pool was pushed through "
                         "them; train shared blocks jointly with fit(x, pool='ou')")
    x = lfm.check_samples(x, "training data", min_count=2)
    cond = lfm.check_training_cond(cond, x.shape[0])
    pool = TrainingPool.initial(lfm, x, cond, dist, chunk_size, ode, pool_dir=pool_dir)
    for n in range(lfm.n_trained + 1, lfm.n_blocks + 1):
        if warm_start and n > 1:
            lfm.warm_start(n)
        lfm.nets[n - 1].train()
        yield BlockTrainer.of(lfm, n, pool)
        lfm.n_trained = n
        if n < lfm.n_blocks:
            pool.push(lfm, n, ode, progress, stats=False)
