"""Sample-quality statistics that need no likelihood."""
from __future__ import annotations

import torch

__all__ = ["energy_distance"]


def energy_distance(x: torch.Tensor, y: torch.Tensor, max_samples: int = 5000) -> float:
    r"""Energy distance between two samples (Szekely & Rizzo), U-statistic form.

    .. math::
        D^2(P, Q) = 2\,E|X - Y| - E|X - X'| - E|Y - Y'|

    with the within-sample expectations over distinct pairs, so the estimate is unbiased and
    averages to 0 when ``P = Q`` (a single estimate can be slightly negative). Larger is worse.

    Args:
        x: ``(n, *shape)``; y: ``(m, *shape)``. Only the first ``max_samples`` of each are used
            (the cost is quadratic).

    Returns:
        The squared energy distance as a float (computed in float64).
    """
    x = x[:max_samples].reshape(min(len(x), max_samples), -1).double()
    y = y[:max_samples].reshape(min(len(y), max_samples), -1).double()
    if x.shape[0] < 2 or y.shape[0] < 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"need two samples of >= 2 points with equal dimension, got {tuple(x.shape)} and {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    xy = torch.cdist(x, y).mean()
    xx = torch.cdist(x, x).sum() / (n * (n - 1))
    yy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * xy - xx - yy)
