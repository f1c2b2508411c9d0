"""The exact divergence of a velocity field: the trace of its Jacobian from ``D`` unit-vector VJPs.

:func:`torchcfm_local.likelihood.flow_divergence` (``estimator="exact"``) calls
:func:`exact_divergence` once per field evaluation, after one forward pass with autograd. The VJPs
reuse that forward pass and go through the backward in groups of unit vectors, batched in one of
:data:`MODES`; a field whose backward cannot be batched falls back to the next mode.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import Tensor

__all__ = ["exact_divergence", "group_size", "unit_vjps", "MODES"]

#: Most elements of the batched one-hot VJP tensor ``(k, B, D)`` held at once by the exact
#: divergence; larger problems split the ``D`` unit vectors into groups.
BATCH_ELEMENTS = 2**24

#: On the CPU the vmapped exact divergence takes ``k`` unit vectors at a time with
#: ``k * B <= CPU_ROWS`` (at least one; the ``D`` unit vectors split into groups of
#: near-equal size): one group's activations (``k * B`` rows of the network's width) then stay
#: cache-sized. Larger groups were slower on the CPU in
#: ``benchmarks/bench_divergence.py`` (results in ``benchmarks/results/divergence.md``); with
#: ``B >= CPU_ROWS`` the unit vectors go through one plain backward pass each. Other devices
#: use whole groups of :data:`BATCH_ELEMENTS`.
CPU_ROWS = 8192

#: Ways to compute the exact divergence, tried in this order; a field whose backward fails in
#: one falls back to the next for the rest of the integration:
#:
#: * ``"vmap"``: :func:`torch.func.vmap` over ``torch.autograd.grad`` of the one forward pass, in
#:   groups of unit vectors (see :data:`CPU_ROWS`);
#: * ``"batched"``: ``torch.autograd.grad(..., is_grads_batched=True)`` in groups of
#:   :data:`BATCH_ELEMENTS` (the only batched path before; its older vmap runs the
#:   backward of e.g. softplus, SiLU and clamp one unit vector at a time and concatenates);
#: * ``"loop"``: one ``torch.autograd.grad`` per unit vector (errors propagate).
MODES = ("vmap", "batched", "loop")

#: The mode an integration starts in (private; a benchmark sets ``"batched"`` to time the old path).
FIRST = "vmap"


def exact_divergence(y: Tensor, xg: Tensor, state: dict) -> Tensor:
    r""":math:`\sum_i \partial y_i / \partial x_i` per sample from ``D`` unit-vector VJPs.

    All VJPs reuse the one forward pass (graph ``y(xg)``); ``state["exact"]`` names the way they
    are batched (:data:`MODES`). If the field's backward fails in a batched mode, the group
    is retried in the next mode, which is kept for the rest of the integration; errors of the
    last mode (one VJP at a time) propagate.
    """
    batch, dim = y.shape[0], y[0].numel()
    div = y.new_zeros(batch)
    start = 0
    while start < dim:
        mode = state["exact"]
        stop = min(dim, start + group_size(mode, batch, dim, y.device))
        try:
            g = unit_vjps(y, xg, start, stop, mode)
        except Exception:  # any failure of a batched backward: retry this group in the next mode
            if mode == MODES[-1]:
                raise
            state["exact"] = MODES[MODES.index(mode) + 1]
            continue
        if g is not None:  # g: (k, B, D); take component start + j of row j
            j = torch.arange(stop - start, device=y.device)
            div += g[j, :, start + j].sum(0)
        start = stop
    return div


def group_size(mode: str, batch: int, dim: int, device: torch.device) -> int:
    """How many unit vectors one backward call of ``mode`` takes."""
    if mode == "loop":
        return 1
    group = max(1, min(dim, BATCH_ELEMENTS // max(1, batch * dim)))
    if mode == "vmap":
        if device.type == "cpu":
            group = max(1, min(group, CPU_ROWS // max(1, batch)))
        group = -(-dim // -(-dim // group))  # as many groups, of near-equal sizes (9 -> 5 + 4, not 8 + 1)
    return group


def unit_vjps(y: Tensor, xg: Tensor, start: int, stop: int, mode: str) -> Optional[Tensor]:
    """``(e_i^T dy/dx)`` for ``i`` in ``[start, stop)`` as ``(stop - start, B, D)``, or ``None`` if
    ``y`` does not depend on ``xg``."""
    batch, dim, k = y.shape[0], y[0].numel(), stop - start
    basis = torch.zeros(k, batch, dim, dtype=y.dtype, device=y.device)
    j = torch.arange(k, device=y.device)
    basis[j, :, start + j] = 1.0
    basis = basis.reshape(k, *y.shape)
    if k == 1 or mode == "loop":
        (g,) = torch.autograd.grad(y, xg, basis[0], retain_graph=True, allow_unused=True)
        return None if g is None else g.reshape(1, batch, dim)
    if mode == "batched":
        (g,) = torch.autograd.grad(y, xg, basis, retain_graph=True, is_grads_batched=True, allow_unused=True)
        return None if g is None else g.reshape(k, batch, dim)

    def vjp(v: Tensor) -> Tensor:
        (g,) = torch.autograd.grad(y, xg, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(xg) if g is None else g

    with warnings.catch_warnings():  # ops without a batching rule still work, one vector at a time
        warnings.filterwarnings("ignore", message=".*performance drop.*batching rule")
        return torch.func.vmap(vjp)(basis).reshape(k, batch, dim)
