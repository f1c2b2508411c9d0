"""Default velocity networks.

A velocity network maps ``(t, x)`` with ``t`` of shape ``(B,)`` and ``x`` of shape ``(B, *shape)``
to a velocity shaped like ``x``. Networks listed in :data:`NETWORKS` carry a ``config`` dict of
their constructor arguments, so a saved model can rebuild them without user code.
:func:`width_for_parameters` sizes a network to a parameter count (equal-parameter comparisons).
"""
from __future__ import annotations

import importlib
import math
from typing import Callable, Optional

import torch
from torch import nn

from ._checks import positive_int

__all__ = ["MLP", "NETWORKS", "ACTIVATIONS", "network_spec", "count_parameters", "width_for_parameters"]


def _softplus20(x: torch.Tensor) -> torch.Tensor:
    """The value of :class:`_Softplus20Fn` (``x >= -2``), by plain tensor operations."""
    t = torch.clamp(x, max=2.0).mul_(-20.0)
    t.exp_().add_(1.0).log_()
    return t.mul_(0.05).add_(x)


class _Softplus20Fn(torch.autograd.Function):
    r"""``Softplus(beta=20)`` on inputs clamped at -2, by vectorized ``exp`` and ``log``.

    On the CPU, PyTorch's softplus kernel is slower than a few vectorized passes over memory, and
    its speed depends on the values (``benchmarks/bench_kernels.py`` times both). Here
    :math:`y = x + \log(1 + e^{-20 \min(x, 2)}) / 20` takes a handful of in-place passes: ``x`` is
    at least -2, so the exponential stays below ``e^{40}`` and, thanks to the ``min`` at 2, above
    ``e^{-40}``: no overflow, and no subnormal numbers (which CPUs process many times slower). The
    absolute error against the exact Softplus is under ``1.3e-7`` in float32 (the cancellation
    ``x + (-x + ...)`` for negative ``x``), within float32's resolution of values near 1, so a
    value may be a few ``1e-8`` below zero. The slope is PyTorch's own ``softplus_backward``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return _softplus20(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (x,) = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.aten.softplus_backward(grad, x, 20.0, 20.0)

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return tangent * torch.sigmoid(20.0 * x)


class Softplus20(nn.Module):
    """``Softplus(beta=20)`` (a smooth ReLU) that never computes subnormal floats.

    Below ``x = -2`` Softplus(beta=20) is under ``2.1e-19`` and its slope under ``4.3e-18``, but
    computing them (``exp(20 x)``) gives subnormal numbers, on which CPU arithmetic is many times
    slower; trained networks have many such pre-activations. So inputs are clamped at -2 first:
    the value there stays ``softplus(-2) ~ 2.1e-19`` and the slope is 0, both below float32's
    resolution of the rest of the network. ``inplace=True`` clamps the input tensor itself (as
    :class:`MLP` does with its layers' outputs), which saves a pass over memory. Float32 and
    float64 inputs on the CPU go through vectorized ``exp``/``log`` passes (:class:`_Softplus20Fn`:
    faster there than PyTorch's kernel, the same slope, values within ``1.3e-7``); other devices
    (where PyTorch's kernel is one fused pass) and other dtypes (e.g. bfloat16 under autocast)
    through ``torch.nn.functional.softplus``.
    """

    def __init__(self, inplace: bool = False):
        super().__init__()
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp_(min=-2.0) if self.inplace else x.clamp(min=-2.0)
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return nn.functional.softplus(x, beta=20.0)  # one fused pass on GPUs; reduced precisions
        if torch.is_grad_enabled() and x.requires_grad:
            return _Softplus20Fn.apply(x)
        return _softplus20(x)  # no graph to record: skip the autograd.Function's per-call cost

    def extra_repr(self) -> str:
        return "inplace=True" if self.inplace else ""


#: activation name -> module factory (:class:`MLP`'s ``activation``)
ACTIVATIONS = {"silu": nn.SiLU, "selu": nn.SELU, "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU,
                "softplus20": lambda: Softplus20(inplace=True), "gelu": nn.GELU}


class MLP(nn.Module):
    r"""Fully connected velocity network ``v(t, x)`` with Fourier time features.

    Input: ``x`` flattened to ``(B, D)`` concatenated with the time features
    :math:`[t, \sin(2^k \pi t), \cos(2^k \pi t)]_{k < n_{freq}}`; ``depth`` hidden layers of
    ``width`` units; output reshaped to ``x``'s shape. The reference LFM runs use width 256 with
    3-5 hidden layers.

    Defaults, from the screen of ``benchmarks/bench_recipe.py`` (results and discussion in
    ``benchmarks/results/README.md``, section "Velocity network"): ``Softplus(beta=20)`` (the LFM
    reference code's activation) with one time frequency. Against SiLU with four frequencies it
    gave every method, global flows and LFM alike, a lower test NLL in 2D and the global flows a
    much lower one on image patches, at a similar solver effort. Higher frequencies
    (:math:`4\pi, 8\pi`) make Softplus fields change fast in ``t``, so the adaptive solver needs
    many more steps (``benchmarks/results/eval_cost.md``); raw time alone (``n_freq=0``) let briefly
    trained LFM chains decode some noise far outside the data
    (``benchmarks/results/decode_outliers.md``).

    Args:
        dim: flattened data dimension ``D`` (``prod(shape)`` for shaped data).
        width: hidden units per layer.
        depth: number of hidden layers (>= 1).
        n_freq: number of Fourier frequencies of the time input (0: raw ``t`` only).
        activation: one of ``silu``, ``selu``, ``relu``, ``tanh``, ``elu``, ``gelu`` or
            ``softplus20`` (:class:`Softplus20`: ``Softplus(beta=20)``, a smooth ReLU; the LFM
            reference code's choice).
        cond_features: width of a conditioning input ``cond`` ``(B, cond_features)``
            concatenated to the input (0: unconditional). A conditional
            :class:`~torchcfm_local.LocalFlowMatching` passes ``cond_dim + 1`` features.
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 3, n_freq: int = 1, activation: str = "softplus20",
                 cond_features: int = 0):
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("width", width, 1), ("depth", depth, 1), ("n_freq", n_freq, 0),
                                 ("cond_features", cond_features, 0)):
            positive_int(value, f"MLP {name}", minimum=low)
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.config = {"dim": dim, "width": width, "depth": depth, "n_freq": n_freq, "activation": activation}
        if cond_features:
            self.config["cond_features"] = cond_features
        self.cond_features = cond_features
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32), persistent=False)
        layers: list[nn.Module] = []
        fan_in = dim + 1 + 2 * n_freq + cond_features
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), ACTIVATIONS[activation]()]
            fan_in = width
        layers.append(nn.Linear(fan_in, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, t: torch.Tensor, x: torch.Tensor, cond: "torch.Tensor | None" = None) -> torch.Tensor:
        """``t``: ``(B,)`` or scalar; ``x``: ``(B, *shape)`` with ``prod(shape) == dim``;
        ``cond``: ``(B, cond_features)`` for a conditional network, else ``None``."""
        flat = x.reshape(x.shape[0], -1)
        t = torch.as_tensor(t, dtype=flat.dtype, device=flat.device).reshape(-1, 1).expand(flat.shape[0], 1)
        angles = t * self.freqs.to(flat.dtype)
        parts = [flat, t, torch.sin(angles), torch.cos(angles)]
        if (cond is None) != (self.cond_features == 0):
            raise ValueError(f"this MLP takes cond_features={self.cond_features}; got cond={None if cond is None else tuple(cond.shape)}")
        if cond is not None:
            parts.append(cond.reshape(flat.shape[0], -1).to(flat.dtype))
        return self.net(torch.cat(parts, dim=-1)).reshape(x.shape)


class _Registry(dict):
    """Type name -> class; networks of optional subpackages are imported on first lookup."""

    _lazy = {"ConditionalUnet1D": "torchcfm_local.policy.unet1d", "UNetVelocity": "torchcfm_local.images.unet",
             "SharedVelocity": "torchcfm_local.shared", "SharedBlock": "torchcfm_local.shared"}

    def __missing__(self, name: str):
        if name not in self._lazy:
            raise KeyError(name)
        self[name] = getattr(importlib.import_module(self._lazy[name]), name)
        return self[name]

    def __contains__(self, name) -> bool:
        return dict.__contains__(self, name) or name in self._lazy


#: Networks a checkpoint can rebuild from their ``config`` (type name -> class).
NETWORKS: dict[str, type[nn.Module]] = _Registry(MLP=MLP)


def network_spec(net: nn.Module) -> "dict | None":
    """``{"type", "config"}`` for a network in :data:`NETWORKS` (rebuildable from a checkpoint), else ``None``."""
    name = type(net).__name__
    if name in NETWORKS and NETWORKS[name] is type(net) and isinstance(getattr(net, "config", None), dict):
        return {"type": name, "config": dict(net.config)}
    return None


def count_parameters(net: nn.Module) -> int:
    """Number of scalar parameters of ``net`` (every tensor in ``net.parameters()``, trainable or not)."""
    return sum(p.numel() for p in net.parameters())


def width_for_parameters(build: Callable[[int], nn.Module], target: int, *, step: int = 1,
                         start: Optional[int] = None) -> int:
    """The width (a multiple of ``step``) whose network has the parameter count closest to ``target``.

    Used to give a one-block (global) model as many parameters as all blocks of an LFM model
    together. ``build(width)`` must return a network whose parameter count does not decrease
    with the width. The answer is the smallest width ``w`` with ``count(w) >= target`` or the
    width ``w - step`` below it, whichever is closer to ``target`` (the smaller one on a tie); a
    target at or below the count of width ``step`` gives ``step``. The networks built while
    searching do not advance torch's global CPU random generator, so a model built after the
    search is initialized the same however many widths were probed.

    Args:
        build: width (hidden units, channels, ...) -> network; called once per width probed.
        target: the parameter count to match (> 0).
        step: widths probed are ``step, 2 * step, ...`` (for example 32 for U-Nets whose group
            norms need multiples of 32).
        start: a guess of the answer (in width units, not steps); the search brackets the answer
            from there, so a close guess builds fewer networks. Default: ``step``.

    Returns:
        The chosen width, a positive multiple of ``step``.
    """
    positive_int(target, "target")
    positive_int(step, "step")
    counts: dict[int, int] = {}

    def count(units: int) -> int:  # parameters at width units * step, each width built once
        if units not in counts:
            with torch.random.fork_rng(devices=[]):  # probing leaves the caller's CPU random stream alone
                counts[units] = count_parameters(build(units * step))
        return counts[units]

    # bracket the first width that reaches the target: count(lo) < target <= count(hi);
    # lo = 0 stands for "below the smallest width"
    guess = max(1, round((start or step) / step))
    if count(guess) < target:
        lo, hi = guess, 2 * guess
        while count(hi) < target:
            lo, hi = hi, 2 * hi
    else:
        lo, hi = guess // 2, guess
        while lo >= 1 and count(lo) >= target:
            lo, hi = lo // 2, lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) < target else (lo, mid)
    if lo == 0:
        return hi * step
    return step * min((lo, hi), key=lambda units: abs(count(units) - target))
