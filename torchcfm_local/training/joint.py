"""Joint training of blocks that share one network (:class:`~torchcfm_local.shared.SharedVelocity`).

Algorithm 1 trains block after block, each on the pool pushed through the blocks before it. With
one shared network that order fails: training block n moves the weights blocks 1..n-1 use after
the pool was pushed through them, so decoding would no longer match what block n learned from.
Shared blocks therefore train together, each on data that no trained block has touched:
``pool="ou"``, where block n's data side is the exact OU marginal of the data at
``T_{n-1} = h_1 + ... + h_{n-1}`` (:func:`~.pool.ou_marginal`). ``fit`` sends a model with shared
blocks here (:func:`train_joint`) and refuses ``pool="pushforward"`` for it (:func:`check_joint`).

One optimizer step: draw ``batch_size`` rows of the (standardized) data; cut them into
consecutive shares, :func:`block_rows` rows for block n; carry block n's share to its data side
(the OU marginal at ``T_{n-1}``) and pair each row with its OU partner and a time on the path
(block n's matcher, as in the sequential fit); evaluate the shared network once on the whole
batch, each row with its block's embedding; the loss is the squared error averaged over all rows,
i.e. the blocks' flow-matching losses weighted by their shares of the batch (their plain mean for
equal shares). Each block's own loss is recorded too (:class:`BlockReport` ``.losses``).

Budget, chosen so that comparisons at equal training samples need no conversion: the run takes
``sum(batches_per_block)`` steps of ``batch_size`` rows, as many steps and rows as the sequential
fit, and block n gets the share ``batches_per_block[n] / sum(batches_per_block)`` of every batch,
so over the run it sees ``batches_per_block[n] * batch_size`` rows, as in the sequential fit. The
learning-rate schedule (``warmup``, ``lr_decay``) spans the whole run; ``warm_start`` has nothing
to copy and is ignored.

The loop is :class:`~.loop.StepLoop` over the shared network (EMA, clipping, AMP, NaN check,
progress bar); data-parallel runs split each batch's rows over the ranks as the sequential fit
does. Checkpoints are ``fit``'s (:class:`~.run.RunCheckpoint`): ``model.pt`` when the run starts
and when it ends, ``progress.pt`` every ``checkpoint_every`` steps and after the last one, from
which ``resume=True`` continues identically.
"""
from __future__ import annotations

import torch

from ..distributed import shard
from ..inputs import cond_input
from ..reports import BlockReport
from ..shared import shared_network
from .blocks import BlockTrainer
from .loop import StepLoop
from .pool import ou_marginal

__all__ = ["block_rows", "check_joint", "train_joint"]

#: What ``progress.pt`` of a joint run names as its block: the first one not trained yet, so that
#: ``fit``'s resume reads it as it reads a sequential run's (the settings keep the two kinds apart).
_PROGRESS_BLOCK = 1


def block_rows(weights: list[int], batch_size: int) -> list[int]:
    """Rows of each block in every batch of ``batch_size``: shares in proportion to ``weights``
    (``batches_per_block``), consecutive cuts at ``floor(batch_size * cumulative weight / total)``.

    Raises:
        ValueError: a block would get no rows (``batch_size`` smaller than the blocks need).
    """
    total, edges, acc = sum(weights), [0], 0
    for w in weights:
        acc += w
        edges.append(batch_size * acc // total)
    counts = [b - a for a, b in zip(edges, edges[1:])]
    empty = [n for n, c in enumerate(counts, 1) if c == 0]
    if empty:
        raise ValueError(f"batch_size={batch_size} split over {len(weights)} shared blocks in proportion to "
                         f"batches_per_block={weights} leaves block(s) {empty} without rows; use a larger batch_size "
                         f"(at least {len(weights)}) or more even batches_per_block")
    return counts


def check_joint(lfm, config) -> None:
    """The settings a fit of shared blocks needs (see the module docstring)."""
    if config.pool != "ou":
        raise ValueError(
            f"blocks that share one network are trained jointly and need pool='ou' (got pool={config.pool!r}): "
            "with the pushforward pool, training block n would move the shared weights of blocks 1..n-1 after "
            "the pool was pushed through them, so decoding would no longer match what block n learned from. "
            "Pass pool='ou', or give every block its own network")
    if lfm.n_trained not in (0, lfm.n_blocks):
        raise RuntimeError(f"{lfm.n_trained} of the {lfm.n_blocks} shared blocks are marked trained, but shared "
                           "blocks are trained all at once; set n_trained to 0 to train them again")
    block_rows(config.per_block(lfm.n_blocks), config.batch_size)


def train_joint(run) -> list[BlockReport]:
    """Train all blocks of ``run.lfm`` (a ``fit`` run over shared blocks) in one :class:`StepLoop`,
    resuming its saved progress; mark them trained and save the model. Returns one report per
    block (``batches``: the joint steps, ``train_seconds``: the loop's time split by row shares);
    an empty list when the blocks are trained already."""
    lfm, config, dist = run.lfm, run.config, run.dist
    if lfm.n_trained == lfm.n_blocks:
        return []
    shared = shared_network(lfm)
    per_block = config.per_block(lfm.n_blocks)
    counts = block_rows(per_block, config.batch_size)
    state, run.progress = run.progress, None
    block_losses: list[list[float]] = [[] for _ in counts]
    if state is not None:
        run.gen_idx.set_state(state["gen_idx"])
        run.gen_noise.set_state(state["gen_noise"])
        block_losses = [list(map(float, losses)) for losses in state["block_losses"]]
    loop = StepLoop(shared, sum(per_block), config.optim, desc=f"shared blocks 1-{lfm.n_blocks}",
                    progress=config.progress and dist.is_main, reduce=dist.mean, state=state,
                    error_hint=f"; the run's progress is kept{run.ckpt.where()}. Lower lr or set grad_clip.")
    last: dict = {}
    loop.run(_loss_fn(run, shared, counts, last), _after_step(run, loop, counts, block_losses, last))
    lfm.n_trained = lfm.n_blocks
    run.save_model()
    run.ckpt.clear_progress()
    return [BlockReport(n, lfm.schedule.step(n), loop.step, block_losses[n - 1],
                        loop.seconds * counts[n - 1] / config.batch_size, resumed_from=loop.resumed_from)
            for n in range(1, lfm.n_blocks + 1)]


def _loss_fn(run, shared, counts: list[int], last: dict):
    """``step -> loss`` of one joint batch (this rank's rows of it); leaves each block's summed
    per-row loss on this rank in ``last["sums"]``."""
    lfm, pool, dist = run.lfm, run.pool, run.dist
    batch_size, dropout, cond = run.config.batch_size, run.config.cond_dropout, pool.cond
    device = lfm.device
    trainers = [BlockTrainer.of(lfm, n, pool) for n in range(1, lfm.n_blocks + 1)]
    t_ou = [lfm.schedule.time_before(n) for n in range(1, lfm.n_blocks + 1)]  # OU time to block n's data side
    edges = torch.tensor([0] + counts).cumsum(0).tolist()
    blocks = torch.repeat_interleave(torch.arange(1, lfm.n_blocks + 1), torch.tensor(counts)).to(device)
    lo, hi = shard(batch_size, dist.rank, dist.world)
    net = shared
    if dist.active:  # gradients averaged over ranks
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(shared, device_ids=[device.index] if device.type == "cuda" else None)

    def loss_fn(step: int) -> torch.Tensor:
        idx = torch.randint(0, pool.shape[0], (batch_size,), generator=run.gen_idx)
        rows = pool.rows[idx].to(device)
        parts = []
        for trainer, t_before, a, b in zip(trainers, t_ou, edges, edges[1:]):
            x1 = ou_marginal(rows[a:b], t_before, run.gen_noise)  # the rows themselves for block 1
            z, t = trainer.draw(b - a, x1, run.gen_noise)
            parts.append(trainer.matcher.sample_location_and_conditional_flow(z, x1, t)[:3])
        t, xt, ut = (torch.cat(part)[lo:hi] for part in zip(*parts))
        c = None
        if cond is not None:
            keep = torch.rand(batch_size, generator=run.gen_noise, device=device) >= dropout if dropout else None
            c = cond_input(cond[idx].to(device), keep)[lo:hi]
        err = ((net(t, xt, blocks[lo:hi], c) - ut) ** 2).reshape(hi - lo, -1).mean(1)
        sums = torch.zeros(len(counts), dtype=torch.float64, device=device)
        last["sums"] = sums.index_add_(0, blocks[lo:hi] - 1, err.detach().double())
        return err.mean()

    return loss_fn


def _after_step(run, loop: StepLoop, counts: list[int], block_losses: list[list[float]], last: dict):
    """Record each block's loss (mean over ranks), then the user callback (with block 0: all
    blocks), then ``progress.pt`` every ``checkpoint_every`` steps and after the last one."""
    callback, every, dist = run.config.callback, run.config.checkpoint_every, run.dist
    rows = torch.tensor(counts, dtype=torch.float64, device=run.lfm.device)

    def after_step(step: int, loss: float):
        for losses, value in zip(block_losses, (dist.mean(last.pop("sums")) * dist.world / rows).tolist()):
            losses.append(value)
        if callback is not None:
            callback(0, step, loss)
        if run.ckpt.writes and (step % every == 0 or step == loop.total):
            run.ckpt.save_progress({"block": _PROGRESS_BLOCK, **loop.state_dict(), "block_losses": block_losses,
                                    "gen_idx": run.gen_idx.get_state(), "gen_noise": run.gen_noise.get_state()})

    return after_step
