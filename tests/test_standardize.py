"""fit(standardize=...): an affine map of the data in front of block 1 (torchcfm_local.standardize)."""
import math

import pytest
import torch

import torchcfm_local as tl
from conftest import Crash, crash_at
from torchcfm_local.standardize import Standardizer

SHAPE = (2,)
FIT = dict(batches_per_block=6, batch_size=32, seed=2, progress=False)


def _data(n=400, seed=0, shape=SHAPE):
    """Correlated features far from N(0, I): offsets, very different scales, a shear."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    z = torch.randn(n, d, generator=g)
    mix = torch.eye(d) + 0.5 * torch.ones(d, d).tril(-1)
    scales = torch.logspace(-1, 1, d)
    return (z @ mix.T * scales + torch.arange(d) * 3.0 - 5.0).reshape(n, *shape)


def _model(shape=SHAPE, seed=0):
    torch.manual_seed(seed)
    d = math.prod(shape)
    return tl.LocalFlowMatching(shape, tl.OUSchedule(0.3, 1.5, 3), velocity_factory=lambda n: tl.MLP(d, width=16, depth=1))


def _by_hand(x, mode):
    """(A(x), log|det dA/dx|) computed here, in float64, from the textbook formulas."""
    flat = x.reshape(x.shape[0], -1).double()
    mean = flat.mean(0)
    if mode == "diagonal":
        std = flat.std(0, unbiased=False)
        return ((flat - mean) / std).reshape(x.shape), -float(std.log().sum())
    cov = (flat - mean).T @ (flat - mean) / flat.shape[0]
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol, (flat - mean).T, upper=False).T
    return white.reshape(x.shape), -float(chol.diagonal().log().sum())


def _twin(lfm):
    """A model without standardization that shares ``lfm``'s blocks."""
    plain = _model(lfm.shape)
    plain.load_state_dict(lfm.state_dict())
    plain.n_trained = lfm.n_trained
    return plain


@pytest.fixture(scope="module", params=["diagonal", "full"])
def fitted(request):
    x = _data()
    lfm = _model()
    report = lfm.fit(x, standardize=request.param, **FIT)
    return request.param, lfm, x, report


def test_map_is_fitted_on_the_training_data(fitted):
    mode, lfm, x, report = fitted
    st = lfm.standardizer
    assert st.mode == mode and len(report.blocks) == 3
    white, log_det = _by_hand(x, mode)
    torch.testing.assert_close(st.apply(x.double()), white, rtol=0, atol=1e-10)
    torch.testing.assert_close(st.invert(st.apply(x.double())), x.double(), rtol=0, atol=1e-10)
    assert st.log_det() == pytest.approx(log_det, abs=1e-10)
    if mode == "full":  # whitened: identity covariance
        torch.testing.assert_close(torch.cov(white.T, correction=0), torch.eye(2, dtype=torch.float64), atol=1e-10, rtol=0)


def test_nll_in_data_units_is_standardized_nll_minus_log_det(fitted):
    mode, lfm, x, _ = fitted
    white, log_det = _by_hand(x, mode)  # the map of the whole training set, on its first rows
    plain = _twin(lfm)
    terms = lfm.log_prob_terms(x[:50])
    expected = plain.log_prob(white[:50].float())
    assert terms.standardize_log_det == pytest.approx(log_det, abs=1e-9)
    torch.testing.assert_close(terms.log_prob, expected + log_det, rtol=0, atol=1e-5)
    torch.testing.assert_close(terms.log_prob, terms.prior + terms.divergence.sum(0) + log_det)
    assert plain.log_prob_terms(white[:5].float()).standardize_log_det == 0.0


def test_encode_decode_in_data_units(fitted):
    mode, lfm, x, _ = fitted
    white, _ = _by_hand(x, mode)
    x, white = x[:100], white[:100]
    plain = _twin(lfm)
    z = lfm.encode(x)
    torch.testing.assert_close(z, plain.encode(white.float()), rtol=0, atol=1e-5)  # data -> standardized -> blocks
    torch.testing.assert_close(lfm.decode(z), x, rtol=0, atol=1e-3 * float(x.abs().max()))
    noise = torch.randn(20, 2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(lfm.decode(noise), lfm.standardizer.invert(plain.decode(noise)), rtol=0, atol=1e-5)
    # partial runs: only block 1's data side is in data units
    torch.testing.assert_close(lfm.decode(noise, blocks=[3, 2]), plain.decode(noise, blocks=[3, 2]))
    mid = plain.decode(noise, blocks=[3, 2])
    torch.testing.assert_close(lfm.decode(mid, blocks=[1]), lfm.standardizer.invert(plain.decode(mid, blocks=[1])))
    samples = lfm.sample(30, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (30, 2) and torch.isfinite(samples).all()


def test_save_load_round_trip(fitted, tmp_path):
    mode, lfm, x, _ = fitted
    lfm.save(tmp_path / "m.pt")
    loaded = tl.LocalFlowMatching.load(tmp_path / "m.pt", velocity_factory=lambda n: tl.MLP(2, width=16, depth=1))
    assert loaded.standardizer == lfm.standardizer and loaded.standardizer.mode == mode
    noise = torch.randn(10, 2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(loaded.decode(noise), lfm.decode(noise))
    assert torch.equal(loaded.log_prob(x[:10]), lfm.log_prob(x[:10]))
    # files written before the option existed have no map: they load as the identity
    state = lfm.to_state()
    del state["standardize"]
    old = tl.LocalFlowMatching.from_state(state, velocity_factory=lambda n: tl.MLP(2, width=16, depth=1))
    assert old.standardizer.is_identity and old.standardizer == Standardizer()
    state["standardize"] = {"mode": "diagonal", "mean": torch.zeros(3), "scale": torch.ones(3)}
    with pytest.raises(tl.CheckpointError, match="damaged data standardization"):
        tl.LocalFlowMatching.from_state(state, velocity_factory=lambda n: tl.MLP(2, width=16, depth=1))


def test_resume_restores_the_map_and_refuses_another(tmp_path):
    x = _data(seed=1)
    opts = dict(FIT, batches_per_block=10, checkpoint_every=3, standardize="diagonal")
    ref = _model()
    ref.fit(x, **opts)
    with pytest.raises(Crash):
        _model().fit(x, checkpoint_dir=tmp_path, callback=crash_at(2, 5), **opts)
    saved = tl.LocalFlowMatching.load(tmp_path / "model.pt", velocity_factory=lambda n: tl.MLP(2, width=16, depth=1))
    assert saved.standardizer == ref.standardizer  # stored with the run, before block 1 finished
    with pytest.raises(ValueError, match="standardize: 'diagonal' -> 'full'"):
        _model().fit(x, checkpoint_dir=tmp_path, resume=True, **{**opts, "standardize": "full"})
    resumed = _model(seed=5)
    resumed.fit(x, checkpoint_dir=tmp_path, resume=True, **opts)
    assert resumed.standardizer == ref.standardizer
    for a, b in zip(ref.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_continuing_in_memory_keeps_the_map():
    x = _data(seed=1)
    lfm = _model()
    with pytest.raises(Crash):
        lfm.fit(x, callback=crash_at(2, 1), standardize="full", **FIT)
    assert lfm.n_trained == 1
    before = lfm.standardizer
    with pytest.raises(ValueError, match="trained block.*standardize='full'.*not 'diagonal'"):
        lfm.fit(x, resume=True, standardize="diagonal", **FIT)
    lfm.fit(2 * x, resume=True, standardize="full", **FIT)  # other data: the trained block 1 keeps its map
    assert lfm.standardizer is before and lfm.n_trained == 3


def test_shaped_data():
    shape = (2, 2, 3)
    x = _data(300, seed=6, shape=shape)
    for mode in ("diagonal", "full"):
        lfm = _model(shape)
        lfm.fit(x, standardize=mode, **FIT)
        white, log_det = _by_hand(x, mode)
        torch.testing.assert_close(lfm.standardizer.apply(x.double()), white, rtol=0, atol=1e-9)
        torch.testing.assert_close(lfm.decode(lfm.encode(x[:20])), x[:20], rtol=0, atol=1e-3 * float(x.abs().max()))
        plain = _twin(lfm)
        torch.testing.assert_close(lfm.log_prob(x[:5]), plain.log_prob(white[:5].float()) + log_det, rtol=0, atol=1e-4)
        assert lfm.sample(4).shape == (4, *shape)


def test_bad_inputs():
    x = _data()
    with pytest.raises(ValueError, match=r"standardize must be one of \(None, 'none', 'auto', 'diagonal', 'full'\), got 'zscore'"):
        _model().fit(x, standardize="zscore", **FIT)
    assert _model().fit(x, standardize="none", **{**FIT, "batches_per_block": 1}).blocks  # "none" is the identity
    const = x.clone()
    const[:, 1] = 7.0
    with pytest.raises(ValueError, match=r"1 feature\(s\) are constant \(feature 1: value 7, std 0\)"):
        _model().fit(const, standardize="diagonal", **FIT)
    image = _data(100, shape=(1, 2, 2))
    image[:, 0, 1, 0] = 0.5
    with pytest.raises(ValueError, match=r"feature 2 \(index \(0, 1, 0\)\): value 0.5"):
        Standardizer.fit(image, "full")
    dup = torch.cat([x, x[:, :1] * 2.0], 1)  # a feature that is a multiple of another
    with pytest.raises(ValueError, match="nearly\\) singular"):
        Standardizer.fit(dup, "full")
    assert Standardizer.fit(dup, "diagonal").mode == "diagonal"
    wide = tl.LocalFlowMatching((4097,), tl.OUSchedule(0.3, 1.5, 2), velocity_factory=lambda n: tl.MLP(4097, width=4, depth=1))
    with pytest.raises(ValueError, match="standardize='full' takes at most 4096 features"):
        wide.fit(torch.randn(40, 4097), standardize="full", **FIT)
    with pytest.raises(ValueError, match="at most 4096"):
        Standardizer.fit(torch.randn(10, 4097), "full")


def test_auto_standardizes_only_data_far_from_unit_scale():
    import warnings

    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, generator=g)

    def fit(data, **kw):
        model = tl.LocalFlowMatching(3, velocity_factory=lambda n: tl.MLP(3, width=8))
        model.fit(data, batches_per_block=1, batch_size=50, progress=False, **kw)
        return model.standardizer

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for scale, mode in ((0.05, "diagonal"), (0.2, "diagonal"), (0.3, None), (1.0, None), (3.5, None),
                            (5.0, "diagonal"), (100.0, "diagonal")):
            assert fit(scale * x).mode == mode, scale  # the default is "auto"
        assert fit(0.05 * x, standardize=None).mode is None  # asked for: no map, no warning
        off = fit(0.05 * x + 3.0)
        torch.testing.assert_close(off.mean, (0.05 * x + 3.0).double().mean(0))
    const = 0.05 * x
    const[:, 1] = 2.0  # off scale, but "diagonal" refuses the constant feature
    with pytest.warns(UserWarning, match=r"RMS feature std is .* cannot rescale it .*constant") as caught:
        assert fit(const).mode is None
    assert caught[0].filename == __file__  # points at the caller's fit
