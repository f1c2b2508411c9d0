"""Compute accounting of policies (torchcfm_local.policy.flops) against FLOPs counted on real fits."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from torchcfm_local.policy import collect_demos, evaluate
from torchcfm_local.policy.cli import build_policy
from torchcfm_local.policy.flops import chunk_flops, fit_flops, network_flops, steps_flops
from torchcfm_local.policy.protocol import _batch_size, train_checkpoints
from torchcfm_local.policy.recipe import PolicyRecipe

RECIPE = PolicyRecipe(epochs=6.0, width=32)


@pytest.fixture(scope="module")
def demos():
    return collect_demos("point", 30, seed=0)


@pytest.mark.parametrize("method", ["lfm", "global", "regression"])
def test_fit_flops_match_the_flops_counted_during_the_fit(demos, method):
    torch.manual_seed(0)
    policy = build_policy(method, demos.obs_dims, 2, recipe=RECIPE)
    costs = network_flops(policy)
    assert all(p.grad is None for p in policy.parameters())  # measured on a copy
    with FlopCounterMode(display=False) as counted:
        report = policy.fit(demos, **RECIPE.fit_options(), seed=0, progress=False)
    batch, rows = _batch_size(policy, demos, RECIPE), int(demos.action.shape[0])
    if method == "regression":
        estimate = steps_flops(costs, [len(report)], batch)
    else:
        estimate = fit_flops(costs, report, batch, rows)
    if method == "lfm":  # two pushforwards, the first two blocks' step-choosing probes
        assert [b.pushforward_nfe > 0 for b in report.blocks] == [True, True, False]
    assert estimate == pytest.approx(counted.get_total_flops(), rel=0.01)


def test_checkpoints_carry_their_training_flops(demos):
    recipe = RECIPE.replace(epochs=4.0)
    snapshots = list(train_checkpoints("global", demos, recipe, [2.0, 4.0], seed=0))
    runs = list(train_checkpoints("lfm", demos, recipe, [2.0, 4.0], seed=0))
    assert [c.kind for c in snapshots] == ["snapshot"] * 2 and [c.kind for c in runs] == ["run"] * 2
    # a snapshot's compute is its steps' (one network, nothing pushed)
    steps = [snapshots[0].policy.batches_per_block(demos, e, recipe.batch_size) for e in (2.0, 4.0)]
    assert steps[0] < steps[1]
    assert snapshots[1].train_flops / snapshots[0].train_flops == pytest.approx(steps[1] / steps[0])
    assert runs[1].train_flops > runs[0].train_flops
    # at equal parameters a row through all three LFM blocks costs what it costs through the global
    # network, so a training row, which goes through one block, costs about a third
    lfm, glob = network_flops(runs[1].policy), network_flops(snapshots[1].policy)
    assert sum(train for _, train in lfm) == pytest.approx(glob[0][1], rel=0.1)


def test_chunk_flops_are_the_sampling_evaluations(demos):
    torch.manual_seed(0)
    policy = build_policy("lfm", demos.obs_dims, 2, recipe=RECIPE)
    policy.fit(demos, **RECIPE.fit_options(), seed=0, progress=False)
    evaluate(policy, "point", 2, seed=0)
    nfe = policy.flow.last_stats.nfe
    with FlopCounterMode(display=False) as counted:
        policy.predict_action({"pos": torch.zeros(1, 2, 2)}, generator=torch.Generator().manual_seed(0))
    assert chunk_flops(network_flops(policy), nfe) == pytest.approx(counted.get_total_flops(), rel=0.01)


def _records(method, seeds, points):
    """Records of ``method``: for each seed, ``points`` = [(epochs, flops, seconds, success), ...] (success + seed / 10)."""
    return [{"method": method, "seed": s, "epochs": e, "train_flops": f, "train_seconds": t, "success_rate": y + s / 10}
            for s in seeds for e, f, t, y in points]


def test_equal_compute_reads_the_global_flow_at_lfm_flops():
    from bench_scripts import load_benchmark

    script = load_benchmark("policy_equal_compute")
    lfm = _records("lfm", [0, 1], [(100.0, 3e9, 50.0, 0.7), (200.0, 9e9, 90.0, 0.8)])
    glob = _records("global", [0, 1], [(10.0, 2e9, 20.0, 0.2), (20.0, 4e9, 40.0, 0.6), (30.0, 6e9, 60.0, 0.7)])
    rows = script.compare(lfm + glob, "flops")
    first = rows[0]  # 3e9 lies halfway between the global's 10 and 20 epochs: success 0.4 (+ seed / 10)
    assert first["global"]["values"] == pytest.approx([0.4, 0.5])
    assert first["global_epochs"]["mean"] == pytest.approx(15.0)
    assert first["lfm - global"]["values"] == pytest.approx([0.3, 0.3])
    assert rows[1]["lfm - global"] is None  # 9e9: beyond the global run's last checkpoint, not extrapolated
    seconds = script.compare(lfm + glob, "seconds")  # 50 s: halfway between 40 and 60 s
    assert seconds[0]["global"]["values"] == pytest.approx([0.65, 0.75])
    assert "| 100 | 3.0 ± 0.0 | 0.75 ± 0.05 | 0.45 ± 0.05 | 15 ± 0 | +0.30 ± 0.00 |" in script.table(
        {"task": "can", "name": "x", "flops": rows, "seconds": seconds, "sources": []})


def test_equal_compute_refuses_runs_it_cannot_pair(tmp_path):
    from bench_scripts import load_benchmark

    script = load_benchmark("policy_equal_compute")

    def run(records, episodes=50, lr=3e-3):
        protocol = {"episodes": episodes, "eval_seed": 1000, "demos": 6, "task": "can"}
        return {"provenance": {}, "results": {"recipe": PolicyRecipe(lr=lr).to_dict(), "protocol": protocol,
                                              "records": records}}

    lfm = _records("lfm", [0], [(100.0, 3e9, 50.0, 0.7)])
    glob = _records("global", [0], [(10.0, 2e9, 20.0, 0.2)])
    assert len(script.pooled_records([run(lfm), run(glob)])[0]) == 2
    for bad, message in (([run(lfm), run(glob, episodes=20)], "episodes=20"),
                         ([run(lfm), run(glob, lr=1e-3)], r"fields \['lr'\]"),
                         ([run(lfm), run(lfm)], "more than one run"),
                         ([run(lfm), run([{**glob[0], "train_flops": None}])], "lack train_flops")):
        with pytest.raises(ValueError, match=message):
            script.pooled_records(bad)


def test_equal_compute_end_to_end(tmp_path):
    from bench_scripts import load_benchmark

    bench, script = load_benchmark("bench_policy"), load_benchmark("policy_equal_compute")
    common = ["--quick", "--demos", "6", "--width", "16", "--episodes", "2", "--seeds", "1"]
    assert bench.main(common + ["--methods", "lfm", "--epochs", "4", "--eval-every", "4", "--out", str(tmp_path / "a")]) == 0
    assert bench.main(common + ["--methods", "global", "--epochs", "4", "--eval-every", "1", "--out",
                                str(tmp_path / "b")]) == 0
    files = [str(tmp_path / d / "policy_point_quick.json") for d in ("a", "b")]
    assert script.main(files + ["--out", str(tmp_path / "c")]) == 0
    out = (tmp_path / "c" / "policy_point_equal_compute.md").read_text()
    assert "### At equal training flops" in out and (tmp_path / "c" / "policy_point_equal_compute.png").stat().st_size


def test_train_cost_benchmark_reports_flops_and_seconds_per_width(tmp_path):
    from bench_scripts import load_benchmark

    script = load_benchmark("policy_train_cost")
    assert script.main(["--widths", "16,32", "--epochs", "1", "--demos", "10", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "policy_train_cost.json").read_text())["results"]["rows"]
    assert [r["width"] for r in rows] == [16, 32]
    for r in rows:
        assert r["lfm"]["parameters"] == pytest.approx(r["global"]["parameters"], rel=0.02)
        assert r["lfm"]["steps"] == 3 * r["global"]["steps"]  # split batches: every block the global's steps
        assert r["lfm"]["flops"] > 0 and r["global"]["flops"] > 0 and r["global"]["seconds"] > 0
    with pytest.raises(SystemExit):
        script.main(["--widths", "16,x"])
