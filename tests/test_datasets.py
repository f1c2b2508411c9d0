"""Tests of torchcfm_local.datasets: registry, 2-D densities, MAF file recipes, offline stand-ins.

The MAF recipes are checked on tiny files written here in the release formats, against the recipe
written again, independently, in the test.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchcfm_local import datasets

TOY2D = ["tree", "rose", "8gaussians", "moons", "checkerboard", "pinwheel", "2spirals", "rings", "mixture_unequal"]
MAF = ["power", "gas", "miniboone", "bsds300", "hepmass"]
OFFLINE = ["bsds300_patches", "patches4x4", "patches3x3", "digits61", "breast_cancer"]
MAF_FILES = {
    "power": ["power/data.npy"],
    "gas": ["gas/ethylene_CO.pickle"],
    "miniboone": ["miniboone/data.npy"],
    "bsds300": ["BSDS300/BSDS300.hdf5"],
    "hepmass": ["hepmass/1000_train.csv", "hepmass/1000_test.csv"],
}


def _write_npy(root: Path, rel: str, data: np.ndarray) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, data)


def _maf_tail_split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n_test = int(0.1 * len(a))
    rest, test = a[:-n_test], a[-n_test:]
    n_val = int(0.1 * len(rest))
    return rest[:-n_val], rest[-n_val:], test


# ----------------------------------------------------------------------------------------------------
# registry and argument checks
# ----------------------------------------------------------------------------------------------------


def test_import_pulls_no_optional_dependency():
    code = (
        "import sys, torchcfm_local.datasets\n"
        "bad = [m for m in ('matplotlib', 'sklearn', 'pandas', 'h5py') if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_available_lists_every_family():
    assert datasets.available() == TOY2D + MAF + OFFLINE
    assert set(datasets.REGISTRY) == set(datasets.available())


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="unknown dataset 'nope'") as err:
        datasets.load("nope")
    for name in ("tree", "power", "digits61"):
        assert name in str(err.value)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
@pytest.mark.parametrize("arg", ["n_train", "n_val", "n_test"])
def test_bad_split_size_raises(arg, bad):
    with pytest.raises(ValueError, match=arg):
        datasets.load("moons", **{arg: bad})


@pytest.mark.parametrize("bad", [-1, 1.5, None])
def test_bad_seed_raises(bad):
    with pytest.raises(ValueError, match="seed"):
        datasets.load("moons", n_train=10, n_val=10, n_test=10, seed=bad)


@pytest.mark.parametrize("bad", [torch.int64, np.float32, "float32"])
def test_bad_dtype_raises(bad):
    with pytest.raises(TypeError, match="floating torch.dtype"):
        datasets.load("moons", n_train=10, n_val=10, n_test=10, dtype=bad)


# ----------------------------------------------------------------------------------------------------
# 2-D densities
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", TOY2D)
def test_toy2d_shapes_determinism_and_independent_splits(name):
    kw = dict(n_train=3000, n_val=500, n_test=700)
    a = datasets.load(name, seed=3, **kw)
    b = datasets.load(name, seed=3, **kw)
    c = datasets.load(name, seed=4, **kw)
    assert a.name == name and a.dim == 2 and a.shape == (2,)
    assert [tuple(t.shape) for t in (a.train, a.val, a.test)] == [(3000, 2), (500, 2), (700, 2)]
    assert a.info["n"] == {"train": 3000, "val": 500, "test": 700} and a.info["dim"] == 2
    assert a.train.dtype == torch.float32
    for t in (a.train, a.val, a.test):
        assert torch.isfinite(t).all()
        assert t.abs().max() < 5.5  # roughly [-4, 4]^2 plus noise tails
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)
    assert not torch.equal(a.train[:500], a.val)  # splits use different generators
    # each split has its own generator: changing n_val leaves train and test unchanged
    d = datasets.load(name, seed=3, n_train=3000, n_val=20, n_test=700)
    assert torch.equal(a.train, d.train) and torch.equal(a.test, d.test)


def test_toy2d_defaults_and_dtype():
    ds = datasets.load("rings", dtype=torch.float64)
    assert [len(t) for t in (ds.train, ds.val, ds.test)] == [100_000, 10_000, 10_000]
    assert ds.train.dtype == torch.float64


def test_8gaussians_mixture_moments():
    x = datasets.toy2d.sample("8gaussians", 40_000, seed=0, dtype=torch.float64).numpy()
    ang = 2 * np.pi * np.arange(8) / 8
    centres = 2 * np.sqrt(2) * np.stack([np.cos(ang), np.sin(ang)], 1)
    k = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_allclose(np.bincount(k, minlength=8) / len(x), 1 / 8, atol=0.01)
    resid = x - centres[k]
    np.testing.assert_allclose(resid.std(axis=0), 0.5 / np.sqrt(2), rtol=0.03)


def test_moons_mean_matches_closed_form():
    # upper moon: y = 2 sin t - 0.2, lower: y = 2 (1/2 - sin t) - 0.2, E[sin t] = 2/pi, so E[y] = 0.3
    x = datasets.toy2d.sample("moons", 50_000, seed=1, dtype=torch.float64).numpy()
    np.testing.assert_allclose(x.mean(axis=0), [0.0, 0.3], atol=0.025)


def test_checkerboard_only_black_squares():
    x = datasets.load("checkerboard", n_train=5000, n_val=10, n_test=10, dtype=torch.float64).train.numpy()
    assert np.all((np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2 == 0)
    assert x.min() >= -4 and x.max() < 4
    # all 8 black squares are used, with about equal mass
    cell = (np.floor(x[:, 0] / 2) + 2) * 4 + (np.floor(x[:, 1] / 2) + 2)
    counts = np.bincount(cell.astype(int), minlength=16)
    assert np.count_nonzero(counts) == 8
    np.testing.assert_allclose(counts[counts > 0] / len(x), 1 / 8, atol=0.02)


def test_rings_radii_and_noise():
    x = datasets.toy2d.sample("rings", 20_000, seed=2, dtype=torch.float64).numpy()
    r = np.linalg.norm(x, axis=1)
    radii = np.asarray(datasets.toy2d.RING_RADII)
    resid = r - radii[np.argmin(np.abs(r[:, None] - radii[None]), axis=1)]
    assert np.abs(resid).max() < 0.4
    assert 0.07 < resid.std() < 0.09


def test_rose_points_lie_on_four_petal_curve():
    x = datasets.toy2d.sample("rose", 20_000, seed=5, dtype=torch.float64).numpy()
    theta = np.linspace(0, 2 * np.pi, 4001)
    r = 3.5 * np.cos(2 * theta)
    curve = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    dist = np.linalg.norm(x[:1000, None] - curve[None], axis=-1).min(axis=1)
    # distance to a curve under N(0, 0.08^2 I) noise ~ |N(0, 0.08^2)|: median 0.674 * 0.08 = 0.054
    assert 0.045 < np.median(dist) < 0.065 and dist.max() < 0.5
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.05)
    # four petals along the axes with equal mass
    petal = np.argmax(np.abs(x @ np.array([[1, 0, -1, 0], [0, 1, 0, -1]])) * (x @ np.array(
        [[1, 0, -1, 0], [0, 1, 0, -1]]) > 0), axis=1)
    np.testing.assert_allclose(np.bincount(petal, minlength=4) / len(x), 0.25, atol=0.015)


def test_tree_geometry_and_samples():
    seg = datasets.toy2d.tree_segments()
    assert seg["start"].shape == (127, 2) and seg["end"].shape == (127, 2)
    assert np.bincount(seg["level"]).tolist() == [1, 2, 4, 8, 16, 32, 64]
    np.testing.assert_allclose(seg["weight"].sum(), 1.0, rtol=1e-12)
    mid = (seg["start"] + seg["end"]) / 2
    np.testing.assert_allclose((mid * seg["weight"][:, None]).sum(0), 0.0, atol=1e-12)
    ends = np.concatenate([seg["start"], seg["end"]])
    np.testing.assert_allclose(np.abs(ends).max(), 3.8, rtol=1e-12)
    # children attach to their parent's end point: every start except the trunk's is some end point
    starts = seg["start"][1:]
    gap = np.min(np.linalg.norm(starts[:, None] - seg["end"][None], axis=-1), axis=1)
    assert gap.max() < 1e-12

    x = datasets.toy2d.sample("tree", 20_000, seed=0, dtype=torch.float64).numpy()
    np.testing.assert_allclose(x.mean(axis=0), 0.0, atol=0.05)
    # every sample is within a few thickness stds of some segment
    a, b = seg["start"], seg["end"]
    ab = b - a
    t = np.clip(((x[:2000, None] - a[None]) * ab[None]).sum(-1) / (ab ** 2).sum(-1)[None], 0, 1)
    dist = np.linalg.norm(x[:2000, None] - (a[None] + t[..., None] * ab[None]), axis=-1).min(1)
    assert dist.max() < 5 * seg["sigma"].max()


# ----------------------------------------------------------------------------------------------------
# MAF files: missing files
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MAF)
def test_maf_without_root_names_expected_files(name):
    with pytest.raises(FileNotFoundError, match="is read from files and needs root=<directory>; expected") as err:
        datasets.load(name)
    msg = str(err.value)
    for rel in MAF_FILES[name]:
        assert rel in msg
    assert "Papamakarios" in msg and "root" in msg


@pytest.mark.parametrize("name", MAF)
def test_maf_missing_file_names_full_path(name, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"expected file\(s\) not found") as err:
        datasets.load(name, root=tmp_path)
    for rel in MAF_FILES[name]:
        assert str(tmp_path / rel) in str(err.value)


def test_hepmass_names_only_the_missing_file(tmp_path):
    (tmp_path / "hepmass").mkdir()
    (tmp_path / "hepmass" / "1000_train.csv").write_text("# label,f0\n1,0.5\n")
    with pytest.raises(FileNotFoundError, match=r"expected file\(s\) not found") as err:
        datasets.load("hepmass", root=tmp_path)
    assert str(tmp_path / "hepmass" / "1000_test.csv") in str(err.value)
    assert "1000_train.csv" not in str(err.value)


# ----------------------------------------------------------------------------------------------------
# POWER
# ----------------------------------------------------------------------------------------------------


def _power_table(n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.normal(loc=10.0 * np.arange(8), scale=1.0 + np.arange(8), size=(n, 8))


def test_power_recipe_matches_independent_rewrite(tmp_path):
    raw = _power_table()
    _write_npy(tmp_path, "power/data.npy", raw)
    ds = datasets.load("power", root=tmp_path, dtype=torch.float64)

    # the MAF recipe, again: RandomState(42) shuffle, keep columns 0,2,4,5,6,7, noise, split, normalise
    rs = np.random.RandomState(42)
    ref = raw.copy()
    rs.shuffle(ref)
    ref = ref[:, [0, 2, 4, 5, 6, 7]]
    volt, gap, sub = 0.01 * rs.rand(200), 0.001 * rs.rand(200), rs.rand(200, 3)
    ref[:, 0] += gap
    ref[:, 1] += volt
    ref[:, 2:5] += sub
    tr, va, te = _maf_tail_split(ref)
    both = np.vstack([tr, va])
    mu, sd = both.mean(0), both.std(0)

    assert ds.dim == 6 and ds.info["n"] == {"train": 162, "val": 18, "test": 20}
    assert ds.info["columns"] == ["global_active_power", "voltage", "sub_metering_1", "sub_metering_2",
                                  "sub_metering_3", "time"]
    np.testing.assert_allclose(ds.train.numpy(), (tr - mu) / sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.val.numpy(), (va - mu) / sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.test.numpy(), (te - mu) / sd, rtol=0, atol=1e-12)
    joint = torch.cat([ds.train, ds.val]).numpy()
    np.testing.assert_allclose(joint.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(joint.std(0), 1.0, atol=1e-12)
    # the recipe is fixed (RandomState(42)); seed only matters for subsets
    again = datasets.load("power", root=tmp_path, seed=9, dtype=torch.float64)
    assert torch.equal(again.train, ds.train)


def test_power_rejects_wrong_width(tmp_path):
    _write_npy(tmp_path, "power/data.npy", np.zeros((50, 7)))
    with pytest.raises(ValueError, match=r"8 columns.*got shape \(50, 7\)"):
        datasets.load("power", root=tmp_path)


# ----------------------------------------------------------------------------------------------------
# GAS
# ----------------------------------------------------------------------------------------------------


def _gas_frame(n: int = 300):
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(12)
    cols = {"Time": np.arange(n, dtype=float), "Meth": rng.random(n), "Eth": rng.random(n)}
    base = rng.normal(size=(n, 10)) * (1.0 + np.arange(10)) + 5.0 * np.arange(10)
    base[:, 1] = base[:, 0] + 0.01 * rng.normal(size=n)          # S0 ~ S1
    base[:, 3] = 2.0 * base[:, 2] + 0.02 * rng.normal(size=n)    # S2 ~ S3 ~ S4
    base[:, 4] = base[:, 2] + 0.03 * rng.normal(size=n)
    for j in range(10):
        cols[f"S{j}"] = base[:, j]
    return pd.DataFrame(cols)


def test_gas_drops_columns_and_correlated_sensors(tmp_path):
    frame = _gas_frame()
    (tmp_path / "gas").mkdir()
    frame.to_pickle(tmp_path / "gas" / "ethylene_CO.pickle")
    ds = datasets.load("gas", root=tmp_path, dtype=torch.float64, trust_pickle=True)

    # first column with a partner above 0.98 goes first: S0, then S2, then S3 (S4 is then alone)
    kept = ["S1", "S4", "S5", "S6", "S7", "S8", "S9"]
    assert ds.info["dropped_correlated"] == ["S0", "S2", "S3"]
    assert ds.info["columns"] == kept
    table = frame[kept].to_numpy()
    ref = (table - table.mean(0)) / table.std(0, ddof=1)
    tr, va, te = _maf_tail_split(ref)
    assert ds.dim == 7 and ds.info["n"] == {"train": 243, "val": 27, "test": 30}
    np.testing.assert_allclose(ds.train.numpy(), tr, atol=1e-12)
    np.testing.assert_allclose(ds.val.numpy(), va, atol=1e-12)
    np.testing.assert_allclose(ds.test.numpy(), te, atol=1e-12)
    everything = torch.cat([ds.train, ds.val, ds.test]).numpy()
    np.testing.assert_allclose(everything.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(everything.std(0, ddof=1), 1.0, atol=1e-12)
    corr = np.corrcoef(everything, rowvar=False)
    assert (corr[~np.eye(7, dtype=bool)] <= 0.98).all()


def test_gas_requires_meth_eth_time():
    frame = _gas_frame().drop(columns=["Meth"])
    with pytest.raises(ValueError, match=r"missing \['Meth'\]"):
        datasets.tabular.preprocess_gas(frame)


def test_gas_unreadable_pickle_is_reported(tmp_path):
    pytest.importorskip("pandas")
    (tmp_path / "gas").mkdir()
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="could not unpickle"):
        datasets.load("gas", root=tmp_path, trust_pickle=True)


class _Tampered:
    """Unpickling this runs ``pathlib.Path(flag).touch()``: what a tampered pickle could do."""

    def __init__(self, flag):
        self.flag = str(flag)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.flag),))


def test_gas_never_unpickles_an_untrusted_file(tmp_path):
    import pickle

    (tmp_path / "gas").mkdir()
    flag = tmp_path / "code_ran"
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(pickle.dumps(_Tampered(flag)))
    with pytest.raises(ValueError, match="refusing to unpickle .*trust_pickle=True.*convert_gas"):
        datasets.load("gas", root=tmp_path)
    assert not flag.exists()  # nothing in the file was executed
    with pytest.raises(ValueError, match="expected .* to hold a pandas DataFrame"):
        datasets.load("gas", root=tmp_path, trust_pickle=True)  # the caller's explicit choice
    assert flag.exists()  # proof that the file does run code once unpickled


def test_gas_converted_file_loads_like_the_trusted_pickle(tmp_path):
    from torchcfm_local.datasets.convert_gas import main as convert

    (tmp_path / "gas").mkdir()
    pickled = tmp_path / "gas" / "ethylene_CO.pickle"
    _gas_frame().to_pickle(pickled)
    trusted = datasets.load("gas", root=tmp_path, dtype=torch.float64, trust_pickle=True)
    assert convert([str(pickled)]) == 0
    pickled.write_bytes(b"not a pickle any more")  # the .npz alone must be enough
    safe = datasets.load("gas", root=tmp_path, dtype=torch.float64)
    assert torch.equal(safe.train, trusted.train) and torch.equal(safe.test, trusted.test)
    assert safe.info["columns"] == trusted.info["columns"]
    (tmp_path / "gas" / "ethylene_CO.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="cannot read .*ethylene_CO.npz"):
        datasets.load("gas", root=tmp_path)


# ----------------------------------------------------------------------------------------------------
# MINIBOONE
# ----------------------------------------------------------------------------------------------------


def test_miniboone_release_file_split_and_normalisation(tmp_path):
    raw = np.random.default_rng(13).normal(loc=3.0, scale=2.0, size=(200, 43))
    _write_npy(tmp_path, "miniboone/data.npy", raw)
    ds = datasets.load("miniboone", root=tmp_path, dtype=torch.float64)
    tr, va, te = _maf_tail_split(raw)
    both = np.vstack([tr, va])
    mu, sd = both.mean(0), both.std(0)
    assert ds.dim == 43 and ds.info["n"] == {"train": 162, "val": 18, "test": 20}
    assert ds.info["raw_cleaning"] is False
    np.testing.assert_allclose(ds.test.numpy(), (te - mu) / sd, atol=1e-12)
    joint = torch.cat([ds.train, ds.val]).numpy()
    np.testing.assert_allclose(joint.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(joint.std(0), 1.0, atol=1e-12)


def test_miniboone_raw_file_is_cleaned(tmp_path):
    rng = np.random.default_rng(14)
    raw = rng.normal(size=(220, 50))
    raw[[5, 50, 100, 150, 200], :] = -999.0             # outlier rows (UCI missing-value marker)
    raw[:, 3] = rng.integers(0, 3, size=220)            # discrete: minimum repeats many times
    raw[:, 10] = rng.integers(0, 2, size=220)
    raw[20:26, 20] = -50.0                                # minimum repeated 6 times (> 5): removed
    raw[30:35, 21] = -50.0                                # minimum repeated 5 times: kept
    _write_npy(tmp_path, "miniboone/data.npy", raw)
    ds = datasets.load("miniboone", root=tmp_path, dtype=torch.float64)
    assert ds.info["raw_cleaning"] is True
    assert ds.info["removed_rows"] == 5
    assert ds.info["removed_features"] == [3, 10, 20]
    assert ds.dim == 47
    # 215 rows: test 21, rest 194, val 19, train 175
    assert ds.info["n"] == {"train": 175, "val": 19, "test": 21}


def test_fixed_table_subsets_are_seeded_subsets(tmp_path):
    raw = np.random.default_rng(15).normal(size=(200, 43))
    _write_npy(tmp_path, "miniboone/data.npy", raw)
    full = datasets.load("miniboone", root=tmp_path, dtype=torch.float64)
    sub = datasets.load("miniboone", root=tmp_path, n_train=50, n_test=7, seed=1, dtype=torch.float64)
    same = datasets.load("miniboone", root=tmp_path, n_train=50, n_test=7, seed=1, dtype=torch.float64)
    other = datasets.load("miniboone", root=tmp_path, n_train=50, n_test=7, seed=2, dtype=torch.float64)
    assert sub.info["n"] == {"train": 50, "val": 18, "test": 7}
    assert sub.info["n_full"] == {"train": 162, "val": 18, "test": 20}
    assert torch.equal(sub.train, same.train) and not torch.equal(sub.train, other.train)
    is_row_of_full = (sub.train[:, None, :] == full.train[None]).all(dim=-1).any(dim=1)
    assert is_row_of_full.all()
    assert len(torch.unique(sub.train, dim=0)) == 50  # without replacement
    with pytest.raises(ValueError, match="n_train=1000 requested but the train split has only 162 rows"):
        datasets.load("miniboone", root=tmp_path, n_train=1000)


# ----------------------------------------------------------------------------------------------------
# HEPMASS
# ----------------------------------------------------------------------------------------------------


def _hepmass_csv(rng: np.random.Generator, n: int, extra_column: bool):
    pd = pytest.importorskip("pandas")
    cols = {"# label": rng.integers(0, 2, size=n).astype(float)}
    for j in range(8):
        cols[f"f{j}"] = rng.normal(loc=j, scale=1.0 + j, size=n)
    cols["f2"] = rng.integers(0, 3, size=n).astype(float)  # discrete feature
    cols["mass"] = np.full(n, 1000.0)                       # constant in the mass-1000 file
    if extra_column:
        cols["junk"] = rng.normal(size=n)
    return pd.DataFrame(cols)


def test_hepmass_recipe(tmp_path):
    rng = np.random.default_rng(16)
    train_frame = _hepmass_csv(rng, 400, extra_column=False)
    test_frame = _hepmass_csv(rng, 150, extra_column=True)
    (tmp_path / "hepmass").mkdir()
    train_frame.to_csv(tmp_path / "hepmass" / "1000_train.csv", index=False)
    test_frame.to_csv(tmp_path / "hepmass" / "1000_test.csv", index=False)
    ds = datasets.load("hepmass", root=tmp_path, dtype=torch.float64)

    kept = ["f0", "f1", "f3", "f4", "f5", "f6", "f7"]
    assert ds.info["columns"] == kept and ds.info["removed_features"] == ["f2", "mass"]
    sig_tr = train_frame[train_frame["# label"] == 1][kept].to_numpy()
    sig_te = test_frame[test_frame["# label"] == 1][kept].to_numpy()
    mu, sd = sig_tr.mean(0), sig_tr.std(0, ddof=1)
    n_val = int(0.1 * len(sig_tr))
    assert ds.dim == 7
    assert ds.info["n"] == {"train": len(sig_tr) - n_val, "val": n_val, "test": len(sig_te)}
    np.testing.assert_allclose(ds.train.numpy(), ((sig_tr - mu) / sd)[:-n_val], atol=1e-12)
    np.testing.assert_allclose(ds.val.numpy(), ((sig_tr - mu) / sd)[-n_val:], atol=1e-12)
    np.testing.assert_allclose(ds.test.numpy(), (sig_te - mu) / sd, atol=1e-12)
    joint = torch.cat([ds.train, ds.val]).numpy()
    np.testing.assert_allclose(joint.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(joint.std(0, ddof=1), 1.0, atol=1e-12)


# ----------------------------------------------------------------------------------------------------
# BSDS300
# ----------------------------------------------------------------------------------------------------


def test_bsds300_reads_the_three_datasets(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(17)
    arrays = {"train": rng.normal(size=(60, 63)), "validation": rng.normal(size=(20, 63)),
              "test": rng.normal(size=(30, 63))}
    (tmp_path / "BSDS300").mkdir()
    with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v.astype(np.float32))
    ds = datasets.load("bsds300", root=tmp_path)
    assert ds.dim == 63 and ds.info["n"] == {"train": 60, "val": 20, "test": 30}
    np.testing.assert_array_equal(ds.val.numpy(), arrays["validation"].astype(np.float32))


class _FakeH5File:
    """Stands in for ``h5py.File`` (read mode) over a dict of arrays."""

    store: dict = {}

    def __init__(self, path, mode="r"):
        assert mode == "r"
        self.data = self.store[str(path)]

    def __enter__(self):
        return self.data

    def __exit__(self, *exc):
        return False


def test_bsds300_split_handling_with_a_stand_in_reader(tmp_path, monkeypatch):
    import types

    path = tmp_path / "BSDS300" / "BSDS300.hdf5"
    path.parent.mkdir()
    path.write_bytes(b"")
    rng = np.random.default_rng(18)
    arrays = {"train": rng.normal(size=(50, 63)), "validation": rng.normal(size=(10, 63)),
              "test": rng.normal(size=(25, 63))}
    monkeypatch.setattr(_FakeH5File, "store", {str(path): arrays})
    monkeypatch.setitem(sys.modules, "h5py", types.SimpleNamespace(File=_FakeH5File))
    ds = datasets.load("bsds300", root=tmp_path, n_test=5, seed=0, dtype=torch.float64)
    assert ds.info["n"] == {"train": 50, "val": 10, "test": 5}
    np.testing.assert_array_equal(ds.train.numpy(), arrays["train"])
    np.testing.assert_array_equal(ds.val.numpy(), arrays["validation"])
    assert (ds.test.numpy()[:, None, :] == arrays["test"][None]).all(-1).any(1).all()
    monkeypatch.setattr(_FakeH5File, "store", {str(path): {"train": arrays["train"], "valid": arrays["test"]}})
    with pytest.raises(ValueError, match="expected datasets 'train', 'validation', 'test'"):
        datasets.load("bsds300", root=tmp_path)


def test_bsds300_without_h5py_names_the_install(tmp_path, monkeypatch):
    (tmp_path / "BSDS300").mkdir()
    (tmp_path / "BSDS300" / "BSDS300.hdf5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` fail
    with pytest.raises(ImportError, match="pip install h5py"):
        datasets.load("bsds300", root=tmp_path)


# ----------------------------------------------------------------------------------------------------
# offline stand-ins
# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,dim", [("bsds300_patches", 63), ("patches4x4", 15), ("patches3x3", 8)])
def test_patch_datasets(name, dim):
    pytest.importorskip("sklearn")
    kw = dict(n_train=400, n_val=100, n_test=120)
    a = datasets.load(name, seed=0, **kw)
    b = datasets.load(name, seed=0, **kw)
    c = datasets.load(name, seed=1, **kw)
    assert a.dim == dim and [len(t) for t in (a.train, a.val, a.test)] == [400, 100, 120]
    assert torch.equal(a.train, b.train) and not torch.equal(a.train, c.train)
    for t in (a.train, a.val, a.test):
        assert torch.isfinite(t).all() and t.abs().max() < 1.0
        # the dropped pixel is minus the sum of the others; it is a centred intensity too
        assert (t.sum(dim=1).abs() < 1.0).all()
    bands = a.info["bands"]
    assert bands["train"][0] == 0 and bands["test"][1] == 427
    assert bands["train"][1] == bands["val"][0] and bands["val"][1] == bands["test"][0]
    assert bands["train"][1] - bands["train"][0] > bands["val"][1] - bands["val"][0] >= 8


def test_patch_bands_are_disjoint_and_patches_stay_inside():
    pytest.importorskip("sklearn")
    images, names = datasets.offline.gray_sample_images()
    assert images.shape == (2, 427, 640) and images.dtype == np.uint8
    assert names == ("china.jpg", "flower.jpg")
    bands = datasets.offline.patch_bands(427)
    assert bands == {"train": (0, 299), "val": (299, 363), "test": (363, 427)}
    p = 8
    rows_used = {}
    for i, (split, band) in enumerate(bands.items()):
        patches, loc = datasets.offline.sample_patches(images, 3000, p, band, np.random.default_rng(i))
        assert patches.shape == (3000, p * p - 1) and loc.shape == (3000, 3)
        assert loc[:, 1].min() >= band[0] and (loc[:, 1] + p).max() <= band[1]
        assert loc[:, 2].min() >= 0 and (loc[:, 2] + p).max() <= 640
        assert set(np.unique(loc[:, 0])) == {0, 1}
        rows_used[split] = set((loc[:, 1, None] + np.arange(p)).ravel().tolist())
        # each patch equals (integer patch - its mean) / 256 up to the dequantisation noise (< 1/256)
        raw = np.stack([images[k, r:r + p, c:c + p] for k, r, c in loc[:200]]).reshape(200, -1).astype(float)
        expect = (raw - raw.mean(axis=1, keepdims=True))[:, :-1] / 256.0
        assert np.abs(patches[:200] - expect).max() < 1.0 / 256.0
    assert not rows_used["train"] & rows_used["val"]
    assert not rows_used["val"] & rows_used["test"]
    assert not rows_used["train"] & rows_used["test"]


def test_sample_patches_rejects_too_thin_band():
    images = np.zeros((1, 20, 20), dtype=np.uint8)
    with pytest.raises(ValueError, match="cannot hold a 8x8 patch"):
        datasets.offline.sample_patches(images, 5, 8, (0, 7), np.random.default_rng(0))


def test_digits61_recipe_inverts_to_the_original_pixels():
    skd = pytest.importorskip("sklearn.datasets")
    ds = datasets.load("digits61", seed=3, dtype=torch.float64)
    assert ds.dim == 61 and ds.info["n"] == {"train": 1259, "val": 269, "test": 269}
    assert ds.info["dropped_pixels"] == [0, 32, 39]
    rows = ds.info["row_indices"]
    all_rows = rows["train"] + rows["val"] + rows["test"]
    assert sorted(all_rows) == list(range(1797))
    np.testing.assert_allclose(ds.train.mean(0).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.train.std(0, unbiased=False).numpy(), 1.0, atol=1e-12)
    # undo the standardisation and the /17: the floor is the original 0..16 pixel value
    pixels = np.delete(skd.load_digits().data, [0, 32, 39], axis=1)
    mu, sd = np.array(ds.info["mean"]), np.array(ds.info["std"])
    for split, t in (("train", ds.train), ("test", ds.test)):
        x17 = (t.numpy() * sd + mu) * 17.0
        np.testing.assert_array_equal(np.floor(x17 + 1e-9), pixels[rows[split]])
        assert (x17 - pixels[rows[split]]).std() > 0.2  # the U(0,1) noise is there (std 0.289)
    again = datasets.load("digits61", seed=3, dtype=torch.float64)
    other = datasets.load("digits61", seed=4, dtype=torch.float64)
    assert torch.equal(again.test, ds.test)
    assert other.info["row_indices"]["test"] != rows["test"]


def test_breast_cancer_recipe_inverts_to_the_table():
    skd = pytest.importorskip("sklearn.datasets")
    ds = datasets.load("breast_cancer", seed=0, dtype=torch.float64)
    assert ds.dim == 30 and ds.info["n"] == {"train": 399, "val": 85, "test": 85}
    np.testing.assert_allclose(ds.train.mean(0).numpy(), 0.0, atol=1e-12)
    np.testing.assert_allclose(ds.train.std(0, unbiased=False).numpy(), 1.0, atol=1e-12)
    table = skd.load_breast_cancer().data
    mu, sd, med = (np.array(ds.info[k]) for k in ("mean", "std", "median"))
    np.testing.assert_allclose(med, np.median(table[ds.info["row_indices"]["train"]], axis=0))
    back = np.expm1(ds.val.numpy() * sd + mu) * med
    np.testing.assert_allclose(back, table[ds.info["row_indices"]["val"]], rtol=1e-10, atol=1e-12)


def test_small_table_subset_and_limit():
    pytest.importorskip("sklearn")
    full = datasets.load("digits61", seed=0)
    sub = datasets.load("digits61", seed=0, n_train=100)
    assert sub.train.shape == (100, 61)
    assert set(sub.info["row_indices"]["train"]) <= set(full.info["row_indices"]["train"])
    assert torch.equal(sub.test, full.test)
    with pytest.raises(ValueError, match="n_val=300 requested but the val split has only 269 rows"):
        datasets.load("digits61", n_val=300)
