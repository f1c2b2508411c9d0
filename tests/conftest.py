import pytest
import torch

import torchcfm_local as tl


def two_gaussians(n: int, seed: int) -> torch.Tensor:
    """An equal mixture of N((+-2, 0), 0.4^2 I)."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (n, 1), generator=g) * 2.0 - 1.0
    return torch.cat([2.0 * sign, torch.zeros(n, 1)], 1) + 0.4 * torch.randn(n, 2, generator=g)


def small_mlp(n: int) -> torch.nn.Module:
    return tl.MLP(2, width=64, depth=2)


@pytest.fixture(scope="session")
def trained_2d():
    """A 3-block LFM fitted for a few seconds on two Gaussians, with its report and data."""
    x = two_gaussians(6000, seed=0)
    torch.manual_seed(0)
    lfm = tl.LocalFlowMatching(
        dim=2, schedule=tl.OUSchedule(h0=0.3, rho=1.5, n_blocks=3), velocity_factory=small_mlp
    )
    report = lfm.fit(x, batches_per_block=1500, batch_size=256, seed=0, progress=False)
    return lfm, report, x


class Crash(Exception):
    """Raised by :func:`crash_at` to interrupt a fit at a chosen batch."""


def crash_at(block, step):
    """A fit callback that raises :class:`Crash` after batch ``step`` of block ``block``."""
    def callback(n, k, loss):
        if (n, k) == (block, step):
            raise Crash

    return callback
