import json
import math

import pytest

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
