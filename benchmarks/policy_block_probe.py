"""Where a flow policy's imprecision arises: every block's data side, checked against the OU chain it should match.

An LFM block n is trained to carry its noise side to its data side, the OU marginal of the demos'
action chunks at time ``T = T_{n-1}`` (``schedule.time_before(n)``): for an expert chunk ``a``,
``e^{-T} a + sqrt(1 - e^{-2T}) eps``. For held-out windows (the split and windows of
``policy_chunk_error.py``) this script measures, at each block's data side and in the flow's
normalized action units (mean over coordinates, samples and windows):

* ``ou``: the squared distance of the exact OU marginal from ``e^{-T} a``: ``1 - e^{-2T}``
  (closed form; 0 at block 1, whose data side is the demos).
* ``encoded``: the held-out chunk pushed through blocks ``1..n-1`` (``encode``), the kind of row
  the pushforward pool trains block n on, as squared distance from ``e^{-T} a``. Below ``ou``
  when the blocks under n do not spread the demos as the OU chain would.
* ``sampled``: the policy's own samples there (noise decoded through blocks ``N..n``), as squared
  distance from ``e^{-T} a``; at block 1 this is the sampled chunks' squared error.
* ``undone``: exact OU samples at ``T`` decoded through blocks ``n-1..1``, as squared error to
  ``a``: how much of the OU chain's noise the blocks below n take out again (0 would be all).

A block chain that matched the OU chain would give ``encoded = sampled = ou`` at every block and
``undone`` near the expert's own spread. The global flow (one block) has only block 1's row.
Writes ``benchmarks/results/<name>.{json,md}`` (default ``policy_block_probe_<task>``).

    python benchmarks/policy_block_probe.py --task lift --seeds 3   # [robot] extra for robosuite tasks
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import policy_chunk_error  # noqa: E402  (the held-out split and flags, next to this script)

from torchcfm_local.bench.report import write_results  # noqa: E402
from torchcfm_local.bench.seeds import mean_se  # noqa: E402
from torchcfm_local.policy.protocol import train_checkpoints  # noqa: E402
from torchcfm_local.policy.recipe import PolicyRecipe  # noqa: E402

METHODS = ("global", "lfm")
COLUMNS = ("ou", "encoded", "sampled", "undone")


def msd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared distance per coordinate."""
    return float(((x - y) ** 2).mean())


@torch.no_grad()
def block_rows(policy, obs_dict: dict, action: torch.Tensor, samples: int, seed: int) -> list[dict]:
    """One dict per block of a trained :class:`~torchcfm_local.policy.FlowPolicy`: its number, the
    OU time of its data side and the four measures of the module docstring."""
    flow, cond = policy.flow, policy._cond(obs_dict)
    a = policy.action_normalizer.normalize(action.double()).float()
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for n in range(1, flow.n_blocks + 1):
        t = flow.schedule.time_before(n)
        centre = math.exp(-t) * a
        encoded = flow.encode(a, cond=cond, blocks=range(1, n)) if n > 1 else a
        sampled, undone = [], []
        for _ in range(samples):
            z = torch.randn(a.shape, generator=gen)
            sampled.append(msd(flow.decode(z, cond=cond, blocks=range(n, flow.n_blocks + 1)), centre))
            if n > 1:
                y = centre + math.sqrt(1 - math.exp(-2 * t)) * torch.randn(a.shape, generator=gen)
                undone.append(msd(flow.decode(y, cond=cond, blocks=range(1, n)), a))
        rows.append({"block": n, "T": t, "ou": 1 - math.exp(-2 * t), "encoded": msd(encoded, centre),
                     "sampled": sum(sampled) / samples, "undone": sum(undone) / samples if undone else None})
    return rows


def run(args, recipe: PolicyRecipe) -> tuple[list[dict], dict]:
    demos, train, held, obs, action = policy_chunk_error.held_out_windows(args)
    keys = list(demos.obs)
    parts = torch.split(obs, [demos.obs_dims[k] for k in keys], dim=2)
    obs_dict = {k: p.numpy() for k, p in zip(keys, parts)}
    rows = []
    for seed in range(args.seeds):
        for method in args.methods:
            (ckpt,) = train_checkpoints(method, train, recipe, [recipe.epochs], seed)
            for row in block_rows(ckpt.policy, obs_dict, action, args.samples, seed):
                rows.append({"method": method, "seed": seed, **row})
                print(f"seed {seed} {method} block {row['block']}: " + ", ".join(
                    f"{k} {row[k]:.4f}" for k in COLUMNS if row[k] is not None), flush=True)
    return rows, {"demos": demos.meta, "train_episodes": train.n_episodes, "held_out_episodes": held.n_episodes,
                  "windows": int(len(obs))}


def table(rows: list[dict], args, recipe: PolicyRecipe, meta: dict) -> tuple[str, dict]:
    """Markdown and ``summary[method][block][column]`` (mean ± SE over seeds)."""
    summary, lines = {}, [f"## {args.task}: every block's data side against the OU chain, mean ± SE over "
                          f"{args.seeds} training seed(s)", "",
                          "| method | block | OU time T | ou | encoded | sampled | undone |", "|---|---|---|---|---|---|---|"]
    for method in args.methods:
        blocks = sorted({r["block"] for r in rows if r["method"] == method})
        summary[method] = {}
        for n in blocks:
            mine = [r for r in rows if r["method"] == method and r["block"] == n]
            stats = {c: mean_se([r[c] for r in mine]) if mine[0][c] is not None else None for c in COLUMNS}
            summary[method][n] = stats
            cells = ["-" if s is None else f"{s['mean']:.4f}" + ("" if s["se"] is None else f" ± {s['se']:.4f}")
                     for s in stats.values()]
            lines.append(f"| {method} | {n} | {mine[0]['T']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"Squared distances per coordinate in the flow's normalized action units: `ou`, `encoded` "
              f"and `sampled` from e^(-T) a, `undone` from a (see the script's docstring). Demos: "
              f"{meta['train_episodes']} training and {meta['held_out_episodes']} held-out expert episodes "
              f"(seed 0); {meta['windows']} held-out windows, {args.samples} draws each. {recipe.epochs:g} epochs; "
              f"recipe `{recipe.to_dict()}`."]
    return "\n".join(lines), summary


def main(argv=None) -> int:
    args, recipe = policy_chunk_error.parse_held_out(__doc__, "policy_block_probe", METHODS, argv)
    rows, meta = run(args, recipe)
    text, summary = table(rows, args, recipe, meta)
    write_results(args.out, args.name,
                  {"args": vars(args), "recipe": recipe.to_dict(), **meta, "summary": summary, "runs": rows}, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
