"""A conditional 1D temporal U-Net velocity network for action chunks.

The layout follows the ConditionalUnet1D of Diffusion Policy (Chi et al., 2023): the action
chunk ``x`` of shape ``(B, horizon, action_dim)`` is treated as a 1D signal with ``action_dim``
channels over ``horizon`` time steps, processed by a convolutional U-Net whose residual blocks are
modulated by FiLM from a global conditioning vector (a time embedding concatenated with the
observation features ``cond``). Here ``t`` is the flow-matching time in ``[0, 1]`` and the output is
a velocity shaped like ``x``.

Two size presets are provided as keyword dicts for the constructor: :data:`DP_FULL` (Diffusion
Policy's full size) and :data:`SMALL` (for CPU runs).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import positive_int

__all__ = ["ConditionalUnet1D", "DP_FULL", "SMALL"]

#: Diffusion Policy's full-size U-Net (down_dims 256/512/1024, kernel 5, 8 groups, 256-d time
#: embedding). With ``action_dim=7, horizon=16, cond_features=47`` (= 2 * 23 + 1)
#: :class:`ConditionalUnet1D` has 65,892,615 parameters.
DP_FULL = {"down_dims": [256, 512, 1024], "kernel_size": 5, "n_groups": 8, "time_dim": 256}

#: A small U-Net for CPU runs. With ``action_dim=7, horizon=16, cond_features=47``
#: :class:`ConditionalUnet1D` has 1,111,591 parameters.
SMALL = {"down_dims": [32, 64, 128], "kernel_size": 5, "n_groups": 8, "time_dim": 32}

#: Flow-matching time ``t`` in ``[0, 1]`` is multiplied by this before the sinusoidal embedding,
#: so that the embedding sees the same range as a diffusion step index in ``[0, 1000]``.
_TIME_SCALE = 1000.0


def _check_int(name: str, value, low: int) -> None:
    positive_int(value, f"ConditionalUnet1D {name}", minimum=low)


class _SinusoidalEmbedding(nn.Module):
    """Sinusoidal features of a time ``t`` ``(B,)`` in ``[0, 1]`` -> ``(B, dim)`` (``dim`` even).

    Features are ``[sin(s t w_k), cos(s t w_k)]`` with ``s = 1000`` and geometric frequencies
    ``w_k = 10000^(-k / (dim/2 - 1))``, ``k < dim/2``.
    """

    def __init__(self, dim: int):
        super().__init__()
        half = dim // 2
        exponent = torch.arange(half, dtype=torch.float32) / max(half - 1, 1)
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * exponent), persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        angles = (_TIME_SCALE * t)[:, None] * self.freqs.to(t.dtype)[None, :]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


class _ConvBlock(nn.Sequential):
    """Conv1d (same padding) -> GroupNorm -> Mish: ``(B, c_in, L)`` -> ``(B, c_out, L)``."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, n_groups: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, c_out),
            nn.Mish(),
        )


class _ResBlock(nn.Module):
    """Residual block with FiLM conditioning.

    ``h = ConvBlock(x)``; ``h = scale * h + bias`` with ``(scale, bias) = Linear(g)`` per
    channel; ``h = ConvBlock(h)``; output ``h + residual(x)`` where ``residual`` is a 1x1 conv when
    ``c_in != c_out`` and the identity otherwise.

    Shapes: ``x`` ``(B, c_in, L)``, ``g`` ``(B, cond_dim)`` -> ``(B, c_out, L)``.
    """

    def __init__(self, c_in: int, c_out: int, cond_dim: int, kernel_size: int, n_groups: int):
        super().__init__()
        self.block1 = _ConvBlock(c_in, c_out, kernel_size, n_groups)
        self.block2 = _ConvBlock(c_out, c_out, kernel_size, n_groups)
        self.film = nn.Linear(cond_dim, 2 * c_out)
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        scale, bias = self.film(g).unsqueeze(-1).chunk(2, dim=1)
        h = self.block2(scale * h + bias)
        return h + self.residual(x)


class ConditionalUnet1D(nn.Module):
    r"""Conditional 1D temporal U-Net velocity ``v(t, x, cond)`` for action chunks.

    Architecture (``d_0, ..., d_{L-1}`` = ``down_dims``):

    * global conditioning ``g = [MLP(sinusoidal(1000 t)), cond]`` of width
      ``time_dim + cond_features`` (the MLP is ``time_dim -> 4 time_dim -> time_dim`` with Mish);
    * ``x`` is transposed to ``(B, action_dim, horizon)`` and its time axis is padded (edge
      replication) up to a multiple of ``2^(L-1)``, then cropped back at the end, so any
      ``horizon >= 1`` works;
    * encoder: at level ``i`` two FiLM residual blocks to ``d_i`` channels, a saved skip, and
      (except at the last level) a stride-2 Conv1d(kernel 3) halving the length;
    * mid: two residual blocks at ``d_{L-1}``;
    * decoder, for ``i = L-1, ..., 1``: concat the level-``i`` skip, two residual blocks to
      ``d_{i-1}`` channels, ConvTranspose1d(kernel 4, stride 2) doubling the length;
    * output: Conv1d block ``d_0 -> d_0`` and a 1x1 Conv1d to ``action_dim``.

    Each residual block is Conv1d(``kernel_size``, same padding) + GroupNorm(``n_groups``) + Mish,
    FiLM (per-channel scale and bias from a Linear of ``g``), a second conv block, and a 1x1 conv
    residual when the channel count changes.

    Args:
        action_dim: action channels ``A``.
        horizon: chunk length ``H`` (time steps).
        cond_features: width of the conditioning input ``cond`` ``(B, cond_features)``.
        down_dims: channel widths of the U-Net levels (non-empty, each divisible by ``n_groups``).
        kernel_size: odd convolution kernel size of the residual blocks.
        n_groups: GroupNorm groups.
        time_dim: width of the time embedding (even).

    ``config`` holds the constructor arguments (JSON-able), so ``ConditionalUnet1D(**net.config)``
    rebuilds the network. See :data:`DP_FULL` and :data:`SMALL` for size presets.
    """

    def __init__(self, action_dim: int, horizon: int, cond_features: int, down_dims=(64, 128, 256),
                 kernel_size: int = 5, n_groups: int = 8, time_dim: int = 64):
        super().__init__()
        _check_int("action_dim", action_dim, 1)
        _check_int("horizon", horizon, 1)
        _check_int("cond_features", cond_features, 1)
        _check_int("kernel_size", kernel_size, 1)
        _check_int("n_groups", n_groups, 1)
        _check_int("time_dim", time_dim, 2)
        if kernel_size % 2 != 1:
            raise ValueError(f"ConditionalUnet1D kernel_size must be odd, got {kernel_size}")
        if time_dim % 2 != 0:
            raise ValueError(f"ConditionalUnet1D time_dim must be even, got {time_dim}")
        if isinstance(down_dims, (str, bytes)) or not hasattr(down_dims, "__iter__"):
            raise ValueError(f"ConditionalUnet1D down_dims must be a sequence of ints, got {down_dims!r}")
        down_dims = list(down_dims)
        if not down_dims:
            raise ValueError("ConditionalUnet1D down_dims must be non-empty")
        for d in down_dims:
            _check_int("down_dims entry", d, 1)
            if d % n_groups != 0:
                raise ValueError(f"ConditionalUnet1D down_dims entries must be divisible by n_groups={n_groups}, "
                                 f"got {d}")
        self.config = dict(action_dim=action_dim, horizon=horizon, cond_features=cond_features,
                           down_dims=list(down_dims), kernel_size=kernel_size, n_groups=n_groups,
                           time_dim=time_dim)
        self.action_dim = action_dim
        self.horizon = horizon
        self.cond_features = cond_features
        self._multiple = 2 ** (len(down_dims) - 1)

        self.time_embed = nn.Sequential(
            _SinusoidalEmbedding(time_dim),
            nn.Linear(time_dim, 4 * time_dim),
            nn.Mish(),
            nn.Linear(4 * time_dim, time_dim),
        )
        cond_dim = time_dim + cond_features

        def res(c_in: int, c_out: int) -> _ResBlock:
            return _ResBlock(c_in, c_out, cond_dim, kernel_size, n_groups)

        n_levels = len(down_dims)
        self.down = nn.ModuleList()
        c_in = action_dim
        for i, d in enumerate(down_dims):
            last = i == n_levels - 1
            self.down.append(nn.ModuleList([
                res(c_in, d),
                res(d, d),
                nn.Identity() if last else nn.Conv1d(d, d, 3, stride=2, padding=1),
            ]))
            c_in = d
        self.mid = nn.ModuleList([res(down_dims[-1], down_dims[-1]), res(down_dims[-1], down_dims[-1])])
        self.up = nn.ModuleList()
        for i in range(n_levels - 1, 0, -1):
            d_out, d_in = down_dims[i], down_dims[i - 1]
            self.up.append(nn.ModuleList([
                res(2 * d_out, d_in),
                res(d_in, d_in),
                nn.ConvTranspose1d(d_in, d_in, 4, stride=2, padding=1),
            ]))
        self.final = nn.Sequential(
            _ConvBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
            nn.Conv1d(down_dims[0], action_dim, 1),
        )

    def forward(self, t: torch.Tensor, x: torch.Tensor, cond: "torch.Tensor | None" = None) -> torch.Tensor:
        """Velocity at time ``t``.

        Args:
            t: flow-matching time in ``[0, 1]``, a scalar tensor (shared by the batch) or ``(B,)``.
            x: action chunk ``(B, horizon, action_dim)``.
            cond: conditioning features ``(B, cond_features)`` (required).

        Returns:
            velocity ``(B, horizon, action_dim)``.
        """
        expected = (self.horizon, self.action_dim)
        if x.dim() != 3 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"ConditionalUnet1D expects x of shape (B, horizon={self.horizon}, "
                             f"action_dim={self.action_dim}), got {tuple(x.shape)}")
        batch = x.shape[0]
        if cond is None:
            raise ValueError(f"ConditionalUnet1D requires cond of shape (B, cond_features={self.cond_features}), "
                             f"got None")
        if cond.dim() != 2 or tuple(cond.shape) != (batch, self.cond_features):
            raise ValueError(f"ConditionalUnet1D expects cond of shape (B={batch}, "
                             f"cond_features={self.cond_features}), got {tuple(cond.shape)}")
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        if t.dim() == 0:
            t = t.expand(batch)
        elif tuple(t.shape) != (batch,):
            raise ValueError(f"ConditionalUnet1D expects t to be a scalar or of shape (B={batch},), "
                             f"got {tuple(t.shape)}")

        g = torch.cat([self.time_embed(t), cond.to(x.dtype)], dim=-1)
        h = x.transpose(1, 2)  # (B, A, H)
        pad = (-self.horizon) % self._multiple
        if pad:
            h = F.pad(h, (0, pad), mode="replicate")

        skips = []
        for block1, block2, downsample in self.down:
            h = block2(block1(h, g), g)
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, g)
        for block1, block2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(block2(block1(h, g), g))
        h = self.final(h)
        return h[..., :self.horizon].transpose(1, 2)
