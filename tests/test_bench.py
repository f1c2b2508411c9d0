import json
import math
from pathlib import Path

import pytest
import torch

import torchcfm_local as tl

from torchcfm_local.bench import main
from torchcfm_local.bench.protocol import matched_width, mlp_params
from torchcfm_local.bench.report import first_crossing as _crossing
from bench_scripts import load_benchmark


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


def test_standardize_flag_fits_every_method_on_standardized_data(tmp_path, capsys):
    argv = ["run", "8gaussians", "--budget", "smoke", "--methods", "lfm-linear", "--out", str(tmp_path),
            "--no-progress", "--no-figures"]
    assert main(argv + ["--standardize", "diagonal"]) == 0
    out = tmp_path / "8gaussians_smoke"
    data = json.loads((out / "results.json").read_text())["results"]
    assert data["task"]["fit"] == {"standardize": "diagonal"} and data["task"]["dataset"] == "8gaussians"
    assert "every method fits with standardize='diagonal'" in (out / "results.md").read_text()
    # the option is part of the run's recipe: a plain run does not reuse the standardized seed
    capsys.readouterr()
    assert main(argv + ["--resume"]) == 2
    assert "different task" in capsys.readouterr().err
    # a plain run records fit's default, "auto", and the map it chose (none: 8gaussians is near unit scale)
    assert main(argv[:-4] + ["--out", str(tmp_path / "plain"), "--no-progress", "--no-figures"]) == 0
    plain = tmp_path / "plain" / "8gaussians_smoke"
    data = json.loads((plain / "results.json").read_text())["results"]
    assert data["task"]["fit"] == {"standardize": "auto"}
    assert {r["standardize"] for r in data["runs"] if r["fraction"] == 1.0} == {"none"}
    assert "every method fits with standardize='auto' (data map: none)" in (plain / "results.md").read_text()


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
    from torchcfm_local.bench.report import summarize

    # (method, batches, curve NLL, train seconds, push seconds); 4 LFM blocks of 25 parameters, global 100
    points = [("global-trig", 400, 2.0, 50.0, 0.0), ("lfm-trig", 100, 2.2, 4.0, 6.0), ("lfm-trig", 400, 1.6, 16.0, 14.0)]
    runs = [dict(method=m, batches=b, curve_nll=v, params=100, test_nll=v, val_nll=v, energy_distance=0.0,
                 sample_nfe=1, sample_seconds_per_1000=1.0, train_seconds=ts, pushforward_seconds=ps, eval_seconds=0.0)
            for m, b, v, ts, ps in points]
    rows = {r["method"]: r for r in summarize({"runs": runs, "n_blocks": 4, "batch_size": 10})}
    row = rows["lfm-trig"]
    # the LFM curve (batches 100 -> 400, seconds 10 -> 30) crosses NLL 2.0 a third of the way
    assert row["batches_to_reference_nll"] == pytest.approx(200) and not row["batches_to_reference_is_upper_bound"]
    assert row["batch_ratio_to_reference"] == pytest.approx(0.5)
    assert row["seconds_to_reference_nll"] == pytest.approx(10 + 20 / 3)
    assert row["seconds_ratio_to_reference"] == pytest.approx((10 + 20 / 3) / 50)
    # each LFM batch trains one block (25 parameters); each global batch the whole network
    assert row["train_gflops"] == pytest.approx(6 * 25 * 10 * 400 / 1e9)
    assert rows["global-trig"]["train_gflops"] == pytest.approx(6 * 100 * 10 * 400 / 1e9)


def test_width_for_parameters_is_the_closest_width():
    from torch import nn

    from torchcfm_local.networks import count_parameters, width_for_parameters

    def mlp(w):
        return tl.MLP(3, width=w, depth=2)

    counts = {w: count_parameters(mlp(w)) for w in range(1, 80)}
    for target in (5, counts[1], counts[7] + 1, (counts[20] + counts[21]) // 2, counts[50] - 3, counts[64]):
        best = min(counts, key=lambda w: (abs(counts[w] - target), w))  # closest, the smaller on a tie
        for start in (None, 1, 30, 79, 500):
            assert width_for_parameters(mlp, target, start=start) == best, (target, start)
    # nn.Linear(1, w) has 2w parameters: a tie between widths goes to the smaller one
    assert width_for_parameters(lambda w: nn.Linear(1, w), 7) == 3
    # widths in steps of 32: 96 (192 parameters) is closer to 200 than 128 (256)
    assert width_for_parameters(lambda w: nn.Linear(1, w), 200, step=32, start=1024) == 96
    assert width_for_parameters(lambda w: nn.Linear(1, w), 1, step=32) == 32
    # probing does not advance torch's global generator
    torch.manual_seed(0)
    width_for_parameters(mlp, counts[40])
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))
    with pytest.raises(ValueError, match="target must be a positive int"):
        width_for_parameters(mlp, 0)
    with pytest.raises(ValueError, match="step must be a positive int"):
        width_for_parameters(mlp, 100, step=0)


def test_registry_entries_are_named_and_checked():
    import dataclasses

    from torchcfm import conditional_flow_matching as cfm

    from torchcfm_local.bench.registry import BUDGETS, METHODS, TASKS, Method

    assert METHODS["lfm-trig"] == Method(schedule="lfm", path="trig") and METHODS["lfm-trig"].local
    assert not METHODS["global-linear"].local
    assert type(METHODS["global-linear"].matcher()) is cfm.ConditionalFlowMatcher
    assert type(METHODS["lfm-trig"].matcher()) is cfm.VariancePreservingConditionalFlowMatcher
    assert TASKS["tree"].n_blocks == 9 and TASKS["gas"].n_blocks == 2
    with pytest.raises(ValueError, match="Method.schedule must be 'global' or 'lfm'"):
        Method("local", "trig")
    with pytest.raises(ValueError, match="Method.path must be one of"):
        Method("lfm", "cosine")
    with pytest.raises(ValueError, match="Budget.per_block must be a positive int"):
        dataclasses.replace(BUDGETS["smoke"], per_block=0)
    with pytest.raises(ValueError, match=r"Budget.fractions must be numbers in \(0, 1\]"):
        dataclasses.replace(BUDGETS["smoke"], fractions=(0.5, 2.0))
    with pytest.raises(ValueError, match=r"Task.steps\[1\] must be a positive finite number"):
        dataclasses.replace(TASKS["tree"], steps=(0.1, -0.2))
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        from torchcfm_local.bench.protocol import run_task

        run_task("8gaussians", "smoke", seed=-1)


def test_require_matplotlib_names_the_extra(monkeypatch):
    import sys

    from torchcfm_local.bench.plots import require_matplotlib

    plt = require_matplotlib()
    assert plt.get_backend().lower() == "agg"
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    with pytest.raises(ImportError, match=r"pip install \"torchcfm-local\[bench\]\""):
        require_matplotlib()


def test_block_batches_split_and_variant_tasks():
    import dataclasses

    from torchcfm_local.bench.protocol import block_batches, run_task
    from torchcfm_local.bench.registry import BUDGETS, TASKS

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


def test_ablation_script_smoke(tmp_path):
    mod = load_benchmark("bench_ablation")
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
    mod = load_benchmark("diagnose_samples")
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

    from torchcfm_local.bench.report import _command

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


def test_provenance_commit_is_the_package_checkout_wherever_the_process_runs(tmp_path, monkeypatch):
    import subprocess

    from torchcfm_local.bench.report import _git_commit

    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    monkeypatch.chdir(tmp_path)  # outside any checkout
    assert _git_commit().split("+")[0] == head


def test_task_fit_options_reach_both_sides_and_curves_use_data_units():
    """``Task.fit`` options go to every method's fit; with a data map the global flow's learning
    curve (measured on the bare field while training) is still in data units: its last point
    equals the trained model's own log_prob on the curve set."""
    import dataclasses

    from torchcfm_local.bench.protocol import EVAL_ODE, prepare, run_task
    from torchcfm_local.bench.registry import BUDGETS, TASKS

    task = dataclasses.replace(TASKS["8gaussians"], steps=(0.1,), width=16, fit={"standardize": "diagonal"})
    budget = dataclasses.replace(BUDGETS["smoke"], per_block=8, n_eval=100, n_curve=100, fractions=(1.0,))
    run = run_task(task, budget, ["global-linear", "lfm-linear"], progress=False, log=lambda *a: None)
    for model in run.models.values():
        assert model.standardizer.mode == "diagonal"
    glob = run.models["global-linear"]
    setup = prepare(task, "8gaussians", budget, "custom")
    gen = torch.Generator().manual_seed(0)
    nll = float(-glob.log_prob(setup.curve_set, ode=EVAL_ODE, estimator=setup.estimator, generator=gen).mean())
    curve = next(r for r in run.result["runs"] if r["method"] == "global-linear")["curve_nll"]
    assert curve == pytest.approx(nll, abs=1e-4)
    assert glob.standardizer.log_det() != 0.0  # the check above compares numbers that differ without the map


def test_with_steps_keeps_total_parameters_and_batches():
    from dataclasses import replace

    from torchcfm_local.bench.protocol import with_steps
    from torchcfm_local.bench.registry import BUDGETS, TASKS

    task, budget = TASKS["tree"], BUDGETS["quick"]  # 9 blocks, width 256 at width scale 0.5
    total = task.n_blocks * mlp_params(2, 128, task.depth)
    new, bud = with_steps(task, budget, 2, (0.2, 0.3, 0.4))
    assert new.steps == (0.2, 0.3, 0.4) and new.n_blocks == 4 and bud.width_scale == 1.0
    assert new.width > 128 and abs(4 * mlp_params(2, new.width, new.depth) - total) / total < 0.02
    assert abs(4 * bud.per_block - task.n_blocks * budget.per_block) < 4  # 2250 total batches
    same, bud_same = with_steps(task, budget, 2, [h / 2 for h in task.steps])  # same N: width and batches kept
    assert (same.width, bud_same.per_block) == (128, budget.per_block)
    with pytest.raises(ValueError, match="block_weights"):
        with_steps(replace(task, block_weights=(1.0,) * 9), budget, 2, (0.1,))


def test_recipe_table_pairs_each_variant_with_the_first_by_seed():
    mod = load_benchmark("bench_recipe")

    def rec(variant, seed, nll):
        run = {"test_nll": nll, "energy_distance": 0.1, "sample_nfe": 10.0}
        return {"task": "tree", "variant": variant, "seed": seed, "final": {"lfm-trig": run}}

    records = [rec("base", 0, 2.0), rec("other", 0, 1.9), rec("base", 1, 3.0), rec("other", 1, 2.7), rec("base", 2, 2.5)]
    diff = mod.paired_nll(records, "tree", "other", "lfm-trig", "base")  # seed 2 has no partner
    assert diff["values"] == pytest.approx([-0.1, -0.3]) and diff["mean"] == pytest.approx(-0.2)
    assert mod.paired_nll(records, "tree", "base", "lfm-trig", "base") is None
    text = mod.markdown(records, "quick")
    assert "NLL - base (paired)" in text and "| other | lfm-trig | 2.3000 ± 0.4000 | -0.2000 ± 0.1000 |" in text


def test_recipe_render_rewrites_the_table_and_keeps_the_runs(tmp_path):
    from torchcfm_local.bench.report import write_results

    mod = load_benchmark("bench_recipe")
    run = {"test_nll": 2.0, "energy_distance": 0.1, "sample_nfe": 10.0}
    records = [{"task": "tree", "variant": "base", "seed": 0, "final": {"lfm-trig": run}}]
    write_results(tmp_path, "screen", {"budget": "quick", "records": records}, "old table")
    mod.main(["--render", "--name", "screen", "--out", str(tmp_path)])
    text = (tmp_path / "screen.md").read_text()
    assert "| base | lfm-trig | 2.0000 | - |" in text and "Runs in this file: `" in text and "Table rendered by `" in text
    assert json.loads((tmp_path / "screen.json").read_text())["results"]["records"] == records  # the JSON is kept
    with pytest.raises(SystemExit, match="no results file"):
        mod.main(["--render", "--name", "missing", "--out", str(tmp_path)])


def test_speed_global_mode_has_the_parameters_and_batches_of_the_nine_blocks():
    import argparse

    mod = load_benchmark("bench_speed")
    args = argparse.Namespace(width=32, batches=10)
    glob, glob_batches = mod.build("global", "trig", args)
    lfm, lfm_batches = mod.build("tol", "trig", args)
    count = tl.networks.count_parameters
    assert glob.n_blocks == 1 and lfm.n_blocks == 9
    assert glob_batches == 9 * lfm_batches == 90
    assert abs(count(glob.nets[0]) - sum(count(n) for n in lfm.nets)) / count(glob.nets[0]) < 0.01


def test_kernel_bench_times_both_activations(monkeypatch):
    mod = load_benchmark("bench_kernels")
    monkeypatch.setattr(mod, "best_of", lambda fns, rounds: {name: (fn(), 1e-3)[1] for name, fn in fns.items()})
    rows = mod.activation_rows(rounds=1)
    assert {r["implementation"] for r in rows} == set(mod.IMPLEMENTATIONS) and len(rows) == 12
    assert mod.table(rows).count("1.00x") == 6
    assert mod.networks.Softplus20.forward is mod.IMPLEMENTATIONS["vectorized (default)"]  # restored after timing


def test_chunk_bench_counts_the_requested_rk4_steps(monkeypatch):
    mod = load_benchmark("bench_chunk")
    calls = []
    real = mod.tl.LocalFlowMatching.transport

    def transport(self, x, blocks, to_data, ode, chunk_size, **kw):
        calls.append((ode.solver, ode.steps, chunk_size))
        return real(self, x, blocks, to_data, ode, chunk_size, **kw)

    monkeypatch.setattr(mod.tl.LocalFlowMatching, "transport", transport)
    case = mod.measure(2, 600, [256], [300], repeats=1, steps=3)
    assert case["nfe_per_row"] == 12 and case["rk4_steps"] == 3
    assert {(s, k) for s, k, _ in calls} == {("rk4", 3)}
    assert {c for *_, c in calls} == {300, mod.tl.LocalFlowMatching(2).default_chunk(), 2**19}  # + default, 2^20/d
    assert all(r > 0 for r in [*case["bare_evals_per_s"].values(), *case["pushforward_evals_per_s"].values()])
    assert "RK4 x 3 per block" in mod.table([case])


def test_probe_small_data_smoke(tmp_path):
    mod = load_benchmark("probe_small_data")
    assert mod.main(["--task", "8gaussians", "--budget", "smoke", "--n-eval", "50", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "small_data.json").read_text())["results"]["rows"]
    assert [r["variant"] for r in rows] == list(mod.VARIANTS)
    by = {r["variant"]: r for r in rows}
    suite_global, suite_lfm = by["global, global width (the suite's), N x B batches"], rows[3]
    # the suite's pair: equal parameters (within a width step), N x B batches for the global flow
    assert abs(suite_global["params"] - suite_lfm["params"]) / suite_lfm["params"] < 0.05
    assert suite_global["batches_per_block"] == 9 * suite_lfm["batches_per_block"] == 9 * 20
    assert by["LFM, block width, B / 4 batches per block"]["batches_per_block"] == 5
    two = by["LFM, 2 blocks (OU step 0.75), equal parameters and batches"]
    assert two["steps"] == [0.75] and two["batches_per_block"] == 9 * 20 // 2
    assert abs(two["params"] - suite_lfm["params"]) / suite_lfm["params"] < 0.05
    for r in rows:
        assert math.isfinite(r["train_nll"]) and r["gap"] == pytest.approx(r["test_nll"] - r["train_nll"])
        assert math.isfinite(r["train_prior"]) and math.isfinite(r["test_prior"])
    assert "| LFM, global width, B batches per block |" in (tmp_path / "small_data.md").read_text()


def test_probe_small_data_nll_matches_the_bench_and_spacing_is_the_stated_ratio(tmp_path):
    mod = load_benchmark("probe_small_data")
    x = torch.randn(64, 2)
    model = tl.LocalFlowMatching(2, tl.OUSchedule.from_steps([0.3]), velocity_factory=lambda n: tl.MLP(2, width=16))
    model.fit(x, batches_per_block=3, batch_size=16, seed=0, progress=False)
    nll, prior = mod._nll_and_prior(model, x[:8], "exact", 0)
    assert nll == pytest.approx(mod.protocol._nll(model, x[:8], "exact", 0))
    encoded = model.encode(x[:8], ode=mod.protocol.EVAL_ODE).double()
    assert prior == pytest.approx(float(0.5 * encoded.pow(2).sum(1).mean() + math.log(2 * math.pi)), rel=1e-4)
    assert mod.main(["--spacing", "8gaussians", "--budget", "smoke", "--out", str(tmp_path)]) == 0
    (row,) = json.loads((tmp_path / "small_data_spacing.json").read_text())["results"]["rows"]
    # the median nearest-other-point distance, recomputed by brute force on the same training set
    task = mod.TASKS["8gaussians"]
    train = mod.protocol.prepare(task, "8gaussians", mod.BUDGETS["smoke"], "smoke", seed=0).train.double()
    assert row["n_train"] == len(train) <= 2000  # every point is a query at this size
    gaps = (train[:, None] - train[None]).norm(dim=-1) + torch.diag(torch.full((len(train),), float("inf")))
    d, h = float(gaps.min(1).values.median()), task.steps[0]
    assert row["median_nn"] == pytest.approx(d, rel=1e-9) and row["h1"] == h
    assert row["ratio"] == pytest.approx(math.exp(-2 * h) * d**2 / (2 * (1 - math.exp(-2 * h))))


def test_speed_table_lists_every_run_with_its_evaluation_faults():
    import argparse

    mod = load_benchmark("bench_speed")
    base = {"test_nll": 2.0, "total_s": 100.0, "train_s": 50.0, "push_s": 20.0, "eval_s": 30.0,
            "push_eval_share": 0.5, "push_vs_bare": 0.9}
    rows = [{**base, "mode": "tol", "path": "linear", "seed": 0, "push_steps": [2, 1], "push_error": [0.004, 0.008]},
            {**base, "mode": "ou", "path": "linear", "seed": 0, "push_steps": [None, None],
             "push_error": [None, None], "push_s": 0.0, "push_vs_bare": None, "eval_page_faults": 77347}]
    args = argparse.Namespace(n_train=10, n_test=5, width=8, batches=2, batch_size=4)
    text = mod.markdown(rows, args)
    assert "| tol | linear | 0 | 2, 1 | 0.008 | 30.0 | - |" in text  # recorded before faults were counted
    assert "| ou | linear | 0 | - | - | 30.0 | 77,347 |" in text
    assert mod.minor_faults() > 0
