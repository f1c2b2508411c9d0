r"""Affine standardization of the data in front of the blocks: ``A(x) = L^{-1} (x - m)``.

``fit(x, standardize="diagonal" | "full")`` fits ``A`` on the training data (statistics in
float64) and stores it in the model; the blocks then model the standardized data ``A(x)``.
``fit``'s default, ``"auto"``, is ``"diagonal"`` for data far from unit scale (RMS feature std
outside :data:`SCALE_RANGE`) and the identity otherwise: the OU steps are measured against
N(0, I) noise, so only data near unit scale gets the noise levels the schedule says. Data near
unit scale is left as it is, so a schedule chosen for it keeps its meaning.

* ``encode`` applies ``A`` before block 1, ``decode`` / ``sample`` apply ``A^{-1}`` after it
  (only when block 1 is run: the other blocks' sides are in the standardized space);
* ``log_prob`` is in data units: :math:`\log p(x) = \log p_\text{std}(A(x)) + \log|\det \partial A/\partial x|`
  with the constant :math:`\log|\det \partial A/\partial x| = -\sum_i \log L_{ii}`.

``"diagonal"``: ``m`` the per-feature mean, ``L = diag(std)`` (population std), one scale per
flattened feature (also for images). ``"full"``: ``L`` the lower Cholesky factor of the
covariance (whitening); at most :data:`FULL_MAX_DIM` features. Both refuse a constant feature,
and ``"full"`` a (nearly) singular covariance, with an error instead of dividing by ~0;
``"auto"`` then keeps the identity and warns.

For loops of your own (``train_blocks``), set ``lfm.standardizer = Standardizer.fit(x, mode)``
before training the first block.
"""
from __future__ import annotations

import math
import warnings
from typing import Optional

import numpy as np
import torch

from .checkpoint import CheckpointError

__all__ = ["Standardizer", "MODES", "CHOICES", "FULL_MAX_DIM", "SCALE_RANGE", "rms_scale"]

#: The maps ``standardize=`` names besides ``None`` / ``"none"`` (the identity) and ``"auto"``.
MODES = ("diagonal", "full")

#: Every value ``standardize=`` accepts.
CHOICES = (None, "none", "auto") + MODES

#: Most features ``"full"`` accepts: it forms, factors and stores a ``d x d`` covariance.
FULL_MAX_DIM = 4096

#: ``standardize="auto"`` standardizes (``"diagonal"``) data whose RMS feature std lies outside
#: this range and leaves other data as it is. The OU steps are measured against N(0, I) noise: on
#: data of scale ``s`` a short step ``h`` adds as much noise relative to the data as a step
#: ``h / s**2`` does on unit-scale data, so outside this range the schedule's steps act at least
#: 16 times longer or shorter than their values say.
SCALE_RANGE = (0.25, 4.0)

#: A feature whose std is at most this fraction of its mean's magnitude (or exactly 0) is constant:
#: its spread is a few float32 rounding steps of its value.
CONSTANT_RTOL = 1e-6

#: ``"full"`` refuses a correlation matrix whose smallest eigenvalue is below this.
MIN_CORR_EIGENVALUE = 1e-10


def _compute_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # mps has no float64


class Standardizer:
    """The affine map ``A(x) = L^{-1} (x - mean)`` on flattened samples (identity when ``mode`` is ``None``).

    Args:
        mode: ``None`` (identity), ``"diagonal"`` or ``"full"``.
        mean: ``(d,)`` float64 (not for the identity).
        scale: ``(d,)`` std (``"diagonal"``) or ``(d, d)`` lower Cholesky factor (``"full"``), float64.
    """

    def __init__(self, mode: Optional[str] = None, mean: Optional[torch.Tensor] = None,
                 scale: Optional[torch.Tensor] = None):
        if mode not in (None,) + MODES:
            raise ValueError(f"a fitted Standardizer's mode is None, 'diagonal' or 'full', got {mode!r}")
        if (mode is None) != (mean is None) or (mode is None) != (scale is None):
            raise ValueError("a Standardizer has mean and scale exactly when its mode is not None")
        self.mode = mode
        self.mean = None if mean is None else mean.detach().to("cpu", torch.float64)
        self.scale = None if scale is None else scale.detach().to("cpu", torch.float64)
        self._cache: dict = {}

    @classmethod
    def identity(cls) -> "Standardizer":
        return cls()

    @property
    def is_identity(self) -> bool:
        return self.mode is None

    @classmethod
    def fit(cls, x: torch.Tensor, mode: Optional[str], shape: Optional[tuple] = None) -> "Standardizer":
        """The map of ``mode`` fitted on ``x`` ``(n, *shape)`` (streamed in chunks, float64, on the CPU);
        ``"auto"`` resolves to ``"diagonal"`` or the identity (module docstring).

        Raises:
            ValueError: unknown mode, a constant feature (named by its index), ``"full"`` with more
                than :data:`FULL_MAX_DIM` features or a (nearly) singular covariance.
        """
        mode = None if mode in (None, "none") else mode
        if mode not in CHOICES:
            raise ValueError(f"standardize must be one of {CHOICES}, got {mode!r}")
        shape = tuple(x.shape[1:]) if shape is None else tuple(shape)
        d = int(np.prod(shape))
        if mode == "auto":
            return _auto(cls, x, shape, d)
        if mode is None:
            return cls()
        if mode == "full" and d > FULL_MAX_DIM:
            raise ValueError(f"standardize='full' forms a {d} x {d} covariance; it takes at most {FULL_MAX_DIM} "
                             "features: use standardize='diagonal'")
        mean, second = _moments(x, d, full=mode == "full")
        std = (second.diagonal() if mode == "full" else second).clamp_min(0).sqrt()
        _check_not_constant(mean, std, shape)
        if mode == "diagonal":
            return cls(mode, mean, std)
        return cls(mode, mean, _cholesky(second, std))

    # ------------------------------------------------------------------ the map
    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._cache:
            dtype = _compute_dtype(device)
            self._cache = {device: (self.mean.to(device, dtype), self.scale.to(device, dtype))}
        return self._cache[device]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``A(x)`` for ``x`` ``(B, *shape)`` (data units -> standardized), dtype and device of ``x``."""
        if self.is_identity:
            return x
        mean, scale = self._tensors(x.device)
        flat = x.reshape(x.shape[0], -1).to(mean.dtype) - mean
        if self.mode == "diagonal":
            out = flat / scale
        else:
            out = torch.linalg.solve_triangular(scale, flat.T, upper=False).T
        return out.to(x.dtype).reshape(x.shape)

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        """``A^{-1}(y)`` (standardized -> data units), dtype and device of ``y``."""
        if self.is_identity:
            return y
        mean, scale = self._tensors(y.device)
        flat = y.reshape(y.shape[0], -1).to(mean.dtype)
        out = flat * scale if self.mode == "diagonal" else flat @ scale.T
        return (out + mean).to(y.dtype).reshape(y.shape)

    def log_det(self) -> float:
        """``log|det dA/dx|`` in nats (0 for the identity): ``-sum_i log L_ii``."""
        if self.is_identity:
            return 0.0
        diag = self.scale if self.mode == "diagonal" else self.scale.diagonal()
        return -float(diag.log().sum())

    # ------------------------------------------------------------------ storage
    def to_state(self) -> Optional[dict]:
        """Tensors and plain data (``None`` for the identity, as in files written before the option existed)."""
        if self.is_identity:
            return None
        return {"mode": self.mode, "mean": self.mean.clone(), "scale": self.scale.clone()}

    @classmethod
    def from_state(cls, state: Optional[dict], dim: int, source: str = "the state") -> "Standardizer":
        """The map :meth:`to_state` wrote (``None``: the identity) for samples of ``dim`` features.

        Raises:
            CheckpointError: an unknown mode or tensors of the wrong shape.
        """
        if state is None:
            return cls()
        try:
            mode, mean, scale = state["mode"], state["mean"], state["scale"]
            want = (dim,) if mode == "diagonal" else (dim, dim)
            if mode not in MODES or tuple(mean.shape) != (dim,) or tuple(scale.shape) != want:
                raise ValueError(f"mode {mode!r}, mean {tuple(mean.shape)}, scale {tuple(scale.shape)} for {dim} features")
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise CheckpointError(f"{source} holds a damaged data standardization: {err}") from err
        return cls(mode, mean, scale)

    def fingerprint(self) -> list[float]:
        """A few numbers that tell maps apart (empty for the identity)."""
        if self.is_identity:
            return []
        return [float(MODES.index(self.mode) + 1), float(self.mean.sum()), float(self.scale.sum())]

    def __eq__(self, other) -> bool:
        return (isinstance(other, Standardizer) and self.mode == other.mode
                and (self.is_identity or (torch.equal(self.mean, other.mean) and torch.equal(self.scale, other.scale))))

    __hash__ = None

    def __repr__(self) -> str:
        if self.is_identity:
            return "Standardizer(None)"
        return f"Standardizer({self.mode!r}, dim={self.mean.numel()}, log_det={self.log_det():.4g})"


def _moments(x: torch.Tensor, d: int, full: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(d,)`` and centred second moments (covariance ``(d, d)`` or variances ``(d,)``), two passes."""
    n = x.shape[0]
    chunk = max(1, 2**22 // d)
    total = torch.zeros(d, dtype=torch.float64)
    for i in range(0, n, chunk):
        total += x[i : i + chunk].reshape(-1, d).to("cpu", torch.float64).sum(0)
    mean = total / n
    second = torch.zeros((d, d) if full else (d,), dtype=torch.float64)
    for i in range(0, n, chunk):
        part = x[i : i + chunk].reshape(-1, d).to("cpu", torch.float64) - mean
        second += part.T @ part if full else (part * part).sum(0)
    return mean, second / n


def rms_scale(x: torch.Tensor, d: int) -> float:
    """The RMS per-feature std of ``x`` ``(n, ...)`` with ``d`` features, on at most about 10k evenly
    spaced rows (the quantity ``standardize="auto"`` compares with :data:`SCALE_RANGE`)."""
    rows = x[:: max(1, x.shape[0] // 10_000)]
    return float(_moments(rows, d, full=False)[1].mean().sqrt())


def _auto(cls, x: torch.Tensor, shape: tuple, d: int) -> "Standardizer":
    """``standardize="auto"``: ``"diagonal"`` for data off unit scale, else the identity; the identity
    with a warning when off-scale data has a constant feature (which ``"diagonal"`` refuses)."""
    scale = rms_scale(x, d)
    if SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        return cls()
    try:
        return cls.fit(x, "diagonal", shape)
    except ValueError as err:
        warnings.warn(f"the training data's RMS feature std is {scale:.3g}, far from the unit scale of the N(0, I) "
                      "noise that the OU steps are measured against (a step h acts like h / scale^2 on unit-scale "
                      f"data), but standardize='auto' cannot rescale it ({err}); the blocks see the data as it is. "
                      "Drop the constant features, or pass standardize=None to silence this", UserWarning,
                      stacklevel=8)
        return cls()


def _check_not_constant(mean: torch.Tensor, std: torch.Tensor, shape: tuple) -> None:
    bad = ((std <= CONSTANT_RTOL * mean.abs()) | (std == 0) | ~torch.isfinite(std)).nonzero().flatten().tolist()
    if not bad:
        return

    def name(i: int) -> str:
        index = tuple(int(k) for k in np.unravel_index(i, shape))
        where = "" if len(shape) == 1 else f" (index {index})"
        return f"feature {i}{where}: value {float(mean[i]):.6g}, std {float(std[i]):.3g}"

    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    raise ValueError(f"cannot standardize the training data: {len(bad)} feature(s) are constant ("
                     + "; ".join(name(i) for i in bad[:3]) + f"{more}); drop them, or pass standardize=None")


def _cholesky(cov: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The lower Cholesky factor of ``cov``, refusing a (nearly) singular one."""
    corr = cov / torch.outer(std, std)
    smallest = float(torch.linalg.eigvalsh(corr)[0])
    factor, info = torch.linalg.cholesky_ex(cov)
    if not smallest >= MIN_CORR_EIGENVALUE or int(info) != 0 or not math.isfinite(float(factor.diagonal().min())):
        raise ValueError(
            f"standardize='full': the covariance of the training data is (nearly) singular (smallest eigenvalue of "
            f"its correlation matrix {smallest:.3g} < {MIN_CORR_EIGENVALUE:g}): some features are (almost) linear "
            "combinations of others, or there are fewer samples than features; use standardize='diagonal'")
    return factor
