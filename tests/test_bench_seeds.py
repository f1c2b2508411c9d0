"""``lfm-bench --seeds``: several seeds, their mean ± SE, paired differences and the files."""
import dataclasses
import json
import math

import pytest

from torchcfm_local.bench import main
from torchcfm_local.bench.report import first_crossing, summarize
from torchcfm_local.bench.seeds import aggregate, check_seeds, default_seeds, parse_seeds, seeds_table
from bench_scripts import load_benchmark

METHODS = "global-trig,global-linear,lfm-linear"


@pytest.fixture
def tiny(monkeypatch):
    """``8gaussians`` at the ``smoke`` budget made tiny: 3 LFM blocks of width 16, 8 batches per block."""
    from torchcfm_local.bench import plots, registry

    task = dataclasses.replace(registry.TASKS["8gaussians"], steps=(0.1, 0.2), width=16)
    budget = dataclasses.replace(registry.BUDGETS["smoke"], n_train=500, per_block=8, n_eval=100, n_curve=100)
    monkeypatch.setitem(registry.TASKS, "8gaussians", task)
    monkeypatch.setitem(registry.BUDGETS, "smoke", budget)
    density = plots.density_maps  # a coarse grid: the full one costs most of the test's time
    monkeypatch.setattr(plots, "density_maps", lambda run, path: density(run, path, resolution=10))


def _se(values):
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def test_parse_and_check_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2] and parse_seeds(" 7 , 3") == [7, 3] and parse_seeds("5") == [5]
    for bad in ("", "a", "-1", "1,", "1.5", "0,,1", "²"):
        with pytest.raises(ValueError, match="comma-separated ints >= 0"):
            parse_seeds(bad)
    with pytest.raises(ValueError, match="repeated: 1"):
        parse_seeds("1,0,1")
    with pytest.raises(ValueError, match="at least one seed"):
        check_seeds([])
    with pytest.raises(ValueError, match="ints >= 0, got -2"):
        check_seeds([0, -2])
    with pytest.raises(ValueError, match="ints >= 0, got True"):
        check_seeds([True])
    assert default_seeds("smoke") == default_seeds("quick") == default_seeds("custom") == [0]
    assert default_seeds("medium") == default_seeds("full") == [0, 1, 2]


@pytest.mark.parametrize("argv,match", [
    (["run", "tree", "--budget", "smoke", "--seeds", ""], "got ''"),
    (["run", "tree", "--budget", "smoke", "--seeds", "a"], "got 'a'"),
    (["run", "tree", "--budget", "smoke", "--seeds", "-1"], "got '-1'"),
    (["run", "tree", "--budget", "smoke", "--seed", "-1"], "got '-1'"),
    (["quick", "--seeds", "0,2,0"], "repeated: 0"),
])
def test_bad_seeds_exit_with_message(argv, match, tmp_path, capsys):
    assert main(argv + ["--out", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lfm-bench: error:") and match in err
    assert not any(tmp_path.iterdir())  # rejected before anything ran


def _synthetic(seed, shift):
    """A run_task-like result: two globals and one LFM, every number known."""
    pts = {"global-trig": [(4, 3.0 + shift), (8, 2.0 + shift)], "global-linear": [(4, 2.8 + shift), (8, 1.8 + shift)],
           "lfm-linear": [(4, 2.2 + shift), (8, 1.0 + shift)], "lfm-trig": [(4, 2.5 + 2 * shift), (8, 2.2 + 2 * shift)]}
    runs = [dict(method=m, batches=b, curve_nll=v, params=10, test_nll=v + 0.1, val_nll=v + 0.2,
                 energy_distance=0.01 * (1 + shift), sample_nfe=20 + shift, sample_seconds_per_1000=1.0,
                 train_seconds=b + shift, pushforward_seconds=0.5, eval_seconds=0.0)
            for m, curve in pts.items() for b, v in curve]
    return {"task": {"dataset": "toy"}, "budget": "smoke", "total_batches": 8, "n_blocks": 2, "seed": seed,
            "runs": runs, "summary": summarize({"runs": runs, "n_blocks": 2, "batch_size": 3})}


def test_aggregate_by_hand():
    shifts = [0.0, 1.0, 3.0]  # mean 4/3, sample std sqrt(7/3), SE sqrt(7)/3
    results = [_synthetic(s, d) for s, d in zip((0, 5, 9), shifts)]
    agg = aggregate(results)
    assert agg["seeds"] == [0, 5, 9] and agg["n_seeds"] == 3
    rows = {r["method"]: r for r in agg["methods"]}
    lfm = rows["lfm-linear"]
    assert lfm["test_nll"]["mean"] == pytest.approx(1.1 + 4 / 3) and lfm["test_nll"]["se"] == pytest.approx(math.sqrt(7) / 3)
    assert lfm["val_nll"]["values"] == pytest.approx([1.2, 2.2, 4.2])
    assert lfm["sample_nfe"]["mean"] == pytest.approx(20 + 4 / 3)
    assert lfm["train_push_seconds"]["mean"] == pytest.approx(8.5 + 4 / 3)
    assert lfm["curve"] == [(4, pytest.approx(2.2 + 4 / 3)), (8, pytest.approx(1.0 + 4 / 3))]
    assert lfm["curve_se"] == pytest.approx([math.sqrt(7) / 3] * 2)
    # mean global-linear final curve NLL is 1.8 + 4/3; the mean LFM curve reaches it at 4 + 4 * (0.4 / 1.2)
    assert lfm["reference"] == "global-linear" and lfm["batches_to_reference_nll"] == pytest.approx(4 + 4 / 3)
    assert lfm["batch_ratio_to_reference"] == pytest.approx((4 + 4 / 3) / 8)
    assert not lfm["batches_to_reference_is_upper_bound"]
    # seconds (training + pushforward, mean over seeds) are batches + 4/3 + 0.5 for every method here
    assert lfm["seconds_to_reference_nll"] == pytest.approx(4 + 4 / 3 + 4 / 3 + 0.5)
    assert lfm["seconds_ratio_to_reference"] == pytest.approx((4 + 8 / 3 + 0.5) / (8 + 4 / 3 + 0.5))
    assert lfm["train_gflops"] == pytest.approx(6 * 5 * 3 * 8 / 1e9)  # 2 blocks of 5 parameters, one per batch
    assert rows["global-linear"]["train_gflops"] == pytest.approx(6 * 10 * 3 * 8 / 1e9)
    assert rows["lfm-trig"]["reference"] == "global-trig" and rows["lfm-trig"]["batches_to_reference_nll"] is None
    # against a named reference instead of the same path: global-trig's final 2.0 + 4/3 is reached at 4 + 4 * (0.2 / 1.2)
    from torchcfm_local.bench.report import compare_to_reference

    other = {key: lfm[key] for key in ("method", "batches", "curve")}
    compare_to_reference(other, agg["methods"], reference="global-trig")
    assert other["reference"] == "global-trig" and other["batches_to_reference_nll"] == pytest.approx(4 + 2 / 3)
    assert "not reached" in seeds_table({**results[0], "aggregate": agg, "dim": 2, "n_train": 1, "batch_size": 1,
                                         "lfm_width": 1, "depth": 1, "global_width": 1, "estimator": "exact",
                                         "n_test": 1})
    # paired: per seed LFM - global, then mean ± SE; the best global (lowest mean test NLL) is global-linear
    paired = {(p["method"], p["reference"], p["kind"]): p for p in agg["paired"]}
    assert list(paired) == [("lfm-linear", "global-linear", "same path"), ("lfm-linear", "global-linear", "best global"),
                            ("lfm-trig", "global-trig", "same path"), ("lfm-trig", "global-linear", "best global")]
    p = paired["lfm-linear", "global-linear", "same path"]
    assert p["test_nll"]["mean"] == pytest.approx(-0.8) and p["test_nll"]["se"] == pytest.approx(0)  # shift cancels
    p = paired["lfm-trig", "global-trig", "same path"]  # lfm-trig moves twice as much with the seed
    assert p["test_nll"]["mean"] == pytest.approx(0.2 + 4 / 3) and p["test_nll"]["se"] == pytest.approx(math.sqrt(7) / 3)
    assert p["test_nll"]["values"] == pytest.approx([0.2, 1.2, 3.2])
    p = paired["lfm-trig", "global-linear", "best global"]
    assert p["test_nll"]["mean"] == pytest.approx(0.4 + 4 / 3)
    assert p["energy_distance"]["values"] == pytest.approx([0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="not the same task, budget"):
        aggregate([results[0], dict(results[1], total_batches=16)])
    with pytest.raises(ValueError, match="repeated: 0"):
        aggregate([results[0], dict(results[1], seed=0)])


def test_two_seeds_aggregate_and_one_seed_layout(tiny, tmp_path, capsys, monkeypatch):
    out = tmp_path / "two"
    assert main(["run", "8gaussians", "--budget", "smoke", "--methods", METHODS, "--seeds", "0,1",
                 "--out", str(out), "--no-progress"]) == 0
    base = out / "8gaussians_smoke"
    for name in ("results.json", "results.md", "curves.png"):
        assert (base / name).stat().st_size > 0, name
    assert not (base / "samples.png").exists() and not (base / "density.png").exists()
    seeds = {}
    for k in (0, 1):
        for name in ("results.json", "results.md", "curves.png", "samples.png", "density.png"):
            assert (base / f"seed{k}" / name).stat().st_size > 0, (k, name)
        seeds[k] = json.loads((base / f"seed{k}" / "results.json").read_text())["results"]
        assert seeds[k]["seed"] == k and "one seed: " + str(k) in (base / f"seed{k}" / "results.md").read_text()
    data = json.loads((base / "results.json").read_text())
    seed_prov = json.loads((base / "seed0" / "results.json").read_text())["provenance"]
    assert {k: data["provenance"][k] for k in ("command", "commit", "machine")} == \
        {k: seed_prov[k] for k in ("command", "commit", "machine")}
    record = data["results"]
    assert record["seeds"] == [0, 1] and record["total_batches"] == 24 and "runs" not in record
    assert [s["summary"] for s in record["per_seed"]] == [seeds[0]["summary"], seeds[1]["summary"]]
    per = {k: {r["method"]: r for r in seeds[k]["summary"]} for k in (0, 1)}
    assert per[0]["lfm-linear"]["test_nll"] != per[1]["lfm-linear"]["test_nll"]  # different seeds, different runs
    rows = {r["method"]: r for r in record["aggregate"]["methods"]}
    for method in METHODS.split(","):
        for key in ("test_nll", "val_nll", "energy_distance", "sample_nfe"):
            values = [per[k][method][key] for k in (0, 1)]
            assert rows[method][key]["mean"] == pytest.approx(sum(values) / 2)
            assert rows[method][key]["se"] == pytest.approx(abs(values[0] - values[1]) / 2)  # n = 2
            assert rows[method][key]["se"] == pytest.approx(_se(values))
        secs = [per[k][method]["train_seconds"] + per[k][method]["pushforward_seconds"] for k in (0, 1)]
        assert rows[method]["train_push_seconds"]["mean"] == pytest.approx(sum(secs) / 2)
        curve = [(b, (v0 + v1) / 2) for (b, v0), (_, v1) in zip(per[0][method]["curve"], per[1][method]["curve"])]
        assert [b for b, _ in rows[method]["curve"]] == [12, 24]
        assert [v for _, v in rows[method]["curve"]] == pytest.approx([v for _, v in curve])
        assert rows[method]["n_seeds"] == 2
    # batches to the same-path global flow's final NLL, on the mean curves
    target = rows["global-linear"]["curve"][-1][1]
    assert rows["lfm-linear"]["batches_to_reference_nll"] == first_crossing(
        [tuple(p) for p in rows["lfm-linear"]["curve"]], target)
    # paired differences per seed, then mean and SE
    best = min(("global-trig", "global-linear"), key=lambda m: rows[m]["test_nll"]["mean"])
    paired = {(p["reference"], p["kind"]): p for p in record["aggregate"]["paired"]}
    assert set(paired) == {("global-linear", "same path"), (best, "best global")}
    for (ref, _), p in paired.items():
        for key in ("test_nll", "energy_distance"):
            diffs = [per[k]["lfm-linear"][key] - per[k][ref][key] for k in (0, 1)]
            assert p[key]["mean"] == pytest.approx(sum(diffs) / 2) and p[key]["se"] == pytest.approx(_se(diffs))
    table = (base / "results.md").read_text()
    assert "2 seeds: 0, 1" in table and f"{rows['lfm-linear']['test_nll']['mean']:.4f} ± " in table
    assert "lfm-linear - global-linear (same path)" in table and "Command: `" in table

    # one seed (the --seed alias): today's layout, the table says "one seed", the same numbers as seed1/
    one = tmp_path / "one"
    assert main(["run", "8gaussians", "--budget", "smoke", "--methods", METHODS, "--seed", "1",
                 "--out", str(one), "--no-progress", "--no-figures"]) == 0
    assert sorted(p.name for p in (one / "8gaussians_smoke").iterdir()) == ["results.json", "results.md"]
    single = json.loads((one / "8gaussians_smoke" / "results.json").read_text())["results"]
    assert single["seed"] == 1 and "aggregate" not in single and len(single["runs"]) == 6
    assert [r["test_nll"] for r in single["summary"]] == pytest.approx([r["test_nll"] for r in seeds[1]["summary"]])
    assert "(smoke budget, one seed: 1)" in (one / "8gaussians_smoke" / "results.md").read_text()

    # --resume: seeds 0 and 1 are read from their files, only seed 2 runs; the aggregate says so
    from torchcfm_local.bench import protocol

    ran, run_task = [], protocol.run_task

    def counting(*args, seed, **kwargs):
        ran.append(seed)
        return run_task(*args, seed=seed, **kwargs)

    monkeypatch.setattr(protocol, "run_task", counting)
    assert main(["run", "8gaussians", "--budget", "smoke", "--methods", METHODS, "--seeds", "0,1,2", "--resume",
                 "--out", str(out), "--no-progress", "--no-figures"]) == 0
    assert ran == [2]
    resumed = json.loads((base / "results.json").read_text())["results"]
    assert resumed["seeds"] == [0, 1, 2] and [r["seed"] for r in resumed["reused"]] == [0, 1]
    assert [s["summary"] for s in resumed["per_seed"][:2]] == [seeds[0]["summary"], seeds[1]["summary"]]
    assert resumed["reused"][0]["commit"] == seed_prov["commit"]
    assert "Seed 1 was read from an earlier run (`--resume`)" in (base / "results.md").read_text()
    # a single finished seed: nothing runs, its table is printed again
    ran.clear()
    assert main(["run", "8gaussians", "--budget", "smoke", "--methods", METHODS, "--seed", "1", "--resume",
                 "--out", str(one), "--no-progress", "--no-figures"]) == 0
    assert ran == [] and "(smoke budget, one seed: 1)" in capsys.readouterr().out


def test_resume_refuses_other_runs(tiny, tmp_path, capsys):
    seed_dir = tmp_path / "8gaussians_smoke" / "seed0"
    seed_dir.mkdir(parents=True)
    argv = ["run", "8gaussians", "--budget", "smoke", "--methods", METHODS, "--seeds", "0,1", "--resume",
            "--out", str(tmp_path), "--no-progress", "--no-figures"]
    (seed_dir / "results.json").write_text("{not json")
    assert main(argv) == 2
    assert "is not a readable lfm-bench result of one seed" in capsys.readouterr().err
    from torchcfm_local.bench import registry

    result = {"seed": 0, "task": dataclasses.asdict(registry.TASKS["8gaussians"]),
              "budget_settings": dataclasses.asdict(registry.BUDGETS["smoke"]),
              "summary": [{"method": m} for m in ("global-trig", "lfm-linear")]}  # another method list
    (seed_dir / "results.json").write_text(json.dumps({"provenance": {}, "results": result}))
    assert main(argv) == 2
    assert "a run with a different methods than this one" in capsys.readouterr().err
    result["summary"] = [{"method": m} for m in METHODS.split(",")]
    result["budget_settings"]["per_block"] += 1
    (seed_dir / "results.json").write_text(json.dumps({"provenance": {}, "results": result}))
    assert main(argv) == 2
    assert "a run with a different budget than this one" in capsys.readouterr().err


def test_status_table_from_seed_aggregates(tmp_path, capsys):
    from torchcfm_local.bench.seeds import seeds_record

    status = load_benchmark("status_table")
    record = dict(seeds_record([_synthetic(s, d) for s, d in zip((0, 5, 9), [0.0, 1.0, 3.0])]), dim=2)
    (tmp_path / "toy_smoke").mkdir()
    (tmp_path / "toy_smoke" / "results.json").write_text(json.dumps({"provenance": {}, "results": record}))
    out = tmp_path / "out"
    assert status.main([str(tmp_path), "--budget", "smoke", "--tasks", "toy", "--out", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads((out / "status_smoke.json").read_text())["results"]["rows"]}
    lin, trig = rows["lfm-linear"], rows["lfm-trig"]
    assert lin["global"] == trig["global"] == "global-linear"  # the lower mean test NLL of the two
    assert lin["global_test_nll"]["mean"] == pytest.approx(1.9 + 4 / 3)
    # the mean LFM curve (4: 2.2, 8: 1.0, + 4/3) crosses global-linear's final 1.8 + 4/3 at 4 + 4/3 batches
    assert lin["batches_to_global_nll"] == pytest.approx(4 + 4 / 3) and lin["batch_ratio"] == pytest.approx(2 / 3)
    assert lin["nll_met"] and not lin["batches_met"] and lin["energy_met"]  # ED equal on every seed
    assert lin["paired_test_nll"]["mean"] == pytest.approx(-0.8) and lin["paired_test_nll"]["se"] == pytest.approx(0)
    assert trig["batches_to_global_nll"] is None and not trig["nll_met"] and not trig["batches_met"]
    md = (out / "status_smoke.md").read_text()
    assert "| toy | 2 | 3 | global-linear: 3.233 ± " in md and "| yes / no / yes |" in md and "not reached" in md
    # one seed, or no run at all: refused with the command to run
    (tmp_path / "one_smoke").mkdir()
    (tmp_path / "one_smoke" / "results.json").write_text(json.dumps({"provenance": {}, "results": _synthetic(0, 0.0)}))
    assert status.main([str(tmp_path), "--budget", "smoke", "--tasks", "one", "--out", str(out)]) == 2
    assert "needs a multi-seed run" in capsys.readouterr().err
    assert status.main([str(tmp_path), "--budget", "smoke", "--tasks", "rose", "--out", str(out)]) == 2
    assert "lfm-bench run rose --budget smoke --seeds 0,1,2" in capsys.readouterr().err


def test_status_table_reads_tasks_from_several_directories(tmp_path, capsys):
    from torchcfm_local.bench.seeds import seeds_record

    status = load_benchmark("status_table")
    record = dict(seeds_record([_synthetic(s, d) for s, d in zip((0, 5, 9), [0.0, 1.0, 3.0])]), dim=2)
    standardized = json.loads(json.dumps(record))
    standardized["task"]["fit"] = {"standardize": "diagonal"}
    for directory, task, rec in (("raw", "toy", record), ("std", "other", standardized)):
        (tmp_path / directory / f"{task}_smoke").mkdir(parents=True)
        (tmp_path / directory / f"{task}_smoke" / "results.json").write_text(json.dumps({"provenance": {}, "results": rec}))
    out = tmp_path / "out"
    dirs = [str(tmp_path / "raw"), str(tmp_path / "std")]
    assert status.main(dirs + ["--budget", "smoke", "--tasks", "toy,other", "--out", str(out)]) == 0
    tasks = [r["task"] for r in json.loads((out / "status_smoke.json").read_text())["results"]["rows"]]
    assert tasks[:2] == ["toy", "toy"] and tasks[2:] == ["toy (standardize=diagonal)"] * 2  # labelled by its fit option
    (tmp_path / "std" / "toy_smoke").mkdir()
    (tmp_path / "std" / "toy_smoke" / "results.json").write_text(json.dumps({"provenance": {}, "results": record}))
    assert status.main(dirs + ["--budget", "smoke", "--tasks", "toy", "--out", str(out)]) == 2
    assert "in several directories" in capsys.readouterr().err
