"""Smoke test of benchmarks/bench_distill.py: the --quick run, two seeds, written to a temp folder."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_distill.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_distill_under_test", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_has_equal_parameter_rows_and_mode_tv(tmp_path):
    mod = _load()
    figures = importlib.util.find_spec("matplotlib") is not None
    mod.main(["--quick", "--out", str(tmp_path), "--datasets", "mixture_unequal", "--seeds", "0,1", "--threads", "1",
              "--n-train", "1000", "--n-eval", "300", "--batches", "40", "--n-pairs", "300", "--distill-batches", "20",
              "--reflow-pairs", "300", "--reflow-batches", "20", "--timing-n", "50"]
             + ([] if figures else ["--no-figures"]))
    record = json.loads((tmp_path / "distill.json").read_text())
    assert {"command", "commit", "machine"} <= set(record["provenance"])
    rows = record["results"]["rows"]
    assert all(r["seeds"] == [0, 1] for r in rows)
    by_method = {r["method"]: r for r in rows}

    # main rows: at each NFE M, the LFM and global distilled samplers have the same parameter count
    for k, m in ((4, 1), (2, 2), (1, 4)):
        lfm, glob = by_method[f"LFM distilled k={k}"], by_method[f"global distilled M={m}, equal params"]
        assert lfm["group"] == glob["group"] == "equal"
        assert lfm["nfe"]["mean"] == glob["nfe"]["mean"] == m
        assert lfm["params"] == glob["params"] > 0
        assert glob["warm"] == "no"  # narrower than the global teacher: cold start
        # equal student compute at equal NFE
        assert lfm["train_samples"]["mean"] == glob["train_samples"]["mean"]
        reflowed = by_method[f"global reflow + distilled M={m}, equal params"]
        assert reflowed["params"] == by_method[f"LFM reflow + distilled k={k}"]["params"] == lfm["params"]
    teacher = by_method["global teacher dopri5 (quality)"]["params"]
    for m in (2, 4):
        extra = by_method[f"global distilled M={m}, unequal params (M x teacher)"]
        assert extra["group"] == "unequal" and extra["params"] == m * teacher
    for name in ("global reflow, euler x1/block", "global reflow, euler x4/block", "LFM reflow, euler x1/block"):
        assert by_method[name]["group"] == "reflow"

    # mode TV on every row of the mixture, mean ± SE over the two seeds
    for r in rows:
        assert 0.0 <= r["mode_tv"]["mean"] <= 1.0 and len(r["mode_tv"]["values"]) == 2
        assert r["energy_distance"]["se"] is not None
    md = (tmp_path / "distill.md").read_text()
    assert "| mode TV |" in md and "equal params" in md and "unequal params (M x teacher)" in md
    assert "Commit:" in md
    if figures:
        assert (tmp_path / "distill_quality_vs_nfe.png").stat().st_size > 0
        assert (tmp_path / "distill_samples_mixture_unequal.png").stat().st_size > 0


def test_targets_table_picks_the_best_few_step_sampler_and_pairs_seeds(tmp_path):
    spec = importlib.util.spec_from_file_location("distill_targets_under_test", SCRIPT.parent / "distill_targets.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    def row(method, family, kind, group, nfe, seed, ed, tv=None):
        return {"dataset": "mix", "method": method, "family": family, "kind": kind, "group": group, "nfe": nfe,
                "seed": seed, "energy_distance": ed, "mode_tv": tv, "params": 10}

    rows = []
    for seed, shift in ((0, 0.0), (1, 0.1), (2, 0.3)):
        rows += [row("data", "reference", "reference", "reference", 0.0, seed, 0.0),
                 row("LFM teacher dopri5", "LFM teacher", "adaptive", "teacher", 2.0, seed, 0.0 + shift, 0.0),
                 row("LFM distilled k=2", "LFM distilled", "distilled", "equal", 2.0, seed, 2.0 + shift, 0.2),
                 row("LFM reflow, euler x1/block", "LFM reflow", "euler", "reflow", 2.0, seed, 1.0 + shift, 0.1),
                 row("global distilled M=2, unequal", "global distilled", "distilled", "unequal", 2.0, seed, 0.5, 0.0),
                 row("global distilled M=2, equal params", "global distilled", "distilled", "equal", 2.0, seed,
                     1.5 + 2 * shift, 0.3)]
    path = tmp_path / "distill.json"
    path.write_text(json.dumps({"results": {"per_seed_rows": rows}}))
    (entry,) = mod.main([str(path), "--nfe", "2", "4", "--out", str(tmp_path)])  # nothing at 4 NFE
    # dopri5 and the unequal-parameter row are not few-step samplers at equal parameters
    assert entry["lfm_method"] == "LFM reflow, euler x1/block"
    assert entry["global_method"] == "global distilled M=2, equal params"
    diffs = [-0.5 - shift for shift in (0.0, 0.1, 0.3)]
    assert abs(entry["energy_distance"]["diff"]["mean"] - sum(diffs) / 3) < 1e-12
    assert entry["energy_distance"]["diff"]["se"] > 0 and abs(entry["mode_tv"]["diff"]["mean"] + 0.2) < 1e-12
    assert "| mix | 2 | LFM reflow, euler x1/block |" in (tmp_path / "distill_targets.md").read_text()
