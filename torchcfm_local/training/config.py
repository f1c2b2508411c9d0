"""Every option of :func:`torchcfm_local.training.fit`, declared once.

A new fit option is one field of :class:`FitConfig`: its default, its check in ``__post_init__``,
and, when a resumed run must use the same value, ``run=True`` with the value that checkpoints
written before the option existed implicitly used (``legacy``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from .._checks import per_item_ints, positive_float, positive_int
from ..solvers import ODEOptions
from ..standardize import CHOICES as STANDARDIZE_CHOICES
from .loop import OptimConfig

__all__ = ["FitConfig", "PUSHFORWARD_ODE", "PUSHFORWARD_TOL", "POOL_MODES"]

#: Where block n's data-side training samples come from (``FitConfig.pool``).
POOL_MODES = ("pushforward", "ou")

#: Solver of the training pushforward when ``pushforward_tol=None`` (and of :func:`train_blocks
#: <torchcfm_local.training.blocks.train_blocks>`): 8 RK4 steps (32 evaluations per block), the
#: fixed default before the steps were chosen by measured error. ``benchmarks/bench_core.py``
#: measures its error against a tight adaptive solve (``benchmarks/results/core.md``).
PUSHFORWARD_ODE = ODEOptions(solver="rk4", steps=8)

#: Default ``FitConfig.pushforward_tol``: RK4 steps per block chosen so that the pushforward's RMS
#: error is at most 1% of the block's OU noise scale (:mod:`torchcfm_local.training.steps` gives
#: the reasoning).
PUSHFORWARD_TOL = 0.01

_NO_LEGACY = object()


def _option(default, *, run: bool = False, legacy=_NO_LEGACY):
    """A :class:`FitConfig` field; ``run``: part of the run's identity (a resume must not change it);
    ``legacy``: its value in checkpoints written before the option existed."""
    return field(default=default, metadata={"run": run, "legacy": legacy})


@dataclass
class FitConfig:
    """Settings of :meth:`LocalFlowMatching.fit <torchcfm_local.LocalFlowMatching.fit>` (Algorithm 1).

    Args:
        batches_per_block: optimizer steps per block (an int, or one per block). Blocks that share
            one network (:mod:`torchcfm_local.shared`) train jointly: ``sum(batches_per_block)``
            steps, block n getting the share ``batches_per_block[n] / sum`` of every batch, so each
            block sees as many samples as in the sequential fit (:mod:`.joint`).
        batch_size: samples per step (over all ranks; divisible by their number). Must not
            exceed the number of training samples.
        lr, weight_decay: Adam(W) settings (AdamW when ``weight_decay > 0``).
        lr_decay: ``None`` (constant) or ``"cosine"`` (to 0 over each block).
        grad_clip: max gradient norm, or ``None``.
        warm_start: start block n from block n-1's weights (needs identical architectures;
            ignored by shared blocks, which have one set of weights).
        seed: seeds batch indices, noise and times; ``None`` draws one from torch's global RNG,
            so ``torch.manual_seed`` makes ``fit`` reproducible.
        checkpoint_dir: where to keep ``model.pt`` (after every block), ``pool.pt`` (the pool
            for the next block, unless ``pool_dir`` holds it) and ``progress.pt`` (every
            ``checkpoint_every`` batches).
        checkpoint_every: batches between two ``progress.pt`` writes.
        resume: continue the run in ``checkpoint_dir`` (finished blocks are not redone; an
            interrupted block restarts from its last ``progress.pt``). Starts fresh if the
            directory holds no run. Without it, a directory that holds a run is an error.
        pushforward_ode: ODE options of the pool pushforward, used as given for every block. When
            it is not given, ``pushforward_tol`` picks RK4 steps per block (or, with
            ``pushforward_tol=None``, :data:`PUSHFORWARD_ODE` is used).
        pushforward_tol: after training each block, measure the error of 1, 2, 4, ... RK4 steps
            on a probe of the pool and push with the fewest steps whose RMS error is at most
            ``pushforward_tol`` times the block's OU noise scale ``sqrt(1 - e^{-2h})``
            (:func:`torchcfm_local.training.steps.choose_steps`); the block report records the
            steps and the error. Default :data:`PUSHFORWARD_TOL`; ignored when ``pushforward_ode``
            is given.
        chunk_size: samples per pushforward chunk (bounds memory); default: the model's.
        encode_final_pool: also push the pool through the last block to report how close the
            encoded training data is to N(0, I). Default (``None``): with ``pool="pushforward"``
            only; ``pool="ou"`` refuses ``True`` (it pushes nothing: use ``lfm.encode(x)`` and
            :func:`torchcfm_local.reports.pool_stats` for that report).
        progress: show progress bars.
        callback: ``callback(block, batches_done, loss)`` after every optimizer step (``loss``
            is the mean over ranks; ``block`` is 0 in the joint loop of shared blocks).
        pool_dir: keep the pool in memory-mapped files in this directory (new, empty, or an
            earlier pool) instead of memory; peak memory of the pushforward is then bounded by
            ``chunk_size`` (:mod:`torchcfm_local.pool`). A resumed run reuses the pool there.
        cond_dropout: probability of replacing a training row's condition by the null
            condition, which enables classifier-free guidance at sampling time.
        warmup: batches of linear learning-rate warm-up at the start of every block.
        ema_decay: keep an exponential moving average of each block's weights (e.g. 0.999)
            and make it the block's final weights, used for the pushforward and sampling. The
            decay is warmed up, ``min(ema_decay, (1 + step) / (10 + step))``, so that a short
            run's average does not keep the random initial weights (:class:`~.loop.EMA`).
        amp: bfloat16 autocast of the forward pass (CUDA models only).
        pool: where block n's data-side samples ``x_{n-1}`` come from; each is paired with its OU
            partner by the block's matcher either way.

            * ``"pushforward"`` (default; the paper's Algorithm 1): the training data pushed
              through the trained blocks 1..n-1. Block n trains on what blocks 1..n-1 actually
              produce, so decoding stays consistent with encoding and only the free block's error
              reaches the samples; costs one pushforward of the whole pool per block.
            * ``"ou"``: fresh draws from the exact OU marginal of the data at time
              ``T = h_1 + ... + h_{n-1}`` (:meth:`OUSchedule.time_before`):
              ``e^{-T} x + sqrt(1 - e^{-2T}) eps`` with new ``eps`` in every batch. No pushforward
              (``pushforward_seconds`` is 0, no ``pool.pt``) and the blocks do not depend on each
              other (they could train in parallel), but at sampling every block's error compounds:
              block n never sees what blocks n+1..N produce. Blocks that share one network
              (:mod:`torchcfm_local.shared`) need it: they train all at once (:mod:`.joint`), and
              ``"pushforward"`` is refused for them.
        standardize: an affine map fitted on the training data (float64 statistics) in front of
            block 1 (:mod:`torchcfm_local.standardize`): ``None`` / ``"none"`` (the identity),
            ``"diagonal"`` (per-feature mean and std), ``"full"`` (mean and whitening by the
            inverse Cholesky factor of the covariance; at most 4096 features) or ``"auto"`` (the
            default: ``"diagonal"`` when the data's RMS feature std is outside
            :data:`~torchcfm_local.standardize.SCALE_RANGE`, else the identity; the model's
            ``standardizer.mode`` says which). Stored in the model;
            ``encode`` / ``decode`` / ``sample`` / ``log_prob`` stay in data units. Fitted when
            no block is trained yet; a resumed run keeps the map it started with.

    Raises:
        ValueError: a value out of range (the message names the option and what it expects).
    """

    batches_per_block: Union[int, Sequence[int]] = _option(1000, run=True)
    batch_size: int = _option(256, run=True)
    lr: float = _option(1e-3, run=True)
    lr_decay: Optional[str] = _option(None, run=True)
    weight_decay: float = _option(0.0, run=True)
    grad_clip: Optional[float] = _option(None, run=True)
    warm_start: bool = _option(True, run=True)
    seed: Optional[int] = None
    checkpoint_dir: Union[str, Path, None] = None
    checkpoint_every: int = 500
    resume: bool = False
    pushforward_ode: Union[ODEOptions, str, dict, None] = _option(None, run=True)
    pushforward_tol: Optional[float] = _option(PUSHFORWARD_TOL, run=True, legacy=None)
    chunk_size: Optional[int] = _option(None, run=True)
    encode_final_pool: Optional[bool] = None
    progress: bool = True
    callback: Optional[Callable[[int, int, float], None]] = None
    pool_dir: Union[str, Path, None] = None
    cond_dropout: float = _option(0.0, run=True, legacy=0.0)
    warmup: int = _option(0, run=True, legacy=0)
    ema_decay: Optional[float] = _option(None, run=True, legacy=None)
    amp: bool = _option(False, run=True, legacy=False)
    pool: str = _option("pushforward", run=True, legacy="pushforward")
    standardize: Optional[str] = _option("auto", run=True, legacy=None)

    def __post_init__(self):
        budget = self.batches_per_block
        per_item_ints(budget, len(budget) if isinstance(budget, (list, tuple)) else 1, "batches_per_block", "block")
        positive_int(self.batch_size, "batch_size")
        positive_int(self.checkpoint_every, "checkpoint_every")
        positive_int(self.chunk_size, "chunk_size", allow_none=True)
        positive_int(self.seed, "seed", minimum=0, allow_none=True)
        if not (isinstance(self.cond_dropout, (int, float)) and 0 <= self.cond_dropout < 1):
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout!r}")
        if self.pool not in POOL_MODES:
            raise ValueError(f"pool must be one of {POOL_MODES}, got {self.pool!r}")
        if self.standardize not in STANDARDIZE_CHOICES:
            raise ValueError(f"standardize must be one of {STANDARDIZE_CHOICES}, got {self.standardize!r}")
        self.standardize = None if self.standardize == "none" else self.standardize
        if self.encode_final_pool and self.pool == "ou":
            raise ValueError("encode_final_pool=True needs pool='pushforward': pool='ou' pushes nothing through "
                             "the blocks; encode the data yourself (lfm.encode(x)) for that report")
        if self.encode_final_pool is None:
            self.encode_final_pool = self.pool == "pushforward"
        self.optim  # validates the optimizer settings
        if self.pushforward_ode is not None:
            self.pushforward_tol = None  # an explicit solver is used as given
        elif self.pushforward_tol is not None:
            positive_float(self.pushforward_tol, "pushforward_tol")
            self.pushforward_tol = float(self.pushforward_tol)
        self.pushforward_ode = ODEOptions.coerce(self.pushforward_ode, PUSHFORWARD_ODE)

    @property
    def optim(self) -> OptimConfig:
        """The optimizer settings, for :class:`~torchcfm_local.training.loop.StepLoop`."""
        return OptimConfig(lr=self.lr, weight_decay=self.weight_decay, lr_decay=self.lr_decay, warmup=self.warmup,
                           grad_clip=self.grad_clip, ema_decay=self.ema_decay, amp=bool(self.amp))

    def per_block(self, n_blocks: int) -> list[int]:
        """``batches_per_block`` as one positive int per block."""
        return per_item_ints(self.batches_per_block, n_blocks, "batches_per_block", "block")

    def run_settings(self, n_blocks: int, chunk_size: int, world_size: int, shared_blocks: bool = False) -> dict:
        """The settings a resumed run must share with the run it continues (stored in checkpoints);
        ``shared_blocks``: the model's blocks share one network (trained jointly)."""
        settings = {}
        for f in dataclasses.fields(self):
            if f.metadata.get("run"):
                settings[f.name] = getattr(self, f.name)
        settings.update(batches_per_block=self.per_block(n_blocks), lr=float(self.lr), chunk_size=chunk_size,
                        weight_decay=float(self.weight_decay), cond_dropout=float(self.cond_dropout),
                        amp=bool(self.amp), pushforward_ode=self.pushforward_ode.to_dict(), world_size=world_size,
                        shared_blocks=bool(shared_blocks))
        return settings

    @staticmethod
    def saved_settings(saved: dict) -> dict:
        """The run settings of a checkpoint, completed with the values older versions implied."""
        legacy = {f.name: f.metadata["legacy"] for f in dataclasses.fields(FitConfig)
                  if f.metadata.get("legacy", _NO_LEGACY) is not _NO_LEGACY}
        settings = {"world_size": 1, "shared_blocks": False, **legacy, **saved}
        settings["pushforward_ode"] = ODEOptions.coerce(settings["pushforward_ode"], PUSHFORWARD_ODE).to_dict()
        return settings
