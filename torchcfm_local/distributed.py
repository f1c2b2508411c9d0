"""Data-parallel training on ``torch.distributed``: launch a script that calls ``fit`` with torchrun.

``fit`` runs data-parallel whenever a process group is up, or when torchrun's environment
(``WORLD_SIZE`` > 1) says it should be and no group exists yet; it then creates one (gloo on
CPU, nccl on CUDA). What each rank does:

* **Batches.** All ranks draw the same global batch indices, noise and times from generators
  seeded alike, and each takes its contiguous share of ``batch_size / world_size`` rows. The
  block's network is wrapped in ``DistributedDataParallel``, which averages the gradients, so a
  step equals the single-process step on the whole batch up to floating-point summation order.
  Matchers that pair within a batch (minibatch OT) pair within each rank's share.
* **Pushforward.** Rank ``r`` pushes rows ``shard(n, r, world)`` of the pool. An in-memory pool
  is then completed on every rank by broadcasts of each rank's rows, chunk by chunk; a
  memory-mapped pool (``pool_dir``) needs no communication: every rank writes its rows of the
  shared file, which must therefore be visible to all ranks (one machine, or a shared filesystem).
* **Files.** Only rank 0 writes checkpoints; every rank reads them on ``resume``.
* **A rank that dies.** The others do not wait for it forever: a process group made here gives
  up on a collective after :func:`collective_timeout` (``TORCHCFM_LOCAL_DIST_TIMEOUT`` seconds,
  default 10 minutes), and a peer whose process is gone (its sockets closed) fails the next
  collective at once; either way every surviving rank raises a RuntimeError from torch.distributed
  (gloo: "Connection closed/reset by peer", or "Timed out waiting ...") and exits. Rank 0's
  checkpoints stay as they were after the last step saved: relaunch all ranks with
  ``resume=True`` (``--resume``) to continue (tests/test_kill_rank.py).
"""
from __future__ import annotations

import atexit
import datetime
import math
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Optional

import torch

__all__ = ["DistContext", "context", "shard", "collective_timeout", "TIMEOUT_ENV"]

TIMEOUT_ENV = "TORCHCFM_LOCAL_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of ``n`` that ``rank`` of ``world`` handles (contiguous, sizes differ by <= 1)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


@dataclass(frozen=True)
class DistContext:
    """This process's place in the run: ``rank`` of ``world``; ``world == 1`` is a plain run."""

    rank: int = 0
    world: int = 1
    comm_device: torch.device = torch.device("cpu")

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.active:
            torch.distributed.barrier()

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=src)
        return box[0]

    def gather_objects(self, obj: Any) -> list:
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def check_agree(self, values: dict):
        """Every rank must pass the same ``values`` (e.g. data fingerprint and settings); a
        ``ValueError`` names the keys that differ and each rank's value."""
        if not self.active:
            return
        seen = self.gather_objects(values)
        bad = sorted({key for other in seen[1:] for key in values if other[key] != seen[0][key]})
        if bad:
            detail = "; ".join(f"{key}: " + ", ".join(f"rank {r}: {v[key]!r}" for r, v in enumerate(seen)) for key in bad)
            raise ValueError(f"all ranks must call fit with the same data and settings, but they differ in {detail}")

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        """The mean of a tensor over ranks (a copy on every rank)."""
        if not self.active:
            return value
        buf = value.detach().to(self.comm_device, copy=True)
        torch.distributed.all_reduce(buf)
        return (buf / self.world).to(value.device)

    def share_rows(self, pool: torch.Tensor, chunk_size: int):
        """Complete an in-memory pool: rank r broadcasts its rows ``shard(n, r, world)`` to all."""
        if not self.active:
            return
        n = pool.shape[0]
        for src in range(self.world):
            start, stop = shard(n, src, self.world)
            for i in range(start, stop, chunk_size):
                rows = pool[i : min(i + chunk_size, stop)]
                buf = rows.to(self.comm_device).contiguous()
                torch.distributed.broadcast(buf, src=src)
                if src != self.rank:
                    rows.copy_(buf)

    def new_token(self) -> str:
        """A random id chosen by rank 0 and known to all ranks."""
        return self.broadcast_object(uuid.uuid4().hex if self.is_main else None)


_SETTLE_REGISTERED = False


def _register_settle():
    global _SETTLE_REGISTERED
    if not _SETTLE_REGISTERED:
        atexit.register(_settle_at_exit)
        _SETTLE_REGISTERED = True


def collective_timeout(seconds: Optional[float] = None) -> datetime.timedelta:
    """How long a rank waits in one collective before it gives up: ``seconds``, else the
    ``TORCHCFM_LOCAL_DIST_TIMEOUT`` environment variable (seconds), else 10 minutes.

    Long enough for rank 0 to write a checkpoint while the others wait; short enough that a run
    whose peer hangs (a stalled machine, a lost network) ends instead of holding its devices.
    """
    raw = seconds if seconds is not None else os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return datetime.timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if not 0 < value < math.inf:
        name = "timeout" if seconds is not None else TIMEOUT_ENV
        raise ValueError(f"{name} must be a positive number of seconds, got {raw!r}")
    return datetime.timedelta(seconds=value)


def _settle_at_exit():
    # Each collective that DDP launches inside backward() holds a Python object (the context that
    # autograd stashes in thread-local state), and the backend's worker thread that ran it drops it
    # last, which needs the GIL. A process that exits a few milliseconds after a backward (an early
    # stop, an exception) can reach interpreter finalization while that thread still waits for the
    # GIL; the thread is then killed inside a C++ destructor and the process aborts ("terminate
    # called without an active exception": 6 of 72 two-process gloo runs of the stop-after-block
    # example with torch 2.14). Sleeping releases the GIL so those threads finish first (0 of 100).
    time.sleep(0.2)


def _destroy_group():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def context(device: Optional[torch.device] = None, init: bool = True,
            timeout: Optional[float] = None) -> DistContext:
    """The current :class:`DistContext`.

    Uses an initialized default process group; otherwise, when ``init`` and torchrun's
    environment variables announce ``WORLD_SIZE > 1``, initializes one (nccl when ``device`` is
    CUDA, else gloo) whose collectives give up after :func:`collective_timeout` (``timeout``
    seconds), and destroys it when the interpreter exits. Without either, a single-process context.
    """
    dist = torch.distributed
    if not dist.is_available():
        return DistContext()
    if not dist.is_initialized():
        if not init or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return DistContext()
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=collective_timeout(timeout))
        atexit.register(_destroy_group)  # we made it, so we take it down (runs after _settle_at_exit)
    world = dist.get_world_size()
    if world == 1:
        return DistContext()
    _register_settle()
    comm = device if dist.get_backend() == "nccl" and device is not None else torch.device("cpu")
    if dist.get_backend() == "nccl" and (comm is None or comm.type != "cuda"):
        raise RuntimeError("an nccl process group needs the model on a CUDA device; move it with lfm.to(device)")
    return DistContext(dist.get_rank(), world, comm)
