"""Training: everything that changes a model's weights, kept apart from the model itself.

* :mod:`.config`: :class:`FitConfig`, every option of ``fit`` declared once;
* :mod:`.loop`: :class:`StepLoop`, the one optimizer loop (LR schedule, EMA, clipping, AMP,
  NaN check, progress bar) used by block training, distillation and the regression policy;
* :mod:`.pool`: :class:`TrainingPool`, the data pushed through the trained blocks;
* :mod:`.run`: :class:`RunCheckpoint`, the files that make a run resumable;
* :mod:`.blocks`: :class:`BlockTrainer` and ``train_blocks`` for loops of your own;
* :mod:`.fitting`: ``fit``, Algorithm 1 as a short orchestration of the above;
* :mod:`.joint`: the one loop over all blocks that ``fit`` runs when they share one network.
"""
from .blocks import BlockTrainer, train_blocks
from .config import PUSHFORWARD_ODE, FitConfig
from .fitting import fit
from .loop import EMA, OptimConfig, StepLoop, lr_factor
from .pool import TrainingPool
from .run import RunCheckpoint

__all__ = ["BlockTrainer", "EMA", "FitConfig", "OptimConfig", "PUSHFORWARD_ODE", "RunCheckpoint", "StepLoop",
           "TrainingPool", "fit", "lr_factor", "train_blocks"]
