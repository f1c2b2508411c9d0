"""Robomimic HDF5 and LeRobot v3 demos: round trips, masks, key selection, bad files, the dispatcher, the CLI."""
import json
import sys

import numpy as np
import pytest
import torch

from torchcfm_local.policy import (Demos, FlowPolicy, collect_demos, load_any_demos, load_demos, load_lerobot,
                                   load_robomimic, save_demos, save_lerobot, save_robomimic)
from torchcfm_local.policy.cli import main as cli_main
from torchcfm_local.policy.formats_lerobot import obs_key_of_column

h5py = pytest.importorskip("h5py")
INSTALL = 'pip install "torchcfm-local[formats]"'


@pytest.fixture(scope="module")
def demos():
    rng = np.random.default_rng(0)
    obs = {"vel": rng.normal(size=(17, 3)), "pos": rng.normal(size=(17, 2))}
    return Demos(obs, rng.normal(size=(17, 2)), [5, 9, 17], {"task": "toy", "seed": 3})


def same(a: Demos, b: Demos, meta: bool = True) -> bool:
    return (list(a.obs) == list(b.obs) and all(np.array_equal(a.obs[k], b.obs[k]) for k in a.obs)
            and np.array_equal(a.action, b.action) and np.array_equal(a.episode_ends, b.episode_ends)
            and (not meta or a.meta == b.meta))


def raw_robomimic(path, episodes: dict, *, masks=None, env_args='{"env_name": "Lift", "type": 1}'):
    """A file the way Robomimic writes one (default HDF5 format, variable-length string attributes).
    ``episodes``: {demo name: {"actions": ..., "obs": {...}, optional "num_samples"}}."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = env_args
        data.attrs["total"] = sum(len(e["actions"]) for e in episodes.values())
        for name, ep in episodes.items():
            g = data.create_group(name)
            g.attrs["num_samples"] = ep.get("num_samples", len(ep["actions"]))
            g.create_dataset("actions", data=ep["actions"])
            g.create_dataset("dones", data=np.zeros(len(ep["actions"])))
            g.create_dataset("rewards", data=np.zeros(len(ep["actions"])))
            g.create_dataset("states", data=np.zeros((len(ep["actions"]), 7)))
            for k, v in ep["obs"].items():
                g.create_dataset(f"obs/{k}", data=v)
        for name, listed in (masks or {}).items():
            f.create_dataset(f"mask/{name}", data=np.array(listed, dtype="S"))
    return path


def episode(steps: int, seed: int = 0, **extra_obs) -> dict:
    rng = np.random.default_rng(seed)
    obs = {"robot0_eef_pos": rng.normal(size=(steps, 3)), "object": rng.normal(size=(steps, 5)), **extra_obs}
    return {"actions": rng.normal(size=(steps, 4)), "obs": obs}


# ---------------------------------------------------------------------------------- Robomimic
def test_robomimic_round_trip_and_layout(demos, tmp_path):
    path = save_robomimic(tmp_path / "d.hdf5", demos)
    assert same(load_robomimic(path), demos)
    assert not (tmp_path / "d.hdf5.tmp").exists()
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert int(data.attrs["total"]) == 17 and json.loads(data.attrs["env_args"])["env_name"] == "toy"
        assert sorted(data) == ["demo_0", "demo_1", "demo_2"]
        demo = data["demo_1"]
        assert int(demo.attrs["num_samples"]) == 4 and demo["actions"].shape == (4, 2)
        assert demo["dones"][()].tolist() == [0, 0, 0, 1] and demo["rewards"][()].tolist() == [0, 0, 0, 1]
        assert demo["obs/vel"].shape == (4, 3) and demo["obs/pos"].shape == (4, 2)
    save_robomimic(path, demos, env_args={"env_name": "Lift", "type": 1, "env_kwargs": {}})  # overwrite
    with h5py.File(path, "r") as f:
        assert json.loads(f["data"].attrs["env_args"]) == {"env_name": "Lift", "type": 1, "env_kwargs": {}}


def test_robomimic_foreign_file(tmp_path):
    """Demos in numeric order; default keys: the low-dim ones (a (T,) obs too); images skipped; meta from env_args."""
    eps = {f"demo_{i}": episode(3 + i, seed=i, image=np.zeros((3 + i, 8, 8, 3), np.uint8), gripper=np.ones(3 + i))
           for i in (10, 2, 0)}
    path = raw_robomimic(tmp_path / "lift.hdf5", eps)
    d = load_robomimic(path)
    assert d.episode_ends.tolist() == [3, 8, 21]  # demo_0 (3), demo_2 (5), demo_10 (13)
    assert set(d.obs) == {"robot0_eef_pos", "object", "gripper"} and d.obs_dims["gripper"] == 1
    assert np.allclose(d.action[3:8], eps["demo_2"]["actions"]) and d.obs["object"].dtype == np.float32
    assert d.meta == {"source": "robomimic", "env_args": {"env_name": "Lift", "type": 1}}
    d = load_robomimic(path, obs_keys=["object", "robot0_eef_pos"])
    assert list(d.obs) == ["object", "robot0_eef_pos"]
    eps = {"demo_0": episode(4, rot=np.zeros((4, 3, 3)))}
    d = load_robomimic(raw_robomimic(tmp_path / "rot.hdf5", eps, env_args="not json"), obs_keys=["object"])
    assert d.meta["env_args"] == "not json"


def test_robomimic_mask_filter_and_obs_keys(demos, tmp_path):
    path = save_robomimic(tmp_path / "d.hdf5", demos, masks={"train": [2, 0], "valid": [1]})
    train = load_robomimic(path, filter_key="train")
    assert train.episode_ends.tolist() == [5, 13] and np.array_equal(train.action[5:], demos.action[9:])
    assert train.meta == {**demos.meta, "filter_key": "train"}
    valid = load_robomimic(path, obs_keys=["pos"], filter_key="valid")
    assert list(valid.obs) == ["pos"] and np.array_equal(valid.obs["pos"], demos.obs["pos"][5:9])
    with pytest.raises(ValueError, match=r"no filter mask/test; its filters: \['train', 'valid'\]"):
        load_robomimic(path, filter_key="test")
    raw = raw_robomimic(tmp_path / "r.hdf5", {"demo_0": episode(3)}, masks={"train": ["demo_0", "demo_7"]})
    with pytest.raises(ValueError, match=r"mask/train lists \['demo_7'\], which are not demonstrations"):
        load_robomimic(raw, filter_key="train")
    with pytest.raises(ValueError, match="mask 'bad' must list episode indices"):
        save_robomimic(tmp_path / "x.hdf5", demos, masks={"bad": [3]})


def _raises(path, match, **kwargs):
    with pytest.raises(ValueError, match=match) as info:
        load_robomimic(path, **kwargs)
    assert str(path) in str(info.value)
    return str(info.value)


def test_robomimic_errors(tmp_path):
    with h5py.File(tmp_path / "nodata.hdf5", "w") as f:
        f.create_dataset("train", data=np.zeros((3, 2)))
    _raises(tmp_path / "nodata.hdf5", r"has no 'data' group.*data/demo_<i>.*\['train'\]")
    with h5py.File(tmp_path / "noact.hdf5", "w") as f:
        f.create_dataset("data/demo_0/obs/x", data=np.zeros((3, 2)))
    _raises(tmp_path / "noact.hdf5", r"data/demo_0 has no 'actions' dataset")
    path = raw_robomimic(tmp_path / "ok.hdf5", {"demo_0": episode(3, image=np.zeros((3, 4, 4, 3)))})
    _raises(path, r"observation keys \['joint'\] are not in data/demo_0/obs; available: \['image', 'object', "
                  r"'robot0_eef_pos'\]", obs_keys=["object", "joint"])
    msg = _raises(path, "are images; image observations are not supported by the MLP/UNet1D policies",
                  obs_keys=["image"])
    assert "'object'" in msg  # the low-dim alternatives are listed
    ragged = episode(4)
    ragged["obs"]["object"] = ragged["obs"]["object"][:3]
    _raises(raw_robomimic(tmp_path / "ragged.hdf5", {"demo_0": episode(3), "demo_1": ragged}),
            r"data/demo_1 is ragged: obs/object has shape \(3, 5\) but there are 4 actions")
    _raises(raw_robomimic(tmp_path / "n.hdf5", {"demo_0": {**episode(4), "num_samples": 5}}),
            "data/demo_0 has num_samples=5 but 4 actions")
    nan = episode(3)
    nan["obs"]["object"][1, 2] = np.nan
    _raises(raw_robomimic(tmp_path / "nan.hdf5", {"demo_0": nan}), "data/demo_0/obs/object contains NaN or Inf")
    inf = episode(3)
    inf["actions"][0, 0] = np.inf
    _raises(raw_robomimic(tmp_path / "inf.hdf5", {"demo_0": inf}), "data/demo_0/actions contains NaN or Inf")
    _raises(raw_robomimic(tmp_path / "empty.hdf5", {}), r"holds no demonstrations \(no data/demo_<i> groups\)")
    wide = episode(3)
    wide["obs"]["object"] = np.zeros((3, 6))
    _raises(raw_robomimic(tmp_path / "wide.hdf5", {"demo_0": episode(3), "demo_1": wide}),
            "object has 6 numbers per step in data/demo_1 but 5 in data/demo_0")
    missing = episode(3)
    del missing["obs"]["object"]
    _raises(raw_robomimic(tmp_path / "miss.hdf5", {"demo_0": episode(3), "demo_1": missing}),
            r"data/demo_1/obs lacks 'object' \(the first demonstration has it\)")
    (tmp_path / "junk.hdf5").write_bytes(b"this is not HDF5 at all" * 10)
    _raises(tmp_path / "junk.hdf5", "is not a readable Robomimic HDF5 file")
    good = raw_robomimic(tmp_path / "good.hdf5", {"demo_0": episode(30)}).read_bytes()
    (tmp_path / "cut.hdf5").write_bytes(good[: len(good) // 2])
    _raises(tmp_path / "cut.hdf5", "is not a readable Robomimic HDF5 file")
    with pytest.raises(FileNotFoundError, match="no Robomimic .hdf5 file at .*missing.hdf5"):
        load_robomimic(tmp_path / "missing.hdf5")
    (tmp_path / "dir.hdf5").mkdir()
    with pytest.raises(FileNotFoundError, match="it is a directory"):
        load_robomimic(tmp_path / "dir.hdf5")


def test_flow_policy_trains_from_a_robomimic_file(tmp_path):
    eps = {f"demo_{i}": episode(12, seed=i, image=np.zeros((12, 4, 4, 3), np.uint8)) for i in range(3)}
    demos = load_robomimic(raw_robomimic(tmp_path / "lift.hdf5", eps))
    torch.manual_seed(0)
    policy = FlowPolicy(demos.obs_dims, 4, network="mlp", network_config={"width": 16}, horizon=4, n_obs_steps=2,
                        n_action_steps=2)
    report = policy.fit(demos, batches_per_block=3, batch_size=8, progress=False)
    assert report is not None
    out = policy.predict_action({"robot0_eef_pos": np.zeros((2, 2, 3), np.float32),
                                 "object": np.zeros((2, 2, 5), np.float32)})
    assert out["action"].shape == (2, 2, 4) and torch.isfinite(out["action"]).all()


def test_missing_optional_libraries(monkeypatch, demos, tmp_path):
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"h5py.*" + INSTALL.replace("[", r"\[").replace("]", r"\]")):
        save_robomimic(tmp_path / "d.hdf5", demos)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(ImportError, match=r"pyarrow.*torchcfm-local\[formats\]"):
        load_lerobot(tmp_path)
    with pytest.raises(ImportError, match=r"pyarrow.*torchcfm-local\[formats\]"):
        save_lerobot(tmp_path / "lr", demos)


# ---------------------------------------------------------------------------------- LeRobot
@pytest.fixture
def pa():
    return pytest.importorskip("pyarrow")


def _rewrite(root, change):
    """Apply ``change(table) -> table`` to the data file of a dataset."""
    import pyarrow.parquet as pq

    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(change(pq.read_table(path)), path)


def _info(root, **changes):
    path = root / "meta/info.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_lerobot_round_trip_and_layout(demos, tmp_path, pa):
    import pyarrow.parquet as pq

    root = save_lerobot(tmp_path / "ds", demos, fps=20)
    loaded = load_lerobot(root, state_keys=("observation.vel", "pos"))  # "pos" finds observation.pos
    assert same(loaded, demos, meta=False)
    assert loaded.meta == {"source": "lerobot", "codebase_version": "v3.0", "fps": 20,
                           "obs_columns": {"vel": "observation.vel", "pos": "observation.pos"}}
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3 and info["total_frames"] == 17
    assert info["features"]["observation.vel"]["shape"] == [3] and info["fps"] == 20
    assert info["data_path"].format(chunk_index=0, file_index=0) == "data/chunk-000/file-000.parquet"
    table = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert {"observation.vel", "observation.pos", "action", "episode_index", "frame_index", "index", "timestamp",
            "task_index"} <= set(table.column_names)
    assert table.column("frame_index").to_pylist()[:6] == [0, 1, 2, 3, 4, 0]
    assert np.allclose(table.column("timestamp").to_numpy()[5:9], [0, 0.05, 0.1, 0.15])
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pydict()
    assert episodes["length"] == [5, 4, 8] and episodes["dataset_to_index"] == [5, 9, 17]
    assert pq.read_table(root / "meta/tasks.parquet").to_pydict() == {"task_index": [0], "task": ["toy"]}
    assert set(json.loads((root / "meta/stats.json").read_text())) == {"observation.vel", "observation.pos", "action"}
    with pytest.raises(FileExistsError, match="not an empty directory"):
        save_lerobot(root, demos)
    assert obs_key_of_column("observation.state") == "state" and obs_key_of_column("action") == "action"


def test_lerobot_state_column_and_shuffled_rows_in_two_files(tmp_path, pa):
    """observation.state -> obs key "state"; rows out of order and split over two files are sorted back."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    d = Demos({"state": rng.normal(size=(12, 4))}, rng.normal(size=(12, 3)), [4, 7, 12])
    root = save_lerobot(tmp_path / "ds", d)
    assert same(load_lerobot(root), d, meta=False)
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path).take(rng.permutation(12))
    pq.write_table(table.slice(0, 5), path)
    (root / "data/chunk-001").mkdir()
    pq.write_table(table.slice(5), root / "data/chunk-001/file-000.parquet")
    assert same(load_lerobot(root), d, meta=False)


def _lerobot_raises(root, match, exc=ValueError, name=None, **kwargs):
    with pytest.raises(exc, match=match) as info:
        load_lerobot(root, **kwargs)
    assert str(name or root) in str(info.value)


def test_lerobot_errors(demos, tmp_path, pa):
    import pyarrow.compute as pc

    def fresh(name):
        return save_lerobot(tmp_path / name, demos)

    keys = {"state_keys": ("observation.pos",)}
    root = fresh("v2")
    _info(root, codebase_version="v2.1")
    _lerobot_raises(root, r"codebase_version 'v2.1': only LeRobot v3 datasets", **keys)
    _lerobot_raises(tmp_path / "nothing", "no LeRobot dataset directory", FileNotFoundError)
    (tmp_path / "bare").mkdir()
    _lerobot_raises(tmp_path / "bare", "is not a LeRobot dataset: no file .*info.json", FileNotFoundError)
    root = fresh("nodata")
    (root / "data/chunk-000/file-000.parquet").unlink()
    _lerobot_raises(root, r"no parquet files under .*data", **keys)
    root = fresh("nostate")
    _lerobot_raises(root, r"has no column 'observation.state'; its columns: \['observation.vel', 'observation.pos'",
                    name=root / "data/chunk-000/file-000.parquet")
    root = fresh("noframe")
    _rewrite(root, lambda t: t.drop(["frame_index"]))
    _lerobot_raises(root, "has no column 'frame_index'", **keys)
    root = fresh("gap")
    _rewrite(root, lambda t: t.filter(pc.not_equal(t.column("index"), 6)))
    _info(root, total_frames=16)
    _lerobot_raises(root, r"episode 1 has frame_index 2 where 1 was expected.*missing or repeated frames", **keys)
    root = fresh("totals")
    _info(root, total_frames=40)
    _lerobot_raises(root, r"says total_frames=40 but the data files .* hold 17 \(missing or extra parquet files",
                    **keys)
    root = fresh("ragged")
    _rewrite(root, lambda t: t.set_column(t.column_names.index("observation.pos"), "observation.pos",
                                          pa.array([[1.0, 2.0]] * 16 + [[1.0]], pa.list_(pa.float32()))))
    _lerobot_raises(root, r"column 'observation.pos' is ragged: its rows hold 1 to 2 values", **keys)
    root = fresh("nan")
    _rewrite(root, lambda t: t.set_column(t.column_names.index("action"), "action",
                                          pa.array([[1.0, np.nan]] + [[1.0, 2.0]] * 16, pa.list_(pa.float32()))))
    _lerobot_raises(root, r"file-000.parquet: column 'action' contains NaN or Inf", **keys)
    root = fresh("empty")
    _rewrite(root, lambda t: t.slice(0, 0))
    _lerobot_raises(root, r"hold no frames \(0 rows\)", **keys)
    root = fresh("junk")
    (root / "data/chunk-000/file-000.parquet").write_bytes(b"PAR1 junk" * 20)
    _lerobot_raises(root, "is not a readable LeRobot parquet file", **keys)
    root = fresh("image")
    _info(root, features={"observation.images.top": {"dtype": "video", "shape": [96, 96, 3], "names": None}})
    _lerobot_raises(root, "'observation.images.top' is a video feature; image observations are not supported",
                    state_keys=("observation.images.top",))
    with pytest.raises(ValueError, match="repeated observation keys"):
        load_lerobot(fresh("twice"), state_keys=("pos", "observation.pos"))


# ---------------------------------------------------------------------------------- dispatcher and CLI
def test_load_any_demos_dispatches(demos, tmp_path, pa):
    npz = save_demos(tmp_path / "d.npz", demos)
    assert same(load_any_demos(npz), demos)
    assert list(load_any_demos(npz, obs_keys=["pos"]).obs) == ["pos"]
    for name in ("d.hdf5", "d.h5"):
        assert same(load_any_demos(save_robomimic(tmp_path / name, demos, masks={"train": [1]})), demos)
    assert load_any_demos(tmp_path / "d.h5", filter_key="train", obs_keys=["vel"]).obs_dims == {"vel": 3}
    root = save_lerobot(tmp_path / "lr", demos)
    assert same(load_any_demos(root, obs_keys=["vel", "pos"]), demos, meta=False)
    with pytest.raises(ValueError, match=r"observation keys \['speed'\] are not in the demos; available"):
        load_any_demos(npz, obs_keys=["speed"])
    with pytest.raises(ValueError, match="filter_key='train' selects a Robomimic mask"):
        load_any_demos(npz, filter_key="train")
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match=r"d.csv is not a demo format we read; accepted formats: npz .*hdf5/h5 "
                                         r"\(Robomimic\).*meta/info.json \(LeRobot v3\)"):
        load_any_demos(tmp_path / "d.csv")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ValueError, match="accepted formats"):
        load_any_demos(tmp_path / "folder")
    with pytest.raises(FileNotFoundError, match="no demos at .*nope; accepted formats"):
        load_any_demos(tmp_path / "nope")


def test_cli_export_and_train_from_each_format(tmp_path, capsys, pa):
    npz = tmp_path / "point.npz"
    save_demos(npz, collect_demos("point", 4, seed=0))
    h5, lr = str(tmp_path / "point.hdf5"), str(tmp_path / "point_lerobot")
    assert cli_main(["export", "--demos", str(npz), "--to", "robomimic", "--out", h5]) == 0
    assert cli_main(["export", "--demos", str(npz), "--to", "lerobot", "--out", lr, "--fps", "5"]) == 0
    assert cli_main(["export", "--demos", h5, "--to", "npz", "--out", str(tmp_path / "back.npz")]) == 0
    assert same(load_demos(tmp_path / "back.npz"), load_demos(npz))
    assert json.loads((tmp_path / "point_lerobot/meta/info.json").read_text())["fps"] == 5
    train = ["train", "--method", "lfm", "--epochs", "1", "--width", "16"]
    assert cli_main([*train, "--demos", h5, "--out", str(tmp_path / "a.pt")]) == 0
    assert cli_main([*train, "--demos", h5, "--obs-keys", "pos", "--out", str(tmp_path / "b.pt")]) == 0
    assert cli_main([*train, "--demos", lr, "--obs-keys", "pos", "--out", str(tmp_path / "c.pt")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [x["format"] for x in lines[:3]] == ["robomimic", "lerobot", "npz"] and lines[0]["episodes"] == 4
    assert lines[0]["obs_keys"] == ["pos"] and [x["method"] for x in lines[3:]] == ["lfm"] * 3
    assert all((tmp_path / n).is_file() for n in ("a.pt", "b.pt", "c.pt"))
    with pytest.raises(ValueError, match="has no column 'observation.state'.*--obs-keys"):
        cli_main([*train, "--demos", lr, "--out", str(tmp_path / "d.pt")])
    with pytest.raises(ValueError, match="no filter mask/train"):
        cli_main([*train, "--demos", h5, "--filter-key", "train", "--out", str(tmp_path / "d.pt")])
    with pytest.raises(SystemExit):
        cli_main(["export", "--demos", str(npz), "--to", "csv", "--out", "x"])
