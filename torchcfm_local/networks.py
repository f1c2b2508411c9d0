"""Default velocity networks.

A velocity network maps ``(t, x)`` with ``t`` of shape ``(B,)`` and ``x`` of shape ``(B, *shape)``
to a velocity shaped like ``x``. Networks listed in :data:`NETWORKS` carry a ``config`` dict of
their constructor arguments, so a saved model can rebuild them without user code.
"""
from __future__ import annotations

import importlib
import math

import torch
from torch import nn

__all__ = ["MLP", "NETWORKS", "network_spec"]

_ACTIVATIONS = {"silu": nn.SiLU, "selu": nn.SELU, "relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}


class MLP(nn.Module):
    r"""Fully connected velocity network with Fourier time features.

    Input: ``x`` flattened to ``(B, D)`` concatenated with the time features
    :math:`[t, \sin(2^k \pi t), \cos(2^k \pi t)]_{k < n_{freq}}`; ``depth`` hidden layers of
    ``width`` units; output reshaped to ``x``'s shape. The reference LFM runs use width 256 with
    3-5 hidden layers.

    Args:
        dim: flattened data dimension ``D`` (``prod(shape)`` for shaped data).
        width: hidden units per layer.
        depth: number of hidden layers (>= 1).
        n_freq: number of Fourier frequencies of the time input (0: raw ``t`` only).
        activation: one of ``silu``, ``selu``, ``relu``, ``tanh``, ``elu``.
        cond_features: width of a conditioning input ``cond`` ``(B, cond_features)``
            concatenated to the input (0: unconditional). A conditional
            :class:`~torchcfm_local.LocalFlowMatching` passes ``cond_dim + 1`` features.
    """

    def __init__(self, dim: int, width: int = 256, depth: int = 3, n_freq: int = 4, activation: str = "silu",
                 cond_features: int = 0):
        super().__init__()
        for name, value, low in (("dim", dim, 1), ("width", width, 1), ("depth", depth, 1), ("n_freq", n_freq, 0),
                                 ("cond_features", cond_features, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"MLP {name} must be an int >= {low}, got {value!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(_ACTIVATIONS)}")
        self.config = {"dim": dim, "width": width, "depth": depth, "n_freq": n_freq, "activation": activation}
        if cond_features:
            self.config["cond_features"] = cond_features
        self.cond_features = cond_features
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq, dtype=torch.float32), persistent=False)
        layers: list[nn.Module] = []
        fan_in = dim + 1 + 2 * n_freq + cond_features
        for _ in range(depth):
            layers += [nn.Linear(fan_in, width), _ACTIVATIONS[activation]()]
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

    _lazy = {"ConditionalUnet1D": "torchcfm_local.policy.unet1d", "UNetVelocity": "torchcfm_local.images.unet"}

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
