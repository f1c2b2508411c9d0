"""Per-dimension normalization of observations and actions, fitted on demonstrations."""
from __future__ import annotations

import torch

__all__ = ["Normalizer"]


class Normalizer:
    """Affine map of each feature's demo range ``[min, max]`` onto ``[-1, 1]``.

    A constant feature (range below ``eps``) is only shifted, to 0. ``normalize`` and
    ``unnormalize`` act on the last axis of tensors of shape ``(..., D)``.
    """

    def __init__(self, scale: torch.Tensor, offset: torch.Tensor):
        self.scale, self.offset = scale.double(), offset.double()

    @classmethod
    def fit(cls, data: torch.Tensor, eps: float = 1e-6) -> "Normalizer":
        """Fit on ``data`` ``(N, D)`` (finite, N >= 1)."""
        data = torch.as_tensor(data).double()
        if data.dim() != 2 or data.shape[0] < 1:
            raise ValueError(f"a normalizer is fitted on (N, D) data with N >= 1, got shape {tuple(data.shape)}")
        if not torch.isfinite(data).all():
            raise ValueError("normalizer data contains NaN or Inf")
        low, high = data.min(0).values, data.max(0).values
        span = high - low
        constant = span < eps
        scale = torch.where(constant, torch.ones_like(span), 2.0 / span.clamp_min(eps))
        offset = torch.where(constant, -low, -1.0 - low * scale)
        return cls(scale, offset)

    @property
    def dim(self) -> int:
        return self.scale.shape[0]

    def _check(self, x: torch.Tensor, what: str) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"{what} has {x.shape[-1]} features in its last axis; this normalizer has {self.dim}")
        return x

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        x = self._check(torch.as_tensor(x), "input")
        return (x.double() * self.scale + self.offset).to(x.dtype if x.is_floating_point() else torch.float32)

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        y = self._check(torch.as_tensor(y), "input")
        return ((y.double() - self.offset) / self.scale).to(y.dtype)

    def state_dict(self) -> dict:
        return {"scale": self.scale.clone(), "offset": self.offset.clone()}

    @classmethod
    def from_state(cls, state: dict) -> "Normalizer":
        return cls(state["scale"], state["offset"])
