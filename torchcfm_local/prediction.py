r"""Data prediction: a block network that predicts the data-side end of the path, used as a velocity.

Flow matching trains ``v(t, x)`` towards the conditional velocity ``u_t`` of a path from ``x0``
(noise side) to ``x1`` (data side). For torchcfm's two paths with ``sigma = 0`` the velocity is a
function of the point ``x_t`` and of ``x1`` alone:

* linear (``ConditionalFlowMatcher``): :math:`x_t = (1-t) x_0 + t x_1`, so
  :math:`u_t = (x_1 - x_t) / (1 - t)`;
* trigonometric (``VariancePreservingConditionalFlowMatcher``): :math:`x_t = \cos(\pi t/2) x_0 +
  \sin(\pi t/2) x_1`, so :math:`u_t = \tfrac{\pi}{2} (x_1 - \sin(\pi t/2) x_t) / \cos(\pi t/2)`.

:class:`DataPrediction` lets a network output an estimate of ``x1`` and returns that velocity,
with the denominator held at ``eps`` or above. Near ``t = 1`` the velocity a network must
output otherwise grows without bound where the data side is concentrated (demos whose action is
nearly fixed by the observation): a network that predicts it directly contracts too little, and
its samples spread wider than the data; a network that predicts ``x1`` gets that factor exactly.
The training loss is unchanged (the squared error of the velocity), which weights the ``x1``
error by the squared inverse denominator: most on the data end, at most ``(pi / (2 eps))^2``.

In an LFM chain only block 1 has the data itself on its data side; the data sides of blocks
2..N are the data pushed towards the OU chain's smoother marginals. :func:`block_networks`
wraps block 1's network in :class:`DataPrediction` and the others in :class:`VelocityPrediction`
(the network's output as it is), so that every block has the same parameters (``warm_start``
copies them from block to block); a global flow's one block is block 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["DataPrediction", "VelocityPrediction", "block_networks", "PREDICTIONS", "path_of", "DEFAULT_EPS"]

#: what block 1's network predicts (:func:`block_networks`): the velocity itself, or the data (:class:`DataPrediction`)
PREDICTIONS = ("velocity", "data")
#: the smallest denominator of :class:`DataPrediction`: 0.2 caps the weight of the data-side error
#: at about 62 (trigonometric path) and leaves the velocity finite at ``t = 1``, where RK4's last
#: stage evaluates it
DEFAULT_EPS = 0.2
#: the paths whose velocity :class:`DataPrediction` writes: torchcfm's trigonometric (variance
#: preserving) and linear (OT) paths with sigma = 0 (also the policy recipe's ``path`` values)
PATHS = ("trig", "linear")


def path_of(matcher) -> str:
    """``"trig"`` or ``"linear"``: the path of a torchcfm matcher with ``sigma = 0``.

    Raises:
        ValueError: another matcher, or ``sigma != 0`` (its velocity is not a function of ``x_t`` and ``x1``).
    """
    from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher,
                                                    VariancePreservingConditionalFlowMatcher)

    kind = {VariancePreservingConditionalFlowMatcher: "trig", ConditionalFlowMatcher: "linear"}.get(type(matcher))
    if kind is None or float(getattr(matcher, "sigma", 0.0)) != 0.0:
        raise ValueError(f"data prediction needs torchcfm's ConditionalFlowMatcher or VariancePreservingConditional"
                         f"FlowMatcher with sigma=0, got {type(matcher).__name__} "
                         f"(sigma={getattr(matcher, 'sigma', None)})")
    return kind


class DataPrediction(nn.Module):
    """``net(t, x[, cond])`` read as a prediction of ``x1``, returned as the path's velocity (module docstring).

    Args:
        net: a network called as ``net(t, x)`` or ``net(t, x, cond)``, output shaped like ``x``.
        path: ``"trig"`` or ``"linear"`` (:func:`path_of` of the block's matcher).
        eps: the smallest denominator, in (0, 1].
    """

    def __init__(self, net: nn.Module, path: str, eps: float = DEFAULT_EPS):
        super().__init__()
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if not (isinstance(eps, (int, float)) and 0 < eps <= 1):
            raise ValueError(f"eps must be in (0, 1], got {eps!r}")
        self.net, self.path, self.eps = net, path, float(eps)

    def forward(self, t: torch.Tensor, x: torch.Tensor, cond=None) -> torch.Tensor:
        x1 = self.net(t, x) if cond is None else self.net(t, x, cond)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.reshape(-1, *([1] * (x.dim() - 1))) if t.dim() else t
        if self.path == "linear":
            return (x1 - x) / torch.clamp(1 - t, min=self.eps)
        angle = 0.5 * math.pi * t
        return 0.5 * math.pi * (x1 - torch.sin(angle) * x) / torch.clamp(torch.cos(angle), min=self.eps)

    def extra_repr(self) -> str:
        return f"path={self.path!r}, eps={self.eps}"


class VelocityPrediction(nn.Module):
    """``net`` as it is (it predicts the velocity), held as ``self.net`` like :class:`DataPrediction` holds it."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, t: torch.Tensor, x: torch.Tensor, cond=None) -> torch.Tensor:
        return self.net(t, x) if cond is None else self.net(t, x, cond)


def block_networks(factory, prediction: str, path: "str | None"):
    """A velocity factory ``n -> network`` for ``prediction``: ``factory`` itself for ``"velocity"``;
    for ``"data"``, block 1's network in :class:`DataPrediction` (``path``) and every other block's
    in :class:`VelocityPrediction` (module docstring)."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    if prediction == "velocity":
        return factory
    return lambda n: DataPrediction(factory(n), path) if n == 1 else VelocityPrediction(factory(n))
