r"""The students of a distillation: one-step maps :math:`S_\theta(x) = \alpha\, x + \beta\, f_\theta(t_0, x)`."""
from __future__ import annotations

import copy
import math
from typing import Optional

import torch
from torch import nn

from ..networks import MLP, network_spec
from ..solvers import VelocityField

__all__ = ["OneStepMap", "default_student", "same_architecture"]


class OneStepMap(nn.Module):
    r"""One student: :math:`S(x) = \alpha\, x + \beta\, f(t_0, x)`, one network evaluation.

    Args:
        net: a velocity-shaped network, called through :class:`VelocityField` (``net(t, x)`` with
            ``t`` of shape ``(B,)``, or torchcfm's ``net(cat([x, t[:, None]]))``).
        t0: the fixed time fed to ``net`` (the stage's first ``t_start``).
        alpha, beta: the fixed coefficients (see :func:`~torchcfm_local.distillation.step_coefficients`).

    ``forward(x)``: ``x`` of shape ``(B, *shape)`` -> same shape, evaluated through ``self.field``
    (whose ``nfe`` counts those calls). :meth:`apply` evaluates through a given field instead, e.g.
    a ``self.field.bind()`` view whose count belongs to one caller.
    """

    def __init__(self, net: nn.Module, t0: float = 0.0, alpha: float = 1.0, beta: float = 1.0):
        super().__init__()
        self.field = VelocityField(net)
        self.t0 = float(t0)
        self.alpha = float(alpha)
        self.beta = float(beta)

    @property
    def net(self) -> nn.Module:
        return self.field.net

    def apply(self, x: torch.Tensor, field: Optional[VelocityField] = None) -> torch.Tensor:
        r""":math:`\alpha x + \beta f(t_0, x)` for ``x`` ``(B, *shape)``, with ``f`` = ``field``
        (a view of this student's network; default ``self.field``)."""
        v = (self.field if field is None else field)(torch.tensor(self.t0), x)
        return v * self.beta if self.alpha == 0.0 else self.alpha * x + self.beta * v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply(x)

    def extra_repr(self) -> str:
        return f"t0={self.t0:g}, alpha={self.alpha:.6g}, beta={self.beta:.6g}"


def default_student(teacher_net: nn.Module, growth: float) -> nn.Module:
    r"""The default student network for a stage covering ``growth`` blocks' worth of time.

    For a teacher block that is a :class:`~torchcfm_local.MLP`: the same MLP with
    ``width' = round(width * sqrt(max(1, growth)))``. The parameter count of a deep MLP grows like
    ``width^2``, so a student replacing k whole blocks has about k blocks' parameters; a student of
    one block (or of a fraction of one block, as in the M-step global flow) keeps the block's size.
    Other networks are deep-copied (size kept); pass ``student_factory`` to grow them.
    """
    spec = network_spec(teacher_net)
    if spec is not None and spec["type"] == "MLP":
        cfg = dict(spec["config"])
        cfg["width"] = max(1, int(round(cfg["width"] * math.sqrt(max(1.0, growth)))))
        return MLP(**cfg)
    return copy.deepcopy(teacher_net)


def same_architecture(a: nn.Module, b: nn.Module) -> bool:
    """Whether ``b``'s weights load into ``a``: same class, same state keys and tensor shapes."""
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)
