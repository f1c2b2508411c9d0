"""torchcfm's U-Net as a rebuildable LFM block network."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["UNetVelocity", "CIFAR10_PAPER", "CIFAR10_TORCHCFM"]

#: The LFM paper's CIFAR-10 block U-Net as we read it (width 128, channel multipliers
#: [1, 2, 2, 2, 2]; the paper reports about 160M parameters over 4 blocks). Attention resolution,
#: heads and dropout are not given in the paper; these are torchcfm's CIFAR-10 example values.
#: With them one block has 45.7M parameters (182.6M for 4), so this is our closest reading.
CIFAR10_PAPER = {"num_channels": 128, "num_res_blocks": 2, "channel_mult": [1, 2, 2, 2, 2], "attention_resolutions": "16",
                 "num_heads": 4, "num_head_channels": 64, "dropout": 0.1}
#: torchcfm's own CIFAR-10 example network (35.7M parameters).
CIFAR10_TORCHCFM = {"num_channels": 128, "num_res_blocks": 2, "channel_mult": [1, 2, 2, 2], "attention_resolutions": "16",
                    "num_heads": 4, "num_head_channels": 64, "dropout": 0.1}


class UNetVelocity(nn.Module):
    """``torchcfm.models.unet.UNetModel`` (its ``UNetModelWrapper``) called as ``net(t, x)``.

    Args:
        shape: ``(C, H, W)``.
        num_channels, num_res_blocks, channel_mult, num_heads, num_head_channels, dropout,
            use_scale_shift_norm: as in torchcfm.
        attention_resolutions: comma-separated resolutions with self-attention (e.g. ``"16"``);
            ``""`` for none.
    """

    def __init__(self, shape: Sequence[int], num_channels: int = 32, num_res_blocks: int = 1,
                 channel_mult: Sequence[int] = (1, 2, 2), attention_resolutions: str = "", num_heads: int = 1,
                 num_head_channels: int = -1, dropout: float = 0.0, use_scale_shift_norm: bool = False):
        super().__init__()
        from torchcfm.models.unet import UNetModel

        shape = [int(s) for s in shape]
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (C, H, W), got {shape}")
        if num_channels < 32 or num_channels % 32:
            raise ValueError(f"num_channels must be a multiple of 32 (torchcfm's U-Net uses GroupNorm(32)), got {num_channels}")
        if shape[-1] % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"image size {shape[-1]} must be divisible by 2^(len(channel_mult) - 1) = "
                             f"{2 ** (len(channel_mult) - 1)}")
        self.config = {"shape": shape, "num_channels": num_channels, "num_res_blocks": num_res_blocks,
                       "channel_mult": [int(m) for m in channel_mult], "attention_resolutions": attention_resolutions,
                       "num_heads": num_heads, "num_head_channels": num_head_channels, "dropout": float(dropout),
                       "use_scale_shift_norm": use_scale_shift_norm}
        # torchcfm parses every listed resolution; one larger than the image gives no attention layer
        attention = attention_resolutions or str(10 * shape[-1])
        self.unet = UNetModel(dim=tuple(shape), num_channels=num_channels, num_res_blocks=num_res_blocks,
                              channel_mult=list(channel_mult), attention_resolutions=attention, num_heads=num_heads,
                              num_head_channels=num_head_channels, dropout=dropout,
                              use_scale_shift_norm=use_scale_shift_norm)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``t``: ``(B,)``; ``x``: ``(B, C, H, W)``."""
        return self.unet(t, x)
