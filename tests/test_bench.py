import json
import math

import pytest
import torch

import torchcfm_local as tl

from torchcfm_local.bench import main
from torchcfm_local.bench.suite import _crossing, matched_width, mlp_params


def test_smoke_run_writes_results(tmp_path, capsys):
    rc = main(["run", "8gaussians", "--budget", "smoke", "--methods", "global-trig,lfm-trig",
               "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    out = tmp_path / "8gaussians_smoke"
    for name in ("results.json", "results.md", "curves.png", "samples.png", "density.png"):
        assert (out / name).stat().st_size > 0, name
    data = json.loads((out / "results.json").read_text())
    assert data["provenance"]["machine"]["cpu_count"] >= 1 and data["provenance"]["torch"]
    rows = {r["method"]: r for r in data["results"]["summary"]}
    assert set(rows) == {"global-trig", "lfm-trig"}
    for r in rows.values():
        assert math.isfinite(r["test_nll"]) and 0 < r["test_nll"] < 10
        assert r["energy_distance"] < 1.0 and r["sample_nfe"] > 0
    # equal parameters (within one width step) and equal batches
    assert abs(rows["global-trig"]["params"] - rows["lfm-trig"]["params"]) / rows["lfm-trig"]["params"] < 0.02
    assert rows["global-trig"]["batches"] == rows["lfm-trig"]["batches"] == data["results"]["total_batches"]
    assert "lfm-trig" in capsys.readouterr().out


@pytest.mark.parametrize("argv,match", [
    (["run", "nosuchset", "--budget", "smoke"], "unknown task"),
    (["run", "tree", "--budget", "huge"], "unknown budget"),
    (["run", "tree", "--budget", "smoke", "--methods", "lfm-magic"], "unknown method"),
    (["run", "power", "--budget", "smoke"], "power/data.npy"),
])
def test_bad_arguments_exit_with_message(argv, match, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path), "--no-progress"]) == 2
    assert match in capsys.readouterr().err


def test_matched_width_and_crossing():
    target = 9 * mlp_params(2, 128, 3)
    w = matched_width(2, target, 3)
    assert abs(mlp_params(2, w, 3) - target) <= abs(mlp_params(2, w + 1, 3) - target)
    assert abs(mlp_params(2, w, 3) - target) <= abs(mlp_params(2, w - 1, 3) - target)
    curve = [(100, 3.0), (200, 2.5), (400, 2.0)]
    assert _crossing(curve, 2.25) == pytest.approx(300)
    assert _crossing(curve, 3.5) == 100
    assert _crossing(curve, 1.0) is None
    from torchcfm_local.bench.suite import summarize

    runs = [dict(method=m, batches=b, curve_nll=v, params=1, test_nll=v, val_nll=v, energy_distance=0.0,
                 sample_nfe=1, sample_seconds_per_1000=1.0, train_seconds=1.0, pushforward_seconds=0.0, eval_seconds=0.0)
            for m, pts in (("global-trig", [(400, 2.0)]), ("lfm-trig", [(100, 1.9), (400, 1.5)])) for b, v in pts]
    row = {r["method"]: r for r in summarize({"runs": runs})}["lfm-trig"]
    assert row["batches_to_reference_nll"] == 100 and row["batches_to_reference_is_upper_bound"]


def test_block_batches_split_and_variant_tasks():
    import dataclasses

    from torchcfm_local.bench.suite import BUDGETS, TASKS, block_batches, run_task

    tree = TASKS["tree"]
    assert block_batches(tree, 250) == [250] * 9  # equal split: the recorded runs' allocation
    heavy = dataclasses.replace(tree, block_weights=(1.0,) * 8 + (8.0,))
    split = block_batches(heavy, 100)
    assert sum(split) == 900 and split[-1] == 450 and set(split[:-1]) <= {56, 57}
    with pytest.raises(ValueError, match="one per block"):
        block_batches(dataclasses.replace(tree, block_weights=(1.0, 2.0)), 10)
    with pytest.raises(ValueError, match="without batches"):
        block_batches(dataclasses.replace(tree, block_weights=(1.0,) * 8 + (1e4,)), 1)

    # a Task / Budget object runs like a named one, with its per-block batches recorded
    task = dataclasses.replace(TASKS["8gaussians"], steps=(0.1, 0.2), width=16, block_weights=(1.0, 1.0, 2.0))
    budget = dataclasses.replace(BUDGETS["smoke"], per_block=8, n_eval=100, n_curve=100)
    run = run_task(task, budget, ["lfm-linear"], progress=False, log=lambda *a: None)
    assert run.result["budget"] == "custom" and run.result["n_blocks"] == 3
    assert [r["batches"] for r in run.result["runs"]] == [12, 24]  # fractions 0.5 and 1 of 3 x 8
    assert math.isfinite(run.result["summary"][0]["test_nll"])


def _load_benchmark(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ablation_script_smoke(tmp_path):
    mod = _load_benchmark("bench_ablation")
    # the global flows come from an lfm-bench run of the same task, budget and seed
    assert main(["run", "8gaussians", "--budget", "smoke", "--methods", "global-linear,global-trig",
                 "--out", str(tmp_path), "--no-progress", "--no-figures"]) == 0
    reference = str(tmp_path / "8gaussians_smoke" / "results.json")
    assert mod.main(["--task", "8gaussians", "--budget", "smoke", "--variants", "paper,N=2",
                     "--out", str(tmp_path), "--reference", reference]) == 0
    data = json.loads((tmp_path / "ablation_8gaussians_smoke.json").read_text())["results"]
    rows = {r["variant"]: r for r in data["rows"]}
    assert set(rows) == {"global-linear", "global-trig", "paper", "N=2"}
    # equal total batches and parameters (within a width step) across the variants
    assert rows["N=2"]["batches"] == rows["paper"]["batches"] == rows["global-linear"]["batches"]
    assert abs(rows["N=2"]["params"] - rows["paper"]["params"]) / rows["paper"]["params"] < 0.02
    assert rows["N=2"]["n_blocks"] == 2 and sum(rows["N=2"]["steps"]) == pytest.approx(sum(rows["paper"]["steps"]))
    assert (tmp_path / "ablation_8gaussians_smoke.png").stat().st_size > 0
    with pytest.raises(ValueError, match="not a global-flow run of this ablation"):
        mod.main(["--task", "8gaussians", "--budget", "smoke", "--variants", "paper", "--seed", "1",
                  "--out", str(tmp_path), "--reference", reference])


def test_diagnose_samples_smoke(tmp_path):
    mod = _load_benchmark("diagnose_samples")
    assert mod.main(["--task", "8gaussians", "--budget", "smoke", "--n", "100", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "diagnose_8gaussians_smoke.json").read_text())["results"]
    assert [r["method"] for r in data["rows"]] == ["global-linear", "lfm-linear"]
    for r in data["rows"]:
        assert 0.2 < r["encoded_test_std_median"] < 5 and math.isfinite(r["nll_own_samples"])
    # samples equal to the test data: every comparison must come out exact
    model = tl.LocalFlowMatching(2, tl.OUSchedule.global_flow(), velocity_factory=lambda n: tl.MLP(2, width=8))
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 3.0])
    model.fit(x, batches_per_block=2, batch_size=25, progress=False)
    same = mod.diagnose(model, x, x, n=50, seed=0)
    assert same["sample_norm_quantiles"] == same["test_norm_quantiles"]
    assert same["std_ratio_median"] == pytest.approx(1.0)
    half = mod.diagnose(model, 0.5 * x, x, n=50, seed=0)
    assert half["std_ratio_median"] == pytest.approx(0.5)
    assert half["sample_norm_quantiles"] == pytest.approx([0.5 * v for v in half["test_norm_quantiles"]])


def test_provenance_command_reads_as_typed(monkeypatch):
    import sys
    import types

    from torchcfm_local.provenance import _command

    fake_main = types.ModuleType("__main__")
    fake_main.__spec__ = types.SimpleNamespace(name="torchcfm_local.bench.__main__")
    monkeypatch.setitem(sys.modules, "__main__", fake_main)
    monkeypatch.setattr(sys, "argv", ["/site/torchcfm_local/bench/__main__.py", "run", "tree"])
    assert _command() == "python -m torchcfm_local.bench run tree"
    fake_main.__spec__ = None
    monkeypatch.setattr(sys, "argv", ["benchmarks/bench_ablation.py", "--task", "rose"])
    assert _command() == "python benchmarks/bench_ablation.py --task rose"
    monkeypatch.setattr(sys, "argv", ["/venv/bin/lfm-bench", "quick"])
    assert _command() == "lfm-bench quick"
