"""``fit``: Algorithm 1 of the paper as a short sequence of named steps.

1. check the data and settings (:class:`FitConfig` has checked the settings on their own);
2. start the run, or resume it from its checkpoint directory (:class:`RunCheckpoint`);
3. for every block not trained yet: train it with the step loop (:class:`StepLoop`) on batches
   from the pool, each row paired with its OU partner by the block's matcher; then push the
   pool through it (:class:`TrainingPool`) and save the finished block.

With ``pool="ou"`` the pool stays the (standardized) data: each batch is carried to block n's
data side by the exact OU marginal (:func:`~torchcfm_local.training.pool.ou_marginal`) and
nothing is pushed. With ``standardize``, the data's affine map is fitted in step 2, before the
pool is filled, and saved with the run from its first checkpoint on. Blocks that share one
network (:mod:`torchcfm_local.shared`) need ``pool="ou"`` and replace step 3 by one joint loop
over all blocks (:mod:`.joint`), with the same run, checkpoints and resume.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from ..distributed import DistContext, context as dist_context, shard
from ..inputs import cond_input
from ..pool import MemmapPool
from ..reports import BlockReport, FitReport
from ..shared import shared_network
from ..solvers import VelocityField
from ..standardize import FULL_MAX_DIM, Standardizer
from .blocks import BlockTrainer
from .config import FitConfig
from .joint import check_joint, train_joint
from .loop import StepLoop
from .pool import TrainingPool, fingerprint, ou_marginal
from .run import RunCheckpoint

__all__ = ["fit"]


def fit(lfm, x, cond=None, config: Optional[FitConfig] = None) -> FitReport:
    """Train the blocks of ``lfm`` not trained yet; see :meth:`LocalFlowMatching.fit
    <torchcfm_local.LocalFlowMatching.fit>` for the arguments and :class:`FitConfig` for the settings."""
    start = time.perf_counter()
    config = FitConfig() if config is None else config
    x, cond = _check_inputs(lfm, x, cond, config)
    run = _FitRun.start(lfm, x, cond, config)
    try:
        if run.joint:
            reports = train_joint(run)
        else:
            reports = [run.train_block(n) for n in range(lfm.n_trained + 1, lfm.n_blocks + 1)]
    except RuntimeError as err:
        if not run.dist.active:
            raise
        # gloo reports a dead peer as a plain RuntimeError, a stalled one after the collective timeout
        first = str(err).splitlines()[0] if str(err) else ""
        raise RuntimeError(f"rank {run.dist.rank} of {run.dist.world} stopped while training block {lfm.n_trained + 1}: "
                           f"{type(err).__name__}: {first}. If another rank died or stalled, finished blocks are "
                           f"kept{run.ckpt.where()}: relaunch all ranks with resume=True") from err
    return FitReport(reports, run.seed, time.perf_counter() - start, None if run.ckpt.dir is None else str(run.ckpt.dir))


def _check_inputs(lfm, x, cond, config: FitConfig):
    """The checks that need the data or the model; returns the checked ``(x, cond)``."""
    x = lfm.check_samples(x, "training data", min_count=2)
    config.per_block(lfm.n_blocks)
    if config.pool_dir is not None:
        MemmapPool.check_dir(config.pool_dir)
    cond = lfm.check_training_cond(cond, x.shape[0])
    if config.cond_dropout and cond is None:
        raise ValueError("cond_dropout needs a conditional model and cond")
    if config.batch_size > x.shape[0]:
        raise ValueError(f"batch_size={config.batch_size} exceeds the {x.shape[0]} training samples; "
                         f"use batch_size <= {x.shape[0]}")
    if config.amp and lfm.device.type != "cuda":
        raise ValueError(f"amp=True needs a model on a CUDA device; this one is on {lfm.device}")
    if shared_network(lfm) is not None:
        check_joint(lfm, config)
    elif config.warm_start:
        lfm.check_warm_start()
    if config.standardize == "full" and lfm.dim > FULL_MAX_DIM:
        raise ValueError(f"standardize='full' takes at most {FULL_MAX_DIM} features, this model has {lfm.dim}; "
                         "use standardize='diagonal'")
    return x, cond


def _standardizer(lfm, x: torch.Tensor, config: FitConfig) -> Standardizer:
    """The data map of this run: fitted on ``x`` while no block is trained, else the model's own
    (its blocks were trained behind it), which must be of the requested kind (any, for ``"auto"``)."""
    if lfm.n_trained == 0:
        return Standardizer.fit(x, config.standardize, lfm.shape)
    if config.standardize != "auto" and lfm.standardizer.mode != config.standardize:
        raise ValueError(f"this model's {lfm.n_trained} trained block(s) sit behind standardize="
                         f"{lfm.standardizer.mode!r}; continue with the same standardize, not {config.standardize!r}")
    return lfm.standardizer


@dataclass
class _FitRun:
    """The state one ``fit`` call carries from block to block."""

    lfm: object
    config: FitConfig
    dist: DistContext
    ckpt: RunCheckpoint
    pool: TrainingPool
    settings: dict
    data_id: list
    seed: int
    run_id: Optional[str]
    gen_idx: torch.Generator
    gen_noise: torch.Generator
    progress: Optional[dict] = None  # the saved state of the block a resumed run continues
    joint: bool = False  # the blocks share one network: one joint loop (training/joint.py)

    @property
    def pushes(self) -> bool:
        """Whether the pool is pushed through every trained block (``pool="pushforward"``)."""
        return self.config.pool == "pushforward"

    @classmethod
    def start(cls, lfm, x: torch.Tensor, cond, config: FitConfig) -> "_FitRun":
        """Set up a new run, or restore the one in ``config.checkpoint_dir`` (``resume=True``)."""
        chunk = lfm.default_chunk() if config.chunk_size is None else config.chunk_size
        dist = dist_context(lfm.device)
        if config.batch_size % dist.world:
            raise ValueError(f"batch_size={config.batch_size} must be divisible by the number of ranks ({dist.world})")
        seed = config.seed if config.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)))
        seed = dist.broadcast_object(seed)
        joint = shared_network(lfm) is not None
        settings = config.run_settings(lfm.n_blocks, chunk, dist.world, shared_blocks=joint)
        data_id = fingerprint(x) + ([] if cond is None else fingerprint(cond))
        dist.check_agree({"training data": data_id, "settings": settings, "trained blocks": lfm.n_trained,
                          "resume": config.resume})
        ckpt = RunCheckpoint(config.checkpoint_dir, dist)
        gen_idx = torch.Generator().manual_seed(seed)
        gen_noise = torch.Generator(device=lfm.device).manual_seed(seed + 1)
        run_id, rows, progress, has_run = dist.new_token(), None, None, ckpt.holds_run()
        if has_run:
            if not config.resume:
                raise FileExistsError(f"{ckpt.dir} already holds a training run; pass resume=True to continue it "
                                      "or choose another checkpoint_dir")
            state = ckpt.restore(lfm, settings, data_id)
            seed, run_id = state["seed"], state.get("run_id")
            gen_idx.set_state(state["gen_idx"])
            gen_noise.set_state(state["gen_noise"])
            rows = None if config.pool_dir is not None or config.pool == "ou" else ckpt.load_pool(lfm, x.shape[0])
            # read once, here: while blocks train, rank 0 rewrites and removes this file
            progress = ckpt.load_progress(lfm.n_trained + 1)
        elif lfm.n_trained and not config.resume:
            raise RuntimeError(f"{lfm.n_trained} block(s) are already trained; call fit(..., resume=True) to train the rest")
        else:
            lfm.standardizer = _standardizer(lfm, x, config)
        if rows is None:
            pool = TrainingPool.initial(lfm, x, cond, dist, chunk, config.pushforward_ode, pool_dir=config.pool_dir,
                                        data_id=data_id + lfm.standardizer.fingerprint(), run_id=run_id,
                                        push=config.pool == "pushforward", tol=config.pushforward_tol)
        else:
            pool = TrainingPool(rows, cond, dist, chunk)
        run = cls(lfm, config, dist, ckpt, pool, settings, data_id, seed, run_id, gen_idx, gen_noise, progress, joint)
        if not has_run:
            run.save_model()  # marks the directory as holding this run from the first batch on
        return run

    def save_model(self):
        """Finished blocks + what a resume needs to continue identically (rank 0 only)."""
        self.ckpt.save_model(self.lfm, {
            "seed": self.seed, "hyper": self.settings, "fingerprint": self.data_id, "run_id": self.run_id,
            "gen_idx": self.gen_idx.get_state(), "gen_noise": self.gen_noise.get_state().cpu()})

    def train_block(self, n: int) -> BlockReport:
        """Train block ``n`` (resuming its saved progress), push the pool through it, save it."""
        lfm, config = self.lfm, self.config
        trainer = BlockTrainer.of(lfm, n, self.pool)
        progress_state, self.progress = self.progress, None
        if progress_state is not None:
            self.gen_idx.set_state(progress_state["gen_idx"])
            self.gen_noise.set_state(progress_state["gen_noise"])
        elif config.warm_start and n > 1:
            lfm.warm_start(n)
        total = config.per_block(lfm.n_blocks)[n - 1]
        loop = StepLoop(trainer.model, total, config.optim, desc=f"block {n}/{lfm.n_blocks}",
                        progress=config.progress and self.dist.is_main, reduce=self.dist.mean, state=progress_state,
                        error_hint=f"; finished blocks are kept{self.ckpt.where()}. Lower lr or set grad_clip.")
        loop.run(self._loss_fn(trainer), self._after_step(n, loop))
        lfm.n_trained = n
        report = BlockReport(n, lfm.schedule.step(n), loop.step, loop.losses, loop.seconds,
                             resumed_from=loop.resumed_from)
        if self.pushes and (n < lfm.n_blocks or config.encode_final_pool):
            try:
                report.pushforward_seconds, report.pushforward_nfe, report.pool, choice = self.pool.push(
                    lfm, n, config.pushforward_ode, config.progress, tol=config.pushforward_tol)
            except FloatingPointError as err:
                if n < lfm.n_blocks:
                    raise
                # the last push only feeds the report (encode_final_pool): keep the trained block
                warnings.warn(f"{err}; this push through the last block only reports how close the encoded "
                              "data is to N(0, I), so the block is kept and the report left out", RuntimeWarning)
                choice = None
            if choice is not None:
                report.pushforward_steps, report.pushforward_error = choice.steps, choice.error
                report.pushforward_probe_seconds = choice.seconds
        if self.pushes and n < lfm.n_blocks and self.pool.in_memory:
            self.ckpt.save_pool(self.pool.rows, n, self.data_id)
        self.save_model()
        self.ckpt.clear_progress()
        return report

    def _loss_fn(self, trainer: BlockTrainer):
        """``step -> loss`` on this rank's rows of a batch that every rank draws alike."""
        batch_size, dropout, cond = self.config.batch_size, self.config.cond_dropout, self.pool.cond
        lo, hi = shard(batch_size, self.dist.rank, self.dist.world)
        device = trainer.device
        field = trainer.field
        t_ou = 0.0 if self.pushes else self.lfm.schedule.time_before(trainer.block)  # OU time to block n's data side
        if self.dist.active:  # gradients averaged over ranks
            from torch.nn.parallel import DistributedDataParallel

            ddp = DistributedDataParallel(trainer.model, device_ids=[device.index] if device.type == "cuda" else None)
            field = VelocityField(ddp, takes_time=trainer.field.takes_time)

        def loss_fn(step: int) -> torch.Tensor:
            idx = torch.randint(0, self.pool.shape[0], (batch_size,), generator=self.gen_idx)
            x1 = self.pool.rows[idx[lo:hi]].to(device)
            x1 = ou_marginal(x1, t_ou, self.gen_noise, batch_size, (lo, hi))  # the pool row itself when t_ou = 0
            z, t = trainer.draw(batch_size, x1, self.gen_noise)
            c = None
            if cond is not None:
                keep = None
                if dropout:
                    keep = torch.rand(batch_size, generator=self.gen_noise, device=device)[lo:hi] >= dropout
                c = cond_input(cond[idx[lo:hi]].to(device), keep)
            return trainer.loss_at(x1, z[lo:hi], t[lo:hi], field, cond=c)

        return loss_fn

    def _after_step(self, n: int, loop: StepLoop):
        """User callback, then ``progress.pt`` every ``checkpoint_every`` batches and after the last
        one (a kill during the pushforward then keeps the trained block)."""
        callback, every = self.config.callback, self.config.checkpoint_every

        def after_step(step: int, loss: float):
            if callback is not None:
                callback(n, step, loss)
            if self.ckpt.writes and (step % every == 0 or step == loop.total):
                self.ckpt.save_progress({"block": n, **loop.state_dict(), "gen_idx": self.gen_idx.get_state(),
                                         "gen_noise": self.gen_noise.get_state()})

        return after_step
