"""torchcfm's 2D training loop, turned into Local Flow Matching by changing five lines.

The loop is torchcfm's basic conditional-flow-matching recipe (standard normal noise -> moons, its
``MLP`` with time as an extra input column, ``sample_location_and_conditional_flow``). Lines marked
``# LFM`` are the only ones that differ from the plain torchcfm version (shown in the README):

* the model becomes an LFM composer whose blocks are built by the same ``MLP`` constructor,
* the loop body runs once per block (``train_blocks`` pushes the data through each finished block),
* the matcher and the data batch come from the block,
* sampling chains the blocks instead of one ``NeuralODE``.

Run: ``python examples/swap_matcher.py --steps 1000``.
"""
import argparse

import torch
from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
from torchcfm.models import MLP
from torchcfm.utils import sample_moons

import torchcfm_local as tl


def main(steps: int = 1000, batch_size: int = 256, n_blocks: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    sigma = 0.0
    data = sample_moons(20000)
    lfm = tl.LocalFlowMatching(2, tl.OUSchedule(h0=0.1, rho=1.5, n_blocks=n_blocks), ConditionalFlowMatcher(sigma=sigma), lambda n: MLP(dim=2, time_varying=True))  # LFM
    for block in lfm.train_blocks(data):  # LFM
        model, FM = block.model, block.matcher  # LFM
        optimizer = torch.optim.Adam(model.parameters())
        for k in range(steps):
            optimizer.zero_grad()
            x0 = torch.randn(batch_size, 2)
            x1 = block.data(batch_size)  # LFM
            t, xt, ut = FM.sample_location_and_conditional_flow(x0, x1)
            vt = model(torch.cat([xt, t[:, None]], dim=-1))
            loss = torch.mean((vt - ut) ** 2)
            loss.backward()
            optimizer.step()
    samples = lfm.sample(1024)  # LFM
    return samples, data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps per block")
    parser.add_argument("--blocks", type=int, default=4)
    args = parser.parse_args()
    samples, _ = main(steps=args.steps, n_blocks=args.blocks)
    held_out = sample_moons(2000)
    ed = tl.energy_distance(samples, held_out)
    ed_noise = tl.energy_distance(torch.randn(1024, 2), held_out)
    print(f"energy distance to the data: LFM samples {ed:.4f}, N(0, I) noise {ed_noise:.4f}")
