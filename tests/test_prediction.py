"""Data prediction: a network's estimate of x1 turned into the velocity of torchcfm's path."""
import math

import numpy as np
import pytest
import torch
from torch import nn
from torchcfm.conditional_flow_matching import (ConditionalFlowMatcher, ExactOptimalTransportConditionalFlowMatcher,
                                                VariancePreservingConditionalFlowMatcher)

from torchcfm_local.policy import FlowPolicy, collect_demos, load_policy
from torchcfm_local.policy.cli import build_policy
from torchcfm_local.policy.recipe import PolicyRecipe
from torchcfm_local.prediction import DataPrediction, VelocityPrediction, block_networks, path_of


class _Oracle(nn.Module):
    """Returns the true data side whatever it is asked (a perfect x1 predictor)."""

    def __init__(self, x1):
        super().__init__()
        self.x1 = x1

    def forward(self, t, x, cond=None):
        return self.x1


@pytest.mark.parametrize("matcher", [ConditionalFlowMatcher(sigma=0.0), VariancePreservingConditionalFlowMatcher(sigma=0.0)])
def test_a_perfect_data_prediction_gives_torchcfms_conditional_velocity(matcher):
    gen = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(64, 3, generator=gen), torch.randn(64, 3, generator=gen)
    t = torch.rand(64, generator=gen) * 0.8  # below the clamp of both paths
    t, xt, ut = matcher.sample_location_and_conditional_flow(x0, x1, t=t)
    v = DataPrediction(_Oracle(x1), path_of(matcher))(t, xt)
    assert torch.allclose(v, ut, atol=1e-4)


def test_the_denominator_is_held_at_eps_so_t_equal_1_stays_finite():
    x, x1 = torch.zeros(2, 3), torch.ones(2, 3)
    t = torch.ones(2)
    assert torch.allclose(DataPrediction(_Oracle(x1), "trig", eps=0.25)(t, x), torch.full((2, 3), 0.5 * math.pi / 0.25))
    assert torch.allclose(DataPrediction(_Oracle(x1), "linear", eps=0.5)(t, x), torch.full((2, 3), 2.0))


def test_data_prediction_refuses_paths_whose_velocity_it_cannot_write():
    with pytest.raises(ValueError, match="sigma=0"):
        path_of(ConditionalFlowMatcher(sigma=0.1))
    with pytest.raises(ValueError, match="ExactOptimalTransport"):
        path_of(ExactOptimalTransportConditionalFlowMatcher(sigma=0.0))
    with pytest.raises(ValueError, match="path"):
        DataPrediction(nn.Identity(), "cosine")
    with pytest.raises(ValueError, match="eps"):
        DataPrediction(nn.Identity(), "trig", eps=0.0)
    with pytest.raises(ValueError, match="prediction"):
        FlowPolicy({"pos": 2}, 2, network="mlp", prediction="noise")
    with pytest.raises(ValueError, match="shared"):  # a shared network's block views cannot be wrapped
        FlowPolicy({"pos": 2}, 2, network="mlp", shared=True, prediction="data")
    with pytest.raises(ValueError, match="shared"):
        PolicyRecipe(pool="ou", shared=True, prediction="data")


def test_a_data_predicting_policy_trains_and_its_file_rebuilds_the_same_path(tmp_path):
    demos = collect_demos("point", 4, seed=0)
    recipe = PolicyRecipe(width=16, path="linear", prediction="data")
    policy = build_policy("lfm", demos.obs_dims, demos.action.shape[1], recipe=recipe)
    first, *others = policy.flow.nets  # block 1 predicts the data, the others the velocity
    assert isinstance(first, DataPrediction) and first.path == "linear"
    assert others and all(isinstance(net, VelocityPrediction) for net in others)
    policy.fit(demos, **{**recipe.fit_options(), "epochs": 2}, seed=0, progress=False)  # warm_start copies block to block
    policy.save(tmp_path / "p.pt")
    loaded = load_policy(tmp_path / "p.pt")
    assert loaded.prediction == "data" and loaded.flow.nets[0].path == "linear"
    assert [type(n) for n in loaded.flow.nets] == [type(n) for n in policy.flow.nets]
    glob = build_policy("global", demos.obs_dims, demos.action.shape[1], recipe=recipe)
    assert [type(n) for n in glob.flow.nets] == [DataPrediction]
    obs = {"pos": np.zeros((3, 2, 2), np.float32)}
    a = policy.predict_action(obs, generator=torch.Generator().manual_seed(1))["action"]
    b = loaded.predict_action(obs, generator=torch.Generator().manual_seed(1))["action"]
    assert torch.isfinite(a).all() and torch.allclose(a, b)


def test_recipe_reads_prediction_and_older_recipes_predict_velocity():
    import argparse

    parser = argparse.ArgumentParser()
    PolicyRecipe.add_arguments(parser)
    assert PolicyRecipe.from_args(parser.parse_args(["--prediction", "data"])).prediction == "data"
    old = PolicyRecipe().to_dict()
    del old["prediction"]
    assert PolicyRecipe.from_dict(old).prediction == "velocity"
    with pytest.raises(ValueError, match="prediction"):
        PolicyRecipe(prediction="noise")


def test_block_networks_leaves_velocity_factories_alone():
    factory = lambda n: nn.Linear(2, 2)  # noqa: E731
    assert block_networks(factory, "velocity", None) is factory
    with pytest.raises(ValueError, match="prediction"):
        block_networks(factory, "noise", "trig")
    x = torch.randn(4, 3)
    assert torch.equal(VelocityPrediction(_Oracle(x))(torch.zeros(4), x), x)
