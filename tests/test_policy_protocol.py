"""The policy recipe (every knob reaches the policy and its file) and Diffusion Policy's evaluation protocol."""
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher, VariancePreservingConditionalFlowMatcher

import torchcfm_local as tl
from torchcfm_local.policy import collect_demos, load_policy, save_demos
from torchcfm_local.policy.policy import DEFAULT_LFM_SCHEDULE, _free_share_split
from torchcfm_local.prediction import DataPrediction
from torchcfm_local.policy.cli import build_policy, main as cli_main
from torchcfm_local.policy.protocol import checkpoint_epochs, summarize, train_checkpoints
from torchcfm_local.policy.recipe import PolicyRecipe
from bench_scripts import load_benchmark

#: every knob away from its default
KNOBS = {"h0": 0.2, "rho": 1.25, "blocks": 3, "path": "linear", "network": "mlp", "activation": "softplus20",
         "n_freq": 1, "width": 16, "epochs": 1.0,
         "batch_size": 64, "lr": 3e-4, "weight_decay": 1e-4, "warmup": 2, "lr_decay": "cosine", "ema_decay": 0.9,
         "pool": "ou", "shared": False, "free_share": 0.5, "block_batch": "split", "prediction": "data"}


def _flags(knobs):
    return [a for k, v in knobs.items() for a in ("--" + k.replace("_", "-"), str(v))]


@pytest.fixture(scope="module")
def demos():
    return collect_demos("point", 6, seed=0)


@pytest.fixture
def fit_calls(monkeypatch):
    """Records the keywords of every LocalFlowMatching.fit call (and still trains)."""
    calls, original = [], tl.LocalFlowMatching.fit

    def spy(self, x, **options):
        calls.append(options)
        return original(self, x, **options)

    monkeypatch.setattr(tl.LocalFlowMatching, "fit", spy)
    return calls


@pytest.mark.parametrize("method", ["lfm", "global"])
def test_every_cli_knob_reaches_the_policy_and_its_file(demos, tmp_path, capsys, fit_calls, method):
    d, p = str(tmp_path / "d.npz"), str(tmp_path / "p.pt")
    save_demos(d, demos)
    assert cli_main(["train", "--demos", d, "--method", method, "--seed", "3", "--out", p, *_flags(KNOBS)]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["recipe"] == KNOBS and printed["seed"] == 3
    (options,) = fit_calls
    assert {k: options[k] for k in ("lr", "weight_decay", "warmup", "lr_decay", "ema_decay", "seed")} == \
        {"lr": 3e-4, "weight_decay": 1e-4, "warmup": 2, "lr_decay": "cosine", "ema_decay": 0.9, "seed": 3}
    policy = load_policy(p)
    assert policy.recipe == PolicyRecipe(**KNOBS)
    assert type(policy.flow.matcher) is ConditionalFlowMatcher and policy.flow.matcher.sigma == 0
    blocks = 3 if method == "lfm" else 1
    assert policy.flow.schedule == (tl.OUSchedule(0.2, 1.25, 3) if method == "lfm" else tl.OUSchedule.global_flow())
    n_windows = demos.action.shape[0]
    block_batch = math.ceil(64 / blocks)  # block_batch="split"
    per_block = math.ceil(n_windows / block_batch / blocks)
    expected = _free_share_split(3 * per_block, 3, 0.5) if blocks == 3 else per_block  # the knob reaches fit
    assert options["batch_size"] == block_batch and options["batches_per_block"] == expected, options
    assert policy.prediction == "data" and isinstance(policy.flow.nets[0], DataPrediction)
    assert policy.flow.nets[0].path == "linear"
    config = policy.flow.nets[0].net.config
    assert config["width"] >= 16 and config["activation"] == "softplus20" and config["n_freq"] == 1
    assert policy.network == "mlp"


def test_bench_reads_the_same_flags():
    args, recipe = load_benchmark("bench_policy").parse_args(_flags(KNOBS))
    assert recipe == PolicyRecipe(**KNOBS) and args.seeds == 3 and args.episodes == 50
    args, recipe = load_benchmark("bench_policy").parse_args([])
    assert recipe == PolicyRecipe()


def test_recipe_defaults_checks_and_round_trip(demos, tmp_path):
    default = PolicyRecipe()
    assert default.schedule("lfm") == tl.OUSchedule() == tl.OUSchedule(0.25, 1.0, 3) == DEFAULT_LFM_SCHEDULE
    assert type(default.matcher()) is VariancePreservingConditionalFlowMatcher and default.decay is None
    assert PolicyRecipe.from_dict(json.loads(json.dumps(PolicyRecipe(**KNOBS).to_dict()))) == PolicyRecipe(**KNOBS)
    for bad in ({"path": "ot"}, {"blocks": 0}, {"h0": -1.0}, {"lr_decay": "step"}, {"ema_decay": 1.5},
                {"network": "unet", "width": 40}, {"weight_decay": -1.0}, {"activation": "swish"}, {"n_freq": -1},
                {"free_share": 1.0}, {"free_share": 0.0}):
        with pytest.raises(ValueError):
            PolicyRecipe(**bad)
    with pytest.raises(ValueError, match="unknown recipe fields"):
        PolicyRecipe.from_dict({"h0": 0.2, "sigma": 0.1})
    # legacy positional overrides of build_policy still win over the recipe
    assert build_policy("lfm", demos.obs_dims, 2, "mlp", 16, 2).recipe == PolicyRecipe(width=16, blocks=2)
    recipe = PolicyRecipe(**{**KNOBS, "path": "trig", "lr_decay": "none"})
    for method in ("lfm", "regression"):
        torch.manual_seed(0)
        policy = build_policy(method, demos.obs_dims, 2, recipe=recipe)
        policy.fit(demos, **recipe.fit_options(), seed=0, progress=False)
        policy.save(tmp_path / "p.pt")
        again = load_policy(tmp_path / "p.pt")
        assert again.recipe == recipe and type(again) is type(policy)
        if method == "lfm":
            assert again.flow.schedule == policy.flow.schedule == tl.OUSchedule(0.2, 1.25, 3)
            assert type(again.flow.matcher) is VariancePreservingConditionalFlowMatcher and again.ode == policy.ode
        obs = {"pos": torch.randn(3, 2, 2) * 0.3}
        a = policy.predict_action(obs, generator=torch.Generator().manual_seed(1))["action"]
        assert torch.equal(a, again.predict_action(obs, generator=torch.Generator().manual_seed(1))["action"])


@pytest.mark.parametrize("method", ["global", "regression"])
def test_snapshot_equals_the_run_of_its_budget(demos, method):
    """The checkpoint definition: a snapshot of one run after e epochs is the policy of a run with budget e."""
    recipe = PolicyRecipe(width=16, batch_size=32, warmup=3, ema_decay=0.9, epochs=2.0)
    obs = {"pos": torch.randn(4, 2, 2) * 0.3}
    snaps = []
    for ckpt in train_checkpoints(method, demos, recipe, [1.0, 2.0], seed=5):
        assert ckpt.kind == "snapshot"
        snaps.append(ckpt.policy.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"])
    for budget, snap in zip((1.0, 2.0), snaps):  # independent runs with these budgets
        torch.manual_seed(5)
        run = build_policy(method, demos.obs_dims, 2, recipe=recipe)
        run.fit(demos, **{**recipe.fit_options(), "epochs": budget}, seed=5, progress=False)
        assert torch.allclose(snap, run.predict_action(obs, generator=torch.Generator().manual_seed(0))["action"],
                              atol=1e-6)
    assert not torch.allclose(snaps[0], snaps[1])
    # cosine decay depends on the total budget: every checkpoint is then its own run
    kinds = [c.kind for c in train_checkpoints(method, demos, recipe.replace(lr_decay="cosine", epochs=0.5), [0.5], 5)]
    assert kinds == ["run"]


def test_lfm_checkpoints_are_runs_of_their_budget(demos):
    recipe = PolicyRecipe(width=16, batch_size=32, blocks=2)
    ckpts = [(c.epochs, c.kind, c.policy.flow.n_trained) for c in train_checkpoints("lfm", demos, recipe, [2, 1], 0)]
    assert ckpts == [(1.0, "run", 2), (2.0, "run", 2)]


def test_checkpoint_grid():
    assert checkpoint_epochs(100, 20) == [20.0, 40.0, 60.0, 80.0, 100.0]
    assert checkpoint_epochs(50, 20) == [20.0, 40.0, 50.0] and checkpoint_epochs(1, 5) == [1.0]
    assert checkpoint_epochs(0.3, 0.1) == pytest.approx([0.1, 0.2, 0.3])
    with pytest.raises(ValueError):
        checkpoint_epochs(10, 0)


def test_summary_math_by_hand():
    rates = {("lfm", 0): [0.1, 0.5, 0.4, 0.3], ("lfm", 1): [0.2, 0.2, 0.6, 0.5], ("lfm", 2): [0.0, 0.9, 0.3, 0.3],
             ("global", 0): [0.7, 0.8, 0.6, 0.9]}
    records = [{"method": m, "seed": s, "epochs": 10.0 * (i + 1), "success_rate": r, "seconds_per_chunk": 0.01 * (s + 1),
                "nfe_per_chunk": 64.0, "parameters": 100, "checkpoint": "run", "train_seconds": 1.0}
               for (m, s), rs in rates.items() for i, r in reversed(list(enumerate(rs)))]  # any order
    out = summarize(records, last=3)
    lfm = out["lfm"]
    maxima, lasts = [0.5, 0.6, 0.9], [(0.5 + 0.4 + 0.3) / 3, (0.2 + 0.6 + 0.5) / 3, (0.9 + 0.3 + 0.3) / 3]
    assert lfm["max"]["mean"] == pytest.approx(sum(maxima) / 3)
    assert lfm["max"]["se"] == pytest.approx(statistics.stdev(maxima) / math.sqrt(3))
    assert lfm["last"]["mean"] == pytest.approx(sum(lasts) / 3)
    assert lfm["last"]["se"] == pytest.approx(statistics.stdev(lasts) / math.sqrt(3))
    assert [p["epochs"] for p in lfm["curve"]] == [10, 20, 30, 40]
    assert lfm["curve"][1]["mean"] == pytest.approx(1.6 / 3)
    assert lfm["curve"][1]["se"] == pytest.approx(statistics.stdev([0.5, 0.2, 0.9]) / math.sqrt(3))
    assert lfm["seconds_per_chunk"]["mean"] == pytest.approx(0.02) and lfm["seeds"] == [0, 1, 2]
    g = out["global"]  # one seed: no SE
    assert g["max"] == {"mean": 0.9, "se": None, "values": [0.9]} and g["last"]["mean"] == pytest.approx(2.3 / 3)
    with pytest.raises(ValueError, match="other epochs"):
        summarize([r for r in records if not (r["seed"] == 1 and r["epochs"] == 40.0)])


def test_bench_quick_runs_end_to_end(tmp_path):
    argv = ["--quick", "--demos", "6", "--width", "16", "--episodes", "2", "--epochs", "2", "--eval-every", "1",
            "--out", str(tmp_path)]
    assert load_benchmark("bench_policy").main(argv) == 0
    data = json.loads((tmp_path / "policy_point_quick.json").read_text())
    results = data["results"]
    assert data["provenance"]["commit"] and data["provenance"]["command"] and data["provenance"]["machine"]
    assert results["protocol"]["checkpoint_epochs"] == [1.0, 2.0] and results["protocol"]["seeds"] == [0, 1]
    assert len(results["records"]) == 3 * 2 * 2  # methods x seeds x checkpoints
    assert results["recipe"] == PolicyRecipe(width=16, epochs=2.0).to_dict()
    summary = results["summary"]
    assert summary["lfm"]["checkpoint"] == "run" and summary["global"]["checkpoint"] == "snapshot"
    assert summary["lfm"]["nfe_per_chunk"] == summary["global"]["nfe_per_chunk"] == 72  # 18 RK4 steps
    assert summary["global"]["max"]["se"] is not None
    for method in ("global", "lfm", "regression"):  # compute: per checkpoint, growing; per chunk
        assert len(summary[method]["train_flops"]) == 2 and 0 < summary[method]["train_flops"][0] < \
            summary[method]["train_flops"][1] and summary[method]["flops_per_chunk"] > 0
    # at equal NFE and parameters an LFM chunk costs a third of the global flow's (blocks a third the size)
    assert summary["lfm"]["flops_per_chunk"] == pytest.approx(summary["global"]["flops_per_chunk"] / 3, rel=0.1)
    assert "| MFLOPs per chunk | training GFLOPs (last checkpoint) |" in (tmp_path / "policy_point_quick.md").read_text()
    for suffix in (".md", ".png", "_chunks.png"):
        assert (tmp_path / f"policy_point_quick{suffix}").stat().st_size > 0


def test_bench_first_seed_runs_the_named_seeds(tmp_path):
    argv = ["--quick", "--demos", "6", "--width", "16", "--episodes", "2", "--epochs", "1", "--eval-every", "1",
            "--methods", "regression", "--seeds", "2", "--first-seed", "3", "--out", str(tmp_path)]
    bench = load_benchmark("bench_policy")
    assert bench.main(argv) == 0
    results = json.loads((tmp_path / "policy_point_quick.json").read_text())["results"]
    assert results["protocol"]["seeds"] == [3, 4]
    assert sorted(r["seed"] for r in results["records"]) == [3, 4]
    with pytest.raises(SystemExit):
        bench.parse_args(["--first-seed", "-1"])


def test_merged_runs_equal_one_run_over_their_seeds(tmp_path):
    bench, merger = load_benchmark("bench_policy"), load_benchmark("policy_merge_runs")
    common = ["--quick", "--demos", "6", "--width", "16", "--episodes", "2", "--epochs", "2", "--eval-every", "1",
              "--methods", "regression,global"]
    assert bench.main(common + ["--seeds", "2", "--out", str(tmp_path / "both")]) == 0
    for seed in (0, 1):
        assert bench.main(common + ["--seeds", "1", "--first-seed", str(seed), "--out", str(tmp_path / f"s{seed}")]) == 0
    parts = [str(tmp_path / f"s{seed}" / "policy_point_quick.json") for seed in (1, 0)]
    assert merger.main(parts + ["--out", str(tmp_path / "merged")]) == 0
    whole = json.loads((tmp_path / "both" / "policy_point_quick.json").read_text())["results"]
    merged = json.loads((tmp_path / "merged" / "policy_point_quick.json").read_text())["results"]
    assert merged["protocol"] == whole["protocol"] and merged["recipe"] == whole["recipe"]
    strip = ("seconds_per_chunk", "train_seconds")  # wall time differs between runs; the rest must not
    assert sorted((r["method"], r["seed"], r["epochs"], r["success_rate"]) for r in merged["records"]) == \
        sorted((r["method"], r["seed"], r["epochs"], r["success_rate"]) for r in whole["records"])
    for method, row in whole["summary"].items():
        assert {k: v for k, v in merged["summary"][method].items() if k not in strip} == \
            {k: v for k, v in row.items() if k not in strip}
    assert [s["seeds"] for s in merged["sources"]] == [[1], [0]]
    assert "over 2 training seed(s) (0, 1)" in (tmp_path / "merged" / "policy_point_quick.md").read_text()
    with pytest.raises(SystemExit):  # a seed twice
        merger.main([parts[0], parts[0], "--out", str(tmp_path / "bad")])
    # the same seeds split by method instead: one run per method, merged, equal the run of both
    for method in ("regression", "global"):
        assert bench.main(common[:-1] + [method, "--seeds", "2", "--out", str(tmp_path / method)]) == 0
    by_method = [str(tmp_path / m / "policy_point_quick.json") for m in ("global", "regression")]
    assert merger.main(by_method + ["--out", str(tmp_path / "by_method")]) == 0
    joined = json.loads((tmp_path / "by_method" / "policy_point_quick.json").read_text())["results"]
    assert joined["protocol"] == whole["protocol"] and set(joined["summary"]) == {"regression", "global"}
    assert sorted((r["method"], r["seed"], r["epochs"], r["success_rate"]) for r in joined["records"]) == \
        sorted((r["method"], r["seed"], r["epochs"], r["success_rate"]) for r in whole["records"])
    assert bench.main(common + ["--seeds", "1", "--first-seed", "2", "--lr", "1e-3", "--out", str(tmp_path / "lr")]) == 0
    with pytest.raises(ValueError, match=r"another recipe than run 1 \(fields \['lr'\]\)"):
        merger.merge([json.loads(Path(parts[0]).read_text()),
                      json.loads((tmp_path / "lr" / "policy_point_quick.json").read_text())])


def test_merge_pools_the_seeds_of_synthetic_runs():
    merger = load_benchmark("policy_merge_runs")

    def run(seed, curve):
        records = [{"method": "lfm", "seed": seed, "epochs": e, "success_rate": v, "seconds_per_chunk": 0.01,
                    "nfe_per_chunk": 72.0, "parameters": 10, "checkpoint": "run"} for e, v in zip((10.0, 20.0), curve)]
        protocol = {"checkpoint_epochs": [10.0, 20.0], "seeds": [seed], "episodes": 5, "eval_seed": 1000, "last": 1,
                    "demos": 6, "demo_batch": 100, "task": "can"}
        return {"provenance": {}, "results": {"recipe": PolicyRecipe().to_dict(), "protocol": protocol,
                                              "records": records, "demos": {"expert_success_rate": 1.0}}}

    diverged = run(5, [0.6, 0.5])
    diverged["results"]["records"][1]["nonfinite_episodes"] = 3
    older = run(0, [0.2, 0.4])
    del older["results"]["recipe"]["prediction"]  # written before the field existed: velocity, the default
    merged = merger.merge([older, diverged, run(2, [0.1, 0.9])])
    assert merged["recipe"] == PolicyRecipe().to_dict()
    assert merged["protocol"]["seeds"] == [0, 2, 5]
    text = merger.bench_policy.table(merged["protocol"], PolicyRecipe(), merged["summary"], merged["records"],
                                     merged["demos"], "policy_can")
    assert "NaN/Inf actions (a diverged network): lfm seed 5 at 20 ep: 3." in text
    lfm = merged["summary"]["lfm"]
    assert lfm["max"]["mean"] == pytest.approx((0.4 + 0.6 + 0.9) / 3)
    assert lfm["last"]["se"] == pytest.approx(statistics.stdev([0.4, 0.5, 0.9]) / math.sqrt(3))
    other = run(3, [0.1, 0.1])
    other["results"]["protocol"]["episodes"] = 50
    with pytest.raises(ValueError, match="episodes=50"):
        merger.merge([run(0, [0.2, 0.4]), other])
    with pytest.raises(ValueError, match="at least two"):
        merger.merge([run(0, [0.2, 0.4])])


def _fake_run(directory, recipe, success, seconds=None):
    """A bench_policy result file with ``success[method][seed]`` = that seed's curve (epochs 10, 20)
    and, given ``seconds`` (the same layout), the training seconds of each checkpoint."""
    records = [{"method": m, "seed": s, "epochs": e, "success_rate": v}
               for m, seeds in success.items() for s, curve in enumerate(seeds) for e, v in zip((10.0, 20.0), curve)]
    for r in records if seconds else ():
        r["train_seconds"] = seconds[r["method"]][r["seed"]][int(r["epochs"] // 10) - 1]
    protocol = {"checkpoint_epochs": [10.0, 20.0], "seeds": [0, 1], "episodes": 5, "eval_seed": 1000, "last": 1,
                "demos": 6, "demo_batch": 100, "task": "point"}
    directory.mkdir(parents=True)
    (directory / "policy_point.json").write_text(json.dumps({
        "provenance": {"command": "bench", "commit": "0123456789"},
        "results": {"recipe": recipe.to_dict(), "protocol": protocol, "records": records}}))


def test_screen_table_pairs_seeds_and_borrows_the_global_runs(tmp_path):
    mod = load_benchmark("policy_screen_table")
    base, fast = PolicyRecipe(lr=1e-3), PolicyRecipe(lr=3e-3)
    _fake_run(tmp_path / "base", base, {"global": [(0.5, 0.9), (0.7, 0.9)], "lfm": [(0.1, 0.5), (0.5, 0.7)]})
    _fake_run(tmp_path / "fast", fast, {"global": [(0.8, 1.0), (0.8, 1.0)], "lfm": [(0.6, 0.8), (0.4, 1.0)]})
    _fake_run(tmp_path / "fast_shared", fast.replace(pool="ou", shared=True), {"lfm": [(0.2, 0.4), (0.2, 0.6)]})
    _fake_run(tmp_path / "fast_steps", fast.replace(h0=0.15, rho=1.3), {"lfm": [(0.2, 0.4), (0.2, 0.6)]})
    _fake_run(tmp_path / "fast_blocks", fast.replace(blocks=2), {"lfm": [(0.2, 0.4), (0.2, 0.6)]})
    result = mod.screen(mod.load(tmp_path, "fast"))
    assert list(result["variants"]) == ["fast", "base", "fast_blocks", "fast_shared", "fast_steps"]  # the base first
    # the OU steps do not change the global flow; the number of blocks sets its width, so nothing to borrow
    assert result["variants"]["fast_steps"]["global_from"] == "fast"
    assert result["variants"]["fast_blocks"]["global_from"] == ""
    row = result["variants"]["base"]
    assert row["changes"] == {"lr": 1e-3} and row["global_from"] == "base"
    diff = row["curves"]["lfm - global"]
    assert diff[0]["mean"] == pytest.approx(-0.3) and diff[0]["se"] == pytest.approx(0.1)  # sd 0.1 * sqrt(2), over sqrt(2)
    assert diff[1]["mean"] == pytest.approx(-0.3) and diff[1]["se"] == pytest.approx(0.1)
    shared = result["variants"]["fast_shared"]  # no global runs of its own: those of `fast`, whose global is the same
    assert shared["global_from"] == "fast" and shared["curves"]["global"][1]["mean"] == pytest.approx(1.0)
    assert shared["curves"]["lfm - global"][0]["mean"] == pytest.approx(-0.6)
    assert mod.main([str(tmp_path), "--base", "fast"]) == 0
    assert "runs of `fast`" in (tmp_path / "screen.md").read_text() and (tmp_path / "screen.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="not a variant"):
        mod.load(tmp_path, "missing")


def test_screen_table_compares_at_equal_training_seconds(tmp_path):
    mod = load_benchmark("policy_screen_table")
    recipe = PolicyRecipe(lr=3e-3)
    _fake_run(tmp_path / "timed", recipe, {"global": [(0.8, 1.0), (0.8, 1.0)], "lfm": [(0.6, 0.8), (0.4, 1.0)]},
              seconds={"global": [(2.0, 4.0), (2.0, 6.0)], "lfm": [(1.0, 3.0), (1.0, 3.0)]})
    _fake_run(tmp_path / "timed_steps", recipe.replace(h0=0.15), {"lfm": [(0.2, 0.4), (0.2, 0.6)]},
              seconds={"lfm": [(1.0, 3.0), (1.0, 3.0)]})
    assert mod.success_at([(2.0, 0.8), (6.0, 1.0)], 3.0) == pytest.approx(0.85)
    assert mod.success_at([(2.0, 0.8), (6.0, 1.0)], 1.0) is None and mod.success_at([(2.0, 0.8)], 7.0) is None
    result = mod.screen(mod.load(tmp_path, "timed"))
    timed = result["variants"]["timed"]["equal_time"]
    assert [s["mean"] for s in timed["global seconds"]] == pytest.approx([2.0, 5.0])
    # 10 ep: LFM's 1 s is before the global runs' first checkpoint (2 s): no comparison
    assert timed["lfm - global"][0] is None
    # 20 ep at 3 s: global 0.9 (seed 0) and 0.85 (seed 1), so LFM - global = -0.1 and +0.15
    assert timed["lfm - global"][1]["mean"] == pytest.approx(0.025)
    assert timed["lfm - global"][1]["se"] == pytest.approx(0.125)
    # borrowed global runs were timed in another invocation: no equal-time row
    assert "equal_time" not in result["variants"]["timed_steps"]
    assert mod.main([str(tmp_path)]) == 0
    assert "At equal training seconds" in (tmp_path / "screen.md").read_text()
    assert (tmp_path / "screen_seconds.png").stat().st_size > 0


def test_free_share_splits_lfm_batches_and_keeps_the_total(demos):
    assert _free_share_split(400, 4, 0.5) == [67, 67, 66, 200]
    assert _free_share_split(7, 4, 0.5) == [1, 1, 1, 4] and _free_share_split(4, 4, 0.9) == [1, 1, 1, 1]
    recipe = PolicyRecipe(width=16, blocks=3, epochs=20.0, batch_size=32, free_share=0.6)
    policy = build_policy("lfm", demos.obs_dims, demos.action.shape[1], recipe=recipe)
    equal = policy.batches_per_block(demos, recipe.epochs, recipe.batch_size)
    report = policy.fit(demos, **recipe.fit_options(), seed=0, progress=False)
    batches = [block.batches for block in report.blocks]
    assert equal > 3 and sum(batches) == 3 * equal and batches[-1] == round(3 * equal * 0.6)
    assert abs(batches[0] - batches[1]) <= 1
    with pytest.raises(ValueError, match="free_share"):
        policy.fit(demos, epochs=1.0, free_share=1.5, progress=False)


def test_split_block_batch_gives_every_lfm_block_the_global_flows_steps(demos):
    recipe = PolicyRecipe(width=16, blocks=3, epochs=6.0, batch_size=32, block_batch="split")
    lfm = build_policy("lfm", demos.obs_dims, demos.action.shape[1], recipe=recipe)
    glob = build_policy("global", demos.obs_dims, demos.action.shape[1], recipe=recipe)
    windows = demos.action.shape[0]
    steps = math.ceil(recipe.epochs * windows / recipe.batch_size)  # the global flow's, batch 32
    assert glob.batches_per_block(demos, recipe.epochs, recipe.batch_size, "split") == steps
    per_block = math.ceil(recipe.epochs * windows / math.ceil(32 / 3) / 3)  # batches of 11 windows
    assert lfm.batches_per_block(demos, recipe.epochs, recipe.batch_size, "split") == per_block
    assert abs(per_block - steps) <= 2  # as many steps per block as the global flow, up to rounding
    report = lfm.fit(demos, **recipe.fit_options(), seed=0, progress=False)
    assert [block.batches for block in report.blocks] == [per_block] * 3
    lfm = build_policy("lfm", demos.obs_dims, demos.action.shape[1], recipe=recipe)
    same = lfm.fit(demos, **recipe.replace(block_batch="same").fit_options(), seed=0, progress=False)
    assert [block.batches for block in same.blocks] == [math.ceil(recipe.epochs * windows / 32 / 3)] * 3
    with pytest.raises(ValueError, match="block_batch"):
        lfm.fit(demos, epochs=1.0, block_batch="half", progress=False)
    with pytest.raises(ValueError, match="block_batch"):
        PolicyRecipe(block_batch="half")


def test_recipe_files_from_before_block_batch_read_as_the_batch_they_trained_with():
    old = PolicyRecipe().to_dict()
    del old["block_batch"]  # written before the knob existed: every block took batch_size
    assert PolicyRecipe.from_dict(old).block_batch == "same"
    assert PolicyRecipe().block_batch == "split" and PolicyRecipe().ema_decay == 0.999
    assert PolicyRecipe.from_dict(PolicyRecipe().to_dict()) == PolicyRecipe()


def test_policy_nfe_summary_pairs_seeds_and_finds_the_smallest_nfe_that_keeps_success():
    mod = load_benchmark("bench_policy_nfe")
    success = {("lfm", 1): (0.5, 0.7), ("lfm", 2): (0.9, 0.9), ("lfm", 4): (0.9, 1.0),
               ("global", 1): (0.85, 0.95), ("global", 2): (0.9, 0.9), ("global", 4): (0.9, 1.0)}
    records = [{"method": m, "seed": s, "setting": f"steps={k}", "block_steps": [k] * 3, "success": v[s],
                "nfe": 12.0 * k, "latency_s": 1e-3 * k} for (m, k), v in success.items() for s in (0, 1)]
    # steps chosen by a tolerance: per seed (2, 1, 1) and (2, 2, 1), 16 and 20 evaluations
    records += [{"method": m, "seed": s, "setting": "tol=0.1", "block_steps": b, "success": v, "nfe": 4.0 * sum(b),
                 "latency_s": 1e-3} for m in ("lfm", "global") for s, b, v in ((0, [2, 1, 1], 0.9), (1, [2, 2, 1], 1.0))]
    settings = [("steps", 1), ("steps", 2), ("steps", 4), ("tol", 0.1)]
    out = mod.summarize(records, settings, [0, 1])
    lfm = out["lfm"]["rows"]
    assert lfm[0]["change"]["mean"] == pytest.approx(-0.35) and lfm[0]["change"]["se"] == pytest.approx(0.05)
    assert lfm[1]["change"]["mean"] == pytest.approx(-0.05) and lfm[1]["change"]["se"] == pytest.approx(0.05)
    assert lfm[2]["latency_ms"]["mean"] == pytest.approx(4.0)
    # the chosen row: mean NFE over seeds, paired against the largest fixed NFE (4 steps), steps per seed
    assert lfm[3]["nfe"] == 18.0 and lfm[3]["change"]["mean"] == 0.0 and lfm[3]["block_steps"] == [[2, 1, 1], [2, 2, 1]]
    assert out["lfm"]["smallest_nfe_keeping"] == 18  # the chosen steps keep it with fewer than 24
    records = [r for r in records if r["setting"] != "tol=0.1"]
    out = mod.summarize(records, settings[:3], [0, 1])
    assert out["lfm"]["smallest_nfe_keeping"] == 24  # -0.05 ± 0.05 keeps it, -0.35 ± 0.05 does not
    assert out["global"]["smallest_nfe_keeping"] == 24  # a steady -0.05 (SE 0) at 12 does not keep it


def test_policy_nfe_bench_gives_both_flows_equal_nfe(tmp_path):
    mod = load_benchmark("bench_policy_nfe")
    assert mod.main(["--demos", "6", "--epochs", "1", "--seeds", "2", "--episodes", "3", "--steps", "1,2",
                     "--tols", "0.05", "--latency-episodes", "1", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "policy_nfe_point.json").read_text())["results"]
    for k in (1, 2):  # k RK4 steps per LFM block = 3k in the global flow's one block: 4 * 3k evaluations each
        nfe = {r["nfe"] for r in result["records"] if r["setting"] == f"steps={k}"}
        assert nfe == {12.0 * k}
    chosen = [r for r in result["records"] if r["setting"] == "tol=0.05"]
    assert len(chosen) == 4  # two methods, two seeds: the evaluations the chosen steps imply
    assert all(r["nfe"] == 4.0 * sum(r["block_steps"]) and len(r["block_steps"]) == (3 if r["method"] == "lfm" else 1)
               for r in chosen)
    for r in chosen:  # each block's last count tried is the chosen one, within the tolerance (or none was: 32)
        for errors, steps in zip(r["block_errors"], r["block_steps"]):
            last = max(errors, key=int)
            assert (int(last) == steps and errors[last] <= 0.05) or (steps == 32 and errors[last] > 0.05)
    assert all(r["latency_s"] > 0 for r in result["records"])
    text = (tmp_path / "policy_nfe_point.md").read_text()
    assert "Smallest NFE that keeps the success" in text and "chosen at tol 0.05" in text


def test_policy_chunk_error_holds_out_whole_episodes_and_scores_methods(tmp_path):
    script = load_benchmark("policy_chunk_error")
    demos = collect_demos("point", 5, seed=0)
    train, held = script.split_episodes(demos, 0.4)
    assert (train.n_episodes, held.n_episodes) == (3, 2)
    assert np.array_equal(np.concatenate([train.action, held.action]), demos.action)
    assert held.episode_ends[-1] == len(held.action) and train.episode_ends[-1] == len(train.action)
    with pytest.raises(ValueError, match="holdout"):
        script.split_episodes(demos, 1.0)
    assert script.main(["--task", "point", "--demos", "6", "--epochs", "1", "--width", "16", "--seeds", "2",
                        "--windows", "40", "--samples", "3", "--methods", "global,regression",
                        "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "policy_chunk_error_point.json").read_text())["results"]
    assert [r["method"] for r in out["runs"]] == ["global", "regression"] * 2
    assert all(np.isfinite(r["mse"]) and r["mse"] > 0 and len(r["mse_per_dim"]) == 2 for r in out["runs"])
    assert all(r["spread"] > 0 for r in out["runs"][::2]) and all(r["spread"] == 0 for r in out["runs"][1::2])
    for key in ("mse", "energy", "spread"):
        assert out["summary"][key]["regression - global"]["values"] == pytest.approx(
            [b[key] - a[key] for a, b in zip(out["runs"][::2], out["runs"][1::2])])


class _FixedDraws:
    """A stand-in policy whose k-th call returns the k-th of the given chunks."""

    n_obs_steps = 2

    def __init__(self, draws):
        self.draws = iter(draws)

    def predict_action(self, obs_dict, generator=None):
        return {"action": torch.from_numpy(next(self.draws))}


def test_chunk_scores_match_the_energy_score_by_hand():
    script = load_benchmark("policy_chunk_error")
    obs, action = torch.zeros(1, 2, 1), torch.zeros(1, 16, 1)
    action[0, 0] = 100.0  # the step before the last observation: not executed, so never scored
    # two samples of an 8-step chunk in one action dimension: all 3s (distance 3 * sqrt(8) from the
    # expert's zeros) and all 1s (distance sqrt(8)); they are 2 * sqrt(8) apart
    draws = [np.full((1, 8, 1), 3.0), np.full((1, 8, 1), 1.0)]
    score = script.chunk_scores(_FixedDraws(draws), obs, action, ["x"], {"x": 1}, seed=0, samples=2)
    root8 = np.sqrt(8)
    assert score["energy"] == pytest.approx((3 * root8 + root8) / 2 - 0.5 * 2 * root8)
    assert score["mse"] == pytest.approx((9 + 1) / 2)
    assert score["spread"] == pytest.approx(2.0)  # sample variance of {3, 1}, ddof = 1


def test_parse_bench_args_names_the_flags_that_are_too_low_and_checks_the_recipe(capsys):
    import argparse

    from torchcfm_local.policy.cli import parse_bench_args

    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="global,lfm")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--demo-batch", type=int, default=2)
    PolicyRecipe.add_arguments(parser)
    args, recipe = parse_bench_args(parser, ["--methods", "lfm"], ("global", "lfm"), ("seeds", "demo_batch"))
    assert args.methods == ["lfm"] and recipe == PolicyRecipe()
    for argv, message in ((["--demo-batch", "0"], "--demo-batch must be >= 1"),
                          (["--methods", "regression"], "subset of global,lfm"),
                          (["--pool", "pushforward", "--shared"], "needs pool='ou'")):
        with pytest.raises(SystemExit):
            parse_bench_args(parser, argv, ("global", "lfm"), ("seeds", "demo_batch"))
        error = capsys.readouterr().err.strip().splitlines()[-1]  # the line after the usage
        assert message in error and "--seeds" not in error


def test_parse_methods_keeps_the_order_and_refuses_unknown_or_empty_lists():
    from torchcfm_local.policy.cli import parse_methods

    assert parse_methods(" lfm, global ,") == ["lfm", "global"]
    with pytest.raises(ValueError, match="subset of global,lfm"):
        parse_methods("global,regression", ("global", "lfm"))
    with pytest.raises(ValueError, match="got ','"):
        parse_methods(",")


def test_policy_block_probe_checks_every_block_against_the_ou_chain(tmp_path):
    script = load_benchmark("policy_block_probe")
    assert script.main(["--task", "point", "--demos", "6", "--epochs", "1", "--width", "16", "--seeds", "1",
                        "--windows", "20", "--samples", "2", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "policy_block_probe_point.json").read_text())["results"]
    rows = {(r["method"], r["block"]): r for r in out["runs"]}
    assert sorted(rows) == [("global", 1), ("lfm", 1), ("lfm", 2), ("lfm", 3)]
    for (method, n), row in rows.items():
        assert row["T"] == pytest.approx(DEFAULT_LFM_SCHEDULE.time_before(n) if method == "lfm" else 0.0)
        assert row["ou"] == pytest.approx(1 - math.exp(-2 * row["T"]))
        assert row["sampled"] > 0 and np.isfinite(row["sampled"])
        if n == 1:  # block 1's data side is the demos: nothing encoded, nothing to undo
            assert row["encoded"] == 0 and row["undone"] is None
        else:
            assert row["encoded"] > 0 and row["undone"] > 0


def test_policy_paired_runs_pairs_seed_by_seed(tmp_path, capsys):
    script = load_benchmark("policy_paired_runs")

    def write(name, rates):  # rates: {(method, seed, epochs): success}
        records = [{"method": m, "seed": s, "epochs": e, "success_rate": r} for (m, s, e), r in rates.items()]
        (tmp_path / name).write_text(json.dumps({"results": {"records": records}}))

    write("new.json", {("global", 0, 50.0): 0.9, ("global", 1, 50.0): 0.7, ("lfm", 0, 50.0): 0.5})
    write("base.json", {("global", 0, 50.0): 0.6, ("global", 1, 50.0): 0.6, ("global", 2, 50.0): 0.1,
                        ("lfm", 0, 50.0): 0.4, ("lfm", 1, 50.0): 0.3})
    assert script.main([str(tmp_path / "new.json"), str(tmp_path / "base.json")]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    # seed 2 is only in the base run, so it is left out: differences +0.3 and +0.1
    assert rows[0] == "| global | global | 50 | 2 | 0.80 | 0.60 | +0.20 ± 0.10 |"
    assert rows[1] == "| lfm | lfm | 50 | 1 | 0.50 | 0.40 | +0.10 |"
    assert rows[2] == "| global | lfm | 50 | 2 | 0.80 | 0.35 | +0.45 ± 0.05 |"
