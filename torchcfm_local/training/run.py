"""The checkpoint directory of one ``fit`` run: what a crash leaves behind and a resume reads.

Three files, each written atomically by rank 0 and read by every rank:

* ``model.pt``: the model with its finished blocks and its data standardization (written when the
  run starts, so a resume restores the same map), plus the run's *fit state* (seed, run settings,
  data fingerprint, run id, generator states after the last finished block);
* ``pool.pt``: the in-memory pool after the last finished block (a ``pool_dir`` holds it instead;
  none with ``pool="ou"``, whose pool is the data itself);
* ``progress.pt``: the block in training (weights, optimizer, step, losses, EMA, generators),
  every ``checkpoint_every`` batches and after its last batch.

A run resumed from these files continues bit for bit as if it had never stopped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from ..checkpoint import CheckpointError, atomic_save, header, safe_load
from ..distributed import DistContext
from .config import FitConfig

__all__ = ["RunCheckpoint"]

MODEL_FILE, POOL_FILE, PROGRESS_FILE = "model.pt", "pool.pt", "progress.pt"


class RunCheckpoint:
    """The run's files in ``directory`` (``None``: a run without checkpoints; every write is a no-op)."""

    def __init__(self, directory: Union[str, Path, None], dist: DistContext):
        self.dir = None if directory is None else Path(directory)
        self.dist = dist
        self.writes = self.dir is not None and dist.is_main

    def holds_run(self) -> bool:
        """Whether the directory already holds a run (rank 0 looks; every rank gets its answer)."""
        return self.dist.broadcast_object(self.dir is not None and (self.dir / MODEL_FILE).exists())

    def where(self) -> str:
        """`` in <dir>`` for messages about kept work (empty without a directory)."""
        return "" if self.dir is None else f" in {self.dir}"

    # ------------------------------------------------------------------ writes (rank 0)
    def save_model(self, model, fit_state: dict):
        if self.writes:
            atomic_save(model.to_state(fit_state), self.dir / MODEL_FILE)

    def save_pool(self, rows: torch.Tensor, after_block: int, data_id: list):
        if self.writes:
            atomic_save({**header("pool"), "after_block": after_block, "fingerprint": data_id, "pool": rows},
                        self.dir / POOL_FILE)

    def save_progress(self, state: dict):
        if self.writes:
            atomic_save({**header("progress"), **state}, self.dir / PROGRESS_FILE)

    def clear_progress(self):
        if self.writes:
            (self.dir / PROGRESS_FILE).unlink(missing_ok=True)

    # ------------------------------------------------------------------ reads (every rank)
    def restore(self, model, settings: dict, data_id: list) -> dict:
        """Load the finished blocks and the data standardization into ``model``; return the run's fit state.

        Raises:
            ValueError: the run has another shape/schedule, other data or other settings.
            CheckpointError: ``model.pt`` is a saved model, not a fit checkpoint.
        """
        path = self.dir / MODEL_FILE
        saved = type(model).load(path, velocity_factory=model.velocity_factory, matcher=model.matcher)
        if saved.shape != model.shape or saved.schedule != model.schedule or saved.cond_dim != model.cond_dim:
            raise ValueError(
                f"{self.dir} holds a run of shape {saved.shape}, cond_dim {saved.cond_dim} with {saved.schedule!r}; "
                f"this model has shape {model.shape}, cond_dim {model.cond_dim} with {model.schedule!r}"
            )
        state = saved.fit_state
        if not state:
            raise CheckpointError(f"{path} is a saved model, not a fit checkpoint")
        if not np.allclose(state["fingerprint"], data_id, rtol=1e-9, atol=1e-6):
            raise ValueError(f"{self.dir} was trained on other data (different size or values); resume with the same x")
        before = FitConfig.saved_settings(state["hyper"])
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            diffs = ", ".join(f"{k}: {before.get(k)!r} -> {settings[k]!r}" for k in changed)
            hint = (f" (relaunch with torchrun --nproc_per_node={before['world_size']})"
                    if "world_size" in changed else "")
            raise ValueError(f"resume must use the run's settings; changed: {diffs}{hint}")
        model.load_state_dict(saved.state_dict())
        model.n_trained = saved.n_trained
        model.standardizer = saved.standardizer
        return state

    def load_pool(self, model, n_rows: int) -> Optional[torch.Tensor]:
        """The pool saved after block ``model.n_trained``, or ``None`` (missing, stale or not needed:
        the caller recomputes it, which is deterministic)."""
        if self.dir is None or model.n_trained in (0, model.n_blocks):
            return None
        try:
            saved = safe_load(self.dir / POOL_FILE, "pool")
            if saved["after_block"] == model.n_trained and saved["pool"].shape[0] == n_rows:
                return saved["pool"].to(model.dtype)
        except (FileNotFoundError, CheckpointError):
            pass
        return None

    def load_progress(self, block: int) -> Optional[dict]:
        """The saved state of ``block`` in training, or ``None``."""
        path = None if self.dir is None else self.dir / PROGRESS_FILE
        if path is None or not path.exists():
            return None
        state = safe_load(path, "progress")
        return state if state["block"] == block else None
