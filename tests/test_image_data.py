"""Image data: CIFAR-10 python batches, image folders, digits images, dequantization and bits/dim."""
import math
import os
import pickle

import numpy as np
import pytest
import torch

import torchcfm_local as tl

from torchcfm_local.images.data import (
    CIFAR10_TRAIN_FILES,
    digits_images,
    load_cifar10,
    load_image_folder,
    to_model_space,
    to_uint8,
    write_cifar10_like,
)

# ------------------------------------------------------------------------------------------
# CIFAR-10
# ------------------------------------------------------------------------------------------


def _trusted_load(path):
    """Our own freshly written test files: plain pickle is fine here."""
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def test_cifar_round_trip_pixels_and_labels(tmp_path):
    d = write_cifar10_like(tmp_path, n_train=23, n_test=7, seed=1)
    assert os.path.basename(d) == "cifar-10-batches-py"
    raw = [_trusted_load(os.path.join(d, f)) for f in CIFAR10_TRAIN_FILES]
    data = np.concatenate([r[b"data"] for r in raw], 0)
    labels = np.concatenate([np.asarray(r[b"labels"], dtype=np.int64) for r in raw], 0)
    assert data.shape == (23, 3072) and [r[b"data"].shape[0] for r in raw] == [5, 5, 5, 4, 4]

    for root in (tmp_path, d):  # the parent directory or cifar-10-batches-py itself
        x, y = load_cifar10(root, "train")
        assert x.dtype == torch.uint8 and x.shape == (23, 3, 32, 32)
        assert y.dtype == torch.int64 and y.tolist() == labels.tolist()
        # row layout: R plane, G plane, B plane, each 32 x 32 row-major
        i, c, r, col = 13, 2, 7, 30
        assert int(x[i, c, r, col]) == int(data[i, c * 1024 + r * 32 + col])
        assert np.array_equal(x.numpy().reshape(23, -1), data)

    xt, yt = load_cifar10(tmp_path, "test")
    t = _trusted_load(os.path.join(d, "test_batch"))
    assert xt.shape == (7, 3, 32, 32) and np.array_equal(xt.numpy().reshape(7, -1), t[b"data"])
    assert yt.tolist() == list(t[b"labels"])


def test_cifar_n_and_determinism(tmp_path):
    write_cifar10_like(tmp_path / "a", 23, 7, seed=3)
    write_cifar10_like(tmp_path / "b", 23, 7, seed=3)
    xa, ya = load_cifar10(tmp_path / "a")
    xb, yb = load_cifar10(tmp_path / "b")
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x12, y12 = load_cifar10(tmp_path / "a", n=12)  # spans three batch files
    assert x12.shape == (12, 3, 32, 32) and torch.equal(x12, xa[:12]) and torch.equal(y12, ya[:12])
    x3, _ = load_cifar10(tmp_path / "a", "test", n=3)
    assert x3.shape[0] == 3
    with pytest.raises(ValueError, match="exceeds"):
        load_cifar10(tmp_path / "a", n=24)
    with pytest.raises(ValueError, match="n must be a positive int or None"):
        load_cifar10(tmp_path / "a", n=0)
    with pytest.raises(ValueError, match="split"):
        load_cifar10(tmp_path / "a", split="val")


def test_cifar_reads_numpy1_global_names(tmp_path):
    """Real CIFAR files (and numpy < 2 pickles) name numpy.core.multiarray._reconstruct."""
    d = write_cifar10_like(tmp_path, 10, 4, seed=0)
    path = os.path.join(d, "test_batch")
    with open(path, "rb") as f:
        blob = f.read()
    assert b"numpy._core.multiarray" in blob
    with open(path, "wb") as f:
        f.write(blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x, y = load_cifar10(tmp_path, "test")
    assert x.shape == (4, 3, 32, 32) and y.shape == (4,)


def test_cifar_missing_files_lists_expected_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="CIFAR-10 python batches for split='train' not found") as e:
        load_cifar10(tmp_path, "train")
    msg = str(e.value)
    for name in CIFAR10_TRAIN_FILES:
        assert str(tmp_path / "cifar-10-batches-py" / name) in msg
        assert str(tmp_path / name) in msg
    d = write_cifar10_like(tmp_path, 10, 2, seed=0)
    os.remove(os.path.join(d, "data_batch_3"))
    with pytest.raises(FileNotFoundError, match="data_batch_3"):
        load_cifar10(tmp_path, "train")
    load_cifar10(tmp_path, "test")  # the test split is still complete
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10(tmp_path / "nowhere", "test")


_CALLED = []


def _payload(*args):  # must never run
    _CALLED.append(args)
    return {}


class _Evil:
    def __reduce__(self):
        return (_payload, ("pwned",))


def _replace_test_batch(tmp_path, obj=None, raw=None):
    d = write_cifar10_like(tmp_path, 10, 4, seed=0)
    with open(os.path.join(d, "test_batch"), "wb") as f:
        f.write(raw if raw is not None else pickle.dumps(obj, protocol=3))
    return d


def test_cifar_corrupt_files_raise_value_error(tmp_path):
    d = write_cifar10_like(tmp_path / "t", 10, 4, seed=0)
    path = os.path.join(d, "test_batch")
    with open(path, "rb") as f:
        blob = f.read()
    with open(path, "wb") as f:
        f.write(blob[: len(blob) // 2])  # truncated
    with pytest.raises(ValueError, match="test_batch"):
        load_cifar10(tmp_path / "t", "test")

    _replace_test_batch(tmp_path / "g", raw=b"this is not a pickle at all")
    with pytest.raises(ValueError, match="not a valid CIFAR-10 python batch"):
        load_cifar10(tmp_path / "g", "test")

    good = {b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}
    cases = {
        "evil": ({b"data": _Evil(), b"labels": [0]}, "not allowed"),
        "ordered": (__import__("collections").OrderedDict(good), "not allowed"),
        "keys": ({b"pixels": good[b"data"], b"labels": good[b"labels"]}, "keys"),
        "width": ({b"data": np.zeros((4, 100), np.uint8), b"labels": good[b"labels"]}, "3072"),
        "dtype": ({b"data": np.zeros((4, 3072), np.float32), b"labels": good[b"labels"]}, "uint8"),
        "nlabels": ({b"data": good[b"data"], b"labels": [0, 1]}, "labels"),
        "labelrange": ({b"data": good[b"data"], b"labels": [0, 1, 2, 10]}, "0..9"),
        "notdict": ([good[b"data"]], "dict"),
    }
    for name, (obj, match) in cases.items():
        _replace_test_batch(tmp_path / name, obj)
        with pytest.raises(ValueError, match=match):
            load_cifar10(tmp_path / name, "test")
    assert _CALLED == []  # the disallowed callable was never invoked


# ------------------------------------------------------------------------------------------
# Image folders
# ------------------------------------------------------------------------------------------


def test_image_folder_reader(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "class_b" / "deeper").mkdir(parents=True)
    (tmp_path / "class_a").mkdir()
    # 30 x 10 (w x h): red | green | blue thirds -> the centre 10 x 10 crop is all green
    stripes = np.zeros((10, 30, 3), np.uint8)
    stripes[:, :10, 0] = 255
    stripes[:, 10:20, 1] = 255
    stripes[:, 20:, 2] = 255
    Image.fromarray(stripes).save(tmp_path / "class_a" / "0_stripes.png")
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "class_a" / "1_rgb.png")
    gray = np.full((20, 24), 77, np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "class_b" / "deeper" / "2_gray.PNG")
    Image.fromarray(np.full((12, 12, 3), 200, np.uint8)).save(tmp_path / "class_b" / "3.jpg", quality=95)
    (tmp_path / "notes.txt").write_text("not an image")

    x = load_image_folder(tmp_path, size=16)
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 16)
    assert (x[0, 1] == 255).all() and (x[0, 0] == 0).all() and (x[0, 2] == 0).all()
    native = torch.from_numpy(np.array(Image.open(tmp_path / "class_a" / "1_rgb.png"))).permute(2, 0, 1)
    assert torch.equal(x[1], native)  # already 16 x 16: unchanged
    # sorted by relative path: class_b/3.jpg comes before class_b/deeper/2_gray.PNG
    assert (x[2].float() - 200).abs().max() <= 3  # jpeg
    assert (x[3] == 77).all()  # grayscale -> 3 equal channels, constant survives crop + resize
    assert torch.equal(load_image_folder(tmp_path, size=16, n=2), x[:2])
    assert load_image_folder(tmp_path, size=8, resample="box").shape == (4, 3, 8, 8)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing", size=16)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        load_image_folder(tmp_path / "empty", size=16)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path / "bad", size=16)


# ------------------------------------------------------------------------------------------
# Digits
# ------------------------------------------------------------------------------------------


def test_digits_images_shape_range_split():
    from sklearn.datasets import load_digits

    xtr, ytr = digits_images("train", seed=0)
    xte, yte = digits_images("test", seed=0)
    assert xtr.shape == (1438, 1, 8, 8) and xte.shape == (359, 1, 8, 8)
    assert xtr.dtype == torch.uint8 and ytr.dtype == torch.int64
    assert int(xtr.min()) == 0 and int(xtr.max()) == 255
    levels = torch.unique(torch.cat([xtr, xte]))
    assert set(levels.tolist()) <= {round(v * 255 / 16) for v in range(17)}
    assert set(ytr.tolist()) == set(range(10))
    # the two splits partition the data set
    ref = np.rint(load_digits().images * 255 / 16).astype(np.uint8).reshape(1797, -1)
    got = torch.cat([xtr, xte]).reshape(1797, -1).numpy()
    assert np.array_equal(np.unique(ref, axis=0, return_counts=True)[1], np.unique(got, axis=0, return_counts=True)[1])
    assert np.array_equal(np.unique(ref, axis=0), np.unique(got, axis=0))
    # deterministic in the seed, independent of torch's RNG
    torch.manual_seed(123)
    x2, y2 = digits_images("train", seed=0)
    assert torch.equal(x2, xtr) and torch.equal(y2, ytr)
    assert not torch.equal(digits_images("train", seed=1)[0], xtr)
    x16, y16 = digits_images("train", seed=0, size=16)
    assert x16.shape == (1438, 1, 16, 16) and torch.equal(y16, ytr)
    assert torch.equal(x16[:, :, ::2, ::2], xtr) and torch.equal(x16[:, :, 1::2, 1::2], xtr)
    with pytest.raises(ValueError, match="size must be 8 or 16"):
        digits_images("train", size=12)


# ------------------------------------------------------------------------------------------
# Model space and bits/dim
# ------------------------------------------------------------------------------------------


def test_model_space_round_trip():
    k = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).repeat(3, 2, 1, 1)
    g = torch.Generator().manual_seed(0)
    y = to_model_space(k, generator=g)
    assert y.dtype == torch.float32 and y.shape == k.shape
    assert float(y.min()) >= -1.0 and float(y.max()) < 1.0
    lo = 2 * k.double() / 256 - 1
    assert ((y.double() >= lo) & (y.double() < lo + 2 / 256)).all()  # inside its bin
    assert torch.equal(to_uint8(y), k)
    yc = to_model_space(k, dequantize=False)
    assert torch.allclose(yc.double(), (2 * k.double() + 1) / 256 - 1)
    assert torch.equal(to_uint8(yc), k)
    # reproducible with a generator, different draws without resetting it
    assert torch.equal(to_model_space(k, torch.Generator().manual_seed(5)), to_model_space(k, torch.Generator().manual_seed(5)))
    assert not torch.equal(to_model_space(k, g), y)
    # samples outside [-1, 1], at the edges, and NaN
    s = torch.tensor([-3.0, -1.0, -0.999, 0.0, 0.99999, 1.0, 7.0, float("nan")])
    assert to_uint8(s).tolist() == [0, 0, 0, 128, 255, 255, 255, 0]
    with pytest.raises(TypeError, match="to_model_space expects a uint8 tensor"):
        to_model_space(k.float())


def bits_per_dim_from_model_nll(nll, dim):
    return tl.bits_per_dim(-torch.as_tensor(nll, dtype=torch.float64), dim, n_bins=256, scale=2.0)


def test_bits_per_dim_of_model_space():
    """tl.bits_per_dim with scale=2 is the conversion for to_model_space data."""
    d = 3 * 4 * 4
    # uniform density on [-1, 1)^D in model space: -log p = D log 2 -> exactly 8 bits/dim
    assert bits_per_dim_from_model_nll(d * math.log(2.0), d) == pytest.approx(8.0, abs=1e-12)
    # a density uniform on one bin (p = 128^D) -> 0 bits/dim
    assert bits_per_dim_from_model_nll(-d * math.log(128.0), d) == pytest.approx(0.0, abs=1e-12)

    # piecewise-constant density: bin k of each coordinate has mass q_k, density q_k / (2/256)
    # in model space. Jensen is then an equality, so the formula must give -log2 P(k) exactly.
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.ones(256))
    dim = 5
    k = torch.from_numpy(rng.integers(0, 256, size=(64, dim)).astype(np.uint8))
    y = to_model_space(k, generator=torch.Generator().manual_seed(1)).double()
    bins = torch.floor((y + 1) * 128).long()
    assert torch.equal(bins, k.long())
    logq = torch.from_numpy(np.log(q))
    nll_y = -(logq[bins] - math.log(2 / 256)).sum(1)  # -log p_Y(y) per image
    exact_bits = -(logq[k.long()].sum(1)) / math.log(2) / dim
    bpd = bits_per_dim_from_model_nll(nll_y, dim)
    assert torch.allclose(bpd, exact_bits, atol=1e-10)

