"""Checks of the tensors users hand to a model (samples and conditions), with errors that say
what was expected and what came."""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

__all__ = ["as_shape", "check_samples", "check_cond", "cond_input"]


def as_shape(dim) -> tuple[int, ...]:
    """``dim`` (an int or a tuple of ints) as a sample shape tuple."""
    shape = (dim,) if isinstance(dim, int) and not isinstance(dim, bool) else dim
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"dim must be an int or a tuple of ints, got {dim!r}") from None
    if not shape or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(f"dim must be a positive int or a tuple of positive ints, got {dim!r}")
    return shape


def check_samples(x, shape: tuple[int, ...], name: str, min_count: int = 1) -> torch.Tensor:
    """``x`` as a floating ``(n, *shape)`` tensor with ``n >= min_count`` finite rows.

    A numpy array (also a read-only ``numpy.load(..., mmap_mode="r")`` map) is wrapped without a
    copy and scanned in chunks, so data larger than memory can be checked.
    """
    if isinstance(x, np.ndarray):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "not writable": it is only ever read
            x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert with .float()")
    if tuple(x.shape[1:]) != shape:
        raise ValueError(f"{name} must have shape (n, {', '.join(map(str, shape))}), got {tuple(x.shape)}")
    if x.shape[0] < min_count:
        raise ValueError(f"{name} must hold at least {min_count} sample(s), got {x.shape[0]}")
    chunk = max(1, 2**22 // max(1, x[0].numel()))  # bounded memory for memory-mapped data
    bad_rows = torch.cat([torch.nonzero(~torch.isfinite(part.reshape(part.shape[0], -1)).all(1)).flatten() + i
                          for i, part in zip(range(0, x.shape[0], chunk), x.split(chunk))])
    if bad_rows.numel():
        raise ValueError(
            f"{name} contains NaN or Inf in {bad_rows.numel()} sample(s) (first at index {int(bad_rows[0])}); "
            "remove or impute them first"
        )
    return x


def check_cond(cond, n: int, cond_dim: Optional[int], name: str = "cond") -> Optional[torch.Tensor]:
    """``cond`` as a finite ``(n, cond_dim)`` float tensor; ``None`` for an unconditional model
    (``cond_dim=None``), which must not get one."""
    if cond_dim is None:
        if cond is not None:
            raise ValueError(f"this model is unconditional (cond_dim=None) but got {name}; build it with cond_dim=...")
        return None
    if cond is None:
        raise ValueError(f"this model is conditional (cond_dim={cond_dim}); pass {name} of shape (n, {cond_dim})")
    if isinstance(cond, np.ndarray):
        cond = torch.from_numpy(cond)
    if not isinstance(cond, torch.Tensor) or not cond.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {getattr(cond, 'dtype', type(cond).__name__)}")
    if cond.dim() < 1 or cond.shape[0] != n or cond[0].numel() != cond_dim:
        raise ValueError(f"{name} must have shape ({n}, {cond_dim}) (one row per sample), got {tuple(cond.shape)}")
    if not torch.isfinite(cond).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return cond.reshape(n, cond_dim)


def cond_input(cond: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The networks' conditioning ``(B, cond_dim + 1)``: ``cond`` ``(B, cond_dim)`` and a presence
    flag 1, zeroed (the null condition) where the boolean ``keep`` ``(B,)`` is false."""
    flag = torch.ones(cond.shape[0], 1, dtype=cond.dtype, device=cond.device)
    c = torch.cat([cond, flag], dim=1)
    return c if keep is None else c * keep.to(c.dtype)[:, None]
