"""Sample-quality statistics that need no likelihood."""
from __future__ import annotations

import torch

__all__ = ["energy_distance", "mode_frequencies", "mode_weight_error"]


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


def _as_float64(name: str, value, dims: int) -> torch.Tensor:
    """``value`` (tensor, array or nested list) as a float64 CPU tensor with ``dims`` dimensions (at least
    one entry per dimension) and only finite entries; ValueError otherwise."""
    try:
        if isinstance(value, torch.Tensor):
            t = value.detach().to("cpu", torch.float64)
        else:  # lists and float64 arrays keep their precision
            t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be numeric, got {type(value).__name__}: {err}") from None
    if dims == 2 and t.dim() > 2:
        t = t.reshape(t.shape[0], -1)  # (n, *shape) -> (n, prod(shape)), as in energy_distance
    if t.dim() != dims or 0 in t.shape:
        want = "(n, d)" if dims == 2 else "(K,)"
        raise ValueError(f"{name} must have shape {want} with no empty dimension, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return t


def mode_frequencies(samples, centers, chunk: int = 65536) -> torch.Tensor:
    """The fraction of ``samples`` whose nearest center (Euclidean) is each of ``centers``.

    Args:
        samples: ``(n, d)`` (or ``(n, *shape)``, flattened) points, finite.
        centers: ``(K, d)`` mode centers, finite. A tie goes to the center listed first.
        chunk: samples compared with the centers at once (bounds memory).

    Returns:
        ``(K,)`` float64 tensor of empirical frequencies, summing to 1.

    Raises:
        ValueError: bad shapes (no samples, no centers, dimensions that differ) or NaN/Inf.
    """
    x = _as_float64("samples", samples, 2)
    c = _as_float64("centers", centers, 2)
    if x.shape[1] != c.shape[1]:
        raise ValueError(f"samples have dimension {x.shape[1]} but centers have {c.shape[1]}")
    counts = torch.zeros(c.shape[0], dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        nearest = torch.cdist(x[i : i + chunk], c).argmin(dim=1)
        counts += torch.bincount(nearest, minlength=c.shape[0]).to(torch.float64)
    return counts / x.shape[0]


def mode_weight_error(samples, centers, weights, atol: float = 1e-4) -> float:
    r"""Total variation distance between the samples' mode frequencies and the true mode weights.

    Every sample is assigned to its nearest center (:func:`mode_frequencies`, giving
    :math:`\hat p_k`); the error is

    .. math::
        \mathrm{TV}(\hat p, w) = \tfrac12 \sum_{k=1}^K |\hat p_k - w_k| \in [0, 1],

    0 when the modes are hit in exactly the right proportions, and ``1 - w_k`` when every sample
    falls in mode ``k``. It measures mode weighting only: samples far from every center still count
    for their nearest one, so pair it with a distance such as :func:`energy_distance`. With ``n``
    exact samples it is not 0 but of order ``sqrt(K / n)`` (multinomial noise).

    Args:
        samples: ``(n, d)`` (or ``(n, *shape)``, flattened) points.
        centers: ``(K, d)`` mode centers.
        weights: ``(K,)`` true mode probabilities: non-negative, summing to 1 within ``atol``.

    Returns:
        The total variation distance as a float.

    Raises:
        ValueError: bad shapes, NaN/Inf anywhere, negative weights, weights not summing to 1, or
            ``len(weights) != len(centers)``.
    """
    w = _as_float64("weights", weights, 1)
    c = _as_float64("centers", centers, 2)
    if w.shape[0] != c.shape[0]:
        raise ValueError(f"got {w.shape[0]} weights for {c.shape[0]} centers; need one weight per center")
    if (w < 0).any():
        raise ValueError(f"weights must be non-negative, got {w.tolist()}")
    if abs(float(w.sum()) - 1.0) > atol:
        raise ValueError(f"weights must sum to 1 (within {atol:g}), got sum {float(w.sum()):.6g}")
    p_hat = mode_frequencies(samples, c)
    return float(0.5 * (p_hat - w).abs().sum())
