"""The recipe's pool and shared knobs: validation, flags, equal parameters, shared LFM policies fit, act and reload."""
import argparse
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import torchcfm_local as tl
from torchcfm_local.policy import FlowPolicy, RegressionPolicy, collect_demos, load_policy, save_demos
from torchcfm_local.policy.cli import build_policy, main as cli_main
from torchcfm_local.policy.recipe import PolicyRecipe
from torchcfm_local.shared import SharedBlock, SharedVelocity, shared_network

ROOT = Path(__file__).resolve().parents[1]
#: a tiny shared recipe: 3 blocks, a few steps
SHARED = PolicyRecipe(blocks=3, width=16, epochs=2.0, batch_size=32, pool="ou", shared=True)
OBS = {"pos": torch.randn(5, 2, 2, generator=torch.Generator().manual_seed(3)) * 0.3}


@pytest.fixture(scope="module")
def demos():
    return collect_demos("point", 10, seed=0)


def _parse(argv):
    parser = argparse.ArgumentParser()
    PolicyRecipe.add_arguments(parser)
    return PolicyRecipe.from_args(parser.parse_args(argv))


def _act(policy, seed=1):
    return policy.predict_action(OBS, generator=torch.Generator().manual_seed(seed))["action"]


def test_recipe_checks_defaults_and_old_dicts():
    default = PolicyRecipe()
    assert default.pool == "pushforward" and default.shared is False
    assert default.fit_options()["pool"] == "pushforward" and SHARED.fit_options()["pool"] == "ou"
    with pytest.raises(ValueError, match="shared=True needs pool='ou'"):
        PolicyRecipe(shared=True)
    with pytest.raises(ValueError, match="pool must be one of"):
        PolicyRecipe(pool="fresh")
    for bad in ("yes", 1):
        with pytest.raises(ValueError, match="shared must be True or False"):
            PolicyRecipe(pool="ou", shared=bad)
    # a policy file's recipe from before the knobs existed takes what those versions did
    old = {"h0": 0.2, "rho": 1.25, "blocks": 3, "path": "linear", "network": "mlp", "width": 16, "epochs": 1.0,
           "batch_size": 64, "lr": 3e-4, "weight_decay": 0.0, "warmup": 0, "lr_decay": "none", "ema_decay": None}
    assert PolicyRecipe.from_dict(old) == PolicyRecipe(**old, pool="pushforward", shared=False, block_batch="same")
    assert default.to_dict()["pool"] == "pushforward" and default.to_dict()["shared"] is False
    assert PolicyRecipe.from_dict(PolicyRecipe(**old).to_dict()) == PolicyRecipe(**old)
    written = json.loads(json.dumps(SHARED.to_dict()))
    assert written["pool"] == "ou" and written["shared"] is True and PolicyRecipe.from_dict(written) == SHARED
    ou = PolicyRecipe(pool="ou")
    assert PolicyRecipe.from_dict(ou.to_dict()) == ou


def test_cli_flags_parse():
    assert _parse([]) == PolicyRecipe()
    assert _parse(["--pool", "ou", "--shared"]) == PolicyRecipe(pool="ou", shared=True)
    assert _parse(["--pool", "ou", "--shared", "true"]) == PolicyRecipe(pool="ou", shared=True)
    assert _parse(["--pool", "ou", "--shared", "False"]) == PolicyRecipe(pool="ou")
    for argv in (["--shared", "maybe"], ["--pool", "fresh"]):
        with pytest.raises(SystemExit):
            _parse(argv)
    with pytest.raises(ValueError, match="needs pool='ou'"):
        _parse(["--shared"])


def test_bench_reads_the_flags_and_describes_shared_blocks(demos):
    spec = importlib.util.spec_from_file_location("bench_policy", ROOT / "benchmarks" / "bench_policy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args, recipe = bench.parse_args(["--pool", "ou", "--shared", "--lr-decay", "cosine"])
    assert recipe == PolicyRecipe(pool="ou", shared=True, lr_decay="cosine")
    assert "OU pool" in bench.lfm_description(PolicyRecipe(pool="ou"))
    assert "OU pool" not in bench.lfm_description(PolicyRecipe())
    stat = {"mean": 0.5, "se": 0.1}
    row = {"parameters": 1000, "checkpoint": "run", "max": stat, "last": stat, "nfe_per_chunk": 64.0,
           "seconds_per_chunk": {"mean": 0.01, "se": None, "values": [0.01]}, "curve": [stat]}
    protocol = {"checkpoint_epochs": [100.0], "seeds": [0], "last": 3, "episodes": 50, "task": "point", "demos": 200}
    text = bench.table(protocol, recipe, {"lfm": row}, [], {"expert_success_rate": 1.0}, "policy_point_shared")
    assert f"Recipe: `{recipe.to_dict()}`." in text and "'shared': True" in text
    assert "LFM: 3 blocks" in text and "share one network with a learned block embedding" in text


@pytest.mark.parametrize("network, width, tolerance", [("mlp", 32, 0.02), ("unet", 128, 0.05)])
def test_separate_shared_and_global_have_equal_parameters(demos, network, width, tolerance):
    recipe = PolicyRecipe(network=network, width=width, pool="ou", shared=True)
    separate = build_policy("lfm", demos.obs_dims, 2, recipe=recipe.replace(shared=False))
    shared, glob = (build_policy(m, demos.obs_dims, 2, recipe=recipe) for m in ("lfm", "global"))
    assert isinstance(shared_network(shared.flow), SharedVelocity) and shared.shared
    assert shared_network(separate.flow) is None and shared_network(glob.flow) is None and glob.n_blocks == 1
    target = separate.n_parameters()
    # U-Net widths move in steps of 32 channels: a coarser grid than the MLP's (measured: 4% below)
    for policy in (shared, glob):
        assert abs(policy.n_parameters() - target) / target < tolerance, (network, policy.n_parameters(), target)
    assert glob.n_parameters() == build_policy("global", demos.obs_dims, 2, recipe=recipe.replace(shared=False,
                                                                                                 pool="pushforward")).n_parameters()


@pytest.mark.parametrize("network", ["mlp", "unet"])
def test_shared_policy_fits_acts_and_reloads(demos, tmp_path, network):
    recipe = SHARED.replace(network=network, width=32, lr_decay="cosine")
    torch.manual_seed(0)
    policy = build_policy("lfm", demos.obs_dims, 2, recipe=recipe)
    report = policy.fit(demos, **recipe.fit_options(), seed=0, progress=False)
    assert policy.flow.n_trained == 3 and len(report.blocks) == 3
    action = _act(policy)
    assert action.shape == (5, 8, 2) and torch.isfinite(action).all()
    policy.save(tmp_path / "shared.pt")
    again = load_policy(tmp_path / "shared.pt")
    assert isinstance(again, FlowPolicy) and again.shared and again.recipe == recipe
    assert isinstance(again.flow.nets[0], SharedBlock) and again.n_parameters() == policy.n_parameters()
    assert torch.equal(_act(again), action)
    state = torch.load(tmp_path / "shared.pt", weights_only=True)
    assert state["config"]["shared"] is True
    assert state["model"]["weights"] == [{}, {}, {}] and state["model"]["shared"]["weights"]  # stored once


def test_shared_fit_refuses_the_pushforward_pool(demos):
    policy = FlowPolicy(demos.obs_dims, 2, network="mlp", network_config={"width": 16}, shared=True)
    with pytest.raises(ValueError, match="pool='ou'"):
        policy.fit(demos, epochs=1.0, batch_size=32, progress=False)
    with pytest.raises(ValueError, match="shared must be True or False"):
        FlowPolicy(demos.obs_dims, 2, network="mlp", shared="yes")


@pytest.mark.parametrize("method", ["lfm", "global", "regression"])
def test_ou_pool_reaches_every_method(demos, method, monkeypatch):
    calls, original = [], tl.LocalFlowMatching.fit

    def spy(self, x, **options):
        calls.append(options)
        return original(self, x, **options)

    monkeypatch.setattr(tl.LocalFlowMatching, "fit", spy)
    recipe = PolicyRecipe(blocks=3, width=16, epochs=2.0, batch_size=32, pool="ou")
    torch.manual_seed(0)
    policy = build_policy(method, demos.obs_dims, 2, recipe=recipe)
    policy.fit(demos, **recipe.fit_options(), seed=0, progress=False)  # regression ignores pool
    assert isinstance(policy, RegressionPolicy) == (method == "regression")
    if method != "regression":
        assert [c["pool"] for c in calls] == ["ou"] and policy.n_blocks == (3 if method == "lfm" else 1)
        assert shared_network(policy.flow) is None and policy.flow.n_trained == policy.n_blocks
    action = _act(policy)
    assert action.shape == (5, 8, 2) and torch.isfinite(action).all()


def test_cli_trains_a_shared_policy(demos, tmp_path, capsys):
    d, p = str(tmp_path / "d.npz"), str(tmp_path / "p.pt")
    save_demos(d, demos)
    argv = ["train", "--demos", d, "--out", p, "--blocks", "3", "--width", "16", "--epochs", "1", "--batch-size", "32"]
    assert cli_main([*argv, "--pool", "ou", "--shared"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["recipe"]["shared"] is True and printed["recipe"]["pool"] == "ou"
    assert load_policy(p).shared and load_policy(p).recipe.shared
    with pytest.raises(SystemExit):  # shared without the OU pool: argparse's usage error
        cli_main([*argv, "--shared"])
