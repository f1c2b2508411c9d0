"""The LFM composer: N local blocks trained one after another and chained for sampling.

Block ``n`` (1-based; block 1 touches the data) carries its own velocity network ``v_n(t, x)``,
``t`` in [0, 1], integrated with a torchdyn ``NeuralODE``. Time runs from the noise side (t = 0)
to the data side (t = 1) in every block (torchcfm's convention, see :mod:`.matchers`), so

* ``decode(z)``: blocks N, N-1, ..., 1, each from t = 0 to t = 1 (noise -> data);
* ``encode(x)``: blocks 1, ..., N, each from t = 1 to t = 0 (data -> noise);
* ``fit(x)``: Algorithm 1 of the paper: train block n on pairs (pool sample, its OU partner), then
  push the whole pool through block n (an encode step) to get block n+1's pool.
"""
from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .checkpoint import CheckpointError, atomic_save, header, safe_load
from .distributed import DistContext, context as dist_context, shard
from .matchers import LocalBlockMatcher, _check_beta, default_matcher
from .networks import MLP, NETWORKS, network_spec
from .pool import MemmapPool, PoolDirError
from .reports import BlockReport, FitReport, IntegrationStats, LogProbTerms, pool_stats
from .schedule import OUSchedule
from .solvers import ODEOptions, VelocityField, build_node, integrate

__all__ = ["LocalFlowMatching", "BlockTrainer"]

_MODEL_FILE, _POOL_FILE, _PROGRESS_FILE = "model.pt", "pool.pt", "progress.pt"

#: Default solver of the training pushforward: 8 RK4 steps (32 evaluations per block). The pool
#: only has to be accurate relative to the noise each OU step adds; on a trained 2D model the
#: one-block error against dopri5 at 1e-9 was 0.3% of the OU noise scale (RMS 3.1e-3 vs 0.67;
#: benchmarks/results/core.md), at half the cost of the 16-step sampling default.
PUSHFORWARD_ODE = ODEOptions(solver="rk4", steps=8)


def _progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, leave=False, dynamic_ncols=True)


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
    _cond_input: Optional[Callable] = dataclasses.field(default=None, repr=False)

    @property
    def device(self) -> torch.device:
        return _device_of(self.model)

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
        return self.loss_at(x1, z, t, cond=None if cond is None else self._cond_input(cond))

    def draw(self, batch_size: int, like: torch.Tensor, generator: Optional[torch.Generator] = None):
        """The random inputs of a loss: ``z`` ``(batch_size, *shape)`` ~ N(0, I) and times ``t`` ``(batch_size,)``."""
        z = torch.randn((batch_size, *like.shape[1:]), generator=generator, device=like.device, dtype=like.dtype)
        return z, self.matcher.sample_time(batch_size, like, generator)

    def loss_at(self, x1: torch.Tensor, z: torch.Tensor, t: torch.Tensor, field: Optional[VelocityField] = None,
                cond: Optional[torch.Tensor] = None):
        """The loss on ``x1`` with given ``z`` and ``t`` (see :meth:`draw`), through ``field`` (default:
        the block's); ``cond``: the networks' conditioning input ``(B, cond_dim + 1)``."""
        field = field or self.field
        t, xt, ut = self.matcher.sample_location_and_conditional_flow(z, x1, t)
        field.cond = cond
        try:
            return torch.mean((field(t, xt) - ut) ** 2)
        finally:
            field.cond = None


def lr_factor(step: int, total: int, decay: Optional[str], warmup: int) -> float:
    """Learning-rate multiplier at batch ``step`` (0-based) of ``total``: linear warm-up over the
    first ``warmup`` batches, times the cosine decay to 0 over the block when ``decay="cosine"``."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay == "cosine":
        factor *= 0.5 * (1 + math.cos(math.pi * step / total))
    return factor


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _as_shape(dim) -> tuple[int, ...]:
    shape = (dim,) if isinstance(dim, int) and not isinstance(dim, bool) else dim
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"dim must be an int or a tuple of ints, got {dim!r}") from None
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"dim must be a positive int or a tuple of positive ints, got {dim!r}")
    return shape


def _fingerprint(x: torch.Tensor, chunk: int = 65536) -> list[float]:
    """Cheap identity of a training set (size, sum, sum of squares, strided sum), to refuse resuming on other data."""
    total = squares = 0.0
    for part in x.reshape(x.shape[0], -1).split(chunk):
        part = part.double()
        total += float(part.sum())
        squares += float((part * part).sum())
    strided = float(x[:: max(1, x.shape[0] // 97)].double().sum())
    return [float(x.shape[0]), total, squares, strided]


class LocalFlowMatching(nn.Module):
    """Local Flow Matching (Xu, Cheng & Xie, arXiv 2410.02548): a chain of N flow blocks.

    Args:
        dim: data dimension (``int``) or sample shape (tuple, e.g. ``(3, 32, 32)`` or ``(16, 7)``).
        schedule: the OU block schedule (:class:`OUSchedule`); ``OUSchedule.global_flow()`` is
            plain flow matching with one network.
        matcher: any torchcfm conditional matcher; default: the trigonometric path
            ``VariancePreservingConditionalFlowMatcher(sigma=0)`` used by the reference.
        velocity_factory: ``n -> nn.Module`` building block ``n``'s velocity network (1-based),
            called as ``net(t, x)`` with ``t`` of shape ``(B,)``, or ``net(cat([x, t[:, None]]))``
            when its ``forward`` takes one argument (torchcfm's ``MLP``). Default:
            ``MLP(prod(shape), width=256, depth=3)``.
        t_beta: draw training times from Beta(a, b) on our time axis (noise at 0, data at 1)
            instead of U(0, 1).
        ode: default :class:`ODEOptions` (or solver name / dict) for sampling, encoding and the
            training pushforward; default ``ODEOptions()``: 16 RK4 steps per block.
        cond_dim: make the model conditional on a vector ``cond`` ``(B, cond_dim)`` (e.g. an
            observation embedding) that passes unchanged through every block; the OU chain acts
            on ``x`` only. The networks are called ``net(t, x, c)`` with ``c`` of shape
            ``(B, cond_dim + 1)``: the condition followed by a presence flag 1, or all zeros for
            the null condition (condition dropout in :meth:`fit`, guidance in :meth:`decode`).
            Default network: ``MLP(prod(shape), cond_features=cond_dim + 1)``.

    Raises:
        ValueError / TypeError: invalid shape, schedule or matcher, or a network whose output shape
            differs from its input shape.
    """

    def __init__(
        self,
        dim: Union[int, Sequence[int]],
        schedule: OUSchedule,
        matcher=None,
        velocity_factory: Optional[Callable[[int], nn.Module]] = None,
        *,
        t_beta: Optional[tuple[float, float]] = None,
        ode: Union[ODEOptions, str, dict, None] = None,
        cond_dim: Optional[int] = None,
    ):
        super().__init__()
        if not isinstance(schedule, OUSchedule):
            raise TypeError(f"schedule must be an OUSchedule, got {type(schedule).__name__}")
        if cond_dim is not None and (isinstance(cond_dim, bool) or not isinstance(cond_dim, int) or cond_dim < 1):
            raise ValueError(f"cond_dim must be a positive int or None, got {cond_dim!r}")
        self.cond_dim = cond_dim
        self.shape = _as_shape(dim)
        self.schedule = schedule
        self.matcher = default_matcher() if matcher is None else matcher
        LocalBlockMatcher(self.matcher, math.inf)  # validates the matcher type
        self.t_beta = _check_beta(t_beta)
        self.ode = ODEOptions.coerce(ode, ODEOptions())
        self.velocity_factory = velocity_factory
        self.nets = nn.ModuleList([self._build_net(n) for n in range(1, schedule.n_blocks + 1)])
        self._fields = [VelocityField(net) for net in self.nets]
        self._nodes: dict = {}
        self.n_trained = 0
        self.last_stats: Optional[IntegrationStats] = None

    # ------------------------------------------------------------------ construction helpers
    @property
    def n_blocks(self) -> int:
        return self.schedule.n_blocks

    @property
    def dim(self) -> int:
        """Flattened dimension ``prod(shape)``."""
        return int(np.prod(self.shape))

    @property
    def device(self) -> torch.device:
        return _device_of(self)

    @property
    def dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.get_default_dtype()

    def _build_net(self, n: int) -> nn.Module:
        if self.velocity_factory is None:
            net = MLP(self.dim, cond_features=0 if self.cond_dim is None else self.cond_dim + 1)
        else:
            net = self.velocity_factory(n)
        if not isinstance(net, nn.Module):
            raise TypeError(f"velocity_factory({n}) must return an nn.Module, got {type(net).__name__}")
        probe = torch.zeros(2, *self.shape, device=_device_of(net), dtype=next(net.parameters(), torch.zeros(())).dtype)
        field = VelocityField(net)
        if self.cond_dim is not None:
            if not field.takes_time:
                raise ValueError(f"velocity_factory({n}): a conditional model needs networks called as net(t, x, cond)")
            field.cond = torch.zeros(2, self.cond_dim + 1, device=probe.device, dtype=probe.dtype)
        try:
            with torch.no_grad():
                out = field(torch.tensor(0.5), probe)
        except Exception as err:
            raise ValueError(
                f"velocity_factory({n}) built a network that fails on input of shape {tuple(probe.shape)} "
                f"(t of shape (2,){'' if self.cond_dim is None else f', cond of shape (2, {self.cond_dim + 1})'}): {err}"
            ) from err
        if not isinstance(out, torch.Tensor) or out.shape != probe.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"velocity_factory({n}) built a network whose output {got} differs from its input "
                f"{tuple(probe.shape)}; a velocity must have the shape of x"
            )
        return net

    def field(self, n: int) -> VelocityField:
        """Block ``n``'s network as a torchdyn vector field ``f(t, x)`` (scalar or ``(B,)`` ``t``).

        Usable with torchdyn, :func:`torchcfm_local.likelihood.log_prob` or
        :func:`torchcfm_local.solvers.integrate` on a part of the block's time interval.
        """
        if not 1 <= n <= self.n_blocks:
            raise IndexError(f"block {n} is outside 1..{self.n_blocks}")
        return self._fields[n - 1]

    def block_matcher(self, n: int) -> LocalBlockMatcher:
        """The local-block matcher of block ``n`` (1-based)."""
        return LocalBlockMatcher(self.matcher, self.schedule.step(n), self.t_beta)

    # ------------------------------------------------------------------ input checks
    def _check_samples(self, x, name: str, min_count: int = 1) -> torch.Tensor:
        if isinstance(x, np.ndarray):  # also numpy.load(..., mmap_mode="r"): read in chunks, never written
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "not writable"
                x = torch.from_numpy(x)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert with .float()")
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"{name} must have shape (n, {', '.join(map(str, self.shape))}), got {tuple(x.shape)}")
        if x.shape[0] < min_count:
            raise ValueError(f"{name} must hold at least {min_count} sample(s), got {x.shape[0]}")
        chunk = max(1, 2**22 // max(1, x[0].numel()))  # bounded memory for memory-mapped data
        bad_rows = [torch.nonzero(~torch.isfinite(part.reshape(part.shape[0], -1)).all(1)).flatten() + i
                    for i, part in zip(range(0, x.shape[0], chunk), x.split(chunk))]
        bad_rows = torch.cat(bad_rows)
        if bad_rows.numel():
            raise ValueError(
                f"{name} contains NaN or Inf in {bad_rows.numel()} sample(s) (first at index {int(bad_rows[0])}); "
                "remove or impute them first"
            )
        return x

    def _check_cond(self, cond, n: int, name: str = "cond") -> Optional[torch.Tensor]:
        """``cond`` as a ``(n, cond_dim)`` float tensor (``None`` for an unconditional model)."""
        if self.cond_dim is None:
            if cond is not None:
                raise ValueError(f"this model is unconditional (cond_dim=None) but got {name}; build it with cond_dim=...")
            return None
        if cond is None:
            raise ValueError(f"this model is conditional (cond_dim={self.cond_dim}); pass {name} of shape (n, {self.cond_dim})")
        if isinstance(cond, np.ndarray):
            cond = torch.from_numpy(cond)
        if not isinstance(cond, torch.Tensor) or not cond.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {getattr(cond, 'dtype', type(cond).__name__)}")
        if cond.dim() < 1 or cond.shape[0] != n or cond[0].numel() != self.cond_dim:
            raise ValueError(
                f"{name} must have shape ({n}, {self.cond_dim}) (one row per sample), got {tuple(cond.shape)}"
            )
        if not torch.isfinite(cond).all():
            raise ValueError(f"{name} contains NaN or Inf")
        return cond.reshape(n, self.cond_dim)

    def _cond_input(self, cond: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The networks' conditioning ``(B, cond_dim + 1)``: condition and presence flag, zeroed where not ``keep``."""
        flag = torch.ones(cond.shape[0], 1, dtype=cond.dtype, device=cond.device)
        c = torch.cat([cond, flag], dim=1)
        return c if keep is None else c * keep.to(c.dtype)[:, None]

    def _require_trained(self, what: str):
        if self.n_trained < self.n_blocks:
            raise RuntimeError(
                f"cannot {what}: only {self.n_trained} of {self.n_blocks} blocks are trained; "
                "call fit() (or resume it) first"
            )

    # ------------------------------------------------------------------ integration
    def _node(self, n: int, ode: ODEOptions):
        key = (n, ode)
        if key not in self._nodes:
            node = build_node(self._fields[n - 1], ode)
            node.vf_params = None  # a flat copy of all weights torchdyn keeps for adjoints; unused with autograd
            self._nodes[key] = node
        return self._nodes[key]

    @torch.no_grad()
    def _transport(
        self,
        x: torch.Tensor,
        blocks: Sequence[int],
        to_data: bool,
        ode: ODEOptions,
        chunk_size: int,
        out=None,
        progress: Optional[str] = None,
        rows: Optional[tuple[int, int]] = None,
        nonfinite_error: Optional[str] = None,
        cond: Optional[torch.Tensor] = None,
        guidance: Optional[float] = None,
    ) -> tuple[torch.Tensor, list[float]]:
        """Carry ``x`` through ``blocks`` in order, chunk by chunk; returns (result, NFE per block).

        ``out`` may be ``x`` itself (in-place pushforward: no second copy of a large pool) or a
        :meth:`MemmapPool.target`. Only ``rows = (start, stop)`` are carried when given (a rank's
        shard). ``nonfinite_error``: raise ``FloatingPointError(nonfinite_error)`` on a NaN/Inf result.
        ``cond``: ``(len(x), cond_dim)`` conditions of the rows; ``guidance``: CFG scale.
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
        if out is None:
            out = torch.empty_like(x)
        start, stop = (0, x.shape[0]) if rows is None else rows
        device, dtype = self.device, self.dtype
        nfe = [0.0] * len(blocks)
        n_chunks = max(1, math.ceil((stop - start) / chunk_size))
        was_training = self.training
        self.eval()
        try:
            with _progress_bar(n_chunks, progress or "", progress is not None) as bar:
                for i in range(start, stop, chunk_size):
                    j = min(i + chunk_size, stop)
                    y = x[i:j].to(device, dtype)
                    c = None if cond is None else self._cond_input(cond[i:j].to(device, dtype))
                    for k, n in enumerate(blocks):
                        field = self._fields[n - 1]
                        field.nfe, field.cond, field.guidance = 0, c, guidance
                        t0, t1 = (0.0, 1.0) if to_data else (1.0, 0.0)
                        y = integrate(field, y, t0, t1, ode, self._node(n, ode))
                        nfe[k] += field.nfe / n_chunks
                    if nonfinite_error is not None and not torch.isfinite(y).all():
                        raise FloatingPointError(nonfinite_error)
                    out[i:j] = y.to(out.device, out.dtype)
                    bar.update(1)
        finally:
            self.train(was_training)
            for field in self._fields:
                field.cond = field.guidance = None
        return out, nfe

    def _default_chunk(self) -> int:
        return max(256, 2**20 // self.dim)

    def decode(self, z, *, ode=None, chunk_size: Optional[int] = None, blocks: Optional[Sequence[int]] = None,
               cond=None, guidance: Optional[float] = None) -> torch.Tensor:
        """Noise -> data: blocks N..1, each integrated from t = 0 to t = 1.

        Args:
            z: ``(B, *shape)`` noise samples.
            cond: ``(B, cond_dim)`` conditions (conditional models only).
            guidance: classifier-free guidance scale ``s``: the velocity is
                ``v(null) + s (v(cond) - v(null))`` (``None`` or 1: plain conditional sampling;
                meaningful for models fitted with ``cond_dropout > 0``).
            ode: :class:`ODEOptions`, solver name or dict overriding the model's default.
            chunk_size: samples integrated at once (bounds memory).
            blocks: run only these blocks (still from the highest to the lowest), e.g. ``[4, 3]``
                maps block 4's noise side to block 3's data side.

        Returns:
            ``(B, *shape)`` data-side samples, dtype and device of ``z``. NFE in :attr:`last_stats`.
        """
        z = self._check_samples(z, "z")
        cond = self._check_cond(cond, z.shape[0])
        if guidance is not None and (cond is None or not (isinstance(guidance, (int, float)) and math.isfinite(guidance))):
            raise ValueError(f"guidance needs a conditional model and a finite scale, got {guidance!r}")
        guidance = None if guidance in (None, 1, 1.0) else float(guidance)
        return self._run(z, blocks, True, ode, chunk_size, "decode", cond, guidance)

    def encode(self, x, *, ode=None, chunk_size: Optional[int] = None, blocks: Optional[Sequence[int]] = None,
               cond=None) -> torch.Tensor:
        """Data -> noise: blocks 1..N (or ``blocks``, lowest first), each integrated from t = 1 to t = 0.

        The inverse of :meth:`decode` (without guidance); same arguments.
        """
        x = self._check_samples(x, "x")
        return self._run(x, blocks, False, ode, chunk_size, "encode", self._check_cond(cond, x.shape[0]))

    def sample(
        self, n: int, *, ode=None, generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None,
        cond=None, guidance: Optional[float] = None,
    ) -> torch.Tensor:
        """Draw ``n`` samples: ``z ~ N(0, I)`` (from ``generator`` if given), then :meth:`decode`.

        A conditional model takes ``cond`` ``(n, cond_dim)``: one sample per row.
        """
        self._require_trained("sample")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        z = torch.randn((n, *self.shape), generator=generator, dtype=self.dtype)
        return self.decode(z, ode=ode, chunk_size=chunk_size, cond=cond, guidance=guidance)

    def _run(self, x, blocks, to_data: bool, ode, chunk_size, what: str, cond=None, guidance=None) -> torch.Tensor:
        if blocks is None:
            self._require_trained(what)
            blocks = range(1, self.n_blocks + 1)
        blocks = sorted(set(int(n) for n in blocks))
        if not blocks or blocks[0] < 1 or blocks[-1] > self.n_blocks:
            raise ValueError(f"blocks must be block numbers in 1..{self.n_blocks}, got {blocks}")
        if blocks[-1] > self.n_trained:
            raise RuntimeError(f"cannot {what} through block {blocks[-1]}: only blocks 1..{self.n_trained} are trained")
        ode = ODEOptions.coerce(ode, self.ode)
        chunk_size = self._default_chunk() if chunk_size is None else chunk_size
        start = time.perf_counter()
        order = blocks[::-1] if to_data else blocks
        out, nfe = self._transport(x, order, to_data, ode, chunk_size, cond=cond, guidance=guidance)
        if to_data:  # report in ascending block order
            nfe = nfe[::-1]
        self.last_stats = IntegrationStats(tuple(blocks), tuple(nfe), time.perf_counter() - start)
        return out

    # ------------------------------------------------------------------ likelihood
    def log_prob_terms(
        self,
        x,
        *,
        ode=None,
        estimator: str = "exact",
        chunk_size: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        cond=None,
    ) -> LogProbTerms:
        r"""Per-block terms of the log-density (paper eq. 26), in one pass over the blocks.

        .. math::
            \log p(x) = \log N(x_N; 0, I) + \sum_{n=1}^N \int_1^0 \nabla\cdot v_n(x_n(t), t)\, dt,

        where block n carries ``x_{n-1}`` (its data side, t = 1) to ``x_n`` (t = 0) and
        ``x_0 = x``. Each block is integrated once per sample: the cost is linear in N.

        Args:
            x: ``(B, *shape)`` data-side samples (floating, finite).
            ode: ODE options (default: the model's).
            estimator: ``"exact"`` (full Jacobian trace) or ``"hutchinson"`` (one Rademacher probe
                per sample and block, unbiased; for large dimensions).
            chunk_size: samples per integration.
            generator: random source of the Hutchinson probes.
            cond: ``(B, cond_dim)`` conditions (conditional models): the result is ``log p(x | cond)``.

        Returns:
            :class:`LogProbTerms` (``log_prob`` ``(B,)`` in nats, ``prior`` ``(B,)``, ``divergence``
            ``(N, B)``, ``nfe_per_block``).
        """
        from .likelihood import flow_divergence, standard_normal_log_prob

        self._require_trained("evaluate log_prob")
        x = self._check_samples(x, "x")
        cond = self._check_cond(cond, x.shape[0])
        ode = ODEOptions.coerce(ode, self.ode)
        chunk_size = max(1, self._default_chunk() // 8) if chunk_size is None else chunk_size
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        device, dtype = self.device, self.dtype
        prior = torch.empty(x.shape[0], dtype=torch.float64)
        div = torch.empty(self.n_blocks, x.shape[0], dtype=torch.float64)
        nfe = [0.0] * self.n_blocks
        n_chunks = math.ceil(x.shape[0] / chunk_size)
        was_training = self.training
        self.eval()
        try:
            for i in range(0, x.shape[0], chunk_size):
                y = x[i : i + chunk_size].to(device, dtype)
                c = None if cond is None else self._cond_input(cond[i : i + chunk_size].to(device, dtype))
                for n in range(1, self.n_blocks + 1):
                    self._fields[n - 1].cond = c
                    res = flow_divergence(self._fields[n - 1], y, t0=1.0, t1=0.0, options=ode,
                                          estimator=estimator, generator=generator)
                    y = res.x
                    div[n - 1, i : i + chunk_size] = res.div_integral.double().cpu()
                    nfe[n - 1] += res.nfe / n_chunks
                prior[i : i + chunk_size] = standard_normal_log_prob(y.double()).cpu()
        finally:
            self.train(was_training)
            for field in self._fields:
                field.cond = None
        return LogProbTerms(prior + div.sum(0), prior, div, tuple(nfe))

    def log_prob(self, x, **kwargs) -> torch.Tensor:
        """``(B,)`` log-density of ``x`` in nats (float64); keyword arguments as in :meth:`log_prob_terms`."""
        return self.log_prob_terms(x, **kwargs).log_prob

    # ------------------------------------------------------------------ training
    def train_blocks(
        self,
        x,
        *,
        pushforward_ode=None,
        chunk_size: Optional[int] = None,
        warm_start: bool = False,
        progress: bool = True,
        pool_dir: Union[str, Path, None] = None,
        cond=None,
    ) -> Iterator[BlockTrainer]:
        """Block-wise training with your own loop: yields one :class:`BlockTrainer` per block.

        Train ``trainer.model`` inside the loop body; when the body ends, the block is marked
        trained and the pool is pushed through it (data -> noise) to become the next block's data.

        Example::

            for block in lfm.train_blocks(x_train):
                opt = torch.optim.Adam(block.model.parameters())
                for _ in range(1000):
                    opt.zero_grad(); block.loss(block.data(256)).backward(); opt.step()

        A conditional model takes ``cond`` ``(n, cond_dim)`` aligned with ``x``; draw batches with
        ``x1, c = block.batch(256)`` and pass ``block.loss(x1, cond=c)``.

        ``pool_dir`` keeps the pool in memory-mapped files (see :meth:`fit`). In a running
        ``torch.distributed`` process group the pushforward is sharded over the ranks; the
        training loop (and wrapping ``block.model`` in ``DistributedDataParallel``) is yours.
        """
        ode = ODEOptions.coerce(pushforward_ode, PUSHFORWARD_ODE)
        chunk_size = self._default_chunk() if chunk_size is None else chunk_size
        dist = dist_context(self.device, init=False)
        x = self._check_samples(x, "training data", min_count=2)
        cond = self._check_training_cond(cond, x.shape[0])
        pool = self._initial_pool(x, ode, chunk_size, pool_dir, dist, cond=cond)
        for n in range(self.n_trained + 1, self.n_blocks + 1):
            if warm_start and n > 1:
                self._warm_start(n)
            self.nets[n - 1].train()
            yield self._trainer(n, pool, cond)
            self.n_trained = n
            if n < self.n_blocks:
                self._push_pool(n, pool, ode, chunk_size, progress, stats=False, dist=dist, cond=cond)

    def _check_training_cond(self, cond, n: int) -> Optional[torch.Tensor]:
        cond = self._check_cond(cond, n)
        if cond is not None and getattr(self.matcher, "ot_sampler", None) is not None:
            raise ValueError(
                f"{type(self.matcher).__name__} re-pairs samples within a batch, which would separate actions "
                "from their conditions; use a matcher without minibatch OT for a conditional model"
            )
        return None if cond is None else cond.to(self.dtype)

    def _initial_pool(
        self, x, ode: ODEOptions, chunk_size: int, pool_dir=None, dist: DistContext = DistContext(),
        fingerprint: Optional[list] = None, run_id: Optional[str] = None, cond: Optional[torch.Tensor] = None,
    ):
        """The training data pushed through the blocks already trained: a private tensor copy of
        ``x``, or a :class:`MemmapPool` in ``pool_dir`` (reused when it holds ``x``, or ``x`` pushed
        through some of the trained blocks by the same run ``run_id``). ``x`` is already checked."""
        if pool_dir is None:
            pool = x.to(dtype=self.dtype, copy=True)
            done = 0
        else:
            pool = self._memmap_pool(Path(pool_dir), x, chunk_size, dist, fingerprint or _fingerprint(x), run_id)
            done = pool.after_block
        for n in range(done + 1, self.n_trained + 1):  # block by block, as during training: same chunks, same result
            self._push_pool(n, pool, ode, chunk_size, progress=False, stats=False, dist=dist, cond=cond)
        return pool

    def _memmap_pool(self, pool_dir: Path, x: torch.Tensor, chunk_size: int, dist: DistContext,
                     fingerprint: list, run_id: Optional[str]) -> MemmapPool:
        """Open the pool in ``pool_dir`` if it holds ``x`` (or ``x`` pushed through some of the trained
        blocks by run ``run_id``), else fill a new one with ``x``. Rank 0 decides; every rank checks
        that it sees the same directory."""
        token, shape = dist.new_token(), (x.shape[0], *self.shape)
        reuse = False
        if dist.is_main:
            MemmapPool.check_dir(pool_dir)
            pool = None
            try:
                pool = MemmapPool.open(pool_dir)
            except PoolDirError:
                pass  # absent or damaged: our own scratch directory, rebuilt below
            reuse = (pool is not None and pool.shape == shape and pool.dtype == self.dtype
                     and np.allclose(pool.meta["fingerprint"], fingerprint, rtol=1e-9, atol=1e-6)
                     and (pool.after_block == 0 or (
                         run_id is not None and pool.meta.get("run") == run_id
                         and pool.after_block is not None and pool.after_block <= self.n_trained)))
            if reuse:
                pool.meta.update(token=token, run=run_id)
                pool._write_meta()
            else:
                pool = MemmapPool.create(pool_dir, shape, self.dtype, fingerprint, token, run_id)
        reuse = dist.broadcast_object(reuse)
        dist.barrier()
        if not dist.is_main:
            try:
                pool = MemmapPool.open(pool_dir)
            except PoolDirError as err:
                raise PoolDirError(f"rank {dist.rank} cannot read the pool rank 0 wrote: {err}") from err
            if pool.meta.get("token") != token:
                raise PoolDirError(
                    f"rank {dist.rank} sees another pool in {pool_dir} than rank 0: pool_dir must be one "
                    "directory shared by all ranks (one machine, or a shared filesystem)"
                )
        if not reuse:
            start, stop = shard(x.shape[0], dist.rank, dist.world)
            target = pool.target()
            for i in range(start, stop, chunk_size):
                j = min(i + chunk_size, stop)
                target[i:j] = x[i:j]
            self._commit(pool, 0, chunk_size, dist)
        return pool

    @staticmethod
    def _commit(pool, after_block: int, chunk_size: int, dist: DistContext):
        """Finish a sharded write of ``pool``: every rank sees every row afterwards."""
        if isinstance(pool, MemmapPool):
            dist.barrier()  # all rows are in the file
            pool.commit(after_block, write_meta=dist.is_main)
            dist.barrier()
        else:
            dist.share_rows(pool, chunk_size)

    def _trainer(self, n: int, pool, cond: Optional[torch.Tensor] = None) -> BlockTrainer:
        return BlockTrainer(n, self.schedule.step(n), self.nets[n - 1], self._fields[n - 1], self.block_matcher(n), pool,
                            cond, self._cond_input)

    def _warm_start(self, n: int):
        self.nets[n - 1].load_state_dict(self.nets[n - 2].state_dict())

    def _push_pool(self, n: int, pool, ode: ODEOptions, chunk_size: int, progress: bool,
                   stats: bool = True, dist: DistContext = DistContext(), cond: Optional[torch.Tensor] = None):
        """Push ``pool`` through block ``n`` (in place, or into a memory-mapped pool's other buffer),
        each rank its shard; returns (seconds, NFE, PoolStats or None)."""
        start = time.perf_counter()
        desc = f"block {n}/{self.n_blocks} pushforward" if progress and dist.is_main else None
        out = pool.target() if isinstance(pool, MemmapPool) else pool
        _, nfe = self._transport(
            pool, [n], False, ode, chunk_size, out=out, progress=desc, rows=shard(pool.shape[0], dist.rank, dist.world),
            nonfinite_error=f"pushing the pool through block {n} produced NaN/Inf; the block's training diverged "
            "(lower the learning rate or the step size h)", cond=cond,
        )
        self._commit(pool, n, chunk_size, dist)
        summary = dist.broadcast_object(pool_stats(pool) if stats and dist.is_main else None)
        return time.perf_counter() - start, nfe[0], summary

    def _check_warm_start(self):
        for n in range(2, self.n_blocks + 1):
            prev = {k: v.shape for k, v in self.nets[n - 2].state_dict().items()}
            cur = {k: v.shape for k, v in self.nets[n - 1].state_dict().items()}
            if prev != cur:
                raise ValueError(
                    f"warm_start=True needs blocks with identical architectures, but blocks {n - 1} and {n} differ; "
                    "pass warm_start=False"
                )

    def fit(
        self,
        x,
        *,
        batches_per_block: Union[int, Sequence[int]] = 1000,
        batch_size: int = 256,
        lr: float = 1e-3,
        lr_decay: Optional[str] = None,
        weight_decay: float = 0.0,
        grad_clip: Optional[float] = None,
        warm_start: bool = True,
        seed: Optional[int] = None,
        checkpoint_dir: Union[str, Path, None] = None,
        checkpoint_every: int = 500,
        resume: bool = False,
        pushforward_ode=None,
        chunk_size: Optional[int] = None,
        encode_final_pool: bool = True,
        progress: bool = True,
        callback: Optional[Callable[[int, int, float], None]] = None,
        pool_dir: Union[str, Path, None] = None,
        cond=None,
        cond_dropout: float = 0.0,
        warmup: int = 0,
        ema_decay: Optional[float] = None,
        amp: bool = False,
    ) -> FitReport:
        """Train all blocks in order (Algorithm 1 of the paper).

        For block n: a fresh Adam optimizer; ``batches_per_block`` steps on batches drawn uniformly
        (with replacement) from the current pool, each paired with its OU partner by the block's
        matcher; then the whole pool is pushed through block n in chunks of ``chunk_size``, in place.

        Data-parallel when launched with ``torchrun --nproc_per_node=K`` (or inside an initialized
        ``torch.distributed`` process group): every rank calls ``fit`` with the same ``x`` and
        settings, trains on its ``batch_size / K`` share of each batch under
        ``DistributedDataParallel`` and pushes its shard of the pool; rank 0 alone writes
        checkpoints, and all ranks read them on ``resume``. See :mod:`torchcfm_local.distributed`.

        Args:
            x: training data ``(n, *shape)``, floating point, finite, ``n >= batch_size`` (a tensor,
                or a numpy array, e.g. ``numpy.load(path, mmap_mode="r")`` for data larger than RAM).
            batches_per_block: optimizer steps per block (an int, or one per block).
            batch_size: samples per step (over all ranks; divisible by their number). Must not
                exceed the number of training samples.
            lr, weight_decay: Adam(W) settings (AdamW when ``weight_decay > 0``).
            lr_decay: ``None`` (constant) or ``"cosine"`` (to 0 over each block).
            grad_clip: max gradient norm, or ``None``.
            warm_start: start block n from block n-1's weights (needs identical architectures).
            seed: seeds batch indices, noise and times; ``None`` draws one from torch's global RNG,
                so ``torch.manual_seed`` makes ``fit`` reproducible.
            checkpoint_dir: where to keep ``model.pt`` (after every block), ``pool.pt`` (the pool
                for the next block, unless ``pool_dir`` holds it) and ``progress.pt`` (every
                ``checkpoint_every`` batches).
            resume: continue the run in ``checkpoint_dir`` (finished blocks are not redone; an
                interrupted block restarts from its last ``progress.pt``). Starts fresh if the
                directory holds no run. Without it, a directory that holds a run is an error.
            pushforward_ode: ODE options of the pool pushforward (default :data:`PUSHFORWARD_ODE`).
            chunk_size: samples per pushforward chunk (bounds memory).
            encode_final_pool: also push the pool through the last block to report how close the
                encoded training data is to N(0, I).
            progress: show progress bars.
            callback: ``callback(block, batches_done, loss)`` after every optimizer step (``loss``
                is the mean over ranks).
            pool_dir: keep the pool in memory-mapped files in this directory (new, empty, or an
                earlier pool) instead of memory; peak memory of the pushforward is then bounded by
                ``chunk_size`` (:mod:`torchcfm_local.pool`). A resumed run reuses the pool there.
            cond: conditions ``(n, cond_dim)``, one per row of ``x`` (conditional models only);
                they stay attached to their rows through every block.
            cond_dropout: probability of replacing a training row's condition by the null
                condition, which enables classifier-free guidance at sampling time.
            warmup: batches of linear learning-rate warm-up at the start of every block.
            ema_decay: keep an exponential moving average of each block's weights (e.g. 0.9999)
                and make it the block's final weights, used for the pushforward and sampling.
            amp: bfloat16 autocast of the forward pass (CUDA models only).

        Returns:
            :class:`FitReport` with one :class:`BlockReport` per block trained by this call.
        """
        start_time = time.perf_counter()
        x = self._check_samples(x, "training data", min_count=2)
        per_block = self._check_budget(batches_per_block)
        for name, value in (("batch_size", batch_size), ("checkpoint_every", checkpoint_every),
                            ("chunk_size", 1 if chunk_size is None else chunk_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if pool_dir is not None:
            MemmapPool.check_dir(pool_dir)
        cond = self._check_training_cond(cond, x.shape[0])
        if not (isinstance(cond_dropout, (int, float)) and 0 <= cond_dropout < 1):
            raise ValueError(f"cond_dropout must be in [0, 1), got {cond_dropout!r}")
        if cond_dropout and cond is None:
            raise ValueError("cond_dropout needs a conditional model and cond")
        if batch_size > x.shape[0]:
            raise ValueError(
                f"batch_size={batch_size} exceeds the {x.shape[0]} training samples; use batch_size <= {x.shape[0]}"
            )
        if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive finite number, got {lr!r}")
        if lr_decay not in (None, "cosine"):
            raise ValueError(f"lr_decay must be None or 'cosine', got {lr_decay!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
        if ema_decay is not None and not (isinstance(ema_decay, float) and 0 < ema_decay < 1):
            raise ValueError(f"ema_decay must be a float in (0, 1) or None, got {ema_decay!r}")
        if amp and self.device.type != "cuda":
            raise ValueError(f"amp=True needs a model on a CUDA device; this one is on {self.device}")
        if warm_start:
            self._check_warm_start()
        ode = ODEOptions.coerce(pushforward_ode, PUSHFORWARD_ODE)
        chunk_size = self._default_chunk() if chunk_size is None else chunk_size
        device = self.device
        dist = dist_context(device)
        if batch_size % dist.world:
            raise ValueError(f"batch_size={batch_size} must be divisible by the number of ranks ({dist.world})")
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)))
        seed = dist.broadcast_object(seed)
        hyper = {
            "batches_per_block": per_block, "batch_size": batch_size, "lr": float(lr), "lr_decay": lr_decay,
            "weight_decay": float(weight_decay), "grad_clip": grad_clip, "warm_start": warm_start,
            "chunk_size": chunk_size, "pushforward_ode": [ode.solver, ode.atol, ode.rtol, ode.steps],
            "world_size": dist.world, "cond_dropout": float(cond_dropout),
            "warmup": warmup, "ema_decay": ema_decay, "amp": bool(amp),
        }
        ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
        fingerprint = _fingerprint(x) + ([] if cond is None else _fingerprint(cond))
        self._check_ranks_agree(dist, {"training data": fingerprint, "settings": hyper,
                                       "trained blocks": self.n_trained, "resume": resume})
        gen_idx = torch.Generator().manual_seed(seed)
        gen_noise = torch.Generator(device=device).manual_seed(seed + 1)

        pool, progress_state, reports = None, None, []
        run_id = dist.new_token()
        has_run = dist.broadcast_object(ckpt is not None and (ckpt / _MODEL_FILE).exists())
        if has_run:
            if not resume:
                raise FileExistsError(
                    f"{ckpt} already holds a training run; pass resume=True to continue it or choose another checkpoint_dir"
                )
            state = self._restore_run(ckpt, hyper, fingerprint)
            seed, run_id = state["seed"], state.get("run_id")
            gen_idx.set_state(state["gen_idx"])
            gen_noise.set_state(state["gen_noise"])
            if pool_dir is None:
                pool = self._load_pool(ckpt, x)
            progress_state = self._load_progress(ckpt)
        elif self.n_trained and not resume:
            raise RuntimeError(
                f"{self.n_trained} block(s) are already trained; call fit(..., resume=True) to train the rest"
            )
        if pool is None:
            pool = self._initial_pool(x, ode, chunk_size, pool_dir, dist, fingerprint, run_id, cond)

        def save_run():  # finished blocks + what a resume needs to continue identically (rank 0 only)
            if dist.is_main:
                fit_state = {"seed": seed, "hyper": hyper, "fingerprint": fingerprint, "run_id": run_id,
                             "gen_idx": gen_idx.get_state(), "gen_noise": gen_noise.get_state().cpu()}
                atomic_save(self._state(fit_state), ckpt / _MODEL_FILE)

        if ckpt is not None and not has_run:
            save_run()  # marks the directory as holding this run from the first batch on

        # this rank's rows of every batch: all ranks draw the whole batch alike and take their share
        lo, hi = shard(batch_size, dist.rank, dist.world)
        for n in range(self.n_trained + 1, self.n_blocks + 1):
            trainer = self._trainer(n, pool, cond)
            net = trainer.model
            params = list(net.parameters())
            opt = (torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay) if weight_decay > 0
                   else torch.optim.Adam(params, lr=lr))
            step, losses, train_seconds, ema = 0, [], 0.0, None
            if progress_state is not None and progress_state["block"] == n:
                net.load_state_dict(progress_state["net"])
                ema = progress_state.get("ema")
                opt.load_state_dict(progress_state["opt"])
                gen_idx.set_state(progress_state["gen_idx"])
                gen_noise.set_state(progress_state["gen_noise"])
                step, losses = progress_state["step"], list(progress_state["losses"])
                train_seconds = progress_state["train_seconds"]
            elif warm_start and n > 1:
                self._warm_start(n)
            resumed_from = step
            total = per_block[n - 1]
            if ema_decay is not None and ema is None:
                ema = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}
            # state_dict tensors share storage with the weights the optimizer updates in place
            ema_pairs = [] if ema is None else [(avg, net.state_dict()[k]) for k, avg in ema.items()]
            net.train()
            field = trainer.field
            if dist.active:  # gradients averaged over ranks
                from torch.nn.parallel import DistributedDataParallel

                ddp = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
                field = VelocityField(ddp, takes_time=trainer.field.takes_time)
            bar = _progress_bar(total, f"block {n}/{self.n_blocks} train", progress and dist.is_main, initial=step)
            tick = time.perf_counter()
            try:
                while step < total:
                    if lr_decay is not None or warmup:
                        for group in opt.param_groups:
                            group["lr"] = lr * lr_factor(step, total, lr_decay, warmup)
                    idx = torch.randint(0, pool.shape[0], (batch_size,), generator=gen_idx)
                    x1 = pool[idx[lo:hi]].to(device)
                    z, t = trainer.draw(batch_size, x1, gen_noise)
                    c = None
                    if cond is not None:
                        keep = None
                        if cond_dropout:
                            keep = torch.rand(batch_size, generator=gen_noise, device=device)[lo:hi] >= cond_dropout
                        c = self._cond_input(cond[idx[lo:hi]].to(device), keep)
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        loss = trainer.loss_at(x1, z[lo:hi], t[lo:hi], field, cond=c)
                    loss_value = dist.mean(loss.detach()).item()
                    if not math.isfinite(loss_value):
                        raise FloatingPointError(
                            f"block {n}: loss became {loss_value} at batch {step + 1}; finished blocks are kept"
                            + (f" in {ckpt}" if ckpt else "") + ". Lower lr or set grad_clip."
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, grad_clip)
                    opt.step()
                    with torch.no_grad():  # ema <- decay * ema + (1 - decay) * weights
                        for avg, weight in ema_pairs:
                            avg.lerp_(weight, 1 - ema_decay)
                    step += 1
                    losses.append(loss_value)
                    bar.update(1)
                    if step % 50 == 0 or step == total:
                        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
                    if callback is not None:
                        callback(n, step, losses[-1])
                    # also at the last batch: a kill during the pushforward then keeps the trained block
                    if ckpt is not None and dist.is_main and (step % checkpoint_every == 0 or step == total):
                        atomic_save({
                            **header("progress"), "block": n, "step": step, "net": net.state_dict(),
                            "opt": opt.state_dict(), "gen_idx": gen_idx.get_state(),
                            "gen_noise": gen_noise.get_state(), "losses": losses, "ema": ema,
                            "train_seconds": train_seconds + time.perf_counter() - tick,
                        }, ckpt / _PROGRESS_FILE)
            finally:
                bar.close()
            if ema is not None:  # the averaged weights become the block
                net.load_state_dict({**net.state_dict(), **ema})
            train_seconds += time.perf_counter() - tick
            self.n_trained = n
            report = BlockReport(n, self.schedule.step(n), step, losses, train_seconds, resumed_from=resumed_from)
            if n < self.n_blocks or encode_final_pool:
                report.pushforward_seconds, report.pushforward_nfe, report.pool = self._push_pool(
                    n, pool, ode, chunk_size, progress, dist=dist, cond=cond
                )
            reports.append(report)
            if ckpt is not None and dist.is_main:
                if n < self.n_blocks and pool_dir is None:
                    atomic_save({**header("pool"), "after_block": n, "fingerprint": fingerprint, "pool": pool}, ckpt / _POOL_FILE)
                save_run()
                (ckpt / _PROGRESS_FILE).unlink(missing_ok=True)
        return FitReport(reports, seed, time.perf_counter() - start_time, str(ckpt) if ckpt else None)

    @staticmethod
    def _check_ranks_agree(dist: DistContext, values: dict):
        """Every rank must call ``fit`` with the same data and settings; say which differ."""
        if not dist.active:
            return
        seen = dist.gather_objects(values)
        bad = sorted({key for other in seen[1:] for key in values if other[key] != seen[0][key]})
        if bad:
            detail = "; ".join(f"{key}: " + ", ".join(f"rank {r}: {v[key]!r}" for r, v in enumerate(seen)) for key in bad)
            raise ValueError(f"all ranks must call fit with the same data and settings, but they differ in {detail}")

    def _check_budget(self, batches_per_block) -> list[int]:
        if isinstance(batches_per_block, int) and not isinstance(batches_per_block, bool):
            per_block = [batches_per_block] * self.n_blocks
        else:
            per_block = list(batches_per_block)
            if len(per_block) != self.n_blocks:
                raise ValueError(
                    f"batches_per_block must be an int or one int per block ({self.n_blocks}), got {len(per_block)} values"
                )
        if any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in per_block):
            raise ValueError(f"batches_per_block must be positive ints, got {batches_per_block!r}")
        return per_block

    # ------------------------------------------------------------------ checkpoints
    def _state(self, fit_state: Optional[dict] = None) -> dict:
        from torchcfm import conditional_flow_matching as cfm

        matcher_cls = type(self.matcher).__name__
        return {
            **header("model"),
            "shape": list(self.shape),
            "schedule": self.schedule.to_list(),
            "matcher": {
                "class": matcher_cls if getattr(cfm, matcher_cls, None) is type(self.matcher) else None,
                "sigma": float(getattr(self.matcher, "sigma", 0.0)),
            },
            "t_beta": list(self.t_beta) if self.t_beta else None,
            "cond_dim": self.cond_dim,
            "ode": {"solver": self.ode.solver, "atol": self.ode.atol, "rtol": self.ode.rtol, "steps": self.ode.steps},
            "nets": [network_spec(net) for net in self.nets],
            "weights": [net.state_dict() for net in self.nets],
            "n_trained": self.n_trained,
            "fit_state": fit_state,
        }

    def save(self, path: Union[str, Path]) -> None:
        """Write the model (all blocks, trained or not, with ``n_trained``) to ``path`` atomically."""
        atomic_save(self._state(), path)

    @classmethod
    def load(
        cls,
        path: Union[str, Path],
        *,
        velocity_factory: Optional[Callable[[int], nn.Module]] = None,
        matcher=None,
        map_location="cpu",
    ) -> "LocalFlowMatching":
        """Read a model written by :meth:`save` (or a ``fit`` checkpoint's ``model.pt``).

        Built-in networks (:data:`torchcfm_local.networks.NETWORKS`) and torchcfm matchers are
        rebuilt from the file; for custom networks pass the same ``velocity_factory`` as in
        training, for a non-torchcfm matcher pass ``matcher``. Only tensors and plain data are read
        (``weights_only=True``).

        Raises:
            FileNotFoundError: no file.
            CheckpointError (a ValueError): corrupt/foreign/newer file, or weights that do not fit.
        """
        return cls.from_state(safe_load(path, "model", map_location), velocity_factory=velocity_factory,
                              matcher=matcher, source=str(path))

    @classmethod
    def from_state(cls, state: dict, *, velocity_factory=None, matcher=None, source: str = "the state") -> "LocalFlowMatching":
        """A model from the dict that :meth:`save` writes (e.g. embedded in a larger checkpoint)."""
        path = source
        try:
            shape, steps, specs = tuple(state["shape"]), state["schedule"], state["nets"]
            weights, n_trained = state["weights"], int(state["n_trained"])
            matcher_spec, ode = state["matcher"], state["ode"]
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path} is a torchcfm_local model file with missing fields: {err}") from err
        if matcher is None:
            if matcher_spec.get("class") is None:
                raise ValueError(f"{path} was trained with a custom matcher; pass matcher= to load it")
            from torchcfm import conditional_flow_matching as cfm

            matcher = getattr(cfm, matcher_spec["class"])(sigma=matcher_spec["sigma"])
        if velocity_factory is None:
            missing = [n for n, spec in enumerate(specs, 1) if spec is None]
            if missing:
                raise ValueError(
                    f"{path} uses custom velocity networks (blocks {missing}); pass the velocity_factory used in training"
                )

            def velocity_factory(n):
                spec = specs[n - 1]
                return NETWORKS[spec["type"]](**spec["config"])

        model = cls(shape, OUSchedule.from_steps(steps), matcher, velocity_factory,
                    t_beta=state.get("t_beta"), ode=ODEOptions(**ode), cond_dim=state.get("cond_dim"))
        if len(weights) != model.n_blocks:
            raise CheckpointError(f"{path} holds {len(weights)} blocks but its schedule has {model.n_blocks}")
        for n, (net, sd) in enumerate(zip(model.nets, weights), 1):
            try:
                net.load_state_dict(sd)
            except RuntimeError as err:
                raise CheckpointError(f"{path}: block {n}'s weights do not fit its network: {err}") from err
        model.n_trained = n_trained
        model._fit_state = state.get("fit_state")
        return model

    def _restore_run(self, ckpt: Path, hyper: dict, fingerprint: list) -> dict:
        """Load finished blocks from ``ckpt/model.pt`` into this model; return the run's fit state."""
        saved = LocalFlowMatching.load(ckpt / _MODEL_FILE, velocity_factory=self.velocity_factory, matcher=self.matcher)
        if saved.shape != self.shape or saved.schedule != self.schedule or saved.cond_dim != self.cond_dim:
            raise ValueError(
                f"{ckpt} holds a run of shape {saved.shape}, cond_dim {saved.cond_dim} with {saved.schedule!r}; "
                f"this model has shape {self.shape}, cond_dim {self.cond_dim} with {self.schedule!r}"
            )
        state = saved._fit_state
        if not state:
            raise CheckpointError(f"{ckpt / _MODEL_FILE} is a saved model, not a fit checkpoint")
        if not np.allclose(state["fingerprint"], fingerprint, rtol=1e-9, atol=1e-6):
            raise ValueError(f"{ckpt} was trained on other data (different size or values); resume with the same x")
        saved_hyper = {"world_size": 1, "cond_dropout": 0.0, "warmup": 0, "ema_decay": None, "amp": False,
                       **state["hyper"]}  # files from older versions
        changed = sorted(k for k in hyper if saved_hyper.get(k) != hyper[k])
        if changed:
            diffs = ", ".join(f"{k}: {saved_hyper.get(k)!r} -> {hyper[k]!r}" for k in changed)
            hint = (f" (relaunch with torchrun --nproc_per_node={saved_hyper['world_size']})"
                    if "world_size" in changed else "")
            raise ValueError(f"resume must use the run's settings; changed: {diffs}{hint}")
        self.load_state_dict(saved.state_dict())
        self.n_trained = saved.n_trained
        return state

    def _load_pool(self, ckpt: Path, x: torch.Tensor) -> Optional[torch.Tensor]:
        if self.n_trained == 0 or self.n_trained == self.n_blocks:
            return None
        path = ckpt / _POOL_FILE
        try:
            saved = safe_load(path, "pool")
            if saved["after_block"] == self.n_trained and saved["pool"].shape[0] == x.shape[0]:
                return saved["pool"].to(self.dtype)
        except (FileNotFoundError, CheckpointError):
            pass
        # The pool file is missing or from an earlier block: recompute it (deterministic).
        return None

    def _load_progress(self, ckpt: Path) -> Optional[dict]:
        path = ckpt / _PROGRESS_FILE
        if not path.exists():
            return None
        state = safe_load(path, "progress")
        return state if state["block"] == self.n_trained + 1 else None

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, cond_dim={self.cond_dim}, blocks={self.n_blocks} ({self.n_trained} trained), "
                f"matcher={type(self.matcher).__name__}, ode={self.ode.solver}")
