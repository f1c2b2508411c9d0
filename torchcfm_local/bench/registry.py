"""What ``lfm-bench`` can run: tasks (dataset + LFM recipe), budgets (sizes) and methods.

Adding a dataset to the benchmark is one entry in :data:`TASKS` (the dataset itself comes from
:mod:`torchcfm_local.datasets`); a new budget is one entry in :data:`BUDGETS`; a new way to build
the model is one entry in :data:`METHODS`. The protocol that uses them is in
:mod:`torchcfm_local.bench.protocol`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from .._checks import positive_float, positive_int
from ..schedule import OUSchedule

__all__ = ["Task", "TASKS", "Budget", "BUDGETS", "Method", "METHODS"]


def _positive_floats(values, name: str) -> None:
    for i, value in enumerate(values):
        positive_float(value, f"{name}[{i}]")


@dataclass(frozen=True)
class Task:
    """A dataset with the LFM recipe it is trained with.

    The recipes follow the LFM paper (Xu, Cheng & Xie, arXiv 2410.02548) where it gives one: the
    2D densities use its 2D setting (OU steps ``h_n = 0.025 * 1.25**(n - 1)``, N = 9 blocks) and
    the tabular MAF datasets use the paper's number of blocks and steps for that dataset. The
    offline stand-ins (datasets that ship with scikit-learn or are cut from images) borrow the
    recipe of the paper dataset closest in dimension; ``note`` says which.

    Attributes:
        dataset: name in :mod:`torchcfm_local.datasets`.
        steps: the finite OU steps (time units of the OU process), one per coupled block; the
            free block that ends at the standard normal is appended, so N = ``len(steps) + 1``.
        width: hidden units of each LFM block's MLP (the budget's ``width_scale`` multiplies it).
        depth: hidden layers of every MLP (LFM blocks and the global flow).
        lr: constant Adam learning rate.
        warm_start: start block n + 1 from block n's weights.
        t_beta: Beta(a, b) distribution of the training times instead of uniform; None: uniform.
        block_weights: relative share of the LFM batches of each block (free block last);
            None: equal shares.
        note: where the recipe comes from (shown by ``lfm-bench list``).
        mlp: further :class:`~torchcfm_local.MLP` keyword arguments of every MLP (LFM blocks and
            the global flow), for example ``{"activation": "silu"}``; empty: the MLP's defaults.
        fit: further :meth:`~torchcfm_local.LocalFlowMatching.fit` options of every method, for
            example ``{"standardize": "diagonal"}`` or ``{"pool": "ou"}`` (a one-block global flow
            has no pool to push, so ``pool`` changes only LFM). Default ``{"standardize": "auto"}``
            (fit's own default, written out so that a result records it).
    """

    dataset: str
    steps: tuple[float, ...]
    width: int
    depth: int = 3
    lr: float = 1e-3
    warm_start: bool = True
    t_beta: Optional[tuple[float, float]] = None
    block_weights: Optional[tuple[float, ...]] = None
    note: str = ""
    mlp: dict = field(default_factory=dict)
    fit: dict = field(default_factory=lambda: {"standardize": "auto"})

    def __post_init__(self):
        _positive_floats(self.steps, "Task.steps")
        positive_int(self.width, "Task.width")
        positive_int(self.depth, "Task.depth")
        positive_float(self.lr, "Task.lr")

    @property
    def n_blocks(self) -> int:
        """Number of LFM blocks N: one per finite step plus the free block."""
        return len(self.steps) + 1


def _geometric(h0: float, rho: float, n_blocks: int) -> tuple[float, ...]:
    return OUSchedule(h0, rho, n_blocks).coupled_steps


_PAPER_2D = _geometric(0.025, 1.25, 9)

TASKS: dict[str, Task] = {
    "tree": Task("tree", _PAPER_2D, width=256, note="paper 2D config: h0=0.025, rho=1.25, N=9"),
    "rose": Task("rose", _PAPER_2D, width=256, note="paper 2D config: h0=0.025, rho=1.25, N=9"),
    "8gaussians": Task("8gaussians", _PAPER_2D, width=256, note="2D config of tree/rose"),
    "power": Task("power", (0.15, 0.2, 0.26), width=256, note="paper POWER: N=4"),
    "gas": Task("gas", (0.05,), width=256, note="paper GAS: N=2 (the paper also uses Beta time sampling)"),
    "miniboone": Task("miniboone", (0.35,), width=256, note="paper MINIBOONE: N=2"),
    "bsds300": Task("bsds300", (0.25, 0.25, 0.25), width=512, warm_start=False, note="paper BSDS300: N=4"),
    "bsds300_patches": Task("bsds300_patches", (0.25, 0.25, 0.25), width=512, warm_start=False,
                            note="offline stand-in; schedule of BSDS300"),
    "patches3x3": Task("patches3x3", (0.15, 0.2, 0.26), width=256, note="offline stand-in; schedule of POWER"),
    "digits61": Task("digits61", (0.25, 0.25, 0.25), width=256, note="offline stand-in; schedule of BSDS300"),
    "breast_cancer": Task("breast_cancer", (0.35,), width=128, note="offline stand-in; schedule of MINIBOONE"),
}


@dataclass(frozen=True)
class Budget:
    """How much data, training and evaluation one run gets.

    Attributes:
        n_train: training points (a seeded random subset); None: the dataset's full training split.
        per_block: LFM batches per block; the global flow gets N times as many on its one block.
        batch_size: points per batch (capped at the training-set size).
        n_eval: test points for the test NLL and the energy distance (and validation points).
        n_curve: held-out validation points for the learning-curve NLL.
        fractions: learning-curve points, as fractions of the budget in (0, 1]; the largest
            one is the run that gets the final evaluation.
        width_scale: multiplies the task's block width (rounded, at least 8 units).
    """

    n_train: Optional[int]
    per_block: int
    batch_size: int
    n_eval: int
    n_curve: int
    fractions: tuple[float, ...]
    width_scale: float = 1.0

    def __post_init__(self):
        positive_int(self.n_train, "Budget.n_train", allow_none=True)
        for name in ("per_block", "batch_size", "n_eval", "n_curve"):
            positive_int(getattr(self, name), f"Budget.{name}")
        _positive_floats(self.fractions, "Budget.fractions")
        if not self.fractions or max(self.fractions) > 1:
            raise ValueError(f"Budget.fractions must be numbers in (0, 1], got {self.fractions!r}")
        positive_float(self.width_scale, "Budget.width_scale")


BUDGETS: dict[str, Budget] = {
    # seconds; for tests and pipeline checks
    "smoke": Budget(n_train=2000, per_block=20, batch_size=256, n_eval=300, n_curve=200,
                    fractions=(0.5, 1.0), width_scale=0.125),
    "quick": Budget(n_train=20_000, per_block=250, batch_size=512, n_eval=2000, n_curve=1000,
                    fractions=(0.25, 0.5, 1.0), width_scale=0.5),
    "medium": Budget(n_train=100_000, per_block=1000, batch_size=1000, n_eval=10_000, n_curve=2000,
                     fractions=(0.125, 0.25, 0.5, 1.0)),
    "full": Budget(n_train=None, per_block=4000, batch_size=1000, n_eval=10_000, n_curve=2000,
                   fractions=(0.125, 0.25, 0.5, 1.0)),
}

#: probability path -> torchcfm matcher class (both with sigma = 0)
_MATCHERS = {"trig": "VariancePreservingConditionalFlowMatcher", "linear": "ConditionalFlowMatcher"}


@dataclass(frozen=True)
class Method:
    """How a benchmark model is built.

    Attributes:
        schedule: ``"lfm"``: the task's N-block OU schedule with one MLP of the task's width per
            block; ``"global"``: one block from noise to data whose MLP is widened to the LFM
            blocks' total parameter count.
        path: conditional probability path of every block's flow matching loss: ``"trig"``
            (variance preserving, torchcfm's ``VariancePreservingConditionalFlowMatcher``) or
            ``"linear"`` (straight line, ``ConditionalFlowMatcher``).
    """

    schedule: str
    path: str

    def __post_init__(self):
        if self.schedule not in ("global", "lfm"):
            raise ValueError(f"Method.schedule must be 'global' or 'lfm', got {self.schedule!r}")
        if self.path not in _MATCHERS:
            raise ValueError(f"Method.path must be one of {sorted(_MATCHERS)}, got {self.path!r}")

    @property
    def local(self) -> bool:
        """True for Local Flow Matching (several blocks), False for the global flow."""
        return self.schedule == "lfm"

    @property
    def matcher_name(self) -> str:
        """Class name of the torchcfm matcher of :attr:`path`."""
        return _MATCHERS[self.path]

    def matcher(self):
        """A fresh torchcfm matcher of :attr:`path` with ``sigma=0``."""
        from torchcfm import conditional_flow_matching as cfm

        return getattr(cfm, self.matcher_name)(sigma=0.0)


METHODS: dict[str, Method] = {
    "global-trig": Method("global", "trig"),
    "global-linear": Method("global", "linear"),
    "lfm-trig": Method("lfm", "trig"),
    "lfm-linear": Method("lfm", "linear"),
}
