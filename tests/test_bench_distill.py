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
