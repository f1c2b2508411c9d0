"""Every file torchcfm_local reads, as a :class:`hostile.Reader`: small pristine files and the loader.

Each reader's ``other`` names another of our formats that is put where this one's file belongs.
"""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

import torchcfm_local as tl
from hostile import Reader, json_value_payload, npy_payload, pickle_payload
from torchcfm_local import datasets
from torchcfm_local.checkpoint import CheckpointError, safe_load
from torchcfm_local.distributed import DistContext
from torchcfm_local.pool import MemmapPool, PoolDirError

CKPT = (CheckpointError, FileNotFoundError, PermissionError)
DATA = (ValueError, FileNotFoundError, PermissionError)


# ---------------------------------------------------------------------------------- our checkpoints
def _tiny_lfm(seed: int = 0) -> tl.LocalFlowMatching:
    torch.manual_seed(seed)
    return tl.LocalFlowMatching(2, tl.OUSchedule(0.1, 1.5, 2), velocity_factory=lambda n: tl.MLP(2, width=8, depth=1))


def _model_summary(m) -> list:
    return [m.state_dict(), m.n_trained, list(m.shape), m.schedule.to_list(), m.fit_state]


def _write_model(root: Path) -> None:
    _tiny_lfm().save(root / "model.pt")


class _Stop(Exception):
    pass


@functools.lru_cache(maxsize=1)
def _fit_files() -> dict:
    """``model.pt``, ``pool.pt``, ``progress.pt`` of a fit stopped during block 2 (step 3 of 4)."""
    import tempfile

    def stop(block, step, loss):
        if (block, step) == (2, 3):
            raise _Stop

    x = datasets.load("moons", n_train=128, n_val=8, n_test=8, seed=0).train
    with tempfile.TemporaryDirectory() as d:
        try:
            _tiny_lfm().fit(x, batches_per_block=4, batch_size=32, checkpoint_every=2, seed=1, progress=False,
                            checkpoint_dir=d, callback=stop)
        except _Stop:
            pass
        return {name: (Path(d) / name).read_bytes() for name in ("model.pt", "pool.pt", "progress.pt")}


def _write_fit(root: Path) -> None:
    (root / "ckpt").mkdir()
    for name, data in _fit_files().items():
        (root / "ckpt" / name).write_bytes(data)


def _contents(state: dict) -> dict:
    """A checkpoint dict without its checksum (a flip inside that entry's name leaves the data intact)."""
    return {k: v for k, v in state.items() if k != "checksum"}


def _read_progress(root: Path):
    from torchcfm_local.training.run import RunCheckpoint

    return RunCheckpoint(root / "ckpt", DistContext()).load_progress(2)


def _write_policy(root: Path) -> None:
    from torchcfm_local.policy import FlowPolicy

    policy = FlowPolicy({"pos": 2}, 2, network="mlp", network_config={"width": 8}, horizon=4, n_obs_steps=1,
                        n_action_steps=2)
    policy.fit(_demos(), batches_per_block=2, batch_size=8, progress=False)
    policy.save(root / "policy.pt")


def _read_policy(root: Path):
    from torchcfm_local.policy import load_policy

    return load_policy(root / "policy.pt")


def _policy_summary(p) -> list:
    return [p.state_dict(), p.obs_normalizer.state_dict(), p.action_normalizer.state_dict()]


def _write_distilled(root: Path) -> None:
    from torchcfm_local.distillation.plan import Segment
    from torchcfm_local.distillation.sampler import DistilledSampler
    from torchcfm_local.distillation.students import OneStepMap

    torch.manual_seed(0)
    student = OneStepMap(tl.MLP(2, width=8, depth=1), 0.0, 1.0, 2.0)
    DistilledSampler((2,), [student], [(Segment(1, 0.0, 1.0), Segment(2, 0.0, 1.0))], 2).save(root / "distilled.pt")


# ---------------------------------------------------------------------------------- pool directories
def _write_pool(root: Path) -> None:
    pool = MemmapPool.create(root / "pool", (16, 2), torch.float32, fingerprint=[16.0, 0.5])
    pool.target()[0:16] = torch.arange(32, dtype=torch.float32).reshape(16, 2)
    pool.commit(0)
    pool.target()[0:16] = -torch.arange(32, dtype=torch.float32).reshape(16, 2)
    pool.commit(1)  # current buffer: pool_a.npy again, after block 1


def _read_pool(root: Path):
    pool = MemmapPool.open(root / "pool")
    return pool.meta, pool[0:pool.n]


# ---------------------------------------------------------------------------------- demos, FID, images
@functools.lru_cache(maxsize=1)
def _demos():
    from torchcfm_local.policy import Demos

    rng = np.random.default_rng(0)
    return Demos({"pos": rng.normal(size=(20, 2))}, rng.normal(size=(20, 2)), [8, 20], {"task": "hostile"})


def _write_demos(root: Path) -> None:
    from torchcfm_local.policy import save_demos

    save_demos(root / "demos.npz", _demos())


def _read_demos(root: Path):
    from torchcfm_local.policy import load_demos

    return load_demos(root / "demos.npz")


def _demos_summary(d) -> list:
    return [d.obs, d.action, d.episode_ends, d.meta]


def _write_fid_stats(root: Path) -> None:
    from torchcfm_local.images.fid import FeatureStats

    rng = np.random.default_rng(1)
    feats = rng.normal(size=(12, 4))
    FeatureStats(feats.mean(0), np.cov(feats, rowvar=False), 12, "proxy:hostile").save(root / "stats.npz")


def _read_fid_stats(root: Path):
    from torchcfm_local.images.fid import FeatureStats

    return FeatureStats.load(root / "stats.npz")


class _TinyInception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2048)

    def forward(self, x):
        return self.proj(x.mean(dim=(2, 3)))


def _write_inception(root: Path) -> None:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(_TinyInception()), str(root / "inception.pt"))


def _read_inception(root: Path):
    from torchcfm_local.images.fid import InceptionFeatures

    return InceptionFeatures(weights_path=root / "inception.pt").model


def _write_cifar(root: Path) -> None:
    from torchcfm_local.images.data import write_cifar10_like

    write_cifar10_like(root, n_train=10, n_test=2, seed=0)


def _read_cifar(root: Path):
    from torchcfm_local.images.data import load_cifar10

    return load_cifar10(root, "train")


def _write_images(root: Path) -> None:
    from PIL import Image

    (root / "images").mkdir()
    rng = np.random.default_rng(2)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(root / "images" / name)


def _read_images(root: Path):
    from torchcfm_local.images.data import load_image_folder

    return load_image_folder(root / "images", size=8)


# ---------------------------------------------------------------------------------- MAF datasets
def _save(root: Path, rel: str, array: np.ndarray) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    np.save(root / rel, array)


def _write_power(root: Path) -> None:
    _save(root, "power/data.npy", np.random.default_rng(3).normal(size=(60, 8)))


def _write_miniboone(root: Path) -> None:
    _save(root, "miniboone/data.npy", np.random.default_rng(4).normal(size=(60, 43)))


def _gas_frame():
    import pandas as pd

    rng = np.random.default_rng(5)
    cols = {"Time": np.arange(60.0), "Meth": rng.random(60), "Eth": rng.random(60)}
    cols.update({f"S{j}": rng.normal(size=60) + j for j in range(4)})
    return pd.DataFrame(cols)


def _write_gas_npz(root: Path) -> None:
    frame = _gas_frame()
    (root / "gas").mkdir()
    np.savez(root / "gas" / "ethylene_CO.npz", columns=np.array(list(frame.columns)), values=frame.to_numpy())


def _write_gas_pickle(root: Path) -> None:
    (root / "gas").mkdir()
    _gas_frame().to_pickle(root / "gas" / "ethylene_CO.pickle", protocol=4)


def _write_hepmass(root: Path) -> None:
    import pandas as pd

    rng = np.random.default_rng(6)
    (root / "hepmass").mkdir()
    for name, n, extra in (("1000_train.csv", 40, False), ("1000_test.csv", 20, True)):
        cols = {"# label": rng.integers(0, 2, size=n).astype(float)}
        cols.update({f"f{j}": rng.normal(size=n).round(4) for j in range(3)})
        if extra:
            cols["junk"] = rng.normal(size=n).round(4)
        pd.DataFrame(cols).to_csv(root / "hepmass" / name, index=False)


def _csv_cut_ok(data: bytes) -> bool:
    """A CSV cut at a line break or inside its last field is a valid, shorter table."""
    header, last = data.split(b"\n", 1)[0], data.rsplit(b"\n", 1)[-1]
    return last == b"" or (last.count(b",") == header.count(b",") and not last.endswith(b","))


def _write_bsds(root: Path) -> None:
    import h5py

    rng = np.random.default_rng(7)
    (root / "BSDS300").mkdir()
    with h5py.File(root / "BSDS300" / "BSDS300.hdf5", "w") as f:
        for key, n in (("train", 30), ("validation", 10), ("test", 10)):
            f.create_dataset(key, data=rng.normal(size=(n, 63)))


def _hdf5_payload(path: Path) -> list:
    """The raw data of every (contiguous) HDF5 dataset, in any group: HDF5 checksums metadata only, optionally."""
    import h5py

    datasets = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: datasets.append(item) if isinstance(item, h5py.Dataset) else None)
        return [(d.id.get_offset(), d.id.get_offset() + d.id.get_storage_size()) for d in datasets
                if d.id.get_offset() is not None]


# ---------------------------------------------------------------------------------- Robomimic, LeRobot
def _write_robomimic(root: Path) -> None:
    from torchcfm_local.policy import save_robomimic

    save_robomimic(root / "robomimic.hdf5", _demos(), masks={"train": [0], "valid": [1]})


def _read_robomimic(root: Path):
    from torchcfm_local.policy import load_robomimic

    return load_robomimic(root / "robomimic.hdf5")


def _write_lerobot(root: Path) -> None:
    from torchcfm_local.policy import save_lerobot

    save_lerobot(root / "lerobot", _demos())


def _read_lerobot(root: Path):
    from torchcfm_local.policy import load_lerobot

    return load_lerobot(root / "lerobot", state_keys=("observation.pos",))


def _load(name: str, **options):
    return lambda root: datasets.load(name, root=root, **options)


def _splits(ds) -> list:
    return [ds.train, ds.val, ds.test]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------- the list
_NPY = "the array data after the .npy header (no checksum in the format)"
READERS = [
    Reader("model .pt", "model.pt", _write_model, lambda r: tl.LocalFlowMatching.load(r / "model.pt"),
           _model_summary, CKPT, "fit pool.pt", "LocalFlowMatching.load"),
    Reader("fit model.pt", "ckpt/model.pt", _write_fit, lambda r: tl.LocalFlowMatching.load(r / "ckpt/model.pt"),
           _model_summary, CKPT, "fit progress.pt", "LocalFlowMatching.load (RunCheckpoint.restore)"),
    Reader("fit pool.pt", "ckpt/pool.pt", _write_fit, lambda r: safe_load(r / "ckpt/pool.pt", "pool"),
           _contents, CKPT, "fit model.pt", "safe_load(kind='pool') (RunCheckpoint.load_pool)"),
    Reader("fit progress.pt", "ckpt/progress.pt", _write_fit, _read_progress, _contents, CKPT,
           "pool.json", "RunCheckpoint.load_progress"),
    Reader("policy .pt", "policy.pt", _write_policy, _read_policy,
           _policy_summary, CKPT, "model .pt", "policy.load_policy"),
    Reader("distilled .pt", "distilled.pt", _write_distilled,
           lambda r: tl.DistilledSampler.load(r / "distilled.pt"), lambda s: [s.state_dict(), s.stages], CKPT,
           "policy .pt", "DistilledSampler.load"),
    Reader("pool.json", "pool/pool.json", _write_pool, _read_pool, lambda s: s, (PoolDirError,),
           "demos .npz", "MemmapPool.open", json_value_payload, "JSON number and string values (no checksum)"),
    Reader("pool buffer .npy", "pool/pool_a.npy", _write_pool, _read_pool, lambda s: s, (PoolDirError,),
           "FID stats .npz", "MemmapPool.open", npy_payload, _NPY),
    Reader("demos .npz", "demos.npz", _write_demos, _read_demos,
           _demos_summary, DATA, "FID stats .npz", "policy.load_demos"),
    Reader("FID stats .npz", "stats.npz", _write_fid_stats, _read_fid_stats,
           lambda s: [s.mu, s.sigma, s.n, s.extractor], DATA, "demos .npz", "FeatureStats.load"),
    Reader("Inception weights (TorchScript)", "inception.pt", _write_inception, _read_inception,
           lambda m: m.state_dict(), DATA, "model .pt", "InceptionFeatures(weights_path=...)"),
    Reader("CIFAR-10 batch", "cifar-10-batches-py/data_batch_1", _write_cifar, _read_cifar, list, DATA,
           "pool.json", "images.load_cifar10", pickle_payload,
           "pickled numbers, booleans and byte strings (no checksum)"),
    Reader("image folder (PNG)", "images/b.png", _write_images, _read_images, lambda x: x, DATA, "pool.json",
           "images.load_image_folder",
           not_applicable={"directory": "a folder reader reads every image file below its root; "
                                        "a sub-directory named b.png is ordinary nesting"}),
    Reader("MAF power data.npy", "power/data.npy", _write_power, _load("power"), _splits, DATA,
           "MAF gas .npz", "datasets.load('power')", npy_payload, _NPY),
    Reader("MAF miniboone data.npy", "miniboone/data.npy", _write_miniboone, _load("miniboone"), _splits, DATA,
           "pool.json", "datasets.load('miniboone')", npy_payload, _NPY),
    Reader("MAF gas .npz", "gas/ethylene_CO.npz", _write_gas_npz, _load("gas"), _splits, DATA,
           "demos .npz", "datasets.load('gas')"),
    # The GAS release pickle is read only with trust_pickle=True, and unpickling a damaged pickle can do
    # anything (the fuzz of benchmarks/reliability_table.py saw pandas.read_pickle crash the interpreter
    # with a segfault); by default the loader refuses it whatever its bytes, which is what is tested here.
    Reader("MAF gas pickle (untrusted)", "gas/ethylene_CO.pickle", _write_gas_pickle, _load("gas"), _splits, DATA,
           "CIFAR-10 batch", "datasets.load('gas') (trust_pickle=False)"),
    Reader("MAF hepmass .csv", "hepmass/1000_train.csv", _write_hepmass, _load("hepmass"), _splits, DATA,
           "model .pt", "datasets.load('hepmass')", lambda p: [(p.read_bytes().index(b"\n") + 1, p.stat().st_size)],
           "the rows after the header line (a CSV has no checksum)", truncation_ok=_csv_cut_ok),
]
_HDF5 = "the raw data of the HDF5 datasets (no checksum unless the file asks for one)"
if _has("h5py"):
    READERS.append(Reader("MAF BSDS300 .hdf5", "BSDS300/BSDS300.hdf5", _write_bsds, _load("bsds300"), _splits,
                          DATA, "demos .npz", "datasets.load('bsds300')", _hdf5_payload, _HDF5))
    # save_robomimic writes HDF5 1.10 object headers (checksummed metadata, attributes included)
    READERS.append(Reader("Robomimic .hdf5", "robomimic.hdf5", _write_robomimic, _read_robomimic, _demos_summary,
                          DATA, "MAF BSDS300 .hdf5", "policy.load_robomimic", _hdf5_payload, _HDF5))
if _has("pyarrow"):
    # save_lerobot writes parquet pages with CRC-32s, which load_lerobot checks; info.json has no checksum
    READERS.append(Reader("LeRobot data .parquet", "lerobot/data/chunk-000/file-000.parquet", _write_lerobot,
                          _read_lerobot, _demos_summary, DATA, "demos .npz", "policy.load_lerobot"))
    READERS.append(Reader("LeRobot meta/info.json", "lerobot/meta/info.json", _write_lerobot, _read_lerobot,
                          _demos_summary, DATA, "pool.json", "policy.load_lerobot", json_value_payload,
                          "JSON number and string values (no checksum)"))


def by_name(name: str) -> Reader:
    return next(r for r in READERS if r.name == name)

