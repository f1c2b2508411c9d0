"""The one optimizer loop behind every trainer in the package.

Block training (:func:`torchcfm_local.training.fit`), distillation students and the regression
policy all run :class:`StepLoop`; what differs between them is the loss (a callable that draws its
own batch) and what happens after a step (checkpoints, callbacks), never the loop itself.

Per step, in this order: learning rate of the step (linear warm-up times optional cosine decay,
through ``torch.optim.lr_scheduler.LambdaLR``), loss (under bfloat16 autocast when ``amp``),
finiteness check, backward, optional gradient-norm clipping, optimizer step, EMA update.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .._checks import positive_float, positive_int

__all__ = ["OptimConfig", "EMA", "StepLoop", "lr_factor", "progress_bar"]


def progress_bar(total: int, desc: str, enabled: bool, initial: int = 0):
    """A tqdm bar that leaves no trace when done (disabled when not ``enabled``)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, leave=False, dynamic_ncols=True)


def lr_factor(step: int, total: int, decay: Optional[str], warmup: int) -> float:
    """Learning-rate multiplier at batch ``step`` (0-based) of ``total``: linear warm-up over the
    first ``warmup`` batches, times the cosine decay to 0 over the run when ``decay="cosine"``."""
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    if decay == "cosine":
        factor *= 0.5 * (1 + math.cos(math.pi * step / total))
    return factor


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer settings of one training run.

    Args:
        lr: peak learning rate (positive, finite).
        weight_decay: AdamW's decoupled weight decay; ``0`` selects plain Adam.
        lr_decay: ``None`` (constant) or ``"cosine"`` (to 0 over the run).
        warmup: batches of linear warm-up at the start of the run.
        grad_clip: max gradient norm, or ``None``.
        ema_decay: keep an exponential moving average of the weights with this decay (in (0, 1),
            warmed up over the first steps, see :class:`EMA`) and make it the final weights;
            ``None`` disables it.
        amp: bfloat16 autocast of the loss (CUDA only; checked by the caller, who knows the device).
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_decay: Optional[str] = None
    warmup: int = 0
    grad_clip: Optional[float] = None
    ema_decay: Optional[float] = None
    amp: bool = False

    def __post_init__(self):
        positive_float(self.lr, "lr")
        if self.lr_decay not in (None, "cosine"):
            raise ValueError(f"lr_decay must be None or 'cosine', got {self.lr_decay!r}")
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.grad_clip is not None and not (isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0):
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip!r}")
        positive_int(self.warmup, "warmup", minimum=0)
        if self.ema_decay is not None and not (isinstance(self.ema_decay, float) and 0 < self.ema_decay < 1):
            raise ValueError(f"ema_decay must be a float in (0, 1) or None, got {self.ema_decay!r}")

    def optimizer(self, params) -> torch.optim.Optimizer:
        """AdamW when ``weight_decay > 0``, else Adam.

        With only CPU parameters, the optimizer skips its per-step CUDA-graph-capture check
        (``_accelerator_graph_capture_health_check``). That check asks whether a GPU is available on
        every ``step()``, and once ``pytorch_lightning`` is imported (torchdyn imports it), which
        sets ``PYTORCH_NVML_BASED_CUDA_CHECK=1``, each ask loads the NVML library anew: several
        percent of a small network's step on a CPU (``benchmarks/bench_kernels.py``). A capture of
        CPU parameters cannot happen, so nothing is lost.
        """
        params = list(params)
        if self.weight_decay > 0:
            opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=self.lr)
        if params and all(isinstance(p, torch.Tensor) and p.device.type == "cpu" for p in params):
            opt._accelerator_graph_capture_health_check = _no_capture_check
        return opt


def _no_capture_check() -> None:
    """Stands in for the optimizer's graph-capture check when every parameter is on the CPU."""


class EMA:
    """Exponential moving average of a module's floating-point state (weights and float buffers).

    ``update(step)``: ``avg <- d * avg + (1 - d) * current`` for every entry, with the decay warmed
    up over the first steps, ``d = min(decay, (1 + step) / (10 + step))`` (``step``: updates done
    before this one). Without the warm-up the average starts at the random initial weights and
    keeps ``decay ** steps`` of them, which a short run never sheds (0.999 over 500 steps keeps
    61%); with it the average covers about the last tenth of the steps until ``decay`` takes over.
    ``state`` is a plain dict of tensors (what a checkpoint stores); ``copy_to()`` makes the
    average the weights.
    """

    def __init__(self, module: nn.Module, decay: float, state: Optional[dict] = None):
        self.module, self.decay = module, decay
        current = module.state_dict()
        self.state = state if state is not None else {
            k: v.detach().clone() for k, v in current.items() if v.is_floating_point()}
        # state_dict tensors share storage with the weights the optimizer updates in place
        self._pairs = [(avg, current[k]) for k, avg in self.state.items()]

    def decay_at(self, step: int) -> float:
        """The decay used by the update after ``step`` earlier updates."""
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, step: int):
        weight_of_current = 1 - self.decay_at(step)
        for avg, weight in self._pairs:
            avg.lerp_(weight, weight_of_current)

    def copy_to(self):
        self.module.load_state_dict({**self.module.state_dict(), **self.state})


class StepLoop:
    """``total`` optimizer steps on ``module``'s parameters, resumable from :meth:`state_dict`.

    Args:
        module: the trained network (its parameters are optimized; EMA tracks its state).
        total: number of optimizer steps.
        config: :class:`OptimConfig`.
        desc: progress-bar label, also the prefix of error messages (e.g. ``"block 3/9"``).
        progress: show a progress bar.
        reduce: maps the detached loss to the value that is recorded (e.g. the mean over ranks).
        error_hint: appended to the non-finite-loss error (e.g. where finished work was kept).
        state: a :meth:`state_dict` to continue from.
    """

    def __init__(self, module: nn.Module, total: int, config: OptimConfig, *, desc: str = "train",
                 progress: bool = True, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                 error_hint: str = "", state: Optional[dict] = None):
        self.module, self.total, self.config = module, positive_int(total, "total"), config
        self.desc, self.progress, self.reduce, self.error_hint = desc, progress, reduce, error_hint
        self.params = list(module.parameters())
        self.opt = config.optimizer(self.params)
        self.step, self.losses, self.seconds = 0, [], 0.0
        ema_state = None
        if state is not None:
            module.load_state_dict(state["net"])
            self.opt.load_state_dict(state["opt"])
            self.step, self.losses = int(state["step"]), list(state["losses"])
            self.seconds, ema_state = float(state["train_seconds"]), state.get("ema")
        self.resumed_from = self.step
        self.ema = None if config.ema_decay is None else EMA(module, config.ema_decay, ema_state)
        start, cfg = self.step, config
        for group in self.opt.param_groups:  # the base rate, also for optimizer states saved without one
            group["initial_lr"] = cfg.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(start + s, total, cfg.lr_decay, cfg.warmup))
        self._tick = None

    def state_dict(self) -> dict:
        """What a resume needs: weights, optimizer, step, losses, EMA and time spent so far."""
        return {"net": self.module.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "losses": self.losses, "ema": None if self.ema is None else self.ema.state,
                "train_seconds": self.elapsed}

    @property
    def elapsed(self) -> float:
        """Seconds spent in :meth:`run` (over all resumes)."""
        return self.seconds + (0.0 if self._tick is None else time.perf_counter() - self._tick)

    def run(self, loss_fn: Callable[[int], torch.Tensor], after_step: Optional[Callable[[int, float], None]] = None):
        """Run the remaining steps; ``loss_fn(step)`` (0-based) draws a batch and returns its loss,
        ``after_step(steps_done, loss)`` runs after every step (checkpoints, callbacks).

        At the end the EMA (if any) becomes the module's weights. Returns the per-step losses.

        Raises:
            FloatingPointError: the loss became NaN/Inf (nothing is stepped with it).
        """
        cfg, device_type = self.config, (self.params[0].device.type if self.params else "cpu")
        self.module.train()
        bar = progress_bar(self.total, f"{self.desc} train", self.progress, initial=self.step)
        self._tick = time.perf_counter()
        try:
            while self.step < self.total:
                with torch.autocast(device_type, dtype=torch.bfloat16, enabled=cfg.amp):
                    loss = loss_fn(self.step)
                detached = loss.detach()
                value = (detached if self.reduce is None else self.reduce(detached)).item()
                if not math.isfinite(value):
                    raise FloatingPointError(
                        f"{self.desc}: loss became {value} at batch {self.step + 1}{self.error_hint}")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
                self.opt.step()
                self.scheduler.step()
                if self.ema is not None:
                    self.ema.update(self.step)
                self.step += 1
                self.losses.append(value)
                bar.update(1)
                if self.step % 50 == 0 or self.step == self.total:
                    bar.set_postfix(loss=f"{np.mean(self.losses[-50:]):.4g}")
                if after_step is not None:
                    after_step(self.step, value)
        finally:
            self.seconds, self._tick = self.elapsed, None
            bar.close()
        if self.ema is not None:
            self.ema.copy_to()
        return self.losses
