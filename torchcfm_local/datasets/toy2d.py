"""Procedural 2-D densities: ``tree``, ``rose``, the FFJORD-style toys and ``mixture_unequal``.

Every sampler has the signature ``sample_<name>(n, rng) -> np.ndarray`` of shape ``(n, 2)``, float64,
where ``rng`` is a ``numpy.random.Generator``.  The datasets live roughly in ``[-4, 4]^2`` with mean
near 0.  :func:`load_toy2d` draws the three splits with independent generators spawned from ``seed``
(``numpy.random.SeedSequence(seed).spawn(3)``), so train, val and test are independent samples of the
same density and each is reproducible on its own.

The toys follow the usual definitions of the continuous-normalizing-flow literature (FFJORD,
Grathwohl et al. 2019): the constants (radii, noise scales, number of arms) are the customary ones and
are written out in each docstring; the code is our own.

Mixtures with known modes (``mixture_unequal``) record them in ``DatasetSplits.info["modes"]``
(``centers``, ``weights``, ``std``; see :data:`MODES`), so that the mode weights of a model's samples
can be checked with :func:`torchcfm_local.metrics.mode_weight_error`.
"""
from __future__ import annotations

import functools
import inspect
import math
import os
from typing import Callable

import numpy as np
import torch

from .._checks import positive_int
from ._common import DatasetSplits, check_dtype, check_n, check_seed, pack, split_rngs

__all__ = [
    "MODES",
    "SAMPLERS",
    "load_toy2d",
    "mixture_unequal_modes",
    "sample",
    "sample_8gaussians",
    "sample_2spirals",
    "sample_checkerboard",
    "sample_mixture_unequal",
    "sample_moons",
    "sample_pinwheel",
    "sample_rings",
    "sample_rose",
    "sample_tree",
    "tree_segments",
]

DEFAULT_N = {"train": 100_000, "val": 10_000, "test": 10_000}


# ----------------------------------------------------------------------------------------------------
# tree
# ----------------------------------------------------------------------------------------------------

TREE_LEVELS = 7            # trunk = level 0, tips = level 6: 1 + 2 + ... + 64 = 127 segments
TREE_TRUNK = 0.8           # trunk length before rescaling
TREE_ANGLES = (0.5, -0.4)  # left / right turn of the two children relative to the parent (radians)
TREE_DECAY = (0.75, 0.68)  # left / right child length as a fraction of the parent length
TREE_THICKNESS = 0.035     # Gaussian thickness std of the trunk, before rescaling
TREE_THICKNESS_DECAY = 0.65  # relative thickness factor per level
TREE_HALF_WIDTH = 3.8      # after centring, max |coordinate| of the segment end points


@functools.lru_cache(maxsize=None)
def _tree_geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    starts, ends, levels = [], [], []

    def grow(x: float, y: float, heading: float, length: float, level: int) -> None:
        x2, y2 = x + length * math.cos(heading), y + length * math.sin(heading)
        starts.append((x, y))
        ends.append((x2, y2))
        levels.append(level)
        if level + 1 < TREE_LEVELS:
            for turn, decay in zip(TREE_ANGLES, TREE_DECAY):
                grow(x2, y2, heading + turn, length * decay, level + 1)

    grow(0.0, 0.0, math.pi / 2, TREE_TRUNK, 0)
    a, b, lev = np.array(starts), np.array(ends), np.array(levels)
    thickness = TREE_THICKNESS_DECAY ** lev
    weight = np.linalg.norm(b - a, axis=1) * thickness  # length x relative thickness ~ branch area
    weight = weight / weight.sum()
    # exact mean of the density: weighted segment midpoints (the noise is centred)
    centre = ((a + b) / 2 * weight[:, None]).sum(0)
    a, b = a - centre, b - centre
    scale = TREE_HALF_WIDTH / np.abs(np.concatenate([a, b])).max()
    a, b = a * scale, b * scale
    sigma = TREE_THICKNESS * scale * thickness
    for arr in (a, b, lev, weight, sigma):
        arr.setflags(write=False)
    return a, b, lev, weight, sigma


def tree_segments() -> dict[str, np.ndarray]:
    """The (already centred and scaled) segments of the ``tree`` density.

    Returns:
        dict with ``start`` ``(S, 2)``, ``end`` ``(S, 2)``, ``level`` ``(S,)`` (0 = trunk), ``weight``
        ``(S,)`` (probability of each segment, sums to 1) and ``sigma`` ``(S,)`` (thickness std of each
        segment); ``S = 127``.  Read-only arrays.
    """
    a, b, lev, weight, sigma = _tree_geometry()
    return {"start": a, "end": b, "level": lev, "weight": weight, "sigma": sigma}


def sample_tree(n: int, rng: np.random.Generator) -> np.ndarray:
    """A fractal binary tree with thick branches, ``(n, 2)``.

    Recipe: a trunk of length 0.8 points up from the origin; every segment ends in two children turned
    by +0.5 rad and -0.4 rad with lengths 0.75 and 0.68 of the parent (the asymmetry makes it look
    grown rather than drawn), for 7 levels (127 segments, 64 tips).  Segment ``i`` at level ``l`` has
    relative thickness ``w_l = 0.65**l`` and probability mass proportional to ``length_i * w_l`` (its
    area, so the trunk is denser than the twigs).  The geometry is shifted so that the mass-weighted
    mean of the segment midpoints is the origin and scaled by ``s`` so that the largest
    ``|coordinate|`` of a segment end point is 3.8 (the trunk's foot).  A sample picks a segment by
    mass, a point uniformly along it, and adds isotropic Gaussian "thickness" noise with std
    ``0.035 * s * w_l``.  The density is fixed (:func:`tree_segments`); only the draw depends on
    ``rng``.  Its mean is exactly 0.
    """
    a, b, _, weight, sigma = _tree_geometry()
    seg = rng.choice(len(a), size=n, p=weight)
    t = rng.random(n)[:, None]
    pts = a[seg] + t * (b[seg] - a[seg])
    return pts + sigma[seg, None] * rng.standard_normal((n, 2))


# ----------------------------------------------------------------------------------------------------
# rose
# ----------------------------------------------------------------------------------------------------

ROSE_K = 2.0           # r = cos(2 theta): four petals
ROSE_RADIUS = 3.5      # petal length after scaling
ROSE_NOISE = 0.08      # isotropic Gaussian noise std after scaling


@functools.lru_cache(maxsize=None)
def _rose_arclength(k: float, grid: int = 20_001) -> tuple[np.ndarray, np.ndarray]:
    theta = np.linspace(0.0, 2 * np.pi, grid)
    # |d(x, y)/dtheta| = sqrt(r^2 + r'^2) for a polar curve r(theta)
    speed = np.sqrt(np.cos(k * theta) ** 2 + (k * np.sin(k * theta)) ** 2)
    s = np.concatenate([[0.0], np.cumsum((speed[1:] + speed[:-1]) / 2 * np.diff(theta))])
    return theta, s / s[-1]


def sample_rose(n: int, rng: np.random.Generator) -> np.ndarray:
    """A four-petal polar rose ``r = cos(2 theta)``, ``(n, 2)``.

    Recipe: ``theta`` in ``[0, 2 pi)`` is drawn *uniformly by arc length* (inverse CDF of the arc length
    ``s(theta) = int sqrt(r^2 + r'^2) dtheta``, tabulated on a 20,001-point grid), the point is
    ``3.5 * cos(2 theta) * (cos theta, sin theta)`` (negative r traces the opposite petal, so the four
    petals point along the axes and reach radius 3.5), and isotropic Gaussian noise with std 0.08 is
    added.  The density is symmetric under 90-degree rotations, so its mean is 0.
    """
    theta_grid, cdf = _rose_arclength(ROSE_K)
    theta = np.interp(rng.random(n), cdf, theta_grid)
    r = ROSE_RADIUS * np.cos(ROSE_K * theta)
    pts = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return pts + ROSE_NOISE * rng.standard_normal((n, 2))


# ----------------------------------------------------------------------------------------------------
# FFJORD-style toys
# ----------------------------------------------------------------------------------------------------


def sample_8gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mixture of 8 equal-weight isotropic Gaussians on a circle, ``(n, 2)``.

    Centres ``2 sqrt(2) (cos(2 pi j / 8), sin(2 pi j / 8))``, ``j = 0..7``; std ``0.5 / sqrt(2)``
    (the FFJORD toy: centres at radius 4 with std 0.5, all divided by 1.414).
    """
    j = rng.integers(0, 8, size=n)
    angle = 2 * np.pi * j / 8
    centres = 2 * np.sqrt(2) * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return centres + (0.5 / np.sqrt(2)) * rng.standard_normal((n, 2))


def sample_moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaving half circles, ``(n, 2)``.

    Each point picks a moon with probability 1/2 and ``t ~ U(0, pi)``: upper moon ``(cos t, sin t)``,
    lower moon ``(1 - cos t, 1/2 - sin t)``; Gaussian noise with std 0.1 is added, then the plane is
    mapped by ``x -> 2 x + (-1, -0.2)`` (the usual ``make_moons(noise=0.1)`` toy; here the angles are
    random rather than on a grid).
    """
    t = rng.uniform(0.0, np.pi, size=n)
    lower = rng.random(n) < 0.5
    x = np.where(lower, 1.0 - np.cos(t), np.cos(t))
    y = np.where(lower, 0.5 - np.sin(t), np.sin(t))
    pts = np.stack([x, y], axis=1) + 0.1 * rng.standard_normal((n, 2))
    return 2.0 * pts + np.array([-1.0, -0.2])


def sample_checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform on the 8 "black" squares of a 4 x 4 checkerboard covering ``[-4, 4]^2``, ``(n, 2)``.

    ``x1 ~ U(-2, 2)``; ``x2 = U(0, 1) - 2 B + (floor(x1) mod 2)`` with ``B ~ Bernoulli(1/2)``; both
    coordinates are then doubled.  Every sample satisfies ``floor(x1/2) + floor(x2/2)`` even.
    """
    x1 = rng.uniform(-2.0, 2.0, size=n)
    x2 = rng.random(n) - 2.0 * rng.integers(0, 2, size=n) + np.mod(np.floor(x1), 2.0)
    return 2.0 * np.stack([x1, x2], axis=1)


def sample_pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    """Five curved arms, ``(n, 2)``.

    A point ``z = (1 + 0.3 e1, 0.1 e2)`` (``e ~ N(0, I)``) is rotated by
    ``2 pi c / 5 + 0.25 exp(z1)`` with arm ``c`` uniform in ``0..4`` (the rotation grows with the radius,
    which bends the arms), then doubled.
    """
    z = rng.standard_normal((n, 2)) * np.array([0.3, 0.1]) + np.array([1.0, 0.0])
    arm = rng.integers(0, 5, size=n)
    angle = 2 * np.pi * arm / 5 + 0.25 * np.exp(z[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    rotated = np.stack([c * z[:, 0] - s * z[:, 1], s * z[:, 0] + c * z[:, 1]], axis=1)
    return 2.0 * rotated


def sample_2spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved Archimedean spirals, ``(n, 2)``.

    ``u = sqrt(U(0, 1)) * 3 pi`` (1.5 turns, denser far out); the first spiral is
    ``(-u cos u + 0.5 U, u sin u + 0.5 U)`` with fresh ``U(0, 1)`` jitter per coordinate, the second its
    reflection through the origin; each point picks a spiral with probability 1/2; the result is
    divided by 3 and Gaussian noise with std 0.1 is added.
    """
    u = np.sqrt(rng.random(n)) * 3 * np.pi
    x = -np.cos(u) * u + 0.5 * rng.random(n)
    y = np.sin(u) * u + 0.5 * rng.random(n)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * np.stack([x, y], axis=1) / 3.0
    return pts + 0.1 * rng.standard_normal((n, 2))


RING_RADII = (3.0, 2.4, 1.65, 0.75)  # 3 * (1, 0.8, 0.55, 0.25)


def sample_rings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Four concentric circles of radii ``3 * (1, 0.8, 0.55, 0.25)``, ``(n, 2)``.

    Each point picks a ring with probability 1/4 and a uniform angle; Gaussian noise with std 0.08 is
    added.
    """
    radius = np.asarray(RING_RADII)[rng.integers(0, len(RING_RADII), size=n)]
    angle = rng.uniform(0.0, 2 * np.pi, size=n)
    pts = radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return pts + 0.08 * rng.standard_normal((n, 2))


# ----------------------------------------------------------------------------------------------------
# mixture with unequal, known weights
# ----------------------------------------------------------------------------------------------------

MIXTURE_UNEQUAL_WEIGHTS = (0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02)  # mode j's probability, sums to 1
MIXTURE_UNEQUAL_RADIUS = 3.0  # the centres lie on this circle before centring
MIXTURE_UNEQUAL_STD = 0.2     # isotropic std of every mode


@functools.lru_cache(maxsize=None)
def _mixture_unequal_geometry() -> tuple[np.ndarray, np.ndarray]:
    weights = np.asarray(MIXTURE_UNEQUAL_WEIGHTS, dtype=np.float64)
    angle = 2 * np.pi * np.arange(len(weights)) / len(weights)
    centres = MIXTURE_UNEQUAL_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    centres = centres - (weights[:, None] * centres).sum(0)  # exact mean 0
    for arr in (centres, weights):
        arr.setflags(write=False)
    return centres, weights


def mixture_unequal_modes() -> dict:
    """The modes of ``mixture_unequal``: ``centers`` ``(7, 2)``, ``weights`` ``(7,)`` (sum 1, read-only
    arrays) and the common ``std``."""
    centres, weights = _mixture_unequal_geometry()
    return {"centers": centres, "weights": weights, "std": MIXTURE_UNEQUAL_STD}


def sample_mixture_unequal(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mixture of 7 isotropic Gaussians with unequal weights on a circle, ``(n, 2)``.

    Mode ``j = 0..6`` has weight ``(0.4, 0.2, 0.15, 0.1, 0.08, 0.05, 0.02)[j]`` and centre
    ``3 (cos(2 pi j / 7), sin(2 pi j / 7)) - m``, where ``m`` is the weighted mean of those points
    (so the density has mean exactly 0); every mode has std 0.2. Neighbouring centres are 2.6 apart
    (6.5 std to the midpoint), so assigning a point to its nearest centre recovers its mode almost
    surely and the empirical mode frequencies estimate the weights (:func:`mixture_unequal_modes`).
    A test of whether a sampler keeps rare modes (2% and 5%) at their weight.
    """
    centres, weights = _mixture_unequal_geometry()
    j = rng.choice(len(weights), size=n, p=weights)
    return centres[j] + MIXTURE_UNEQUAL_STD * rng.standard_normal((n, 2))


SAMPLERS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "tree": sample_tree,
    "rose": sample_rose,
    "8gaussians": sample_8gaussians,
    "moons": sample_moons,
    "checkerboard": sample_checkerboard,
    "pinwheel": sample_pinwheel,
    "2spirals": sample_2spirals,
    "rings": sample_rings,
    "mixture_unequal": sample_mixture_unequal,
}
"""Name -> sampler ``(n, rng) -> (n, 2) float64 array``."""

MODES: dict[str, Callable[[], dict]] = {"mixture_unequal": mixture_unequal_modes}
"""Name -> its known modes ``() -> {"centers": (K, 2), "weights": (K,), "std"}``, for mixtures whose
component weights are known; :func:`load_toy2d` copies them into ``info["modes"]`` as lists."""


def sample(name: str, n: int, seed: int = 0, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` points of the 2-D density ``name`` as an ``(n, 2)`` tensor, drawn with ``default_rng(seed)``."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown 2-D density {name!r}; available: {sorted(SAMPLERS)}")
    n = positive_int(n, "n")
    rng = np.random.default_rng(check_seed(seed))
    return torch.as_tensor(SAMPLERS[name](n, rng)).to(check_dtype(dtype))


def load_toy2d(name: str, *, root: str | os.PathLike | None = None, n_train: int | None = None,
               n_val: int | None = None, n_test: int | None = None, seed: int = 0,
               dtype: torch.dtype = torch.float32) -> DatasetSplits:
    """Train / val / test samples of a 2-D density; each split ``(n_split, 2)``.

    Defaults ``n_train=100_000``, ``n_val=10_000``, ``n_test=10_000``.  Split ``i`` (train, val, test)
    is drawn with the ``i``-th generator of ``SeedSequence(seed).spawn(3)``, so the splits are
    independent and changing ``n_val`` does not change ``train``.  ``root`` is ignored.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown 2-D density {name!r}; available: {sorted(SAMPLERS)}")
    seed = check_seed(seed)
    dtype = check_dtype(dtype)
    ns = [check_n(f"n_{s}", v, DEFAULT_N[s]) for s, v in zip(DEFAULT_N, (n_train, n_val, n_test))]
    rngs = split_rngs(seed, 3)
    arrays = [SAMPLERS[name](n, rng) for n, rng in zip(ns, rngs)]
    sampler = SAMPLERS[name]
    info = {
        "source": "procedural 2-D density (torchcfm_local.datasets.toy2d)",
        "preprocessing": [inspect.cleandoc(sampler.__doc__ or name),
                          "train / val / test drawn independently with SeedSequence(seed).spawn(3)"],
        "seed": seed,
    }
    if name in MODES:
        modes = MODES[name]()
        info["modes"] = {"centers": modes["centers"].tolist(), "weights": modes["weights"].tolist(),
                         "std": float(modes["std"])}
    return pack(name, *arrays, info=info, dtype=dtype)
