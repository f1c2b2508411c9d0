"""Tests of the mode-weight metric (torchcfm_local.metrics) and the ``mixture_unequal`` dataset."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchcfm_local import datasets
from torchcfm_local.metrics import mode_frequencies, mode_weight_error

CENTERS = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
WEIGHTS = [0.5, 0.3, 0.2]


def _points(counts) -> torch.Tensor:
    """``counts[k]`` points near center k (small offsets, always nearest to k)."""
    rows = [CENTERS[k] + 0.1 * torch.randn(c, 2, generator=torch.Generator().manual_seed(k))
            for k, c in enumerate(counts)]
    return torch.cat(rows)


def test_hand_made_example():
    x = _points([6, 1, 3])  # frequencies (0.6, 0.1, 0.3) vs (0.5, 0.3, 0.2): 0.5 * (0.1 + 0.2 + 0.1) = 0.2
    np.testing.assert_allclose(mode_frequencies(x, CENTERS).numpy(), [0.6, 0.1, 0.3])
    assert mode_weight_error(x, CENTERS, WEIGHTS) == pytest.approx(0.2, abs=1e-12)


def test_perfect_sample_is_zero():
    assert mode_weight_error(_points([50, 30, 20]), CENTERS, WEIGHTS) == pytest.approx(0.0, abs=1e-12)
    # numpy and list inputs work too
    assert mode_weight_error(_points([5, 3, 2]).numpy(), CENTERS.tolist(), np.array(WEIGHTS)) == pytest.approx(0.0)


def test_all_samples_in_a_low_weight_mode():
    centers = torch.tensor([[0.0, 0.0], [5.0, 0.0]])
    x = torch.full((100, 2), 5.0) * torch.tensor([1.0, 0.0])
    assert mode_weight_error(x, centers, [0.99, 0.01]) == pytest.approx(0.99)  # 1 - w_k, near 1


def test_tie_goes_to_first_center_and_higher_dims_flatten():
    centers = torch.tensor([[-1.0, 0.0], [1.0, 0.0]])
    assert mode_frequencies(torch.zeros(4, 2), centers).tolist() == [1.0, 0.0]
    x = torch.zeros(4, 1, 2) + torch.tensor([1.0, 0.0])  # (n, 1, 2) -> (n, 2)
    assert mode_frequencies(x, centers).tolist() == [0.0, 1.0]


@pytest.mark.parametrize("samples, centers, weights, match", [
    (torch.zeros(5, 3), CENTERS, WEIGHTS, "dimension 3 but centers have 2"),
    (torch.zeros(0, 2), CENTERS, WEIGHTS, "samples must have shape"),
    (torch.zeros(5), CENTERS, WEIGHTS, "samples must have shape"),
    (torch.zeros(5, 2), torch.zeros(3), WEIGHTS, "centers must have shape"),
    (torch.zeros(5, 2), CENTERS, [0.5, 0.5], "2 weights for 3 centers"),
    (torch.zeros(5, 2), CENTERS, [[0.5, 0.3, 0.2]], r"weights must have shape \(K,\)"),
    (torch.zeros(5, 2), CENTERS, [0.5, 0.3, 0.3], "sum to 1"),
    (torch.zeros(5, 2), CENTERS, [1.2, -0.1, -0.1], "non-negative"),
    (torch.tensor([[0.0, math.nan]]), CENTERS, WEIGHTS, "samples contains NaN"),
    (torch.zeros(5, 2), CENTERS, [0.5, math.nan, 0.5], "weights contains NaN"),
    (torch.zeros(5, 2), CENTERS + torch.tensor([math.inf, 0.0]), WEIGHTS, "centers contains NaN or Inf"),
    ("abc", CENTERS, WEIGHTS, "samples must be numeric"),
])
def test_bad_inputs_raise(samples, centers, weights, match):
    with pytest.raises(ValueError, match=match):
        mode_weight_error(samples, centers, weights)


def test_mixture_unequal_weights_and_modes():
    ds = datasets.load("mixture_unequal", n_train=200_000, n_val=10, n_test=10, seed=0, dtype=torch.float64)
    modes = ds.info["modes"]
    assert ds.dim == 2 and len(modes["centers"]) == len(modes["weights"]) == 7
    assert sum(modes["weights"]) == pytest.approx(1.0) and min(modes["weights"]) == pytest.approx(0.02)
    assert mode_weight_error(ds.train, modes["centers"], modes["weights"]) < 0.02
    # the modes in info are the module's, and the density has mean 0
    np.testing.assert_allclose(modes["centers"], datasets.toy2d.mixture_unequal_modes()["centers"])
    np.testing.assert_allclose(ds.train.mean(0).numpy(), [0.0, 0.0], atol=0.01)
    assert ds.train.abs().max() < 5.5
    again = datasets.load("mixture_unequal", n_train=100, n_val=10, n_test=10, seed=0)
    assert torch.equal(again.train, datasets.load("mixture_unequal", n_train=100, n_val=10, n_test=10, seed=0).train)
