"""The LFM model: N local blocks chained for sampling, encoding and likelihoods.

Block ``n`` (1-based; block 1 touches the data) carries its own velocity network ``v_n(t, x)``,
``t`` in [0, 1], integrated with a torchdyn ``NeuralODE``. Time runs from the noise side (t = 0)
to the data side (t = 1) in every block (torchcfm's convention, see :mod:`.matchers`), so

* ``decode(z)``: blocks N, N-1, ..., 1, each from t = 0 to t = 1 (noise -> data);
* ``encode(x)``: blocks 1, ..., N, each from t = 1 to t = 0 (data -> noise);
* ``fit(x)``: Algorithm 1 of the paper (:mod:`torchcfm_local.training`): train block n on pairs
  (pool sample, its OU partner), then push the whole pool through block n (an encode step) to
  get block n+1's pool. An optional affine map (:mod:`.standardize`) sits in front of block 1.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from . import inputs
from ._checks import positive_int
from .checkpoint import atomic_save, safe_load
from .matchers import LocalBlockMatcher, _check_beta, default_matcher
from .networks import MLP
from .reports import FitReport, IntegrationStats, LogProbTerms
from .schedule import OUSchedule
from .solvers import ODEOptions, VelocityField, integrate
from .standardize import Standardizer
from .training.loop import progress_bar

if TYPE_CHECKING:
    from .training import BlockTrainer

__all__ = ["LocalFlowMatching", "CHUNK_ROWS"]

#: Most rows integrated at once by default (encode, decode, log_prob, the training pushforward), by
#: device type: on the CPU, networks evaluate faster per row on batches whose activations stay in
#: the caches; ``benchmarks/bench_chunk.py`` measures it (``benchmarks/results/chunk.md``).
CHUNK_ROWS = {"cpu": 2048, "other": 8192}  # accelerators: not measured here, kept at the former default


def _device_of(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


class LocalFlowMatching(nn.Module):
    """Local Flow Matching (Xu, Cheng & Xie, arXiv 2410.02548): a chain of N flow blocks.

    Args:
        dim: data dimension (``int``) or sample shape (tuple, e.g. ``(3, 32, 32)`` or ``(16, 7)``).
        schedule: the OU block schedule (:class:`OUSchedule`); default ``OUSchedule()`` (3 blocks,
            see there). ``OUSchedule.global_flow()`` is plain flow matching with one network.
        matcher: any torchcfm conditional matcher; default: the linear path
            ``ConditionalFlowMatcher(sigma=0)`` (:func:`~torchcfm_local.matchers.default_matcher`).
        velocity_factory: ``n -> nn.Module`` building block ``n``'s velocity network (1-based), called as
            ``net(t, x)`` with ``t`` of shape ``(B,)``, or ``net(cat([x, t[:, None]]))`` when its ``forward``
            takes one argument (torchcfm's ``MLP``). Default: ``MLP(prod(shape), width=256, depth=3)``.
            ``SharedVelocity(...).block`` makes every block a view of one network (:mod:`.shared`).
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
        schedule: Optional[OUSchedule] = None,
        matcher=None,
        velocity_factory: Optional[Callable[[int], nn.Module]] = None,
        *,
        t_beta: Optional[tuple[float, float]] = None,
        ode: Union[ODEOptions, str, dict, None] = None,
        cond_dim: Optional[int] = None,
    ):
        super().__init__()
        schedule = OUSchedule() if schedule is None else schedule
        if not isinstance(schedule, OUSchedule):
            raise TypeError(f"schedule must be an OUSchedule, got {type(schedule).__name__}")
        self.cond_dim = positive_int(cond_dim, "cond_dim", allow_none=True)
        self.shape = inputs.as_shape(dim)
        self.schedule = schedule
        self.matcher = default_matcher() if matcher is None else matcher
        LocalBlockMatcher(self.matcher, math.inf)  # validates the matcher type
        self.t_beta = _check_beta(t_beta)
        self.ode = ODEOptions.coerce(ode, ODEOptions())
        self.velocity_factory = velocity_factory
        self.nets = nn.ModuleList([self._build_net(n) for n in range(1, schedule.n_blocks + 1)])
        self._fields = [VelocityField(net) for net in self.nets]
        self.n_trained = 0
        self.standardizer = Standardizer()  # data -> the blocks' space; fitted by fit(standardize=...)
        self.last_stats: Optional[IntegrationStats] = None
        self.fit_state: Optional[dict] = None  # the run state of a model read from a fit checkpoint

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
        cond_features = 0 if self.cond_dim is None else self.cond_dim + 1
        net = (self.velocity_factory or (lambda n: MLP(self.dim, cond_features=cond_features)))(n)
        if not isinstance(net, nn.Module):
            raise TypeError(f"velocity_factory({n}) must return an nn.Module, got {type(net).__name__}")
        probe = torch.zeros(2, *self.shape, device=_device_of(net), dtype=next(net.parameters(), torch.zeros(())).dtype)
        field = VelocityField(net)
        if self.cond_dim is not None:
            if not field.takes_time:
                raise ValueError(f"velocity_factory({n}): a conditional model needs networks called as net(t, x, cond)")
            field = field.bind(torch.zeros(2, self.cond_dim + 1, device=probe.device, dtype=probe.dtype))
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
    def check_samples(self, x, name: str, min_count: int = 1) -> torch.Tensor:
        """``x`` as a floating ``(n, *shape)`` tensor of finite rows (see :func:`inputs.check_samples`)."""
        return inputs.check_samples(x, self.shape, name, min_count)

    def check_cond(self, cond, n: int, name: str = "cond") -> Optional[torch.Tensor]:
        """``cond`` as a ``(n, cond_dim)`` float tensor (``None`` for an unconditional model)."""
        return inputs.check_cond(cond, n, self.cond_dim, name)

    def check_training_cond(self, cond, n: int) -> Optional[torch.Tensor]:
        """:meth:`check_cond` for training, where a matcher must not re-pair rows within a batch."""
        cond = self.check_cond(cond, n)
        if cond is not None and getattr(self.matcher, "ot_sampler", None) is not None:
            raise ValueError(
                f"{type(self.matcher).__name__} re-pairs samples within a batch, which would separate actions "
                "from their conditions; use a matcher without minibatch OT for a conditional model"
            )
        return None if cond is None else cond.to(self.dtype)

    def _require_trained(self, what: str):
        if self.n_trained < self.n_blocks:
            raise RuntimeError(
                f"cannot {what}: only {self.n_trained} of {self.n_blocks} blocks are trained; "
                "call fit() (or resume it) first"
            )

    # ------------------------------------------------------------------ integration
    @torch.no_grad()
    def transport(
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
        standardize: bool = False,
    ) -> tuple[torch.Tensor, list[float]]:
        """Carry ``x`` through ``blocks`` in order, chunk by chunk; returns (result, NFE per block).

        The one integration loop behind :meth:`decode`, :meth:`encode` and the training pushforward;
        ``to_data``: integrate each block from t = 0 to 1 (noise -> data), else from 1 to 0.

        ``out`` may be ``x`` itself (in-place pushforward: no second copy of a large pool) or a
        :meth:`MemmapPool.target`. Only ``rows = (start, stop)`` are carried when given (a rank's
        shard). ``nonfinite_error``: raise ``FloatingPointError(nonfinite_error)`` on a NaN/Inf result.
        ``cond``: ``(len(x), cond_dim)`` conditions of the rows; ``guidance``: CFG scale.
        ``standardize``: ``x`` (encode) or the result (decode) is in data units (:attr:`standardizer`).
        """
        positive_int(chunk_size, "chunk_size")
        if out is None:
            out = torch.empty_like(x)
        start, stop = (0, x.shape[0]) if rows is None else rows
        device, dtype = self.device, self.dtype
        nfe = [0.0] * len(blocks)
        n_chunks = max(1, math.ceil((stop - start) / chunk_size))
        was_training = self.training
        self.eval()
        try:
            with progress_bar(n_chunks, progress or "", progress is not None) as bar:
                for i in range(start, stop, chunk_size):
                    j = min(i + chunk_size, stop)
                    y = x[i:j].to(device)
                    y = (self.standardizer.apply(y) if standardize and not to_data else y).to(dtype)
                    c = None if cond is None else inputs.cond_input(cond[i:j].to(device, dtype))
                    for k, n in enumerate(blocks):
                        field = self._fields[n - 1].bind(c, guidance)  # this solve's own condition and NFE count
                        y = integrate(field, y, *((0.0, 1.0) if to_data else (1.0, 0.0)), ode.for_block(n, self.n_blocks))
                        nfe[k] += field.nfe / n_chunks
                    y = self.standardizer.invert(y) if standardize and to_data else y
                    if nonfinite_error is not None and not torch.isfinite(y).all():
                        raise FloatingPointError(nonfinite_error)
                    out[i:j] = y.to(out.device, out.dtype)
                    bar.update(1)
        finally:
            self.train(was_training)
        return out, nfe

    def default_chunk(self) -> int:
        """Rows integrated at once by default: at most :data:`CHUNK_ROWS` of this device type, and for
        wide samples about 2^20 numbers per chunk (at least 256 rows), which bounds memory."""
        return min(CHUNK_ROWS.get(self.device.type, CHUNK_ROWS["other"]), max(256, 2**20 // self.dim))

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
                maps block 4's noise side to block 3's data side. With a fitted :attr:`standardizer`,
                block 1's data side is in data units, every other side in the standardized space.

        Returns:
            ``(B, *shape)`` data-side samples, dtype and device of ``z``. NFE in :attr:`last_stats`.
        """
        z = self.check_samples(z, "z")
        cond = self.check_cond(cond, z.shape[0])
        if guidance is not None and (cond is None or not (isinstance(guidance, (int, float)) and math.isfinite(guidance))):
            raise ValueError(f"guidance needs a conditional model and a finite scale, got {guidance!r}")
        guidance = None if guidance in (None, 1, 1.0) else float(guidance)
        return self._run(z, blocks, True, ode, chunk_size, "decode", cond, guidance)

    def encode(self, x, *, ode=None, chunk_size: Optional[int] = None, blocks: Optional[Sequence[int]] = None,
               cond=None) -> torch.Tensor:
        """Data -> noise: blocks 1..N (or ``blocks``, lowest first), each integrated from t = 1 to t = 0.

        The inverse of :meth:`decode` (without guidance); same arguments.
        """
        x = self.check_samples(x, "x")
        return self._run(x, blocks, False, ode, chunk_size, "encode", self.check_cond(cond, x.shape[0]))

    def sample(
        self, n: int, *, ode=None, generator: Optional[torch.Generator] = None, chunk_size: Optional[int] = None,
        cond=None, guidance: Optional[float] = None,
    ) -> torch.Tensor:
        """Draw ``n`` samples: ``z ~ N(0, I)`` (from ``generator`` if given), then :meth:`decode`.

        A conditional model takes ``cond`` ``(n, cond_dim)``: one sample per row.
        """
        self._require_trained("sample")
        positive_int(n, "n")
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
        chunk_size = self.default_chunk() if chunk_size is None else chunk_size
        start = time.perf_counter()
        order = blocks[::-1] if to_data else blocks
        in_data = blocks[0] == 1  # block 1's data side is in data units
        out, nfe = self.transport(x, order, to_data, ode, chunk_size, cond=cond, guidance=guidance, standardize=in_data)
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
        ``x_0 = x``, or ``x_0 = A(x)`` with a fitted :attr:`standardizer` ``A``, whose constant
        ``log|det dA/dx|`` is added. Each block is integrated once per sample: the cost is linear in N.

        Args:
            x: ``(B, *shape)`` data-side samples (floating, finite).
            ode: ODE options (default: the model's).
            estimator: ``"exact"`` (full Jacobian trace) or ``"hutchinson"`` (one Rademacher probe
                per sample and block, unbiased; for large dimensions).
            chunk_size: samples per integration (default: :meth:`default_chunk`, at most ``2^17 / D``).
            generator: random source of the Hutchinson probes.
            cond: ``(B, cond_dim)`` conditions (conditional models): the result is ``log p(x | cond)``.

        Returns:
            :class:`LogProbTerms` (``log_prob`` ``(B,)`` in nats, ``prior`` ``(B,)``, ``divergence``
            ``(N, B)``, ``nfe_per_block``, ``standardize_log_det``).
        """
        from .likelihood import chain_log_prob_terms

        self._require_trained("evaluate log_prob")
        x = self.check_samples(x, "x")
        cond = self.check_cond(cond, x.shape[0])
        rows = min(self.default_chunk(), max(1, 2**17 // self.dim))  # with gradients: ~2^17 numbers per chunk
        chunk_size = positive_int(rows if chunk_size is None else chunk_size, "chunk_size")
        c = None if cond is None else inputs.cond_input(cond)
        was_training = self.training
        self.eval()
        try:
            return chain_log_prob_terms(self._fields, x, ODEOptions.coerce(ode, self.ode), estimator=estimator,
                                        chunk_size=chunk_size, generator=generator, cond=c,
                                        device=self.device, dtype=self.dtype, data_map=self.standardizer)
        finally:
            self.train(was_training)

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
        from .training.blocks import train_blocks

        return train_blocks(self, x, pushforward_ode=pushforward_ode, chunk_size=chunk_size, warm_start=warm_start,
                            progress=progress, pool_dir=pool_dir, cond=cond)

    def warm_start(self, n: int):
        """Start block ``n`` from block ``n - 1``'s weights."""
        self.nets[n - 1].load_state_dict(self.nets[n - 2].state_dict())

    def check_warm_start(self):
        """Raise unless every block has the architecture of the previous one (needed by ``warm_start``)."""
        from .training.blocks import check_warm_start

        check_warm_start(self.nets)

    def fit(self, x, *, cond=None, **options) -> FitReport:
        """Train all blocks in order (Algorithm 1 of the paper); resumable and data-parallel.

        For block n: a fresh Adam optimizer; ``batches_per_block`` steps on batches drawn uniformly (with
        replacement) from the current pool, each paired with its OU partner by the block's matcher; then the whole
        pool is pushed through block n in chunks of ``chunk_size``, in place. That pool (``pool="pushforward"``,
        the paper's) makes block n learn what blocks 1..n-1 produce: only the free block's error reaches the
        samples. ``pool="ou"`` draws block n's data side from the exact OU marginal of the data at
        ``h_1 + ... + h_{n-1}`` instead: no pushforward, blocks independent (parallelizable), but every block's
        error compounds at sampling (see FitConfig). Blocks that share one network (:mod:`.shared`) need
        ``pool="ou"`` and train together, in one loop (:mod:`.training.joint`). First an affine map of the data
        is fitted (:attr:`standardizer`): by default per feature when the data is far from unit scale.

        Data-parallel when launched with ``torchrun --nproc_per_node=K`` (or inside an initialized
        ``torch.distributed`` process group): every rank calls ``fit`` with the same ``x`` and settings, trains
        on its ``batch_size / K`` share of each batch under ``DistributedDataParallel`` and pushes its shard of
        the pool; rank 0 alone writes checkpoints, and all ranks read them on ``resume``. See :mod:`.distributed`.

        Args:
            x: training data ``(n, *shape)``, floating point, finite, ``n >= batch_size`` (a tensor,
                or a numpy array, e.g. ``numpy.load(path, mmap_mode="r")`` for data larger than RAM).
            cond: conditions ``(n, cond_dim)``, one per row of ``x`` (conditional models only);
                they stay attached to their rows through every block.
            **options: the settings of :class:`~torchcfm_local.training.FitConfig`, e.g.
                ``batches_per_block``, ``batch_size``, ``lr``, ``seed``, ``checkpoint_dir``,
                ``resume``, ``pool``, ``standardize`` (each documented there, with its default).

        Returns:
            :class:`FitReport` with one :class:`BlockReport` per block trained by this call.
        """
        from .training import FitConfig, fit

        return fit(self, x, cond, FitConfig(**options))

    # ------------------------------------------------------------------ checkpoints
    def to_state(self, fit_state: Optional[dict] = None) -> dict:
        """The model as a dict of tensors and plain data (what :meth:`save` writes, :meth:`from_state`
        reads); ``fit_state``: the run state a fit checkpoint adds."""
        from .serialization import model_state

        return model_state(self, fit_state)

    def save(self, path: Union[str, Path]) -> None:
        """Write the model (all blocks, trained or not, with ``n_trained``) to ``path`` atomically."""
        atomic_save(self.to_state(), path)

    @classmethod
    def load(cls, path: Union[str, Path], *, velocity_factory: Optional[Callable[[int], nn.Module]] = None,
             matcher=None, map_location="cpu") -> "LocalFlowMatching":
        """Read a model written by :meth:`save` (or a ``fit`` checkpoint's ``model.pt``).

        Built-in networks (:data:`torchcfm_local.networks.NETWORKS`) and torchcfm matchers are
        rebuilt from the file; for custom networks pass the same ``velocity_factory`` as in
        training, for a non-torchcfm matcher pass ``matcher``. Only tensors and plain data are read
        (``weights_only=True``).

        Raises:
            FileNotFoundError: no file (or a directory in its place). PermissionError: unreadable.
            CheckpointError (a ValueError): corrupt (checksum, truncation)/foreign/newer file, or misfit weights.
        """
        return cls.from_state(safe_load(path, "model", map_location), velocity_factory=velocity_factory,
                              matcher=matcher, source=str(path))

    @classmethod
    def from_state(cls, state: dict, *, velocity_factory=None, matcher=None, source: str = "the state") -> "LocalFlowMatching":
        """A model from the dict that :meth:`save` writes (e.g. embedded in a larger checkpoint)."""
        from .serialization import model_from_state

        return model_from_state(cls, state, velocity_factory=velocity_factory, matcher=matcher, source=source)

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, cond_dim={self.cond_dim}, blocks={self.n_blocks} ({self.n_trained} trained), "
                f"matcher={type(self.matcher).__name__}, ode={self.ode.solver}")
