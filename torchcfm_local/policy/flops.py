"""Training and sampling compute of policies, in floating-point operations (FLOPs).

Epochs and wall time are poor measures of what a flow policy costs: at equal epochs and equal
parameters an LFM policy pushes every training row through one block network of a third of the
global network's size, and on a CPU with small networks the wall time is mostly per-step
overhead, not arithmetic. FLOPs are the hardware-free measure of compute that the comparison
"at equal compute" needs.

Counted with :class:`torch.utils.flop_counter.FlopCounterMode`: matrix multiplications and
convolutions, two FLOPs per multiply-add (nearly all the arithmetic of an MLP or a U-Net);
elementwise work (activations, the optimizer, the EMA) is not counted. Each network is measured
once, on a small batch, per sample:

* training: ``batches x batch_size`` rows through the forward and backward pass of each block's
  network (the matcher's interpolation is elementwise);
* LFM's pushforward after block n: ``rows x NFE`` forward passes (``BlockReport.pushforward_nfe``),
  plus the step-choosing probe of :func:`~torchcfm_local.training.steps.choose_steps` when it ran
  (:data:`~torchcfm_local.training.steps.PROBE_ROWS` rows, 4 evaluations per RK4 step, for the
  reference and every step count tried);
* sampling: the chunk's network evaluations (``NFE``) times one forward pass per observation window.
"""
from __future__ import annotations

import copy

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..training.steps import CANDIDATE_STEPS, PROBE_ROWS, REFERENCE_STEPS

__all__ = ["network_flops", "fit_flops", "steps_flops", "chunk_flops"]

_ROWS = 4  #: rows of the measuring batch (the counts are linear in the rows)


def network_flops(policy) -> list[tuple[float, float]]:
    """Per block network of ``policy`` (a regression policy: its MLP), ``(forward, forward +
    backward)`` FLOPs per sample, measured on a copy (the policy's weights and gradients are untouched)."""
    cond = torch.randn(_ROWS, policy.cond_dim)
    if not hasattr(policy, "flow"):
        return [_measure(policy.net, lambda net: net(cond))]
    x = torch.randn(_ROWS, policy.horizon, policy.action_dim)
    t, flagged = torch.rand(_ROWS), torch.cat([cond, torch.ones(_ROWS, 1)], dim=1)  # the composer's presence flag
    return [_measure(net, lambda net: net(t, x, flagged)) for net in policy.flow.nets]


def _measure(net, call) -> tuple[float, float]:
    net = copy.deepcopy(net)
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            call(net)
    with FlopCounterMode(display=False) as both:
        call(net).sum().backward()
    return forward.get_total_flops() / _ROWS, both.get_total_flops() / _ROWS


def steps_flops(costs: list[tuple[float, float]], batches: list[int], batch_size: int) -> float:
    """Training FLOPs of ``batches[n]`` optimizer steps of ``batch_size`` rows on block n + 1."""
    return float(sum(b * batch_size * train for b, (_, train) in zip(batches, costs)))


def fit_flops(costs: list[tuple[float, float]], report, batch_size: int, rows: int) -> float:
    """Training FLOPs of a :class:`~torchcfm_local.reports.FitReport`: every block's steps of
    ``batch_size`` rows and every pushforward of the ``rows`` pool rows (with its probe)."""
    total = steps_flops(costs, [b.batches for b in report.blocks], batch_size)
    for block, (forward, _) in zip(report.blocks, costs):
        total += rows * block.pushforward_nfe * forward
        if block.pushforward_steps is not None:  # the steps were chosen by a probe (choose_steps)
            tried = [k for k in CANDIDATE_STEPS if k <= block.pushforward_steps]
            total += min(PROBE_ROWS, rows) * 4 * (REFERENCE_STEPS + sum(tried)) * forward
    return float(total)


def chunk_flops(costs: list[tuple[float, float]], nfe: float) -> float:
    """Sampling FLOPs of one chunk for one observation window: ``nfe`` evaluations spread evenly
    over the blocks (the policies' RK4 takes as many steps in every block; regression: ``nfe`` = 1)."""
    return float(nfe / len(costs) * sum(forward for forward, _ in costs))
