"""Figures of a benchmark run (matplotlib is imported here only; install the ``[bench]`` extra).

Other figure writers of the package (image grids, benchmark scripts) get matplotlib through
:func:`require_matplotlib` too, so a missing install fails with the same message everywhere.
"""
from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["require_matplotlib", "learning_curves", "mean_learning_curves", "samples_vs_data", "density_grid",
           "density_maps"]

MATPLOTLIB_MISSING = 'figures need matplotlib: pip install "torchcfm-local[bench]"'


def require_matplotlib():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (figures are only written to files).

    Raises:
        ImportError: when matplotlib is not installed; the message names the ``[bench]`` extra
            that installs it.
    """
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(MATPLOTLIB_MISSING) from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(result: dict, path: Path) -> Path:
    """NLL on the held-out curve subset against training batches and against seconds."""
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in result["summary"]:
        runs = sorted((r for r in result["runs"] if r["method"] == row["method"]), key=lambda r: r["batches"])
        nll = [r["curve_nll"] for r in runs]
        style = "-o" if row["method"].startswith("lfm") else "--s"
        axes[0].plot([r["batches"] for r in runs], nll, style, label=row["method"])
        axes[1].plot([r["train_seconds"] + r["pushforward_seconds"] for r in runs], nll, style, label=row["method"])
    return _save_curves(plt, fig, axes, "seconds (training + pushforward)",
                        f"{result['task']['dataset']}: learning curves ({result['budget']} budget)", path)


def _save_curves(plt, fig, axes, seconds_label: str, title: str, path: Path) -> Path:
    """Labels, grid and legend of the two learning-curve panels (batches, seconds); writes ``path``."""
    axes[0].set_xlabel("training batches (all blocks)")
    axes[1].set_xlabel(seconds_label)
    for ax in axes:
        ax.set_ylabel("NLL (nats), held-out subset")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_learning_curves(record: dict, path: Path) -> Path:
    """Mean NLL over seeds with a ± SE band against training batches and against mean seconds.

    ``record`` is a :func:`~torchcfm_local.bench.seeds.seeds_record` (several seeds of one task).
    """
    plt = require_matplotlib()
    agg = record["aggregate"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for row in agg["methods"]:
        mean = [v for _, v in row["curve"]]
        se = [0.0 if s is None else s for s in row["curve_se"]]
        low, high = [m - s for m, s in zip(mean, se)], [m + s for m, s in zip(mean, se)]
        style = "-o" if row["method"].startswith("lfm") else "--s"
        for ax, xs in zip(axes, ([b for b, _ in row["curve"]], row["curve_seconds"])):
            line, = ax.plot(xs, mean, style, label=row["method"])
            ax.fill_between(xs, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    return _save_curves(plt, fig, axes, "mean seconds (training + pushforward)",
                        f"{record['task']['dataset']}: mean learning curves ± SE over {agg['n_seeds']} seeds "
                        f"({record['budget']} budget)", path)


def samples_vs_data(run, path: Path) -> Path:
    """Model samples next to the test data (first two coordinates)."""
    plt = require_matplotlib()
    names = list(run.samples)
    fig, axes = plt.subplots(1, len(names) + 1, figsize=(3.2 * (len(names) + 1), 3.4), sharex=True, sharey=True)
    panels = [("test data", run.test)] + [(m, run.samples[m]) for m in names]
    for ax, (title, pts) in zip(axes, panels):
        pts = pts.reshape(len(pts), -1)
        ax.scatter(pts[:, 0], pts[:, 1], s=0.5, alpha=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal", adjustable="box")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def density_grid(test: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(xs, ys, grid)``: a ``resolution``-per-axis grid over the 2D test points' box widened by 0.5,
    ``grid`` of shape ``(resolution**2, 2)`` in row-major image order."""
    lo, hi = test.min(0).values - 0.5, test.max(0).values + 0.5
    xs = torch.linspace(float(lo[0]), float(hi[0]), resolution)
    ys = torch.linspace(float(lo[1]), float(hi[1]), resolution)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return xs, ys, torch.stack([gx.flatten(), gy.flatten()], 1)


def density_maps(run, path: Path, resolution: int = 80) -> Path:
    """exp(log_prob) on a grid for each 2D model (dopri5 at 1e-5, exact divergence)."""
    from .protocol import EVAL_ODE

    plt = require_matplotlib()
    xs, ys, grid = density_grid(run.test, resolution)
    names = list(run.models)
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.4))
    axes = [axes] if len(names) == 1 else axes
    for ax, name in zip(axes, names):
        dens = run.models[name].log_prob(grid, ode=EVAL_ODE).exp().reshape(resolution, resolution)
        ax.imshow(dens.numpy(), origin="lower", extent=(float(xs[0]), float(xs[-1]), float(ys[0]), float(ys[-1])), cmap="magma")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
